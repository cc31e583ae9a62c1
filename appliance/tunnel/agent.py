"""The node's end of a reverse tunnel: dial the proxy, stay connected, serve through it.

A node started with ``--tunnel-addr PROXY:3024`` listens on no port. :class:`TunnelAgent`
dials the proxy with ``connect()`` (any stream factory: :func:`tcp_connector` here, TLS or an
HTTP CONNECT from :mod:`appliance.tunnel.transport`), runs SSH over it as the client,
authenticates with the node's host certificate and checks the proxy's (a ``proxy:<name>``
host certificate of the host CA the node learned at its join: docs/security.md N1), then:

* serves each ``jumpgate-node@jumpgate`` channel the proxy opens as one connection to the
  node's SSH server (:func:`appliance.node.server.tunnelled_node`), relay line included;
* opens ``jumpgate-api@jumpgate`` channels for its own auth API traffic (:meth:`api_factory`:
  heartbeats, audit, the push stream), so the node needs no route to the auth server;
* sends a keepalive every ``KEEPALIVE_INTERVAL`` and drops a tunnel that does not answer
  within ``KEEPALIVE_TIMEOUT`` (a path that silently stops forwarding);
* redials after any loss with a jittered exponential backoff capped at :data:`MAX_REDIAL`
  seconds, so a node is back within about that long after its proxy is (docs/security.md N2).

A node that has not joined yet joins through the same port (:func:`join_stream`): the proxy
forwards one API channel to the auth server, and the node checks both the proxy and the auth
server against the join token's CA pin.

>>> agent = TunnelAgent(tcp_connector("proxy.example.com", 3024), holder, serve_node)   # doctest: +SKIP
>>> await nursery.start(agent.run)                                                      # doctest: +SKIP
>>> pool = ApiPool(agent.api_factory())                                                 # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import AsyncContextManager

import trio

import ssh_proto
from ssh_proto.certs import validate_host_certificate
from ssh_proto.errors import CertificateError, HostKeyNotVerifiable, SSHError
from ssh_proto.keys import CERT_TYPE_HOST, Certificate, PublicKey

from ..api.client import ApiClient, ApiError
from ..auth.ca import pin_matches
from ..membership import Backoff, MembershipHolder
from .protocol import API_CHANNEL, JOIN_USER, KEEPALIVE, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, NODE_CHANNEL, \
    decode_relay

__all__ = ["MAX_REDIAL", "TunnelAgent", "join_stream", "tcp_connector", "verify_proxy"]

log = logging.getLogger("jumpgate.tunnel")

Connect = Callable[[], Awaitable[trio.abc.Stream]]
ServeNode = Callable[[trio.abc.Stream, tuple[str, int], str], Awaitable[None]]

MAX_REDIAL = 4.0         # seconds: the backoff's cap (jittered down to half of it)
FIRST_REDIAL = 0.25
CONNECT_TIMEOUT = 15.0
#: The auth server's name as its certificate gives it (``auth``, ``auth.CLUSTER``): through a
#: tunnel the node does not dial it, so this is the name checked.
AUTH_NAME = "auth"


def tcp_connector(host: str, port: int, *, timeout: float = CONNECT_TIMEOUT) -> Connect:
    """A ``connect()`` that opens a TCP connection to the proxy's tunnel port."""
    async def connect() -> trio.abc.Stream:
        with trio.fail_after(timeout):
            return await trio.open_tcp_stream(host, port)
    return connect


def verify_proxy(host_ca: PublicKey | None = None, *, ca_pin: str | None = None,
                 on_verified: Callable[[str], None] = lambda name: None) -> Callable[[object], None]:
    """The host key check of a tunnel: a ``proxy:<name>`` host certificate of ``host_ca`` (or,
    joining, of the CA ``ca_pin`` names) naming ``<name>``, valid now. The address dialled is
    not what is checked — it may be a NAT, a load balancer or an HTTP proxy's — but that the
    peer is one of this cluster's proxies; ``on_verified(name)`` learns which."""
    def verify(key: object) -> None:
        if not isinstance(key, Certificate) or key.cert_type != CERT_TYPE_HOST:
            raise HostKeyNotVerifiable("the proxy did not present a host certificate")
        kind, _, name = key.key_id.partition(":")
        if kind != "proxy" or not name:
            raise HostKeyNotVerifiable(f"host certificate {key.key_id[:64]!r} is not a proxy's")
        trusted = host_ca
        if ca_pin is not None:
            if not pin_matches(ca_pin, key.signature_key.blob):
                raise HostKeyNotVerifiable("the proxy's host CA does not match the pin in the token")
            trusted = key.signature_key
        try:
            validate_host_certificate(key, hostname=name, trusted_cas=[trusted])
        except CertificateError as exc:
            raise HostKeyNotVerifiable(f"the proxy's certificate is refused: {exc}") from None
        on_verified(name)
    return verify


class TunnelAgent:
    """Keep one tunnel to a proxy up (see the module docstring). ``serve_node(stream, relay,
    proxy)`` serves one user connection the proxy opened. With ``expect_proxy`` the proxy
    reached must be that one (a tunnel dialled at an address the auth server gave for it:
    :mod:`appliance.tunnel.fleet`)."""

    def __init__(self, connect: Connect, holder: MembershipHolder, serve_node: ServeNode, *,
                 keepalive_interval: float = KEEPALIVE_INTERVAL, keepalive_timeout: float = KEEPALIVE_TIMEOUT,
                 backoff: Backoff | None = None, expect_proxy: str | None = None):
        self._connect = connect
        self.expect_proxy = expect_proxy
        self._holder = holder
        self._serve_node = serve_node
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self._backoff = backoff if backoff is not None else Backoff(initial=FIRST_REDIAL, maximum=MAX_REDIAL)
        self.connection: ssh_proto.SSHClientConnection | None = None
        self._up = trio.Event()
        self.proxy = ""
        self.connects = 0  # tunnels established so far (tests and metrics)
        self._task_status = trio.TASK_STATUS_IGNORED
        self._started: bool | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Dial, hold, redial, until cancelled; ``nursery.start`` returns after the first
        attempt, whether it succeeded or not (the node starts while the proxy is away)."""
        self._task_status, self._started = task_status, None
        while True:
            try:
                await self._hold()
            except (SSHError, OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                log.warning("tunnel to the proxy failed: %s", exc or type(exc).__name__)
            finally:
                self.connection, self._up = None, trio.Event()
            if self._started is None:
                self._started = True
                task_status.started()
            delay = self._backoff.next_delay()
            log.info("redialling the proxy in %.1fs", delay)
            await trio.sleep(delay)

    async def _hold(self) -> None:
        ident = self._holder.current
        stream = await self._connect()
        names: list[str] = []

        def verified(name: str) -> None:
            if self.expect_proxy is not None and name != self.expect_proxy:
                raise HostKeyNotVerifiable(f"dialled proxy {self.expect_proxy} but reached proxy {name}")
            names.append(name)
        try:
            async with ssh_proto.connect("proxy", 0, username=ident.name, stream=stream,
                                         client_keys=[(ident.host_key, ident.host_cert)],
                                         known_hosts=verify_proxy(ident.host_ca, on_verified=verified),
                                         connect_timeout=CONNECT_TIMEOUT) as conn:
                self.proxy = names[-1]
                conn.accept_channels(NODE_CHANNEL, self._node_channel)
                self.connection = conn
                self.connects += 1
                self._backoff.reset()
                self._up.set()
                log.info("tunnel to proxy %s is up", self.proxy)
                if self._started is None:
                    self._started = True
                    self._task_status.started()
                await self._keepalive(conn)
        finally:
            await trio.aclose_forcefully(stream)

    async def _node_channel(self, channel: ssh_proto.SSHChannel, data: bytes) -> None:
        relay = decode_relay(data)
        await self._serve_node(channel, relay, self.proxy)

    async def _keepalive(self, conn: ssh_proto.SSHClientConnection) -> None:
        while not conn.closed.is_set():
            with trio.move_on_after(self.keepalive_interval):
                await conn.closed.wait()
                break
            with trio.move_on_after(self.keepalive_timeout) as scope:
                await conn.global_request(KEEPALIVE, want_reply=True)
            if scope.cancelled_caught:
                log.warning("tunnel to proxy %s: no keepalive answer within %gs; redialling", self.proxy,
                            self.keepalive_timeout)
                return
        log.warning("tunnel to proxy %s was closed: %s", self.proxy, conn.error or "by the proxy")

    async def wait_up(self) -> ssh_proto.SSHClientConnection:
        while self.connection is None:
            await self._up.wait()
        return self.connection

    async def open_api_stream(self, timeout: float = CONNECT_TIMEOUT) -> trio.abc.Stream:
        """A channel to the auth API on the current tunnel (waiting up to ``timeout`` for one)."""
        with trio.fail_after(timeout):
            conn = await self.wait_up()
        return await conn.open_channel(API_CHANNEL)

    def api_factory(self) -> Callable[[], AsyncContextManager[ApiClient]]:
        """Connections to the auth API through the tunnel, with the membership current then
        (as :meth:`MembershipHolder.api_factory` makes them over TCP)."""
        return api_factory_over(self.open_api_stream, self._holder, "the tunnel to the proxy is down")


def api_factory_over(open_stream: Callable[[], Awaitable[trio.abc.Stream]], holder: MembershipHolder,
                     down: str) -> Callable[[], AsyncContextManager[ApiClient]]:
    """Connections to the auth API on channels ``open_stream`` opens (a tunnel's), each as the
    membership current at its start; ``down`` is the ApiError's words when none opens in time."""
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[ApiClient]:
        ident = holder.current
        try:
            stream = await open_stream()
        except trio.TooSlowError:
            raise ApiError("unavailable", down) from None
        try:
            async with ApiClient.connect(AUTH_NAME, identity=(ident.host_key, ident.host_cert),
                                         host_ca_key=ident.host_ca, stream=stream) as api:
                yield api
        finally:
            await trio.aclose_forcefully(stream)
    return factory


@contextlib.asynccontextmanager
async def join_stream(connect: Connect, ca_pin: str) -> AsyncIterator[trio.abc.Stream]:
    """A stream to the auth API through the proxy, for a node that has no certificate yet:
    the tunnel as ``-join`` (the proxy checked against ``ca_pin``), one API channel on it."""
    stream = await connect()
    try:
        async with ssh_proto.connect("proxy", 0, username=JOIN_USER, password="join", stream=stream,
                                     known_hosts=verify_proxy(ca_pin=ca_pin),
                                     connect_timeout=CONNECT_TIMEOUT) as conn:
            channel = await conn.open_channel(API_CHANNEL)
            async with channel:
                yield channel
    finally:
        await trio.aclose_forcefully(stream)
