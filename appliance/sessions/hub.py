"""The node's session hub: live sessions by id, each with an owner, parties and a recorder.

A session used to belong to the one SSH channel that started it. Here it belongs to the node:
:class:`SessionHub` registers each :class:`LiveSession` by its id for as long as its process
runs, and a session has *parties* (the owner first; joiners later) that come and go. The
process is relayed to the session, not to a channel — :class:`LiveSession` is the
``Channel`` that :meth:`appliance.node.process.SessionProcess.relay` reads and writes:

* output is recorded, then sent to every party (the owner's SSH window is the backpressure;
  a party whose channel broke leaves);
* input comes from the parties that may type (the owner, and peers);
* the process is hung up when the session ends — when the last party who may type has
  left (:meth:`wait_closed`), not when one viewer's channel closes;
* a party that joins later (:meth:`admit`, ``jumpgate join``) first gets the last
  :data:`SCROLLBACK` bytes of output (the current screen, as far as a bounded ring holds it),
  then the output as it comes: the ring and the parties are updated under one lock, so no
  byte is missed or sent twice; :attr:`LiveSession.ended` tells joiners the session is over;
* window-change (the terminal size follows the owner), signals and break go to the session,
  and wait for the process when they arrive before it exists.

>>> hub = SessionHub()
>>> async with hub.open(session_id, owner, recorder) as live:    # doctest: +SKIP
...     live.attach(process)
...     status = await live.run(process)
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio

from .join import join_notice, leave_notice
from .recorder import Recorder

__all__ = ["LiveSession", "Party", "SessionHub"]

log = logging.getLogger("jumpgate.sessions")

INPUT_QUEUE = 16
MAX_PENDING_SIGNALS = 8
RELAY_CHUNK = 64 * 1024
#: Output kept for a party who joins later (replayed to it first): the current screen, mostly.
SCROLLBACK = 64 * 1024
NOTICE_TIMEOUT = 5.0  # a leave notice waits this long for the parties' windows


class PartyChannel(Protocol):
    """A party's end (``ssh_proto.ServerSession`` fits)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...
    async def send_all(self, data: bytes) -> None: ...
    async def send_stderr(self, data: bytes) -> None: ...
    async def wait_closed(self) -> None: ...


class Process(Protocol):
    """What the hub asks of the running process (``SessionProcess`` fits)."""

    def resize(self, cols: int, rows: int, width: int = 0, height: int = 0) -> None: ...
    def signal(self, name: str) -> bool: ...
    def send_break(self, length_ms: int) -> None: ...


@dataclasses.dataclass(eq=False, slots=True)
class Party:
    """Someone attached to a session: ``mode`` "owner", "peer" (may type) or "observer"."""

    user: str
    mode: str
    channel: PartyChannel
    id: int = 0

    @property
    def may_type(self) -> bool:
        return self.mode in ("owner", "peer")

    def describe(self) -> dict[str, Any]:
        return {"party": self.id, "user": self.user, "mode": self.mode}


class LiveSession:
    """One running session: its parties, its recorder, the process's controls."""

    def __init__(self, session_id: str, owner: Party, recorder: Recorder | None, *, login: str = "",
                 pty: bool = False):
        self.id = session_id
        self.owner = owner
        self.recorder = recorder
        self.login = login      # the OS account the session runs as
        self.pty = pty
        #: Set when the session is over; :attr:`outcome` is then (exit status, signal name).
        self.ended = trio.Event()
        self.outcome: tuple[int | None, str | None] = (None, None)
        self._scrollback = bytearray()
        self._send_lock = trio.Lock()  # the ring, the parties and what each was sent, kept in step
        self.parties: list[Party] = []
        self._ids = itertools.count()
        self._input_send, self._input_receive = trio.open_memory_channel[bytes](INPUT_QUEUE)
        self._no_typists = trio.Event()
        self._process: Process | None = None
        self._signals: list[str] = []
        self._size: tuple[int, int, int, int] | None = None

    # ---- parties -------------------------------------------------------------------------
    def join(self, party: Party) -> None:
        party.id = next(self._ids)
        self.parties.append(party)
        if self.recorder is not None:
            self.recorder.party(True, party.describe())

    def leave(self, party: Party) -> None:
        if party not in self.parties:
            return
        self.parties.remove(party)
        if self.recorder is not None:
            self.recorder.party(False, party.describe())
        if not any(p.may_type for p in self.parties):
            self._no_typists.set()

    async def admit(self, party: Party) -> None:
        """A party joins the running session: it is sent the scrollback ring, then is a party
        (every later output reaches it), then everyone is told."""
        async with self._send_lock:
            if self._scrollback:
                await party.channel.send_all(bytes(self._scrollback))
            self.join(party)
        await self.announce(_notice(party, joined=True))

    async def announce(self, notice: bytes) -> None:
        """A notice on every party's terminal (stderr; not recorded as output: the recording
        has the join/leave frames)."""
        async with self._send_lock:
            for party in list(self.parties):
                try:
                    await party.channel.send_stderr(notice)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.leave(party)

    def finish(self, status: int | None, signame: str | None) -> None:
        """The process is over: joiners end with its outcome."""
        self.outcome = (status, signame)
        self.ended.set()

    async def serve_party(self, party: Party) -> None:
        """Relay a party's input to the session until its channel closes; then it leaves.
        The owner's end of input (EOF) is the session's (an exec's stdin is closed)."""
        left = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._leave_when_closed, party, nursery.cancel_scope)
                await self._pump_input(party)
                await trio.sleep_forever()  # EOF sent: stay a party until the channel closes
            left = True  # its channel closed (not: the session is over and this was cancelled)
        finally:
            self.leave(party)
            if left and self.parties:  # the others are told
                with trio.CancelScope(shield=True), trio.move_on_after(NOTICE_TIMEOUT):
                    await self.announce(_notice(party, joined=False))

    async def _leave_when_closed(self, party: Party, scope: trio.CancelScope) -> None:
        await party.channel.wait_closed()
        scope.cancel()

    async def _pump_input(self, party: Party) -> None:
        try:
            while data := await party.channel.receive_some(RELAY_CHUNK):
                await self.type(party, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if party is self.owner and not self.pty:
            # EOF: an exec's stdin is closed. A pty cannot be half-closed (sshd ignores it too),
            # and peers go on typing into it after the owner's channel has gone.
            self._input_send.close()

    async def type(self, party: Party, data: bytes) -> None:
        """``party`` typed ``data``: input to the process if it may type; an observer's is
        dropped (read all the same, so its window moves)."""
        if not party.may_type or not data:
            return
        if self.recorder is not None:
            await self.recorder.input(data)
        with contextlib.suppress(trio.ClosedResourceError):  # after the owner's EOF
            await self._input_send.send(data)

    # ---- the Channel the process is relayed to --------------------------------------------
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self._input_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""

    async def send_all(self, data: bytes) -> None:
        await self._broadcast(data, "o")

    async def send_stderr(self, data: bytes) -> None:
        await self._broadcast(data, "e")

    async def _broadcast(self, data: bytes, stream: str) -> None:
        if self.recorder is not None:
            await self.recorder.output(data, stream)
        async with self._send_lock:
            self._scrollback += data
            if len(self._scrollback) > SCROLLBACK:
                del self._scrollback[:len(self._scrollback) - SCROLLBACK]
            for party in list(self.parties):
                try:
                    await (party.channel.send_all(data) if stream == "o" else party.channel.send_stderr(data))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.leave(party)
        if not self.parties:
            raise trio.BrokenResourceError("every party of the session has gone")

    async def wait_closed(self) -> None:
        """Returns when the last party who may type has left: the process is then hung up."""
        await self._no_typists.wait()

    # ---- controls (RFC 4254 §6.7, §6.9, RFC 4335) -------------------------------------------
    def attach(self, process: Process) -> None:
        """The process now exists: apply the size and signals that came before it."""
        self._process = process
        if self._size is not None:
            process.resize(*self._size)
        for name in self._signals:
            process.signal(name)
        self._signals.clear()

    def resize(self, party: Party, cols: int, rows: int, width: int = 0, height: int = 0) -> None:
        if party is not self.owner:
            return  # the terminal size follows the owner
        self._size = (cols, rows, width, height)
        if self._process is not None:
            self._process.resize(cols, rows, width, height)
        if self.recorder is not None:
            self.recorder.resize(cols, rows)

    def signal(self, party: Party, name: str) -> None:
        if not party.may_type:
            return
        if self._process is not None:
            self._process.signal(name)
        elif len(self._signals) < MAX_PENDING_SIGNALS:
            self._signals.append(name)

    def send_break(self, party: Party, length_ms: int) -> None:
        if party.may_type and self._process is not None:
            self._process.send_break(length_ms)


class SessionHub:
    """The node's live sessions by id (one per node service; no global state)."""

    def __init__(self) -> None:
        self._live: dict[str, LiveSession] = {}

    def get(self, session_id: str) -> LiveSession | None:
        return self._live.get(session_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._live

    def __len__(self) -> int:
        return len(self._live)

    @contextlib.asynccontextmanager
    async def open(self, session_id: str, owner: Party, recorder: Recorder | None, *, login: str = "",
                   pty: bool = False) -> AsyncIterator[LiveSession]:
        """Register a session (its owner its first party) for the duration of the block."""
        if session_id in self._live:
            raise ValueError(f"session {session_id} is already live")
        live = LiveSession(session_id, owner, recorder, login=login, pty=pty)
        live.join(owner)
        self._live[session_id] = live
        try:
            yield live
        finally:
            del self._live[session_id]
            live.ended.set()


def _notice(party: Party, *, joined: bool) -> bytes:
    return (join_notice if joined else leave_notice)(party.user, party.mode)
