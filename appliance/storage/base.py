"""The storage interface of the auth service: record types and the async ``Storage`` protocol.

The auth service keeps all of its state behind this interface: users, invites, join
tokens, nodes, the two certificate authorities, the audit log, and what revocation needs
(certificate generations, issued user certificates, and a change feed the auth service pushes
to proxies and nodes from — written in the transaction of each change, so that another
process writing the same database, such as ``jumpgate ctl``, is seen too). SQLite implements
it today (:mod:`appliance.storage.sqlite`); PostgreSQL can later implement the same
protocol. Rules every implementation follows:

* Every record is a frozen dataclass; callers never see a mutable row.
* Every method is one atomic transaction. The methods that guard a security rule
  are compare-and-set operations inside the database, so that two concurrent
  requests (two auth processes, or two tasks) cannot both win:
  ``record_login_success`` (a TOTP time step is used at most once),
  ``complete_signup`` (an invite is used once), ``consume_token`` (a single-use
  join token joins one node), ``reserve_login_attempt`` (a login attempt is counted,
  and the lock set, before its password is checked: at most ``max_failures`` checks
  between two successes, whatever the number of concurrent attempts or processes),
  ``update_password_hash`` (a rehash never overwrites a newer password), ``insert_ca``
  (two first starts agree on one CA). Each is one conditional ``UPDATE`` (or ``INSERT``),
  so the database itself decides the race: SQLite's write lock, PostgreSQL's row lock.
* The audit log is append-only: ``append_audit``/``append_audit_batch`` add events and
  ``prune_audit`` is the one way an event leaves it (the retention setting, itself audited:
  docs/security.md U4). Nothing updates an event.
* Secrets that must be checked, not shown, are stored as digests: invites and join
  tokens by ``sha256`` hex of their secret; passwords as scrypt strings. The TOTP
  seed and the CA private keys must be usable, so they are stored as they are —
  which is why the database file is private to the auth service (mode 0600).
* Timestamps are float epoch seconds taken from the caller's injected clock.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..audit import AuditEvent
from ..inventory import NodeRecord  # the inventory's one record: the auth service stores it as it is

__all__ = [
    "NO_TOTP_COUNTER",
    "CARecord",
    "ChangeRecord",
    "InviteRecord",
    "LoginAttempt",
    "NodeRecord",
    "SESSION_STATES",
    "SearchHit",
    "SessionChunk",
    "SessionRecord",
    "Storage",
    "StorageError",
    "TokenRecord",
    "USER_KINDS",
    "UserRecord",
]

#: ``last_totp_counter`` of a user who never used a code.
NO_TOTP_COUNTER = -1


class StorageError(Exception):
    """The database failed or holds something we cannot read (message has no secrets)."""


#: What a user is: a person (password + TOTP) or a bot (an automation identity that never has either).
USER_KINDS = ("human", "bot")


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A Jumpgate user. ``password_hash``/``totp_secret`` are None until signup completes, and
    always for a ``kind == "bot"`` (which no invite, reset or signup can change)."""

    name: str
    logins: tuple[str, ...]
    roles: tuple[str, ...] = ()
    password_hash: str | None = None
    totp_secret: str | None = field(default=None, repr=False)
    last_totp_counter: int = NO_TOTP_COUNTER
    failed_logins: int = 0
    locked_until: float = 0.0
    created: float = 0.0
    kind: str = "human"

    @property
    def signed_up(self) -> bool:
        return self.kind == "human" and self.password_hash is not None and self.totp_secret is not None

    @property
    def is_bot(self) -> bool:
        return self.kind == "bot"


@dataclass(frozen=True, slots=True)
class InviteRecord:
    """A signup invite for ``user``; ``used`` is the time it was completed, else None.

    The TOTP seed is chosen with the invite (shown on the signup page) and moves to the
    user when the signup completes.
    """

    token_hash: str
    user: str
    totp_secret: str = field(repr=False)
    created: float
    expires: float
    used: float | None = None
    attempts: int = 0  # signup attempts made with it (A8)


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A join token of ``kind`` "node" or "proxy"; ``id`` is public, the secret is not stored.

    ``node_name`` and ``addresses``, when set by the admin, bind what the token may join as:
    the node's name and the extra host-certificate principals it may be given."""

    id: str
    token_hash: str
    kind: str
    created: float
    expires: float
    used: float | None = None
    used_by: str = ""
    node_name: str = ""               # the name it joins as ("" = the joiner says)
    addresses: tuple[str, ...] = ()   # addresses an admin approved for its certificate


@dataclass(frozen=True, slots=True)
class CARecord:
    """One certificate authority, keyed by ``(cluster, kind, id)``: ``kind`` "user" or
    "host"; ``id`` names the key within its cluster and kind (:func:`ca_id`, the SHA-256 of
    the public key blob, when left empty). The private key is an OpenSSH PEM and never leaves
    the auth service; it is empty for a CA this cluster only trusts (a trusted root's user
    CA held by a leaf). Several CAs of one cluster and kind may be stored (a rotation: the
    next key beside the current one); every one is trusted, and ``active`` marks the one
    the cluster signs with — at most one per cluster and kind."""

    kind: str
    cluster: str
    private_key: bytes = field(repr=False)
    public_key: bytes = b""
    created: float = 0.0
    id: str = ""
    active: bool = True

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", ca_id(self.public_key))


def ca_id(public_key: bytes) -> str:
    """The id of a CA key: the SHA-256 of its public key blob, in hex (stable across moves)."""
    return hashlib.sha256(public_key).hexdigest()


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One entry of the change feed: ``kind`` "user" or "node" named ``name`` changed at ``time``
    (what changed is read from the current state; the feed only says where to look)."""

    id: int
    time: float
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """Outcome of ``reserve_login_attempt``.

    ``user`` is the record after the reservation (None: no such user). ``reserved`` is
    False when the user is not signed up, is locked, or when every attempt allowed before
    the lock is taken (by attempts still running): then no password may be checked.
    ``lock_until`` is non-zero for the last attempt allowed before the lock: the reservation
    already set that lock, which stays if the attempt fails and goes if it succeeds.
    """

    user: UserRecord | None
    reserved: bool
    lock_until: float = 0.0


#: A session is "active" (its node said it started), "ended" (its node said so) or
#: "interrupted" (its node crashed or never came back: the recording may end early).
SESSION_STATES = ("active", "ended", "interrupted")


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A recorded session's metadata (the recording itself is chunk files: :mod:`appliance.sessions.store`).

    ``chunks`` is how many chunks the node said the recording has (-1 while it runs);
    ``parties`` the users who were in it (its owner first)."""

    id: str
    user: str
    login: str
    node: str
    kind: str
    command: str | None
    client_ip: str
    started: float
    state: str = "active"
    ended: float | None = None
    exit_status: int | None = None
    exit_signal: str | None = None
    chunks: int = -1
    parties: tuple[str, ...] = ()
    header: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionChunk:
    """One uploaded chunk: its SHA-256 (checked at every read) and where it starts in time."""

    session_id: str
    index: int
    sha256: str
    size: int
    start_ms: int


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A line a session printed that matched a search, and when (ms since the session started)."""

    session_id: str
    offset_ms: int
    line: str


@runtime_checkable
class Storage(Protocol):
    """What the auth service needs from a database. All methods are atomic."""

    async def aclose(self) -> None: ...
    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (in the event loop, not blocking) after each committed
        transaction of this object that wrote a row of the change feed."""

    # -- users -------------------------------------------------------------------------
    async def get_user(self, name: str) -> UserRecord | None: ...
    async def list_users(self) -> list[UserRecord]: ...
    async def put_user(self, user: UserRecord) -> None:
        """Insert or replace a user (invites are kept)."""
    async def create_user(self, user: UserRecord, invite: InviteRecord | None) -> bool:
        """Insert a new user and its invite together (a bot has none); False if the name is taken.
        ``put_user`` never changes a user's ``kind``."""
    async def delete_user(self, name: str) -> bool:
        """Delete a user and its invites and bump its certificate generation (the generation
        outlives the user); False if there was no such user."""
    async def reset_user(self, name: str, invite: InviteRecord) -> bool:
        """Clear password, TOTP, failures and lock; replace the user's invites by ``invite``;
        bump the certificate generation. False for no such human (a bot is never reset)."""
    async def unlock_user(self, name: str) -> bool:
        """Lift the lock and clear the failure count (password and TOTP kept); False if there
        is no such human (a bot has no lock: it never logs in with a password, B1). Not a change of the user's certificates: no change-feed row."""
    async def reserve_login_attempt(self, name: str, now: float, *, max_failures: int,
                                    lock_seconds: float) -> LoginAttempt:
        """Compare-and-set, before the password is checked: if the user is signed up, not
        locked at ``now`` and has fewer than ``max_failures`` failures (running attempts
        count as failures), count one more; the one that reaches ``max_failures`` also
        locks the user until now+lock_seconds and restarts the count. Must hold across
        processes (``jumpgate ctl`` opens the same database)."""
    async def record_login_success(self, name: str, totp_counter: int, *,
                                   lock_until: float = 0.0) -> bool:
        """Compare-and-set: only if ``totp_counter`` > the stored one, store it and reset
        the failure count; and if ``lock_until`` is the lock this attempt's reservation set
        (:attr:`LoginAttempt.lock_until`), lift it. False means the code's time step was
        already used."""
    async def update_password_hash(self, name: str, old_hash: str, new_hash: str) -> bool:
        """Compare-and-set: replace the password hash only if it is still ``old_hash``
        (a rehash must not undo a reset or a new signup made meanwhile)."""


    # -- revocation --------------------------------------------------------------------
    async def get_generation(self, name: str) -> int:
        """The generation a certificate for ``name`` must carry to be valid (0 at first)."""
    async def list_generations(self, changed_since: float) -> dict[str, int]:
        """``{name: generation}`` of the users whose generation changed at or after the time."""
    async def record_user_cert(self, serial: int, user: str, generation: int, valid_before: float,
                               now: float) -> None:
        """Remember an issued user certificate (for KRLs); forget those expired by ``now``."""
    async def list_revoked_user_certs(self, now: float) -> list[int]:
        """Serials of unexpired user certificates of an older generation than their user's."""

    # -- the change feed ---------------------------------------------------------------
    async def list_changes(self, after_id: int, limit: int = 1000) -> list[ChangeRecord]:
        """Changes with id > ``after_id``, oldest first. Written by ``put_user``,
        ``delete_user``, ``reset_user`` ("user") and ``put_node``, ``delete_node`` ("node")
        in the same transaction as the change."""
    async def last_change_id(self) -> int: ...
    async def purge_changes(self, before: float) -> int:
        """Forget changes older than ``before`` (ids are never reused)."""

    # -- invites -----------------------------------------------------------------------
    async def get_invite(self, token_hash: str) -> InviteRecord | None: ...
    async def reserve_invite_attempt(self, token_hash: str, now: float, *, max_attempts: int) -> bool:
        """Compare-and-set, before the one-time code is checked: if the invite is unused, not
        expired at ``now`` and has had fewer than ``max_attempts`` attempts, count one and
        return True; else False (docs/security.md A8)."""
    async def complete_signup(self, token_hash: str, password_hash: str, totp_counter: int,
                              now: float) -> bool:
        """Compare-and-set: if the invite is unused and not expired at ``now``, mark it
        used and give its user the password, the invite's TOTP seed and the counter."""

    # -- join tokens -------------------------------------------------------------------
    async def put_token(self, token: TokenRecord) -> None: ...
    async def get_token(self, token_hash: str) -> TokenRecord | None: ...
    async def list_tokens(self) -> list[TokenRecord]: ...
    async def delete_token(self, token_id: str) -> bool: ...
    async def consume_token(self, token_hash: str, now: float, used_by: str) -> bool:
        """Compare-and-set: mark an unused, unexpired token used; False if it was not."""
    async def purge_tokens(self, before: float) -> int:
        """Delete tokens that expired, or were used, before ``before``."""

    # -- nodes -------------------------------------------------------------------------
    async def put_node(self, node: NodeRecord) -> None:
        """Insert or replace a node."""
    async def get_node(self, name: str) -> NodeRecord | None: ...
    async def list_nodes(self) -> list[NodeRecord]: ...
    async def delete_node(self, name: str) -> bool: ...
    async def heartbeat_node(self, name: str, labels: Mapping[str, str],
                             tunnel: bool, now: float, tunnel_addr: str = "") -> bool:
        """Update last_seen, labels, tunnel and (a proxy's) tunnel_addr of an existing node;
        False if absent. The address the proxy dials is not among them: only a join sets it.
        A change of ``tunnel`` or ``tunnel_addr`` is a change pushed to watchers."""

    # -- certificate authorities -------------------------------------------------------
    async def get_ca(self, kind: str, cluster: str | None = None) -> CARecord | None:
        """The active CA of ``kind``: of ``cluster``, or without it this cluster's own (the
        active one holding a private key: the one it signs with)."""
    async def list_cas(self, kind: str | None = None, cluster: str | None = None) -> list[CARecord]:
        """Every stored CA (of ``kind``, of ``cluster``): what certificates are checked against."""
    async def insert_ca(self, ca: CARecord) -> CARecord:
        """Store ``ca``. An active one is stored unless its cluster already has an active CA
        of that kind (two first starts agree on one), an inactive one unless its id is taken;
        return the stored record that won."""
    async def activate_ca(self, cluster: str, kind: str, ca_id: str) -> bool:
        """Make that stored CA the active one of its cluster and kind (the others stay
        trusted); False if there is no such CA."""

    # -- audit log ---------------------------------------------------------------------
    async def append_audit(self, event: AuditEvent) -> int:
        """Append an event; return its id (ids increase)."""
    async def append_audit_batch(self, events: Sequence[AuditEvent]) -> list[int]:
        """Append events in one transaction (one commit for all: group commit), in order;
        return their ids (increasing). All or none are stored."""
    async def prune_audit(self, before: float, limit: int) -> int:
        """Delete at most ``limit`` of the oldest events whose time is before ``before``;
        return how many. The only way an event leaves the log (retention); ids are never
        reused."""
    async def list_audit(self, limit: int = 100, before_id: int | None = None, *,
                         events: Sequence[str] = (), user: str = "", since: float = 0.0,
                         ) -> Sequence[AuditEvent]:
        """The newest ``limit`` events (with id < ``before_id`` if given), newest first; only
        those named in ``events`` (``"user.*"``: every ``user.`` event) when given, of ``user``
        when given, at or after ``since`` when given."""
    async def audit_after(self, after_id: int, limit: int = 1000) -> Sequence[AuditEvent]:
        """Events with id > ``after_id``, oldest first (what a follower has not seen)."""
    async def last_audit_id(self) -> int:
        """The newest event's id (0 for an empty log)."""

    # -- sessions (issue 16) -------------------------------------------------------------
    async def put_session(self, session: SessionRecord) -> None:
        """Insert or replace a session's metadata (its parties with it)."""
    async def get_session(self, session_id: str) -> SessionRecord | None: ...
    async def list_sessions(self, limit: int = 100, *, user: str = "", node: str = "", since: float = 0.0,
                            states: Sequence[str] = (), party: str = "") -> list[SessionRecord]:
        """Newest first; ``party``: only sessions that user owned or joined."""
    async def add_session_chunk(self, chunk: SessionChunk, lines: Sequence[tuple[int, str]]) -> SessionChunk:
        """Record an uploaded chunk and index its text lines ``(offset_ms, line)``; a chunk
        already recorded is kept as it is (an upload retried after a lost answer) and returned."""
    async def list_session_chunks(self, session_id: str) -> list[SessionChunk]: ...
    async def search_sessions(self, text: str, limit: int = 100, *, user: str = "", since: float = 0.0,
                              party: str = "") -> list[SearchHit]:
        """Lines matching the full-text query ``text`` (newest sessions first)."""
