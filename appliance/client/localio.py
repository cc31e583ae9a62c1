"""Relaying a remote session to local file descriptors (a terminal, pipes or files).

Both ways of running ``jumpgate ssh`` end here: the command itself relays its own
stdin/stdout/stderr (``cli/remote.py``), and the session daemon (``muxd.py``) relays the
three descriptors a thin client handed it over its socket. :func:`relay` copies stdin to
the channel (then EOF), the channel's data and extended data to stdout and stderr, and
returns when the remote side has exited and both outputs are drained; extra tasks (window
changes from SIGWINCH or from the thin client) run beside it and are cancelled with it. With
an :class:`~.escape.EscapeFilter` the typed bytes go through it: ``~?`` is answered on the
stderr descriptor, ``~.`` calls ``disconnect`` (closing the session's node connection).

Trio's FdStream makes the *open file* non-blocking, and a terminal's open file is shared
with the shell that started us: ``terminal.blocking_restored`` puts the flags back.
"""
from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Awaitable, Callable, Sequence

import trio

import ssh_proto

from .escape import DISCONNECT, EscapeFilter, help_text
from .terminal import blocking_restored

__all__ = ["EXIT_FAILURE", "LocalFd", "exit_status", "relay"]

READ_SIZE = 64 * 1024
EXIT_FAILURE = 255  # ssh's status when the connection fails or the command is killed


def _pollable(fd: int) -> bool:
    """Whether Trio can wait on ``fd`` (epoll refuses regular files and /dev/null)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


class LocalFd:
    """One standard stream: an FdStream on a dup when pollable, else blocking I/O in a thread."""

    def __init__(self, fd: int):
        self.stream = trio.lowlevel.FdStream(os.dup(fd)) if _pollable(fd) else None
        self.fd = fd

    async def read(self) -> bytes:
        if self.stream is not None:
            return await self.stream.receive_some(READ_SIZE)
        return await trio.to_thread.run_sync(os.read, self.fd, READ_SIZE, abandon_on_cancel=True)

    async def write(self, data: bytes) -> None:
        if self.stream is not None:
            await self.stream.send_all(data)
            return
        view = memoryview(data)
        while view:
            view = view[await trio.to_thread.run_sync(os.write, self.fd, view):]

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


Disconnect = Callable[[], Awaitable[object]]


async def _pump_input(stdin: LocalFd, proc: ssh_proto.SSHProcess, escapes: EscapeFilter | None = None,
                      stderr: LocalFd | None = None, disconnect: Disconnect | None = None) -> None:
    try:
        while data := await stdin.read():
            if escapes is not None:
                data, actions = escapes.feed(data)
                for action in actions:
                    if action == DISCONNECT:
                        await (disconnect or proc.aclose)()
                        return
                    with contextlib.suppress(OSError, trio.BrokenResourceError):
                        await stderr.write(help_text(escapes.char))
            if data:
                await proc.send_all(data)
        await proc.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the session ended first: the rest of stdin has nowhere to go


async def _pump_output(receive: Callable[[], Awaitable[bytes]], out: LocalFd,
                       proc: ssh_proto.SSHProcess) -> None:
    try:
        while data := await receive():
            await out.write(data)
    except (trio.BrokenResourceError, OSError):
        await proc.aclose()  # our stdout is gone (`| head`): stop the remote side, as ssh does


async def relay(proc: ssh_proto.SSHProcess, fds: Sequence[int],
                side_tasks: Sequence[Callable[[], Awaitable[object]]] = (), *,
                escapes: EscapeFilter | None = None, disconnect: Disconnect | None = None) -> None:
    """Relay ``fds`` (stdin, stdout, stderr) to ``proc`` until it has exited and its output is written.

    Each fd's blocking flag is restored and our dups are closed before returning, so the
    caller may hand the terminal back (or tell a waiting thin client) at once.
    """
    with blocking_restored(fds):  # recorded before any FdStream changes them
        streams = [LocalFd(fd) for fd in fds]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump_input, streams[0], proc, escapes, streams[2], disconnect)
                for task in side_tasks:
                    nursery.start_soon(task)
                async with trio.open_nursery() as outputs:
                    outputs.start_soon(_pump_output, proc.receive_some, streams[1], proc)
                    outputs.start_soon(_pump_output, proc.receive_stderr, streams[2], proc)
                await proc.wait()
                nursery.cancel_scope.cancel()  # stdin may still be open: the session is over anyway
        finally:
            for s in streams:
                await s.aclose()


def exit_status(proc: ssh_proto.SSHProcess) -> tuple[int, str | None]:
    """(the status ``jumpgate ssh`` exits with, the signal that killed the command or None)."""
    if proc.exit_status is not None:
        return (proc.exit_status if 0 <= proc.exit_status <= 255 else EXIT_FAILURE), None
    return EXIT_FAILURE, proc.exit_signal or None
