"""Misbehaving SSH peers for the limit tests (docs/security.md § Limits): the attacks themselves.

Everything here touches loopback only. Linux routes all of 127.0.0.0/8 to ``lo``, so a
client socket bound to 127.0.0.2, 127.0.0.3, ... is a distinct *source* to a server
listening on 127.0.0.1: :func:`source_address` names the n-th one and :func:`open_from`
connects from it.

- :class:`RawClient`: a sans-IO client :class:`~ssh_proto.connection.Connection` driven over
  a socket by hand, so a test decides when (and whether) it reads: handshake, password
  login, then payloads sent with nothing read back.
- :func:`hold_preauth`: a connection that sends its version line and then nothing.
- :func:`shrink_buffers`: small kernel socket buffers, so "a peer that never reads" is felt
  after kilobytes instead of the megabytes Linux's autotuning would absorb.
"""
from __future__ import annotations

import socket

import trio

from ssh_proto import events as ev
from ssh_proto.connection import Connection, ConnectionOptions
from ssh_proto.state import Role
from ssh_proto.transport import accept_any_host_key

LOOPBACK = "127.0.0.1"
SMALL_BUFFER = 4096


def source_address(n: int) -> str:
    """The n-th loopback source after 127.0.0.1 (n=0: 127.0.0.2; 254 per /24, then the next)."""
    if not 0 <= n < 254 * 250:
        raise ValueError("too many sources")
    high, low = divmod(n, 254)
    return f"127.0.{high}.{low + 2}"


def shrink_buffers(sock, *options: int) -> None:
    """Small kernel buffers (``socket.SO_RCVBUF`` and/or ``SO_SNDBUF``; both by default)."""
    for option in options or (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SMALL_BUFFER)


async def open_from(source: str, port: int, *, host: str = LOOPBACK, small_buffers: bool = False) -> trio.SocketStream:
    """A TCP connection to ``host:port`` whose local address is ``source``; with
    ``small_buffers`` its receive buffer is small (a peer that does not read fills it fast)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if small_buffers:
            shrink_buffers(sock, socket.SO_RCVBUF)
        await sock.bind((source, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def hold_preauth(source: str, port: int) -> trio.SocketStream:
    """A connection that says its version and then nothing: it holds a pre-auth slot."""
    stream = await open_from(source, port)
    await stream.send_all(b"SSH-2.0-idle\r\n")
    return stream


class RawClient:
    """One SSH client connection whose every read is the test's decision."""

    def __init__(self, stream: trio.SocketStream, username: str = "mallory",
                 options: ConnectionOptions = ConnectionOptions()):
        self.stream = stream
        self.core = Connection(Role.CLIENT, options, verify_host_key=accept_any_host_key, username=username)
        self.events: list[ev.Event] = []

    @classmethod
    async def connect(cls, port: int, *, source: str = LOOPBACK, small_buffers: bool = False,
                      username: str = "mallory") -> RawClient:
        return cls(await open_from(source, port, small_buffers=small_buffers), username)

    async def flush(self) -> None:
        data = self.core.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def _read_until(self, done) -> None:
        while not done():
            await self.flush()
            data = await self.stream.receive_some(65536)
            self.core.receive_data(data)
            while (event := self.core.next_event()) is not None:
                self.events.append(event)
        await self.flush()

    async def handshake(self) -> None:
        """Key exchange, and the SERVICE_REQUEST the client core queues right after it."""
        await self._read_until(lambda: self.core.transport.handshake_complete and self.core.client_auth)

    async def login_with_password(self, password: str) -> None:
        await self.handshake()
        self.core.client_auth.request_password(password)
        await self._read_until(lambda: any(isinstance(e, ev.AuthResult) for e in self.events))
        result = next(e for e in self.events if isinstance(e, ev.AuthResult))
        if not result.success:
            raise AssertionError("the raw client's password was refused")

    async def read_events(self, kinds: tuple[type, ...], count: int) -> list[ev.Event]:
        """Read until ``count`` events of ``kinds`` arrived; returns (and removes) them."""
        def found() -> list[ev.Event]:
            return [e for e in self.events if isinstance(e, kinds)]
        await self._read_until(lambda: len(found()) >= count)
        hits = found()
        self.events = [e for e in self.events if not isinstance(e, kinds)]
        return hits

    async def login_with_certificate(self, key, cert) -> None:
        """Public-key login presenting ``cert`` (signed by ``key``)."""
        await self.handshake()
        algorithm = cert.signature_algorithms[0]
        self.core.client_auth.request_publickey(cert, algorithm, key.sign)
        await self._read_until(lambda: any(isinstance(e, ev.AuthResult) for e in self.events))
        result = next(e for e in self.events if isinstance(e, ev.AuthResult))
        if not result.success:
            raise AssertionError("the raw client's certificate was refused")

    async def round_trip(self) -> None:
        """A global request and its reply: the server has read everything sent before it."""
        self.core.send_global_request("keepalive@openssh.com", want_reply=True)
        await self.read_events((ev.GlobalRequestReplied,), 1)

    def queue(self, payload: bytes, count: int = 1) -> None:
        """Protect and queue ``payload`` (any message number) ``count`` times.

        Written straight to the packet writer, past our own core's table (which refuses to
        send what is off it, docs/security.md T11): an attacker sends what it likes.
        """
        transport = self.core.transport
        for _ in range(count):
            transport._out.append(transport._writer.write(payload))

    async def send_queued(self) -> bool:
        """Put everything queued on the wire; blocks as long as the server does not read.

        False when the server ended the connection first (what a limit is expected to do)."""
        try:
            await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
