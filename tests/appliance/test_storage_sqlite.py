"""SQLiteStorage (appliance/storage/sqlite.py): persistence, file modes, and the
compare-and-set operations the auth rules rely on (a TOTP step used once, an invite
used once, a join token used once, failures and lock moving together)."""
from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat

import pytest
import trio
import trio.testing

from appliance.audit import make_event
from appliance.storage import (CARecord, ca_id, InviteRecord, LoginAttempt, NodeRecord, SQLiteStorage, Storage,
                               StorageError, TokenRecord, UserRecord)

NOW = 1_700_000_000.0


def user(name: str = "alice", **kw) -> UserRecord:
    return UserRecord(name, kw.pop("logins", ("alice", "root")), kw.pop("roles", ("admin",)), created=NOW, **kw)


def invite(token_hash: str = "h1", name: str = "alice", expires: float = NOW + 3600) -> InviteRecord:
    return InviteRecord(token_hash, name, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", NOW, expires)


def token(token_hash: str = "t1", token_id: str = "id1", expires: float = NOW + 1800) -> TokenRecord:
    return TokenRecord(token_id, token_hash, "node", NOW, expires)


@pytest.fixture
async def db():
    storage = SQLiteStorage(":memory:")
    yield storage
    await storage.aclose()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_sqlite_storage_implements_storage_protocol(db):
    assert isinstance(db, Storage)


async def test_database_file_is_0600_and_new_parent_dir_0700(tmp_path):
    path = tmp_path / "data" / "jumpgate.db"
    storage = SQLiteStorage(path)
    await storage.put_user(user())  # makes SQLite create its -wal and -shm files
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    for extra in ("-wal", "-shm"):
        assert mode(f"{path}{extra}") == 0o600
    await storage.aclose()


async def test_existing_database_file_mode_is_tightened(tmp_path):
    path = tmp_path / "jumpgate.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    storage = SQLiteStorage(path)
    assert mode(path) == 0o600
    await storage.aclose()


async def test_symlink_at_database_path_refused(tmp_path):
    target = tmp_path / "elsewhere.db"
    (tmp_path / "jumpgate.db").symlink_to(target)
    with pytest.raises(StorageError):
        SQLiteStorage(tmp_path / "jumpgate.db")
    assert not target.exists()


async def test_wal_journal_and_busy_timeout_configured(tmp_path):
    storage = SQLiteStorage(tmp_path / "j.db")
    assert storage._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert storage._conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    await storage.aclose()


async def test_data_survives_reopen(tmp_path):
    path = tmp_path / "j.db"
    storage = SQLiteStorage(path)
    await storage.create_user(user(), invite())
    await storage.put_token(token())
    node = NodeRecord("web1", "node", "10.0.0.5:3022", {"env": "dev"}, NOW, False, ("10.0.0.5",), b"KEY", NOW)
    await storage.put_node(node)
    ca = CARecord("user", "prod", b"-----BEGIN OPENSSH PRIVATE KEY-----\n...", b"PUB", NOW)
    await storage.insert_ca(ca)
    event = make_event("user.login", time=NOW, user="alice", client_ip="10.0.0.1", logins=("a", "b"))
    event_id = await storage.append_audit(event)
    await storage.aclose()

    again = SQLiteStorage(path)
    assert await again.get_user("alice") == user()
    assert await again.get_invite("h1") == invite()
    assert await again.get_token("t1") == token()
    assert await again.get_node("web1") == node
    assert await again.get_ca("user") == ca
    [stored] = await again.list_audit()
    assert stored.id == event_id and stored.fields == event.fields and stored.code == "T1000I"
    await again.aclose()


async def test_schema_version_mismatch_refused(tmp_path):
    path = tmp_path / "j.db"
    await SQLiteStorage(path).aclose()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="schema version"):
        SQLiteStorage(path)


async def test_closed_storage_raises_storage_error(tmp_path):
    storage = SQLiteStorage(tmp_path / "j.db")
    await storage.aclose()
    with pytest.raises(StorageError):
        await storage.get_user("alice")


async def test_create_user_refuses_a_taken_name_and_keeps_no_invite(db):
    assert await db.create_user(user(), invite("h1"))
    assert not await db.create_user(user(logins=("x",)), invite("h2"))
    assert await db.get_invite("h2") is None
    assert (await db.get_user("alice")).logins == ("alice", "root")


async def test_delete_user_cascades_to_invites(db):
    await db.create_user(user(), invite())
    assert await db.delete_user("alice")
    assert await db.get_invite("h1") is None
    assert not await db.delete_user("alice")


async def test_put_user_keeps_invites(db):
    await db.create_user(user(), invite())
    await db.put_user(user(logins=("alice",)))
    assert await db.get_invite("h1") is not None


async def test_reset_user_clears_secrets_and_replaces_invites(db):
    await db.create_user(user(), invite("h1"))
    assert await db.complete_signup("h1", "scrypt$x", 7, NOW)
    assert (await db.reserve_login_attempt("alice", NOW, max_failures=2, lock_seconds=60)).reserved
    assert (await db.reserve_login_attempt("alice", NOW, max_failures=2, lock_seconds=60)).lock_until
    assert await db.reset_user("alice", invite("h2"))
    u = await db.get_user("alice")
    assert (u.password_hash, u.totp_secret, u.last_totp_counter, u.failed_logins) == (None, None, -1, 0)
    assert u.locked_until == 0
    assert await db.get_invite("h1") is None and await db.get_invite("h2") is not None
    assert not await db.reset_user("bob", invite("h3"))


async def test_complete_signup_is_single_use_compare_and_set(db):
    await db.create_user(user(), invite())
    assert await db.complete_signup("h1", "scrypt$hash", 42, NOW)
    assert not await db.complete_signup("h1", "scrypt$other", 43, NOW)
    u = await db.get_user("alice")
    assert u.password_hash == "scrypt$hash" and u.last_totp_counter == 42 and u.signed_up
    assert u.totp_secret == invite().totp_secret
    assert (await db.get_invite("h1")).used == NOW


async def test_complete_signup_refuses_expired_invite(db):
    await db.create_user(user(), invite(expires=NOW + 10))
    assert not await db.complete_signup("h1", "scrypt$hash", 1, NOW + 10)
    assert not (await db.get_user("alice")).signed_up


async def test_record_login_success_is_compare_and_set_on_totp_counter(db):
    await db.put_user(user(failed_logins=3))
    assert await db.record_login_success("alice", 5)
    assert (await db.get_user("alice")).failed_logins == 0
    assert not await db.record_login_success("alice", 5)
    assert not await db.record_login_success("alice", 4)
    assert await db.record_login_success("alice", 6)
    assert not await db.record_login_success("nobody", 100)


# ---- races: the database decides, not a lock of one process ------------------------------------
# Each contender has a connection of its own (another process, another auth server): the
# storage's per-connection lock serialises nothing between them, and each call runs in a thread
# of its own, so only the compare-and-set inside the database can make one of them win.
# ``connections`` opens them on one file; a PostgreSQL backend gets the same tests by opening
# its connections here.

CONTENDERS = 8


@pytest.fixture
async def connections(tmp_path):
    opened = [SQLiteStorage(tmp_path / "race.db") for _ in range(CONTENDERS)]
    yield opened
    for storage in opened:
        await storage.aclose()


async def race(connections, attempt) -> list:
    """``await attempt(storage)`` on every connection at once; the results in connection order."""
    results: list = [None] * len(connections)
    go = trio.Event()

    async def contender(i: int, storage) -> None:
        await go.wait()
        results[i] = await attempt(storage)

    async with trio.open_nursery() as nursery:
        for i, storage in enumerate(connections):
            nursery.start_soon(contender, i, storage)
        await trio.testing.wait_all_tasks_blocked()   # every contender waits at the line
        go.set()
    return results


class CheckThenAct(SQLiteStorage):
    """A consume_token as it must not be written: read, decide, then write in another
    transaction. ``all_checked`` holds each contender between its check and its write until
    all have checked: the interleaving a race can produce, made certain."""

    def __init__(self, path, checked: list[str], contenders: int, all_checked: trio.Event):
        super().__init__(path)
        self._checked, self._contenders, self._all_checked = checked, contenders, all_checked

    async def consume_token(self, token_hash: str, now: float, used_by: str) -> bool:
        token = await self.get_token(token_hash)
        self._checked.append(used_by)
        if len(self._checked) == self._contenders:
            self._all_checked.set()
        await self._all_checked.wait()
        if token is None or token.used is not None or token.expires <= now:
            return False
        await self._run(lambda db: db.execute("UPDATE tokens SET used = ?, used_by = ? WHERE token_hash = ?",
                                              (now, used_by, token_hash)))
        return True


async def test_the_race_harness_catches_a_check_then_act_that_is_not_atomic(tmp_path):
    """The races below can fail: an implementation whose check and write are two transactions
    lets every contender win."""
    checked: list[str] = []
    all_checked = trio.Event()
    naive = [CheckThenAct(tmp_path / "race.db", checked, CONTENDERS, all_checked) for _ in range(CONTENDERS)]
    await naive[0].put_token(token())
    wins = await race(naive, lambda db: db.consume_token("t1", NOW, "node:x"))
    assert wins.count(True) == CONTENDERS   # what test_concurrent_token_consumption_only_one_wins refuses
    for storage in naive:
        await storage.aclose()


async def test_concurrent_uses_of_one_totp_counter_only_one_wins(connections):
    await connections[0].put_user(user())
    wins = await race(connections, lambda db: db.record_login_success("alice", 1000))
    assert wins.count(True) == 1
    assert (await connections[-1].get_user("alice")).last_totp_counter == 1000


def signed_up(name: str = "alice", **kw) -> UserRecord:
    return user(name, password_hash="scrypt$h", totp_secret="S", **kw)


async def reserve(db, name="alice", now=NOW, max_failures=5, lock_seconds=1800):
    return await db.reserve_login_attempt(name, now, max_failures=max_failures, lock_seconds=lock_seconds)


async def test_reserve_login_attempt_counts_before_the_check_and_the_last_one_locks(db):
    await db.put_user(signed_up())
    for i in range(1, 5):
        attempt = await reserve(db)
        assert attempt.reserved and attempt.lock_until == 0.0 and attempt.user.failed_logins == i
    last = await reserve(db)  # the 5th: allowed, and it already holds the lock it would cause
    assert last.reserved and last.lock_until == NOW + 1800
    assert (last.user.failed_logins, last.user.locked_until) == (0, NOW + 1800)
    assert not (await reserve(db, now=NOW + 1799)).reserved
    after = await reserve(db, now=NOW + 1800)  # the lock is over: a fresh count
    assert after.reserved and after.user.failed_logins == 1


async def test_reserve_login_attempt_refuses_unknown_and_unsigned_users(db):
    assert await reserve(db, "nobody") == LoginAttempt(None, False)
    await db.put_user(user("bob"))
    attempt = await reserve(db, "bob")
    assert not attempt.reserved and attempt.user.name == "bob" and attempt.user.failed_logins == 0


async def test_reserve_login_attempt_is_atomic_across_connections(connections):
    """A5: of many attempts at once, from as many connections, 5 are reserved and one locks."""
    await connections[0].put_user(signed_up())
    outcomes = await race(connections + connections, reserve)   # two attempts per connection
    assert sum(a.reserved for a in outcomes) == 5
    assert sum(bool(a.lock_until) for a in outcomes) == 1
    assert (await connections[-1].get_user("alice")).locked_until == NOW + 1800


async def test_login_success_lifts_only_the_lock_its_own_reservation_set(db):
    await db.put_user(signed_up(failed_logins=4))
    last = await reserve(db)
    assert await db.record_login_success("alice", 7, lock_until=last.lock_until)
    assert (await db.get_user("alice")).locked_until == 0.0
    for _ in range(5):
        lock = (await reserve(db)).lock_until
    assert await db.record_login_success("alice", 8, lock_until=NOW + 1)  # another lock
    assert (await db.get_user("alice")).locked_until == lock == NOW + 1800


async def test_update_password_hash_is_compare_and_set_on_the_old_hash(db):
    await db.put_user(signed_up())
    assert await db.update_password_hash("alice", "scrypt$h", "scrypt$new")
    assert not await db.update_password_hash("alice", "scrypt$h", "scrypt$other")
    assert (await db.get_user("alice")).password_hash == "scrypt$new"
    assert not await db.update_password_hash("nobody", "scrypt$h", "scrypt$x")


async def test_consume_token_is_single_use_and_honours_expiry(db):
    await db.put_token(token("t1", "a"))
    await db.put_token(token("t2", "b", expires=NOW + 5))
    assert await db.consume_token("t1", NOW, "node:web1")
    assert not await db.consume_token("t1", NOW, "node:web2")
    assert (await db.get_token("t1")).used_by == "node:web1"
    assert not await db.consume_token("t2", NOW + 5, "node:web1")
    assert not await db.consume_token("nope", NOW, "node:x")


async def test_concurrent_token_consumption_only_one_wins(connections):
    await connections[0].put_token(token())
    results = await race(connections, lambda db: db.consume_token("t1", NOW, f"node:n{id(db)}"))
    assert results.count(True) == 1
    winner = connections[results.index(True)]
    assert (await connections[0].get_token("t1")).used_by == f"node:n{id(winner)}"


async def test_concurrent_signups_with_one_invite_only_one_wins(connections):
    await connections[0].create_user(user(), invite())
    results = await race(connections, lambda db: db.complete_signup("h1", f"scrypt${id(db)}", 7, NOW))
    assert results.count(True) == 1
    winner = connections[results.index(True)]
    assert (await connections[0].get_user("alice")).password_hash == f"scrypt${id(winner)}"


async def test_two_first_starts_agree_on_one_ca(connections):
    stored = await race(connections, lambda db: db.insert_ca(CARecord("host", "prod", f"PEM{id(db)}".encode(),
                                                                       b"PUB", NOW)))
    assert len(set(stored)) == 1 and await connections[0].get_ca("host") == stored[0]


async def test_a_rehash_never_overwrites_a_newer_password(connections):
    await connections[0].put_user(signed_up())
    results = await race(connections, lambda db: db.update_password_hash("alice", "scrypt$h", f"scrypt${id(db)}"))
    assert results.count(True) == 1


async def test_list_delete_and_purge_tokens(db):
    await db.put_token(token("t1", "a", expires=NOW + 10))
    await db.put_token(token("t2", "b", expires=NOW + 1000))
    await db.put_token(token("t3", "c", expires=NOW + 1000))
    await db.consume_token("t3", NOW, "node:x")
    assert [t.id for t in await db.list_tokens()] == ["a", "b", "c"]
    assert await db.purge_tokens(NOW + 11) == 2  # expired "a", used "c"
    assert [t.id for t in await db.list_tokens()] == ["b"]
    assert await db.delete_token("b") and not await db.delete_token("b")


async def test_heartbeat_updates_only_an_existing_node_and_never_its_addr(db):
    # docs/security.md J4: the address the proxy dials is set by a join, never by a heartbeat
    assert not await db.heartbeat_node("web1", {}, False, NOW)
    await db.put_node(NodeRecord("web1", "node", "10.0.0.5:3022", {}, NOW, False, ("10.0.0.5",), b"K", NOW))
    assert await db.heartbeat_node("web1", {"env": "prod"}, True, NOW + 5)
    node = await db.get_node("web1")
    assert (node.addr, dict(node.labels), node.tunnel, node.last_seen) == ("10.0.0.5:3022", {"env": "prod"}, True,
                                                                          NOW + 5)
    assert node.addresses == ("10.0.0.5",) and node.host_key == b"K"
    assert await db.delete_node("web1") and await db.list_nodes() == []


async def test_insert_ca_first_writer_wins(db):
    first = CARecord("host", "prod", b"PEM1", b"PUB1", NOW)
    assert await db.insert_ca(first) == first
    assert await db.insert_ca(CARecord("host", "prod", b"PEM2", b"PUB2", NOW)) == first
    assert await db.get_ca("user") is None


async def test_audit_list_newest_first_with_paging(db):
    ids = [await db.append_audit(make_event("node.add", time=NOW + i, node=f"n{i}")) for i in range(5)]
    assert ids == sorted(ids)
    page = await db.list_audit(limit=2)
    assert [e.fields["node"] for e in page] == ["n4", "n3"]
    page = await db.list_audit(limit=10, before_id=page[-1].id)
    assert [e.fields["node"] for e in page] == ["n2", "n1", "n0"]


async def test_append_audit_batch_is_one_transaction_in_order(db):
    events = [make_event("node.add", time=NOW + i, node=f"n{i}") for i in range(5)]
    ids = await db.append_audit_batch(events)
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [e.fields["node"] for e in reversed(await db.list_audit())] == [f"n{i}" for i in range(5)]
    assert await db.append_audit_batch([]) == []


async def test_a_failed_audit_batch_stores_none_of_its_events(db):
    good = make_event("node.add", time=NOW, node="n0")
    bad = dataclasses.replace(good, time=None)  # NOT NULL: the second INSERT fails
    with pytest.raises(StorageError):
        await db.append_audit_batch([good, bad])
    assert await db.list_audit() == []


async def test_prune_audit_removes_the_oldest_before_a_time_in_chunks_and_never_reuses_ids(db):
    ids = await db.append_audit_batch([make_event("node.add", time=NOW + i, node=f"n{i}") for i in range(10)])
    assert await db.prune_audit(NOW + 5, limit=3) == 3
    assert await db.prune_audit(NOW + 5, limit=3) == 2
    assert await db.prune_audit(NOW + 5, limit=3) == 0
    assert [e.id for e in reversed(await db.list_audit())] == ids[5:]
    [new_id] = await db.append_audit_batch([make_event("node.add", time=NOW, node="late")])
    assert new_id > ids[-1]


# ---- revocation: generations, issued certificates, the change feed


async def test_delete_and_reset_bump_a_generation_that_outlives_the_user(tmp_path):
    storage = SQLiteStorage(tmp_path / "j.db", clock=lambda: NOW)
    await storage.create_user(user("alice"), invite("h1"))
    assert await storage.get_generation("alice") == 0
    await storage.reset_user("alice", invite("h2"))
    assert await storage.get_generation("alice") == 1
    await storage.delete_user("alice")
    assert await storage.get_generation("alice") == 2          # kept with the user gone
    await storage.create_user(user("alice"), invite("h3"))
    assert await storage.get_generation("alice") == 2          # a new alice starts above the old
    assert await storage.list_generations(NOW) == {"alice": 2}
    assert await storage.list_generations(NOW + 1) == {}
    assert not await storage.delete_user("nobody") and await storage.get_generation("nobody") == 0
    await storage.aclose()


async def test_revoked_user_certs_are_the_unexpired_ones_of_older_generations(db):
    await db.create_user(user("alice"), invite("h1"))
    await db.create_user(user("bob"), invite("h2"))
    await db.record_user_cert(11, "alice", 0, NOW + 100, NOW)
    await db.record_user_cert(12, "alice", 0, NOW + 1, NOW)
    await db.record_user_cert(21, "bob", 0, NOW + 100, NOW)
    await db.reset_user("alice", invite("h3"))
    await db.record_user_cert(13, "alice", 1, NOW + 100, NOW)
    assert await db.list_revoked_user_certs(NOW) == [11, 12]
    assert await db.list_revoked_user_certs(NOW + 50) == [11]    # 12 expired: nothing to revoke
    await db.record_user_cert(14, "alice", 1, NOW + 200, NOW + 150)  # recording forgets expired ones
    assert await db.list_revoked_user_certs(NOW) == []


async def test_change_feed_is_written_in_the_changes_own_transaction_and_seen_by_another_connection(tmp_path):
    path = tmp_path / "j.db"
    watcher, writer = SQLiteStorage(path, clock=lambda: NOW), SQLiteStorage(path, clock=lambda: NOW)
    start = await watcher.last_change_id()
    await writer.create_user(user("alice"), invite("h1"))           # a new user is no change to push
    await writer.put_user(user("alice", logins=("alice",)))
    await writer.reset_user("alice", invite("h2"))
    await writer.delete_user("alice")
    await writer.put_node(NodeRecord("web1", "openssh", "10.0.0.7:22"))
    await writer.delete_node("web1")
    changes = await watcher.list_changes(start)
    assert [(c.kind, c.name) for c in changes] == [("user", "alice")] * 3 + [("node", "web1")] * 2
    assert [c.id for c in changes] == sorted(c.id for c in changes)
    assert await watcher.list_changes(changes[-1].id) == []
    assert await watcher.purge_changes(NOW + 1) == len(changes) - 1  # the newest stays: ids move on
    await watcher.aclose()
    await writer.aclose()


async def test_cas_keyed_by_cluster_kind_and_id_one_active_all_listed(db):
    """Issue 15's records: a leaf holds its root's user CA (no private key), and a rotation
    keeps a second CA of one kind beside the active one; only the active one with a key signs."""
    own = await db.insert_ca(CARecord("user", "leaf", b"PEM1", b"PUB1", NOW))
    root = await db.insert_ca(CARecord("user", "root", b"", b"ROOTPUB", NOW))  # trusted, never signed with
    assert own.id == ca_id(b"PUB1") and root.active
    assert await db.get_ca("user") == own and await db.get_ca("user", "root") == root
    second = CARecord("user", "leaf", b"PEM2", b"PUB2", NOW + 1, active=False)
    assert await db.insert_ca(second) == second
    assert await db.insert_ca(CARecord("user", "leaf", b"PEM3", b"PUB3", NOW)) == own   # one active per kind
    assert [ca.public_key for ca in await db.list_cas("user", "leaf")] == [b"PUB1", b"PUB2"]
    assert await db.activate_ca("leaf", "user", second.id)
    assert (await db.get_ca("user")).public_key == b"PUB2"
    assert {ca.public_key: ca.active for ca in await db.list_cas("user")} == {b"PUB1": False, b"PUB2": True,
                                                                            b"ROOTPUB": True}
    assert not await db.activate_ca("leaf", "user", "no-such-id")
