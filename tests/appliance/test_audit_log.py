"""The audit log's writer (appliance/auth/audit_log.py, coalescer.py; docs/security.md U2-U4).

The attacks: a flood of refused SSH logins with huge attacker-chosen key ids and user names
from one source must write a bounded number of rows, each kept with its claims cut and
marked; a login must not wait behind audit writes (a stuck disk), while a success is still
durable when its call returns; old events are pruned by the retention setting only, and the
prune is itself audited. Time is a FakeClock; nothing sleeps to synchronise.
"""
from __future__ import annotations

import dataclasses
import functools
import sqlite3
import time

import pytest
import trio
import trio.testing

import ssh_proto
from _auth_helpers import CLUSTER, FAST_HASHER, PASSWORD, Env, FakeClock, new_key, signup
from appliance.api.audit_sink import AuditForwarder
from appliance.api.server import ALLOWED
from appliance.audit import MAX_CLAIM_LEN, make_event
from appliance.auth.audit_log import DAY
from appliance.auth.coalescer import MAX_SOURCES, PER_SOURCE, TOTAL, WINDOW, RefusalCoalescer
from appliance.auth.service import AuthService, AuthServiceError
from appliance.cli.main import build_parser
from appliance.config import ConfigError, load_config
from appliance.limits import PROXY_PROFILE
from appliance.proxy.routing import NodeDirectory, Routes
from appliance.proxy.server import ProxyIdentity, serve_proxy
from appliance.storage import SQLiteStorage, Storage, StorageError
from ssh_proto.certs import DEFAULT_USER_EXTENSIONS, sign_certificate
from ssh_proto.errors import AuthError
from ssh_proto.keys import CERT_TYPE_USER, PrivateKey

SAFETY = 30  # seconds: a bound far above what any step here takes (each is milliseconds)


class Disk:
    """A Storage delegating to a real one, whose audit transactions can be held (a stuck disk),
    counted, and made to fail."""

    def __init__(self, inner: SQLiteStorage) -> None:
        self.inner = inner
        self.flowing = trio.Event()
        self.flowing.set()
        self.held = trio.Event()         # set when a transaction is waiting on a stuck disk
        self.transactions: list[list[str]] = []
        self.failing = False
        self.success_recorded = trio.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def stick(self) -> None:
        self.flowing, self.held = trio.Event(), trio.Event()

    async def append_audit_batch(self, events):
        if not self.flowing.is_set():
            self.held.set()
            await self.flowing.wait()
        if self.failing:
            raise StorageError("database error: disk I/O error")
        ids = await self.inner.append_audit_batch(events)
        self.transactions.append([e.event for e in events])
        return ids

    async def record_login_success(self, *args, **kwargs):
        result = await self.inner.record_login_success(*args, **kwargs)
        self.success_recorded.set()
        return result


async def make_disk_env(path: str = ":memory:", **service_options) -> Env:
    clock = FakeClock()
    disk = Disk(SQLiteStorage(path, clock=clock))
    service = await AuthService.create(disk, CLUSTER, clock=clock, hasher=FAST_HASHER, **service_options)
    return Env(service, disk, clock)


async def login(env: Env, seed: str, name: str = "alice", password: str = PASSWORD,
                client_ip: str = "198.51.100.9"):
    return await env.service.login(name, password, env.code(seed), new_key().public_key.blob, None, client_ip)


async def refused_login(env: Env, seed: str, **kwargs) -> None:
    with pytest.raises(AuthServiceError) as info:
        await login(env, seed, **kwargs)
    assert info.value.code == "access_denied"


def test_disk_is_a_storage():
    assert isinstance(Disk(SQLiteStorage(":memory:")), Storage)


# ------------------------------------------------------------------ U2: the flood over SSH


def attacker_certificate(key_id: str) -> tuple[PrivateKey, object]:
    """A user certificate from the attacker's own CA (refused: rule 10) with the key id they chose."""
    ca, key = PrivateKey.generate("ssh-ed25519"), PrivateKey.generate("ssh-ed25519")
    now = int(time.time())
    cert = sign_certificate(ca, key.public_key, cert_type=CERT_TYPE_USER, key_id=key_id, principals=["root"],
                            valid_after=now - 60, valid_before=now + 3600, extensions=DEFAULT_USER_EXTENSIONS)
    return key, cert


async def test_a_flood_of_refused_ssh_logins_with_huge_claims_writes_a_bounded_number_of_rows(nursery):
    env = await make_disk_env()
    service = env.service
    host_key = PrivateKey.generate("ssh-ed25519")
    host_cert = service.ca.sign_host(host_key.public_key, "proxy", "proxy1", ["proxy1", "127.0.0.1"],
                                     3600, time.time())
    delivered = []

    async def deliver(*, event):  # the proxy's AuditForwarder, delivering in process
        delivered.append(event)
        return await service.emit_audit(event, emitter="proxy:proxy1")

    async def nothing(*args):
        return None

    forwarder = AuditForwarder(deliver)
    username = "\x1b[2J" + "u" * 200   # the longest SSH allows is 256 bytes
    with trio.fail_after(SAFETY):
        async with trio.open_nursery() as forwarding:
            forwarding.start_soon(forwarder.run)
            # penalties off: they would cut the flood short (docs/security.md L9); what is tested
            # here is that every refusal that does get through is audited within a bound
            proxy = await nursery.start(functools.partial(
                serve_proxy, ProxyIdentity(host_key, host_cert), [service.ca.user_ca_public],
                Routes(NodeDirectory(nothing, cluster=CLUSTER)), "127.0.0.1", 0, audit=forwarder.emit,
                profile=dataclasses.replace(PROXY_PROFILE, penalties=None)))
            for _ in range(15):
                keys = [attacker_certificate("user:" + "K" * 60_000) for _ in range(2)]
                with pytest.raises(AuthError):
                    async with ssh_proto.connect("127.0.0.1", proxy.port, username=username,
                                                 client_keys=keys, known_hosts=None):
                        pass
            forwarding.cancel_scope.cancel()  # the forwarder delivers what is queued, then ends
        assert len(delivered) >= 4 * PER_SOURCE  # many more refusals than are written in full
        env.clock.advance(WINDOW)
        await service.audit_log.write_summaries()

    rows = await service.list_audit(limit=10_000)
    refusals = [e for e in rows if e.event == "auth" and not e.success]
    [summary] = [e for e in rows if e.event == "audit.coalesced"]
    assert len(refusals) == PER_SOURCE
    assert summary.fields["source"] == "127.0.0.1" and summary.fields["count"] == len(delivered) - PER_SOURCE
    assert summary.fields["claimed"] == ("users",) and all(len(u) <= MAX_CLAIM_LEN for u in summary.fields["users"])
    certificates = [e for e in refusals if e.fields.get("key_id")]  # the rest: the bare keys retried
    assert certificates
    for event in certificates:  # each kept, its claims cut and marked
        assert len(event.user) == len(event.fields["key_id"]) == MAX_CLAIM_LEN
        assert {"user", "login", "key_id"} <= set(event.fields["claimed"])
        assert {"user", "key_id"} <= set(event.fields["truncated"])
    for event in refusals:  # nothing raw from the client
        assert "login" in event.fields["claimed"] and event.fields["emitter"] == "proxy:proxy1"
        assert event.fields["login"].startswith("\\x1b[2J") and event.fields["login"].isprintable()


# ------------------------------------------------------------ U2: the coalescing rules


def refusal(ip: str | None, user: str = "mallory", at: float = 0.0):
    fields = {"client_ip": ip} if ip is not None else {}
    return make_event("user.login", time=at, user=user, success=False, reason="unknown user", **fields)


def test_one_source_writes_per_source_refusals_a_window_and_counts_the_rest():
    coalescer = RefusalCoalescer()
    written = [e for t in range(100) for e in coalescer.admit(refusal("10.0.0.9", f"u{t}", t * 0.5), t * 0.5)]
    assert len(written) == PER_SOURCE
    [summary] = coalescer.expire(WINDOW)
    assert summary.event == "audit.coalesced" and summary.code == "TA000W"
    assert (summary.fields["source"], summary.fields["count"]) == ("10.0.0.9", 100 - PER_SOURCE)
    assert summary.fields["first"] == PER_SOURCE * 0.5 and summary.fields["last"] == 99 * 0.5
    assert summary.fields["events"] == ("user.login",) and len(summary.fields["users"]) == 8
    assert summary.fields["summary"] == f"{100 - PER_SOURCE} more refusals from 10.0.0.9 in 60 s"
    assert coalescer.admit(refusal("10.0.0.9"), WINDOW + 1) != []  # a new window


def test_addresses_of_one_ipv6_slash_64_are_one_source():
    coalescer = RefusalCoalescer()
    written = [e for i in range(50) for e in coalescer.admit(refusal(f"2001:db8::{i:x}"), 0.0)]
    assert len(written) == PER_SOURCE
    assert coalescer.close(1.0)[0].fields["source"] == "2001:db8::/64"


def test_refusals_naming_no_client_count_against_one_source():
    coalescer = RefusalCoalescer()
    assert sum(len(coalescer.admit(refusal(None), 0.0)) for _ in range(30)) == PER_SOURCE
    assert coalescer.close(1.0)[0].fields["source"] == "-"


def test_many_sources_together_write_at_most_total_a_window_and_nothing_is_lost():
    coalescer = RefusalCoalescer()
    admitted = [e for i in range(5000) for e in coalescer.admit(refusal(f"10.{i >> 8 & 255}.{i & 255}.1"), 1.0)]
    summaries = coalescer.close(2.0)
    assert len(admitted) == TOTAL and len(summaries) == 1
    everyone = summaries[0].fields
    assert everyone["source"] == "*" and everyone["count"] == 5000 - TOTAL
    assert everyone["sources"] == MAX_SOURCES  # distinct sources, counted up to MAX_SOURCES


def test_the_oldest_window_is_closed_early_when_too_many_sources_are_tracked():
    coalescer = RefusalCoalescer(max_sources=2)
    for _ in range(PER_SOURCE + 3):
        coalescer.admit(refusal("10.0.0.1"), 0.0)
    coalescer.admit(refusal("10.0.0.2"), 1.0)
    out = coalescer.admit(refusal("10.0.0.3"), 2.0)  # a third source: 10.0.0.1's window closes
    assert [e.event for e in out] == ["audit.coalesced", "user.login"] and out[0].fields["count"] == 3


async def test_successes_are_never_coalesced():
    env = await make_disk_env()
    for i in range(3 * PER_SOURCE):
        await env.service.emit_audit({"event": "session.start", "user": "alice",
                                      "fields": {"client_ip": "10.0.0.9", "n": i}})
    assert len(await env.service.list_audit(limit=1000)) == 2 + 3 * PER_SOURCE


# ------------------------------------------------- U3: nobody waits behind the disk


async def test_a_login_does_not_wait_for_a_stuck_audit_write_and_a_success_waits_one_commit(nursery):
    env = await make_disk_env()
    seed = await signup(env)
    await nursery.start(env.service.run)
    env.storage.stick()
    with trio.fail_after(SAFETY):
        for i in range(50):  # refused while the disk is stuck: each answered without waiting for it
            await refused_login(env, seed, name=f"nobody{i}")
        await env.storage.held.wait()  # the writer's batch is the one stuck
        done = trio.Event()

        async def good_login():
            await login(env, seed)
            done.set()
        nursery.start_soon(good_login)
        await env.storage.success_recorded.wait()
        await trio.testing.wait_all_tasks_blocked()  # the login now waits for its events' commit
        assert not done.is_set()  # a success is not answered before its audit is durable
        before = len(env.storage.transactions)
        env.storage.flowing.set()
        await done.wait()
    after = env.storage.transactions[before:]
    assert len(after) <= 2  # the stuck batch, then one with everything queued behind it (group commit)
    written = [name for batch in after for name in batch]
    assert written.count("user.login") == PER_SOURCE + 1 and written[-2:] == ["user.login", "cert.create"]


async def test_a_success_is_durable_when_login_returns(tmp_path):
    env = await make_disk_env(str(tmp_path / "j.db"))
    seed = await signup(env)
    await login(env, seed)
    other = sqlite3.connect(tmp_path / "j.db")  # another connection: only committed rows are visible
    try:
        codes = [row[0] for row in other.execute("SELECT code FROM audit_events ORDER BY id")]
    finally:
        other.close()
    assert codes[-2:] == ["T1000I", "TC000I"]


async def test_no_certificate_is_handed_out_when_its_audit_cannot_be_written():
    env = await make_disk_env()
    seed = await signup(env)
    env.storage.failing = True
    with pytest.raises(StorageError):
        await login(env, seed)


async def test_refusals_are_written_by_the_background_writer(nursery):
    env = await make_disk_env()
    seed = await signup(env)
    await nursery.start(env.service.run)
    count = len(env.storage.transactions)
    env.storage.stick()
    with trio.fail_after(SAFETY):
        await refused_login(env, seed, password="wrong password!!")
        await env.storage.held.wait()  # no durable append came after it: the writer took it
        env.storage.flowing.set()
        while len(env.storage.transactions) == count:
            await trio.testing.wait_all_tasks_blocked()
    assert env.storage.transactions[count] == ["user.login"]


async def test_queued_refusals_and_open_windows_are_written_when_the_writer_stops():
    env = await make_disk_env()
    seed = await signup(env)
    with trio.fail_after(SAFETY):
        async with trio.open_nursery() as nursery:
            await nursery.start(env.service.run)
            for i in range(PER_SOURCE + 5):
                await refused_login(env, seed, name=f"nobody{i}")
            nursery.cancel_scope.cancel()
    rows = await env.storage.list_audit(limit=1000)  # read the storage, not through the service
    assert [e.fields["count"] for e in rows if e.event == "audit.coalesced"] == [5]
    assert sum(e.event == "user.login" and not e.success for e in rows) == PER_SOURCE


# -------------------------------------------------------------------- U4: retention


async def test_retention_prunes_events_older_than_the_setting_and_audits_the_prune():
    env = await make_disk_env(audit_retention_days=30)
    await env.service.create_user("old", ["old"])
    env.clock.advance(20 * DAY)
    await env.service.create_user("recent", ["recent"])
    env.clock.advance(11 * DAY)
    assert await env.service.audit_log.prune() == 3  # the two CAs' and "old"'s events
    rows = await env.service.list_audit(limit=100)
    assert [e.user for e in rows if e.event == "user.create"] == ["recent"]
    prune = rows[0]
    assert (prune.event, prune.code, prune.fields["count"], prune.fields["retention_days"]) == \
        ("audit.prune", "TA001I", 3, 30)
    assert prune.fields["before"] == env.clock.now - 30 * DAY
    assert await env.service.audit_log.prune() == 0  # nothing more: and no event for that


async def test_the_running_service_prunes_at_start(nursery):
    env = await make_disk_env(audit_retention_days=1)
    env.clock.advance(2 * DAY)
    with trio.fail_after(SAFETY):
        await nursery.start(env.service.run)
        while not any(batch == ["audit.prune"] for batch in env.storage.transactions):
            await trio.testing.wait_all_tasks_blocked()
    assert [e.event for e in await env.service.list_audit(limit=10)] == ["audit.prune"]


async def test_retention_zero_keeps_every_event():
    env = await make_disk_env(audit_retention_days=0)
    env.clock.advance(10_000 * DAY)
    assert await env.service.audit_log.prune() == 0
    assert len(await env.service.list_audit(limit=10)) == 2


async def test_retention_must_be_a_whole_number_of_days():
    for bad in (-1, 1.5, "30", True):
        with pytest.raises(AuthServiceError):
            await AuthService.create(SQLiteStorage(":memory:"), CLUSTER, audit_retention_days=bad)


def test_the_log_is_append_only_through_the_api():
    """No API method updates or deletes an event: retention (in the auth process) is the only way out."""
    methods = set().union(*ALLOWED.values())
    assert {m for m in methods if "audit" in m} == {"emit_audit", "list_audit"}
    assert not any(word in m for m in methods for word in ("prune", "purge_audit", "delete_audit"))


async def test_the_refusals_written_per_source_are_a_setting():
    env = await make_disk_env(audit_refusals_per_source=3)
    seed = await signup(env)
    for i in range(5):
        await refused_login(env, seed, name=f"nobody{i}")
    rows = await env.service.list_audit(limit=100)
    assert sum(e.event == "user.login" and not e.success for e in rows) == 3
    for bad in (0, -1, 2.5, True):
        with pytest.raises(AuthServiceError):
            await AuthService.create(SQLiteStorage(":memory:"), CLUSTER, audit_refusals_per_source=bad)


def test_the_refusals_per_source_setting_is_read_from_toml(tmp_path):
    toml = tmp_path / "jumpgate.toml"
    assert load_config(None, data_dir=str(tmp_path)).audit_refusals_per_source == PER_SOURCE == 10
    toml.write_text("[audit]\nrefusals_per_source = 50\n")
    assert load_config(str(toml)).audit_refusals_per_source == 50
    toml.write_text("[audit]\nrefusals_per_source = 0\n")
    with pytest.raises(ConfigError, match="refusals_per_source"):
        load_config(str(toml))


async def test_signup_refusals_name_the_client_so_they_count_against_it():
    env = await make_disk_env()
    for _ in range(3):
        with pytest.raises(AuthServiceError):
            await env.service.get_invite("A" * 22, client_ip="2001:db8::7")
    with pytest.raises(AuthServiceError):
        await env.service.complete_signup("B" * 22, PASSWORD, "000000", client_ip="2001:db8::8")
    rows = [e for e in await env.service.list_audit(limit=100) if e.event == "user.signup"]
    assert [e.fields["client_ip"] for e in rows] == ["2001:db8::8"] + ["2001:db8::7"] * 3


def test_retention_is_set_by_toml_and_by_the_start_flag(tmp_path):
    assert load_config(None, data_dir=str(tmp_path)).audit_retention_days == 365
    toml = tmp_path / "jumpgate.toml"
    toml.write_text("[audit]\nretention_days = 90\n")
    assert load_config(str(toml)).audit_retention_days == 90
    args = build_parser("start").parse_args(["start", "--audit-retention-days", "0"])
    assert load_config(str(toml), audit_retention_days=args.audit_retention_days).audit_retention_days == 0
    toml.write_text("[audit]\nretention_days = -5\n")
    with pytest.raises(ConfigError, match="retention_days"):
        load_config(str(toml))
