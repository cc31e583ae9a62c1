"""The appliance roles under the limit attacks (docs/security.md § Limits, L3-L7, L11, L12).

A real node and proxy in the test's nursery (``_proxy_helpers.start_cluster``), or the proxy
alone in a subprocess (``proxy_process.py``) where its memory is measured from outside.
Each test runs the attack and shows it fail while the role keeps serving.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

import floods
import ssh_proto
from _proxy_helpers import NODE, make_user, remove_user, start_cluster
from appliance import limits
from appliance.cli.errors import CliError
from appliance.cli.start import EXIT_SERVICE_FAILED, ServiceFailed, start, supervised
from appliance.client.muxclient import stop_daemon
from appliance.client.ssh import ConnectError, connect_node, connect_over, load_credentials, open_node_channel
from ssh_proto import events as ev
from ssh_proto.channels import PENDING_SESSION_WINDOW
from ssh_proto.keys import load_identity

SAFETY = 60
QUIET = 0.2
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the node switches users: needs root")


@pytest.fixture(scope="module")
def login():
    user = make_user("limits")
    yield user
    remove_user(user)


@pytest.fixture
async def cluster(nursery, tmp_path, login):
    return await start_cluster(nursery, tmp_path, login.name, session_nofile=256)


@pytest.fixture
def profile(cluster):
    profile = cluster.write_profile()
    yield profile
    stop_daemon(profile.paths.home)


# ---- L12: the roles' numbers -----------------------------------------------------------------------

def test_L12_every_service_bounds_what_one_user_and_one_connection_can_hold():
    for profile in (limits.PROXY_PROFILE, limits.NODE_PROFILE, limits.AUTH_PROFILE):
        assert profile.max_authenticated_per_user is not None and profile.max_authenticated is not None
        assert profile.per_source_max_startups is not None and profile.per_source_rate is not None
        assert profile.penalties is not None
    for options in (limits.PROXY_OPTIONS, limits.NODE_OPTIONS, limits.AUTH_OPTIONS):
        assert options.max_channels <= 64 and options.max_sessions is not None
        assert options.window_budget <= 32 * 1024 * 1024
    assert limits.NODE_OPTIONS.max_sessions == 10 and limits.NODE_OPTIONS.max_remote_forwards == 16
    assert limits.PROXY_OPTIONS.max_remote_forwards == 0


def test_L11_the_tunnel_profile_has_no_per_source_rules():
    p = limits.TUNNEL_PROFILE
    assert (p.per_source_max_startups, p.per_source_rate, p.penalties) == (None, None, None)
    assert p.max_authenticated >= 10_000 and p.max_startups[2] >= 2048


# ---- L3, L4: a node connection -------------------------------------------------------------------

@needs_root
async def test_L3_node_refuses_the_17th_remote_forward(cluster, profile, login):
    """~1,000 tcpip-forward requests on one node connection used to take ~1,000 descriptors."""
    async with connect_node(profile, NODE, login.name) as conn:
        for _ in range(limits.NODE_OPTIONS.max_remote_forwards):
            await conn.forward_remote_port(floods.LOOPBACK, 0, floods.LOOPBACK, 9)
        for _ in range(50):
            with pytest.raises(ssh_proto.ChannelOpenError):
                await conn.forward_remote_port(floods.LOOPBACK, 0, floods.LOOPBACK, 9)
        assert (await conn.run("true")).exit_status == 0


@needs_root
async def test_L4_node_counts_sessions_when_opened(cluster, profile, login):
    async with connect_node(profile, NODE, login.name) as conn:
        opened = [await conn.open_channel("session") for _ in range(10)]   # never started
        with pytest.raises(ssh_proto.ChannelOpenError) as info:
            await conn.open_channel("session")
        assert "too many sessions on this connection (limit 10)" in info.value.description
        await opened[0].aclose()
        await opened[0].wait_closed()
        assert (await conn.run("true")).exit_status == 0       # the slot came free


# ---- L5: session processes get the original descriptor limit ----------------------------------------

@needs_root
async def test_L5_session_processes_get_the_soft_nofile_limit_the_node_started_with(cluster, profile, login):
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 256
    async with connect_node(profile, NODE, login.name) as conn:
        assert (await conn.run("ulimit -n")).stdout == b"256\n"
        assert (await conn.run("ulimit -n", pty=True)).stdout.strip() == b"256"


def test_L5_raise_nofile_limit_raises_the_soft_limit_to_the_hard_one():
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024));"
            "from appliance.limits import raise_nofile_limit; old = raise_nofile_limit();"
            "print(old, *resource.getrlimit(resource.RLIMIT_NOFILE))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SAFETY,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.split() == ["256", "1024", "1024"], done.stderr


# ---- L11: the node counts the users the proxy relays, never the proxy ---------------------------------

async def _via_proxy(creds, source: str, login: str, cluster):
    """A login to the node through the proxy, from loopback address ``source``."""
    stream = await floods.open_from(source, cluster.proxy_port)
    connecting = ssh_proto.connect(creds.proxy_host, creds.proxy_port, username=creds.user,
                                   client_keys=creds.client_keys, known_hosts=creds.known_hosts, stream=stream)
    async with connecting as proxy:
        channel = await open_node_channel(proxy, NODE, 3022)
        async with connect_over(channel, creds, NODE, login) as conn:
            await conn.run("true")


@needs_root
async def test_L11_node_counts_relayed_clients_not_the_proxy(cluster, profile, login):
    """A user failing at the node again and again through the proxy is penalised by the node
    by *its* address; another user through the same proxy still logs in."""
    creds = load_credentials(profile)
    with trio.fail_after(SAFETY):
        for _ in range(4):                     # 4 x authfail 5 s >= the 15 s minimum
            with pytest.raises(ConnectError):
                await _via_proxy(creds, "127.0.0.2", "no-such-login", cluster)
        await trio.testing.wait_all_tasks_blocked(QUIET)   # the node's side of the last one ending
        node = cluster.node_listener.admission
        assert node.penalised(("127.0.0.2", 0))
        with pytest.raises(ConnectError, match="refused for"):
            await _via_proxy(creds, "127.0.0.2", login.name, cluster)
        await _via_proxy(creds, "127.0.0.3", login.name, cluster)
    assert not node.penalised((floods.LOOPBACK, 0))          # the proxy's own address
    assert not cluster.proxy_listener.admission.penalised(("127.0.0.2", 0))  # it did log in there


# ---- L8: the proxy under a pre-auth flood from many sources ---------------------------------------

@needs_root
async def test_L8_proxy_flooded_from_250_sources_still_lets_a_user_in(cluster, profile, login):
    """1,000 junk pre-auth connections from 127.0.0.2-127.0.0.251 against the proxy's real
    profile, still arriving during a real login from 127.0.0.1 through it to the node."""
    held: list[trio.SocketStream] = []

    async def flood(first: int, count: int) -> None:
        for n in range(first, first + count):
            try:
                held.append(await floods.hold_preauth(floods.source_address(n % 250), cluster.proxy_port))
            except OSError:
                pass  # refused at the door

    admission = cluster.proxy_listener.admission
    with trio.fail_after(SAFETY):
        await flood(0, 500)
        await trio.testing.wait_all_tasks_blocked(QUIET)   # the server has taken them all in
    # every source's first startup, and the MaxStartups drop (~98 % at 250 of 64:30:256) for
    # more: before, the same drop applied to the login too
    assert admission.startups >= 250
    async with trio.open_nursery() as attack:
        attack.start_soon(flood, 500, 500)                 # and keeps arriving during the login
        with trio.fail_after(SAFETY):
            async with connect_node(profile, NODE, login.name) as conn:
                assert (await conn.run("true")).exit_status == 0
    assert admission.startups <= limits.PROXY_PROFILE.max_startups[2]
    for stream in held:
        await trio.aclose_forcefully(stream)


# ---- L4: the proxy's memory under sessions opened and never started -----------------------------------

def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_L4_proxy_rss_stays_bounded_under_pending_sessions(tmp_path):
    """One connection opening 1,000 sessions, filling every window and starting none held
    +411 MiB of proxy RSS; now the proxy refuses past 8 sessions and 64 channels."""
    script = Path(__file__).with_name("proxy_process.py")
    proc = await trio.lowlevel.open_process([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE)
    try:
        with trio.fail_after(SAFETY):
            port = int((await proc.stdout.receive_some(64)).decode().strip())
            key, cert = load_identity(str(tmp_path / "user_key"))
            attacker = floods.RawClient(await floods.open_from(floods.LOOPBACK, port), username="mallory",
                                        options=ssh_proto.ConnectionOptions(max_channels=2000, window=32768))
            await attacker.login_with_certificate(key, cert)
            before = _rss(proc.pid)
            for _ in range(1000):
                attacker.core.channels.open("session")
            answers = await attacker.read_events((ev.ChannelOpenConfirmed, ev.ChannelOpenFailed), 1000)
            confirmed = [a.channel_id for a in answers if isinstance(a, ev.ChannelOpenConfirmed)]
            for cid in confirmed:
                attacker.core.channels.send_data(cid, bytes(attacker.core.channels.send_capacity(cid)))
            await attacker.send_queued()
            # one round trip more: everything sent before it has been read by the proxy
            await attacker.round_trip()
        after = _rss(proc.pid)
        assert len(confirmed) == limits.PROXY_OPTIONS.max_sessions
        assert {a.description for a in answers if isinstance(a, ev.ChannelOpenFailed)} == {
            "too many sessions on this connection (limit 8)"}
        assert after - before < 32 * 1024 * 1024, (before, after)
        assert len(confirmed) * PENDING_SESSION_WINDOW <= limits.PROXY_OPTIONS.window_budget
        await attacker.aclose()
    finally:
        proc.kill()
        await proc.wait()


# ---- L7: one service failing stops them all, loudly ---------------------------------------------------

async def test_L7_a_service_failing_after_it_started_stops_every_service_and_is_named(caplog):
    cancelled = trio.Event()

    async def healthy(task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async def failing(task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        raise OSError(24, "Too many open files")

    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervised, "web", healthy)
            await nursery.start(supervised, "proxy", failing)
    (failure,) = info.value.exceptions
    assert isinstance(failure, ServiceFailed) and failure.service == "proxy"
    assert "the proxy service failed (OSError" in str(failure)
    assert cancelled.is_set()
    assert any(r.levelname == "CRITICAL" and "service proxy failed" in r.getMessage() for r in caplog.records)


async def test_L7_a_service_that_cannot_start_says_why_as_before():
    async def cannot(task_status=trio.TASK_STATUS_IGNORED):
        raise OSError(98, "Address already in use")

    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervised, "node", cannot)
    assert info.value.subgroup(OSError) is not None and info.value.subgroup(ServiceFailed) is None


def test_L7_jumpgate_start_exits_70_naming_the_failed_service(monkeypatch, tmp_path):
    async def run_services(cfg, session_nofile=None):
        async with trio.open_nursery() as nursery:
            async def broken(task_status=trio.TASK_STATUS_IGNORED):
                task_status.started()
                raise RuntimeError("listener bug")
            await nursery.start(supervised, "node", broken)

    monkeypatch.setattr("appliance.cli.start.run_services", run_services)
    monkeypatch.setattr("appliance.cli.start.raise_nofile_limit", lambda: 1024)
    args = _start_args(tmp_path)
    with pytest.raises(CliError) as info:
        start(args)
    assert info.value.exit_code == EXIT_SERVICE_FAILED == 70
    assert str(info.value) == "the node service failed (RuntimeError: listener bug); every service was stopped"


def _start_args(tmp_path: Path):
    """What `jumpgate start --data-dir ... --cluster-name t --nodename n1` parses to (the real parser,
    so a new flag cannot make this test's arguments stale)."""
    from appliance.cli.main import build_parser
    return build_parser().parse_args(["start", "--data-dir", str(tmp_path / "data"), "--cluster-name", "t",
                                      "--nodename", "n1"])
