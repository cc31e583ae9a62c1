"""The web service's transport: TCP accept, TLS, HTTP/1.1 with h11, and the WebSocket hand-off.

This module owns the sockets and nothing else: it knows no route and no business rule. Each
accepted connection is admitted by a :class:`~.limits.ConnectionCounter` (a global cap and one
per client, W1), gets a TLS handshake under a deadline, then a loop of h11 exchanges: read one
:class:`~.app.WebRequest` (headers bounded by h11's ``max_incomplete_event_size``, bodies by
``max_body``, each request by ``request_timeout``; RFC 9112 framing is h11's job), ask the
application for its answer, send it.

The application answers with a :class:`~.app.WebResponse` or a :class:`~.app.WebUpgrade`.
An upgrade takes the stream over: h11 has already read (and parsed) the request, but
trio-websocket wants to run the opening handshake itself (RFC 6455 §4.2), so it is given a
:class:`ReplayStream` that first gives back every byte of this request as received, then reads
the TLS stream. The request's bytes are recorded from the start of each h11 cycle (what h11
still buffered from the previous one, :attr:`h11.Connection.trailing_data`, then each read), so
the replay is exactly the wire. An upgraded connection leaves the request deadline behind (a
terminal lives for hours) but keeps its place in the connection caps: a WebSocket counts against
the browser's address, never the web role's own.

The TLS layer is :meth:`_Server.tls_stream`. Right after its handshake the connection is
dispatched by the ALPN protocol negotiated (docs/security.md W8): ``jumpgate-tunnel`` goes to the
tunnel hand-off (:mod:`.tunnels`, a pool of its own, never the HTTP caps), anything else
(``http/1.1``, or no ALPN) is HTTP. Connections in their TLS handshake are counted apart
(``max_handshakes``), so the HTTP caps are met only by HTTP.
"""
from __future__ import annotations

import errno
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio
import trio_websocket

from appliance.accounting import Slots, accounting_key

from .app import WebRequest, WebResponse, WebUpgrade, json_response
from .limits import ConnectionCounter, WebLimits
from .tls import TUNNEL_ALPN
from .tunnels import TunnelHandoff

__all__ = ["ReplayStream", "serve_connections"]

log = logging.getLogger("jumpgate.web")

_RECEIVE_SIZE = 16 * 1024
_CLOSE_GRACE = 2.0
_DRAIN_LIMIT = 1024 * 1024
_DRAIN_IDLE = 0.1
# accept() errors that mean "out of resources right now": wait, do not die (trio does the same).
_ACCEPT_RETRY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_COMMON_HEADERS = (
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("strict-transport-security", "max-age=31536000"),
    ("x-frame-options", "DENY"),
)

App = Callable[[WebRequest], Awaitable["WebResponse | WebUpgrade"]]


class ReplayStream(trio.abc.Stream):
    """``stream``, except that the first reads give back ``prefix`` (bytes already read from it).

    >>> async def demo():
    ...     a, b = trio.testing.memory_stream_pair()
    ...     await a.send_all(b"world")
    ...     replay = ReplayStream(b"hello ", b)
    ...     return [bytes(await replay.receive_some(n)) for n in (4, None, None)]
    >>> import trio.testing; trio.run(demo)
    [b'hell', b'o ', b'world']
    """

    def __init__(self, prefix: bytes, stream: trio.abc.Stream) -> None:
        self._prefix = memoryview(bytes(prefix))
        self.stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = bytes(self._prefix[:size]), self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


class _RequestTooLarge(Exception):
    pass


class _HeadersTooLarge(Exception):
    pass


class _Exchange:
    """One h11 connection over one stream, recording the bytes of the current request."""

    def __init__(self, stream: trio.abc.Stream, limits: WebLimits, client_port: int = 0) -> None:
        self.stream = stream
        self.client_port = client_port
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header)
        self.request_bytes = bytearray()

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()
        self.request_bytes = bytearray(self.conn.trailing_data[0])

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(_RECEIVE_SIZE)
            self.request_bytes += data
            self.conn.receive_data(data)


def _header_map(request: h11.Request) -> dict[str, str]:
    # h11 lower-cases names; a repeated header keeps its first value.
    headers: dict[str, str] = {}
    for name, value in request.headers:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


async def _read_request(exchange: _Exchange, client_ip: str, limits: WebLimits) -> WebRequest | None:
    """One request, or None when the client closed the connection between requests."""
    start = await exchange.next_event()
    if isinstance(start, h11.ConnectionClosed):
        return None
    assert isinstance(start, h11.Request)
    # h11 bounds only what it buffers between reads; a head that arrived whole is not.
    if len(start.target) + sum(len(n) + len(v) + 4 for n, v in start.headers) > limits.max_header:
        raise _HeadersTooLarge
    headers = _header_map(start)
    declared = headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > limits.max_body:  # h11 already refused bad values
        raise _RequestTooLarge
    body = bytearray()
    while not isinstance(event := await exchange.next_event(), h11.EndOfMessage):
        body += event.data  # chunked bodies carry no Content-Length: bound them here
        if len(body) > limits.max_body:
            raise _RequestTooLarge
    return WebRequest(start.method.decode("ascii", "replace"),
                      start.target.decode("ascii", "replace"), headers, bytes(body), client_ip,
                      exchange.client_port)


async def _send_response(exchange: _Exchange, response: WebResponse, *, close: bool) -> None:
    conn, stream = exchange.conn, exchange.stream
    headers = [("content-type", response.content_type),
               ("content-length", str(len(response.body))),
               *_COMMON_HEADERS, *response.headers]
    if close:
        headers.append(("connection", "close"))
    await stream.send_all(conn.send(h11.Response(status_code=response.status, headers=headers)))
    await stream.send_all(conn.send(h11.Data(data=response.body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _drain(stream: trio.abc.Stream) -> None:
    """Read and drop what a refused client is still sending, for a short while.

    Closing a socket with unread input makes the kernel answer with a reset, which can
    destroy the error response before the client reads it (RFC 9112 §9.6 "lingering
    close"). Stop as soon as the client falls silent: it is then reading our answer.
    """
    received = 0
    with trio.move_on_after(_CLOSE_GRACE):
        while received < _DRAIN_LIMIT:
            with trio.move_on_after(_DRAIN_IDLE) as idle:
                data = await stream.receive_some(_RECEIVE_SIZE)
            if idle.cancelled_caught or not data:
                return
            received += len(data)


def _bare_error(status: int, message: str) -> WebResponse:
    code = {400: "bad_request", 408: "timeout", 413: "too_large", 431: "too_large"}[status]
    return json_response(status, {"error": {"code": code, "message": message}}, "-")


def peer_ip(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "?"
    return address[0] if isinstance(address, tuple) else str(address)


def _local_address(stream: trio.SocketStream) -> tuple[str, int]:
    try:
        address = stream.socket.getsockname()
    except OSError:
        return ("?", 0)
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else (str(address), 0)


def _peer_address(stream: trio.SocketStream) -> tuple[str, int]:
    """(ip, port) of the client; the IP part as :func:`peer_ip` (which tests may replace)."""
    try:
        address = stream.socket.getpeername()
    except OSError:
        address = None
    port = address[1] if isinstance(address, tuple) else 0
    return peer_ip(stream), port


class _Server:
    """Accepts connections, bounds them, and runs h11 over TLS for each."""

    def __init__(self, app: App, ssl_context: ssl.SSLContext, limits: WebLimits,
                 tunnels: TunnelHandoff | None = None) -> None:
        self._app, self._ssl_context, self._limits = app, ssl_context, limits
        self._tunnels = tunnels
        self._handshakes = Slots(limits.max_handshakes, limits.max_handshakes_per_ip)  # W8
        self._counter = ConnectionCounter(limits)                                      # HTTP (W1)

    async def accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                    raise
                log.warning("web: accept failed (%s); retrying", errno.errorcode[exc.errno])
                await trio.sleep(0.1)
                continue
            peer = _peer_address(stream)
            source = accounting_key(peer[0])
            if not self._handshakes.take(source):
                await trio.aclose_forcefully(stream)
                continue
            nursery.start_soon(self._connection, stream, peer, source)

    async def tls_stream(self, tcp: trio.SocketStream) -> trio.SSLStream:
        """The TLS server stream of ``tcp``, handshake done (under the handshake deadline)."""
        stream = trio.SSLStream(tcp, self._ssl_context, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(self._limits.handshake_timeout):
                await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    async def _connection(self, tcp: trio.SocketStream, peer: tuple[str, int], source: str) -> None:
        stream: trio.abc.Stream = tcp
        try:
            try:
                tls = await self.tls_stream(tcp)
            finally:
                self._handshakes.give_back(source)
            stream = tls
            if self._tunnels is not None and tls.selected_alpn_protocol() == TUNNEL_ALPN:
                await self._tunnels.serve(tls, peer, _local_address(tcp))  # its own pool and deadline (W8)
            else:
                await self._http_connection(tls, peer, source)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the client went away or was too slow: nothing to answer, nobody to tell
        except Exception:
            # A bug met by one connection must not take the whole web service down with it.
            log.exception("web %s: connection failed", peer[0])
        finally:
            await trio.aclose_forcefully(stream)

    async def _http_connection(self, stream: trio.SSLStream, peer: tuple[str, int], source: str) -> None:
        if not self._counter.admit(source):
            return  # closed before a byte of HTTP is read
        try:
            await self._serve_requests(stream, *peer)
            with trio.move_on_after(_CLOSE_GRACE):
                await stream.aclose()
        finally:
            self._counter.release(source)

    async def _serve_requests(self, stream: trio.abc.Stream, client_ip: str, client_port: int = 0) -> None:
        limits = self._limits
        exchange = _Exchange(stream, limits, client_port)
        for count in range(1, limits.max_requests_per_connection + 1):
            answer, close = await self._one_exchange(exchange, client_ip)
            if isinstance(answer, WebUpgrade):
                await _run_upgrade(exchange, answer, limits, client_ip)
                return
            if answer is None:
                return
            close = close or count == limits.max_requests_per_connection
            with trio.fail_after(limits.request_timeout):
                await _send_response(exchange, answer, close=close)
            log.info("web %s %s %d", client_ip, answer.route, answer.status)
            if close or exchange.conn.our_state is h11.MUST_CLOSE:
                if exchange.conn.their_state in (h11.SEND_BODY, h11.ERROR):
                    await _drain(stream)
                return
            exchange.next_cycle()

    async def _one_exchange(self, exchange: _Exchange,
                            client_ip: str) -> tuple[WebResponse | WebUpgrade | None, bool]:
        """Read a request and produce its answer; (None, True) means just close."""
        conn = exchange.conn
        try:
            with trio.fail_after(self._limits.request_timeout):
                request = await _read_request(exchange, client_ip, self._limits)
        except h11.RemoteProtocolError as exc:
            if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                return None, True
            if exc.error_status_hint == 431:
                return _bare_error(431, "the request headers are too large"), True
            return _bare_error(400, "malformed HTTP request"), True
        except _HeadersTooLarge:
            return _bare_error(431, "the request headers are too large"), True
        except _RequestTooLarge:
            return _bare_error(413, f"the body is over {self._limits.max_body} bytes"), True
        except trio.TooSlowError:
            if conn.our_state is not h11.SEND_RESPONSE:
                return None, True
            return _bare_error(408, "the request took too long"), True
        if request is None:
            return None, True
        answer = await self._app(request)
        if isinstance(answer, WebUpgrade) and conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
            answer = _bare_error(400, "this address takes a WebSocket upgrade only")
        return answer, False


async def _run_upgrade(exchange: _Exchange, upgrade: WebUpgrade, limits: WebLimits,
                       client_ip: str) -> None:
    """Hand the connection to trio-websocket, replaying the request h11 already read."""
    replay = ReplayStream(bytes(exchange.request_bytes), exchange.stream)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(limits.request_timeout):
            proposal = await trio_websocket.wrap_server_stream(
                nursery, replay, message_queue_size=limits.ws_queue,
                max_message_size=limits.max_ws_message)
            ws = await proposal.accept()
        log.info("web %s %s 101", client_ip, upgrade.route)
        try:
            await upgrade.run(ws)
        except trio_websocket.ConnectionClosed:
            pass  # the browser went away: the handler's work ends with it
        finally:
            with trio.move_on_after(_CLOSE_GRACE) as scope:
                scope.shield = True
                await ws.aclose()
        nursery.cancel_scope.cancel()


async def serve_connections(app: App, ssl_context: ssl.SSLContext, limits: WebLimits,
                            listeners: list[trio.SocketListener], nursery: trio.Nursery,
                            tunnels: TunnelHandoff | None = None) -> None:
    """Start one accept loop per listener in ``nursery``, each serving ``app`` (and handing
    ``jumpgate-tunnel`` connections to ``tunnels``, when given)."""
    server = _Server(app, ssl_context, limits, tunnels)
    for listener in listeners:
        nursery.start_soon(server.accept_loop, listener, nursery)
