"""``jumpgate ssh`` when something is wrong: -v, --debug, -p, -o, refused forwards, a non-root node.

Issue 14 items 7 and 10, each done as a user does it: the CLI as a subprocess against a real
proxy and node in the test's nursery (``_proxy_helpers``), through the session daemon and
in-process alike where both paths exist. A node that stops answering is made with a TCP
relay in front of the proxy that the test freezes: no connection breaks, so only the client's
keepalives can tell.
"""
from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from _proxy_helpers import CLUSTER, LOOPBACK, NODE, REPO, jumpgate, proxy_fixtures
from appliance.cli import start as start_cli
from appliance.client.muxclient import stop_daemon
from appliance.node import process as node_process

login, cluster, profile = proxy_fixtures("cliopt")

MUX = pytest.mark.parametrize("mux", ["0", "1"], ids=["in-process", "session-daemon"])
BOUND = 30.0  # wall-clock bound on anything that takes a second or two


def _env(profile, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "JUMPGATE_HOME": str(profile.paths.home), "PYTHONPATH": path, **extra}


async def _read_until(stream, marker: bytes, seen: bytearray) -> None:
    while marker not in seen:
        data = await stream.receive_some(65536)
        assert data, f"no {marker!r} before the end of output: {bytes(seen)!r}"
        seen.extend(data)


async def _freezable_relay(nursery: trio.Nursery, port: int) -> tuple[int, trio.Event]:
    """A loopback TCP relay to ``port``; once the event is set it stops carrying bytes (a hung host)."""
    frozen = trio.Event()

    async def pump(source, sink):
        while not frozen.is_set():
            data = await source.receive_some(65536)
            if not data or frozen.is_set():
                break
            await sink.send_all(data)
        await frozen.wait()
        await trio.sleep_forever()

    async def handle(client):
        upstream = await trio.open_tcp_stream(LOOPBACK, port)
        async with trio.open_nursery() as both:
            both.start_soon(pump, client, upstream)
            both.start_soon(pump, upstream, client)

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host=LOOPBACK))
    return listeners[0].socket.getsockname()[1], frozen


# ----------------------------------------------------------------------------- -v and --debug

@MUX
async def test_dash_v_prints_the_certificate_the_proxy_and_the_nodes_host_certificate(cluster, profile, login, mux):
    done = await jumpgate(profile, "ssh", "-v", f"{login.name}@{NODE}", "echo hi", env={"JUMPGATE_MUX": mux})
    assert (done.returncode, done.stdout) == (0, b"hi\n"), done.stderr
    err = done.stderr.decode()
    assert all(line.startswith("debug1: ") for line in err.splitlines()), err
    assert f"certificate {profile.cert_path}: key id 'user:alice'" in err
    assert f"connecting to the proxy {LOOPBACK}:{cluster.proxy_port} as 'alice'" in err
    assert f"proxy {LOOPBACK}:{cluster.proxy_port}: host certificate 'proxy:proxy1'" in err
    assert f"asking the proxy for a channel to '{NODE}' port 3022" in err
    assert f"node '{NODE}': host certificate 'node:{NODE}'" in err and "signed by host CA SHA256:" in err
    assert f"authenticated to node '{NODE}' as '{login.name}'" in err


@pytest.mark.parametrize("where", ["before", "after"])
async def test_debug_logs_the_client_with_timestamps_on_stderr(cluster, profile, login, where):
    args = ["--debug", "ssh"] if where == "before" else ["ssh", "--debug"]
    done = await jumpgate(profile, *args, f"{login.name}@{NODE}", "true")
    assert done.returncode == 0, done.stderr
    err = done.stderr.decode()
    assert f"DEBUG jumpgate.client: authenticated to node '{NODE}'" in err, err


async def test_debug_logs_ls_too(cluster, profile):
    done = await jumpgate(profile, "--debug", "ls")
    assert done.returncode == 0 and b"DEBUG jumpgate.client: connecting to the proxy" in done.stderr


# ----------------------------------------------------------------------------- -p

@MUX
async def test_dash_p_picks_the_node_registered_at_that_address_port(cluster, profile, login, mux):
    """Two nodes on one host: the port tells them apart; without it the address is ambiguous."""
    cluster.register("other", f"{LOOPBACK}:1")
    done = await jumpgate(profile, "ssh", "-p", str(cluster.node_port), f"{login.name}@{LOOPBACK}", "echo there",
                          env={"JUMPGATE_MUX": mux})
    assert (done.returncode, done.stdout, done.stderr) == (0, b"there\n", b"")
    done = await jumpgate(profile, "ssh", f"{login.name}@{LOOPBACK}", "true", env={"JUMPGATE_MUX": mux})
    assert done.returncode == 255 and b"127.0.0.1" in done.stderr


@MUX
async def test_dash_p_for_a_named_node_is_ignored_with_a_warning(cluster, profile, login, mux):
    for target in (NODE, f"{NODE}.{CLUSTER}"):
        done = await jumpgate(profile, "ssh", "-p", "2222", f"{login.name}@{target}", "echo ok",
                              env={"JUMPGATE_MUX": mux})
        assert (done.returncode, done.stdout) == (0, b"ok\n"), done.stderr
        assert done.stderr == (f"jumpgate: warning: -p 2222 ignored: node '{NODE}' is reached at the address it "
                               "registered (-p applies to a node given by its address)\n").encode()


async def test_scp_dash_p_port_for_a_named_node_is_warned_too(cluster, profile, login, tmp_path):
    (tmp_path / "f").write_text("x")
    done = await jumpgate(profile, "scp", "-P", "2222", str(tmp_path / "f"), f"{login.name}@{NODE}:")
    assert done.returncode == 0, done.stderr
    assert b"warning: -P 2222 ignored" in done.stderr


async def test_an_invalid_port_is_refused_by_the_parser(profile):
    done = await jumpgate(profile, "ssh", "-p", "99999", "node1")
    assert done.returncode == 2 and b"usage: jumpgate ssh" in done.stderr


# ----------------------------------------------------------------------------- -o

@pytest.mark.parametrize("option,message", [
    ("ForwardX11=yes", "jumpgate: not supported: -o ForwardX11 (jumpgate ssh takes ServerAliveInterval, "),
    ("StrictHostKeyChecking=no", "jumpgate: -o StrictHostKeyChecking=no is not supported: the proxy and nodes are "
                                 "always verified by the cluster's host CA"),
    ("ServerAliveInterval=soon", "jumpgate: -o ServerAliveInterval: 'soon' is not a time"),
    ("ServerAliveInterval", "jumpgate: bad -o 'ServerAliveInterval': use -o Name=value"),
])
async def test_dash_o_refuses_what_it_does_not_support_by_name(profile, option, message):
    done = await jumpgate(profile, "ssh", "-o", option, "node1", "true")
    assert done.returncode == 1 and done.stderr.decode().startswith(message), done.stderr


@MUX
async def test_dash_o_takes_openssh_spellings(cluster, profile, login, mux):
    done = await jumpgate(profile, "ssh", "-o", "stricthostkeychecking yes", "-o", "ServerAliveInterval = 30",
                          "-o", "CONNECTTIMEOUT=5", f"{login.name}@{NODE}", "echo ok", env={"JUMPGATE_MUX": mux})
    assert (done.returncode, done.stdout, done.stderr) == (0, b"ok\n", b"")


@MUX
async def test_server_alive_cuts_a_node_that_stopped_answering(cluster, profile, login, nursery, mux):
    relay_port, frozen = await _freezable_relay(nursery, cluster.proxy_port)
    proxy_port, cluster.proxy_port = cluster.proxy_port, relay_port
    try:
        relayed = cluster.write_profile("relayed")  # reaches the proxy, and so the node, through the relay
    finally:
        cluster.proxy_port = proxy_port
    argv = [sys.executable, "-m", "appliance.cli.main", "ssh", "-o", "ServerAliveInterval=1",
            "-o", "ServerAliveCountMax=2", f"{login.name}@{NODE}", "echo up; sleep 120"]
    proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, env=_env(relayed, JUMPGATE_MUX=mux), cwd=REPO)
    try:
        seen = bytearray()
        with trio.fail_after(BOUND):
            await _read_until(proc.stdout, b"up\n", seen)
        frozen.set()
        with trio.fail_after(BOUND):  # interval 1 s, 2 probes: cut after about 3 s
            status = await proc.wait()
            err = b""
            while data := await proc.stderr.receive_some(65536):
                err += data
        assert status == 255
        assert err == f"jumpgate: Timeout, node '{NODE}' not responding (ServerAliveInterval)\n".encode()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        stop_daemon(relayed.paths.home)


@MUX
async def test_connect_timeout_bounds_a_node_that_never_speaks(cluster, profile, login, nursery, mux):
    async def mute(stream):
        await trio.sleep_forever()
    listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host=LOOPBACK))
    mute_port = listeners[0].socket.getsockname()[1]
    cluster.register("mute", f"{LOOPBACK}:{mute_port}")
    with trio.fail_after(BOUND):
        done = await jumpgate(profile, "ssh", "-o", "ConnectTimeout=1", "-p", str(mute_port),
                              f"{login.name}@{LOOPBACK}", "true", env={"JUMPGATE_MUX": mux})
    assert done.returncode == 255
    assert done.stderr == f"jumpgate: node '{LOOPBACK}' did not answer within 1s\n".encode()


# ----------------------------------------------------------------------------- -L refused

async def test_a_refused_local_forward_says_which_target_and_why(cluster, profile, login):
    with trio.socket.socket() as s:  # a port nothing listens on
        await s.bind((LOOPBACK, 0))
        closed = s.getsockname()[1]
    with trio.socket.socket() as s:  # a free local port for the forward
        await s.bind((LOOPBACK, 0))
        local = s.getsockname()[1]
    argv = [sys.executable, "-m", "appliance.cli.main", "ssh", "-L", f"{local}:{LOOPBACK}:{closed}",
            f"{login.name}@{NODE}", "echo listening; sleep 120"]
    proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, env=_env(profile), cwd=REPO)
    try:
        seen, err = bytearray(), bytearray()
        with trio.fail_after(BOUND):
            await _read_until(proc.stdout, b"listening\n", seen)  # the forward listens before the session
            stream = await trio.open_tcp_stream(LOOPBACK, local)
            assert await stream.receive_some(10) == b""           # closed: the node refused the target
            await stream.aclose()
            await _read_until(proc.stderr, b"\n", err)
        assert err.decode().startswith(f"jumpgate: -L {local}: the node refused to connect to "
                                       f"{LOOPBACK}:{closed}: connect failed"), err
    finally:
        proc.kill()
        await proc.wait()


# ----------------------------------------------------------------------------- a node that is not root

@MUX
async def test_a_node_not_running_as_root_says_it_cannot_switch_users(cluster, profile, login, monkeypatch, mux):
    monkeypatch.setattr(node_process, "running_as_root", lambda: False)
    monkeypatch.setattr(node_process, "own_account_name", lambda: "jgnode")
    done = await jumpgate(profile, "ssh", f"{login.name}@{NODE}", "true", env={"JUMPGATE_MUX": mux})
    assert done.returncode == 255
    assert done.stderr == (f"jumpgate: node '{NODE}': this node does not run as root, so it cannot switch users: "
                           f"it can log in only its own account 'jgnode', not '{login.name}'\n").encode()
    assert "does not run as root" in cluster.events("auth", success=False)[0]["reason"]


def test_the_start_banner_suggests_no_root_login_for_a_node_that_is_not_root(monkeypatch, capsys):
    from appliance.config import Config
    cfg = Config(data_dir=Path("/nonexistent/jg"))
    monkeypatch.setattr(start_cli.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(node_process, "own_account_name", lambda: "bob")
    start_cli._print_banner(cfg, "c1")
    out = capsys.readouterr().out
    assert "users add alice --logins bob    # this node does not run as root" in out and "root" not in \
        out.split("--logins")[1].split("#")[0]
    monkeypatch.setattr(start_cli.os, "geteuid", lambda: 0)
    start_cli._print_banner(cfg, "c1")
    assert "users add alice --logins alice,root\n" in capsys.readouterr().out
