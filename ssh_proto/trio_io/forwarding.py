"""TCP/IP port forwarding (RFC 4254 §7) and the byte relay both directions use.

Client side: ``ssh -L`` (:func:`serve_local_forward`: listen here, open direct-tcpip per
connection) and ``ssh -R`` (:func:`request_remote_forward`: tcpip-forward global request,
then accept forwarded-tcpip channels — only for a listen address we asked for, rule T21).
Server side: :func:`handle_tcpip_forward_request` asks the application, listens, and opens
a forwarded-tcpip channel per accepted connection; everything stops with the connection.
A connection holds at most ``ConnectionOptions.max_remote_forwards`` forwards (each is one
listening socket or more): one more is refused with REQUEST_FAILURE and a log line (rule L3).
Forward listeners accept with :func:`~ssh_proto.trio_io.accept.accept_loop`, which waits
out a full descriptor table without a log line per retry (rule L1).
"""
from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import trio

from .. import events as ev
from .. import messages as m
from ..errors import ChannelOpenError, SSHError
from .accept import accept_loop
from .channel import SSHChannel

if TYPE_CHECKING:
    from .client import Agent, SSHClientConnection
    from .server import SSHServerConnection

RELAY_CHUNK = 64 * 1024
LISTEN_BACKLOG = 128

log = logging.getLogger("ssh_proto")


async def open_listeners(host: str | None, port: int) -> list[trio.SocketListener]:
    """Listen on every address ``host`` resolves to, as OpenSSH does for a forward.

    An address that cannot be bound is skipped (``localhost`` resolves to ``::1`` on a host
    whose IPv6 is disabled); OSError only when none can be. With port 0 every address gets
    the port the first one was given, so the forward has one port to report.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[trio.SocketListener] = []
    errors: list[OSError] = []
    for family, type_, proto, _name, address in infos:
        if port == 0 and listeners:
            address = (address[0], listeners[0].socket.getsockname()[1], *address[2:])
        try:
            listeners.append(await _listen(family, type_, proto, address))
        except OSError as exc:
            log.info("forward: cannot listen on %s port %d: %s", address[0], address[1], exc.strerror or exc)
            errors.append(exc)
    if not listeners:
        raise errors[0] if errors else OSError(f"{host!r} resolves to no address")
    return listeners


async def _listen(family: int, type_: int, proto: int, address: tuple) -> trio.SocketListener:
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # "::" must not also take the IPv4 wildcard's port
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def relay(channel: SSHChannel, stream: trio.abc.Stream) -> None:
    """Copy bytes both ways until both directions reach EOF; then close both ends."""

    async def channel_to_stream():
        while data := await channel.receive_some(RELAY_CHUNK):
            await stream.send_all(data)
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()

    async def stream_to_channel():
        while data := await stream.receive_some(RELAY_CHUNK):
            await channel.send_all(data)
        await channel.send_eof()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel_to_stream)
            nursery.start_soon(stream_to_channel)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, SSHError):
        pass
    finally:
        try:
            await channel.aclose()  # may raise Cancelled when the connection is going away...
        finally:
            await trio.aclose_forcefully(stream)  # ...the stream is closed all the same (L1: no fd leak)


def _log_open_failed(dest_host: str, dest_port: int, listen_port: int, exc: ChannelOpenError) -> None:
    log.info("forward: port %d: the server refused to connect to %s:%d (reason %d: %s)", listen_port, dest_host,
             dest_port, exc.reason, exc.description)


async def serve_local_forward(conn: "SSHClientConnection", listen_host: str, listen_port: int,
                              dest_host: str, dest_port: int, *, on_open_failed=None,
                              task_status=trio.TASK_STATUS_IGNORED) -> None:
    listeners = await open_listeners(listen_host, listen_port)
    port = listeners[0].socket.getsockname()[1]
    on_open_failed = on_open_failed or _log_open_failed

    async def handle(stream: trio.SocketStream) -> None:
        try:
            orig_host, orig_port = stream.socket.getpeername()[:2]
        except OSError:
            orig_host, orig_port = "127.0.0.1", 0
        try:
            channel = await conn.open_direct_tcpip(dest_host, dest_port, orig_host, orig_port)
        except ChannelOpenError as exc:
            await trio.aclose_forcefully(stream)
            on_open_failed(dest_host, dest_port, port, exc)
            return
        except SSHError:
            await trio.aclose_forcefully(stream)
            return
        await relay(channel, stream)

    task_status.started(port)
    await serve_forward_listeners(listeners, handle, conn.nursery)


async def request_remote_forward(conn: "SSHClientConnection", listen_host: str, listen_port: int,
                                 dest_host: str, dest_port: int) -> int:
    ok, data = await conn.global_request("tcpip-forward", m.TcpipForward(listen_host, listen_port).encode())
    if not ok:
        raise ChannelOpenError(m.OPEN_ADMINISTRATIVELY_PROHIBITED, "remote port forwarding refused")
    port = listen_port or m.TcpipForwardReply.decode(data).port
    conn._remote_forwards[(listen_host, port)] = (dest_host, dest_port)
    return port


async def accept_forwarded_tcpip(conn: "SSHClientConnection", event: ev.ChannelOpenRequest) -> None:
    core = conn.core
    req = m.DirectTcpip.decode(event.data)
    dest = conn._remote_forwards.get((req.host, req.port))
    if dest is None:
        # rule T21: "server requests forwarding for unknown listen_port"
        core.reject_channel(event.channel_id, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "unknown listen port")
        return
    try:
        stream = await trio.open_tcp_stream(*dest)
    except OSError as exc:
        core.reject_channel(event.channel_id, m.OPEN_CONNECT_FAILED, f"connect failed: {exc.strerror or exc}")
        return
    channel = SSHChannel(conn, event.channel_id, "forwarded-tcpip")
    conn.register_channel(channel)
    core.accept_channel(event.channel_id)
    conn.nursery.start_soon(relay, channel, stream)


async def accept_agent_channel(conn: "SSHClientConnection", event: ev.ChannelOpenRequest, agent: "Agent") -> None:
    """Serve ``agent`` (the connection's) on an auth-agent@openssh.com channel the server opened."""
    m.Empty.decode(event.data)
    channel = SSHChannel(conn, event.channel_id, event.channel_type)
    conn.register_channel(channel)
    conn.core.accept_channel(event.channel_id)
    conn.nursery.start_soon(agent.serve_channel, channel)


async def handle_tcpip_forward_request(conn: "SSHServerConnection", event: ev.GlobalRequestReceived) -> tuple[bool, bytes]:
    req = m.TcpipForward.decode(event.data)
    key = (req.address, req.port)
    if event.name == "cancel-tcpip-forward":
        scope = conn.remote_forwards.pop(key, None)
        if scope is None:
            return False, b""
        scope.cancel()
        return True, b""
    if conn.policy is not None and not conn.policy.permit_port_forwarding:
        return False, b""
    limit = conn.core.options.max_remote_forwards
    if len(conn.remote_forwards) >= limit:
        conn._log_refusal(f"remote forward {req.address}:{req.port} refused: too many remote forwards "
                          f"on this connection (limit {limit})")
        return False, b""
    if not await conn.server.tcpip_forward(req.address, req.port):
        return False, b""
    host = _bind_address(req.address, conn.server.gateway_ports)
    try:
        listeners = await open_listeners(host, req.port)
    except OSError:
        return False, b""
    port = listeners[0].socket.getsockname()[1]
    scope = trio.CancelScope()
    conn.remote_forwards[(req.address, port)] = scope
    conn.nursery.start_soon(_serve_remote_forward, conn, listeners, req.address, port, scope)
    return True, (m.TcpipForwardReply(port).encode() if req.port == 0 else b"")


def _bind_address(requested: str, gateway_ports: bool) -> str | None:
    """sshd's rule: without GatewayPorts every remote forward listens on loopback only."""
    if not gateway_ports or requested == "localhost":
        return "127.0.0.1"
    return None if requested in ("", "0.0.0.0", "*", "::") else requested


async def _serve_remote_forward(conn: "SSHServerConnection", listeners, address: str, port: int,
                                scope: trio.CancelScope) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        try:
            orig_host, orig_port = stream.socket.getpeername()[:2]
        except OSError:
            orig_host, orig_port = "127.0.0.1", 0
        data = m.DirectTcpip(address, port, orig_host, orig_port).encode()
        try:
            channel = await conn.open_channel("forwarded-tcpip", data)
        except (ChannelOpenError, SSHError):
            await trio.aclose_forcefully(stream)
            return
        await relay(channel, stream)

    with scope:
        await serve_forward_listeners(listeners, handle, conn.nursery)


async def serve_forward_listeners(listeners: list[trio.SocketListener], handle, handler_nursery: trio.Nursery) -> None:
    """Accept on every listener of a forward; each connection is handled (and then closed)
    in ``handler_nursery``. Out of descriptors, accept() is waited out (rule L1)."""

    async def run(stream: trio.SocketStream) -> None:
        try:
            await handle(stream)
        finally:
            await trio.aclose_forcefully(stream)

    async def serve_one(listener: trio.SocketListener) -> None:
        async with listener:
            await accept_loop(listener, lambda stream: handler_nursery.start_soon(run, stream))

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(serve_one, listener)
