"""AuthService: every business rule of the auth service, with no networking.

The auth API (``auth/server.py``), the web service and ``jumpgate ctl`` on the auth host
call these async methods; they decide *who* may call what (admin, node, joining,
anonymous web visitor) and pass the caller's identity as ``actor`` for the audit log.
Results are frozen dataclasses with ``to_wire()`` (msgpack-safe maps, :mod:`.results`) or
plain values; :func:`to_wire` converts any result. Failures raise :class:`AuthServiceError`
with a stable ``code``; messages are safe to show to the user (no secrets, and no hint
whether a user name exists).

:class:`AuthService` is a facade over two halves, each with its rules in its docstring:

* :class:`~.accounts.Accounts` — users, invites, signup, login and user certificates;
* :class:`~.hosts.Hosts` — join tokens, joining, heartbeats, the node inventory and host
  certificates;
* :class:`~.bots.Bots` — automation identities, their bot tokens and certificates.

What the two share stays here: the cluster's CAs and their exports, the audit log, and the
argument checks of :mod:`.checks`. The API dispatcher calls the service's methods by name
(:data:`appliance.api.server.ALLOWED`): each public method of a half is an attribute of the
facade (:class:`_Delegate`), with the half's own signature, so ``inspect.signature`` and the
allow-table see one flat API.

A new cluster's name is not a public suffix (J9, :mod:`appliance.names`). Every change is an
audit event (:mod:`appliance.audit`), written through
:class:`~appliance.auth.audit_log.AuditLog`: a success is durable before the call returns, a
refusal is queued and coalesced per source (docs/security.md U1-U4). :meth:`AuthService.run`
is the background work.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio

from .. import names
from ..audit import AuditEvent, AuditEventError
from ..storage.base import Storage
from . import krl, passwords
from .accounts import LOCK_SECONDS, MAX_FAILED_LOGINS, USER_CERT_TTL, Accounts
from .accounts import _check_user_roles as check_user_roles
from .bots import Bots
from .audit_log import DEFAULT_REFUSALS_PER_SOURCE, DEFAULT_RETENTION_DAYS, AuditLog
from .ca import CAError, ClusterCA
from .checks import ERROR_CODES, AuthServiceError, bad_request, check_dns_name, check_list
from .hosts import HOST_CERT_TTL, TOKEN_TTL, Hosts
from .sessions import Sessions
from ..sessions.store import RecordingStore
from .results import (CertResult, ClusterInfo, ClusterStatus, CreatedToken, HeartbeatResult, HostStatus, Invite,
                      InviteInfo, JoinResult, LoginResult, TokenInfo, UserInfo, to_wire)
from .timing import FailureDelay

__all__ = [
    "ERROR_CODES", "HOST_CERT_TTL", "LOCK_SECONDS", "MAX_FAILED_LOGINS", "TOKEN_TTL", "USER_CERT_TTL",
    "AuthService", "AuthServiceError", "CertResult", "ClusterInfo", "CreatedToken", "Invite",
    "HeartbeatResult", "InviteInfo", "JoinResult", "LoginResult", "TokenInfo", "UserInfo", "to_wire",
]

log = logging.getLogger("jumpgate.auth")

#: A node or proxy that heartbeat this recently is "online" in ``ctl status`` (3 heartbeats).
ONLINE_SECONDS = 90.0


async def _cluster_name_warning(storage: Storage, cluster: str) -> str:
    """J9: "" for a fine name; a warning for an installed cluster named after a public
    suffix; bad_request when a new cluster would be."""
    if not names.is_public_suffix(cluster):
        return ""
    problem = (f"the cluster name {cluster!r} is a public suffix (a top-level or shared domain): "
               f"users' ssh_config would say 'Host *.{cluster}' and trust the cluster's host CA "
               f"for hosts of other owners")
    if await storage.get_ca("host") is None:
        raise bad_request(f"{problem}; choose another --cluster-name (e.g. {cluster}-jumpgate or a "
                   "domain of your own)")
    warning = (f"WARNING: {problem}. This installed cluster keeps working, but clients leave "
               f"'*.{cluster}' out of their known_hosts and ssh_config: reach nodes by their bare "
               "names, and plan a new cluster with a name of your own")
    log.warning("%s", warning)
    return warning


class _Delegate:
    """A facade attribute that is the method of the same name of one half (``users`` or
    ``hosts``): ``service.login`` is ``service.users.login``, signature and docstring included."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, service: Any, owner: type | None = None) -> Any:
        if service is None:
            return self
        return getattr(getattr(service, self.part), self.name)


class AuthService:
    """All business rules of the auth service. Build it with :meth:`create`.

    >>> service = await AuthService.create(SQLiteStorage(path), "prod")   # doctest: +SKIP
    >>> invite = await service.create_user("alice", ["alice", "root"])     # doctest: +SKIP
    """

    # -- users (appliance/auth/accounts.py) -------------------------------------------
    create_user = _Delegate("users")
    get_user = _Delegate("users")
    list_users = _Delegate("users")
    delete_user = _Delegate("users")
    reset_user = _Delegate("users")
    unlock_user = _Delegate("users")
    get_invite = _Delegate("users")
    complete_signup = _Delegate("users")
    login = _Delegate("users")
    sign_user_cert = _Delegate("users")
    # -- hosts (appliance/auth/hosts.py) ----------------------------------------------
    create_token = _Delegate("hosts")
    list_tokens = _Delegate("hosts")
    delete_token = _Delegate("hosts")
    validate_token = _Delegate("hosts")
    join = _Delegate("hosts")
    renew_host_cert = _Delegate("hosts")
    heartbeat = _Delegate("hosts")
    mark_offline = _Delegate("hosts")
    add_node = _Delegate("hosts")
    update_node = _Delegate("hosts")
    get_node = _Delegate("hosts")
    list_nodes = _Delegate("hosts")
    remove_node = _Delegate("hosts")
    sign_host_cert = _Delegate("hosts")
    sign_auth_cert = _Delegate("hosts")
    # -- sessions (appliance/auth/sessions.py) ----------------------------------------
    session_started = _Delegate("sessions")
    upload_recording_chunk = _Delegate("sessions")
    finish_session = _Delegate("sessions")
    list_sessions = _Delegate("sessions")
    get_session = _Delegate("sessions")
    read_recording_chunk = _Delegate("sessions")
    search_sessions = _Delegate("sessions")
    # -- bots (appliance/auth/bots.py) ------------------------------------------------
    create_bot = _Delegate("bots")
    add_bot_token = _Delegate("bots")
    list_bots = _Delegate("bots")
    delete_bot = _Delegate("bots")
    sign_bot_cert = _Delegate("bots")
    bot_join = _Delegate("bots")
    renew_bot_cert = _Delegate("bots")

    def __init__(self, storage: Storage, ca: ClusterCA, *,
                 clock: Callable[[], float] = time.time,
                 hasher: passwords.PasswordHasher = passwords.DEFAULT_HASHER,
                 audit_retention_days: int = DEFAULT_RETENTION_DAYS,
                 audit_refusals_per_source: int = DEFAULT_REFUSALS_PER_SOURCE,
                 failure_delay: FailureDelay | None = None, recordings: RecordingStore | None = None):
        self.storage = storage
        self.ca = ca
        self.cluster = ca.cluster
        self._clock = clock
        #: Problems an admin must hear about at every start (e.g. J9's cluster name).
        self.warnings: tuple[str, ...] = ()
        self.audit_log = AuditLog(storage, clock=clock, retention_days=audit_retention_days,
                                  refusals_per_source=audit_refusals_per_source)
        self.users = Accounts(storage, ca, self.audit_log, clock=clock, hasher=hasher, failure_delay=failure_delay)
        self.hosts = Hosts(storage, ca, self.audit_log, clock=clock)
        self.bots = Bots(storage, ca, self.audit_log, clock=clock, check_roles=check_user_roles)
        self.sessions = Sessions(storage, recordings, clock=clock)

    @classmethod
    async def create(cls, storage: Storage, cluster: str, *,
                     clock: Callable[[], float] = time.time,
                     hasher: passwords.PasswordHasher = passwords.DEFAULT_HASHER,
                     audit_retention_days: int = DEFAULT_RETENTION_DAYS,
                     audit_refusals_per_source: int = DEFAULT_REFUSALS_PER_SOURCE,
                     failure_delay: FailureDelay | None = None,
                     recordings: RecordingStore | None = None) -> AuthService:
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
                          failure_delay=failure_delay, recordings=recordings)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        service.warnings = (warning,) if warning else ()
        for kind in ca.new_kinds:
            key = ca.user_ca_public if kind == "user" else ca.host_ca_public
            await service.audit_log.record("ca.create", kind=kind, fingerprint=key.fingerprint())
        return service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The auth service's background work, until cancelled: the audit log's writer and its
        retention (U3, U4), and the rehashes that follow logins (A4).

        >>> await nursery.start(service.run)                                 # doctest: +SKIP
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.audit_log.run)
            await nursery.start(self.users.run)
            task_status.started()

    # -- the CAs -----------------------------------------------------------------------
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
                raise bad_request(str(exc)) from None
        raise bad_request("the CA type must be 'user', 'host' or 'krl'")

    async def cluster_info(self) -> ClusterInfo:
        return ClusterInfo(self.cluster, self.ca.host_ca_known_hosts_line(),
                           self.ca.user_ca_line(), self.ca.pin_for_host_ca())

    async def cluster_status(self) -> ClusterStatus:
        """``ctl status``: the cluster's name, its CAs' fingerprints and the host CA's pin (what
        join tokens carry), the version and storage schema of this auth service, and every
        joined node and proxy with its last heartbeat."""
        from .. import __version__
        now = self._clock()
        hosts = tuple(HostStatus(n.name, n.kind, n.last_seen,
                                 "online" if now - n.last_seen <= ONLINE_SECONDS else "offline")
                      for n in await self.storage.list_nodes() if n.kind in ("node", "proxy"))
        return ClusterStatus(self.cluster, __version__, int(getattr(self.storage, "schema_version", 0) or 0),
                             self.ca.user_ca_public.fingerprint(), self.ca.host_ca_public.fingerprint(),
                             self.ca.pin_for_host_ca(), hosts)

    # -- audit -----------------------------------------------------------------------
    async def emit_audit(self, event: Mapping[str, Any], *, emitter: str = "") -> int:
        """Record an event reported by a node or proxy (session.start, exec, ...): a success
        is durable on return (its id), a refusal is queued and coalesced (0; U3)."""
        try:
            record = AuditEvent.from_wire(event, time=self._clock(),
                                          extra={"emitter": emitter} if emitter else None)
        except AuditEventError as exc:
            raise bad_request(str(exc)) from None
        return await self.audit_log.append(record)

    async def list_audit(self, limit: int = 100, before_id: int | None = None, types: Sequence[str] = (),
                         user: str = "", since: float = 0.0, session: str = "", node: str = "") -> list[AuditEvent]:
        """Newest first; page with ``before_id`` = the last id seen. ``types`` are event names
        (``user.login``) or a family (``user.*``); ``user`` the user an event is about;
        ``since`` an epoch time; ``session`` a session id, ``node`` a node name
        (``ctl audit --type/--user/--since/--session/--node``)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= 10_000:
            raise bad_request("limit must be 1..10000")
        if before_id is not None and (isinstance(before_id, bool) or not isinstance(before_id, int)):
            raise bad_request("before_id must be an integer")
        types = check_audit_types(types)
        if not isinstance(user, str) or len(user) > 64:
            raise bad_request("user must be a user name")
        if isinstance(since, bool) or not isinstance(since, (int, float)) or not math.isfinite(since):
            raise bad_request("since must be an epoch time")
        for value, what in ((session, "session"), (node, "node")):
            if not isinstance(value, str) or len(value) > 256:
                raise bad_request(f"{what} must be a name")
        await self.audit_log.flush()  # the refusals still queued are part of the answer
        return list(await self.storage.list_audit(limit, before_id, events=types, user=user, since=float(since),
                                                  session=session, node=node))


def check_audit_types(types: Any) -> tuple[str, ...]:
    """Event names of :data:`appliance.audit.EVENT_CODES`, or a family ``area.*`` of them."""
    from ..audit import EVENT_CODES
    families = {name.split(".")[0] + ".*" for name in EVENT_CODES if "." in name}
    types = check_list(types, lambda t, w: t if isinstance(t, str) else "", "event type", 32)
    unknown = [t for t in types if t not in EVENT_CODES and t not in families]
    if unknown:
        raise bad_request(f"unknown event type {unknown[0][:40]!r} (e.g. user.login, user.*, "
                          f"node.join; all: {', '.join(sorted(EVENT_CODES))})")
    return types
