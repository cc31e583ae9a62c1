"""Session channels (RFC 4254 §6): the client's process handle and the server's session.

Client: :class:`SSHProcess` wraps a "session" channel after ``exec``/``shell``/``subsystem``;
it exposes the channel as a stream for stdin/stdout, ``receive_stderr``, ``resize``,
``signal`` and ``wait`` (exit status). :class:`RunResult` is what ``conn.run`` returns.

Server: :class:`ServerSession` carries out what :class:`ssh_proto.session_rules.SessionRequests`
decides from each request's bytes (the rules — permit-pty, force-command, pty limits, the
env filter, a non-UTF-8 exec refused — are sans-IO, docs/security.md C14): it replies,
gives the session its full window and hands itself to the application's ``session``
handler when the program starts, and passes window-change, signal and break to the
callbacks the application set. When the handler returns, exit-status (or exit-signal),
EOF and CLOSE are sent.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Awaitable, Callable

import trio

from .. import events as ev
from .. import messages as m
from ..errors import ChannelError
from ..session_rules import ACCEPTED, STARTED, Break, PtyInfo, Resize, SessionPolicy, SessionRequests, Signal
from .channel import SSHChannel

if TYPE_CHECKING:
    from .connection import SSHConnection

log = logging.getLogger("ssh_proto.server")

__all__ = ["PtyInfo", "RunResult", "SSHProcess", "ServerSession", "SessionPolicy"]  # the first and last: session_rules

MAX_EARLY_REQUESTS = 16


@dataclasses.dataclass(frozen=True, slots=True)
class RunResult:
    """Outcome of ``SSHClientConnection.run``."""

    exit_status: int | None
    stdout: bytes
    stderr: bytes
    exit_signal: str | None = None

    @property
    def returncode(self) -> int:
        """Like subprocess: the status, or -1 when the remote command died of a signal."""
        return self.exit_status if self.exit_status is not None else -1


class SSHProcess(SSHChannel):
    """Client side of a session channel."""

    def __init__(self, conn: "SSHConnection", channel_id: int, channel_type: str):
        super().__init__(conn, channel_id, channel_type)
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.exit_message: str = ""
        self.request_handler = self._handle_request

    async def _handle_request(self, req: ev.ChannelRequestReceived) -> bool:
        if req.request_type == "exit-status":
            self.exit_status = m.ExitStatus.decode(req.data).status
            return True
        if req.request_type == "exit-signal":
            sig = m.ExitSignal.decode(req.data)
            self.exit_signal, self.exit_message = sig.signal, sig.message
            return True
        # keepalive@openssh.com and anything else: failure (RFC 4254 §5.4)
        return False

    async def request_pty(self, term: str = "xterm", cols: int = 80, rows: int = 24, modes: bytes = b"\0") -> None:
        """Ask for a pseudo-terminal (``pty-req``); ChannelError when refused."""
        ok = await self.send_request("pty-req", m.PtyRequest(term, cols, rows, 0, 0, modes).encode(), True)
        if not ok:
            raise ChannelError("pty request refused")

    async def set_env(self, name: str, value: str) -> bool:
        """Ask to set an environment variable (``env``); False when refused (sshd's AcceptEnv)."""
        return await self.send_request("env", m.EnvRequest(name, value).encode(), True)

    async def request_agent_forwarding(self) -> bool:
        """Ask the server to forward our agent (``auth-agent-req@openssh.com``); False when refused."""
        return await self.send_request("auth-agent-req@openssh.com", b"", True)

    async def exec(self, command: str | bytes) -> None:
        """Run ``command`` (``exec``); ChannelError when refused."""
        cmd = command.encode() if isinstance(command, str) else command
        if not await self.send_request("exec", m.ExecRequest(cmd).encode(), True):
            raise ChannelError("exec request refused")

    async def shell(self) -> None:
        """Start the user's shell (``shell``); ChannelError when refused."""
        if not await self.send_request("shell", b"", True):
            raise ChannelError("shell request refused")

    async def subsystem(self, name: str) -> None:
        """The subsystem's name for a ``subsystem`` session (e.g. ``sftp``)."""
        if not await self.send_request("subsystem", m.SubsystemRequest(name).encode(), True):
            raise ChannelError(f"subsystem {name!r} refused")

    async def resize(self, cols: int, rows: int, width: int = 0, height: int = 0) -> None:
        """Tell the server the terminal's new size (``window-change``; no reply)."""
        await self.send_request("window-change", m.WindowChange(cols, rows, width, height).encode(), False)

    async def signal(self, name: str) -> None:
        """Send signal ``name`` (without SIG, e.g. ``INT``) to the remote process (no reply)."""
        await self.send_request("signal", m.SignalRequest(name).encode(), False)

    async def send_break(self, length_ms: int = 0) -> bool:
        """Send a break of ``length_ms`` (RFC 4335); True when the server acted on it."""
        return await self.send_request("break", m.BreakRequest(length_ms).encode(), True)

    async def wait(self) -> int | None:
        """Wait for the channel to close; returns the exit status (None if killed by a signal)."""
        await self.closed.wait()
        return self.exit_status

    async def communicate(self, input: bytes = b"") -> RunResult:
        """Send ``input`` then EOF, collect stdout/stderr until the channel closes."""
        out: list[bytes] = []
        err: list[bytes] = []

        async def feed():
            if input:
                await self.send_all(input)
            await self.send_eof()

        async def drain(receive, parts):
            while data := await receive():
                parts.append(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed)
                nursery.start_soon(drain, self.receive_some, out)
                nursery.start_soon(drain, self.receive_stderr, err)
        except* trio.BrokenResourceError:
            # the connection failed mid-command: raise its typed error, not a partial result
            raise self.conn._lost_error() from None
        await self.closed.wait()
        if self._error is not None:
            raise self.conn._lost_error()
        return RunResult(self.exit_status, b"".join(out), b"".join(err), self.exit_signal)


class ServerSession(SSHChannel):
    """Server side of a session channel, handed to ``SSHServer.session``.

    Attributes the handler reads: ``kind`` ("shell", "exec" or "subsystem"), ``command``
    (the exec command as str, force-command applied), ``subsystem``, ``pty`` (PtyInfo or
    None), ``env`` (dict), ``agent_forwarding`` (bool), ``username``. It sets
    ``on_resize(cols, rows)``, ``on_signal(name)`` and ``on_break(ms)`` callbacks, streams
    with ``send_all`` / ``send_stderr`` / ``receive_some``, and ends with ``exit(status)``
    (or by returning an int from the handler).
    """

    def __init__(self, conn: "SSHConnection", channel_id: int, channel_type: str, *,
                 policy: SessionPolicy, username: str, start: Callable[["ServerSession"], Awaitable[int | None]],
                 accept_env: Callable[[str, str], bool] | None = None):
        super().__init__(conn, channel_id, channel_type)
        self.requests = SessionRequests(policy, accept_env)
        self.username = username
        self.on_resize: Callable[[int, int], object] | None = None
        self._on_signal: Callable[[str], object] | None = None
        self._on_break: Callable[[int], object] | None = None
        self._early: list[tuple[str, object]] = []  # signal/break before the handler set its callback
        self._start = start
        self._exited = False
        self.request_handler = self._handle_request

    # What the requests established (read by the application's handler).
    policy = property(lambda self: self.requests.policy,
                      doc='The SessionPolicy this session obeys (from the login: certificate, Accept).')
    kind = property(lambda self: self.requests.kind,
                    doc="``'shell'``, ``'exec'`` or ``'subsystem'`` once the client chose; None before.")
    command = property(lambda self: self.requests.command,
                       doc="The command to run (str): an ``exec`` request's, or the policy's force-command.")
    original_command = property(lambda self: self.requests.original_command,
                                doc='The command the client asked for, even when a force-command replaced it.')
    subsystem = property(lambda self: self.requests.subsystem,
                         doc="The subsystem's name for a ``subsystem`` session (e.g. ``sftp``).")
    pty = property(lambda self: self.requests.pty,
                   doc='The PtyInfo the client asked for, or None without a pty.')
    env = property(lambda self: self.requests.env,
                   doc='The environment variables accepted from ``env`` requests.')
    agent_forwarding = property(lambda self: self.requests.agent_forwarding,
                                doc='True when the client asked for agent forwarding and the policy allows it.')

    async def _handle_request(self, req: ev.ChannelRequestReceived) -> bool:
        outcome = self.requests.receive(req.request_type, req.data)
        if outcome is STARTED:
            self._begin()
            return True
        if isinstance(outcome, Resize):
            return self._callback(self.on_resize, outcome.cols, outcome.rows) or self.on_resize is None
        if isinstance(outcome, Signal):
            return self._early_or_call("signal", self._on_signal, outcome.name)
        if isinstance(outcome, Break):
            return self._early_or_call("break", self._on_break, outcome.length_ms)
        return outcome is ACCEPTED

    def _begin(self) -> None:
        # The session runs now: its full window (it had a small one while pending, rule L4).
        if self.conn.core.grow_window(self.channel_id):
            self.conn._kick()
        self.conn.nursery.start_soon(self._run)

    # A signal or break may arrive right after the exec reply, before the application's
    # handler has had a chance to set its callback: keep (a few of) them for it.
    @property
    def on_signal(self) -> Callable[[str], object] | None:
        """Called with a signal name when the client sends ``signal``; None ignores them."""
        return self._on_signal

    @on_signal.setter
    def on_signal(self, fn: Callable[[str], object] | None) -> None:
        self._on_signal = fn
        self._replay("signal", fn)

    @property
    def on_break(self) -> Callable[[int], object] | None:
        """Called with the length in ms when the client sends ``break``; None refuses them."""
        return self._on_break

    @on_break.setter
    def on_break(self, fn: Callable[[int], object] | None) -> None:
        self._on_break = fn
        self._replay("break", fn)

    def _early_or_call(self, kind: str, fn, arg) -> bool:
        if fn is None:
            if len(self._early) < MAX_EARLY_REQUESTS:
                self._early.append((kind, arg))
                return True
            return False
        return self._callback(fn, arg)

    def _replay(self, kind: str, fn) -> None:
        if fn is None:
            return
        keep = []
        for k, arg in self._early:
            if k == kind:
                self._callback(fn, arg)
            else:
                keep.append((k, arg))
        self._early = keep

    def _callback(self, fn, *args) -> bool:
        """Run an application callback; its failure refuses the request, nothing more."""
        if fn is None:
            return False
        try:
            fn(*args)
        except Exception:
            log.exception("session callback %r failed", fn)
            return False
        return True

    async def _run(self) -> None:
        status = None
        try:
            status = await self._start(self)
        except* Exception:
            # The application's handler failed: that ends this session only, never the
            # connection or the server (the traceback goes to the log, not to the peer).
            # except* also catches failures grouped with a cancellation.
            log.exception("session handler failed")
            status = 255
        finally:
            if not self._exited and not self.closed.is_set():
                await self.exit(status if isinstance(status, int) else 0)

    async def exit(self, status: int) -> None:
        """Send exit-status, EOF and CLOSE."""
        await self._finish("exit-status", m.ExitStatus(status & 0xFFFFFFFF).encode())

    async def exit_with_signal(self, signal: str, core_dumped: bool = False, message: str = "") -> None:
        """End the session reporting that the command died of ``signal`` (``exit-signal``)."""
        await self._finish("exit-signal", m.ExitSignal(signal, core_dumped, message, b"").encode())

    async def _finish(self, request: str, data: bytes) -> None:
        if self._exited or self.closed.is_set():
            return
        self._exited = True
        try:
            await self.send_eof()
            await self.send_request(request, data, False)
        except (ChannelError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await self.aclose()
