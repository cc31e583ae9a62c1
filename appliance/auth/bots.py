"""Bots: automation identities (the third part of AuthService), as Teleport's Machine ID.

A bot is a user record of ``kind == "bot"`` (:class:`~appliance.storage.base.UserRecord`): it
shares the user names, the logins, the roles and the certificate generations of people, so
revocation (docs/security.md R1-R4) covers it unchanged, but it never has a password or a
second factor. Rules (docs/security.md B1-B4):

* **No password, ever** (B1). A bot is created without an invite; ``reset_user`` and
  ``complete_signup`` touch humans only (in the storage's own ``WHERE``), and a login for a
  bot gets the same ``access_denied`` as any wrong password.
* **Its certificates say so** (B2): key id ``bot:<name>`` (``ssh-keygen -L``, sshd's log, the
  node's and proxy's ``auth`` events), principals its logins, its roles and generation as a
  user's, at most :data:`BOT_CERT_TTL_MAX`.
* **Bot tokens** (B3): ``ctl bots add`` prints a single-use token ``<secret>.<host CA pin>``
  (stored as a ``kind == "bot"`` join token by digest, bound to the bot's name). ``jumpgate
  bot start`` presents it once, as a joining host does (password auth as ``-join``, the auth
  server verified by the pin), for a first certificate (``bot_join``), then renews with the
  certificate it holds (``renew_bot_cert``, publickey as the bot) before it expires. A bot that
  lost its certificate needs a new token (``ctl bots add --token-only``).
* **Revocable** (B4): ``ctl bots rm`` deletes the record (bumping its generation: live sessions
  end, certificates and renewals are refused) and its unused tokens.

Every bot change, token exchange and certificate is an audit event naming the identity kind.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

from ssh_proto.keys import PublicKey

from ..storage.base import Storage, TokenRecord, UserRecord
from .audit_log import AuditLog
from .ca import CAError, ClusterCA
from .checks import (AuthServiceError, bad_request, check_list, check_ttl, check_user_name, new_secret, parse_key,
                     secret_hash)
from .results import BotInfo, CertResult, CreatedBot, cert_result

__all__ = ["BOT_CERT_TTL", "BOT_CERT_TTL_MAX", "BOT_TOKEN_TTL", "Bots"]

BOT_CERT_TTL = 3600
BOT_CERT_TTL_MAX = 24 * 3600
BOT_CERT_TTL_MIN = 60
BOT_TOKEN_TTL = 3600
BOT_TOKEN_TTL_MAX = 7 * 86400
MAX_LOGINS = 32


class Bots:
    """The bots part of :class:`~appliance.auth.service.AuthService` (see the module rules)."""

    def __init__(self, storage: Storage, ca: ClusterCA, audit_log: AuditLog, *, clock: Callable[[], float],
                 check_roles: Callable[[Any], tuple[str, ...]]):
        self.storage = storage
        self.ca = ca
        self.audit_log = audit_log
        self._clock = clock
        self._check_roles = check_roles

    # -- the bots ----------------------------------------------------------------------
    async def create_bot(self, name: str, logins: Sequence[str], roles: Sequence[str] = (),
                         token_ttl: float | None = None, *, actor: str = "") -> CreatedBot:
        """Add a bot (no password, no TOTP) and return its first bot token."""
        name = check_user_name(name, "bot name")
        logins = check_list(logins, check_user_name, "login", MAX_LOGINS)
        if not logins:
            raise bad_request("a bot needs at least one login (certificates never have empty principals)")
        roles = self._check_roles(roles)
        now = self._clock()
        if not await self.storage.create_user(UserRecord(name, logins, roles, created=now, kind="bot"), None):
            raise AuthServiceError("already_exists", f"{name!r} is already a user or a bot")
        await self.audit_log.record("bot.create", user=name, identity="bot", logins=logins, roles=roles,
                                    actor=actor)
        return await self._new_token(name, logins, roles, token_ttl, actor)

    async def add_bot_token(self, name: str, token_ttl: float | None = None, *, actor: str = "") -> CreatedBot:
        """A fresh bot token for an existing bot (one that lost its certificate)."""
        bot = await self._bot(name)
        return await self._new_token(bot.name, bot.logins, bot.roles, token_ttl, actor)

    async def _new_token(self, name: str, logins: tuple[str, ...], roles: tuple[str, ...],
                         ttl: float | None, actor: str) -> CreatedBot:
        ttl = check_ttl(ttl, BOT_TOKEN_TTL, 60, BOT_TOKEN_TTL_MAX, "the bot token TTL")
        now = self._clock()
        secret, token_hash = new_secret()
        record = TokenRecord(secrets.token_hex(8), token_hash, "bot", now, now + ttl, node_name=name)
        await self.storage.put_token(record)
        await self.audit_log.record("token.create", kind="bot", token_id=record.id, expires=record.expires,
                                    node=name, identity="bot", actor=actor)
        pin = self.ca.pin_for_host_ca().removeprefix("sha256:")
        return CreatedBot(name, logins, roles, f"{secret}.{pin}", record.id, record.expires)

    async def list_bots(self) -> list[BotInfo]:
        return [BotInfo(u.name, u.logins, u.roles, u.created) for u in await self.storage.list_users() if u.is_bot]

    async def delete_bot(self, name: str, *, actor: str = "") -> None:
        """Remove a bot: its certificates stop working everywhere within seconds (its generation
        is bumped, as for a deleted user: R1-R3) and its unused tokens are deleted."""
        bot = await self._bot(name)
        for token in await self.storage.list_tokens():
            if token.kind == "bot" and token.node_name == bot.name:
                await self.storage.delete_token(token.id)
        if not await self.storage.delete_user(bot.name):
            raise AuthServiceError("not_found", f"no bot {name!r}")
        await self.audit_log.record("bot.delete", user=bot.name, identity="bot", actor=actor)

    async def _bot(self, name: Any) -> UserRecord:
        record = await self.storage.get_user(check_user_name(name, "bot name"))
        if record is None or not record.is_bot:
            raise AuthServiceError("not_found", f"no bot {str(name)[:40]!r}")
        return record

    # -- bot certificates --------------------------------------------------------------
    async def sign_bot_cert(self, name: str, public_key_blob: Any, ttl: float | None = None, *,
                            actor: str = "") -> CertResult:
        """``ctl auth sign --bot``: a ``bot:<name>`` certificate for ``public_key_blob``."""
        bot = await self._bot(name)
        return await self._certify(bot, parse_key(public_key_blob), ttl, actor=actor, how="ctl")

    async def bot_join(self, token: str, public_key_blob: Any, ttl: float | None = None, *,
                       client_ip: str = "") -> CertResult:
        """Exchange a bot token (once) for a first certificate. The API fills ``token`` and
        ``client_ip`` from the connection, as for a host's join."""
        key = parse_key(public_key_blob)
        client_ip = str(client_ip)[:64]
        try:
            record = await self._usable_token(token)
            bot = await self._bot(record.node_name)
            if not await self.storage.consume_token(record.token_hash, self._clock(), f"bot:{bot.name}"):
                raise AuthServiceError("already_used", "this bot token was already used")
        except AuthServiceError as exc:
            await self.audit_log.record("bot.join", success=False, identity="bot", reason=exc.code,
                                        client_ip=client_ip)
            raise
        await self.audit_log.record("bot.join", user=bot.name, identity="bot", token_id=record.id,
                                    client_ip=client_ip)
        return await self._certify(bot, key, ttl, how="token", client_ip=client_ip)

    async def renew_bot_cert(self, name: str, public_key_blob: Any, ttl: float | None = None, *,
                             client_ip: str = "") -> CertResult:
        """A fresh certificate for a bot authenticated by its current one (the API binds
        ``name`` to the caller: a bot renews itself only)."""
        bot = await self._bot(name)
        return await self._certify(bot, parse_key(public_key_blob), ttl, how="renew", client_ip=str(client_ip)[:64])

    async def _usable_token(self, token: Any) -> TokenRecord:
        record = await self.storage.get_token(secret_hash(token, "bot token"))
        if record is None or record.kind != "bot":
            raise AuthServiceError("not_found", "bot token not found")
        if record.used is not None:
            raise AuthServiceError("already_used", "this bot token was already used")
        if record.expires <= self._clock():
            raise AuthServiceError("expired", "this bot token has expired")
        return record

    async def _certify(self, bot: UserRecord, key: PublicKey, ttl: float | None, *, how: str,
                       actor: str = "", client_ip: str = "") -> CertResult:
        ttl = check_ttl(ttl, BOT_CERT_TTL, BOT_CERT_TTL_MIN, BOT_CERT_TTL_MAX, "the certificate TTL")
        now = self._clock()
        generation = await self.storage.get_generation(bot.name)
        try:
            cert = self.ca.sign_user(key, bot.name, bot.logins, bot.roles, ttl, now, generation, identity="bot")
        except CAError as exc:
            raise bad_request(f"cannot issue a certificate for {bot.name!r}: {exc}") from None
        await self.audit_log.record("cert.create", user=bot.name, kind="user", identity="bot", how=how,
                                    key_id=cert.key_id, serial=cert.serial, principals=cert.principals,
                                    generation=generation, valid_before=cert.valid_before, actor=actor,
                                    client_ip=client_ip)
        await self.storage.record_user_cert(cert.serial, bot.name, generation, float(cert.valid_before), now)
        return cert_result(cert)
