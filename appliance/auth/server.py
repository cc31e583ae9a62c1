"""The auth service's SSH server (port 3025): authenticate nodes, proxies and admins, serve the API.

This module owns SSH user authentication (RFC 4252) for the auth API and the channel
policy around it; what an authenticated caller may *do* is
:mod:`appliance.api.server`'s allow-table, and the rules behind each call are
:class:`~appliance.auth.service.AuthService`'s.

Who gets in (each accepted method yields one :class:`~appliance.api.server.Caller`):

* **Nodes and proxies** — publickey with a *host* certificate from the cluster host CA,
  key id ``node:<u>`` / ``proxy:<u>`` where ``<u>`` is the SSH user name, valid for host
  name ``<u>`` (:func:`~ssh_proto.certs.validate_host_certificate`, docs/security.md C17),
  and ``<u>`` still registered with that kind and for that host key (removing a node
  revokes its access before its certificate expires).
* **Admins** — publickey with a *user* certificate from the cluster user CA
  (:func:`~ssh_proto.certs.validate_user_certificate`, C5-C14, ``source-address``
  against the peer), key id ``user:<u>`` with ``<u>`` the SSH user name, carrying the
  ``admin`` role in ``jumpgate-roles@jumpgate``, ``<u>`` still an admin in storage, and the
  certificate of ``<u>``'s current generation (a reset or deleted user's are revoked).
  The API is not an OS login, so the principal checked is the certificate's own.
* **Bots** — publickey with a user certificate whose key id is ``bot:<u>``, valid, of ``<u>``'s
  current generation, ``<u>`` still a bot: it may renew itself only (docs/security.md B3).
* **Joining nodes** (and bots with a bot token) — password auth as user ``-join`` with a join token's secret. The
  token is looked up, not used: the ``join`` call uses it, so that a failed join can
  say why (``already_used``, ``expired``) and audit it. A token that does not exist
  is refused here. The caller carries the connection's session identifier, which a
  re-join proof signs (docs/security.md J2).

Everything else (plain keys, other certificates, keyboard-interactive) is refused, and
every refusal after a signature or a password is an ``auth`` audit event. After
authentication there is no pty, shell, exec, port or agent forwarding: only the
``jumpgate-api`` subsystem, at most 4 channels per connection, counted when opened,
and for nodes and proxies the ``jumpgate-watch`` push stream (:mod:`appliance.auth.watch`), which
for an admin carries the audit log (``ctl audit --follow``).

Limits (:mod:`appliance.limits`, docs/security.md § Limits): the listener admits by
``AUTH_PROFILE`` (per-source startups, rate and penalties; at most 64 connections per
caller — a node, a proxy, an admin, joining hosts together — and 4,096 in all),
connections by ``AUTH_OPTIONS``.
"""
from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

import ssh_proto
from ssh_proto.certs import validate_host_certificate, validate_user_certificate
from ssh_proto.errors import CertificateError
from ssh_proto.keys import CERT_TYPE_HOST, CERT_TYPE_USER, Certificate, PrivateKey, PublicKey

from ..addresses import AUTH_PORT
from ..api.protocol import SUBSYSTEM, WATCH_SUBSYSTEM
from ..api.server import Caller, serve_api_channel
from ..limits import AUTH_OPTIONS, AUTH_PROFILE
from .ca import ClusterCA, generation_of, roles_from_certificate
from .service import AuthService, AuthServiceError
from .watch import ChangeFeed

__all__ = ["AUTH_PORT", "JOIN_USER", "AuthSSHServer", "serve_auth"]

log = logging.getLogger("jumpgate.auth.server")

#: The SSH user name a joining node authenticates as (not a valid account name).
JOIN_USER = "-join"
MAX_PASSWORD = 256
_HOST_CALLERS = ("node", "proxy")  # caller kinds a host certificate may authenticate
#: A join token that exists but cannot be used still gets in: the join call says why.
_JOIN_ERRORS_LET_IN = frozenset({"already_used", "expired"})
# Without pty, agent or port forwarding; the subsystem check is in ``session``.
_POLICY = ssh_proto.SessionPolicy(permit_pty=False, permit_agent_forwarding=False,
                                  permit_port_forwarding=False, permit_x11_forwarding=False)


class _Refused(Exception):
    """An authentication attempt failed; ``reason`` goes to the audit log."""

    def __init__(self, reason: str, key_id: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id


class AuthSSHServer(ssh_proto.SSHServer):
    """One connection to the auth API (``serve_auth`` makes one per connection)."""

    def __init__(self, service: AuthService, ca: ClusterCA, *, clock: Callable[[], float] = time.time,
                 feed: ChangeFeed | None = None):
        self.service = service
        self.ca = ca
        self.clock = clock
        self.feed = feed
        self.caller: Caller | None = None
        # keys whose certificate was refused on this connection (see auth_publickey)
        self._refused_keys: set[bytes] = set()

    @property
    def client_ip(self) -> str:
        peer = getattr(self.conn, "peer_address", None)
        return str(peer[0]) if peer else ""

    # ---- authentication -----------------------------------------------------------------
    async def auth_publickey_acceptable(self, username: str, key: PublicKey | Certificate) -> bool:
        """A key query (no signature yet): the same checks, no audit."""
        try:
            await self._caller_for_key(username, key)
        except _Refused:
            return False
        return True

    async def auth_publickey(self, username: str, key: PublicKey | Certificate):
        try:
            caller = await self._caller_for_key(username, key)
        except _Refused as exc:
            if isinstance(key, Certificate):
                self._refused_keys.add(key.public_key.blob)
            elif key.blob in self._refused_keys:
                # a client's automatic retry of a refused certificate's bare key:
                # refused all the same, but the refusal is already in the audit log
                return False
            await self._audit_refusal(username, "publickey", exc)
            return False
        return self._accept(caller)

    async def auth_password(self, username: str, password: str):
        try:
            caller = await self._caller_for_token(username, password)
        except _Refused as exc:
            await self._audit_refusal(username, "password", exc)
            return False
        return self._accept(caller)

    def _accept(self, caller: Caller) -> ssh_proto.Accept:
        self.caller = caller
        log.info("API connection from %s authenticated as %s", caller.client_ip, caller.actor)
        # per-user limit: the caller (joining hosts share one account; never the token)
        return ssh_proto.Accept(_POLICY, account=caller.actor)

    async def _caller_for_key(self, username: str, key: PublicKey | Certificate) -> Caller:
        if not isinstance(key, Certificate):
            raise _Refused("a plain key (the auth API takes certificates only)")
        if key.cert_type == CERT_TYPE_HOST:
            return await self._host_caller(username, key)
        if key.cert_type == CERT_TYPE_USER and key.key_id.startswith("bot:"):
            return await self._bot_caller(username, key)
        if key.cert_type == CERT_TYPE_USER:
            return await self._admin_caller(username, key)
        raise _Refused("unknown certificate type", key.key_id)

    async def _host_caller(self, username: str, cert: Certificate) -> Caller:
        kind, _, name = cert.key_id.partition(":")
        if kind not in _HOST_CALLERS or name != username:
            raise _Refused(f"host certificate key id is not node:{username} or proxy:{username}", cert.key_id)
        try:
            validate_host_certificate(cert, hostname=username, trusted_cas=[self.ca.host_ca_public],
                                      now=self.clock())
        except CertificateError as exc:
            raise _Refused(str(exc), cert.key_id) from None
        node = await self.service.storage.get_node(username)
        if node is None:
            raise _Refused(f"{username} is not a registered {kind}", cert.key_id)
        if node.kind != kind:
            raise _Refused(f"{username} is registered as a {node.kind}, not a {kind}", cert.key_id)
        if node.host_key is None or not hmac.compare_digest(node.host_key, cert.public_key.blob):
            raise _Refused(f"{username} is registered with another host key", cert.key_id)
        return Caller(kind, username, self.client_ip)

    def _check_user_cert(self, cert: Certificate) -> None:
        """A user certificate of this cluster's user CA, valid now and from this address. The
        principal list must be valid (non-empty, checked by the validator), but no OS login is
        at stake here: the identity is the key id, checked by the caller."""
        try:
            principal = cert.principals[0] if cert.principals else ""
            validate_user_certificate(cert, principal=principal, trusted_cas=[self.ca.user_ca_public],
                                      now=self.clock(), source_address=self.client_ip or None)
        except CertificateError as exc:
            raise _Refused(str(exc), cert.key_id) from None

    async def _admin_caller(self, username: str, cert: Certificate) -> Caller:
        if cert.key_id != f"user:{username}":
            raise _Refused(f"user certificate key id is not user:{username}", cert.key_id)
        self._check_user_cert(cert)
        if "admin" not in roles_from_certificate(cert):
            raise _Refused("the certificate does not carry the admin role", cert.key_id)
        try:
            user = await self.service.get_user(username)
        except AuthServiceError:
            raise _Refused(f"no user {username}", cert.key_id) from None
        if "admin" not in user.roles:
            raise _Refused(f"{username} is no longer an admin", cert.key_id)
        if generation_of(cert) < await self.service.storage.get_generation(username):
            raise _Refused(f"the certificate of {username} was revoked (the user was reset)", cert.key_id)
        return Caller("admin", username, self.client_ip)

    async def _bot_caller(self, username: str, cert: Certificate) -> Caller:
        """A bot renewing itself (docs/security.md B3): its own unexpired ``bot:<name>``
        certificate of its current generation, and ``<name>`` still a bot."""
        if cert.key_id != f"bot:{username}":
            raise _Refused(f"bot certificate key id is not bot:{username}", cert.key_id)
        self._check_user_cert(cert)
        record = await self.service.storage.get_user(username)
        if record is None or not record.is_bot:
            raise _Refused(f"no bot {username} (removed?)", cert.key_id)
        if generation_of(cert) < await self.service.storage.get_generation(username):
            raise _Refused(f"the certificate of bot {username} was revoked", cert.key_id)
        return Caller("bot", username, self.client_ip)

    async def _caller_for_token(self, username: str, password: str) -> Caller:
        if username != JOIN_USER:
            raise _Refused("password authentication is only for joining nodes")
        if not 0 < len(password) <= MAX_PASSWORD:
            raise _Refused("join token of impossible length")
        try:
            await self.service.validate_token(password)
        except AuthServiceError as exc:
            if exc.code not in _JOIN_ERRORS_LET_IN:
                raise _Refused(f"join token refused ({exc.code})") from None
        return Caller("joining", JOIN_USER, self.client_ip, join_token=password,
                      session_id=bytes(getattr(self.conn, "session_id", None) or b""))

    async def _audit_refusal(self, username: str, method: str, exc: _Refused) -> None:
        log.info("API auth refused for %r from %s (%s): %s", username, self.client_ip, method, exc.reason)
        fields: dict[str, Any] = {"method": method, "reason": exc.reason[:512], "client_ip": self.client_ip}
        if exc.key_id:
            fields["key_id"] = exc.key_id[:256]
        event = {"event": "auth", "user": username[:64], "success": False, "fields": fields}
        try:
            await self.service.emit_audit(event, emitter="auth:api")
        except AuthServiceError as err:
            log.error("could not audit a refused API login: %s", err)

    # ---- channels -----------------------------------------------------------------------
    def session_allowed(self) -> bool:
        # how many: AUTH_OPTIONS.max_sessions, counted by ssh_proto when a channel is opened
        return self.caller is not None

    async def session(self, session: ssh_proto.ServerSession) -> int:
        if self.caller is None:  # cannot happen after auth; fail closed all the same
            return 1
        watch = session.kind == "subsystem" and session.subsystem == WATCH_SUBSYSTEM
        if watch and self.feed is not None and self.caller.kind in (*_HOST_CALLERS, "admin"):
            await self.feed.serve(session, self.caller.kind)  # an admin's is the audit log (ctl audit --follow)
            return 0
        if session.kind != "subsystem" or session.subsystem != SUBSYSTEM:
            await session.send_stderr(f"this server only offers the {SUBSYSTEM} subsystem\r\n".encode())
            return 1
        await serve_api_channel(session, self.caller, self.service,
                                sync=self.feed.sync if self.feed is not None else None)
        return 0


async def serve_auth(service: AuthService, ca: ClusterCA, host_identity: tuple[PrivateKey, Certificate],
                     host: str = "0.0.0.0", port: int = AUTH_PORT, *, clock: Callable[[], float] = time.time,
                     login_grace_time: float = 30.0, feed: ChangeFeed | None = None,
                     profile: ssh_proto.ListenerProfile = AUTH_PROFILE,
                     options: ssh_proto.ConnectionOptions = AUTH_OPTIONS,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the auth API on host:port until cancelled.

    ``host_identity`` is the auth service's host key and its ``auth:<name>`` host
    certificate (clients verify the server by it). ``clock`` is the time used to
    validate client certificates; ``feed`` (a running :class:`ChangeFeed`) serves the push
    stream to proxies and nodes. ``await nursery.start(serve_auth, ...)`` returns the
    :class:`ssh_proto.SSHListener` (``.port`` is the bound port).
    """
    key, cert = host_identity
    if not isinstance(cert, Certificate) or cert.cert_type != CERT_TYPE_HOST or not cert.key_id.startswith("auth:"):
        raise ValueError("the auth server needs its auth:<name> host certificate")

    def factory() -> AuthSSHServer:
        return AuthSSHServer(service, ca, clock=clock, feed=feed)

    await ssh_proto.serve(factory, host, port, host_keys=[(key, cert)], options=options, profile=profile,
                          login_grace_time=login_grace_time, task_status=task_status)
