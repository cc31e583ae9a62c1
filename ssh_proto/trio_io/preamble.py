"""A server stream that takes a trusted relay's line off the front of its input.

:class:`RelayPreamble` is what a server passes to :class:`~ssh_proto.SSHListener` (or
:func:`~ssh_proto.serve_stream`) to accept one line from a relay in front of the client's
SSH version string (:mod:`ssh_proto.preamble`). ``check(line, peer)`` gets the line
without its CR LF and the TCP peer's address, and returns the address the connection
should report as its peer (``conn.peer_address``), or raises
:class:`~ssh_proto.preamble.PreambleError` to refuse the connection::

    def check(line: bytes, peer: tuple | None) -> tuple:
        client = verify_signed_line(line, relay=peer)   # the caller's own rules
        return client

    listener = ssh_proto.SSHListener(factory, host_keys=keys, preamble=RelayPreamble(b"MYRELAY ", check))

The wrapped stream only touches the receive side: the server's own version string goes
out at once, and a client that sends no relay line is read exactly as before. The line is
taken by the connection's reader before any SSH byte reaches the core, so the peer
address is final by the time the client can authenticate. A refused line surfaces as a
:class:`~ssh_proto.errors.ProtocolError` from ``receive_some``, which closes the
connection like any other protocol error. ``on_decided(relayed)`` runs once the front of
the input is decided, line or not (``relayed`` is the vouched-for address or None), before
any SSH byte is handed on: the listener admits the connection there, by the address it is
accounted to (docs/security.md L11), and an error it raises surfaces the same way.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..preamble import MAX_PREAMBLE, PreambleError, PreambleReader

__all__ = ["PreambleStream", "RelayPreamble"]

Check = Callable[[bytes, "tuple | None"], tuple]


@dataclass(frozen=True, slots=True)
class RelayPreamble:
    """The prefix a relay's line starts with, and the check that believes it or not."""

    prefix: bytes
    check: Check
    max_length: int = MAX_PREAMBLE


class PreambleStream(trio.abc.HalfCloseableStream):
    """``stream`` with a relay's line (if any) taken off the front of its input."""

    def __init__(self, stream: trio.abc.Stream, preamble: RelayPreamble, peer: tuple | None,
                 on_peer: Callable[[tuple], None], *, on_decided: Callable[[tuple | None], None] | None = None):
        self._stream = stream
        self._preamble = preamble
        self._peer = peer
        self._on_peer = on_peer
        self._on_decided = on_decided
        self._pending: bytes | None = None  # None until the front of the input is decided
        self._refused: PreambleError | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Bytes after the relay's line; raises PreambleError when the line was refused."""
        if self._refused is not None:
            raise self._refused  # a refused line stays refused: nothing after it is read as SSH
        if self._pending is None:
            try:
                self._pending = await self._split()
            except PreambleError as exc:
                self._refused = exc
                raise
        if self._pending:
            size = len(self._pending) if max_bytes is None else max_bytes
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        return await self._stream.receive_some(max_bytes)

    async def _split(self) -> bytes:
        reader = PreambleReader(self._preamble.prefix, self._preamble.max_length)
        while True:
            data = await self._stream.receive_some(self._preamble.max_length)
            found = reader.feed(data) if data else reader.eof()
            if found is not None:
                break
        relayed = None
        if found.line is not None:
            relayed = self._preamble.check(found.line, self._peer)
            self._on_peer(relayed)
        if self._on_decided is not None:
            self._on_decided(relayed)
        return found.rest

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send to the underlying stream."""
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """As the underlying stream's."""
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Half-close the underlying stream when it can."""
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            await self._stream.send_eof()

    async def aclose(self) -> None:
        """Close the underlying stream."""
        await self._stream.aclose()

    @property
    def socket(self):
        """The TCP socket underneath, as a :class:`trio.SocketStream` offers it."""
        return getattr(self._stream, "socket", None)
