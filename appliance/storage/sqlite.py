"""SQLite implementation of :class:`~appliance.storage.base.Storage` (the embedded default).

One ``sqlite3`` connection per process, opened with ``check_same_thread=False`` and used
from Trio's worker threads (``trio.to_thread.run_sync``) one call at a time under a
``trio.Lock``, so the event loop never blocks on disk and the connection is never used
by two threads at once. Every method runs in one ``BEGIN IMMEDIATE`` transaction; the
compare-and-set methods are single ``UPDATE ... WHERE <condition>`` statements, so they
stay correct when a second process (``jumpgate ctl`` on the same data dir) writes too.
WAL journaling and a busy timeout let readers and that second writer wait, not fail.

The file holds the CA private keys, TOTP seeds and password hashes: it is created with
``os.open(..., 0o600)`` before SQLite touches it (SQLite gives its ``-wal``/``-shm``
files the database file's mode), and a parent directory we create gets mode 0700.
Lists and label maps are stored as msgpack blobs. CAs are rows keyed by ``(cluster, kind,
id)`` (v7); a partial unique index allows one ``active`` CA per cluster and kind. ``":memory:"`` gives a private
in-memory database (tests).

Schema versions. A new database gets the latest schema (:data:`_SCHEMA`). An older one is
upgraded at open by the forward steps in :data:`_MIGRATIONS`, in order, all in one
transaction with the version bump, after a copy of the file is saved beside it
(``jumpgate.db.v1.bak``, mode 0600: it holds the CA). A database newer than this code is
refused, never touched. Each release's data directory is kept under ``tests/fixtures/``
and ``tests/appliance/test_migrations.py`` upgrades every one of them.
"""
from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import msgpack
import trio

from ..audit import AuditEvent
from .base import (
    CARecord,
    ChangeRecord,
    ca_id,
    InviteRecord,
    LoginAttempt,
    NodeRecord,
    SearchHit,
    SessionChunk,
    SessionRecord,
    StorageError,
    TokenRecord,
    UserRecord,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStorage"]

SCHEMA_VERSION = 9
BUSY_TIMEOUT_MS = 5000
MAX_AUDIT_LIMIT = 10_000

_T = TypeVar("_T")

#: v8: the session index (recordings are files; their metadata and text index are here) and the
#: audit log's queryable columns.
_V8_SESSIONS = (
    "CREATE TABLE sessions (id TEXT PRIMARY KEY, user TEXT NOT NULL, login TEXT NOT NULL, node TEXT NOT NULL, "
    "kind TEXT NOT NULL, command TEXT, client_ip TEXT NOT NULL, started REAL NOT NULL, ended REAL, "
    "state TEXT NOT NULL, exit_status INTEGER, exit_signal TEXT, chunks INTEGER NOT NULL, "
    "header BLOB NOT NULL)",
    "CREATE INDEX sessions_by_started ON sessions(started)",
    "CREATE TABLE session_parties (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE, "
    "user TEXT NOT NULL, PRIMARY KEY (session_id, user))",
    "CREATE INDEX session_parties_by_user ON session_parties(user)",
    "CREATE TABLE session_chunks (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE, "
    "idx INTEGER NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, start_ms INTEGER NOT NULL, "
    "PRIMARY KEY (session_id, idx))",
    "CREATE VIRTUAL TABLE session_text USING fts5(line, session_id UNINDEXED, offset_ms UNINDEXED)",
)
_V8_AUDIT_INDEXES = (
    "CREATE INDEX audit_events_by_session ON audit_events(session_id) WHERE session_id != ''",
    "CREATE INDEX audit_events_by_node ON audit_events(node) WHERE node != ''",
)
_V8_STATEMENTS = _V8_SESSIONS + _V8_AUDIT_INDEXES
#: The audit fields that are columns too (v8), so ``ctl audit --session/--node`` is a query.
AUDIT_COLUMN_FIELDS = ("login", "node", "session_id", "client_ip")

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    logins BLOB NOT NULL,
    roles BLOB NOT NULL,
    password_hash TEXT,
    totp_secret TEXT,
    last_totp_counter INTEGER NOT NULL,
    failed_logins INTEGER NOT NULL,
    locked_until REAL NOT NULL,
    created REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'human'
);
CREATE TABLE invites (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    totp_secret TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    used REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX invites_by_user ON invites(user);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    used REAL,
    used_by TEXT NOT NULL,
    node_name TEXT NOT NULL DEFAULT '',
    addresses BLOB NOT NULL DEFAULT x'90'
);
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    addr TEXT NOT NULL,
    labels BLOB NOT NULL,
    last_seen REAL NOT NULL,
    tunnel INTEGER NOT NULL,
    addresses BLOB NOT NULL,
    host_key BLOB,
    created REAL NOT NULL,
    tunnel_addr TEXT NOT NULL DEFAULT ''
);
CREATE TABLE cas (
    cluster TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    private_key BLOB NOT NULL,
    public_key BLOB NOT NULL,
    active INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (cluster, kind, id)
);
CREATE UNIQUE INDEX cas_one_active ON cas(cluster, kind) WHERE active = 1;
CREATE TABLE user_generations (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    changed REAL NOT NULL
);
CREATE TABLE user_certs (
    serial INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    generation INTEGER NOT NULL,
    valid_before REAL NOT NULL
);
CREATE INDEX user_certs_by_user ON user_certs(user);
CREATE TABLE changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL
);
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    event TEXT NOT NULL,
    code TEXT NOT NULL,
    user TEXT NOT NULL,
    success INTEGER NOT NULL,
    fields BLOB NOT NULL,
    login TEXT NOT NULL DEFAULT '',
    node TEXT NOT NULL DEFAULT '',
    session_id TEXT NOT NULL DEFAULT '',
    client_ip TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_by_time ON audit_events(time);
""" + "".join(s + ";\n" for s in _V8_STATEMENTS)



def _v2_tokens_bind_name_and_addresses(db: sqlite3.Connection) -> None:
    """v2: a join token may name the node it joins as and the addresses an admin approved
    for its host certificate (``x'90'`` is msgpack's empty array)."""
    db.execute("ALTER TABLE tokens ADD COLUMN node_name TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE tokens ADD COLUMN addresses BLOB NOT NULL DEFAULT x'90'")


def _v3_revocation(db: sqlite3.Connection) -> None:
    """v3: what revocation needs — a user's certificate generation (kept after the user is
    deleted, so a user made again under the name cannot revive old certificates), the serials
    of issued user certificates (for KRLs), and the change feed the auth service pushes from."""
    for statement in ("CREATE TABLE user_generations (name TEXT PRIMARY KEY, "
                      "generation INTEGER NOT NULL, changed REAL NOT NULL)",
                      "CREATE TABLE user_certs (serial INTEGER PRIMARY KEY, user TEXT NOT NULL, "
                      "generation INTEGER NOT NULL, valid_before REAL NOT NULL)",
                      "CREATE INDEX user_certs_by_user ON user_certs(user)",
                      "CREATE TABLE changes (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, "
                      "kind TEXT NOT NULL, name TEXT NOT NULL)"):
        db.execute(statement)


def _v4_audit_events_by_time(db: sqlite3.Connection) -> None:
    """v4: retention prunes the audit log by time (docs/security.md U4): an index, so that
    the hourly prune of a large log reads only what it deletes."""
    db.execute("CREATE INDEX audit_events_by_time ON audit_events(time)")


def _v5_bots(db: sqlite3.Connection) -> None:
    """v5: a user is a human or a bot (an automation identity: no password, no second factor,
    certificates from ``ctl auth sign --bot`` or a bot token; issue 14 item 16). Every user of an
    older release is a human."""
    db.execute("ALTER TABLE users ADD COLUMN kind TEXT NOT NULL DEFAULT 'human'")


def _v6_invite_attempts(db: sqlite3.Connection) -> None:
    """v6: an invite counts the signup attempts made with it, so its one-time code cannot be
    guessed (docs/security.md A8). Invites of an older release start with none used."""
    db.execute("ALTER TABLE invites ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")


def _v7_cas_by_cluster_kind_and_id(db: sqlite3.Connection) -> None:
    """v7: CAs keyed by cluster, kind and id (issue 15: a leaf cluster holds its root's user CA;
    a rotation keeps the next key beside the current one). Each CA of the one-per-kind table
    becomes the active CA of its cluster and kind, its id the SHA-256 of its public key, its
    key bytes copied as they are."""
    old = db.execute("SELECT kind, cluster, private_key, public_key, created FROM cas").fetchall()
    db.execute("CREATE TABLE cas_v7 (cluster TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL, "
               "private_key BLOB NOT NULL, public_key BLOB NOT NULL, active INTEGER NOT NULL, "
               "created REAL NOT NULL, PRIMARY KEY (cluster, kind, id))")
    db.executemany("INSERT INTO cas_v7 VALUES (?,?,?,?,?,1,?)",
                   [(cluster, kind, ca_id(public), private, public, created)
                    for kind, cluster, private, public, created in old])
    db.execute("DROP TABLE cas")
    db.execute("ALTER TABLE cas_v7 RENAME TO cas")
    db.execute("CREATE UNIQUE INDEX cas_one_active ON cas(cluster, kind) WHERE active = 1")


def _v8_sessions_and_audit_columns(db: sqlite3.Connection) -> None:
    """v8 (issue 16): session metadata, chunk checksums and the full-text index of what sessions
    printed; the audit fields login, node, session_id and client_ip become columns (filled from
    each older event's fields), indexed for ``ctl audit --session/--node``."""
    for column in AUDIT_COLUMN_FIELDS:
        db.execute(f"ALTER TABLE audit_events ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
    rows = db.execute("SELECT id, fields FROM audit_events").fetchall()
    updates = []
    for event_id, blob in rows:
        fields = _unpack(blob)
        values = _audit_columns(fields if isinstance(fields, Mapping) else {})
        if any(values):
            updates.append((*values, event_id))
    db.executemany("UPDATE audit_events SET login = ?, node = ?, session_id = ?, client_ip = ? WHERE id = ?",
                   updates)
    for statement in _V8_STATEMENTS:
        db.execute(statement)


def _v9_proxy_tunnel_addr(db: sqlite3.Connection) -> None:
    """v9 (issue 15): where a proxy takes reverse tunnels (its heartbeat says; nodes dial each)."""
    db.execute("ALTER TABLE nodes ADD COLUMN tunnel_addr TEXT NOT NULL DEFAULT ''")


def _audit_columns(fields: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(fields.get(name) or "")[:256] for name in AUDIT_COLUMN_FIELDS)


#: version -> the step that upgrades a database of version - 1 to it.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    2: _v2_tokens_bind_name_and_addresses,
    3: _v3_revocation,
    4: _v4_audit_events_by_time,
    5: _v5_bots,
    6: _v6_invite_attempts,
    7: _v7_cas_by_cluster_kind_and_id,
    8: _v8_sessions_and_audit_columns,
    9: _v9_proxy_tunnel_addr,
}

_USER_COLUMNS = ("name, logins, roles, password_hash, totp_secret, last_totp_counter, "
                 "failed_logins, locked_until, created, kind")
_INVITE_COLUMNS = "token_hash, user, totp_secret, created, expires, used, attempts"
_TOKEN_COLUMNS = "id, token_hash, kind, created, expires, used, used_by, node_name, addresses"
_NODE_COLUMNS = "name, kind, addr, labels, last_seen, tunnel, addresses, host_key, created, tunnel_addr"
_AUDIT_COLUMNS = "id, time, event, code, user, success, fields"
_SESSION_COLUMNS = ("id, user, login, node, kind, command, client_ip, started, ended, state, exit_status, "
                    "exit_signal, chunks, header")
_CA_COLUMNS = "cluster, kind, id, private_key, public_key, active, created"


# ------------------------------------------------------------------------------ encoding


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(blob: bytes) -> Any:
    try:
        return msgpack.unpackb(blob, raw=False, use_list=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise StorageError(f"corrupt msgpack column: {type(exc).__name__}") from None


def _ca(row: Sequence[Any]) -> CARecord:
    cluster, kind, id_, private_key, public_key, active, created = row
    return CARecord(kind, cluster, private_key, public_key, created, id_, bool(active))


def _user(row: Sequence[Any]) -> UserRecord:
    return UserRecord(row[0], tuple(_unpack(row[1])), tuple(_unpack(row[2])), row[3], row[4],
                      row[5], row[6], row[7], row[8], row[9])


def _node(row: Sequence[Any]) -> NodeRecord:
    return NodeRecord(row[0], row[1], row[2], dict(_unpack(row[3])), row[4], bool(row[5]),
                      tuple(_unpack(row[6])), row[7], row[8], tunnel_addr=row[9])


def _token(row: Sequence[Any]) -> TokenRecord:
    return TokenRecord(*row[:7], node_name=row[7], addresses=tuple(_unpack(row[8])))


def _audit(row: Sequence[Any]) -> AuditEvent:
    return AuditEvent(id=row[0], time=row[1], event=row[2], code=row[3], user=row[4],
                      success=bool(row[5]), fields=dict(_unpack(row[6])))


# ----------------------------------------------------------------------------- the file


def _prepare_file(path: str) -> None:
    """Create the database file 0600 (and a missing parent 0700) before SQLite opens it.

    O_NOFOLLOW: a symlink planted at the path must not redirect our secrets.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
        os.chmod(parent, 0o700)  # makedirs' mode is filtered by the umask
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also tightens a file left with looser bits
    finally:
        os.close(fd)


def _backup(conn: sqlite3.Connection, path: str) -> None:
    """A consistent copy of the open database at ``path`` (0600, O_EXCL: an older copy is
    never overwritten, so a second failed upgrade cannot replace the good one)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        os.close(os.open(path, flags, 0o600))
    except FileExistsError:
        return
    target = sqlite3.connect(path)
    try:
        conn.backup(target)
    finally:
        target.close()


def _connect(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        _prepare_file(path)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                           timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # a consumed token must stay consumed
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


class SQLiteStorage:
    """The auth service's database in one SQLite file.

    >>> storage = SQLiteStorage("/var/lib/jumpgate/jumpgate.db")   # doctest: +SKIP
    >>> await storage.get_user("alice")                            # doctest: +SKIP
    >>> await storage.aclose()                                     # doctest: +SKIP

    Opening is synchronous (done once at start); every other method is async.
    """

    def __init__(self, path: str | os.PathLike[str], clock: Callable[[], float] = time.time):
        self.path = os.fspath(path)
        self._clock = clock
        self._lock = trio.Lock()
        self._wrote_change = False
        self._change_listeners: list[Callable[[], None]] = []
        try:
            self._conn: sqlite3.Connection | None = _connect(self.path)
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from None

    @property
    def schema_version(self) -> int:
        """The schema this database has (an older one was upgraded at open)."""
        return SCHEMA_VERSION

    async def __aenter__(self) -> SQLiteStorage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await trio.to_thread.run_sync(conn.close)

    # -- plumbing --------------------------------------------------------------------
    def _migrate(self) -> None:
        """Create the latest schema, or upgrade an older one (see the module docstring)."""
        with self._tx() as db:
            exists = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' "
                                "AND name='schema_version'").fetchone()
            if not exists:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?, ?)",
                           (SCHEMA_VERSION, self._clock()))
                return
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = row[0] if row is not None else None
        if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
            raise StorageError(f"database schema version {version} is not one this Jumpgate "
                               f"knows (1..{SCHEMA_VERSION}); use the matching Jumpgate version")
        if version < SCHEMA_VERSION:
            self._upgrade(version)

    def _upgrade(self, version: int) -> None:
        """Save a copy of the file, then run every step after ``version`` in one transaction."""
        if self.path != ":memory:":
            _backup(self._conn, f"{self.path}.v{version}.bak")
        with self._tx() as db:
            # read again under the write lock: another process may have upgraded meanwhile
            current = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
            for target in range(current + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[target](db)
                db.execute("INSERT INTO schema_version VALUES (?, ?)", (target, self._clock()))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front, so a
        read-then-write inside cannot be interleaved by another process."""
        if self._conn is None:
            raise StorageError("storage is closed")
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def in_thread() -> _T:
            with self._tx() as db:
                return fn(db)
        async with self._lock:
            self._wrote_change = False
            try:
                # Not cancellable: the transaction finishes (or rolls back) in the thread.
                result = await trio.to_thread.run_sync(in_thread)
            except sqlite3.Error as exc:
                raise StorageError(f"database error: {exc}") from None
            wrote, self._wrote_change = self._wrote_change, False
        if wrote:  # committed: the change feed may read it now
            for listener in self._change_listeners:
                listener()
        return result

    # -- users -----------------------------------------------------------------------
    async def get_user(self, name: str) -> UserRecord | None:
        row = await self._run(lambda db: db.execute(
            f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,)).fetchone())
        return None if row is None else _user(row)

    async def list_users(self) -> list[UserRecord]:
        rows = await self._run(lambda db: db.execute(
            f"SELECT {_USER_COLUMNS} FROM users ORDER BY name").fetchall())
        return [_user(row) for row in rows]

    @staticmethod
    def _user_values(u: UserRecord) -> tuple[Any, ...]:
        return (u.name, _pack(list(u.logins)), _pack(list(u.roles)), u.password_hash,
                u.totp_secret, u.last_totp_counter, u.failed_logins, u.locked_until, u.created, u.kind)

    async def put_user(self, user: UserRecord) -> None:
        values = self._user_values(user)

        def put(db: sqlite3.Connection) -> None:
            # An UPSERT, not INSERT OR REPLACE: replacing would delete (cascade) the invites.
            db.execute(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET logins=excluded.logins, roles=excluded.roles, "
                "password_hash=excluded.password_hash, totp_secret=excluded.totp_secret, "
                "last_totp_counter=excluded.last_totp_counter, "
                "failed_logins=excluded.failed_logins, locked_until=excluded.locked_until, "
                "created=excluded.created", values)
            self._changed(db, "user", user.name)
        await self._run(put)

    async def create_user(self, user: UserRecord, invite: InviteRecord | None) -> bool:
        values = self._user_values(user)

        def create(db: sqlite3.Connection) -> bool:
            cur = db.execute(f"INSERT OR IGNORE INTO users ({_USER_COLUMNS}) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?)", values)
            if cur.rowcount != 1:
                return False
            if invite is not None:
                _insert_invite(db, invite)
            return True
        return await self._run(create)

    async def delete_user(self, name: str) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount != 1:
                return False
            self._revoke_user_certs(db, name)
            return True
        return await self._run(delete)

    async def reset_user(self, name: str, invite: InviteRecord) -> bool:
        def reset(db: sqlite3.Connection) -> bool:
            # a bot is never given an invite: it would become a password login (docs/security.md B1)
            cur = db.execute("UPDATE users SET password_hash = NULL, totp_secret = NULL, "
                             "last_totp_counter = -1, failed_logins = 0, locked_until = 0 "
                             "WHERE name = ? AND kind = 'human'", (name,))
            if cur.rowcount != 1:
                return False
            db.execute("DELETE FROM invites WHERE user = ?", (name,))
            _insert_invite(db, invite)
            self._revoke_user_certs(db, name)
            return True
        return await self._run(reset)

    async def unlock_user(self, name: str) -> bool:
        cur = await self._run(lambda db: db.execute(
            "UPDATE users SET failed_logins = 0, locked_until = 0 WHERE name = ? AND kind = 'human'", (name,)))
        return cur.rowcount == 1

    def _revoke_user_certs(self, db: sqlite3.Connection, name: str) -> None:
        """Every certificate issued to ``name`` so far stops being valid: a new generation."""
        db.execute("INSERT INTO user_generations (name, generation, changed) VALUES (?, 1, ?) "
                   "ON CONFLICT(name) DO UPDATE SET generation = generation + 1, changed = excluded.changed",
                   (name, self._clock()))
        self._changed(db, "user", name)

    def _changed(self, db: sqlite3.Connection, kind: str, name: str) -> None:
        """One row of the change feed, in the transaction of the change itself."""
        db.execute("INSERT INTO changes (time, kind, name) VALUES (?, ?, ?)", (self._clock(), kind, name))
        self._wrote_change = True

    def on_change(self, listener: Callable[[], None]) -> None:
        self._change_listeners.append(listener)

    async def get_generation(self, name: str) -> int:
        row = await self._run(lambda db: db.execute(
            "SELECT generation FROM user_generations WHERE name = ?", (name,)).fetchone())
        return 0 if row is None else int(row[0])

    async def list_generations(self, changed_since: float) -> dict[str, int]:
        rows = await self._run(lambda db: db.execute(
            "SELECT name, generation FROM user_generations WHERE changed >= ?", (changed_since,)).fetchall())
        return {name: int(generation) for name, generation in rows}

    async def record_user_cert(self, serial: int, user: str, generation: int, valid_before: float,
                               now: float) -> None:
        def record(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM user_certs WHERE valid_before < ?", (now,))
            db.execute("INSERT OR REPLACE INTO user_certs VALUES (?,?,?,?)",
                       (serial, user, generation, valid_before))
        await self._run(record)

    async def list_revoked_user_certs(self, now: float) -> list[int]:
        rows = await self._run(lambda db: db.execute(
            "SELECT c.serial FROM user_certs c JOIN user_generations g ON g.name = c.user "
            "WHERE c.valid_before > ? AND c.generation < g.generation ORDER BY c.serial", (now,)).fetchall())
        return [int(row[0]) for row in rows]

    # -- the change feed -------------------------------------------------------------
    async def list_changes(self, after_id: int, limit: int = 1000) -> list[ChangeRecord]:
        rows = await self._run(lambda db: db.execute(
            "SELECT id, time, kind, name FROM changes WHERE id > ? ORDER BY id LIMIT ?",
            (int(after_id), max(1, min(int(limit), MAX_AUDIT_LIMIT)))).fetchall())
        return [ChangeRecord(*row) for row in rows]

    async def last_change_id(self) -> int:
        row = await self._run(lambda db: db.execute("SELECT MAX(id) FROM changes").fetchone())
        return int(row[0] or 0)

    async def purge_changes(self, before: float) -> int:
        cur = await self._run(lambda db: db.execute(
            "DELETE FROM changes WHERE time < ? AND id < (SELECT MAX(id) FROM changes)", (before,)))
        return cur.rowcount

    async def reserve_login_attempt(self, name: str, now: float, *, max_failures: int,
                                    lock_seconds: float) -> LoginAttempt:
        until = now + lock_seconds

        def reserve(db: sqlite3.Connection) -> LoginAttempt:
            # The compare-and-set: one conditional UPDATE; SET expressions see the old row.
            cur = db.execute(
                "UPDATE users SET "
                "failed_logins = CASE WHEN failed_logins + 1 >= ? THEN 0 ELSE failed_logins + 1 END, "
                "locked_until = CASE WHEN failed_logins + 1 >= ? THEN ? ELSE locked_until END "
                "WHERE name = ? AND kind = 'human' AND password_hash IS NOT NULL AND totp_secret IS NOT NULL "
                "AND locked_until <= ? AND failed_logins < ?",
                (max_failures, max_failures, until, name, now, max_failures))
            row = db.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,)).fetchone()
            user = None if row is None else _user(row)
            reserved = cur.rowcount == 1
            sets_lock = reserved and user is not None and user.locked_until == until
            return LoginAttempt(user, reserved, until if sets_lock else 0.0)
        return await self._run(reserve)

    async def record_login_success(self, name: str, totp_counter: int, *,
                                   lock_until: float = 0.0) -> bool:
        cur = await self._run(lambda db: db.execute(
            "UPDATE users SET last_totp_counter = ?, failed_logins = 0, "
            "locked_until = CASE WHEN ? > 0 AND locked_until = ? THEN 0 ELSE locked_until END "
            "WHERE name = ? AND last_totp_counter < ?",
            (totp_counter, lock_until, lock_until, name, totp_counter)))
        return cur.rowcount == 1

    async def update_password_hash(self, name: str, old_hash: str, new_hash: str) -> bool:
        cur = await self._run(lambda db: db.execute(
            "UPDATE users SET password_hash = ? WHERE name = ? AND password_hash = ?",
            (new_hash, name, old_hash)))
        return cur.rowcount == 1

    # -- invites ---------------------------------------------------------------------
    async def get_invite(self, token_hash: str) -> InviteRecord | None:
        row = await self._run(lambda db: db.execute(
            f"SELECT {_INVITE_COLUMNS} FROM invites WHERE token_hash = ?",
            (token_hash,)).fetchone())
        return None if row is None else InviteRecord(*row)

    async def reserve_invite_attempt(self, token_hash: str, now: float, *, max_attempts: int) -> bool:
        one = ("UPDATE invites SET attempts = attempts + 1 WHERE token_hash = ? AND used IS NULL "
               "AND expires > ? AND attempts < ?")
        cur = await self._run(lambda db: db.execute(one, (token_hash, now, max_attempts)))
        return cur.rowcount == 1

    async def complete_signup(self, token_hash: str, password_hash: str, totp_counter: int,
                              now: float) -> bool:
        def complete(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT user, totp_secret FROM invites WHERE token_hash = ? "
                             "AND used IS NULL AND expires > ?", (token_hash, now)).fetchone()
            if row is None:
                return False
            db.execute("UPDATE invites SET used = ? WHERE token_hash = ?", (now, token_hash))
            db.execute("UPDATE users SET password_hash = ?, totp_secret = ?, "
                       "last_totp_counter = ?, failed_logins = 0, locked_until = 0 "
                       "WHERE name = ? AND kind = 'human'", (password_hash, row[1], totp_counter, row[0]))
            return True
        return await self._run(complete)

    # -- join tokens -----------------------------------------------------------------
    async def put_token(self, token: TokenRecord) -> None:
        values = (token.id, token.token_hash, token.kind, token.created, token.expires,
                  token.used, token.used_by, token.node_name, _pack(list(token.addresses)))
        await self._run(lambda db: db.execute(
            f"INSERT INTO tokens ({_TOKEN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", values))

    async def get_token(self, token_hash: str) -> TokenRecord | None:
        row = await self._run(lambda db: db.execute(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?",
            (token_hash,)).fetchone())
        return None if row is None else _token(row)

    async def list_tokens(self) -> list[TokenRecord]:
        rows = await self._run(lambda db: db.execute(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created, id").fetchall())
        return [_token(row) for row in rows]

    async def delete_token(self, token_id: str) -> bool:
        cur = await self._run(lambda db: db.execute("DELETE FROM tokens WHERE id = ?",
                                                    (token_id,)))
        return cur.rowcount == 1

    async def consume_token(self, token_hash: str, now: float, used_by: str) -> bool:
        cur = await self._run(lambda db: db.execute(
            "UPDATE tokens SET used = ?, used_by = ? WHERE token_hash = ? "
            "AND used IS NULL AND expires > ?", (now, used_by, token_hash, now)))
        return cur.rowcount == 1

    async def purge_tokens(self, before: float) -> int:
        cur = await self._run(lambda db: db.execute(
            "DELETE FROM tokens WHERE expires < ? OR used < ?", (before, before)))
        return cur.rowcount

    # -- nodes -----------------------------------------------------------------------
    async def put_node(self, node: NodeRecord) -> None:
        values = (node.name, node.kind, node.addr, _pack(dict(node.labels)), node.last_seen,
                  int(node.tunnel), _pack(list(node.addresses)), node.host_key, node.created, node.tunnel_addr)

        def put(db: sqlite3.Connection) -> None:
            db.execute(f"INSERT OR REPLACE INTO nodes ({_NODE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", values)
            self._changed(db, "node", node.name)
        await self._run(put)

    async def get_node(self, name: str) -> NodeRecord | None:
        row = await self._run(lambda db: db.execute(
            f"SELECT {_NODE_COLUMNS} FROM nodes WHERE name = ?", (name,)).fetchone())
        return None if row is None else _node(row)

    async def list_nodes(self) -> list[NodeRecord]:
        rows = await self._run(lambda db: db.execute(
            f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY name").fetchall())
        return [_node(row) for row in rows]

    async def delete_node(self, name: str) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            if db.execute("DELETE FROM nodes WHERE name = ?", (name,)).rowcount != 1:
                return False
            self._changed(db, "node", name)
            return True
        return await self._run(delete)

    async def heartbeat_node(self, name: str, labels: Mapping[str, str],
                             tunnel: bool, now: float, tunnel_addr: str = "") -> bool:
        values = (_pack(dict(labels)), now, int(tunnel), tunnel_addr, name)

        def beat(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT tunnel, tunnel_addr FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            db.execute("UPDATE nodes SET labels = ?, last_seen = ?, tunnel = ?, tunnel_addr = ? WHERE name = ?",
                       values)
            if bool(row[0]) != bool(tunnel) or row[1] != tunnel_addr:
                # how the proxy reaches it, or where nodes reach a proxy, changed: pushed
                self._changed(db, "node", name)
            return True
        return await self._run(beat)

    # -- certificate authorities -----------------------------------------------------
    async def get_ca(self, kind: str, cluster: str | None = None) -> CARecord | None:
        where, args = ("cluster = ?", (kind, cluster)) if cluster is not None else ("private_key != x''", (kind,))
        row = await self._run(lambda db: db.execute(
            f"SELECT {_CA_COLUMNS} FROM cas WHERE kind = ? AND active = 1 AND {where} "
            "ORDER BY created, cluster LIMIT 1", args).fetchone())
        return None if row is None else _ca(row)

    async def list_cas(self, kind: str | None = None, cluster: str | None = None) -> list[CARecord]:
        rows = await self._run(lambda db: db.execute(
            f"SELECT {_CA_COLUMNS} FROM cas WHERE (? IS NULL OR kind = ?) AND (? IS NULL OR cluster = ?) "
            "ORDER BY cluster, kind, active DESC, created, id", (kind, kind, cluster, cluster)).fetchall())
        return [_ca(row) for row in rows]

    async def insert_ca(self, ca: CARecord) -> CARecord:
        def insert(db: sqlite3.Connection) -> tuple[Any, ...]:
            # the partial unique index makes a second active CA of a cluster and kind an
            # ignored insert: the database decides the race of two first starts
            db.execute(f"INSERT OR IGNORE INTO cas ({_CA_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                       (ca.cluster, ca.kind, ca.id, ca.private_key, ca.public_key, int(ca.active), ca.created))
            if ca.active:
                return db.execute(f"SELECT {_CA_COLUMNS} FROM cas WHERE cluster = ? AND kind = ? AND active = 1",
                                  (ca.cluster, ca.kind)).fetchone()
            return db.execute(f"SELECT {_CA_COLUMNS} FROM cas WHERE cluster = ? AND kind = ? AND id = ?",
                              (ca.cluster, ca.kind, ca.id)).fetchone()
        return _ca(await self._run(insert))

    async def activate_ca(self, cluster: str, kind: str, ca_id: str) -> bool:
        def activate(db: sqlite3.Connection) -> bool:
            if db.execute("SELECT 1 FROM cas WHERE cluster = ? AND kind = ? AND id = ?",
                          (cluster, kind, ca_id)).fetchone() is None:
                return False
            db.execute("UPDATE cas SET active = 0 WHERE cluster = ? AND kind = ? AND active = 1", (cluster, kind))
            db.execute("UPDATE cas SET active = 1 WHERE cluster = ? AND kind = ? AND id = ?", (cluster, kind, ca_id))
            return True
        return await self._run(activate)

    # -- audit log -------------------------------------------------------------------
    async def append_audit(self, event: AuditEvent) -> int:
        [event_id] = await self.append_audit_batch([event])
        return event_id

    async def append_audit_batch(self, events: Sequence[AuditEvent]) -> list[int]:
        rows = [(e.time, e.event, e.code, e.user, int(e.success), _pack(dict(e.fields)), *_audit_columns(e.fields))
                for e in events]

        def insert(db: sqlite3.Connection) -> list[int]:
            return [int(db.execute("INSERT INTO audit_events (time, event, code, user, success, fields, "
                                   "login, node, session_id, client_ip) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                   row).lastrowid) for row in rows]
        return await self._run(insert) if rows else []

    async def prune_audit(self, before: float, limit: int) -> int:
        cur = await self._run(lambda db: db.execute(
            "DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events "
            "WHERE time < ? ORDER BY time LIMIT ?)", (before, max(0, int(limit)))))
        return cur.rowcount

    async def list_audit(self, limit: int = 100, before_id: int | None = None, *,
                         events: Sequence[str] = (), user: str = "", since: float = 0.0,
                         session: str = "", node: str = "") -> list[AuditEvent]:
        limit = max(0, min(int(limit), MAX_AUDIT_LIMIT))
        bound = 2**63 - 1 if before_id is None else int(before_id)
        where, params = ["id < ?"], [bound]
        if events:
            exact = [e for e in events if not e.endswith(".*")]
            prefixes = [e[:-1].replace("%", "").replace("_", "\\_") + "%" for e in events if e.endswith(".*")]
            terms = ([f"event IN ({','.join('?' * len(exact))})"] if exact else []) + \
                ["event LIKE ? ESCAPE '\\'"] * len(prefixes)
            where.append("(" + " OR ".join(terms) + ")")
            params += exact + prefixes
        if user:
            where.append("user = ?")
            params.append(user)
        if since:
            where.append("time >= ?")
            params.append(float(since))
        for column, value in (("session_id", session), ("node", node)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        rows = await self._run(lambda db: db.execute(
            f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            (*params, limit)).fetchall())
        return [_audit(row) for row in rows]

    async def audit_after(self, after_id: int, limit: int = 1000) -> list[AuditEvent]:
        limit = max(0, min(int(limit), MAX_AUDIT_LIMIT))
        rows = await self._run(lambda db: db.execute(
            f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE id > ? ORDER BY id LIMIT ?",
            (int(after_id), limit)).fetchall())
        return [_audit(row) for row in rows]

    async def last_audit_id(self) -> int:
        row = await self._run(lambda db: db.execute("SELECT MAX(id) FROM audit_events").fetchone())
        return int(row[0] or 0)


    # -- sessions ---------------------------------------------------------------------
    async def put_session(self, session: SessionRecord) -> None:
        row = (session.id, session.user, session.login, session.node, session.kind, session.command,
               session.client_ip, session.started, session.ended, session.state, session.exit_status,
               session.exit_signal, session.chunks, _pack(dict(session.header)))

        def put(db: sqlite3.Connection) -> None:
            db.execute(f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                       "ON CONFLICT(id) DO UPDATE SET ended = excluded.ended, state = excluded.state, "
                       "exit_status = excluded.exit_status, exit_signal = excluded.exit_signal, "
                       "chunks = excluded.chunks", row)
            db.executemany("INSERT OR IGNORE INTO session_parties VALUES (?, ?)",
                           [(session.id, party) for party in (session.user, *session.parties)])
        await self._run(put)

    def _sessions(self, db: sqlite3.Connection, where: str, params: Sequence[Any], limit: int) -> list[SessionRecord]:
        rows = db.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE {where} ORDER BY started DESC LIMIT ?",
                          (*params, limit)).fetchall()
        out = []
        for row in rows:
            parties = tuple(p for (p,) in db.execute(
                "SELECT user FROM session_parties WHERE session_id = ? AND user != ? ORDER BY user", (row[0], row[1])))
            out.append(SessionRecord(*row[:8], state=row[9], ended=row[8], exit_status=row[10], exit_signal=row[11],
                                     chunks=row[12], parties=parties, header=dict(_unpack(row[13]))))
        return out

    async def get_session(self, session_id: str) -> SessionRecord | None:
        found = await self._run(lambda db: self._sessions(db, "id = ?", (session_id,), 1))
        return found[0] if found else None

    async def list_sessions(self, limit: int = 100, *, user: str = "", node: str = "", since: float = 0.0,
                            states: Sequence[str] = (), party: str = "") -> list[SessionRecord]:
        where, params = ["1"], []
        for column, value in (("user", user), ("node", node)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if since:
            where.append("started >= ?")
            params.append(float(since))
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params += list(states)
        if party:
            where.append("id IN (SELECT session_id FROM session_parties WHERE user = ?)")
            params.append(party)
        limit = max(0, min(int(limit), MAX_AUDIT_LIMIT))
        return await self._run(lambda db: self._sessions(db, " AND ".join(where), params, limit))

    async def add_session_chunk(self, chunk: SessionChunk, lines: Sequence[tuple[int, str]]) -> SessionChunk:
        def add(db: sqlite3.Connection) -> SessionChunk:
            row = db.execute("SELECT sha256, size, start_ms FROM session_chunks WHERE session_id = ? AND idx = ?",
                             (chunk.session_id, chunk.index)).fetchone()
            if row is not None:
                return SessionChunk(chunk.session_id, chunk.index, *row)
            db.execute("INSERT INTO session_chunks VALUES (?,?,?,?,?)",
                       (chunk.session_id, chunk.index, chunk.sha256, chunk.size, chunk.start_ms))
            db.executemany("INSERT INTO session_text (line, session_id, offset_ms) VALUES (?,?,?)",
                           [(line, chunk.session_id, offset) for offset, line in lines])
            return chunk
        return await self._run(add)

    async def list_session_chunks(self, session_id: str) -> list[SessionChunk]:
        rows = await self._run(lambda db: db.execute(
            "SELECT session_id, idx, sha256, size, start_ms FROM session_chunks WHERE session_id = ? ORDER BY idx",
            (session_id,)).fetchall())
        return [SessionChunk(*row) for row in rows]

    async def search_sessions(self, text: str, limit: int = 100, *, user: str = "", since: float = 0.0,
                              party: str = "") -> list[SearchHit]:
        where, params = ["session_text MATCH ?"], [_fts_query(text)]
        if user:
            where.append("s.user = ?")
            params.append(user)
        if since:
            where.append("s.started >= ?")
            params.append(float(since))
        if party:
            where.append("s.id IN (SELECT session_id FROM session_parties WHERE user = ?)")
            params.append(party)
        limit = max(0, min(int(limit), MAX_AUDIT_LIMIT))
        rows = await self._run(lambda db: db.execute(
            "SELECT t.session_id, t.offset_ms, t.line FROM session_text t JOIN sessions s ON s.id = t.session_id "
            f"WHERE {' AND '.join(where)} ORDER BY s.started DESC, t.offset_ms LIMIT ?", (*params, limit)).fetchall())
        return [SearchHit(r[0], int(r[1]), r[2]) for r in rows]


def _fts_query(text: str) -> str:
    """The user's words as an FTS5 phrase (their quotes doubled): text, never query syntax."""
    return '"' + text.replace('"', '""') + '"'


def _insert_invite(db: sqlite3.Connection, invite: InviteRecord) -> None:
    db.execute(f"INSERT INTO invites ({_INVITE_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
               (invite.token_hash, invite.user, invite.totp_secret, invite.created,
                invite.expires, invite.used, invite.attempts))
