"""The proxy's end of reverse tunnels: nodes that listen on no port dial in here.

:func:`serve_tunnel_stream` runs the tunnel protocol (:mod:`appliance.tunnel.protocol`) over
any stream — a TCP connection accepted on the tunnel port (3024, :func:`serve_tunnel`), or
a stream the web listener hands over after TLS with ALPN ``jumpgate-tunnel`` — as the SSH
server. Who gets in (docs/security.md N1, N4):

* **A node** — publickey with a *host* certificate of this cluster's host CA, key id
  ``node:<u>`` where ``<u>`` is the SSH user name, valid now for host name ``<u>``. A user
  certificate, a plain key, another cluster's certificate or a proxy's are refused with one
  log line and a refused ``tunnel.connect`` audit event. The tunnel is then registered in the
  :class:`~appliance.proxy.dialing.TunnelRegistry` under ``NodeKey(cluster, <u>)``: the proxy
  reaches the node back through it. A second tunnel for a registered name with another host
  key is refused the same way, and nothing registered changes.
* **A node joining through the proxy** — password as user ``-join``: such a connection may
  open two ``jumpgate-api@jumpgate`` channels and lasts a minute; they reach the auth API, where
  the join token is checked end to end (the proxy never sees a token it could judge; the node verifies
  the auth server by the token's CA pin through the channel).

A registered node's tunnel also carries its API channels (join, heartbeat, audit, push
stream) to the auth API; the proxy forwards their bytes and reads none of them. When a
tunnel ends — closed, cut, or silent past the proxy's keepalive — it is unregistered and,
unless a newer tunnel of the same node replaced it, the node is marked offline at once
(``on_down``, the auth API's ``mark_node_offline``).

Limits (docs/security.md N3): admission by ``TUNNEL_PROFILE`` (no per-source rules: one NAT
address may be thousands of nodes), ``TUNNEL_OPTIONS`` per connection, and at most
``max_handshakes`` key exchanges and logins in progress at once — a proxy restart with every
node redialling queues them instead of spending all the CPU at once.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

import ssh_proto
from ssh_proto.certs import validate_host_certificate
from ssh_proto.errors import CertificateError, ChannelOpenError, SSHError
from ssh_proto.keys import CERT_TYPE_HOST, Certificate, PrivateKey, PublicKey
from ssh_proto.limits import Admission
from ssh_proto.trio_io.forwarding import relay as relay_channel

from ..limits import TUNNEL_OPTIONS, TUNNEL_PROFILE
from ..proxy.dialing import TunnelConflict, TunnelRegistry
from ..proxy.routing import NodeKey
from .protocol import API_CHANNEL, JOIN_USER, KEEPALIVE, KEEPALIVE_TIMEOUT, NODE_CHANNEL, PROXY_KEEPALIVE_INTERVAL, \
    encode_relay

__all__ = ["TunnelService", "serve_tunnel", "serve_tunnel_stream"]

log = logging.getLogger("jumpgate.tunnel")

MAX_HANDSHAKES = 64
MAX_JOIN_PASSWORD = 256
LOGIN_GRACE_TIME = 30.0
JOIN_TIME = 60.0          # a -join connection is closed after this long: a join takes one call
JOIN_CHANNELS = 2         # API channels a -join connection may open in all
HANDSHAKE_QUEUE_TIME = 60.0  # a dialler waits at most this long for a handshake slot
_NO_SESSIONS = ssh_proto.SessionPolicy(permit_pty=False, permit_agent_forwarding=False,
                                       permit_port_forwarding=False, permit_x11_forwarding=False)

AuditSink = Callable[[dict], Awaitable[None]]


@dataclass
class TunnelService:
    """What every tunnel of one proxy shares.

    ``identity()`` is the proxy's (host key, host certificate) now; ``host_ca()`` the cluster's
    host CA; ``open_auth()`` a new stream to the auth API (its SSH port); ``on_down(name)`` is
    awaited when a node's tunnel ended and no other replaced it; ``audit`` receives the
    ``tunnel.connect`` events.
    """

    cluster: str
    identity: Callable[[], tuple[PrivateKey, Certificate]]
    host_ca: Callable[[], PublicKey]
    open_auth: Callable[[], Awaitable[trio.abc.Stream]]
    registry: TunnelRegistry = field(default_factory=TunnelRegistry)
    audit: AuditSink | None = None
    on_down: Callable[[str], Awaitable[None]] | None = None
    clock: Callable[[], float] = time.time
    profile: ssh_proto.ListenerProfile = TUNNEL_PROFILE
    options: ssh_proto.ConnectionOptions = TUNNEL_OPTIONS
    max_handshakes: int = MAX_HANDSHAKES
    keepalive_interval: float = PROXY_KEEPALIVE_INTERVAL
    keepalive_timeout: float = KEEPALIVE_TIMEOUT

    def __post_init__(self) -> None:
        self.admission = Admission(self.profile)
        self.handshakes = trio.Semaphore(self.max_handshakes)

    async def emit(self, success: bool, **fields) -> None:
        if self.audit is None:
            return
        record = {"event": "tunnel.connect", "user": "", "success": success,
                  "fields": {"service": "proxy", "cluster": self.cluster, **fields}}
        try:
            await self.audit(record)
        except Exception:
            log.exception("tunnel: audit event could not be recorded")


class _Refused(Exception):
    pass


class _Tunnel:
    """One registered node's connection, as :class:`~appliance.proxy.dialing.TunnelConnection`."""

    def __init__(self, conn: ssh_proto.SSHServerConnection, host_key: bytes, local_address: tuple[str, int]):
        self.conn = conn
        self.host_key = host_key
        self.local_address = local_address

    async def open_node_stream(self) -> trio.abc.HalfCloseableStream:
        try:
            return await self.conn.open_channel(NODE_CHANNEL, encode_relay(self.local_address))
        except ChannelOpenError as exc:
            raise OSError(f"the node refused: {exc}") from None
        except SSHError:
            raise trio.BrokenResourceError("the tunnel is closed") from None


class TunnelSSHServer(ssh_proto.SSHServer):
    """One tunnel connection (see the module docstring for who gets in)."""

    def __init__(self, service: TunnelService, local_address: tuple[str, int]):
        self.service = service
        self.local_address = local_address
        self.node: str | None = None
        self.joining = False
        self.tunnel: _Tunnel | None = None
        self.unregister: Callable[[], None] | None = None
        self._refused_keys: set[bytes] = set()  # keys whose certificate was refused on this connection
        self._join_channels = 0

    @property
    def _peer(self) -> str:
        peer = getattr(self.conn, "peer_address", None)
        return str(peer[0]) if peer else ""

    async def auth_publickey_acceptable(self, username: str, key: PublicKey | Certificate) -> bool:
        try:
            self._check_node(username, key)
        except _Refused:
            return False
        return True

    async def auth_publickey(self, username: str, key: PublicKey | Certificate):
        try:
            cert = self._check_node(username, key)
            self._register(username, cert)
        except _Refused as exc:
            if isinstance(key, Certificate):
                self._refused_keys.add(key.public_key.blob)
            elif key.blob in self._refused_keys:
                return False  # the client's retry of a refused certificate's bare key: logged already
            await self._refuse(username, key, str(exc))
            return False
        log.info("tunnel from node %s (%s) registered", username, self._peer)
        await self.service.emit(True, node=username, client_ip=self._peer, key_id=cert.key_id)
        return ssh_proto.Accept(_NO_SESSIONS, account=f"node:{username}")

    async def auth_password(self, username: str, password: str):
        if username != JOIN_USER or not password or len(password) > MAX_JOIN_PASSWORD:
            await self._refuse(username, None, "only -join may use a password")
            return False
        self.joining = True  # API channels only; the auth server checks the token itself
        log.info("tunnel from %s to join the cluster", self._peer)
        return ssh_proto.Accept(_NO_SESSIONS, account=JOIN_USER)

    def _check_node(self, username: str, key: PublicKey | Certificate) -> Certificate:
        if not isinstance(key, Certificate):
            raise _Refused("a plain key: a tunnel needs the node's host certificate")
        if key.cert_type != CERT_TYPE_HOST:
            raise _Refused(f"a user certificate ({key.key_id[:64]!r}): a tunnel needs a node's host certificate")
        if key.key_id != f"node:{username}":
            raise _Refused(f"host certificate {key.key_id[:64]!r} is not node:{username}")
        try:
            validate_host_certificate(key, hostname=username, trusted_cas=[self.service.host_ca()],
                                      now=self.service.clock())
        except CertificateError as exc:
            raise _Refused(f"host certificate refused: {exc}") from None
        return key

    def _register(self, name: str, cert: Certificate) -> None:
        tunnel = _Tunnel(self.conn, cert.public_key.blob, self.local_address)
        try:
            self.unregister = self.service.registry.register(NodeKey(self.service.cluster, name), tunnel)
        except TunnelConflict:
            raise _Refused(f"a tunnel for {name} is registered with another host key") from None
        self.node, self.tunnel = name, tunnel

    async def _refuse(self, username: str, key, reason: str) -> None:
        key_id = key.key_id if isinstance(key, Certificate) else ""
        log.warning("tunnel from %s as %r refused: %s", self._peer, username[:64], reason)
        await self.service.emit(False, node=username, client_ip=self._peer, key_id=key_id, reason=reason)

    async def channel_open(self, channel_type: str, data: bytes):
        if channel_type != API_CHANNEL or not (self.node or self.joining):
            return None
        if self.joining:
            self._join_channels += 1
            if self._join_channels > JOIN_CHANNELS:
                raise ChannelOpenError(1, "a joining host opens no more API channels")
        try:
            upstream = await self.service.open_auth()
        except OSError as exc:
            raise ChannelOpenError(2, f"the auth server cannot be reached: {exc.strerror or exc}") from None

        async def forward(channel) -> None:
            await relay_channel(channel, upstream)
        return forward

    def session_allowed(self) -> bool:
        return False


async def _keepalive(conn: ssh_proto.SSHServerConnection, service: TunnelService, name: str) -> None:
    """Close a tunnel that stops answering (a path that drops packets sends no FIN)."""
    while not conn.closed.is_set():
        await trio.sleep(service.keepalive_interval)
        with trio.move_on_after(service.keepalive_timeout) as scope:
            try:
                await conn.global_request(KEEPALIVE, want_reply=True)
            except SSHError:
                return
        if scope.cancelled_caught:
            log.warning("tunnel of node %s: no keepalive answer within %gs; closing it", name,
                        service.keepalive_timeout)
            await conn.aclose(description="keepalive timeout")
            return


async def _end_join(conn: ssh_proto.SSHServerConnection) -> None:
    await trio.sleep(JOIN_TIME)
    await conn.aclose(description="a join takes less time than this")


async def serve_tunnel_stream(stream: trio.abc.Stream, service: TunnelService, *, peer_address=None,
                              local_address: tuple[str, int] | None = None,
                              task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve one tunnel connection over ``stream`` until it ends (see the module docstring).

    ``peer_address`` is the dialler as seen here (admission and logs); ``local_address`` the
    address the node dialled, which relay lines through this tunnel name — both read from the
    socket when ``stream`` is a TCP one and they are not given. Under ``nursery.start`` it is
    started once the peer has authenticated (the web listener's hand-off deadline stops then:
    :mod:`appliance.web.tunnels`).
    """
    sock = getattr(stream, "socket", None)
    if sock is not None:
        try:
            peer_address = peer_address or sock.getpeername()
            local_address = local_address or sock.getsockname()[:2]
        except OSError:
            pass
    local = (str(local_address[0]), int(local_address[1])) if local_address else ("0.0.0.0", 0)
    server_box: list[TunnelSSHServer] = []

    def factory() -> TunnelSSHServer:
        server_box.append(TunnelSSHServer(service, local))
        return server_box[-1]

    released = False
    with trio.move_on_after(HANDSHAKE_QUEUE_TIME) as queued:
        await service.handshakes.acquire()
    if queued.cancelled_caught:
        log.warning("tunnel from %s: no handshake slot within %gs (%d in progress); closing it",
                    peer_address, HANDSHAKE_QUEUE_TIME, service.max_handshakes)
        return

    def authenticated() -> None:
        nonlocal released
        if not released:
            released = True
            service.handshakes.release()
        server = server_box[0]
        if server.node is not None:
            server.conn.nursery.start_soon(_keepalive, server.conn, service, server.node)
        elif server.joining:
            server.conn.nursery.start_soon(_end_join, server.conn)
        task_status.started()

    try:
        await ssh_proto.serve_stream(stream, factory, host_keys=[service.identity()], options=service.options,
                                     login_grace_time=LOGIN_GRACE_TIME, on_authenticated=authenticated,
                                     peer_address=peer_address, local_address=local, admission=service.admission)
    finally:
        if not released:
            service.handshakes.release()
        if server_box and server_box[0].unregister is not None:
            await _ended(service, server_box[0])


async def _ended(service: TunnelService, server: TunnelSSHServer) -> None:
    assert server.unregister is not None and server.node is not None
    current = service.registry.get(NodeKey(service.cluster, server.node)) is server.tunnel
    server.unregister()
    log.info("tunnel of node %s ended%s", server.node, "" if current else " (a newer one had replaced it)")
    if service.on_down is None or not current:
        return  # a newer tunnel of the same node took its place: the node is not gone
    with trio.CancelScope(shield=True), trio.move_on_after(5):
        try:
            await service.on_down(server.node)
        except Exception as exc:  # the auth server is away: its heartbeat timeout still applies
            log.warning("could not mark node %s offline: %s", server.node, exc)


async def serve_tunnel(service: TunnelService, listeners: list[trio.SocketListener], *,
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Accept TCP connections on ``listeners`` (the tunnel port, bound beforehand) and serve
    each with :func:`serve_tunnel_stream`, until cancelled; ``nursery.start`` returns
    ``service``."""
    from ssh_proto.trio_io.accept import accept_loop

    async with trio.open_nursery() as nursery:
        def handle(stream: trio.SocketStream) -> None:
            nursery.start_soon(_serve_one, stream, service)

        for listener in listeners:
            nursery.start_soon(_accept, listener, handle)
        task_status.started(service)


async def _accept(listener: trio.SocketListener, handle: Callable[[trio.SocketStream], None]) -> None:
    from ssh_proto.trio_io.accept import accept_loop
    async with listener:
        await accept_loop(listener, handle)


async def _serve_one(stream: trio.SocketStream, service: TunnelService) -> None:
    try:
        await serve_tunnel_stream(stream, service)
    except* SSHError as group:
        log.info("tunnel connection ended: %s", group.exceptions[0])
    except* ssh_proto.LimitExceeded:
        pass
    except* Exception:
        log.exception("tunnel connection failed")
    finally:
        await trio.aclose_forcefully(stream)
