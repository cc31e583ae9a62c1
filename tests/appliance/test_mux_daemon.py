"""The session daemon (``muxd.MuxDaemon``) against a real proxy and node, with real thin clients.

The daemon runs in the test's own Trio nursery on the profile's claimed socket (never
forked from pytest); ``jumpgate ssh`` runs as a subprocess and finds it there, as it finds
the daemon it would have started itself. Every test proves the daemon served its
sessions: by the daemon's log lines (logger ``jumpgate.mux``), by the requests it parsed,
and by the proxy's audit (one proxy authentication for many sessions). Protocol abuse
is sent over a raw Unix socket. Needs root: the node switches to a throw-away account.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import pty as ptylib
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import trio

from _proxy_helpers import CLUSTER, NODE, REPO, jumpgate, proxy_fixtures, serve_agent, user_cert
from appliance.client import mux, muxclient, muxd
from appliance.client.mux import MAX_FRAME, FrameDecoder, SessionRequest, encode_frame
from appliance.client.ssh import load_credentials
from ssh_proto.keys import PrivateKey


WAIT = 10.0  # bound on every wait for the daemon; the tests themselves take well under a second each


login, cluster, profile = proxy_fixtures("muxd")


@dataclasses.dataclass
class Running:
    """A daemon serving in the test's nursery, and what it was asked."""

    daemon: muxd.MuxDaemon
    claim: muxclient.Claim
    home: Path
    messages: list[dict]       # every client message the daemon parsed, in order
    finished: trio.Event       # serve() returned

    @property
    def socket_file(self) -> Path:
        return self.home / mux.SOCKET_NAME


@pytest.fixture
async def start_mux(nursery, profile, monkeypatch, caplog, changes):
    """Start a MuxDaemon on the profile's socket; stopped, waited for and released at teardown."""
    caplog.set_level(logging.INFO, logger="jumpgate.mux")
    messages: list[dict] = []
    real_parse = muxd.parse_request

    def recording_parse(message: dict):
        messages.append(dict(message))
        return real_parse(message)
    monkeypatch.setattr(muxd, "parse_request", recording_parse)
    started: list[Running] = []

    async def start(before_serving=lambda home: None, **options) -> Running:
        home = profile.paths.home
        claim = muxclient.claim_socket(home)
        assert claim is not None, "another daemon holds this profile"
        before_serving(home)  # e.g. the client that started the daemon, already waiting in the backlog
        running = Running(muxd.MuxDaemon(home, **options), claim, home, messages, trio.Event())
        started.append(running)

        async def serve(task_status=trio.TASK_STATUS_IGNORED):
            await running.daemon.serve(trio.socket.from_stdlib_socket(claim.listener), claim.release,
                                       task_status=task_status)
            running.finished.set()
        await nursery.start(serve)
        return running

    yield start
    try:
        for running in started:
            running.daemon.stop()
        with trio.fail_after(WAIT):
            for running in started:
                await running.finished.wait()
    finally:
        for running in started:
            running.claim.release()
    failures = [r.getMessage() for r in caplog.records if r.name == "jumpgate.mux" and r.levelno >= logging.ERROR]
    assert failures == [], failures  # log.exception: a session failed in a way the daemon did not expect


@pytest.fixture
async def running(start_mux):
    return await start_mux()


# ----------------------------------------------------------------------------- helpers

def _client_env(profile) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "JUMPGATE_HOME": str(profile.paths.home), "PYTHONPATH": path, "JUMPGATE_MUX": "1"}


async def _ssh(profile, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    """``jumpgate ssh ARGS`` as a subprocess (stdin /dev/null unless ``input``), session daemon enabled."""
    return await jumpgate(profile, "ssh", *args, input=input, env={"JUMPGATE_MUX": "1"})


@contextlib.asynccontextmanager
async def _client(profile, *args: str, **streams) -> AsyncIterator[trio.Process]:
    """``jumpgate ssh ARGS`` started with ``streams``; killed on the way out (no client may
    outlive the test's daemon: finding no daemon, it would start one)."""
    argv = [sys.executable, "-m", "appliance.cli.main", "ssh", *args]
    proc = await trio.lowlevel.open_process(argv, env=_client_env(profile), cwd=REPO, **streams)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                await stream.aclose()


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


def _log(caplog, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "jumpgate.mux" and r.getMessage().startswith(prefix)]


class Changes(logging.Handler):
    """What the tests wait for is announced: a log record of the daemon, the proxy or the node,
    or an audit event of the cluster. This wakes :func:`_until` at each of them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._token = trio.lowlevel.current_trio_token()
        self._event = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.notify()

    def notify(self) -> None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:   # a record from a worker thread: wake the loop from there
            self._token.run_sync_soon(self.notify)
            return
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


_changes: list[Changes] = []


@pytest.fixture
async def changes(cluster, caplog):
    caplog.set_level(logging.INFO, logger="jumpgate")
    watcher = Changes()
    logging.getLogger("jumpgate").addHandler(watcher)
    cluster.audit.listeners.append(watcher.notify)
    _changes.append(watcher)
    yield watcher
    _changes.remove(watcher)
    logging.getLogger("jumpgate").removeHandler(watcher)


async def _until(condition, what: str, timeout: float = WAIT) -> None:
    """Wait for ``condition()``, checked again at each change the cluster announces."""
    with trio.move_on_after(timeout):
        while not condition():
            await _changes[-1].wait()
        return
    if not condition():  # once more: the deadline may have come while this task waited to run
        pytest.fail(f"timed out ({timeout:g} s) waiting for {what}")


def _session(login: str, command: str | None = "true") -> SessionRequest:
    return SessionRequest(target=f"{login}@{NODE}", login=None, port=None, command=command, pty=False,
                          term="xterm", cols=80, rows=24, env={})


def _request(login: str, command: str | None = "true", **changes) -> dict:
    return {**_session(login, command).to_message(), **changes}


def _proxy_logins(cluster) -> list[dict]:
    return cluster.events("auth", service="proxy")


# ----------------------------------------------------------------------------- sessions relayed

async def test_daemon_relays_status_stdout_stderr_and_a_megabyte_through_cat(cluster, profile, login, running,
                                                                             caplog):
    data = os.urandom(1_000_000)
    done = await _ssh(profile, f"{login.name}@{NODE}", "cat; echo err >&2; exit 3", input=data)
    assert done.returncode == 3, done.stderr
    assert done.stdout == data
    assert done.stderr == b"err\n"
    assert _log(caplog, f"session to {NODE} as {login.name} ended") == \
        [f"session to {NODE} as {login.name} ended: status 3"]
    assert running.messages[-1]["command"] == "cat; echo err >&2; exit 3"


async def test_daemon_serves_many_sessions_over_one_proxy_connection(cluster, profile, login, running, caplog):
    for n in range(3):
        done = await _ssh(profile, f"{login.name}@{NODE}", f"echo {n}")
        assert (done.returncode, done.stdout, done.stderr) == (0, f"{n}\n".encode(), b"")
    assert len(_log(caplog, f"session to {NODE} as {login.name} ended: status 0")) == 3
    assert len(_proxy_logins(cluster)) == 1           # the proxy hop is the daemon's, held open
    assert len(cluster.events("session.start")) == 3  # each node hop is new, and audited


async def test_daemon_forwards_the_clients_agent_with_dash_a(cluster, profile, login, running, nursery, sock_dir,
                                                            caplog):
    sock, key = await serve_agent(nursery, sock_dir)
    done = await jumpgate(profile, "ssh", "-A", f"{login.name}@{NODE}", "ssh-add -L",
                          env={"JUMPGATE_MUX": "1", "SSH_AUTH_SOCK": str(sock)})
    assert done.returncode == 0, done.stderr
    assert key.public_key.to_line() in done.stdout.decode()
    assert running.messages[-1]["agent"] == str(sock)  # the daemon served it, with the client's agent
    assert len(cluster.events("agent.forward")) == 1
    # without -A the node gets no agent, even though the client has one
    done = await jumpgate(profile, "ssh", f"{login.name}@{NODE}", "ssh-add -L",
                          env={"JUMPGATE_MUX": "1", "SSH_AUTH_SOCK": str(sock)})
    assert done.returncode != 0 and key.public_key.to_line() not in done.stdout.decode()
    assert running.messages[-1]["agent"] is None


async def test_daemon_writes_to_a_regular_file_and_reads_a_regular_file(cluster, profile, login, running,
                                                                       tmp_path, caplog):
    source, target = tmp_path / "in.bin", tmp_path / "out.bin"
    data = os.urandom(300_000)
    source.write_bytes(data)
    with open(source, "rb") as stdin, open(target, "wb") as stdout:
        async with _client(profile, f"{login.name}@{NODE}", "cat; echo tail",
                           stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL) as proc:
            with trio.fail_after(WAIT):
                assert await proc.wait() == 0
    assert target.read_bytes() == data + b"tail\n"
    assert _log(caplog, f"session to {NODE} as {login.name} ended") == \
        [f"session to {NODE} as {login.name} ended: status 0"]


async def test_daemon_sees_eof_at_once_when_stdin_is_dev_null(cluster, profile, login, running, caplog):
    done = await _ssh(profile, f"{login.name}@{NODE}", "cat; echo eof")   # jumpgate(): stdin is /dev/null
    assert (done.returncode, done.stdout, done.stderr) == (0, b"eof\n", b"")
    assert _log(caplog, f"session to {NODE} as {login.name} opened")


# ----------------------------------------------------------------------------- errors

async def test_unknown_node_is_one_line_255_and_the_daemon_keeps_serving(cluster, profile, login, running,
                                                                        caplog):
    done = await _ssh(profile, f"{login.name}@nosuch", "true")
    assert done.returncode == 255
    assert done.stderr == f"jumpgate: unknown node 'nosuch' in cluster '{CLUSTER}'\n".encode()
    assert _log(caplog, f"session to nosuch as {login.name} failed")
    done = await _ssh(profile, f"{login.name}@{NODE}", "echo still")
    assert (done.returncode, done.stdout) == (0, b"still\n"), done.stderr
    assert running.daemon.active == 0 and not running.finished.is_set()


async def test_login_not_in_the_certificate_is_255_naming_the_certificates_logins(cluster, profile, login,
                                                                                 running, caplog):
    done = await _ssh(profile, f"root@{NODE}", "true")
    assert done.returncode == 255
    assert done.stderr == (f"jumpgate: login 'root' is not allowed by your certificate "
                           f"(your logins: {login.name})\n").encode()
    assert _log(caplog, f"session to {NODE} as root failed")


async def test_malformed_target_is_status_1(cluster, profile, running):
    done = await _ssh(profile, f"@{NODE}", "true")
    assert done.returncode == 1
    assert done.stderr == f"jumpgate: not a [login@]node: '@{NODE}'\n".encode()
    assert [m["target"] for m in running.messages] == [f"@{NODE}"]  # the daemon answered it


async def test_removed_key_gives_the_login_hint_with_status_1(cluster, profile, login, running):
    for name in ("key", "key.pub"):
        (profile.paths.home / name).unlink()
    done = await _ssh(profile, f"{login.name}@{NODE}", "true")
    assert done.returncode == 1
    assert done.stderr == f"jumpgate: no key or certificate in {profile.paths.home}; run `jumpgate login`\n".encode()
    assert [m["command"] for m in running.messages] == ["true"]  # the daemon was asked, and answered


async def test_removed_profile_answers_not_logged_in(cluster, profile, login, running):
    """Without profile.json the thin client runs in-process (and says so); a request that
    reaches the daemon anyway (removed in between) gets the same line as an error event."""
    (profile.paths.home / "profile.json").unlink()
    hint = "not logged in; run `jumpgate login --proxy HOST:3080 --user NAME`"
    done = await _ssh(profile, f"{login.name}@{NODE}", "true")
    assert (done.returncode, done.stderr) == (1, f"jumpgate: {hint}\n".encode())
    assert running.messages == []
    pipes = _pipes(3)
    reply = await trio.to_thread.run_sync(_exchange, running.home, encode_frame(_request(login.name)),
                                          [w for _, w in pipes])
    assert FrameDecoder().feed(reply) == [{"event": "error", "message": hint, "status": 1}]
    _assert_daemon_closed_its_copies(pipes)


async def test_expired_certificate_is_refused_by_the_proxy_with_255(cluster, profile, login, running, caplog):
    """profile.json still says valid (the thin client's check passes; the certificate expired
    since, or was replaced): the daemon tries, and the proxy refuses."""
    await _until(lambda: running.daemon._link is not None, "the daemon's warm-up connection")
    key = PrivateKey.generate("ssh-ed25519")
    profile.paths.write_credentials(key, user_cert(cluster.user_ca, key, [login.name], lifetime=(-7200, -60)),
                                    cluster.host_ca.public_key, trusted_for=cluster.trusted_for())
    done = await _ssh(profile, f"{login.name}@{NODE}", "true")
    assert done.returncode == 255
    assert done.stderr.startswith(b"jumpgate: your certificate expired at ") and done.stderr.count(b"\n") == 1
    assert _log(caplog, f"session to {NODE} as {login.name} failed: your certificate expired at ")
    assert cluster.events("auth", success=False, service="proxy")   # the proxy saw and refused it
    assert cluster.events("session.start") == []


# ----------------------------------------------------------------------------- protocol abuse

def _exchange(home: Path, data: bytes, fds: Sequence[int] = (), *, hang_up: bool = False) -> bytes:
    """Connect, send ``data`` (with ``fds``), read until the daemon closes; what it sent back."""
    sock = muxclient.connect(home)
    assert sock is not None, "no daemon on the profile's socket"
    with sock:
        sock.settimeout(WAIT)
        if fds:
            sent = socket.send_fds(sock, [data], list(fds))
            if sent < len(data):  # the daemon may have answered and closed already
                sock.sendall(data[sent:])
        elif data:
            sock.sendall(data)
        if hang_up:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # the daemon closed with our bytes unread: dropped all the same
        return received


def _pipes(count: int) -> list[tuple[int, int]]:
    return [os.pipe() for _ in range(count)]


def _close_pipes(pipes: list[tuple[int, int]]) -> None:
    for pipe in pipes:
        for fd in pipe:
            os.close(fd)


def _assert_daemon_closed_its_copies(pipes: list[tuple[int, int]]) -> None:
    """We close our write ends: a read end then sees EOF only if the daemon closed what it received."""
    for r, w in pipes:
        os.close(w)
        os.set_blocking(r, False)
        try:
            assert os.read(r, 1) == b"", "the daemon kept a descriptor of a dropped client"
        except BlockingIOError:
            pytest.fail("the daemon kept a descriptor of a dropped client")
        finally:
            os.close(r)


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


ABUSE = {
    "garbage": (lambda login: b"\x00\x00\x00\x06\xff\xfe\x00\x01\x80\x7f", 0, "a frame is not JSON"),
    "header-above-max-frame": (lambda login: struct.pack(">I", MAX_FRAME + 1) + b"{", 0,
                               f"frame of {MAX_FRAME + 1} bytes exceeds {MAX_FRAME}"),
    "not-json": (lambda login: _frame(b"{'op': 'session'}"), 0, "a frame is not JSON"),
    "json-array": (lambda login: _frame(b"[1, 2]"), 0, "a frame is not a JSON object"),
    "unknown-op": (lambda login: encode_frame({"op": "exec", "version": 1}), 0, "unknown request 'exec'"),
    "session-without-descriptors": (lambda login: encode_frame(_request(login)), 0,
                                    "a session request needs 3 descriptors, not 0"),
    "session-with-one-descriptor": (lambda login: encode_frame(_request(login)), 1,
                                    "a session request needs 3 descriptors, not 1"),
    "session-with-four-descriptors": (lambda login: encode_frame(_request(login)), 4,
                                      "a session request needs 3 descriptors, not 4"),
    "resize-first": (lambda login: encode_frame({"op": "resize", "cols": 80, "rows": 24}), 0,
                     "a resize before any session"),
    "two-requests-at-once": (lambda login: encode_frame(_request(login)) * 2, 3,
                             "a second request before the answer to the first"),
    "bad-field": (lambda login: encode_frame(_request(login, port=70000)), 3, "port must be 1-65535"),
}


@pytest.mark.parametrize("case", list(ABUSE))
async def test_daemon_drops_a_client_that_breaks_the_protocol_and_keeps_serving(cluster, profile, login, running,
                                                                                caplog, case):
    make, descriptors, reason = ABUSE[case]
    pipes = _pipes(descriptors)
    started = time.monotonic()
    reply = await trio.to_thread.run_sync(_exchange, running.home, make(login.name), [w for _, w in pipes])
    assert reply == b""                                        # dropped without an answer
    assert time.monotonic() - started < muxd.REQUEST_TIMEOUT / 2  # at once, not by the request timeout
    _assert_daemon_closed_its_copies(pipes)
    assert _log(caplog, "dropped a client") == [f"dropped a client: {reason}"]
    assert cluster.events("session.start") == []
    done = await _ssh(profile, f"{login.name}@{NODE}", "echo still")
    assert (done.returncode, done.stdout) == (0, b"still\n"), done.stderr


async def test_daemon_drops_a_client_that_hangs_up_in_the_middle_of_a_frame(cluster, profile, login, running,
                                                                           caplog):
    partial = encode_frame(_request(login.name))[:20]
    reply = await trio.to_thread.run_sync(lambda: _exchange(running.home, partial, hang_up=True))
    assert reply == b""
    assert _log(caplog, "dropped a client") == ["dropped a client: the client hung up before its request"]
    done = await _ssh(profile, f"{login.name}@{NODE}", "echo still")
    assert (done.returncode, done.stdout) == (0, b"still\n"), done.stderr


async def test_daemon_drops_a_silent_client_after_the_request_timeout(cluster, profile, login, running, caplog,
                                                                     monkeypatch):
    monkeypatch.setattr(muxd, "REQUEST_TIMEOUT", 0.3)
    started = time.monotonic()
    reply = await trio.to_thread.run_sync(_exchange, running.home, b"")
    assert reply == b"" and 0.3 <= time.monotonic() - started < 3
    assert _log(caplog, "dropped a client") == ["dropped a client: no request in time"]
    done = await _ssh(profile, f"{login.name}@{NODE}", "echo still")
    assert (done.returncode, done.stdout) == (0, b"still\n"), done.stderr


async def test_session_request_of_another_version_gets_a_mismatch_reply(cluster, login, running):
    pipes = _pipes(3)
    reply = await trio.to_thread.run_sync(_exchange, running.home, encode_frame(_request(login.name, version=999)),
                                          [w for _, w in pipes])
    assert FrameDecoder().feed(reply) == [{"event": "mismatch", "version": mux.MUX_VERSION}]
    _assert_daemon_closed_its_copies(pipes)
    assert cluster.events("session.start") == []


async def test_version_mismatch_end_to_end_the_client_runs_the_session_itself(cluster, profile, login, running,
                                                                             monkeypatch, caplog):
    monkeypatch.setattr(mux, "MUX_VERSION", mux.MUX_VERSION + 1)  # the daemon (this process) is "another build"
    done = await _ssh(profile, f"{login.name}@{NODE}", "echo fallback; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, b"fallback\n", b"")
    assert [m["version"] for m in running.messages] == [mux.MUX_VERSION - 1]  # the client asked the daemon first...
    assert _log(caplog, "session to") == []                    # ...which did not serve it
    assert len(cluster.events("session.start")) == 1           # the client did, over its own proxy connection
    await _until(lambda: len(_proxy_logins(cluster)) == 2, "the daemon's and the client's proxy logins")


# ----------------------------------------------------------------------------- lifetime

async def test_killed_thin_client_ends_its_session_promptly(cluster, profile, login, running, caplog):
    async with _client(profile, f"{login.name}@{NODE}", "sleep 30", stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        await _until(lambda: _log(caplog, f"session to {NODE} as {login.name} opened"), "the session")
        assert running.daemon.active == 1
        proc.kill()
        with trio.fail_after(WAIT):
            await proc.wait()
        await _until(lambda: running.daemon.active == 0, "end of the session", timeout=3.0)
    await _until(lambda: cluster.events("session.end"), "end of the node's session", timeout=3.0)
    assert _log(caplog, f"session to {NODE} as {login.name} ended") == \
        [f"session to {NODE} as {login.name} ended: status 255"]
    done = await _ssh(profile, f"{login.name}@{NODE}", "echo other")
    assert (done.returncode, done.stdout) == (0, b"other\n"), done.stderr


async def test_stop_removes_the_socket_at_once_and_lets_the_running_session_finish(cluster, profile, login,
                                                                                  running, caplog):
    # the session waits for a line on stdin: it runs until the test lets it finish
    async with _client(profile, f"{login.name}@{NODE}", "read line; echo done $line; exit 5",
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        await _until(lambda: _log(caplog, f"session to {NODE} as {login.name} opened"), "the session")
        assert await trio.to_thread.run_sync(muxclient.stop_daemon, running.home)
        await _until(lambda: not running.socket_file.exists(), "the socket's removal")
        assert running.daemon.active == 1 and proc.poll() is None   # gone while the session still runs
        assert muxclient.connect(running.home) is None              # a new client finds no daemon
        await proc.stdin.send_all(b"now\n")
        await proc.stdin.aclose()
        with trio.fail_after(WAIT):
            stdout, stderr = await _read_all(proc.stdout), await _read_all(proc.stderr)
            assert await proc.wait() == 5
    assert (stdout, stderr) == (b"done now\n", b"")
    with trio.fail_after(WAIT):
        await running.finished.wait()                               # then serve() returns
    claim = muxclient.claim_socket(running.home)                    # and the profile's slot is free
    assert claim is not None
    claim.release()


async def test_idle_timeout_returns_from_serve_and_releases_the_claim(profile, start_mux, caplog):
    started = trio.current_time()
    running = await start_mux(idle_timeout=0.5)
    with trio.fail_after(WAIT):
        await running.finished.wait()
    assert trio.current_time() - started >= 0.5
    assert _log(caplog, "idle for")
    assert not running.socket_file.exists()
    claim = muxclient.claim_socket(running.home)
    assert claim is not None
    claim.release()


async def test_a_new_certificate_takes_a_new_proxy_connection_and_retires_the_old(cluster, profile, login,
                                                                                 running):
    done = await _ssh(profile, f"{login.name}@{NODE}", "true")
    assert done.returncode == 0, done.stderr
    old = running.daemon._link
    renewed = cluster.write_profile()   # same home: `jumpgate login` without its stop_daemon
    done = await _ssh(profile, f"{login.name}@{NODE}", "echo renewed")
    assert (done.returncode, done.stdout) == (0, b"renewed\n"), done.stderr
    new = running.daemon._link
    assert new is not old and new.creds.cert == load_credentials(renewed).cert
    assert not old.usable
    with trio.fail_after(WAIT):
        await old.conn.closed.wait()    # no session used it any more: closed
    assert len(_proxy_logins(cluster)) == 2


async def test_a_dead_proxy_connection_is_reopened_for_the_next_session(cluster, profile, login, running):
    done = await _ssh(profile, f"{login.name}@{NODE}", "true")
    assert done.returncode == 0, done.stderr
    old = running.daemon._link
    await old.conn.aclose()
    done = await _ssh(profile, f"{login.name}@{NODE}", "echo again")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"again\n", b"")
    assert running.daemon._link is not old and running.daemon._link.usable
    assert len(_proxy_logins(cluster)) == 2


# The resize reaches the node after the thin client's SIGWINCH handler sent it and the daemon relayed
# it: the remote command polls (bounded) for the new size rather than sleep for a guessed while.
_AWAIT_RESIZE = 'for i in $(seq 200); do s=$(stty size); [ "$s" != "24 80" ] && break; sleep 0.05; done; echo "$s"'


async def test_sigwinch_on_the_thin_client_resizes_the_remote_pty(cluster, profile, login, running, caplog):
    master, slave = ptylib.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    output = bytearray()
    try:
        async with _client(profile, "-t", f"{login.name}@{NODE}", _AWAIT_RESIZE,
                           stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
            await _until(lambda: _log(caplog, f"session to {NODE} as {login.name} opened"), "the session")
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
            # Once: if the client's handler (installed when "opened" arrives) is not in yet, the
            # signal is ignored and the client's own check after installing it sees the new size.
            proc.send_signal(signal.SIGWINCH)
            with trio.fail_after(WAIT):
                while chunk := await proc.stdout.receive_some():
                    output += chunk
                assert await proc.wait() == 0
    finally:
        os.close(master)
        os.close(slave)
    assert bytes(output) == b"50 132\r\n"
    assert [m for m in running.messages if m.get("op") == "resize"][0] == {"op": "resize", "cols": 132, "rows": 50}


# ----------------------------------------------------------------------------- a race at stop

def _send_queued(home: Path, request: SessionRequest, fds: Sequence[int]) -> tuple[socket.socket, muxclient._Link]:
    """What ``run_session`` does before it waits: connect (queued, not yet accepted) and send."""
    sock = muxclient.connect(home)
    assert sock is not None
    link = muxclient._Link(sock)
    link.send(request.to_message(), fds=tuple(fds))
    return sock, link


def _follow(sock: socket.socket, link: muxclient._Link) -> str:
    """What ``run_session`` makes of the daemon's answers (without its terminal and signals)."""
    with sock:
        sock.settimeout(WAIT)
        try:
            reply = link.receive()
            if reply is None:
                return "lost the session daemon (no answer to the session request)"
            if reply.get("event") == "mismatch":
                return "run it yourself"
            if reply.get("event") == "opened":
                reply = link.receive()
            return f"answered {reply}"
        except (OSError, muxclient.MuxProtocolError) as exc:
            return f"lost the session daemon ({exc})"


async def test_a_request_queued_when_the_daemon_stops_is_answered_not_reset(cluster, login, running):
    """A client whose request waits in the socket's backlog when the daemon stops (``jumpgate
    login`` while a script runs ``jumpgate ssh``) must be served or told to run the session
    itself; dropped, it fails with "lost the session daemon" without its command ever running."""
    pipes = _pipes(3)
    queued = _send_queued(running.home, _session(login.name, "echo queued"), [w for _, w in pipes])
    running.daemon.stop()                        # no checkpoint since the connect: not accepted
    outcome = await trio.to_thread.run_sync(_follow, *queued)
    _close_pipes(pipes)
    assert not outcome.startswith("lost"), outcome


async def test_a_request_accepted_but_not_yet_read_when_the_daemon_stops_is_answered(cluster, login, profile,
                                                                                    start_mux):
    """The same, one step later: the daemon accepted the connection and waits for the
    request, which arrives as the daemon stops. Whether the daemon reads it before it
    drains (nothing to drain: it cancels) varies, so this is tried a few times."""
    outcomes = []
    for _ in range(6):
        running = await start_mux()
        pipes = _pipes(3)
        sock = muxclient.connect(running.home)
        # the daemon has accepted it and waits for the request once every task here is blocked
        # again (the connection is queued on the socket when connect returns)
        await trio.testing.wait_all_tasks_blocked()
        assert running.daemon._clients == 1
        link = muxclient._Link(sock)
        link.send(_session(login.name, "echo accepted").to_message(), fds=tuple(w for _, w in pipes))
        running.daemon.stop()                    # no checkpoint since the send: not read yet
        outcomes.append(await trio.to_thread.run_sync(_follow, sock, link))
        with trio.fail_after(WAIT):
            await running.finished.wait()
        _close_pipes(pipes)
    assert [o for o in outcomes if o.startswith("lost")] == [], outcomes
