"""The forwarded-agent socket of a root node cannot be turned against root (docs/security.md F1).

The attack the audit found: a root node made ``/tmp/agent-XXXX``, gave the directory to the
login, bound ``agent.sock`` and then ``chmod``/``chown``-ed the path; a login that renamed a
symlink over ``agent.sock`` in that gap had root chmod 0600 and chown any file to itself. At
teardown root unlinked and removed inside a directory the login owned (in sticky /tmp), so a
login could swap the directory itself for a symlink.

Here the login runs a swapper as fast as it can — a symlink renamed over every ``agent.sock``
it can reach, every ``agent-*`` directory renamed away and replaced by a symlink to a victim
directory — while the test opens session after session with agent forwarding against a real
root node whose socket directory is a sticky, world-writable directory like /tmp. Afterwards
no root-owned file has changed, the swapper never succeeded once, and every session had its
agent.
"""
from __future__ import annotations

import os
import secrets
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest
import trio

import ssh_proto
from _node_helpers import LOOPBACK, TestCluster, make_user, remove_user, start_node
from appliance.node import server as node_server
from ssh_proto.keys import PrivateKey

pytestmark = pytest.mark.interop   # root-only tests skip through make_user (_node_helpers)

SESSIONS = 40           # setups and teardowns raced
SWAPPER_SECONDS = 120.0  # the swapper stops by itself at the latest after this (safety net)
LOGIN_PYTHON = "/usr/bin/python3"  # Debian's: the login cannot run root's pyenv interpreter

SWAPPER = textwrap.dedent("""
    import os, sys, time
    parent, canary, victim, stop_file = sys.argv[1:5]
    deadline = time.monotonic() + float(sys.argv[5])
    loops = seen = swaps = 0
    while time.monotonic() < deadline and not os.path.exists(stop_file):
        loops += 1
        for entry in os.scandir(parent):
            if not entry.name.startswith("agent-") or entry.is_symlink():
                continue
            seen += 1
            directory = os.path.join(parent, entry.name)
            link = os.path.join(directory, ".swap")
            try:                      # setup: a symlink over the socket before chmod/chown
                os.symlink(canary, link)
                os.rename(link, os.path.join(directory, "agent.sock"))
                swaps += 1
            except OSError:
                pass
            try:                      # teardown: the directory itself replaced by a symlink
                os.rename(directory, directory + ".moved")
                os.symlink(victim, directory)
                swaps += 1
            except OSError:
                pass
    print(loops, seen, swaps)
""")


def _snapshot(path: Path) -> tuple:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ("gone",)
    content = path.read_bytes() if stat.S_ISREG(st.st_mode) else sorted(os.listdir(path))
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), content


@pytest.fixture
def login():
    user = make_user("agrace")
    yield user
    remove_user(user)


@pytest.fixture
def sticky_dir():
    """A directory like /tmp: root's, mode 1777."""
    path = Path("/tmp") / f"jgsticky-{secrets.token_hex(4)}"
    path.mkdir()
    path.chmod(0o1777)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


async def test_login_racing_agent_socket_setup_and_teardown_changes_no_root_file(
        nursery, login, sticky_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(node_server, "AGENT_SOCKET_DIR", str(sticky_dir))
    canary = Path("/tmp") / f"jgcanary-{secrets.token_hex(4)}"
    canary.write_bytes(b"root's file\n")
    canary.chmod(0o644)
    victim = Path("/tmp") / f"jgvictim-{secrets.token_hex(4)}"
    victim.mkdir(mode=0o755)
    (victim / "agent.sock").write_bytes(b"root's other file\n")
    before = {path: _snapshot(path) for path in (canary, victim, victim / "agent.sock")}
    stop_file = sticky_dir / "stop"  # where the login can see it (tmp_path's parents are 0700)
    try:
        cluster = TestCluster(tmp_path)
        listener = await start_node(nursery, cluster)
        key = PrivateKey.generate("ssh-ed25519")
        cert = cluster.user_cert(key, [login.name])
        agent = ssh_proto.InProcessAgent()
        await agent.add(PrivateKey.generate("ssh-ed25519"), comment="forwarded")

        swapper = await trio.lowlevel.open_process(
            [LOGIN_PYTHON, "-c", SWAPPER, str(sticky_dir), str(canary), str(victim), str(stop_file),
             str(SWAPPER_SECONDS)],
            stdout=subprocess.PIPE, user=login.uid, group=login.gid, extra_groups=[])
        had_agent = 0
        with trio.fail_after(SWAPPER_SECONDS):
            for _ in range(SESSIONS):
                async with ssh_proto.connect(LOOPBACK, listener.port, username=login.name,
                                             client_keys=[(key, cert)], known_hosts=cluster.verify_host,
                                             agent=agent) as conn:
                    session = await conn.open_session('test -S "$SSH_AUTH_SOCK" && ssh-add -l',
                                                      agent_forwarding=True)
                    result = await session.communicate()
                    had_agent += result.exit_status == 0 and b"forwarded" in result.stdout
                # the connection's close tears the socket directory down; the next one sets up
            stop_file.write_text("")
            out = b""
            while chunk := await swapper.stdout.receive_some():
                out += chunk
            await swapper.wait()
        loops, seen, swaps = map(int, out.split())
    finally:
        stop_file.write_text("")
        after = {path: _snapshot(path) for path in before}
        canary.unlink()
        subprocess.run(["rm", "-rf", str(victim)], check=False)

    assert after == before, "a root-owned file changed under the race"
    assert swaps == 0, f"the login swapped {swaps} paths in the node's agent directories"
    assert seen > 0 and loops > SESSIONS, "the swapper never saw a socket directory: the race was not run"
    assert had_agent == SESSIONS
    assert not [p for p in sticky_dir.iterdir() if p.name.startswith("agent-")], "a socket directory was left"


async def test_agent_socket_directory_is_the_nodes_and_only_searchable_by_the_login(
        nursery, login, sticky_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(node_server, "AGENT_SOCKET_DIR", str(sticky_dir))
    cluster = TestCluster(tmp_path)
    listener = await start_node(nursery, cluster)
    key = PrivateKey.generate("ssh-ed25519")
    agent = ssh_proto.InProcessAgent()
    async with ssh_proto.connect(LOOPBACK, listener.port, username=login.name,
                                 client_keys=[(key, cluster.user_cert(key, [login.name]))],
                                 known_hosts=cluster.verify_host, agent=agent) as conn:
        session = await conn.open_session('stat -c "%U %G %a" "$(dirname "$SSH_AUTH_SOCK")" "$SSH_AUTH_SOCK"',
                                          agent_forwarding=True)
        result = await session.communicate()
    directory, sock = result.stdout.decode().splitlines()
    group = subprocess.run(["id", "-gn", login.name], capture_output=True, text=True).stdout.strip()
    assert directory == f"root {group} 710"
    assert sock == f"{login.name} {group} 600"
