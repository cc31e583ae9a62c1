"""The all-in-one appliance with few file descriptors, flooded until it runs out (docs/security.md
L1, L5, L7, L11).

``jumpgate start`` runs with RLIMIT_NOFILE soft 256 / hard 320: it raises its soft limit to
320 (L5) and gives session processes 256 back. An authenticated user then takes every
descriptor the process has — node logins through the proxy, each with its 16 remote
forwards (L3 caps one connection; it takes many) — until accept() and listen() fail with
EMFILE. The process must survive it (L1: before, EMFILE ended the listener's nursery and
every role with it), keep serving what it holds, and serve every role again once the
flood is gone; a role failing would have stopped the process with status 70 (L7).
"""
from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest
import trio

import ssh_proto
from _cluster import LOOPBACK, Client, Cluster, Jumpgate
from appliance.client.profile import ClientPaths, Profile
from appliance.client.ssh import ConnectError, Credentials, connect_over, load_credentials, open_node_channel

NOFILE = (256, 320)
SAFETY = 60  # seconds: a net under every wait (the test's own timeout is 600)
EMFILE = "Too many open files"


@pytest.fixture(scope="module")
def cluster(jg: Jumpgate, tmp_path_factory: pytest.TempPathFactory):
    c = Cluster(jg, tmp_path_factory.mktemp("lowfd"), name="lowfd", nofile=NOFILE).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def mallory(jg: Jumpgate, cluster: Cluster, os_user, tmp_path_factory: pytest.TempPathFactory) -> Client:
    return Client(jg, tmp_path_factory.mktemp("mallory") / "jumpgate", cluster).enrol("mallory", [os_user.name])


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


def test_L5_start_raises_its_nofile_limit_and_sessions_get_the_original(cluster: Cluster, mallory: Client,
                                                                        os_user) -> None:
    assert _limits(cluster.daemon.process.pid) == (NOFILE[1], NOFILE[1])
    assert "file descriptor limit raised from 256 to 320" in cluster.daemon.log_text()
    result = mallory.run("ssh", f"{os_user.name}@node1", "ulimit -n")
    assert (result.returncode, result.stdout) == (0, "256\n"), result.stderr


@pytest.mark.timeout(600)
def test_L1_appliance_services_survive_emfile(cluster: Cluster, mallory: Client, os_user) -> None:
    creds = load_credentials(Profile.load(ClientPaths(mallory.home)))
    trio.run(_flood_until_emfile, creds, cluster, os_user.name)
    daemon = cluster.daemon
    assert daemon.running, daemon.log_tail()
    log = daemon.log_text()
    assert "stopping every service" not in log
    # every role answers again: proxy and node (ssh), auth (ls goes proxy -> auth API), web
    result = mallory.run("ssh", f"{os_user.name}@node1", "echo served")
    assert (result.returncode, result.stdout) == (0, "served\n"), result.stderr + daemon.log_tail()
    assert "node1" in mallory.run("ls").check().stdout
    assert _https_status(cluster.ports["web"]) == 200
    assert "mallory" in cluster.ctl("users", "ls").stdout
    assert "Traceback" not in daemon.log_text(), daemon.log_tail(200)


def _https_status(port: int) -> int:
    import http.client
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=30, context=context)
    try:
        conn.request("GET", "/v1/ping")
        return conn.getresponse().status
    finally:
        conn.close()


def _exhausted(cluster: Cluster) -> bool:
    return EMFILE in cluster.daemon.log_text()


async def _until_logged(cluster: Cluster, done) -> None:
    with trio.fail_after(SAFETY):
        while not done(cluster.daemon.log_text()):
            await trio.sleep(0.2)   # a subprocess's log file: nothing to wait on but the file


async def _flood_until_emfile(creds: Credentials, cluster: Cluster, login: str) -> None:
    """Hold a node session, then take descriptors until the appliance runs out; check the
    session still works while it is out; then let the flood go and knock until the accept
    loops that failed accept again (one says it works again only when it accepts something:
    which connection waited in its queue during the outage depends on who met EMFILE first,
    the test's knock or the proxy's own dial to the node)."""
    proxy_port = cluster.ports["proxy"]
    async with _proxy(creds, proxy_port) as proxy, _node(proxy, creds, login) as kept:
        cat = await kept.open_session("cat")
        async with trio.open_nursery() as knocks:
            async with trio.open_nursery() as flood:
                with trio.fail_after(SAFETY):
                    for _ in range(40):                      # 40 x (3 + 16) descriptors: far past 320
                        if _exhausted(cluster):
                            break
                        await flood.start(_hog, creds, proxy_port, login)
                await _until_logged(cluster, lambda text: EMFILE in text)
                # knock on the proxy's and the node's doors until their accept loops meet EMFILE too
                for port in (proxy_port, cluster.ports["node"]):
                    await _knock_until_refused(knocks, cluster, port)
                assert cluster.daemon.running
                with trio.fail_after(SAFETY):                # what it holds keeps working while out
                    await cat.send_all(b"still here\n")
                    assert await cat.receive_some() == b"still here\n"
                flood.cancel_scope.cancel()
            # the flood's descriptors come back: the accept loops that failed accept again
            # and say so (a knock queued during the outage, or a new one)
            for port in (proxy_port, cluster.ports["node"]):
                await _knock_until_accepted(knocks, cluster, port)
            knocks.cancel_scope.cancel()
        await cat.send_eof()
        await cat.wait()


async def _knock_until_refused(nursery: trio.Nursery, cluster: Cluster, port: int) -> None:
    """TCP connections to ``port``, held, until its accept loop logs EMFILE (each one it could
    still accept takes one more descriptor)."""
    failed = f"accept on 127.0.0.1 port {port} failed: {EMFILE}"
    for _ in range(20):
        if failed in cluster.daemon.log_text():
            return
        await nursery.start(_knock, port)
        with trio.move_on_after(1.0):      # did this one meet EMFILE? (else knock again)
            await _until_logged(cluster, lambda text: failed in text)
    raise AssertionError(f"port {port} kept accepting")


async def _knock_until_accepted(nursery: trio.Nursery, cluster: Cluster, port: int) -> None:
    """TCP connections to ``port``, held, until its accept loop logs that it works again."""
    again = f"accept on 127.0.0.1 port {port} works again"
    for _ in range(20):
        if again in cluster.daemon.log_text():
            return
        await nursery.start(_knock, port)
        with trio.move_on_after(1.0):
            await _until_logged(cluster, lambda text: again in text)
    raise AssertionError(f"port {port} did not accept again after the flood")


async def _knock(port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A TCP connection, held (in the listener's queue while it cannot be accepted)."""
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    task_status.started()
    try:
        await trio.sleep_forever()
    finally:
        await trio.aclose_forcefully(stream)


def _proxy(creds: Credentials, port: int):
    return ssh_proto.connect(creds.proxy_host, port, username=creds.user, client_keys=creds.client_keys,
                             known_hosts=creds.known_hosts, connect_timeout=SAFETY)


def _node(proxy, creds: Credentials, login: str):
    class _Over:
        async def __aenter__(self):
            channel = await open_node_channel(proxy, "node1", 3022)
            self._cm = connect_over(channel, creds, "node1", login)
            return await self._cm.__aenter__()

        async def __aexit__(self, *exc):
            return await self._cm.__aexit__(*exc)
    return _Over()


async def _hog(creds: Credentials, proxy_port: int, login: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A proxy connection and a node login over it holding 16 remote forwards (19 of the
    appliance's descriptors), until cancelled. Refused part-way (the appliance is out of
    descriptors: what the flood is for) it ends."""
    started = False
    try:
        async with _proxy(creds, proxy_port) as proxy, _node(proxy, creds, login) as conn:
            with contextlib.suppress(ssh_proto.ChannelOpenError):   # refused: keep what we hold
                for _ in range(16):
                    await conn.forward_remote_port(LOOPBACK, 0, LOOPBACK, 9)
            started = True
            task_status.started()
            await trio.sleep_forever()
    except (ssh_proto.SSHError, ConnectError, OSError, trio.BrokenResourceError):
        if not started:
            task_status.started()
