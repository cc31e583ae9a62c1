"""The Trio side of one SSH connection: pumps bytes between a stream and the sans-IO core.

:class:`SSHConnection` owns three things: the byte stream, the sans-IO
:class:`~ssh_proto.connection.Connection`, and a nursery in which its reader and writer
tasks and every channel task run. Closing the connection cancels them all.

Sending never blocks the reader: the core queues outgoing bytes, one writer task puts them
on the wire, and channel writers wait for that queue to drain (backpressure) before
producing more. After authentication the reader keeps reading even while the socket is
full, so two peers pushing bulk data at each other cannot deadlock (the core ends a
connection whose peer lets our replies pile up instead). Before authentication a server's
reader waits while the core says so (:meth:`~ssh_proto.connection.Connection.reading_paused`,
docs/security.md L6): a peer that sends requests and never reads gets no more replies queued.
Channel opens the core's limits refused are logged here (a few per connection).
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable, TypeVar, overload

import trio

from .. import events as ev
from ..connection import Connection
from ..errors import (ChannelOpenError, ConnectionLost, DisconnectError, DisconnectReason, LimitExceeded,
                      ProtocolError, SSHError)
from .channel import SSHChannel

log = logging.getLogger("ssh_proto")

#: The answers to our user-auth requests, which the client's authentication task reads.
AuthAnswer = ev.AuthResult | ev.AuthPkOk | ev.AuthInfoRequest | ev.AuthBanner | ev.ServiceAccepted

_Channel = TypeVar("_Channel", bound=SSHChannel)

RECEIVE_SIZE = 256 * 1024
#: Before authentication a read is small: the replies to one read are what a paused reader
#: may overshoot its bound by (rule L6), and nothing pre-auth needs bulk reads.
PREAUTH_RECEIVE_SIZE = 16 * 1024
HIGH_WATER = 512 * 1024   # queued outgoing bytes above which channel writers wait
KEEPALIVE_CHECK = 60.0     # how often the rekey timer is looked at
MAX_REFUSALS_LOGGED = 8    # channel opens refused by a limit, logged per connection


class SSHConnection:
    """A live SSH connection (either role). Created by :func:`connect` or a listener."""

    def __init__(self, stream: trio.abc.Stream, core: Connection):
        self._stream = stream
        self.core = core
        self._nursery: trio.Nursery | None = None
        self._wake_writer = trio.Event()
        self._drained = trio.Event()
        self._sent = trio.Event()   # set (and replaced) each time the writer finishes a send_all
        self._queued = 0            # bytes the writer is putting on the wire right now
        self._channels: dict[int, SSHChannel] = {}
        self._opening: dict[int, trio.MemorySendChannel[ev.ChannelOpenConfirmed | ev.ChannelOpenFailed]] = {}
        self._global_waiters: list[trio.MemorySendChannel[ev.GlobalRequestReplied]] = []
        self._handshake = trio.Event()
        self._handshake_ok = False
        self._writer_running = False
        self._auth_events_send, self.auth_events = trio.open_memory_channel[AuthAnswer](16)
        self.closed = trio.Event()
        self.error: BaseException | None = None
        self.on_event: Callable[[ev.Event], Awaitable[None]] | None = None  # role-specific dispatch
        self.peer_address: tuple | None = None
        self.local_address: tuple | None = None
        self._refusals = 0

    # ---- lifecycle ----------------------------------------------------------------------
    async def start_tasks(self, nursery: trio.Nursery) -> None:
        """Start the connection's tasks in a nursery of its own, itself run in ``nursery``.

        The connection's nursery holds the reader, the writer and every channel task;
        closing the connection cancels exactly those, never the caller's code.
        """
        await nursery.start(self._run_tasks)

    async def _run_tasks(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as inner:
            self._nursery = inner
            inner.start_soon(self._writer)
            inner.start_soon(self._reader)
            inner.start_soon(self._timers)
            self._kick()
            task_status.started()

    @property
    def nursery(self) -> trio.Nursery:
        """The connection's nursery: its channels' tasks live here and end with it."""
        # Set before start_tasks returns, so before the reader dispatches the first event:
        # every user of it runs in, or after, a task of this connection.
        assert self._nursery is not None
        return self._nursery

    async def wait_handshake(self) -> None:
        """Wait for the first key exchange (and, for a client, authentication) to finish; raise if the
        connection was lost first."""
        await self._handshake.wait()
        if not self._handshake_ok:
            raise self._lost_error()

    def _kick(self) -> None:
        self._wake_writer.set()

    async def flush(self) -> None:
        """Wake the writer; wait while too much output is queued (backpressure)."""
        self._kick()
        while self._queued_bytes() > HIGH_WATER and not self.closed.is_set():
            await self._drained.wait()

    def _queued_bytes(self) -> int:
        return self._queued + self.core.pending_output

    async def _writer(self) -> None:
        self._writer_running = True
        try:
            while True:
                await self._wake_writer.wait()
                self._wake_writer = trio.Event()
                while True:
                    data = self.core.data_to_send()
                    if not data:
                        break
                    self._queued = len(data)
                    await self._stream.send_all(data)
                    self._queued = 0
                    sent, self._sent = self._sent, trio.Event()
                    sent.set()
                self._drained.set()
                self._drained = trio.Event()
                if self.core.closed:
                    await self._finish(None)
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._queued = 0  # nothing of ours is in flight any more
            await self._finish(ConnectionLost(f"send failed: {exc}"))
        finally:
            self._writer_running = False

    async def _reader(self) -> None:
        core = self.core
        try:
            while not core.closed:
                if core.reading_paused(self._queued):
                    await self._drained.wait()  # rule L6: the writer empties what we owe first
                    continue
                try:
                    data = await self._stream.receive_some(RECEIVE_SIZE if core.authenticated else PREAUTH_RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise ConnectionLost(str(exc)) from None
                self._input_seen()
                core.receive_data(data)
                while (event := core.next_event()) is not None:
                    await self._dispatch(event)
                self._kick()
        except ProtocolError as exc:
            if not isinstance(exc, LimitExceeded):  # a limit logs its own refusal
                log.info("protocol error: %s", exc.description)
            core.send_protocol_error(exc)
            self._kick()
            await self._finish(exc)
        except DisconnectError as exc:
            await self._finish(exc)

    def _input_seen(self) -> None:
        """Bytes arrived (a server's listener notes it for its admission rules)."""

    async def _timers(self) -> None:
        while True:
            await trio.sleep(KEEPALIVE_CHECK)
            self.core.check_rekey_timer()
            self._kick()

    async def _finish(self, error: BaseException | None) -> None:
        if self.closed.is_set():
            return
        if error is not None and self.error is None:
            self.error = error
        self.closed.set()
        self._handshake.set()
        self._drained.set()
        self._auth_events_send.close()
        for ch in list(self._channels.values()):
            ch._connection_lost(self.error)
        for waiter in list(self._opening.values()) + self._global_waiters:
            waiter.close()
        # give the writer a moment to put a DISCONNECT on the wire, then close the stream
        # (closed whatever happens, cancellation included: no socket outlives its connection)
        try:
            with trio.move_on_after(1):
                # The writer may be putting earlier bytes on the wire (and then ours: it
                # takes all there is): a second sender would fail, and the DISCONNECT with it.
                while self._queued and self._writer_running:
                    await self._sent.wait()
                data = self.core.data_to_send()
                if data:
                    try:
                        await self._stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, trio.BusyResourceError):
                        pass
            if isinstance(error, ProtocolError):
                await self._linger()
        finally:
            await trio.aclose_forcefully(self._stream)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _linger(self) -> None:
        """After our DISCONNECT: half-close and drain what the peer still sends, briefly.

        Closing a socket with unread input makes the kernel send a reset, which can
        destroy the DISCONNECT before the peer reads it (it would then report a lost
        connection instead of our reason). Bounded in time and bytes.
        """
        if not isinstance(self._stream, trio.abc.HalfCloseableStream):
            return
        with trio.move_on_after(0.5):
            try:
                await self._stream.send_eof()
                drained = 0
                while drained < 4 * RECEIVE_SIZE and (data := await self._stream.receive_some(RECEIVE_SIZE)):
                    drained += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, trio.BusyResourceError):
                pass

    async def aclose(self, reason: int = DisconnectReason.BY_APPLICATION, description: str = "") -> None:
        """Send DISCONNECT and close everything this connection owns."""
        with trio.CancelScope(shield=True):
            if not self.closed.is_set():
                self.core.disconnect(reason, description)
                if self._writer_running:
                    self._kick()
                    with trio.move_on_after(2):
                        await self._drained_or_closed()
                await self._finish(None)  # sends whatever the writer could not

    async def _drained_or_closed(self) -> None:
        while self._queued_bytes() and not self.closed.is_set():
            await self._drained.wait()

    # ---- event dispatch ------------------------------------------------------------------
    async def _dispatch(self, event: ev.Event) -> None:
        # An isinstance chain, channel data first: it is most of the events of a busy
        # connection, and a `match` on class patterns costs twice as much per event.
        if isinstance(event, ev.ChannelDataReceived):
            ch = self._channels.get(event.channel_id)
            if ch is not None:
                ch._on_data(event.data, event.data_type)
            return
        if isinstance(event, ev.ChannelWindowAdjusted):
            ch = self._channels.get(event.channel_id)
            if ch is not None:
                ch._on_window()
            return
        if isinstance(event, ev.HandshakeComplete):
            self._handshake_ok = True
            self._handshake.set()
            return
        if isinstance(event, ev.ChannelEofReceived):
            ch = self._channels.get(event.channel_id)
            if ch is not None:
                ch._on_eof()
            return
        if isinstance(event, ev.ChannelCloseReceived):
            ch = self._channels.pop(event.channel_id, None)
            if ch is not None:
                ch._on_close()
            return
        if isinstance(event, ev.ChannelRequestReceived):
            ch = self._channels.get(event.channel_id)
            if ch is not None:
                await ch._on_request(event)
            elif event.want_reply:
                self.core.reply_channel_request(event.channel_id, event.token, False)
            return
        if isinstance(event, ev.ChannelRequestReplied):
            ch = self._channels.get(event.channel_id)
            if ch is not None:
                ch._on_request_reply(event.success)
            return
        if isinstance(event, (ev.ChannelOpenConfirmed, ev.ChannelOpenFailed)):
            self._on_open_answer(event)
            return
        if isinstance(event, ev.ChannelOpenRefused):
            self._log_refusal(f"{event.channel_type} channel refused: {event.description}")
            return
        if isinstance(event, ev.GlobalRequestReplied):
            if self._global_waiters:
                self._global_waiters.pop(0).send_nowait(event)
            return
        if isinstance(event, (ev.AuthResult, ev.AuthPkOk, ev.AuthInfoRequest, ev.AuthBanner, ev.ServiceAccepted)):
            await self._auth_events_send.send(event)
            return
        if self.on_event is not None:
            await self.on_event(event)

    def _on_open_answer(self, event: ev.ChannelOpenConfirmed | ev.ChannelOpenFailed) -> None:
        waiter = self._opening.pop(event.channel_id, None)
        try:
            if waiter is None:
                raise trio.BrokenResourceError
            waiter.send_nowait(event)
        except trio.BrokenResourceError:
            # the opener gave up (cancelled): close what the peer just opened for it
            if isinstance(event, ev.ChannelOpenConfirmed):
                self._channels.pop(event.channel_id, None)
                self.core.close_channel(event.channel_id)

    def _log_refusal(self, what: str) -> None:
        """One line per refusal a limit made, up to MAX_REFUSALS_LOGGED per connection."""
        self._refusals += 1
        if self._refusals <= MAX_REFUSALS_LOGGED:
            more = " (further refusals on this connection are not logged)" if self._refusals == MAX_REFUSALS_LOGGED else ""
            log.info("%s: %s%s", _address(self.peer_address), what, more)

    # ---- channels ----------------------------------------------------------------------------
    def register_channel(self, channel: SSHChannel) -> None:
        """Route the events of ``channel.channel_id`` to ``channel`` (for application channel types)."""
        self._channels[channel.channel_id] = channel

    @overload
    async def open_channel(self, channel_type: str, data: bytes = b"", *, window: int | None = None,
                           max_packet: int | None = None) -> SSHChannel: ...

    @overload
    async def open_channel(self, channel_type: str, data: bytes = b"", *, window: int | None = None,
                           max_packet: int | None = None,
                           channel_factory: Callable[[SSHConnection, int, str], _Channel]) -> _Channel: ...

    async def open_channel(self, channel_type: str, data: bytes = b"", *, window: int | None = None,
                           max_packet: int | None = None,
                           channel_factory: Callable[[SSHConnection, int, str], SSHChannel] = SSHChannel) -> SSHChannel:
        """Open a channel of any type; raises ChannelOpenError if the peer refuses.

        ``channel_factory(connection, channel_id, channel_type)`` makes the channel object (an
        :class:`SSHChannel` subclass, say); the default is :class:`SSHChannel`."""
        self._check_open()
        local_id = self.core.open_channel(channel_type, data, window=window, max_packet=max_packet)
        # Registered before the confirmation arrives: the peer may send data right behind it,
        # in the same read, and the reader dispatches that before this task runs again.
        channel = channel_factory(self, local_id, channel_type)
        self.register_channel(channel)
        send, recv = trio.open_memory_channel[ev.ChannelOpenConfirmed | ev.ChannelOpenFailed](1)
        self._opening[local_id] = send
        try:
            await self.flush()
            try:
                event = await recv.receive()
            except trio.EndOfChannel:
                raise self._lost_error() from None
            if isinstance(event, ev.ChannelOpenFailed):
                raise ChannelOpenError(event.reason, event.description)
        except BaseException:
            self._channels.pop(local_id, None)
            recv.close()  # a late confirmation then closes the channel (see _dispatch)
            raise
        return channel

    async def global_request(self, name: str, data: bytes = b"", want_reply: bool = True) -> tuple[bool, bytes]:
        """Send a global request; returns ``(success, reply data)`` (``(True, b'')`` at once without
        ``want_reply``)."""
        self._check_open()
        if not want_reply:
            self.core.send_global_request(name, data, False)
            await self.flush()
            return True, b""
        send, recv = trio.open_memory_channel[ev.GlobalRequestReplied](1)
        self._global_waiters.append(send)
        self.core.send_global_request(name, data, True)
        await self.flush()
        try:
            event = await recv.receive()
        except trio.EndOfChannel:
            raise self._lost_error() from None
        return event.success, event.data

    def _check_open(self) -> None:
        if self.closed.is_set():
            raise self._lost_error()

    def _lost_error(self) -> SSHError:
        if isinstance(self.error, SSHError):
            return self.error
        return ConnectionLost("connection closed")

    # ---- info -------------------------------------------------------------------------------
    @property
    def session_id(self) -> bytes | None:
        """The session identifier (the first key exchange's hash); None before it."""
        return self.core.session_id

    @property
    def negotiated(self):
        """The algorithms the last key exchange chose (:class:`~ssh_proto.transport.Negotiated`)."""
        return self.core.negotiated

    @property
    def peer_version(self) -> str:
        """The peer's version line, e.g. ``SSH-2.0-OpenSSH_10.0``."""
        v = self.core.peer_version
        return v.decode("ascii", "replace") if v else ""


def _address(address: tuple | None) -> str:
    return f"{address[0]} port {address[1]}" if address else "peer"
