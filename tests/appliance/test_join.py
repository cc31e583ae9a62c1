"""Joining a node or proxy, and staying joined (appliance/membership.py), against a real
auth server on loopback.

Rules checked (appliance notes "Trust and identities" and issue 3 "Bad input"): a join
token works once and not after its TTL; the auth server is verified by the token's CA
pin with no trust on first use; the host key is made locally (0600) and kept across
joins; what comes back is checked before it is saved; heartbeats reconnect with a
bounded backoff; the host certificate is renewed when less than half its life remains.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import stat
import subprocess
from functools import partial

import pytest
import trio

from appliance.api.client import ApiError
from appliance.membership import (HOST_CERT, HOST_KEY, IDENTITY, Backoff, MembershipError, MembershipHolder,
                                  heartbeat_loop, join, load_membership, parse_token)
from appliance.proxy.routing import NodeDirectory, node_target
from ssh_proto.errors import AuthError, HostKeyNotVerifiable

from _api_helpers import DAY, OffsetClock, make_service, running_auth


def same_identity(a, b) -> bool:
    """Identities match (private keys compare by their public half)."""
    return a.host_key.public_key == b.host_key.public_key and \
        dataclasses.replace(a, host_key=b.host_key) == b


def join_node(env, token, data_dir, name="db1", kind="node"):
    return join(env.addr, token, kind=kind, name=name, addresses=["127.0.0.1"], labels={"env": "dev"},
                data_dir=data_dir, addr="127.0.0.1:3022", clock=env.clock)


async def test_join_with_a_valid_token_saves_a_working_identity(tmp_path):
    async with running_auth() as env:
        ident = await join_node(env, await env.token(), tmp_path)
        role_dir = tmp_path / "node"
        assert stat.S_IMODE(os.stat(role_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(role_dir / HOST_KEY).st_mode) == 0o600
        assert ident.host_cert.key_id == "node:db1"
        assert {"db1", "db1.acme", "127.0.0.1"} <= set(ident.host_cert.principals)
        assert ident.host_ca == env.host_ca and ident.user_ca == env.service.ca.user_ca_public
        loaded = load_membership(tmp_path, "node", now=env.clock())
        assert same_identity(loaded, ident)
        async with MembershipHolder(loaded).api_factory(env.addr)() as api:
            await api.heartbeat(addr="127.0.0.1:3022", labels={"env": "dev"})
        assert (await env.service.get_node("db1")).addr == "127.0.0.1:3022"


async def test_join_token_works_once_then_already_used_and_audited(tmp_path):
    async with running_auth() as env:
        token = await env.token()
        await join_node(env, token, tmp_path / "a")
        with pytest.raises(ApiError) as err:
            await join_node(env, token, tmp_path / "b", name="db2")
        assert err.value.code == "already_used"
        assert not (tmp_path / "b" / "node" / IDENTITY).exists()
        refused = [e for e in await env.audit("node.join") if not e.success]
        assert [(e.fields["node"], e.fields["reason"]) for e in refused] == [("db2", "already_used")]


async def test_expired_join_token_fails(tmp_path):
    async with running_auth() as env:
        token = await env.token(ttl=60)
        env.clock.advance(61)
        with pytest.raises(ApiError) as err:
            await join_node(env, token, tmp_path)
        assert err.value.code == "expired"


async def test_wrong_pin_is_host_key_not_verifiable_and_no_tofu(tmp_path):
    async with running_auth() as env:
        token = await env.token()
        other_pin = (await make_service()).ca.pin_for_host_ca().removeprefix("sha256:")
        forged = token.split(".")[0] + "." + other_pin
        with pytest.raises(HostKeyNotVerifiable, match="pin"):
            await join_node(env, forged, tmp_path)
        assert not (tmp_path / "node" / HOST_CERT).exists()
        assert load_membership(tmp_path, "node") is None
        # nothing was learnt or used: the genuine token still works, with the same key
        key_before = (tmp_path / "node" / HOST_KEY).read_bytes()
        await join_node(env, token, tmp_path)
        assert (tmp_path / "node" / HOST_KEY).read_bytes() == key_before


async def test_unknown_token_secret_is_refused_at_ssh_auth(tmp_path):
    async with running_auth() as env:
        pin = env.pin.removeprefix("sha256:")
        with pytest.raises(AuthError):
            await join_node(env, "x" * 22 + "." + pin, tmp_path)


async def test_proxy_token_does_not_join_a_node(tmp_path):
    async with running_auth() as env:
        with pytest.raises(ApiError) as err:
            await join_node(env, await env.token("proxy"), tmp_path)
        assert err.value.code == "access_denied"


async def test_proxy_joins_with_its_own_identity(tmp_path):
    async with running_auth() as env:
        ident = await join_node(env, await env.token("proxy"), tmp_path, name="gw", kind="proxy")
        assert ident.host_cert.key_id == "proxy:gw"
        assert same_identity(load_membership(tmp_path, "proxy"), ident)
        assert load_membership(tmp_path, "node") is None


@pytest.mark.parametrize("token", ["nodot", ".pin", "secret.", "a.b.c"])
def test_malformed_token_is_a_membership_error(token):
    with pytest.raises(MembershipError):
        parse_token(token)


async def test_group_readable_host_key_is_refused(tmp_path):
    async with running_auth() as env:
        await join_node(env, await env.token(), tmp_path)
        os.chmod(tmp_path / "node" / HOST_KEY, 0o640)
        with pytest.raises(MembershipError, match="chmod 600"):
            load_membership(tmp_path, "node")


async def test_expired_saved_certificate_is_loaded_but_flagged(tmp_path):
    async with running_auth() as env:
        await join_node(env, await env.token(), tmp_path)
    later = env.clock() + 31 * DAY
    with pytest.raises(MembershipError, match="expired"):
        load_membership(tmp_path, "node", now=later)
    assert load_membership(tmp_path, "node").expired(later)   # so start can say "join again"


def test_backoff_is_exponential_jittered_and_bounded():
    backoff = Backoff(initial=1.0, maximum=8.0)
    delays = [backoff.next_delay() for _ in range(10)]
    assert all(0.5 <= d <= 1.0 for d in delays[:1])
    assert all(d <= 8.0 for d in delays) and all(d >= 4.0 for d in delays[4:])
    backoff.reset()
    assert backoff.next_delay() <= 1.0


# ------------------------------------------------------------------ heartbeats: the loop's timing, on MockClock

class FakeApi:
    """The auth API as the heartbeat loop sees it, in memory (no socket: MockClock's autojump
    may skip ahead whenever every task waits). The first ``failures`` connections fail."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.connects: list[float] = []
        self.beats: list[float] = []

    @contextlib.asynccontextmanager
    async def connect(self):
        self.connects.append(trio.current_time())
        if len(self.connects) <= self.failures:
            raise OSError(111, "Connection refused")
        yield self

    async def heartbeat(self, *, name, addr, labels, tunnel):
        self.beats.append(trio.current_time())
        return {"addr": addr}


async def _beats(api: FakeApi, count: int, **options) -> None:
    """Run the heartbeat loop until ``count`` heartbeats were answered."""
    answered = trio.Event()

    def on_beat() -> None:
        if len(api.beats) >= count:
            answered.set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(heartbeat_loop, api.connect, "db1", "10.0.0.5:3022", dict, on_beat=on_beat,
                                   **options))
        await answered.wait()
        nursery.cancel_scope.cancel()


async def test_heartbeats_come_every_interval_on_one_connection(autojump_clock):
    api = FakeApi()
    await _beats(api, 4, interval=30.0)
    start = api.beats[0]
    assert [t - start for t in api.beats] == [0.0, 30.0, 60.0, 90.0] and len(api.connects) == 1


async def test_a_failed_connection_is_retried_after_a_bounded_jittered_backoff_reset_by_a_success(autojump_clock):
    api = FakeApi(failures=6)
    expected = Backoff(initial=1.0, maximum=8.0, rng=random.Random(7))
    delays = [expected.next_delay() for _ in range(6)]
    await _beats(api, 2, interval=30.0, backoff=Backoff(initial=1.0, maximum=8.0, rng=random.Random(7)))
    gaps = [b - a for a, b in zip(api.connects, api.connects[1:])]
    assert gaps == pytest.approx(delays) and max(gaps) <= 8.0 and gaps[-1] >= 4.0   # doubling, then capped
    assert api.beats[1] - api.beats[0] == pytest.approx(30.0)      # answered: back to the interval


async def test_the_loop_reports_started_after_the_first_attempt_even_if_it_failed(autojump_clock):
    api = FakeApi(failures=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(heartbeat_loop, api.connect, "db1", "10.0.0.5:3022", dict, max_backoff=60.0))
        assert api.connects == [trio.current_time()] and api.beats == []   # started: the service may run
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ heartbeats against a real auth server
# Real sockets: MockClock's autojump would fire while tasks wait on the network, so these
# inject short intervals instead, and wait on the loop's own on_beat, never on a sleep.

async def _last_seen(env, name):
    return (await env.service.get_node(name)).last_seen


async def test_heartbeat_loop_reports_labels_and_renews_the_certificate_at_half_life(tmp_path):
    async with running_auth() as env:
        ident = await join_node(env, await env.token(), tmp_path)
        holder = MembershipHolder(ident)
        env.clock.advance(16 * DAY)   # less than half of the 30-day certificate remains

        async def labels():
            return {"env": "dev", "kernel": "6.1"}

        renewed = trio.Event()

        def on_beat() -> None:
            if holder.current.host_cert != ident.host_cert:
                renewed.set()
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(heartbeat_loop, holder.api_factory(env.addr), "db1", "127.0.0.1:3022",
                                        labels, interval=0.05, holder=holder, clock=env.clock, on_beat=on_beat))
            with trio.fail_after(10):
                await renewed.wait()
            nursery.cancel_scope.cancel()
        node = await env.service.get_node("db1")
        assert node.labels == {"env": "dev", "kernel": "6.1"}
        renewed = holder.current.host_cert
        assert renewed.valid_before > ident.host_cert.valid_before + 15 * DAY
        assert renewed.public_key == ident.host_cert.public_key          # same key, new certificate
        assert load_membership(tmp_path, "node", now=env.clock()).host_cert == renewed
        assert not holder.current.needs_renewal(env.clock())


async def test_heartbeat_loop_starts_while_auth_is_down_and_reconnects_when_it_returns(tmp_path):
    clock = OffsetClock()
    service = await make_service(clock)
    async with running_auth(service=service, clock=clock) as env:
        holder = MembershipHolder(await join_node(env, await env.token(), tmp_path))
        port = env.port
    factory = holder.api_factory(f"127.0.0.1:{port}", connect_timeout=2)
    answered = trio.Event()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):   # returns after the first (failed) attempt
            await nursery.start(partial(heartbeat_loop, factory, "db1", "127.0.0.1:3022", dict, interval=0.05,
                                        holder=holder, clock=clock, max_backoff=0.2, on_beat=answered.set))
        assert not answered.is_set()
        before = await _last_seen(env, "db1")
        clock.advance(1)
        async with running_auth(port=port, service=service, clock=clock):
            with trio.fail_after(10):
                await answered.wait()
        nursery.cancel_scope.cancel()
    assert await _last_seen(env, "db1") > before


async def test_heartbeat_of_a_removed_node_keeps_retrying_without_crashing(tmp_path):
    async with running_auth() as env:
        holder = MembershipHolder(await join_node(env, await env.token(), tmp_path))
        await env.service.remove_node("db1")

        async def refusals():
            return [e for e in await env.audit("auth") if not e.success]

        connect, failures = holder.api_factory(env.addr), []
        third = trio.Event()

        @contextlib.asynccontextmanager
        async def counted():
            try:
                async with connect() as api:
                    yield api
            except AuthError:
                failures.append(None)
                if len(failures) == 3:
                    third.set()
                raise
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(heartbeat_loop, counted, "db1", "127.0.0.1:3022",
                                        dict, interval=0.05, max_backoff=0.05))
            with trio.fail_after(10):
                await third.wait()              # it came back, again and again
            nursery.cancel_scope.cancel()
        refused = await refusals()              # each refusal is queued before its answer is sent
        assert len(refused) >= 3 and all("not a registered node" in e.fields["reason"] for e in refused)


# ------------------------------------------------------------------ the name hijack (docs/security.md J2..J4)

def principals_by_ssh_keygen(cert_path) -> list[str]:
    """The principals of a certificate file as the real ``ssh-keygen -L`` reads them."""
    out = subprocess.run(["ssh-keygen", "-L", "-f", str(cert_path)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    start = next(i for i, line in enumerate(out) if line.strip() == "Principals:")
    return [line.strip() for line in out[start + 1:] if line.startswith("                ")]


async def test_j2_a_second_host_with_a_fresh_token_cannot_take_a_joined_name(tmp_path):
    async with running_auth() as env:
        owner = await join_node(env, await env.token(), tmp_path / "owner")
        with pytest.raises(ApiError) as err:
            await join_node(env, await env.token(), tmp_path / "intruder")   # same name, its own new key
        assert err.value.code == "already_exists"
        assert "jumpgate ctl nodes rm db1" in err.value.message
        assert owner.host_key.public_key.fingerprint() in err.value.message
        record = await env.service.storage.get_node("db1")
        assert record.host_key == owner.host_key.public_key.blob and record.addr == "127.0.0.1:3022"
        assert not (tmp_path / "intruder" / "node" / IDENTITY).exists()
        [refusal] = [e for e in await env.audit("node.join") if not e.success]
        assert refusal.fields["reason"] == "already_exists" and refusal.fields["node"] == "db1"


async def test_j2_the_host_that_holds_the_key_rejoins_after_its_certificate_expired(tmp_path):
    async with running_auth() as env:
        first = await join_node(env, await env.token(), tmp_path)
        env.clock.advance(31 * DAY)
        assert load_membership(tmp_path, "node").expired(env.clock())
        again = await join_node(env, await env.token(), tmp_path)    # same data dir: same host key
        assert again.host_key.public_key == first.host_key.public_key
        assert again.host_cert.valid_before > env.clock() and again.host_cert.key_id == "node:db1"
        assert [e.fields.get("rejoin") for e in await env.audit("node.join") if e.success][0] is True


async def test_j2_an_admin_frees_the_name_with_nodes_rm(tmp_path):
    async with running_auth() as env:
        await join_node(env, await env.token(), tmp_path / "old")
        await env.service.remove_node("db1", actor="user:root")
        new = await join_node(env, await env.token(), tmp_path / "new")
        assert (await env.service.storage.get_node("db1")).host_key == new.host_key.public_key.blob


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
async def test_j3_a_joiner_gets_no_principal_of_another_node_or_of_the_proxy(tmp_path):
    async with running_auth() as env:
        await env.service.join(await env.token("proxy", addresses=["jump.acme.io", "10.0.0.1"]), "proxy", "gw",
                               (await _key()).public_key.blob, addr="jump.acme.io:3023")
        await env.service.join(await env.token(addresses=["10.0.0.5"]), "node", "web1",
                               (await _key()).public_key.blob, addr="10.0.0.5:3022")
        ident = await join(env.addr, await env.token(), kind="node", name="db1", data_dir=tmp_path,
                           addresses=["jump.acme.io", "10.0.0.1", "web1", "web1.acme", "10.0.0.5", "github.com",
                                      "127.0.0.1"], addr="127.0.0.1:3022", clock=env.clock)
        assert principals_by_ssh_keygen(tmp_path / "node" / HOST_CERT) == ["db1", "db1.acme", "127.0.0.1"]
        assert ident.host_cert.principals == ("db1", "db1.acme", "127.0.0.1")


async def _key():
    from ssh_proto.keys import PrivateKey
    return PrivateKey.generate("ssh-ed25519")


async def test_j4_a_heartbeat_cannot_repoint_where_the_proxy_dials(tmp_path):
    async with running_auth() as env:
        ident = await join_node(env, await env.token(), tmp_path)
        async with MembershipHolder(ident).api_factory(env.addr)() as api:
            answer = await api.heartbeat(addr="203.0.113.66:22", labels={"env": "dev"})
            assert answer == {"addr": "127.0.0.1:3022"}
        admin = await env.admin_identity()
        async with env.connect(admin) as api:   # the proxy's view: list_nodes over the API
            directory = NodeDirectory(lambda: api.list_nodes(labels={}))
            assert (await directory.resolve("db1", 22)).endpoint == ("127.0.0.1", 3022)
            assert (await directory.resolve(node_target("db1.acme", "acme"), 22)).endpoint == ("127.0.0.1", 3022)
