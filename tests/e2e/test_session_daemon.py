"""End to end: the session daemon behind ``jumpgate ssh``, met as a user meets it.

The built pyz runs as separate processes. The first ``jumpgate ssh`` of a profile starts a
daemon (``python -m appliance.client.muxclient --daemon[-cold] HOME FD``, see
``appliance/client/muxclient.py``) that holds the proxy connection; later ones hand it their
terminal. What is checked here is what a user (or ``ps``) can see: ``mux.sock`` in the
profile, the pid in ``mux.lock`` and its ``/proc/PID/cmdline``, one daemon start line and
one line per session in ``mux.log``, exit statuses and output, the local terminal's modes,
and that ``logout``, ``login``, SIGKILL, ``JUMPGATE_MUX=0``, ``-L`` and the cluster's end
each leave the daemon in the state the user expects.

Logging in costs a TOTP step per login, so the profiles that only run sessions are copies
of one logged-in profile (the same user on several machines); only the two tests about
``login``/``logout`` use accounts of their own. Every test stops the daemons it started
and checks that no process naming its profile remains.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import openssh
from _cluster import LOOPBACK, Client, Cluster, Jumpgate, free_ports, poll

from appliance.client.muxclient import stop_daemon

SOCKET = "mux.sock"
LOCK = "mux.lock"
LOG = "mux.log"
DAEMON_MODULE = "appliance.client.muxclient"
STOP_WAIT = 5.0        # the brief: a stopped daemon is gone within 5 s
SSH_TIMEOUT = 30.0     # any one `jumpgate ssh` here
START_LINE = re.compile(r"INFO session daemon (\d+) for ")
SESSION_END = re.compile(r"INFO session to \S+ as \S+ ended: status (\d+)")


# --------------------------------------------------------------------------- processes and files


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaps has exited: the daemon is nobody's child)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes_naming(home: Path) -> list[int]:
    """Live processes with ``home`` (or a path inside it) in their command line."""
    prefix = str(home)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        args = cmdline(pid)
        if any(a == prefix or a.startswith(prefix + os.sep) for a in args) and alive(pid):
            found.append(pid)
    return found


def daemon_pid(home: Path) -> int:
    """The pid ``mux.lock`` holds (written by the daemon that took the lock)."""
    text = (home / LOCK).read_text().strip()
    assert text.isdigit(), f"{LOCK} holds {text!r}"
    return int(text)


def assert_is_daemon(pid: int, home: Path) -> None:
    assert alive(pid), f"the pid in {LOCK} ({pid}) is not running"
    args = cmdline(pid)
    # --daemon (started by an ssh: it connects at once) or --daemon-cold (started by login,
    # which then asks it to connect with the new certificate)
    assert DAEMON_MODULE in args and {"--daemon", "--daemon-cold"} & set(args) and str(home) in args, args


def has_socket(home: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(home / SOCKET).st_mode)
    except FileNotFoundError:
        return False


def mux_log(home: Path) -> str:
    return (home / LOG).read_text(errors="replace")


def daemon_starts(home: Path) -> list[int]:
    return [int(pid) for pid in START_LINE.findall(mux_log(home))]


def session_ends(home: Path) -> list[int]:
    return [int(status) for status in SESSION_END.findall(mux_log(home))]


def retire(home: Path) -> None:
    """Stop the profile's daemon and make sure no process naming the profile is left
    (any left is killed, then reported)."""
    stop_daemon(home)
    deadline = time.monotonic() + STOP_WAIT
    while (left := processes_naming(home)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"still running {STOP_WAIT:g} s after stop_daemon({home}): " + \
        "; ".join(" ".join(cmdline(pid)) or str(pid) for pid in left)


def cert_serial(home: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-L", "-f", str(home / "key-cert.pub")], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    found = re.search(r"Serial: (\d+)", out)
    assert found, out
    return found.group(1)


def auth_events(lines: list[str], user: str, emitter: str, serial: str) -> list[str]:
    """``auth`` events of ``user`` from an emitter (``proxy:``/``node:node1``) naming ``serial``."""
    return [line for line in lines if f" auth user={user} " in line and f"emitter={emitter}" in line
            and re.search(rf"\bserial={serial}\b", line)]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def accounts(jg: Jumpgate, cluster: Cluster, os_user: openssh.ThrowawayUser,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Client]]:
    """``dana`` (a profile to copy), ``lena`` and ``liam`` (each logs in once more in its test),
    all enrolled at once: the extra login waits for a TOTP step at most once for both."""
    clients = {}
    for name in ("dana", "lena", "liam"):
        home = tmp_path_factory.mktemp(name) / "jumpgate"
        clients[name] = Client(jg, home, cluster).enrol(name, [os_user.name])
    yield clients
    for client in clients.values():
        retire(client.home)


def _copy_profile(template: Client, home: Path) -> Client:
    """The logged-in profile of ``template`` on another machine (no daemon state copied)."""
    shutil.copytree(template.home, home, symlinks=True, ignore=shutil.ignore_patterns("mux.*"))
    home.chmod(0o700)
    client = Client(template.jg, home, template.cluster)
    client.user, client.authenticator = template.user, template.authenticator
    return client


@pytest.fixture
def client(accounts: dict[str, Client], tmp_path: Path) -> Iterator[Client]:
    """A fresh copy of dana's profile; its daemon is stopped (and checked gone) at teardown."""
    copy = _copy_profile(accounts["dana"], tmp_path / "jumpgate")
    yield copy
    retire(copy.home)


@pytest.fixture
def lena(accounts: dict[str, Client]) -> Iterator[Client]:
    yield accounts["lena"]
    retire(accounts["lena"].home)


@pytest.fixture
def liam(accounts: dict[str, Client]) -> Iterator[Client]:
    yield accounts["liam"]
    retire(accounts["liam"].home)


def ssh(client: Client, *args: str, input: str | None = None, env: dict[str, str] | None = None):
    return client.jg.run("ssh", *args, home=client.home, input=input, env=env, timeout=SSH_TIMEOUT)


# --------------------------------------------------------------------------- one daemon, many sessions


def test_first_ssh_starts_a_daemon_and_the_second_is_served_by_it(client: Client, os_user) -> None:
    first = ssh(client, f"{os_user.name}@node1", "id -un; echo oops >&2; exit 3")
    assert (first.returncode, first.stdout, first.stderr) == (3, f"{os_user.name}\n", "oops\n"), first.stderr
    assert has_socket(client.home), sorted(p.name for p in client.home.iterdir())
    assert os.lstat(client.home / SOCKET).st_mode & 0o077 == 0, "the socket is for its owner only"
    pid = daemon_pid(client.home)
    assert_is_daemon(pid, client.home)

    second = ssh(client, f"{os_user.name}@node1", "tr a-z A-Z; exit 0", input="through the daemon\n")
    assert (second.returncode, second.stdout, second.stderr) == (0, "THROUGH THE DAEMON\n", ""), second.stderr
    assert daemon_pid(client.home) == pid
    assert_is_daemon(pid, client.home)
    assert daemon_starts(client.home) == [pid], mux_log(client.home)
    assert session_ends(client.home) == [3, 0], mux_log(client.home)


def test_a_daemon_killed_with_sigkill_is_replaced_by_the_next_ssh(client: Client, os_user) -> None:
    ssh(client, f"{os_user.name}@node1", "true").check()
    old = daemon_pid(client.home)
    assert_is_daemon(old, client.home)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: not alive(old), STOP_WAIT, f"the killed daemon {old} exits")
    assert has_socket(client.home) and daemon_pid(client.home) == old, "the dead daemon's socket and lock stay"

    result = ssh(client, f"{os_user.name}@node1", "echo after the kill; exit 4")
    assert (result.returncode, result.stdout) == (4, "after the kill\n"), result.stderr
    new = daemon_pid(client.home)
    assert new != old
    assert_is_daemon(new, client.home)
    assert has_socket(client.home)
    assert daemon_starts(client.home) == [new], mux_log(client.home)


def test_a_profile_path_too_long_for_a_socket_address_still_gets_a_daemon(accounts: dict[str, Client],
                                                                           tmp_path: Path, os_user) -> None:
    """sun_path holds 107 bytes: a longer profile path is reached through /proc/self/fd."""
    home = tmp_path / ("deep" * 20) / "jumpgate"
    assert len(os.fsencode(home / SOCKET)) > 107
    home.parent.mkdir()
    deep = _copy_profile(accounts["dana"], home)
    try:
        for n in (1, 2):
            result = ssh(deep, f"{os_user.name}@node1", f"echo run {n}")
            assert (result.returncode, result.stdout) == (0, f"run {n}\n"), result.stderr
        assert has_socket(home)
        assert_is_daemon(daemon_pid(home), home)
        assert len(daemon_starts(home)) == 1 and session_ends(home) == [0, 0], mux_log(home)
    finally:
        retire(home)


# --------------------------------------------------------------------------- sessions that stay in-process


def test_jumpgate_mux_0_runs_the_session_in_process(client: Client, os_user) -> None:
    result = ssh(client, f"{os_user.name}@node1", "id -un; exit 6", env={"JUMPGATE_MUX": "0"})
    assert (result.returncode, result.stdout, result.stderr) == (6, f"{os_user.name}\n", ""), result.stderr
    assert not has_socket(client.home)
    assert not (client.home / LOG).exists() and not (client.home / LOCK).exists()
    assert processes_naming(client.home) == []


class _UpperEcho:
    """A loopback TCP server answering each read with its upper case, in a thread, bounded."""

    def __init__(self) -> None:
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(SSH_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(SSH_TIMEOUT)
                while data := conn.recv(1024):
                    conn.sendall(data.upper())

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=SSH_TIMEOUT)


class _PortTaken(Exception):
    """The port free_ports() chose was taken by someone else before ``jumpgate ssh -L`` bound it."""


def _connect_when_listening(port: int, proc: subprocess.Popen, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((LOOPBACK, port), timeout=timeout)
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read()
                if b"cannot listen" in err and b"Address already in use" in err:
                    raise _PortTaken(err.decode(errors="replace")) from None
                raise AssertionError(f"jumpgate ssh -L exited {proc.returncode}: {err!r}") from None
            assert time.monotonic() < deadline, f"nothing listens on {port} after {timeout:g} s"
            time.sleep(0.05)


def _ssh_forwarding_to(client: Client, target: str, command: str,
                       dest_port: int) -> tuple[subprocess.Popen, socket.socket]:
    """``jumpgate ssh -L P:127.0.0.1:dest_port`` running ``command``, and a connection to P once
    it listens; a free port taken meanwhile by another process is replaced once."""
    for attempt in (1, 2):
        (local,) = free_ports(1)
        proc = subprocess.Popen(client.jg.argv("ssh", "-L", f"{local}:{LOOPBACK}:{dest_port}", target, command),
                                env=client.jg.env(client.home), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            return proc, _connect_when_listening(local, proc, 15)
        except _PortTaken:
            proc.wait(timeout=5)
            if attempt == 2:
                raise
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
            raise
    raise AssertionError("unreachable")


def test_local_forwarding_runs_in_process_and_forwards(client: Client, os_user) -> None:
    """``-L`` with a command that waits for a line on stdin: the forward is used meanwhile."""
    echo = _UpperEcho()
    try:
        proc, connection = _ssh_forwarding_to(client, f"{os_user.name}@node1", "read line; echo got $line",
                                              echo.port)
    except BaseException:
        echo.close()
        raise
    try:
        with connection as conn:
            conn.sendall(b"forwarded")
            answer = b""
            while len(answer) < 9 and (data := conn.recv(64)):  # conn has a timeout
                answer += data
            assert answer == b"FORWARDED"
        assert not has_socket(client.home) and processes_naming(client.home) == [], "-L needs no daemon"
        out, err = proc.communicate(b"it\n", timeout=SSH_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        echo.close()
    assert (proc.returncode, out) == (0, b"got it\n"), err
    assert not (client.home / LOG).exists()


def _accepts_connections(path: Path) -> bool:
    """A Unix socket someone listens on (the file exists from bind(), before listen())."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture
def openssh_agent(tmp_path: Path, sock_dir: Path) -> Iterator[tuple[str, str]]:
    """The real ssh-agent on a socket, holding one key: (socket path, the key's public line)."""
    sock, key = sock_dir / "agent.sock", tmp_path / "agent_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "forwarded-key", "-f", str(key)],
                   check=True, timeout=30)
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: agent.poll() is not None or _accepts_connections(sock), 10, "ssh-agent listening")
        assert agent.poll() is None, f"ssh-agent exited {agent.returncode}"
        subprocess.run(["ssh-add", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock)}, check=True,
                       capture_output=True, timeout=30)
        yield str(sock), (tmp_path / "agent_key.pub").read_text().split()[1]
    finally:
        agent.terminate()
        agent.wait(timeout=10)


@pytest.mark.parametrize("mux", ["1", "0"], ids=["session-daemon", "in-process"])
def test_dash_a_forwards_the_callers_openssh_agent(client: Client, os_user, openssh_agent, mux: str) -> None:
    sock, public = openssh_agent
    result = ssh(client, "-A", f"{os_user.name}@node1", "ssh-add -L",
                 env={"SSH_AUTH_SOCK": sock, "JUMPGATE_MUX": mux})
    assert result.returncode == 0 and public in result.stdout, result.stderr
    assert has_socket(client.home) == (mux == "1")
    without = ssh(client, f"{os_user.name}@node1", "ssh-add -L", env={"SSH_AUTH_SOCK": sock, "JUMPGATE_MUX": mux})
    assert without.returncode != 0 and public not in without.stdout, "no -A: no agent on the node"


# --------------------------------------------------------------------------- a terminal through the daemon


def _read_until(master: int, proc: subprocess.Popen, wanted: Callable[[bytes], bool], seen: bytearray,
                timeout: float) -> None:
    """Read the pty master into ``seen`` until ``wanted(seen)`` (or the process ended and is drained)."""
    deadline = time.monotonic() + timeout
    while not wanted(bytes(seen)):
        assert time.monotonic() < deadline, f"waited {timeout:g} s; the terminal shows {bytes(seen)!r}"
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            seen += os.read(master, 4096)
        elif proc.poll() is not None:
            return


def test_interactive_pty_session_through_the_daemon_restores_the_terminal(client: Client, os_user) -> None:
    """stdin, stdout and stderr a terminal, as a user's: a shell on a remote pty, the local
    terminal raw meanwhile, then its modes and its open file's O_NONBLOCK exactly as before."""
    master, slave = os.openpty()
    try:
        modes_before = termios.tcgetattr(slave)
        flags_before = fcntl.fcntl(slave, fcntl.F_GETFL)
        proc = subprocess.Popen(client.jg.argv("ssh", f"{os_user.name}@node1"), env=client.jg.env(client.home),
                                stdin=slave, stdout=slave, stderr=slave)
        try:
            seen = bytearray()
            _read_until(master, proc, lambda out: b"$ " in out, seen, 15)  # the remote shell's prompt
            # the daemon writes the prompt while the thin client turns the terminal raw
            wait_until(lambda: not termios.tcgetattr(slave)[3] & termios.ECHO, 5, "the local terminal raw")
            os.write(master, b"echo $((6*7)) $(tty)\rexit 5\r")
            proc.wait(timeout=SSH_TIMEOUT)
            _read_until(master, proc, lambda out: False, seen, 5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        modes_after = termios.tcgetattr(slave)
        flags_after = fcntl.fcntl(slave, fcntl.F_GETFL)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 5, bytes(seen)
    assert re.search(rb"42 /dev/pts/\d+\r\n", seen), bytes(seen)
    assert modes_after == modes_before
    assert flags_after & os.O_NONBLOCK == flags_before & os.O_NONBLOCK == 0
    assert_is_daemon(daemon_pid(client.home), client.home)
    assert session_ends(client.home) == [5], mux_log(client.home)


# --------------------------------------------------------------------------- login and logout


def test_logout_stops_the_daemon_and_after_login_a_new_one_uses_the_new_certificate(
        lena: Client, cluster: Cluster, os_user) -> None:
    ssh(lena, f"{os_user.name}@node1", "true").check()
    old_pid, old_serial = daemon_pid(lena.home), cert_serial(lena.home)
    assert_is_daemon(old_pid, lena.home)
    pin = json.loads((lena.home / "profile.json").read_text())["web_pin"]  # logout forgets it

    lena.run("logout").check()
    wait_until(lambda: not alive(old_pid), STOP_WAIT, f"the daemon {old_pid} exits after logout")
    wait_until(lambda: not has_socket(lena.home), STOP_WAIT, "mux.sock removed after logout")

    assert lena.authenticator is not None
    before = set(cluster.events())  # (events_since has whole seconds: old ones could slip in)
    lena.login("lena", lena.authenticator, extra=["--ca-pin", pin]).check()  # starts the next daemon
    new_serial = cert_serial(lena.home)
    assert new_serial != old_serial
    result = ssh(lena, f"{os_user.name}@node1", "echo relogged; exit 2")
    assert (result.returncode, result.stdout) == (2, "relogged\n"), result.stderr
    new_pid = daemon_pid(lena.home)
    assert new_pid != old_pid
    assert_is_daemon(new_pid, lena.home)
    # the proxy's and the node's events are queued on their way to the auth role: polled for
    events = poll(lambda: [line for line in cluster.events() if line not in before],
                  lambda new: auth_events(new, "lena", "proxy:", new_serial)
                  and auth_events(new, "lena", "node:node1", new_serial))
    assert auth_events(events, "lena", "proxy:", new_serial), "\n".join(events)
    assert auth_events(events, "lena", "node:node1", new_serial), "\n".join(events)
    assert not auth_events(events, "lena", "", old_serial), "\n".join(events)


def test_login_while_a_daemon_runs_replaces_it_with_one_already_connected(liam: Client, os_user) -> None:
    ssh(liam, f"{os_user.name}@node1", "true").check()
    old_pid = daemon_pid(liam.home)
    assert_is_daemon(old_pid, liam.home)

    assert liam.authenticator is not None
    liam.login("liam", liam.authenticator).check()
    wait_until(lambda: not alive(old_pid), STOP_WAIT, f"the daemon {old_pid} exits after login")
    new_pid = daemon_pid(liam.home)  # login started the next one before it returned
    assert new_pid != old_pid and has_socket(liam.home)
    assert_is_daemon(new_pid, liam.home)
    wait_until(lambda: "connected to the proxy" in mux_log(liam.home),
               STOP_WAIT, "the new daemon connects to the proxy without waiting for a session")

    ssh(liam, f"{os_user.name}@node1", "true").check()
    assert daemon_pid(liam.home) == new_pid  # served by the daemon login started


# --------------------------------------------------------------------------- the cluster's end


def test_no_session_daemon_outlives_its_cluster(jg: Jumpgate, os_user, tmp_path: Path) -> None:
    """Cluster.stop() stops the daemons of its clients' profiles; none is left running."""
    (tmp_path / "cluster").mkdir()
    own = Cluster(jg, tmp_path / "cluster")
    home = tmp_path / "jumpgate"
    try:
        own.start()
        user = Client(jg, home, own).enrol("olga", [os_user.name])
        ssh(user, f"{os_user.name}@node1", "true").check()
        pid = daemon_pid(home)
        assert_is_daemon(pid, home)
        own.stop()
        wait_until(lambda: not alive(pid), STOP_WAIT, f"the daemon {pid} exits with the cluster")
        wait_until(lambda: not processes_naming(home), STOP_WAIT, "every process naming the profile exits")
        assert not has_socket(home)
    finally:
        own.stop()  # (idempotent) when the test failed before
        retire(home)
