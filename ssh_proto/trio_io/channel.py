"""A channel as a Trio stream (RFC 4254 §5).

:class:`SSHChannel` is a :class:`trio.abc.HalfCloseableStream`: ``send_all`` respects the
peer's window and max packet, ``receive_some`` returns b"" at EOF, ``send_eof`` half-closes,
``aclose`` closes. Extended data (stderr) is read with :meth:`SSHChannel.receive_stderr`.
Incoming data is buffered only up to our window, so a slow reader slows the peer down
instead of growing memory. Channel requests (``pty-req``, ``exec``, ``exit-status`` …) go to
``request_handler``, set by the session layer.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Awaitable, Callable

import trio

from .. import events as ev
from ..errors import ChannelError

if TYPE_CHECKING:
    from .connection import SSHConnection


class _Buffer:
    """Received bytes of one stream (stdout or stderr) with a wake-up for readers."""

    __slots__ = ("chunks", "size", "eof", "event")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.event = trio.Event()

    def put(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        self.event.set()

    def take(self, max_bytes: int | None) -> bytes:
        first = self.chunks[0]
        if max_bytes is None or len(first) <= max_bytes:
            self.chunks.popleft()
            if max_bytes is not None:
                # coalesce small chunks up to max_bytes to cut per-call overhead
                parts = [first]
                n = len(first)
                while self.chunks and n + len(self.chunks[0]) <= max_bytes:
                    c = self.chunks.popleft()
                    parts.append(c)
                    n += len(c)
                data = b"".join(parts) if len(parts) > 1 else first
            else:
                data = first
        else:
            data = first[:max_bytes]
            self.chunks[0] = first[max_bytes:]
        self.size -= len(data)
        return data

    def wake(self) -> None:
        self.event.set()


class SSHChannel(trio.abc.HalfCloseableStream):
    """One open channel; obtained from :meth:`SSHConnection.open_channel` or a server handler."""

    def __init__(self, conn: "SSHConnection", channel_id: int, channel_type: str):
        self.conn = conn
        self.channel_id = channel_id
        self.channel_type = channel_type
        self._stdout = _Buffer()
        self._stderr = _Buffer()
        self._window = trio.Event()
        self._send_lock = trio.StrictFIFOLock()
        self._replies: deque[trio.MemorySendChannel] = deque()
        self.closed = trio.Event()
        self._error: BaseException | None = None
        self._eof_sent = False
        self.request_handler: Callable[[ev.ChannelRequestReceived], Awaitable[bool]] | None = None

    # ---- events from the connection -------------------------------------------------------
    def _on_data(self, data: bytes, data_type: int) -> None:
        if data_type == 0:
            self._stdout.put(data)
        elif data_type == 1:
            self._stderr.put(data)
        else:
            self._consumed(len(data))  # unknown extended data types are discarded

    def _on_window(self) -> None:
        self._window.set()

    def _on_eof(self) -> None:
        self._stdout.eof = self._stderr.eof = True
        self._stdout.wake()
        self._stderr.wake()

    def _on_close(self) -> None:
        self._on_eof()
        self._window.set()
        self.closed.set()
        for waiter in self._replies:
            waiter.close()
        self._replies.clear()

    def _connection_lost(self, error: BaseException | None) -> None:
        self._error = error
        self._on_close()

    async def _on_request(self, event: ev.ChannelRequestReceived) -> None:
        ok = False
        if self.request_handler is not None:
            ok = await self.request_handler(event)
        if event.want_reply:
            self.conn.core.reply_channel_request(self.channel_id, event.token, bool(ok))
            self.conn._kick()

    def _on_request_reply(self, success: bool) -> None:
        if self._replies:
            self._replies.popleft().send_nowait(success)

    def _consumed(self, n: int) -> None:
        self.conn.core.data_consumed(self.channel_id, n)
        self.conn._kick()

    # ---- receiving ----------------------------------------------------------------------------
    async def _receive(self, buf: _Buffer, max_bytes: int | None) -> bytes:
        while not buf.chunks:
            if buf.eof:
                if self._error is not None:
                    # The connection died: never pass a truncated stream off as a clean EOF.
                    raise trio.BrokenResourceError("connection lost") from self._error
                return b""
            buf.event = trio.Event()
            await buf.event.wait()
        data = buf.take(max_bytes)
        self._consumed(len(data))
        return data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Data from the peer; b"" once the peer sent EOF or closed."""
        return await self._receive(self._stdout, max_bytes)

    async def receive_stderr(self, max_bytes: int | None = None) -> bytes:
        """Like :meth:`receive_some`, for the extended (stderr) data stream; b'' at EOF."""
        return await self._receive(self._stderr, max_bytes)

    async def read_all(self) -> bytes:
        """Everything the peer sends until EOF (subject to the channel's window, not unbounded by itself)."""
        parts = []
        while data := await self.receive_some():
            parts.append(data)
        return b"".join(parts)

    # ---- sending --------------------------------------------------------------------------------
    async def send_all(self, data, data_type: int = 0) -> None:
        """Send all of ``data`` as the peer's window allows."""
        async with self._send_lock:
            mv = memoryview(data)
            core = self.conn.core
            while mv:
                self._check_sendable()
                if core.send_capacity(self.channel_id) == 0:
                    self._window = trio.Event()
                    await self._window.wait()
                    continue
                n = core.send_data(self.channel_id, mv, data_type)
                mv = mv[n:]
                await self.conn.flush()

    async def send_stderr(self, data) -> None:
        """Send ``data`` as extended data (stderr), respecting the peer's window."""
        await self.send_all(data, 1)

    def _check_sendable(self) -> None:
        if self.closed.is_set():
            if self._error is not None and not isinstance(self._error, ChannelError):
                raise trio.BrokenResourceError("connection lost") from self._error
            raise trio.BrokenResourceError("channel closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("EOF already sent")

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the peer's window has room (or the channel closed)."""
        while self.conn.core.send_capacity(self.channel_id) == 0 and not self.closed.is_set():
            self._window = trio.Event()
            await self._window.wait()

    async def send_eof(self) -> None:
        """Tell the peer we send no more data (SSH_MSG_CHANNEL_EOF); idempotent."""
        async with self._send_lock:
            if self._eof_sent or self.closed.is_set():
                return
            self._eof_sent = True
            self.conn.core.send_eof(self.channel_id)
            await self.conn.flush()

    async def aclose(self) -> None:
        """Close the channel (sends CLOSE; the peer's CLOSE completes it)."""
        if not self.conn.closed.is_set():
            self.conn.core.close_channel(self.channel_id)
            self.conn._kick()
        self._eof_sent = True
        await trio.lowlevel.checkpoint()

    async def wait_closed(self) -> None:
        """Wait until both sides have closed the channel."""
        await self.closed.wait()

    # ---- requests --------------------------------------------------------------------------------
    async def send_request(self, request_type: str, data: bytes = b"", want_reply: bool = False) -> bool:
        """Send a channel request; with want_reply, wait for and return the peer's answer."""
        if self.closed.is_set():
            raise ChannelError("channel closed")
        if not want_reply:
            self.conn.core.send_channel_request(self.channel_id, request_type, data, False)
            await self.conn.flush()
            return True
        send, recv = trio.open_memory_channel(1)
        self._replies.append(send)
        self.conn.core.send_channel_request(self.channel_id, request_type, data, True)
        await self.conn.flush()
        try:
            return await recv.receive()
        except trio.EndOfChannel:
            raise ChannelError(f"channel closed before answering {request_type!r}") from None
