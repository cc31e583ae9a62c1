"""The client side: ``jumpgate ssh`` / ``scp`` / ``ls`` / ``config`` and the scp protocol.

The commands run as real subprocesses (``python -m appliance.cli.main``) against a real
proxy and NodeServer in the test's nursery (``_proxy_helpers``); sessions run as a
throw-away OS account. The scp sink is also fed hostile records over an in-memory
stream, the way a compromised node would send them (CVE-2019-6111; docs/security.md T22).
"""
from __future__ import annotations

import fcntl
import os
import pty as ptylib
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import trio
import trio.testing

from _proxy_helpers import CLUSTER, LOOPBACK, NODE, host_identity, jumpgate, proxy_fixtures, serve_agent
from appliance.cli import remote
from appliance.cli.errors import CliError
from appliance.client.profile import Profile
from appliance.client.ssh import (ConnectError, ScpProtocolError, _Sink, connect_node, remote_scp_command,
                                  scp_download, scp_upload)
from appliance.node.server import NodeIdentity, serve_node



login, cluster, profile = proxy_fixtures("clissh")


def _tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> content (None for a directory)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def _make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    (root / "sub" / "deeper" / "empty").write_bytes(b"")
    (root / "run.sh").write_bytes(b"#!/bin/sh\n")
    (root / "run.sh").chmod(0o751)


# ----------------------------------------------------------------------------- scp (library)

async def test_scp_upload_and_download_a_file_keep_content_and_mode(cluster, profile, login, tmp_path):
    src = tmp_path / "report.bin"
    src.write_bytes(os.urandom(1_000_003))
    src.chmod(0o640)
    warnings = []
    async with connect_node(profile, NODE, login.name) as conn:
        assert await scp_upload(conn, [str(src)], "", warnings.append)          # "" = the login's home
        assert await scp_download(conn, "report.bin", tmp_path / "back.bin", warnings.append)
    assert warnings == []
    uploaded = login.home / "report.bin"
    assert uploaded.read_bytes() == src.read_bytes() and uploaded.stat().st_mode & 0o777 == 0o640
    assert (uploaded.stat().st_uid, uploaded.stat().st_gid) == (login.uid, login.gid)
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


async def test_scp_recursive_both_ways_with_preserved_times(cluster, profile, login, tmp_path):
    tree = tmp_path / "tree"
    _make_tree(tree)
    os.utime(tree / "a.txt", (1_600_000_000, 1_600_000_000))
    warnings = []
    async with connect_node(profile, NODE, login.name) as conn:
        assert await scp_upload(conn, [str(tree)], "~/copy", warnings.append, recursive=True, preserve=True)
        (tmp_path / "down").mkdir()
        assert await scp_download(conn, "copy", tmp_path / "down", warnings.append, recursive=True, preserve=True)
    assert warnings == []
    assert _tree(login.home / "copy") == _tree(tree) == _tree(tmp_path / "down" / "copy")
    assert (login.home / "copy" / "a.txt").stat().st_mtime == 1_600_000_000
    assert (tmp_path / "down" / "copy" / "a.txt").stat().st_mtime == 1_600_000_000
    assert (tmp_path / "down" / "copy" / "run.sh").stat().st_mode & 0o777 == 0o751


async def test_scp_reports_missing_files_and_directories_without_r(cluster, profile, login, tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "ok.txt").write_text("fine")
    warnings = []
    async with connect_node(profile, NODE, login.name) as conn:
        ok = await scp_upload(conn, [str(tmp_path / "missing"), str(tmp_path / "adir"), str(tmp_path / "ok.txt")],
                              ".", warnings.append)
        assert not ok
        assert not await scp_download(conn, "/nonexistent/file", tmp_path / "x", warnings.append)
    assert (login.home / "ok.txt").read_text() == "fine"       # the good one still went through
    text = "\n".join(warnings)
    assert "missing: No such file" in text and "adir: is a directory (use -r)" in text
    assert "/nonexistent/file" in text and not (tmp_path / "x").exists()


def test_remote_scp_command_quotes_the_path_for_the_shell_but_keeps_tilde():
    assert remote_scp_command("f", "a b; rm -rf ~") == "scp -f -- 'a b; rm -rf ~'"
    assert remote_scp_command("t", "~/x y", recursive=True, preserve=True, directory=True) == \
        "scp -t -r -p -d -- ~/'x y'"
    assert remote_scp_command("t", "") == "scp -t -- ."


async def _sink_against(records: bytes, tmp_path: Path, *, asked: str = "wanted.txt", recursive: bool = False):
    """Run our scp sink against a scripted (hostile) source; returns (ok, warnings)."""
    ours, theirs = trio.testing.memory_stream_pair()
    warnings: list[str] = []
    sink = _Sink(ours, warnings.append, recursive=recursive, preserve=False, target=tmp_path,
                 expected=asked if asked else None)

    async def hostile_source():
        assert await theirs.receive_some(1) == b"\0"
        await theirs.send_all(records)
        await theirs.send_eof()
        while await theirs.receive_some():
            pass
    error = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hostile_source)
        try:
            await sink.run()
        except ScpProtocolError as exc:
            error = exc
        finally:
            await ours.aclose()  # as the channel would close: the source sees EOF
    if error is not None:
        raise error
    return sink.ok, warnings


@pytest.mark.parametrize("record", [b"C0644 4 other.txt\n", b"C0644 4 ../../etc/evil\n", b"C0644 4 ..\n",
                                    b"C0644 4 sub/evil\n", b"C0644 4 .\n", b"C0644 4 \n"])
async def test_t22_scp_sink_refuses_names_it_did_not_ask_for(record, tmp_path):
    with pytest.raises(ScpProtocolError):
        await _sink_against(record + b"evil\0", tmp_path)
    assert list(tmp_path.iterdir()) == []


async def test_t22_scp_sink_refuses_traversal_inside_a_directory(tmp_path):
    records = b"D0755 0 wanted.txt\nC0644 4 ..\n"
    with pytest.raises(ScpProtocolError, match="unsafe file name"):
        await _sink_against(records, tmp_path, recursive=True)
    assert [p.name for p in tmp_path.iterdir()] == ["wanted.txt"]


async def test_scp_sink_refuses_a_second_top_level_entry_and_a_directory_without_r(tmp_path):
    with pytest.raises(ScpProtocolError, match="more than what was asked"):
        await _sink_against(b"C0644 2 wanted.txt\nok\0C0644 2 wanted.txt\nno\0", tmp_path)
    with pytest.raises(ScpProtocolError, match="without -r"):
        await _sink_against(b"D0755 0 wanted.txt\nE\n", tmp_path / "x")


@pytest.mark.parametrize("record", [b"C644 1 f\n", b"Cxxxx 1 f\n", b"C0644 -1 f\n", b"C0644 1\n",
                                    b"D0755 5 f\n", b"T1 2 3\n", b"E\n", b"Q\n", b"C0644 1 f"])
async def test_scp_sink_raises_a_protocol_error_on_malformed_records(record, tmp_path):
    with pytest.raises(ScpProtocolError):
        await _sink_against(record, tmp_path, asked="")


async def test_scp_sink_reports_the_source_errors_and_goes_on(tmp_path):
    ok, warnings = await _sink_against(b"\x01scp: wanted.txt: Permission denied\n", tmp_path)
    assert not ok and warnings == ["scp: wanted.txt: Permission denied"]


# ----------------------------------------------------------------------------- the commands (subprocesses)

@pytest.mark.parametrize("mux", ["0", "1"], ids=["in-process", "session-daemon"])
async def test_jumpgate_ssh_propagates_the_exit_status_and_streams(cluster, profile, login, mux):
    done = await jumpgate(profile, "ssh", f"{login.name}@{NODE}", "cat; echo err >&2; exit 3",
                          input=b"x" * 200_000, env={"JUMPGATE_MUX": mux})
    assert done.returncode == 3, done.stderr
    assert done.stdout == b"x" * 200_000 and done.stderr == b"err\n"


@pytest.mark.parametrize("mux", ["0", "1"], ids=["in-process", "session-daemon"])
async def test_jumpgate_ssh_failures_are_one_line_and_exit_255(cluster, profile, login, mux):
    done = await jumpgate(profile, "ssh", f"{login.name}@nosuch", "true", env={"JUMPGATE_MUX": mux})
    assert done.returncode == 255
    assert done.stderr == f"jumpgate: unknown node 'nosuch' in cluster '{CLUSTER}'\n".encode()
    done = await jumpgate(profile, "ssh", f"root@{NODE}", "true", env={"JUMPGATE_MUX": mux})
    assert done.returncode == 255 and done.stderr.count(b"\n") == 1
    assert b"login 'root' is not allowed by your certificate" in done.stderr


@pytest.mark.parametrize("mux", ["0", "1"], ids=["in-process", "session-daemon"])
async def test_jumpgate_ssh_dash_t_allocates_a_pty_without_a_terminal(cluster, profile, login, mux):
    done = await jumpgate(profile, "ssh", "-t", f"{login.name}@{NODE}", "tty", env={"JUMPGATE_MUX": mux})
    assert done.returncode == 0 and done.stdout.startswith(b"/dev/pts/"), done.stderr


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (SigCgt of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


async def _eventually(condition, what: str, timeout: float = 10.0) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
    assert condition(), f"timed out ({timeout:g} s) waiting for {what}"


# Remote side of the window change: the resize travels SIGWINCH -> client (-> daemon) -> node while
# typed text may take a shorter way, so the shell polls (bounded) until the new size arrives.
_AWAIT_RESIZE = b'for i in $(seq 200); do s=$(stty size); [ "$s" != "24 80" ] && break; sleep 0.05; done; ' \
                b'echo "$s"; exit 4\n'


@pytest.mark.parametrize("mux", ["0", "1"], ids=["in-process", "session-daemon"])
async def test_jumpgate_ssh_interactive_pty_raw_mode_window_change_and_restore(cluster, profile, login, mux):
    """On a real terminal: raw mode, SIGWINCH -> window-change, exit status, terminal restored."""
    master, slave = ptylib.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    before = termios.tcgetattr(slave)
    env = {**os.environ, "JUMPGATE_HOME": str(profile.paths.home), "TERM": "xterm", "JUMPGATE_MUX": mux}
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "ssh", f"{login.name}@{NODE}"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    screen = bytearray()

    async def expect(marker: bytes, timeout: float = 20) -> None:
        """Read the terminal until ``marker`` shows; waits in Trio (no thread stuck in read), so
        the time limit ends it, and it stops early if the client exited and nothing more comes."""
        with trio.move_on_after(timeout):
            while marker not in screen:
                with trio.move_on_after(0.1) as idle:
                    await trio.lowlevel.wait_readable(master)
                if not idle.cancelled_caught:
                    screen.extend(os.read(master, 65536))
                elif proc.poll() is not None:
                    break
        assert marker in screen, f"no {marker!r} (client status {proc.poll()}); the terminal shows {bytes(screen)!r}"

    try:
        os.write(master, b"stty size; echo ready\n")
        await expect(b"24 80")
        # raw mode while the session runs; through the daemon, the remote output may reach the
        # terminal just before the thin client (told "opened") turns it raw
        await _eventually(lambda: not termios.tcgetattr(slave)[3] & termios.ECHO, "the terminal in raw mode")
        # the client takes SIGWINCH once it has set raw mode: resize only then, or the signal is lost
        await _eventually(lambda: _catches(proc.pid, signal.SIGWINCH), "the client's SIGWINCH handler")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
        os.write(master, _AWAIT_RESIZE)
        await expect(b"50 132")
        await _eventually(lambda: proc.poll() is not None, "the client's exit", timeout=20)
        assert proc.returncode == 4
        assert termios.tcgetattr(slave) == before                    # terminal restored
        assert os.get_blocking(slave)                                # and blocking again
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        trio.lowlevel.notify_closing(master)
        os.close(master)
        os.close(slave)


def _listed(done: subprocess.CompletedProcess) -> list[str]:
    """The node names of a `jumpgate ls` table (its rows end at the blank line before the count)."""
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    return [line.split()[0] for line in lines[2:lines.index("")]]


async def test_jumpgate_ls_lists_and_filters_nodes(cluster, profile):
    cluster.register("web2", "", tunnel=True, env="prod")   # reachable by its tunnel only
    done = await jumpgate(profile, "ls")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].split() == ["Node", "Name", "Address", "Labels"]
    assert lines[2].split() == [NODE, f"{LOOPBACK}:{cluster.node_port}", "env=test"]
    assert lines[3].split() == ["web2", "tunnel", "env=prod"]
    assert lines[4:] == ["", "2 nodes"]
    done = await jumpgate(profile, "ls", "env=prod")
    assert _listed(done) == ["web2"]


async def test_jumpgate_ls_takes_labels_as_teleport_and_start_write_them(cluster, profile):
    """Issue 14 item 5: `jumpgate ls env=prod,role=web` is the syntax --labels takes."""
    cluster.register("web3", "10.0.0.9:3022", env="prod", role="web")
    cluster.register("db3", "10.0.0.8:3022", env="prod", role="db")
    for words in (["env=prod,role=web"], ["env=prod", "role=web"]):
        done = await jumpgate(profile, "ls", *words)
        assert done.returncode == 0, done.stderr
        assert _listed(done) == ["web3"]
    done = await jumpgate(profile, "ls", "env=prod,env=dev")
    assert done.returncode != 0 and b"given twice" in done.stderr and b"Traceback" not in done.stderr


async def test_jumpgate_scp_both_ways_recursive(cluster, profile, login, tmp_path):
    tree = tmp_path / "proj"
    _make_tree(tree)
    done = await jumpgate(profile, "scp", "-r", str(tree), f"{login.name}@{NODE}:proj")
    assert done.returncode == 0, done.stderr
    assert _tree(login.home / "proj") == _tree(tree)
    (tmp_path / "back").mkdir()
    done = await jumpgate(profile, "scp", "-r", f"{login.name}@{NODE}.{CLUSTER}:proj", str(tmp_path / "back"))
    assert done.returncode == 0, done.stderr
    assert _tree(tmp_path / "back" / "proj") == _tree(tree)
    done = await jumpgate(profile, "scp", f"{login.name}@{NODE}:nosuch", str(tmp_path))
    assert done.returncode == 1 and b"nosuch: No such file or directory" in done.stderr


async def _free_port() -> int:
    """A loopback port free a moment ago (someone may take it before we use it: callers retry)."""
    with trio.socket.socket() as s:
        await s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


PORT_TRIES = 3  # a picked port taken in between (EADDRINUSE) is retried with another, this many times in all


async def test_jumpgate_ssh_local_and_remote_forwarding(cluster, profile, login, nursery):
    async def echo(stream):
        async for data in stream:
            await stream.send_all(data.upper())
    listeners = await nursery.start(lambda task_status: trio.serve_tcp(echo, 0, host=LOOPBACK,
                                                                        task_status=task_status))
    echo_port = listeners[0].socket.getsockname()[1]
    probe = ("import socket,sys; s=socket.create_connection(('127.0.0.1',int(sys.argv[1])));"
             "s.sendall(b'ping'); print(s.recv(10).decode())")
    for _ in range(PORT_TRIES):
        free = await _free_port()
        done = await jumpgate(profile, "ssh", "-R", f"{free}:{LOOPBACK}:{echo_port}", f"{login.name}@{NODE}",
                              f"/usr/bin/python3 -c \"{probe}\" {free}")
        if f"remote port forwarding failed for listen port {free}".encode() not in done.stderr:
            break  # else the node could not listen there: taken since we picked it
    assert (done.returncode, done.stdout) == (0, b"PING\n"), done.stderr

    async def forward_while_sleeping(local: int, outcome: list):
        outcome.append(await jumpgate(profile, "ssh", "-L", f"{local}:{LOOPBACK}:{echo_port}",
                                      f"{login.name}@{NODE}", "sleep 5"))
    for _ in range(PORT_TRIES):
        local, outcome, stream = await _free_port(), [], None
        async with trio.open_nursery() as inner:
            inner.start_soon(forward_while_sleeping, local, outcome)
            with trio.fail_after(15):
                while stream is None and not outcome:
                    try:
                        stream = await trio.open_tcp_stream(LOOPBACK, local)
                    except OSError:
                        await trio.sleep(0.1)
            if stream is not None:
                await stream.send_all(b"pong")
                assert await stream.receive_some(10) == b"PONG"
                await stream.aclose()
            inner.cancel_scope.cancel()
        if stream is not None:
            break
        # jumpgate exited before listening: only a port taken since we picked it is retried
        assert b"Address already in use" in outcome[0].stderr, outcome
    assert stream is not None, "every port picked was taken before jumpgate could listen on it"


@pytest.mark.parametrize("mux", ["0", "1"], ids=["in-process", "session-daemon"])
async def test_jumpgate_ssh_forwards_the_agent_with_dash_a(cluster, profile, login, nursery, sock_dir, mux):
    sock, key = await serve_agent(nursery, sock_dir)
    done = await jumpgate(profile, "ssh", "-A", f"{login.name}@{NODE}", "ssh-add -L",
                          env={"SSH_AUTH_SOCK": str(sock), "JUMPGATE_MUX": mux})
    assert done.returncode == 0, done.stderr
    assert key.public_key.to_line() in done.stdout.decode()


async def test_jumpgate_config_prints_a_block_that_openssh_uses(cluster, profile, login, tmp_path):
    done = await jumpgate(profile, "config")
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert f"Host *.{CLUSTER}" in text and f"ProxyJump {CLUSTER}-proxy" in text and f" {NODE}" in text
    config = tmp_path / "cfg"
    config.write_text(text)
    ssh = ["/usr/bin/ssh", "-F", str(config), "-o", "BatchMode=yes"]
    done = await trio.run_process([*ssh, f"{login.name}@{NODE}.{CLUSTER}", "echo", "ok"], capture_stdout=True,
                                  capture_stderr=True, check=False)
    assert (done.returncode, done.stdout) == (0, b"ok\n"), done.stderr


# ----------------------------------------------------------------------------- what the client trusts (J6..J8)

def _pointed_at(profile: Profile, port: int) -> Profile:
    """The same credentials, with the proxy's SSH address moved to ``port`` (a DNS or
    routing attack that sends the user elsewhere)."""
    moved = Profile(proxy=profile.proxy, user=profile.user, cluster=profile.cluster, proxy_ssh=f"{LOOPBACK}:{port}",
                    expires=profile.expires, logins=profile.logins, paths=profile.paths)
    moved.save()
    return moved


async def test_j8_a_node_certificate_where_the_proxy_is_expected_is_refused(cluster, profile, login, nursery):
    """A forged proxy: a node's valid host certificate, issued for the proxy's address, on the
    proxy's address. Before J8 jumpgate ssh accepted any certificate of the host CA there."""
    key, cert = host_identity(cluster.host_ca, "node", "rogue", (LOOPBACK,))
    identity = NodeIdentity(key, cert, (cluster.user_ca.public_key,), CLUSTER, "rogue",
                            host_cas=(cluster.host_ca.public_key,))
    rogue = await nursery.start(lambda task_status: serve_node(lambda: identity, LOOPBACK, 0, task_status=task_status))
    moved = _pointed_at(profile, rogue.port)
    with pytest.raises(ConnectError, match=r"not of a proxy"):
        async with connect_node(moved, NODE, login.name):
            pass
    for mux in ("0", "1"):   # the command itself, in process and through the session daemon
        done = await jumpgate(moved, "ssh", f"{login.name}@{NODE}", "true", env={"JUMPGATE_MUX": mux})
        assert done.returncode == 255 and b"not of a proxy" in done.stderr, done.stderr
    assert cluster.events("session.start") == []


async def test_j8_a_node_must_present_the_certificate_of_the_node_asked_for(cluster, profile, login):
    # "db9" routes to node1, whose valid certificate (node:node1) lists 127.0.0.1 and node1 only
    cluster.register("db9", f"{LOOPBACK}:{cluster.node_port}", kind="openssh")
    with pytest.raises(ConnectError, match="certificate of node 'node1'"):
        async with connect_node(profile, "db9", login.name):
            pass
    # the proxy's own certificate where a node is expected is refused too
    cluster.register("px", f"{LOOPBACK}:{cluster.proxy_port}", kind="openssh")
    with pytest.raises(ConnectError, match="not of a node"):
        async with connect_node(profile, "px", login.name):
            pass


async def test_j8_nodes_are_still_reached_by_name_cluster_name_and_registered_address(cluster, profile, login):
    for target in (NODE, f"{NODE}.{CLUSTER}", LOOPBACK):
        async with connect_node(profile, target, login.name, port=cluster.node_port) as conn:
            assert (await conn.run("true")).exit_status == 0, target


async def test_j7_config_lists_only_one_label_node_names_and_trusts_the_same(cluster, profile, login):
    """A node registered as github.com (possible before J1) reaches no Host line and no pattern."""
    cluster.register("github.com", f"{LOOPBACK}:{cluster.node_port}")
    cluster.register("db*", f"{LOOPBACK}:{cluster.node_port}")
    done = await jumpgate(profile, "config")
    assert done.returncode == 0, done.stderr
    hosts = [line for line in done.stdout.decode().splitlines() if line.startswith("Host ")]
    assert hosts == [f"Host {CLUSTER}-proxy", f"Host *.{CLUSTER}", f"Host {LOOPBACK} {NODE}"]
    line = profile.known_hosts_path.read_text()
    assert line.startswith(f"@cert-authority [{LOOPBACK}]:{cluster.proxy_port},*.{CLUSTER},[*.{CLUSTER}]:*,"
                           f"{NODE},[{NODE}]:* ssh-ed25519 ")
    assert "github" not in line and line.count("\n") == 1


def test_j9_config_leaves_out_the_wildcard_of_a_public_suffix_cluster():
    text = remote.render_ssh_config(cluster="prod", user="alice", proxy_host="jump.example.com", proxy_port=3023,
                                    identity=Path("/k"), certificate=Path("/c"), known_hosts=Path("/kh"),
                                    node_names=["web1", "github.com"], cluster_wildcard=False)
    assert [line for line in text.splitlines() if line.startswith("Host ")] == \
        ["Host prod-proxy", "Host jump.example.com web1"]
    from appliance.client.trust import cluster_wildcard_allowed, known_hosts_patterns
    assert not cluster_wildcard_allowed("prod") and not cluster_wildcard_allowed("co.uk")
    assert known_hosts_patterns("prod", [("jump.example.com", 3023)], ["web1"]) == \
        ["[jump.example.com]:3023", "web1", "[web1]:*"]


# ----------------------------------------------------------------------------- argument parsing

@pytest.mark.parametrize("spec,expected", [
    ("8080:intranet:80", ("localhost", 8080, "intranet", 80)),
    ("0.0.0.0:8080:intranet:80", ("0.0.0.0", 8080, "intranet", 80)),
    ("[::1]:8080:[fe80::1]:80", ("::1", 8080, "fe80::1", 80)),
])
def test_forward_specifications_parse_as_openssh_does(spec, expected):
    assert remote.parse_forward(spec, remote=False) == expected


@pytest.mark.parametrize("spec", ["8080", "8080:host", "x:host:80", "8080:host:99999", "0:host:80", "1:2:3:4:5"])
def test_bad_forward_specifications_are_refused(spec):
    with pytest.raises(CliError):
        remote.parse_forward(spec, remote=False)


@pytest.mark.parametrize("arg,expected", [
    ("web1:/tmp/x", (None, "web1", "/tmp/x")), ("root@web1:", ("root", "web1", "")),
    ("root@[::1]:f", ("root", "::1", "f")), ("./a:b", None), ("/abs:b", None), ("plain", None), (":x", None),
])
def test_scp_paths_are_remote_when_a_colon_comes_before_any_slash(arg, expected):
    assert remote.parse_remote_path(arg) == expected


def test_ssh_config_block_keeps_the_users_known_hosts_first_and_quotes_paths():
    text = remote.render_ssh_config(cluster="prod", user="alice", proxy_host="jump.example.com", proxy_port=3023,
                                    identity=Path("/h/a b/key"), certificate=Path("/h/a b/key-cert.pub"),
                                    known_hosts=Path("/h/a b/known_hosts"), node_names=["web1", "db1"])
    assert 'IdentityFile "/h/a b/key"' in text
    assert 'UserKnownHostsFile ~/.ssh/known_hosts "/h/a b/known_hosts"' in text
    assert "Host jump.example.com web1 db1\n" in text and "Host *.prod\n" in text
    assert "HostName jump.example.com\n    Port 3023\n    User alice" in text
