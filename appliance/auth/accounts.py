"""Users: accounts, invites, signup, login and user certificates (the first half of AuthService).

Rules enforced here (with Teleport's defaults where it has one):

* Invites: valid 1 h, single use (compare-and-set in storage); the TOTP seed is made
  with the invite and enrolment is confirmed by a current code at signup; passwords
  12..128 characters.
* Login (docs/security.md A1-A6): password and TOTP code; one answer, ``access_denied``
  with one message, for an unknown user, a locked one, a wrong password, a wrong code and
  a reused code, after one password check at the current cost in every case (a dummy hash
  for unknown and locked users, T13) and a reply padded to the user name's delay; a code's
  time step is usable once even under concurrent logins; an attempt is counted (reserved,
  compare-and-set in storage) before its password is checked, so 5 failures in a row lock
  the user for 30 min however many attempts run at once; a success resets the count; a
  hash made with weaker parameters is replaced after the login has replied.
* User certificates: TTL default 12 h, at least 1 min, at most 30 h (longer is
  refused); principals = the user's logins only, never empty; the user's roles (``admin``)
  in ``jumpgate-roles@jumpgate``; the user's certificate generation (R1).
* Every user change, signup, login, failure, lock and certificate is an audit event.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from ssh_proto.keys import Certificate, PublicKey

from ..storage.base import InviteRecord, LoginAttempt, Storage, StorageError, UserRecord
from . import passwords, totp
from .audit_log import AuditLog
from .ca import CAError, ClusterCA
from .checks import (AuthServiceError, bad_request, check_list, check_ttl, check_user_name, is_user_name, new_secret,
                     parse_key, secret_hash)
from .results import CertResult, Invite, InviteInfo, LoginResult, UserInfo, cert_result
from .timing import FailureDelay

__all__ = ["INVITE_TTL", "KNOWN_USER_ROLES", "LOCK_SECONDS", "MAX_FAILED_LOGINS", "MAX_SIGNUP_ATTEMPTS", "USER_CERT_TTL",
           "USER_CERT_TTL_MAX", "USER_CERT_TTL_MIN", "Accounts"]

log = logging.getLogger("jumpgate.auth")

INVITE_TTL = 3600
MAX_FAILED_LOGINS = 5
#: Signup attempts (one-time code checks) one invite allows, the good one included (A8).
MAX_SIGNUP_ATTEMPTS = 5
LOCK_SECONDS = 30 * 60
USER_CERT_TTL = 12 * 3600
USER_CERT_TTL_MIN = 60
USER_CERT_TTL_MAX = 30 * 3600
#: The roles a user may hold (``ctl users add --roles``), carried in ``jumpgate-roles@jumpgate``.
KNOWN_USER_ROLES = frozenset({"admin"})
MAX_LOGINS = 32
# One answer for every refused login, locked users included (A3: no account enumeration).
_DENIED = ("access denied: wrong user name, password or one-time code "
           f"(each code works once: wait for the next one); after {MAX_FAILED_LOGINS} failed "
           f"logins a user is locked for {LOCK_SECONDS // 60} min (an admin can reset it)")


def _check_user_roles(roles: Any) -> tuple[str, ...]:
    """A user's roles: each one of :data:`KNOWN_USER_ROLES`."""
    result = check_list(roles, lambda r, w: r if isinstance(r, str) else "", "role", 8)
    unknown = [r for r in result if r not in KNOWN_USER_ROLES]
    if unknown:
        raise bad_request(f"unknown role {unknown[0][:32]!r} (known: {', '.join(sorted(KNOWN_USER_ROLES))})")
    return result


class Accounts:
    """The users half of :class:`~appliance.auth.service.AuthService` (see the module rules).

    ``run`` is its background work (the rehashes that follow logins, A4); without it they run
    inline, after the reply has been built.
    """

    def __init__(self, storage: Storage, ca: ClusterCA, audit_log: AuditLog, *,
                 clock: Callable[[], float], hasher: passwords.PasswordHasher,
                 failure_delay: FailureDelay | None = None):
        self.storage = storage
        self.ca = ca
        self.cluster = ca.cluster
        self.audit_log = audit_log
        self._clock = clock
        self._hasher = hasher
        self._failure_delay = failure_delay or FailureDelay()
        self._background: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the work that follows replies (rehashes) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._background = nursery
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._background = None

    async def _after_reply(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` after the caller's reply: in :meth:`run`'s nursery; inline without it."""
        if self._background is not None:
            self._background.start_soon(work)
        else:
            await work()

    # -- users -----------------------------------------------------------------------
    async def create_user(self, name: str, logins: Sequence[str], roles: Sequence[str] = (), *,
                          actor: str = "") -> Invite:
        """Add a user (logins must not be empty) and return a 1 h single-use invite."""
        name = check_user_name(name)
        logins = check_list(logins, check_user_name, "login", MAX_LOGINS)
        if not logins:
            raise bad_request("a user needs at least one login (certificates never have empty principals)")
        roles = _check_user_roles(roles)
        now = self._clock()
        secret, invite = self._new_invite(name, now)
        if not await self.storage.create_user(UserRecord(name, logins, roles, created=now), invite):
            raise AuthServiceError("already_exists", f"user {name!r} already exists")
        await self.audit_log.record("user.create", user=name, actor=actor, logins=logins, roles=roles)
        return Invite(name, secret, invite.expires)

    def _new_invite(self, name: str, now: float) -> tuple[str, InviteRecord]:
        secret, token_hash = new_secret()
        return secret, InviteRecord(token_hash, name, totp.new_secret(), now, now + INVITE_TTL)

    async def get_user(self, name: str) -> UserInfo:
        record = await self.storage.get_user(check_user_name(name))
        if record is None:
            raise AuthServiceError("not_found", f"no user {name!r}")
        return self._user_info(record)

    def _user_info(self, u: UserRecord) -> UserInfo:
        now = self._clock()
        status = "bot" if u.is_bot else "invited" if not u.signed_up else "locked" if u.locked_until > now else "active"
        return UserInfo(u.name, u.logins, u.roles, status, u.created, u.locked_until)

    async def list_users(self) -> list[UserInfo]:
        return [self._user_info(u) for u in await self.storage.list_users()]

    async def delete_user(self, name: str, *, actor: str = "") -> None:
        existing = await self.storage.get_user(check_user_name(name))
        if existing is not None and existing.is_bot:
            raise bad_request(f"{name!r} is a bot: remove it with `jumpgate ctl bots rm {name}`")
        if not await self.storage.delete_user(check_user_name(name)):
            raise AuthServiceError("not_found", f"no user {name!r}")
        await self.audit_log.record("user.delete", user=name, actor=actor)

    async def reset_user(self, name: str, *, actor: str = "") -> Invite:
        """Clear password, TOTP and lock; the user signs up again with a new invite."""
        name = check_user_name(name)
        secret, invite = self._new_invite(name, self._clock())
        if not await self.storage.reset_user(name, invite):   # a human's only: never a bot's (B1)
            existing = await self.storage.get_user(name)
            if existing is not None and existing.is_bot:
                raise bad_request(f"{name!r} is a bot: it has no password to reset (a new token: "
                                  f"`jumpgate ctl bots add {name} --token-only`)")
            raise AuthServiceError("not_found", f"no user {name!r}")
        await self.audit_log.record("user.reset", user=name, actor=actor)
        return Invite(name, secret, invite.expires)

    async def unlock_user(self, name: str, *, actor: str = "") -> UserInfo:
        """Lift a lockout (A5) and clear the failure count, keeping password and TOTP: the
        user logs in again at once, with no new invite. Audited with the lock it lifted.
        Returns the user as it was before (its ``locked_until`` says whether it was locked)."""
        name = check_user_name(name)
        record = await self.storage.get_user(name)
        if record is None or not await self.storage.unlock_user(name):
            raise AuthServiceError("not_found", f"no user {name!r}")
        before = self._user_info(record)
        await self.audit_log.record("user.unlock", user=name, actor=actor,
                                    locked_until=record.locked_until if before.status == "locked" else 0,
                                    failures=record.failed_logins)
        return before

    # -- invites and signup ----------------------------------------------------------
    async def _find_invite(self, token: Any, client_ip: str) -> InviteRecord:
        """The invite a token names; a refused one (unknown, used, expired) is audited."""
        invite = await self.storage.get_invite(secret_hash(token, "invite"))
        if invite is None:
            await self.audit_log.record("user.signup", success=False, reason="unknown invite",
                              client_ip=client_ip)
            raise AuthServiceError("not_found", "invite not found (ask an admin for a new one)")
        if invite.used is not None:
            await self.audit_log.record("user.signup", user=invite.user, success=False,
                              reason="invite already used", client_ip=client_ip)
            raise AuthServiceError("already_used", "this invite was already used")
        if invite.expires <= self._clock():
            await self.audit_log.record("user.signup", user=invite.user, success=False,
                              reason="invite expired", client_ip=client_ip)
            raise AuthServiceError("expired", "this invite has expired (ask an admin for a new one)")
        return invite

    async def get_invite(self, token: str, *, client_ip: str = "") -> InviteInfo:
        """The signup page: user, logins and the otpauth URI of the TOTP seed to enrol.
        ``client_ip`` (who asked, as the web service saw it) goes into a refusal's audit event."""
        invite = await self._find_invite(token, str(client_ip)[:64])
        user = await self.storage.get_user(invite.user)
        logins = user.logins if user is not None else ()
        return InviteInfo(invite.user, logins,
                          totp.provisioning_uri(invite.totp_secret, invite.user, self.cluster),
                          invite.expires, self.cluster)

    async def complete_signup(self, token: str, password: str, otp_code: str, *,
                              client_ip: str = "") -> None:
        """Set the password (policy 12..128) and confirm TOTP with a current code; once."""
        client_ip = str(client_ip)[:64]
        invite = await self._find_invite(token, client_ip)
        try:
            passwords.check_policy(password)
        except passwords.PasswordPolicyError as exc:
            await self.audit_log.record("user.signup", user=invite.user, success=False, reason="weak password",
                              client_ip=client_ip)
            raise AuthServiceError("weak_password", str(exc)) from None
        now = self._clock()
        # Count the attempt before the code is checked (A8, as logins do, A5): concurrent
        # guesses cannot outrun the count, and the last one allowed spends the invite.
        if not await self.storage.reserve_invite_attempt(invite.token_hash, now,
                                                         max_attempts=MAX_SIGNUP_ATTEMPTS):
            await self._find_invite(token, client_ip)  # says "already_used" or "expired" if so
            await self.audit_log.record("user.signup", user=invite.user, success=False,
                                        reason="too many attempts", client_ip=client_ip)
            raise AuthServiceError("expired", f"this invite is spent: {MAX_SIGNUP_ATTEMPTS} attempts "
                                   "were made with it (ask an admin for a new one)")
        counter = totp.verify(invite.totp_secret, otp_code, now=now)
        if counter is None:
            await self.audit_log.record("user.signup", user=invite.user, success=False, reason="wrong code",
                              client_ip=client_ip)
            raise AuthServiceError("access_denied", "the one-time code is wrong "
                                   "(check the authenticator app and the clock)")
        password_hash = await self._hasher.hash(password)
        if not await self.storage.complete_signup(invite.token_hash, password_hash, counter, now):
            await self._find_invite(token, client_ip)  # says "already_used" or "expired"
            raise AuthServiceError("already_used", "this invite was already used")
        await self.audit_log.record("user.signup", user=invite.user, client_ip=client_ip)

    # -- login -----------------------------------------------------------------------
    async def login(self, user: str, password: str, otp_code: str, public_key_blob: Any,
                    ttl_seconds: float | None = None, client_ip: str = "") -> LoginResult:
        """Password + TOTP → a user certificate for ``public_key_blob``.

        Every refusal is the same ``access_denied`` after the same work (A3): in a hash slot
        (A2), reserve the attempt (A5), check the password, or the dummy hash when there is
        no attempt to make, then pad the reply (A6).
        """
        ttl = check_ttl(ttl_seconds, USER_CERT_TTL, USER_CERT_TTL_MIN, USER_CERT_TTL_MAX,
                         "the certificate TTL")
        key = parse_key(public_key_blob)
        client_ip = str(client_ip)[:64]
        started = trio.current_time()
        async with self._hasher.slot() as slot:
            attempt = await self._reserve_attempt(user)
            generation = await self.storage.get_generation(str(user)[:64])  # for every attempt alike
            stored = attempt.user.password_hash if attempt.reserved and attempt.user else None
            verdict = await slot.check(password, stored)
        now = self._clock()
        reason = await self._check_attempt(attempt, verdict, otp_code, now)
        if reason is not None:
            await self._login_refused(user, attempt, reason, client_ip)
            await self._failure_delay.pad(started, str(user)[:64])
            raise AuthServiceError("access_denied", _DENIED)
        record = attempt.user
        assert record is not None
        cert = self._sign_user(key, record, ttl, now, generation)
        await self.audit_log.append_all([  # one commit for both, before the certificate leaves
            self.audit_log.event("user.login", user=record.name, client_ip=client_ip, method="password+totp"),
            self.audit_log.event("cert.create", user=record.name, kind="user", key_id=cert.key_id,
                        serial=cert.serial, principals=cert.principals, generation=generation,
                        valid_before=cert.valid_before, client_ip=client_ip)])
        await self._issued(cert, record, generation, now)
        if verdict.rehash:
            await self._after_reply(lambda: self._rehash(record, password))
        return LoginResult(record.name, cert.to_line(), record.logins, record.roles,
                           float(cert.valid_before), self.ca.host_ca_known_hosts_line(),
                           self.ca.user_ca_line(), self.cluster)

    async def _reserve_attempt(self, user: Any) -> LoginAttempt:
        """Count the attempt before its password is checked (A5); no attempt for a name
        that cannot be a user."""
        if not isinstance(user, str) or not is_user_name(user):
            return LoginAttempt(None, False)
        return await self.storage.reserve_login_attempt(
            user, self._clock(), max_failures=MAX_FAILED_LOGINS, lock_seconds=LOCK_SECONDS)

    async def _check_attempt(self, attempt: LoginAttempt, verdict: passwords.Verdict,
                             otp_code: Any, now: float) -> str | None:
        """None when the attempt succeeds (its TOTP step is then recorded, and the count
        reset); else why it is refused."""
        record = attempt.user
        if record is None:
            return "unknown user"
        if not record.signed_up:
            return "signup not completed"
        if not attempt.reserved:
            return "locked" if record.locked_until > now else "too many attempts at once"
        assert record.totp_secret is not None
        counter = totp.verify(record.totp_secret, otp_code, now=now)
        if not verdict.ok:
            return "wrong password"
        if counter is None:
            return "wrong one-time code"
        # Compare-and-set in storage: of two concurrent logins with one code, one wins.
        if counter <= record.last_totp_counter or not await self.storage.record_login_success(
                record.name, counter, lock_until=attempt.lock_until):
            return "one-time code already used"
        return None

    async def _login_refused(self, user: Any, attempt: LoginAttempt, reason: str,
                             client_ip: str) -> None:
        """Audit the refusal (queued, U3); and the lock, if this attempt was the last one
        allowed before it (its reservation set the lock, which now stands)."""
        name = attempt.user.name if attempt.user is not None else str(user)
        await self.audit_log.record("user.login", user=name, success=False, reason=reason,
                          client_ip=client_ip)
        if attempt.lock_until:
            await self.audit_log.record("user.locked", user=name, locked_until=attempt.lock_until,
                              failures=MAX_FAILED_LOGINS, client_ip=client_ip)

    async def _rehash(self, record: UserRecord, password: str) -> None:
        """Replace a hash made with weaker parameters (A4), unless the password changed since."""
        assert record.password_hash is not None
        try:
            new_hash = await self._hasher.hash(password)
            if await self.storage.update_password_hash(record.name, record.password_hash, new_hash):
                log.info("password hash of %s upgraded to the current scrypt parameters", record.name)
        except StorageError as exc:
            log.warning("password hash of %s not upgraded (next login tries again): %s",
                        record.name, exc)

    # -- user certificates -----------------------------------------------------------
    async def sign_user_cert(self, name: str, public_key_blob: Any, ttl: float | None = None, *,
                             actor: str = "") -> CertResult:
        """``ctl auth sign --user``: a certificate for an existing user's logins (automation)."""
        ttl = check_ttl(ttl, USER_CERT_TTL, USER_CERT_TTL_MIN, USER_CERT_TTL_MAX,
                         "the certificate TTL")
        key = parse_key(public_key_blob)
        record = await self.storage.get_user(check_user_name(name))
        if record is None:
            raise AuthServiceError("not_found", f"no user {name!r} (automation has its own identity: "
                                   "`jumpgate ctl bots add`)")
        if record.is_bot:
            raise bad_request(f"{record.name!r} is a bot: sign with --bot {record.name}")
        now = self._clock()
        generation = await self.storage.get_generation(record.name)
        cert = self._sign_user(key, record, ttl, now, generation)
        await self.audit_log.record("cert.create", user=record.name, kind="user", key_id=cert.key_id,
                          serial=cert.serial, principals=cert.principals, generation=generation,
                          valid_before=cert.valid_before, actor=actor)
        await self._issued(cert, record, generation, now)
        return cert_result(cert)

    def _sign_user(self, key: PublicKey, record: UserRecord, ttl: float, now: float,
                   generation: int) -> Certificate:
        """Principals = the user's logins, exactly; the CA refuses an empty list. The
        certificate carries the user's current ``generation`` (R1)."""
        try:
            return self.ca.sign_user(key, record.name, record.logins, record.roles, ttl, now, generation)
        except CAError as exc:
            raise bad_request(f"cannot issue a certificate for {record.name!r}: {exc}") from None

    async def _issued(self, cert: Certificate, record: UserRecord, generation: int, now: float) -> None:
        """Keep the serial of a user certificate before it leaves (the KRL of R5 lists it)."""
        await self.storage.record_user_cert(cert.serial, record.name, generation, float(cert.valid_before), now)
