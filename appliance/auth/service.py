"""AuthService: every business rule of the auth service, with no networking.

The auth API (``auth/server.py``), the web service and ``jumpgate ctl`` on the auth host
call these async methods; they decide *who* may call what (admin, node, joining,
anonymous web visitor) and pass the caller's identity as ``actor`` for the audit log.
Results are frozen dataclasses with ``to_wire()`` (msgpack-safe maps) or plain
values; :func:`to_wire` converts any result. Failures raise :class:`AuthServiceError`
with a stable ``code``; messages are safe to show to the user (no secrets, and no
hint whether a user name exists).

Rules enforced here (issue 3, with Teleport's defaults where it has one):

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
  refused); principals = the user's logins only, never empty.
* Join tokens: TTL default 30 min; single use, consumed by a successful join; only
  ``sha256`` of the secret is stored; a token may bind the name it joins as and the
  addresses an admin approved for its certificate.
* Joining (docs/security.md "Joining the cluster"): a taken name is refused unless the
  joiner proves the registered host key (:mod:`.rejoin`) or an admin removed the node
  first (J2); the certificate names ``NAME``, ``NAME.CLUSTER`` and only the addresses the
  token approved or the source address the auth server saw (J3, :mod:`.joining`); the
  proxy dials an address among those, set at the join and never by a heartbeat (J4).
* Names: user names and logins match ``[a-z_][a-z0-9_.-]{0,31}`` (T22: they end up
  in paths and principals); node names are one lower-case DNS label (J1); a new
  cluster's name is not a public suffix (J9, :mod:`appliance.names`).
* Every login, failure, lock, certificate, join, token and user change is an audit
  event (:mod:`appliance.audit`), written through :class:`~appliance.auth.audit_log.AuditLog`:
  a success is durable before the call returns, a refusal is queued and coalesced per
  source (docs/security.md U1-U4). :meth:`AuthService.run` is its background work.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ssh_proto.errors import KeyFormatError
from ssh_proto.keys import Certificate, PublicKey, parse_public_line

from .. import addresses, audit, names
from ..audit import AuditEvent, AuditEventError
from ..storage.base import (InviteRecord, LoginAttempt, NodeRecord, Storage, StorageError, TokenRecord,
                            UserRecord)
from . import joining, krl, passwords, rejoin, totp
from .audit_log import DEFAULT_REFUSALS_PER_SOURCE, DEFAULT_RETENTION_DAYS, AuditLog
from .ca import CAError, ClusterCA, parse_plain_public_key
from .timing import FailureDelay

__all__ = [
    "AuthService", "AuthServiceError", "CertResult", "ClusterInfo", "CreatedToken", "Invite",
    "HeartbeatResult", "InviteInfo", "JoinResult", "LoginResult", "TokenInfo", "UserInfo", "to_wire",
]

log = logging.getLogger("jumpgate.auth")

INVITE_TTL = 3600
MAX_FAILED_LOGINS = 5
LOCK_SECONDS = 30 * 60
USER_CERT_TTL = 12 * 3600
USER_CERT_TTL_MIN = 60
USER_CERT_TTL_MAX = 30 * 3600
HOST_CERT_TTL = 30 * 86400
HOST_CERT_TTL_MAX = 365 * 86400
TOKEN_TTL = 30 * 60
TOKEN_TTL_MAX = 24 * 3600
TOKEN_KINDS = ("node", "proxy")
TOKEN_KEEP_SECONDS = 86400  # used/expired tokens stay listed (as such) this long
KNOWN_ROLES = frozenset({"admin"})
MAX_LOGINS = 32
MAX_LABELS = 32
MAX_ADDRESSES = 16

ERROR_CODES = frozenset({"access_denied", "not_found", "expired", "already_used",
                         "already_exists", "bad_request", "weak_password"})

_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TOKEN_ID = re.compile(r"[0-9a-f]{1,64}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,62}")
# One answer for every refused login, locked users included (A3: no account enumeration).
_DENIED = ("access denied: wrong user name, password or one-time code "
           f"(each code works once: wait for the next one); after {MAX_FAILED_LOGINS} failed "
           f"logins a user is locked for {LOCK_SECONDS // 60} min (an admin can reset it)")


class AuthServiceError(Exception):
    """A refused request: ``code`` is stable (see :data:`ERROR_CODES`), ``message`` is
    one line for the user."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def _bad(message: str) -> AuthServiceError:
    return AuthServiceError("bad_request", message)


# ------------------------------------------------------------------------------ results


class _Wire:
    """``to_wire()`` for result dataclasses: fields as a map, tuples as lists."""

    __slots__ = ()

    def to_wire(self) -> dict[str, Any]:
        return {f.name: to_wire(getattr(self, f.name)) for f in dataclasses.fields(self)}


def to_wire(value: Any) -> Any:
    """Convert a service result (dataclass, list, map, scalar) to msgpack-safe values."""
    if hasattr(value, "to_wire"):
        return value.to_wire()
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_wire(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class Invite(_Wire):
    """A new invite. ``token`` is the secret; the web/ctl side appends ``.<TLS pin>``."""

    user: str
    token: str
    expires: float


@dataclass(frozen=True, slots=True)
class InviteInfo(_Wire):
    """What the signup page shows: the otpauth URI holds the TOTP seed to enrol."""

    user: str
    logins: tuple[str, ...]
    otp_uri: str
    expires: float
    cluster: str


@dataclass(frozen=True, slots=True)
class LoginResult(_Wire):
    """A login's certificate (``-cert.pub`` line) and the cluster trust lines."""

    user: str
    cert: str
    logins: tuple[str, ...]
    roles: tuple[str, ...]
    expires: float
    host_ca: str  # @cert-authority known_hosts line
    user_ca: str
    cluster: str


@dataclass(frozen=True, slots=True)
class UserInfo(_Wire):
    name: str
    logins: tuple[str, ...]
    roles: tuple[str, ...]
    status: str  # "invited" | "active" | "locked"
    created: float
    locked_until: float


@dataclass(frozen=True, slots=True)
class CreatedToken(_Wire):
    """A join token to hand to a node: ``token`` is ``<secret>.<host CA pin>``."""

    id: str
    kind: str
    token: str
    expires: float
    name: str = ""                      # the name it joins as ("" = the joiner's choice)
    addresses: tuple[str, ...] = ()     # addresses approved for its certificate (J3)


@dataclass(frozen=True, slots=True)
class TokenInfo(_Wire):
    id: str
    kind: str
    created: float
    expires: float
    status: str  # "active" | "expired" | "used"
    used_by: str = ""
    name: str = ""
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CertResult(_Wire):
    cert: str
    key_id: str
    principals: tuple[str, ...]
    expires: float
    serial: int


@dataclass(frozen=True, slots=True)
class JoinResult(_Wire):
    """What a joining (or renewing) node or proxy receives."""

    name: str
    kind: str
    host_cert: str
    expires: float
    user_ca: str
    host_ca: str
    cluster: str
    addr: str = ""                      # where the proxy dials it, as registered (J4)
    dropped: tuple[str, ...] = ()       # requested addresses nobody vouched for (J3)


@dataclass(frozen=True, slots=True)
class HeartbeatResult(_Wire):
    """What the auth server keeps for a node that heartbeats: its ``addr`` is the one
    registered at the join, whatever the heartbeat said (J4)."""

    addr: str


@dataclass(frozen=True, slots=True)
class ClusterInfo(_Wire):
    cluster: str
    host_ca: str
    user_ca: str
    host_ca_pin: str


# --------------------------------------------------------------------------- validation


def check_user_name(name: Any, what: str = "user name") -> str:
    """``[a-z_][a-z0-9_.-]{0,31}`` (also for logins): safe in paths and principals (T22)."""
    if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
        raise _bad(f"invalid {what} {str(name)[:40]!r}: use a-z, 0-9, '_', '.', '-' "
                   "(at most 32, starting with a letter or '_')")
    return name


def check_node_name(name: Any, what: str = "node name") -> str:
    """One lower-case DNS label, upper case folded (J1: a dotted name such as
    ``github.com`` would put that host under the cluster's host CA)."""
    try:
        return names.check_node_name(name, what)
    except names.InvalidName as exc:
        raise _bad(str(exc)) from None


def check_dns_name(name: Any, what: str = "name") -> str:
    """A lower-case DNS name (addresses, the cluster name), upper case folded."""
    try:
        return names.check_dns_name(name, what)
    except names.InvalidName as exc:
        raise _bad(str(exc)) from None


def _lookup_name(name: Any) -> str:
    """A name to look a registered host up by: a DNS name, so that a node registered
    before J1 under a dotted name can still be found, renewed and removed."""
    return check_dns_name(name, "node name")


def _names(values: Any, check: Callable[[Any, str], str], what: str, limit: int) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise _bad(f"{what}s must be a list")
    if len(values) > limit:
        raise _bad(f"at most {limit} {what}s")
    return tuple(dict.fromkeys(check(v, what) for v in values))


def _check_roles(roles: Any) -> tuple[str, ...]:
    result = _names(roles, lambda r, w: r if isinstance(r, str) else "", "role", 8)
    unknown = [r for r in result if r not in KNOWN_ROLES]
    if unknown:
        raise _bad(f"unknown role {unknown[0][:32]!r} (known: {', '.join(sorted(KNOWN_ROLES))})")
    return result


def _check_address(value: Any, what: str = "address") -> str:
    """An IP address or a DNS name (used as a host certificate principal)."""
    return addresses.canonical_ip(value) or check_dns_name(value, what)


def _check_addr(addr: Any, *, required: bool) -> str:
    """``host:port`` / ``[v6]:port`` where the proxy dials a node ("" if not required), in
    its stored form (:func:`appliance.addresses.canonical_endpoint`)."""
    if addr in ("", None) and not required:
        return ""
    try:
        return addresses.canonical_endpoint(addr)
    except addresses.AddressError as exc:
        raise _bad(str(exc)) from None


def _check_labels(labels: Any) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping) or len(labels) > MAX_LABELS:
        raise _bad(f"labels must be a map of at most {MAX_LABELS} entries")
    out: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise _bad(f"invalid label name {str(key)[:40]!r}")
        if not isinstance(value, str) or len(value) > 256 or not value.isprintable():
            raise _bad(f"label {key!r}: the value must be printable text of at most 256 characters")
        out[key] = value
    return out


def _check_ttl(ttl: Any, default: float, low: float, high: float, what: str) -> float:
    if ttl is None:
        return default
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl != ttl:
        raise _bad(f"{what} must be a number of seconds")
    if ttl < low:
        raise _bad(f"{what} must be at least {int(low)} seconds")
    if ttl > high:
        raise _bad(f"{what} must be at most {int(high)} seconds ({high / 3600:g} h)")
    return float(ttl)


def _parse_key(key: Any) -> PublicKey:
    """A public key to certify: an SSH blob (bytes) or a ``.pub`` line (str)."""
    try:
        if isinstance(key, str):
            parsed, _ = parse_public_line(key.strip())
            if not isinstance(parsed, PublicKey):
                raise _bad("a certificate cannot be certified; send the plain public key")
            return parsed
        if isinstance(key, (bytes, bytearray, memoryview)):
            return parse_plain_public_key(bytes(key))
    except (CAError, KeyFormatError) as exc:
        raise _bad(f"invalid public key: {exc}") from None
    raise _bad("the public key must be an SSH key blob or a .pub line")


def _secret_hash(token: Any, what: str) -> str:
    """sha256 hex of the secret part of ``<secret>[.<pin>]`` (not_found if malformed)."""
    secret = token.split(".", 1)[0] if isinstance(token, str) else ""
    if not _SECRET.fullmatch(secret):
        raise AuthServiceError("not_found", f"{what} not found")
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _new_secret() -> tuple[str, str]:
    """16 random bytes, base64url (22 characters), and the sha256 hex we store.

    Never starting with "-": the secret is pasted as a command-line argument
    (`signup ... TOKEN`, `start --token TOKEN`), where argparse would take it for an option.
    """
    secret = secrets.token_urlsafe(16)
    while secret.startswith("-"):
        secret = secrets.token_urlsafe(16)
    return secret, hashlib.sha256(secret.encode("ascii")).hexdigest()


def _cert_result(cert: Certificate) -> CertResult:
    return CertResult(cert.to_line(), cert.key_id, cert.principals, float(cert.valid_before),
                      cert.serial)


async def _cluster_name_warning(storage: Storage, cluster: str) -> str:
    """J9: "" for a fine name; a warning for an installed cluster named after a public
    suffix; bad_request when a new cluster would be."""
    if not names.is_public_suffix(cluster):
        return ""
    problem = (f"the cluster name {cluster!r} is a public suffix (a top-level or shared domain): "
               f"users' ssh_config would say 'Host *.{cluster}' and trust the cluster's host CA "
               f"for hosts of other owners")
    if await storage.get_ca("host") is None:
        raise _bad(f"{problem}; choose another --cluster-name (e.g. {cluster}-jumpgate or a "
                   "domain of your own)")
    warning = (f"WARNING: {problem}. This installed cluster keeps working, but clients leave "
               f"'*.{cluster}' out of their known_hosts and ssh_config: reach nodes by their bare "
               "names, and plan a new cluster with a name of your own")
    log.warning("%s", warning)
    return warning


# ------------------------------------------------------------------------------ service


class AuthService:
    """All business rules of the auth service. Build it with :meth:`create`.

    >>> service = await AuthService.create(SQLiteStorage(path), "prod")   # doctest: +SKIP
    >>> invite = await service.create_user("alice", ["alice", "root"])     # doctest: +SKIP
    """

    def __init__(self, storage: Storage, ca: ClusterCA, *,
                 clock: Callable[[], float] = time.time,
                 hasher: passwords.PasswordHasher = passwords.DEFAULT_HASHER,
                 audit_retention_days: int = DEFAULT_RETENTION_DAYS,
                 audit_refusals_per_source: int = DEFAULT_REFUSALS_PER_SOURCE,
                 failure_delay: FailureDelay | None = None):
        self.storage = storage
        self.ca = ca
        self.cluster = ca.cluster
        self._clock = clock
        self._hasher = hasher
        #: Problems an admin must hear about at every start (e.g. J9's cluster name).
        self.warnings: tuple[str, ...] = ()
        self._failure_delay = failure_delay or FailureDelay()
        self.audit_log = AuditLog(storage, clock=clock, retention_days=audit_retention_days,
                                  refusals_per_source=audit_refusals_per_source)
        self._background: trio.Nursery | None = None

    @classmethod
    async def create(cls, storage: Storage, cluster: str, *,
                     clock: Callable[[], float] = time.time,
                     hasher: passwords.PasswordHasher = passwords.DEFAULT_HASHER,
                     audit_retention_days: int = DEFAULT_RETENTION_DAYS,
                     audit_refusals_per_source: int = DEFAULT_REFUSALS_PER_SOURCE,
                     failure_delay: FailureDelay | None = None) -> AuthService:
        """Load (or on the first start create, and audit) the CAs of ``cluster``.

        A new cluster may not be named after a public suffix (J9); an existing one that is
        still starts, with the reason in :attr:`warnings` (and the log) for ``start`` to print.
        """
        cluster = check_dns_name(cluster, "cluster name")
        warning = await _cluster_name_warning(storage, cluster)
        try:
            ca = await ClusterCA.load_or_create(storage, cluster, clock=clock)
        except CAError as exc:
            raise AuthServiceError("bad_request", str(exc)) from None
        try:
            service = cls(storage, ca, clock=clock, hasher=hasher,
                          audit_retention_days=audit_retention_days,
                          audit_refusals_per_source=audit_refusals_per_source,
                          failure_delay=failure_delay)
        except ValueError as exc:
            raise _bad(str(exc)) from None
        service.warnings = (warning,) if warning else ()
        for kind in ca.new_kinds:
            key = ca.user_ca_public if kind == "user" else ca.host_ca_public
            await service._audit("ca.create", kind=kind, fingerprint=key.fingerprint())
        return service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The auth service's background work, until cancelled: the audit log's writer and its
        retention (U3, U4), and the rehashes that follow logins (A4).

        >>> await nursery.start(service.run)                                 # doctest: +SKIP
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.audit_log.run)
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

    def _event(self, event: str, *, user: str = "", success: bool = True,
               **fields: Any) -> AuditEvent:
        return audit.make_event(event, time=self._clock(), user=user, success=success,
                                **{k: v for k, v in fields.items() if v not in (None, "")})

    async def _audit(self, event: str, *, user: str = "", success: bool = True,
                     **fields: Any) -> None:
        """Record one of our events: durable on return if a success, queued if a refusal."""
        await self.audit_log.append(self._event(event, user=user, success=success, **fields))

    # -- users -----------------------------------------------------------------------
    async def create_user(self, name: str, logins: Sequence[str], roles: Sequence[str] = (), *,
                          actor: str = "") -> Invite:
        """Add a user (logins must not be empty) and return a 1 h single-use invite."""
        name = check_user_name(name)
        logins = _names(logins, check_user_name, "login", MAX_LOGINS)
        if not logins:
            raise _bad("a user needs at least one login (certificates never have empty principals)")
        roles = _check_roles(roles)
        now = self._clock()
        secret, invite = self._new_invite(name, now)
        if not await self.storage.create_user(UserRecord(name, logins, roles, created=now), invite):
            raise AuthServiceError("already_exists", f"user {name!r} already exists")
        await self._audit("user.create", user=name, actor=actor, logins=logins, roles=roles)
        return Invite(name, secret, invite.expires)

    def _new_invite(self, name: str, now: float) -> tuple[str, InviteRecord]:
        secret, token_hash = _new_secret()
        return secret, InviteRecord(token_hash, name, totp.new_secret(), now, now + INVITE_TTL)

    async def get_user(self, name: str) -> UserInfo:
        record = await self.storage.get_user(check_user_name(name))
        if record is None:
            raise AuthServiceError("not_found", f"no user {name!r}")
        return self._user_info(record)

    def _user_info(self, u: UserRecord) -> UserInfo:
        now = self._clock()
        status = "invited" if not u.signed_up else "locked" if u.locked_until > now else "active"
        return UserInfo(u.name, u.logins, u.roles, status, u.created, u.locked_until)

    async def list_users(self) -> list[UserInfo]:
        return [self._user_info(u) for u in await self.storage.list_users()]

    async def delete_user(self, name: str, *, actor: str = "") -> None:
        if not await self.storage.delete_user(check_user_name(name)):
            raise AuthServiceError("not_found", f"no user {name!r}")
        await self._audit("user.delete", user=name, actor=actor)

    async def reset_user(self, name: str, *, actor: str = "") -> Invite:
        """Clear password, TOTP and lock; the user signs up again with a new invite."""
        name = check_user_name(name)
        secret, invite = self._new_invite(name, self._clock())
        if not await self.storage.reset_user(name, invite):
            raise AuthServiceError("not_found", f"no user {name!r}")
        await self._audit("user.reset", user=name, actor=actor)
        return Invite(name, secret, invite.expires)

    # -- invites and signup ----------------------------------------------------------
    async def _find_invite(self, token: Any, client_ip: str) -> InviteRecord:
        """The invite a token names; a refused one (unknown, used, expired) is audited."""
        invite = await self.storage.get_invite(_secret_hash(token, "invite"))
        if invite is None:
            await self._audit("user.signup", success=False, reason="unknown invite",
                              client_ip=client_ip)
            raise AuthServiceError("not_found", "invite not found (ask an admin for a new one)")
        if invite.used is not None:
            await self._audit("user.signup", user=invite.user, success=False,
                              reason="invite already used", client_ip=client_ip)
            raise AuthServiceError("already_used", "this invite was already used")
        if invite.expires <= self._clock():
            await self._audit("user.signup", user=invite.user, success=False,
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
            await self._audit("user.signup", user=invite.user, success=False, reason="weak password",
                              client_ip=client_ip)
            raise AuthServiceError("weak_password", str(exc)) from None
        now = self._clock()
        counter = totp.verify(invite.totp_secret, otp_code, now=now)
        if counter is None:
            await self._audit("user.signup", user=invite.user, success=False, reason="wrong code",
                              client_ip=client_ip)
            raise AuthServiceError("access_denied", "the one-time code is wrong "
                                   "(check the authenticator app and the clock)")
        password_hash = await self._hasher.hash(password)
        if not await self.storage.complete_signup(invite.token_hash, password_hash, counter, now):
            await self._find_invite(token, client_ip)  # says "already_used" or "expired"
            raise AuthServiceError("already_used", "this invite was already used")
        await self._audit("user.signup", user=invite.user, client_ip=client_ip)

    # -- login -----------------------------------------------------------------------
    async def login(self, user: str, password: str, otp_code: str, public_key_blob: Any,
                    ttl_seconds: float | None = None, client_ip: str = "") -> LoginResult:
        """Password + TOTP → a user certificate for ``public_key_blob``.

        Every refusal is the same ``access_denied`` after the same work (A3): in a hash slot
        (A2), reserve the attempt (A5), check the password, or the dummy hash when there is
        no attempt to make, then pad the reply (A6).
        """
        ttl = _check_ttl(ttl_seconds, USER_CERT_TTL, USER_CERT_TTL_MIN, USER_CERT_TTL_MAX,
                         "the certificate TTL")
        key = _parse_key(public_key_blob)
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
            self._event("user.login", user=record.name, client_ip=client_ip, method="password+totp"),
            self._event("cert.create", user=record.name, kind="user", key_id=cert.key_id,
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
        if not isinstance(user, str) or not _USER_NAME.fullmatch(user):
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
        await self._audit("user.login", user=name, success=False, reason=reason,
                          client_ip=client_ip)
        if attempt.lock_until:
            await self._audit("user.locked", user=name, locked_until=attempt.lock_until,
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

    # -- certificates and CA exports -------------------------------------------------
    async def sign_user_cert(self, name: str, public_key_blob: Any, ttl: float | None = None, *,
                             actor: str = "") -> CertResult:
        """``ctl auth sign --user``: a certificate for an existing user's logins (automation)."""
        ttl = _check_ttl(ttl, USER_CERT_TTL, USER_CERT_TTL_MIN, USER_CERT_TTL_MAX,
                         "the certificate TTL")
        key = _parse_key(public_key_blob)
        record = await self.storage.get_user(check_user_name(name))
        if record is None:
            raise AuthServiceError("not_found", f"no user {name!r}")
        now = self._clock()
        generation = await self.storage.get_generation(record.name)
        cert = self._sign_user(key, record, ttl, now, generation)
        await self._audit("cert.create", user=record.name, kind="user", key_id=cert.key_id,
                          serial=cert.serial, principals=cert.principals, generation=generation,
                          valid_before=cert.valid_before, actor=actor)
        await self._issued(cert, record, generation, now)
        return _cert_result(cert)

    async def sign_host_cert(self, name: str, public_key_blob: Any,
                             principals: Sequence[str] = (), ttl: float | None = None, *,
                             actor: str = "") -> CertResult:
        """``ctl auth sign --host``: a ``node:<name>`` certificate for an agentless OpenSSH node.

        ``name`` is one DNS label (J1) not taken by a joined node or proxy (J2: a
        certificate for that name would let its holder pose as it); ``principals`` are
        addresses the admin vouches for (J3), besides name and name.CLUSTER.
        """
        name = check_node_name(name)
        extra = self._approved_addresses(principals, "principal")
        ttl = _check_ttl(ttl, HOST_CERT_TTL, USER_CERT_TTL_MIN, HOST_CERT_TTL_MAX,
                         "the certificate TTL")
        key = _parse_key(public_key_blob)
        existing = await self.storage.get_node(name)
        if existing is not None and existing.kind in TOKEN_KINDS:
            raise AuthServiceError("already_exists", f"{name!r} is a joined {existing.kind}; its "
                                   "certificate comes from its join (remove it first to reuse the name)")
        cert = self._sign_host(key, "node", name, extra, ttl)
        await self._audit("cert.create", kind="host", key_id=cert.key_id, serial=cert.serial,
                          principals=cert.principals, valid_before=cert.valid_before, actor=actor)
        return _cert_result(cert)

    async def sign_auth_cert(self, public_key_blob: Any, principals: Sequence[str]) -> CertResult:
        """The auth service's own ``auth:auth`` certificate (``start``; no API caller may ask:
        it is what nodes and clients verify the auth server by)."""
        extra = _names(principals, _check_address, "principal", MAX_ADDRESSES)
        cert = self._sign_host(_parse_key(public_key_blob), "auth", "auth", extra, HOST_CERT_TTL)
        await self._audit("cert.create", kind="host", key_id=cert.key_id, serial=cert.serial,
                          principals=cert.principals, valid_before=cert.valid_before)
        return _cert_result(cert)

    def _sign_user(self, key: PublicKey, record: UserRecord, ttl: float, now: float,
                   generation: int) -> Certificate:
        """Principals = the user's logins, exactly; the CA refuses an empty list. The
        certificate carries the user's current ``generation`` (R1)."""
        try:
            return self.ca.sign_user(key, record.name, record.logins, record.roles, ttl, now, generation)
        except CAError as exc:
            raise _bad(f"cannot issue a certificate for {record.name!r}: {exc}") from None

    async def _issued(self, cert: Certificate, record: UserRecord, generation: int, now: float) -> None:
        """Keep the serial of a user certificate before it leaves (the KRL of R5 lists it)."""
        await self.storage.record_user_cert(cert.serial, record.name, generation, float(cert.valid_before), now)

    def _sign_host(self, key: PublicKey, kind: str, name: str, addresses: Sequence[str],
                   ttl: float) -> Certificate:
        principals = (name, f"{name}.{self.cluster}", *addresses)
        try:
            return self.ca.sign_host(key, kind, name, principals, ttl, self._clock())
        except CAError as exc:
            raise _bad(f"cannot issue a host certificate for {name!r}: {exc}") from None

    async def export_ca(self, kind: str, host_patterns: Sequence[str] | None = None) -> str | bytes:
        """``user``: a TrustedUserCAKeys line; ``host``: an ``@cert-authority`` line; ``krl``:
        an OpenSSH KRL (bytes, for sshd's ``RevokedKeys``) of every unexpired user certificate
        of a deleted or reset user."""
        if kind == "user":
            return self.ca.user_ca_line()
        if kind == "krl":
            now = self._clock()
            return krl.encode_krl(self.ca.user_ca_public, await self.storage.list_revoked_user_certs(now),
                                  generated=int(now), comment=f"jumpgate {self.cluster}")
        if kind == "host":
            try:
                return self.ca.host_ca_known_hosts_line(host_patterns or ("*",))
            except CAError as exc:
                raise _bad(str(exc)) from None
        raise _bad("the CA type must be 'user', 'host' or 'krl'")

    async def cluster_info(self) -> ClusterInfo:
        return ClusterInfo(self.cluster, self.ca.host_ca_known_hosts_line(),
                           self.ca.user_ca_line(), self.ca.pin_for_host_ca())

    # -- join tokens -----------------------------------------------------------------
    async def create_token(self, kind: str, ttl_seconds: float | None = TOKEN_TTL, *,
                           name: str = "", addresses: Sequence[str] = (),
                           actor: str = "") -> CreatedToken:
        """A single-use join token ``<secret>.<host CA pin>`` for a node or a proxy.

        ``name`` binds the name it joins as (one DNS label, J1); ``addresses`` are the
        addresses the admin approves for its host certificate and dial address (J3, J4).
        A token for a registered name re-joins that host only (J2).
        """
        if kind not in TOKEN_KINDS:
            raise _bad("the token type must be 'node' or 'proxy'")
        ttl = _check_ttl(ttl_seconds, TOKEN_TTL, 60, TOKEN_TTL_MAX, "the token TTL")
        name = check_node_name(name) if name else ""
        approved = self._approved_addresses(addresses, "address")
        now = self._clock()
        await self.storage.purge_tokens(now - TOKEN_KEEP_SECONDS)
        secret, token_hash = _new_secret()
        record = TokenRecord(secrets.token_hex(8), token_hash, kind, now, now + ttl,
                             node_name=name, addresses=approved)
        await self.storage.put_token(record)
        await self._audit("token.create", kind=kind, token_id=record.id, expires=record.expires,
                          node=name, addresses=approved, actor=actor)
        pin = self.ca.pin_for_host_ca().removeprefix("sha256:")
        return CreatedToken(record.id, kind, f"{secret}.{pin}", record.expires, name, approved)

    def _approved_addresses(self, values: Any, what: str) -> tuple[str, ...]:
        """Addresses an admin vouches for: IPs or DNS names, none under ``.CLUSTER`` (those
        are node names, given with the name only)."""
        approved = _names(values, _check_address, what, MAX_ADDRESSES)
        for address in approved:
            if joining.under_cluster(address, self.cluster):
                raise _bad(f"{address!r} is a name under the cluster's domain .{self.cluster}: "
                           "nodes get NAME and NAME.CLUSTER from their name, not as an address")
        return approved

    def _token_info(self, t: TokenRecord, now: float) -> TokenInfo:
        status = "used" if t.used is not None else "expired" if t.expires <= now else "active"
        return TokenInfo(t.id, t.kind, t.created, t.expires, status, t.used_by, t.node_name,
                         tuple(t.addresses))

    async def list_tokens(self) -> list[TokenInfo]:
        now = self._clock()
        await self.storage.purge_tokens(now - TOKEN_KEEP_SECONDS)
        return [self._token_info(t, now) for t in await self.storage.list_tokens()]

    async def delete_token(self, token_id: str, *, actor: str = "") -> None:
        if not isinstance(token_id, str) or not _TOKEN_ID.fullmatch(token_id) \
                or not await self.storage.delete_token(token_id):
            raise AuthServiceError("not_found", f"no token {str(token_id)[:20]!r}")
        await self._audit("token.delete", token_id=token_id, actor=actor)

    async def validate_token(self, token: str, kind: str | None = None) -> TokenInfo:
        """Check a join token without using it (the API's ``-join`` password auth)."""
        record = await self._find_token(token)
        if kind is not None and record.kind != kind:
            raise AuthServiceError("access_denied", f"this token is for joining a {record.kind}")
        return self._token_info(record, self._clock())

    async def _find_token(self, token: Any) -> TokenRecord:
        record = await self.storage.get_token(_secret_hash(token, "join token"))
        if record is None:
            raise AuthServiceError("not_found", "join token not found")
        if record.used is not None:
            raise AuthServiceError("already_used", "this join token was already used")
        if record.expires <= self._clock():
            raise AuthServiceError("expired", "this join token has expired")
        return record

    # -- nodes -----------------------------------------------------------------------
    async def join(self, token: str, kind: str, name: str, host_public_key_blob: Any,
                   addresses: Sequence[str] = (), labels: Mapping[str, str] | None = None,
                   addr: str = "", client_ip: str = "", proof: bytes = b"",
                   session_id: bytes = b"") -> JoinResult:
        """Use a join token: host certificate for the node/proxy, and register it.

        The API fills ``token``, ``client_ip`` and ``session_id`` from the connection.
        A taken name needs ``proof`` (:func:`.rejoin.sign_proof` with the registered key,
        J2); the certificate's principals are name, name.CLUSTER and the granted addresses
        (J3, requested ones outside them are listed in ``dropped``); ``addr`` must be at a
        granted address (J4). Nothing is consumed or changed by a refused join.
        """
        if kind not in TOKEN_KINDS:
            raise _bad("the kind must be 'node' or 'proxy'")
        name = check_node_name(name)
        key = _parse_key(host_public_key_blob)
        requested = _names(addresses, _check_address, "address", MAX_ADDRESSES)
        labels, addr = _check_labels(labels), _check_addr(addr, required=False)
        client_ip = str(client_ip)[:64]
        try:
            record = await self._find_token(token)
            existing, granted = await self._check_join(record, kind, name, key, addr, client_ip,
                                                       proof, session_id)
            if not await self.storage.consume_token(record.token_hash, self._clock(),
                                                    f"{kind}:{name}"):
                raise AuthServiceError("already_used", "this join token was already used")
        except AuthServiceError as exc:
            await self._audit("node.join", success=False, node=name, kind=kind,
                              reason=exc.code, detail=exc.message[:300], client_ip=client_ip)
            raise
        await self._audit("token.use", token_id=record.id, kind=kind, node=name)
        return await self._register_joined(kind, name, key, granted, labels, addr, existing,
                                           requested, client_ip)

    async def _check_join(self, record: TokenRecord, kind: str, name: str, key: PublicKey, addr: str,
                          client_ip: str, proof: Any, session_id: Any,
                          ) -> tuple[NodeRecord | None, tuple[str, ...]]:
        """J2..J4 (:mod:`.joining`): (the registered record if a proven re-join, granted addresses)."""
        try:
            joining.check_token_for(record, kind, name)
            existing = await self.storage.get_node(name)
            joining.check_name_free_or_proven(existing, kind, name, key, proof, session_id)
            held = {a for n in await self.storage.list_nodes() if n.name != name for a in n.addresses}
            granted = joining.grant_addresses(record.addresses, client_ip, held_by_others=held)
            joining.check_dial_addr(addr, granted, client_ip)
        except joining.JoinRefused as exc:
            raise AuthServiceError(exc.code, exc.message) from None
        return existing, granted

    async def _register_joined(self, kind: str, name: str, key: PublicKey, granted: tuple[str, ...],
                               labels: dict[str, str], addr: str, existing: NodeRecord | None,
                               requested: tuple[str, ...], client_ip: str) -> JoinResult:
        cert = self._sign_host(key, kind, name, granted, HOST_CERT_TTL)
        now = self._clock()
        await self.storage.put_node(NodeRecord(
            name, kind, addr, labels, now, False, granted, key.blob,
            existing.created if existing is not None else now))
        dropped = tuple(a for a in requested if a not in granted and a not in cert.principals)
        await self._audit("node.join", node=name, kind=kind, client_ip=client_ip, addr=addr,
                          rejoin=existing is not None, dropped=dropped)
        await self._audit("cert.create", kind="host", key_id=cert.key_id, serial=cert.serial,
                          principals=cert.principals, valid_before=cert.valid_before)
        return self._join_result(name, kind, cert, addr, dropped)

    def _join_result(self, name: str, kind: str, cert: Certificate, addr: str,
                     dropped: tuple[str, ...] = ()) -> JoinResult:
        return JoinResult(name, kind, cert.to_line(), float(cert.valid_before),
                          self.ca.user_ca_line(), self.ca.host_ca_known_hosts_line(), self.cluster,
                          addr, dropped)

    async def renew_host_cert(self, name: str, host_public_key_blob: Any) -> JoinResult:
        """A fresh host certificate for a joined node/proxy, for the key it joined with and
        the principals it was granted then (a node joined before J1..J4 keeps its own)."""
        name = _lookup_name(name)
        key = _parse_key(host_public_key_blob)
        node = await self.storage.get_node(name)
        if node is None or node.kind not in TOKEN_KINDS:
            raise AuthServiceError("not_found", f"no joined node {name!r}")
        if node.host_key is None or not hmac.compare_digest(node.host_key, key.blob):
            raise AuthServiceError("access_denied", "this is not the host key the node joined with")
        if not names.is_node_name(name):
            log.warning("renewing %s %r, registered before node names were one DNS label: clients "
                        "leave it out of ssh_config; re-join it under a one-label name", node.kind, name)
        cert = self._sign_host(key, node.kind, name, node.addresses, HOST_CERT_TTL)
        await self._audit("cert.create", kind="host", key_id=cert.key_id, serial=cert.serial,
                          principals=cert.principals, valid_before=cert.valid_before, renew=True)
        return self._join_result(name, node.kind, cert, node.addr)

    async def heartbeat(self, name: str, addr: str = "", labels: Mapping[str, str] | None = None,
                        tunnel: bool = False) -> HeartbeatResult:
        """A joined node/proxy is alive, with these labels (``tunnel``: reachable by tunnel).

        ``addr`` is what the node believes its address is; it is never stored (J4): the
        proxy keeps dialling the address registered at the join, returned here so that the
        node can say when the two differ (re-join to move it).
        """
        name = _lookup_name(name)
        _check_addr(addr, required=False)
        labels = _check_labels(labels)
        node = await self.storage.get_node(name)
        if node is None or not await self.storage.heartbeat_node(name, labels, bool(tunnel),
                                                                  self._clock()):
            raise AuthServiceError("not_found", f"no node {name!r}: join again with a new token")
        return HeartbeatResult(node.addr)

    async def add_node(self, name: str, addr: str, labels: Mapping[str, str] | None = None, *,
                       actor: str = "") -> NodeRecord:
        """Register (or update) an agentless OpenSSH node reachable at ``addr``."""
        name = check_node_name(name)
        addr, labels = _check_addr(addr, required=True), _check_labels(labels)
        existing = await self.storage.get_node(name)
        if existing is not None and existing.kind != "openssh":
            raise AuthServiceError("already_exists", f"{name!r} is already a {existing.kind}")
        now = self._clock()
        created = existing.created if existing is not None else now
        node = NodeRecord(name, "openssh", addr, labels, now, False, (), None, created)
        await self.storage.put_node(node)
        await self._audit("node.add", node=name, addr=addr, actor=actor)
        return node

    async def get_node(self, name: str) -> NodeRecord:
        node = await self.storage.get_node(_lookup_name(name))
        if node is None:
            raise AuthServiceError("not_found", f"no node {name!r}")
        return node

    async def list_nodes(self, labels: Mapping[str, str] | None = None,
                         include_proxies: bool = False) -> list[NodeRecord]:
        """Nodes (and proxies if asked) carrying every ``labels`` key=value."""
        wanted = _check_labels(labels)
        return [n for n in await self.storage.list_nodes()
                if (include_proxies or n.kind != "proxy")
                and all(n.labels.get(k) == v for k, v in wanted.items())]

    async def remove_node(self, name: str, *, actor: str = "") -> None:
        if not await self.storage.delete_node(_lookup_name(name)):
            raise AuthServiceError("not_found", f"no node {name!r}")
        await self._audit("node.remove", node=name, actor=actor)

    # -- audit -----------------------------------------------------------------------
    async def emit_audit(self, event: Mapping[str, Any], *, emitter: str = "") -> int:
        """Record an event reported by a node or proxy (session.start, exec, ...): a success
        is durable on return (its id), a refusal is queued and coalesced (0; U3)."""
        try:
            record = AuditEvent.from_wire(event, time=self._clock(),
                                          extra={"emitter": emitter} if emitter else None)
        except AuditEventError as exc:
            raise _bad(str(exc)) from None
        return await self.audit_log.append(record)

    async def list_audit(self, limit: int = 100, before_id: int | None = None) -> list[AuditEvent]:
        """Newest first; page with ``before_id`` = the last id seen."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= 10_000:
            raise _bad("limit must be 1..10000")
        if before_id is not None and (isinstance(before_id, bool) or not isinstance(before_id, int)):
            raise _bad("before_id must be an integer")
        await self.audit_log.flush()  # the refusals still queued are part of the answer
        return list(await self.storage.list_audit(limit, before_id))
