"""Forward schema migrations, run on data directories written by earlier releases.

Each ``tests/fixtures/datadir-VERSION.tar.gz`` was written by that release
(``tests/fixtures/make_datadir.py``): an all-in-one cluster with a signed-up user, an
invited one, a joined node and proxy, an agentless node and its audit log. Opening it with
today's storage must upgrade it in place without losing anything, above all the CA, and
leave a copy of the old file beside it.
"""
from __future__ import annotations

import json
import sqlite3
import stat
import tarfile
import time
from pathlib import Path

import pyotp
import pytest

from appliance.auth.service import AuthService
from appliance.storage import sqlite as sqlite_storage
from appliance.storage.base import StorageError, ca_id
from appliance.storage.sqlite import SCHEMA_VERSION, SQLiteStorage
from ssh_proto.keys import PrivateKey, parse_public_line

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RELEASES = sorted(p.name.removeprefix("datadir-").removesuffix(".tar.gz")
                  for p in FIXTURES.glob("datadir-*.tar.gz"))


def unpack(version: str, into: Path) -> tuple[Path, dict]:
    with tarfile.open(FIXTURES / f"datadir-{version}.tar.gz") as tar:
        tar.extractall(into, filter="data")
    data = into / "data"
    return data, json.loads((data / "FIXTURE.json").read_text())


def rows(path: Path, query: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def test_there_is_a_fixture_of_the_first_release():
    assert "0.1.0" in RELEASES


@pytest.fixture(params=RELEASES)
def old_data_dir(request, tmp_path) -> tuple[Path, dict]:
    return unpack(request.param, tmp_path)


async def test_upgrade_keeps_the_ca_users_nodes_and_audit_log(old_data_dir):
    data, facts = old_data_dir
    db = data / "auth" / "jumpgate.db"
    before_cas = rows(db, "SELECT kind, cluster, private_key, public_key, created FROM cas ORDER BY kind")
    before_audit = rows(db, "SELECT id, time, event, code, user, success, fields FROM audit_events ORDER BY id")
    before_version = rows(db, "SELECT MAX(version) FROM schema_version")[0][0]
    assert before_version < SCHEMA_VERSION and len(before_cas) == 2 and before_audit

    storage = SQLiteStorage(db)
    try:
        assert rows(db, "SELECT MAX(version) FROM schema_version")[0][0] == SCHEMA_VERSION
        assert rows(db, "SELECT kind, cluster, private_key, public_key, created FROM cas ORDER BY kind") == before_cas
        audit = await storage.list_audit(limit=10_000)
        assert [(e.id, e.event, e.code, e.user) for e in reversed(audit)] == \
            [(r[0], r[2], r[3], r[4]) for r in before_audit]
        alice, bob = await storage.get_user("alice"), await storage.get_user("bob")
        assert alice.signed_up and alice.logins == ("alice", "root") and not bob.signed_up
        nodes = {n.name: n for n in await storage.list_nodes()}
        assert nodes["web1"].kind == "openssh" and nodes["web1"].labels == {"env": "prod"}
        assert nodes[facts["nodes"][0]].kind == "node" and nodes[facts["nodes"][0]].host_key
        assert all(t.node_name == "" and t.addresses == () for t in await storage.list_tokens())
    finally:
        await storage.aclose()

    backup = db.with_name(f"jumpgate.db.v{before_version}.bak")
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert rows(backup, "SELECT MAX(version) FROM schema_version")[0][0] == before_version
    assert rows(backup, "SELECT kind, cluster, private_key, public_key, created FROM cas ORDER BY kind") == before_cas


async def test_upgraded_cluster_still_trusts_its_ca_and_lets_alice_log_in(old_data_dir):
    data, facts = old_data_dir
    storage = SQLiteStorage(data / "auth" / "jumpgate.db")
    try:
        service = await AuthService.create(storage, facts["cluster"])
        # the joined node's saved host CA is the one the upgraded cluster signs with
        saved_host_ca = (data / "node" / "host_ca.pub").read_text().split()[:2]
        assert service.ca.host_ca_public.to_line().split()[:2] == saved_host_ca
        assert not service.ca.new_kinds
        code = pyotp.TOTP(facts["totp_secret"]).now()  # a later step than the one alice used
        key = PrivateKey.generate("ssh-ed25519")
        before = (await storage.get_user("alice")).password_hash
        assert before.startswith("scrypt$16384$")  # 0.1.0's parameters
        result = await service.login("alice", facts["password"], code, key.public_key.blob)
        assert result.logins == ("alice", "root")
        # A4: the first login after the upgrade replaces the hash (inline: no service.run here)
        after = (await storage.get_user("alice")).password_hash
        assert after.startswith("scrypt$131072$8$1$") and after != before
    finally:
        await storage.aclose()


async def test_upgrade_indexes_audit_events_by_time_and_retention_prunes_old_rows(old_data_dir):
    """v3 (docs/security.md U4): the index the retention prune reads; a prune of the upgraded
    log removes only what is older than the cut-off."""
    data, _ = old_data_dir
    db = data / "auth" / "jumpgate.db"
    times = [r[0] for r in rows(db, "SELECT time FROM audit_events ORDER BY id")]
    storage = SQLiteStorage(db)
    try:
        assert rows(db, "SELECT name FROM sqlite_master WHERE type = 'index' "
                        "AND name = 'audit_events_by_time'") == [("audit_events_by_time",)]
        plan = rows(db, "EXPLAIN QUERY PLAN SELECT id FROM audit_events WHERE time < 0 ORDER BY time")
        assert any("audit_events_by_time" in str(step) for step in plan)
        cut = sorted(times)[len(times) // 2]
        assert await storage.prune_audit(cut, limit=10_000) == sum(t < cut for t in times)
        assert all(e.time >= cut for e in await storage.list_audit(limit=10_000))
    finally:
        await storage.aclose()


async def test_upgrade_twice_is_a_no_op(old_data_dir):
    data, _ = old_data_dir
    db = data / "auth" / "jumpgate.db"
    await SQLiteStorage(db).aclose()
    versions = rows(db, "SELECT version FROM schema_version ORDER BY version")
    await SQLiteStorage(db).aclose()
    assert rows(db, "SELECT version FROM schema_version ORDER BY version") == versions


async def test_failed_upgrade_step_leaves_the_old_database_as_it_was(old_data_dir, monkeypatch):
    data, _ = old_data_dir
    db = data / "auth" / "jumpgate.db"
    before = rows(db, "SELECT kind, private_key FROM cas ORDER BY kind")
    before_version = rows(db, "SELECT MAX(version) FROM schema_version")[0][0]

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM cas")  # a step that destroys, then fails: must roll back
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(sqlite_storage._MIGRATIONS, SCHEMA_VERSION, broken)
    with pytest.raises(StorageError, match="disk I/O error"):
        SQLiteStorage(db)
    assert rows(db, "SELECT MAX(version) FROM schema_version")[0][0] == before_version
    assert rows(db, "SELECT kind, private_key FROM cas ORDER BY kind") == before


async def test_database_from_a_newer_jumpgate_is_refused_untouched(tmp_path):
    path = tmp_path / "j.db"
    await SQLiteStorage(path).aclose()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (?, ?)", (SCHEMA_VERSION + 1, time.time()))
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StorageError, match="schema version"):
        SQLiteStorage(path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.bak"))


def test_every_version_has_a_step():
    assert sorted(sqlite_storage._MIGRATIONS) == list(range(2, SCHEMA_VERSION + 1))



async def test_upgraded_cluster_renews_and_rejoins_its_joined_node_but_refuses_a_hijack(old_data_dir):
    """The node and proxy joined by the old release keep working under J1..J4: renewing with
    the saved key, or joining again with it, is not a hijack; a fresh key for the name is."""
    from appliance.auth import rejoin
    from appliance.auth.service import AuthServiceError
    from appliance.membership import load_membership

    data, facts = old_data_dir
    storage = SQLiteStorage(data / "auth" / "jumpgate.db")
    try:
        service = await AuthService.create(storage, facts["cluster"])
        for kind in ("node", "proxy"):
            ident = load_membership(data, kind)
            before = await storage.get_node(ident.name)
            renewed = await service.renew_host_cert(ident.name, ident.host_key.public_key.blob)
            cert, _ = parse_public_line(renewed.host_cert)
            assert cert.key_id == f"{kind}:{ident.name}" and cert.principals[2:] == before.addresses
            session = b"\x05" * 32
            token = await service.create_token(kind, addresses=["127.0.0.1"])
            again = await service.join(token.token, kind, ident.name, ident.host_key.public_key.blob,
                                       addr=before.addr, proof=rejoin.sign_proof(ident.host_key, session, kind,
                                                                                 ident.name),
                                       session_id=session)
            assert again.addr == before.addr
        thief = PrivateKey.generate("ssh-ed25519")
        with pytest.raises(AuthServiceError, match="taken"):
            await service.join((await service.create_token("node")).token, "node", "node1", thief.public_key.blob)
        assert (await storage.get_node("node1")).host_key == load_membership(data, "node").host_key.public_key.blob
    finally:
        await storage.aclose()


async def test_v7_cas_are_keyed_by_cluster_kind_and_id_with_the_keys_byte_identical(old_data_dir):
    """Issue 15: one CA per kind becomes the active CA of (cluster, kind, id); nothing of the
    key changes, and the cluster signs with the same keys."""
    data, facts = old_data_dir
    db = data / "auth" / "jumpgate.db"
    before = {kind: (cluster, private, public, created) for kind, cluster, private, public, created in
              rows(db, "SELECT kind, cluster, private_key, public_key, created FROM cas")}
    storage = SQLiteStorage(db)
    try:
        after = await storage.list_cas()
        assert sorted((ca.cluster, ca.kind) for ca in after) == [(facts["cluster"], "host"), (facts["cluster"], "user")]
        for ca in after:
            assert (ca.cluster, ca.private_key, ca.public_key, ca.created) == before[ca.kind]
            assert ca.active and ca.id == ca_id(ca.public_key)
            assert await storage.get_ca(ca.kind) == ca == await storage.get_ca(ca.kind, facts["cluster"])
        service = await AuthService.create(storage, facts["cluster"])
        assert service.ca.user_ca_public.blob == before["user"][2] and not service.ca.new_kinds
    finally:
        await storage.aclose()


async def test_upgrade_makes_every_existing_user_a_human_and_a_bot_can_be_added(old_data_dir):
    """v5 (docs/security.md B1): the users of the old release are humans, keep their password
    and can still be reset; a bot added after the upgrade is a bot."""
    from appliance.auth.service import AuthService
    data, _ = old_data_dir
    storage = SQLiteStorage(data / "auth" / "jumpgate.db")
    try:
        users = await storage.list_users()
        assert users and all(u.kind == "human" for u in users)
        assert any(u.signed_up for u in users)
        cluster = (await storage.get_ca("user")).cluster
        service = await AuthService.create(storage, cluster)
        await service.create_bot("ci", ["deploy"])
        assert (await storage.get_user("ci")).is_bot
        assert (await service.reset_user(users[0].name)).user == users[0].name
    finally:
        await storage.aclose()


async def test_certificates_issued_before_the_v7_upgrade_are_still_accepted(old_data_dir):
    """A user certificate signed with the old release's user CA (read from the old file, as
    0.1.0 signed) and the joined node's host certificate written by 0.1.0 both pass the real
    certificate checks against the CAs the upgraded cluster trusts and serves."""
    from ssh_proto.certs import sign_certificate, validate_host_certificate, validate_user_certificate
    from ssh_proto.keys import CERT_TYPE_USER, load_private_key
    data, facts = old_data_dir
    db = data / "auth" / "jumpgate.db"
    [(old_user_ca_pem,)] = rows(db, "SELECT private_key FROM cas WHERE kind = 'user'")
    now = int(time.time())
    user_key = PrivateKey.generate("ssh-ed25519")
    issued_before = sign_certificate(load_private_key(old_user_ca_pem), user_key.public_key,
                                     cert_type=CERT_TYPE_USER, key_id="user:alice", principals=["alice"],
                                     valid_after=now - 60, valid_before=now + 3600)
    storage = SQLiteStorage(db)
    try:
        service = await AuthService.create(storage, facts["cluster"])
        trusted_users = [parse_public_line(service.ca.user_ca_line())[0]]
        validate_user_certificate(issued_before, principal="alice", trusted_cas=trusted_users)
        node_cert, _ = parse_public_line((data / "node" / "host_key-cert.pub").read_text())
        validate_host_certificate(node_cert, hostname=facts["nodes"][0], trusted_cas=[service.ca.host_ca_public],
                                  now=node_cert.valid_after + 1)
        # and what the upgraded cluster signs now is checked against the same stored CA
        fresh = await service.sign_user_cert("alice", user_key.public_key.blob)
        validate_user_certificate(parse_public_line(fresh.cert)[0], principal="alice",
                                  trusted_cas=[ca_key for ca_key in trusted_users])
    finally:
        await storage.aclose()


async def test_upgrade_gives_old_invites_an_attempt_count_of_zero(old_data_dir):
    data, facts = old_data_dir
    db = data / "auth" / "jumpgate.db"
    before = rows(db, "SELECT token_hash, user, totp_secret, created, expires, used FROM invites ORDER BY token_hash")
    [bobs] = [r for r in before if r[1] == "bob"]  # bob's is open; alice's was used
    storage = SQLiteStorage(db)
    try:
        invite = await storage.get_invite(bobs[0])
        assert (invite.user, invite.totp_secret, invite.used, invite.attempts) == ("bob", bobs[2], None, 0)
    finally:
        await storage.aclose()
    assert rows(db, "SELECT token_hash, user, totp_secret, created, expires, used, attempts FROM invites "
                    "ORDER BY token_hash") == [(*row, 0) for row in before]


async def test_upgrade_to_v8_makes_audit_fields_columns_and_adds_the_session_index(old_data_dir):
    data, _facts = old_data_dir
    db = data / "auth" / "jumpgate.db"
    storage = SQLiteStorage(db)
    try:
        events = await storage.list_audit(limit=10_000)
        with_node = [e for e in events if e.fields.get("node")]
        assert with_node, "the fixture has node events"
        node = with_node[0].fields["node"]
        by_node = await storage.list_audit(limit=10_000, node=node)
        assert {e.id for e in by_node} == {e.id for e in events if e.fields.get("node") == node}
        ips = rows(db, "SELECT client_ip, fields FROM audit_events WHERE client_ip != ''")
        assert all(ip in fields.decode("latin-1") for ip, fields in ips)
        assert await storage.list_sessions() == [] and await storage.search_sessions("anything") == []
    finally:
        await storage.aclose()
