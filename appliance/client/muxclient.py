"""The thin ``jumpgate ssh``: hand the terminal to the session daemon, wait for the exit status.

Everything here runs before Trio or cryptography is imported (standard library only), so
a ``jumpgate ssh`` served by a running daemon costs an interpreter start and one round
trip to the daemon. :func:`run_session` connects to the daemon's socket, starting the
daemon first when none runs (``ControlMaster auto`` in OpenSSH's terms); it returns None
when no daemon can serve the request, and the caller then runs the session in-process.

Starting the daemon (:func:`spawn_daemon`): fork, ``setsid``, fork again (the daemon is
nobody's child), stdout/stderr to ``mux.log`` in the profile directory, and exec a fresh
interpreter on this module (``--daemon``, :func:`daemon_main`): :func:`claim_socket` takes
``mux.lock`` (one daemon per profile), binds ``mux.sock`` and tells the waiting client
"ready" through a pipe *before* importing the heavy modules; the client's request waits in
the socket's backlog meanwhile. :func:`stop_daemon` asks a daemon to finish its
sessions and exit (``jumpgate logout`` does, and so may tests); ``jumpgate login`` calls
:func:`restart_daemon` before its request (the old daemon stops, a new one starts and imports
while the request is on its way) and :func:`connect_daemon` after it (the new daemon connects
to the proxy with the new certificate), so the first ``jumpgate ssh`` after a login is served
like the later ones.

Setting ``JUMPGATE_MUX=0`` runs every session in-process.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator

from .mux import (CONNECT_MESSAGE, FD_COUNT, LOCK_NAME, LOG_NAME, SOCKET_NAME, STOP_MESSAGE, FrameDecoder,
                  MuxProtocolError, SessionRequest, encode_frame, socket_path)
from .terminal import blocking_restored, raw_terminal, terminal_size

__all__ = ["ENV_MUX", "Claim", "Outcome", "claim_socket", "connect_daemon", "mux_enabled", "restart_daemon",
           "run_session", "spawn_daemon", "stop_daemon"]

ENV_MUX = "JUMPGATE_MUX"
SPAWN_TIMEOUT = 15.0
BUSY_RETRY = 0.05          # another daemon is starting or we raced one: retry connecting
BUSY_RETRIES = 40
STOP_TIMEOUT = 5.0
FIRST_REPLY_TIMEOUT = 90.0  # the daemon answers once both hops are up (each bounded at 15 s) or have failed
EXIT_FAILURE = 255
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def mux_enabled() -> bool:
    return os.environ.get(ENV_MUX, "1").lower() not in ("0", "no", "off", "false")


class Outcome:
    """How a session ended: the exit status, the signal that killed it, or one line of error."""

    __slots__ = ("status", "signal", "message")

    def __init__(self, status: int, signal: str | None = None, message: str | None = None):
        self.status, self.signal, self.message = status, signal, message


# ------------------------------------------------------------------------------ the socket

@contextlib.contextmanager
def _address(home: os.PathLike | str) -> Iterator[str]:
    """The socket's address, through /proc/self/fd when the path is too long for sun_path."""
    path = socket_path(home)
    if path is not None:
        yield path
        return
    dir_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield socket_path(home, dir_fd)
    finally:
        os.close(dir_fd)


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return uid


def connect(home: os.PathLike | str) -> socket.socket | None:
    """A connection to the daemon of ``home`` (run by our own user), or None."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _address(home) as address:
            sock.connect(address)
        if peer_uid(sock) == os.getuid():
            return sock
    except OSError:
        pass
    sock.close()
    return None


class _Link:
    """Frames over a connected socket, blocking."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._decoder = FrameDecoder()
        self._received: list[dict] = []

    def send(self, message: dict, fds: tuple[int, ...] = ()) -> None:
        data = encode_frame(message)
        sent = socket.send_fds(self.sock, [data], list(fds)) if fds else 0
        if sent < len(data):  # sendall(b"") still calls send(): EPIPE once a quick daemon answered and closed
            self.sock.sendall(data[sent:])

    def receive(self) -> dict | None:
        """The next message; None when the daemon closed the connection."""
        while not self._received:
            data = self.sock.recv(65536)
            if not data:
                if self._decoder.pending:
                    raise MuxProtocolError("the daemon hung up in the middle of a message")
                return None
            self._received.extend(self._decoder.feed(data))
        return self._received.pop(0)


# ------------------------------------------------------------------------------ a session

def _standard_fds_open() -> bool:
    try:
        for fd in range(FD_COUNT):
            os.fstat(fd)
    except OSError:
        return False
    return True


def _connect_or_spawn(home: os.PathLike | str) -> socket.socket | None:
    sock = connect(home)
    if sock is not None or not spawn_daemon(home):
        return sock
    for _ in range(BUSY_RETRIES):
        sock = connect(home)
        if sock is not None:
            return sock
        time.sleep(BUSY_RETRY)
    return None


def run_session(home: os.PathLike | str, request: SessionRequest) -> Outcome | None:
    """Run ``request`` through the daemon of ``home``; None if no daemon can take it.

    None is returned only when no daemon read the request (or one of another version
    refused it), so running the session in-process instead never runs a command twice.
    """
    if not _standard_fds_open():
        return None
    sock = _connect_or_spawn(home)
    if sock is None:
        return None
    with sock, blocking_restored(range(FD_COUNT)):
        link = _Link(sock)
        try:
            link.send(request.to_message(), fds=tuple(range(FD_COUNT)))
        except OSError:
            return None  # the daemon went away before it read anything
        try:
            sock.settimeout(FIRST_REPLY_TIMEOUT)
            try:
                first = link.receive()
            except ConnectionResetError:
                return None  # reset unread (a daemon on its way out closed its backlog): nothing ran
            sock.settimeout(None)  # then the session lasts as long as it lasts
            return _follow(link, request, first)
        except (OSError, MuxProtocolError) as exc:
            return Outcome(EXIT_FAILURE, message=f"lost the session daemon ({exc}); see {os.path.join(home, LOG_NAME)}")


def _follow(link: _Link, request: SessionRequest, reply: dict | None) -> Outcome | None:
    event = reply.get("event") if reply else None
    if event == "mismatch":
        return None  # a daemon of another build: its sessions stay, ours runs in-process
    if event == "error":
        return Outcome(_status(reply), message=str(reply.get("message", "the session daemon failed"))[:2000])
    if event != "opened":
        raise MuxProtocolError("no answer to the session request" if reply is None else f"unexpected {event!r}")
    interactive = request.pty and os.isatty(0)
    with raw_terminal(0, interactive), _window_changes(link, interactive, (request.cols, request.rows)), \
            _hangups_end_session():
        reply = link.receive()
    event = reply.get("event") if reply else None
    if event == "error":  # the node connection broke during the session
        return Outcome(_status(reply), message=str(reply.get("message", "the session failed"))[:2000])
    if event != "exit":
        raise MuxProtocolError("the session ended without an exit status")
    name = reply.get("signal")
    return Outcome(_status(reply), signal=name if isinstance(name, str) else None)


def _status(reply: dict) -> int:
    status = reply.get("status")
    return status if type(status) is int and 0 <= status <= 255 else EXIT_FAILURE


@contextlib.contextmanager
def _window_changes(link: _Link, enabled: bool, requested: tuple[int, int]) -> Iterator[None]:
    """SIGWINCH -> a resize message (sent from the handler: the main thread only waits).

    ``requested`` is the size the session request carried; a change between the request and
    the handler's installation would be lost, so the size is compared once the handler is in.
    """
    if not enabled:
        yield
        return

    def resized(_signum, _frame) -> None:
        cols, rows = terminal_size()
        with contextlib.suppress(OSError):
            link.send({"op": "resize", "cols": cols, "rows": rows})

    previous = signal.signal(signal.SIGWINCH, resized)
    try:
        if terminal_size() != requested:
            resized(signal.SIGWINCH, None)
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


@contextlib.contextmanager
def _hangups_end_session() -> Iterator[None]:
    """SIGHUP/SIGTERM unwind (restoring the terminal); closing our socket ends the session."""
    def leave(signum, _frame) -> None:  # never returns
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, leave) for sig in (signal.SIGHUP, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_daemon(home: os.PathLike | str) -> bool:
    """Ask the daemon of ``home`` to finish its sessions and exit; False if none ran."""
    sock = connect(home)
    if sock is None:
        return False
    with sock:
        sock.settimeout(STOP_TIMEOUT)
        link = _Link(sock)
        try:
            link.send(STOP_MESSAGE)
            reply = link.receive()
        except (OSError, MuxProtocolError):
            return False
    return bool(reply) and reply.get("event") == "stopping"


def restart_daemon(home: os.PathLike | str) -> bool:
    """Before a login's request: stop the daemon of ``home`` (it holds the old certificate),
    wait for it to let go of the socket, and start a fresh one that waits for
    :func:`connect_daemon` instead of warming up; its interpreter and imports then run while
    the login request is on its way. False (and nothing started) with ``JUMPGATE_MUX=0`` or
    when no daemon could start: the next ``jumpgate ssh`` starts one as before."""
    if stop_daemon(home):
        deadline = time.monotonic() + STOP_TIMEOUT
        while connect_probe(home) and time.monotonic() < deadline:
            time.sleep(BUSY_RETRY / 5)
    if not mux_enabled() or not os.path.isdir(home):  # a first login: connect_daemon starts it
        return False
    try:
        return spawn_daemon(home, warm_up=False)
    except OSError:
        return False


def connect_daemon(home: os.PathLike | str, timeout: float = FIRST_REPLY_TIMEOUT) -> str | None:
    """After a login saved its credentials: have the daemon (started now if none runs) connect
    to the proxy with them, so that the first ``jumpgate ssh`` is served like the ones after
    it. None once connected, else why not."""
    sock = connect(home)
    if sock is None:  # a first login (no profile directory before it), or JUMPGATE_MUX was off
        try:
            spawned = spawn_daemon(home, warm_up=False)
        except OSError as exc:
            return f"no session daemon could start ({exc.strerror or exc})"
        sock = connect(home) if spawned else None
        if sock is None:
            return "no session daemon could start"
    with sock:
        sock.settimeout(timeout)
        link = _Link(sock)
        try:
            link.send(CONNECT_MESSAGE)
            reply = link.receive()
        except (OSError, MuxProtocolError) as exc:
            return f"the session daemon did not answer ({exc})"
    if reply and reply.get("event") == "connected":
        return None
    return str((reply or {}).get("message") or "the session daemon could not connect")


def connect_probe(home: os.PathLike | str) -> bool:
    """Whether a daemon (perhaps one on its way out) still listens on ``home``'s socket."""
    sock = connect(home)
    if sock is None:
        return False
    sock.close()
    return True


# ------------------------------------------------------------------------------ the daemon's birth

class Claim:
    """The daemon's hold on a profile: the lock, the listening socket, and how to let go."""

    def __init__(self, home: os.PathLike | str, lock_fd: int, dir_fd: int, listener: socket.socket):
        self.home, self.lock_fd, self.dir_fd, self.listener = os.fspath(home), lock_fd, dir_fd, listener
        self._inode = os.stat(SOCKET_NAME, dir_fd=dir_fd).st_ino

    def release(self) -> None:
        """Remove our socket (not a successor's), close it and unlock: a new daemon may start."""
        with contextlib.suppress(OSError):
            if os.stat(SOCKET_NAME, dir_fd=self.dir_fd).st_ino == self._inode:
                os.unlink(SOCKET_NAME, dir_fd=self.dir_fd)
        self.listener.close()
        for fd in (self.lock_fd, self.dir_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.lock_fd = self.dir_fd = -1


def claim_socket(home: os.PathLike | str, backlog: int = 64) -> Claim | None:
    """Lock the profile's daemon slot and listen on its socket; None if a daemon holds it."""
    dir_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    lock_fd = -1
    try:
        lock_fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            os.close(dir_fd)
            return None
        os.ftruncate(lock_fd, 0)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCKET_NAME, dir_fd=dir_fd)  # a dead daemon's: whoever runs holds the lock
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o077)
        try:
            listener.bind(socket_path(home, dir_fd))
        finally:
            os.umask(old_umask)
        listener.listen(backlog)
        return Claim(home, lock_fd, dir_fd, listener)
    except BaseException:
        for fd in (lock_fd, dir_fd):
            with contextlib.suppress(OSError):
                if fd >= 0:
                    os.close(fd)
        raise


def spawn_daemon(home: os.PathLike | str, *, warm_up: bool = True) -> bool:
    """Start the daemon of ``home`` in the background; True once a daemon listens (ours or
    another). ``warm_up``: it connects to the proxy at once (the ssh that started it waits)."""
    read_fd, write_fd = os.pipe()
    argv, env = _daemon_command(home, write_fd, warm_up)
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _become_daemon(home, write_fd, argv, env)
    os.close(write_fd)
    try:
        os.waitpid(pid, 0)  # the first child exits at once; the daemon is its orphan
        ready, _, _ = select.select([read_fd], [], [], SPAWN_TIMEOUT)
        answer = os.read(read_fd, 64) if ready else b""
    finally:
        os.close(read_fd)
    return answer in (b"ready\n", b"busy\n")


def _daemon_command(home: os.PathLike | str, ready_fd: int, warm_up: bool) -> tuple[list[str], dict[str, str]]:
    """``python -m appliance.client.muxclient --daemon|--daemon-cold HOME READY_FD``, finding
    this package (and, in the zipapp, its dependencies beside it) through PYTHONPATH."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    mode = "--daemon" if warm_up else "--daemon-cold"
    return [sys.executable, "-m", "appliance.client.muxclient", mode, str(home), str(ready_fd)], env


def _become_daemon(home: os.PathLike | str, ready_fd: int, argv: list[str], env: dict[str, str]) -> None:
    """In the forked child: a new session, a second fork, stdio to the log, then a fresh interpreter."""
    try:
        os.setsid()
        if os.fork() == 0:
            os.chdir("/")
            _redirect_stdio(home)
            os.set_inheritable(ready_fd, True)
            os.execve(argv[0], argv, env)
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
    os._exit(0)


def _redirect_stdio(home: os.PathLike | str) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(os.path.join(home, LOG_NAME), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.fchmod(log, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def daemon_main(home: os.PathLike | str, ready_fd: int, *, warm_up: bool = True) -> int:
    """The daemon process: claim the profile's socket, say so, then serve (importing Trio only now)."""
    claim = claim_socket(home)
    os.write(ready_fd, b"busy\n" if claim is None else b"ready\n")
    os.close(ready_fd)
    if claim is None:
        return 0
    from .muxd import serve_forever
    return serve_forever(claim, warm_up=warm_up)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("--daemon", "--daemon-cold") or not sys.argv[3].isdigit():
        sys.exit("usage: python -m appliance.client.muxclient --daemon HOME READY_FD (started by jumpgate ssh)")
    from appliance.client import muxclient  # the module proper, not this __main__ copy
    sys.exit(muxclient.daemon_main(sys.argv[2], int(sys.argv[3]), warm_up=sys.argv[1] == "--daemon"))
