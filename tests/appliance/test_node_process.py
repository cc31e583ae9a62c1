"""appliance.node.process: environment, argv, terminal modes, and real session processes.

The processes are real (spawned as a throw-away OS account: these tests run as root); the
channel they are relayed to is an in-memory stream pair with a stderr buffer beside it.
"""
from __future__ import annotations

import os
import signal
import termios

import pytest
import trio
import trio.testing

from _node_helpers import make_user, remove_user
from appliance.node import process as proc
from ssh_proto import PtyInfo



@pytest.fixture(scope="module")
def account():
    user = make_user("nproc")
    yield proc.lookup_account(user.name)
    remove_user(user)


ENDS = proc.Endpoints("192.0.2.7", 50022, "192.0.2.1", 3022)


class MemoryChannel:
    """The client end of a session as the process module sees it: a stream plus stderr."""

    def __init__(self) -> None:
        self.client, self.server = trio.testing.memory_stream_pair()
        self.stderr = bytearray()
        self.closed = trio.Event()  # set by a test: the client closed the channel

    async def receive_some(self, max_bytes=None) -> bytes:
        return await self.server.receive_some(max_bytes)

    async def send_all(self, data) -> None:
        await self.server.send_all(data)

    async def send_stderr(self, data) -> None:
        self.stderr += data

    async def wait_closed(self) -> None:
        await self.closed.wait()


async def _collect(stream, into: bytearray) -> None:
    while data := await stream.receive_some(65536):
        into += data


async def _read_until(stream, marker: bytes) -> bytes:
    """What ``stream`` says up to ``marker`` (a command's own "I am running": an event, not a sleep)."""
    seen = bytearray()
    with trio.fail_after(10):
        while marker not in seen:
            data = await stream.receive_some(65536)
            assert data, f"the stream ended before {marker!r}: {bytes(seen)!r}"
            seen += data
    return bytes(seen)


async def _exited(pid: int) -> None:
    """Return when ``pid`` has exited, whoever its parent is (a pidfd turns readable then)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


def _spec(account: proc.LoginAccount, command: str | None, *, pty: PtyInfo | None = None,
          env: dict | None = None) -> proc.SpawnSpec:
    executable, argv = proc.session_argv(account, command)
    return proc.SpawnSpec(executable, argv, env or proc.session_environment(account, ENDS), account.home,
                          account, switch_user=True, pty=pty)


async def _run(spec: proc.SpawnSpec, stdin: bytes = b"", resize: tuple[int, int] | None = None):
    """Spawn, feed ``stdin`` then EOF, relay; returns (outcome, stdout, stderr)."""
    channel = MemoryChannel()
    out = bytearray()
    running = await proc.SessionProcess.spawn(spec)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, channel.client, out)
        if resize is not None:
            running.resize(*resize)
        if stdin:
            await channel.client.send_all(stdin)
        if spec.pty is None:
            await channel.client.send_eof()
        outcome = await running.relay(channel)
        await channel.server.aclose()
    return outcome, bytes(out), bytes(channel.stderr)


# ----------------------------------------------------------------------------- environment


def test_environment_has_sshd_variables(account):
    env = proc.session_environment(account, ENDS, term="xterm-256color", tty="/dev/pts/9",
                                   auth_sock="/tmp/agent-x/agent.sock", original_command="ls")
    assert env["HOME"] == account.home and env["SHELL"] == "/bin/sh"
    assert env["USER"] == env["LOGNAME"] == account.name
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["TERM"] == "xterm-256color" and env["SSH_TTY"] == "/dev/pts/9"
    assert env["SSH_CLIENT"] == "192.0.2.7 50022 3022"
    assert env["SSH_CONNECTION"] == "192.0.2.7 50022 192.0.2.1 3022"
    assert env["SSH_AUTH_SOCK"] == "/tmp/agent-x/agent.sock" and env["SSH_ORIGINAL_COMMAND"] == "ls"


def test_environment_passes_only_lang_and_lc_from_the_client(account):
    client = {"LANG": "C.UTF-8", "LC_ALL": "C", "LC_TIME": "en_GB.UTF-8", "LD_PRELOAD": "/tmp/evil.so",
              "PATH": "/tmp", "HOME": "/tmp", "LC_BAD=X": "1", "LC_NUL": "a\0b"}
    env = proc.session_environment(account, ENDS, client_env=client)
    assert {k: env[k] for k in ("LANG", "LC_ALL", "LC_TIME")} == {"LANG": "C.UTF-8", "LC_ALL": "C",
                                                                   "LC_TIME": "en_GB.UTF-8"}
    assert "LD_PRELOAD" not in env and "LC_BAD=X" not in env and "LC_NUL" not in env
    assert env["PATH"] == proc.USER_PATH and env["HOME"] == account.home
    assert "TERM" not in env and "SSH_TTY" not in env


def test_root_gets_the_sbin_path():
    root = proc.lookup_account("root")
    assert proc.session_environment(root, ENDS)["PATH"] == proc.ROOT_PATH


def test_ipv4_mapped_peer_is_reported_as_ipv4():
    ends = proc.Endpoints.from_addresses(("::ffff:10.1.2.3", 4000, 0, 0), ("::ffff:10.1.2.4", 3022, 0, 0))
    assert ends.ssh_connection == "10.1.2.3 4000 10.1.2.4 3022"


def test_login_shell_argv_and_exec_argv(account):
    assert proc.session_argv(account, None) == ("/bin/sh", ("-sh",))
    assert proc.session_argv(account, "echo hi") == ("/bin/sh", ("sh", "-c", "echo hi"))
    with pytest.raises(proc.SpawnError):
        proc.session_argv(account, "a\0b")


def test_lookup_of_a_missing_account_raises_keyerror():
    for name in ("jgt_no_such_login_x", "", "../root"):
        with pytest.raises(KeyError):
            proc.lookup_account(name)


def test_missing_home_falls_back_to_root_with_a_warning(account):
    gone = proc.LoginAccount(account.name, account.uid, account.gid, "/nonexistent/home", "/bin/sh", ())
    assert proc.session_cwd(gone) == ("/", "Could not chdir to home directory /nonexistent/home: "
                                           "No such file or directory")
    assert proc.session_cwd(account) == (account.home, None)


# ----------------------------------------------------------------------------- terminal modes


def test_terminal_modes_parse_until_tty_op_end():
    modes = bytes([53, 0, 0, 0, 0, 3, 0, 0, 0, 127, 0, 72, 0, 0, 0, 1])
    assert proc.parse_terminal_modes(modes) == [(53, 0), (3, 127)]


def test_terminal_modes_stop_at_undefined_opcode_and_truncation():
    assert proc.parse_terminal_modes(bytes([53, 0, 0, 0, 1, 160, 1, 2, 3])) == [(53, 1)]
    assert proc.parse_terminal_modes(bytes([53, 0, 0])) == []
    assert proc.parse_terminal_modes(b"") == []


def test_terminal_modes_are_applied_to_the_pty():
    master, slave = os.openpty()
    try:
        proc.apply_terminal_modes(slave, bytes([53, 0, 0, 0, 0, 3, 0, 0, 0, 8, 14, 0, 0, 0, 255, 0]))
        attrs = termios.tcgetattr(slave)
        assert not attrs[3] & termios.ECHO
        assert attrs[6][termios.VERASE] == b"\x08"
        assert attrs[6][termios.VLNEXT] == b"\x00"  # 255 = disabled
    finally:
        os.close(master)
        os.close(slave)


def test_exit_outcome_maps_signals_to_rfc_names():
    assert proc.exit_outcome(0) == (0, None)
    assert proc.exit_outcome(3) == (3, None)
    assert proc.exit_outcome(-signal.SIGTERM) == (None, "TERM")
    assert proc.exit_outcome(-signal.SIGCHLD) == (128 + signal.SIGCHLD, None)


# ----------------------------------------------------------------------------- processes


async def test_pipes_process_runs_as_the_login_with_its_groups(account):
    (status, signame), out, err = await _run(_spec(account, "id -un; id -G; pwd; umask"))
    name, groups, cwd, umask = out.decode().split("\n")[:4]
    assert (status, signame, err) == (0, None, b"")
    assert name == account.name and cwd == account.home and umask == "0022"
    assert set(map(int, groups.split())) == set(account.groups)


async def test_stdin_then_eof_reach_the_process_and_stderr_stays_apart(account):
    (status, _), out, err = await _run(_spec(account, "cat; echo oops >&2; exit 4"), stdin=b"x" * 200_000)
    assert status == 4 and out == b"x" * 200_000 and err == b"oops\n"


async def test_pty_process_has_a_controlling_tty_of_the_requested_size(account):
    pty = PtyInfo("xterm", 80, 24)
    # "read" waits for the line sent after the window-change, so stty sees the new size
    command = "tty; read go; stty size; echo tty=$SSH_TTY; ls -l $(tty)"
    (status, _), out, _ = await _run(_spec(account, command, pty=pty), stdin=b"go\n", resize=(132, 43))
    lines = out.decode().replace("\r", "").split("\n")
    tty = next(line for line in lines if line.startswith("/dev/pts/"))
    assert status == 0 and "43 132" in lines and f"tty={tty}" in lines
    listing = next(line for line in lines if line.startswith("crw"))
    assert listing.startswith("crw--w----") and f" {account.name} " in listing  # the login's, 0620


async def test_pty_output_is_drained_when_a_background_job_keeps_the_tty(account):
    # The job ignores SIGHUP and keeps the slave open: no EIO will come before it ends.
    spec = _spec(account, "(trap '' HUP; exec sleep 3) & echo done", pty=PtyInfo("xterm", 80, 24))
    with trio.fail_after(2):
        (status, _), out, _ = await _run(spec)
    assert status == 0 and b"done" in out


async def test_signal_reaches_the_whole_process_group(account):
    channel = MemoryChannel()
    running = await proc.SessionProcess.spawn(_spec(account, "sleep 30 & echo started; sleep 30; echo never"))
    background: list[int] = []

    async def signal_once_running() -> None:
        await _read_until(channel.client, b"started")    # both sleeps are in the group now
        background.extend(pid for pid in _live_members(running.process.pid) if pid != running.process.pid)
        assert running.signal("TERM") is True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(signal_once_running)
        with trio.fail_after(10):
            outcome = await running.relay(channel)
        await channel.server.aclose()
    assert outcome == (None, "TERM") and background
    with trio.fail_after(10):
        for pid in background:      # the background sleep went with its group
            await _exited(pid)


async def test_unknown_signal_names_are_not_sent(account):
    running = await proc.SessionProcess.spawn(_spec(account, "sleep 30"))
    assert running.signal("WINCH") is False and running.signal("SIGTERM") is False
    await running.aclose()
    assert running.process.returncode == -signal.SIGHUP


async def test_cancelled_relay_hangs_up_and_reaps_the_process(account):
    channel = MemoryChannel()
    running = await proc.SessionProcess.spawn(_spec(account, "echo started; exec sleep 30"))
    async with trio.open_nursery() as nursery:
        async def cancel_once_running() -> None:
            await _read_until(channel.client, b"started")
            nursery.cancel_scope.cancel()
        nursery.start_soon(cancel_once_running)
        await running.relay(channel)
    assert running.process.returncode == -signal.SIGHUP


async def test_channel_closed_by_the_client_hangs_up_the_process(account):
    channel = MemoryChannel()
    running = await proc.SessionProcess.spawn(_spec(account, "sleep 30"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, channel.client, bytearray())
        channel.closed.set()
        with trio.fail_after(10):   # a safety net: the hang-up is at once
            outcome = await running.relay(channel)
        nursery.cancel_scope.cancel()
    assert outcome == (None, "HUP")


@pytest.fixture
def node_ignores_hangups():
    """The node as `nohup` (or `&` in a script) starts it: SIGHUP, SIGINT, SIGQUIT ignored."""
    names = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
    before = {signum: signal.signal(signum, signal.SIG_IGN) for signum in names}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("pty", [None, PtyInfo("xterm", 80, 24, 0, 0, b"")], ids=["pipes", "pty"])
async def test_a_session_does_not_inherit_the_signals_the_node_ignores(account, node_ignores_hangups, pty):
    _status, out, _err = await _run(_spec(account, "grep -E '^Sig(Ign|Blk)' /proc/self/status", pty=pty))
    fields = dict(line.split(":") for line in out.decode().replace("\r", "").split("\n") if line)
    # signals 1-31; the C library keeps 32 and 33 for itself (sigaction refuses them), and an
    # environment may hand them down ignored: no user or tool sends them
    standard = (1 << 31) - 1
    assert int(fields["SigIgn"], 16) & standard == 0 and int(fields["SigBlk"], 16) & standard == 0, out


async def test_hangup_ends_a_session_of_a_node_that_ignores_it(account, node_ignores_hangups):
    running = await proc.SessionProcess.spawn(_spec(account, "sleep 30"))
    await running.aclose()
    assert running.process.returncode == -signal.SIGHUP   # not SIGKILL after the grace period


async def test_unspawnable_shell_raises_spawn_error(account):
    broken = proc.LoginAccount(account.name, account.uid, account.gid, account.home, "/nonexistent/shell",
                               account.groups)
    with pytest.raises(proc.SpawnError, match="cannot run /nonexistent/shell: No such file"):
        await proc.SessionProcess.spawn(_spec(broken, "true"))


def _live_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (orphans wait for init to reap them)."""
    members = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members
