"""How a node reaches a proxy for its reverse tunnel: connectors that return a ``trio.abc.Stream``.

A *connector* is ``Connect = Callable[[], Awaitable[trio.abc.Stream]]``: each call dials
afresh (the tunnel agent calls it again on every redial) and returns a stream the tunnel's
SSH runs over. Three ways, for three kinds of firewall:

* :func:`tcp_connector` — plain TCP to the proxy's tunnel port (``HOST:3024``);
* :func:`tls_connector` — TLS to the proxy's web port (``HOST:3080``) with the ALPN protocol
  ``jumpgate-tunnel`` (RFC 7301): the web listener hands such a connection to the tunnel
  server (docs/security.md W8). For sites that let only HTTPS out;
* the same through an explicit HTTP proxy when ``HTTPS_PROXY`` says so and ``NO_PROXY`` does
  not exempt the host (:mod:`appliance.tunnel.http_proxy`): CONNECT, then TLS inside it.

**The inner SSH is the trust** (docs/security.md W10). The outer TLS is not verified: a
node needs no pin of the web certificate, and nothing is sent outside the inner SSH but the
CONNECT line (target and, when configured, the HTTP proxy's own credentials) and the TLS
handshake. The SSH connection inside authenticates both ends by host certificates, so a
middlebox that terminates the TLS (a corporate TLS-inspecting proxy) sees SSH ciphertext and
can cut the tunnel, never join it.

**Telling the auth port from the web port** (``--auth-server HOST:3025`` or ``PROXY:3080``):
by the protocol the server speaks first (:func:`probe_auth_server`). An SSH server sends
its version line unprompted (RFC 4253 §4.2); a TLS server says nothing until the client's
hello (RFC 8446 §2). The probe connects, sends nothing and waits :data:`PROBE_SILENCE`
seconds: any byte in that time means SSH, silence means TLS. :func:`open_probed` keeps the
connection it probed with (the SSH bytes already read are replayed to the reader; a silent
server has seen nothing yet, so TLS can start on it), so probing costs the server no extra
connection — a probe that hung up unauthenticated would count against the auth port's
per-source penalties (docs/security.md L9).

>>> connect = tls_connector("jump.example.com", 3080)           # doctest: +SKIP
>>> stream = await connect()                                     # SSH runs over this  # doctest: +SKIP
>>> await probe_auth_server("jump.example.com:3080")             # doctest: +SKIP
'tls'
"""
from __future__ import annotations

import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import trio

from ..addresses import AUTH_PORT, format_endpoint, parse_endpoint
from ..web.tls import TUNNEL_ALPN
from .http_proxy import HTTPProxy, ProxyError, connect_through, proxy_for

__all__ = ["CONNECT_TIMEOUT", "PROBE_SILENCE", "Connect", "HandOff", "Probed", "ProxyError", "ReplayStream",
           "TransportError", "open_probed", "probe_auth_server", "tcp_connector", "tls_connector", "tunnel_ssl_context"]

Connect = Callable[[], Awaitable[trio.abc.Stream]]
CONNECT_TIMEOUT = 15.0
#: Seconds of silence after which a server that said nothing is taken for TLS. An SSH server
#: sends its version line as soon as it accepts (ours within milliseconds); 1.5 s also covers
#: a loaded one and a round trip through an HTTP proxy on another continent.
PROBE_SILENCE = 1.5
_PROBE_READ = 256


class TransportError(OSError):
    """The proxy could not be reached the way asked; the message says where and why."""


# ------------------------------------------------------------------------- streams


class ReplayStream(trio.abc.Stream):
    """``stream`` with ``prefix`` (bytes already read from it) given back first."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.transport_stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


def tunnel_ssl_context() -> ssl.SSLContext:
    """The node's TLS client context: TLS 1.2+, ALPN ``jumpgate-tunnel``, and no certificate
    check — the inner SSH authenticates the proxy (docs/security.md W10)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([TUNNEL_ALPN])
    return context


async def _open_tcp(host: str, port: int, proxy: HTTPProxy | None, timeout: float) -> trio.abc.Stream:
    """A byte stream to ``host``:``port``: direct, or through ``proxy`` by CONNECT."""
    if proxy is not None:
        stream, early = await connect_through(proxy, host, port, timeout=timeout)
        return ReplayStream(stream, early) if early else stream
    where = format_endpoint(host, port)
    try:
        with trio.fail_after(timeout):
            return await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise TransportError(f"cannot reach {where}: no answer within {timeout:g}s") from None
    except OSError as exc:
        raise TransportError(f"cannot reach {where}: {exc.strerror or exc}") from None


async def _start_tls(stream: trio.abc.Stream, host: str, port: int, timeout: float) -> trio.SSLStream:
    where = format_endpoint(host, port)
    tls = trio.SSLStream(stream, tunnel_ssl_context(), server_hostname=host, https_compatible=True)
    try:
        with trio.fail_after(timeout):
            await tls.do_handshake()
    except trio.TooSlowError:
        await trio.aclose_forcefully(tls)
        raise TransportError(f"{where}: no TLS handshake within {timeout:g}s") from None
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        await trio.aclose_forcefully(tls)
        raise TransportError(f"{where}: TLS handshake failed: {exc.__cause__ or exc}") from None
    if tls.selected_alpn_protocol() != TUNNEL_ALPN:
        await trio.aclose_forcefully(tls)
        raise TransportError(f"{where} speaks TLS but does not accept tunnels (ALPN {TUNNEL_ALPN} "
                             "not negotiated): is it the web port of a Jumpgate proxy?")
    return tls


# ------------------------------------------------------------------------- connectors


def tcp_connector(host: str, port: int, *, timeout: float = CONNECT_TIMEOUT) -> Connect:
    """A connector opening plain TCP to ``host``:``port`` (the proxy's tunnel port, 3024)."""
    async def connect() -> trio.abc.Stream:
        return await _open_tcp(host, port, None, timeout)
    return connect


def tls_connector(host: str, port: int, *, environ: Mapping[str, str] = os.environ,
                  timeout: float = CONNECT_TIMEOUT) -> Connect:
    """A connector opening TLS with ALPN ``jumpgate-tunnel`` to ``host``:``port`` (the web port,
    3080), through the HTTP proxy of ``HTTPS_PROXY`` unless ``NO_PROXY`` exempts ``host``.
    The environment is read at each call (a redial sees a changed proxy). Raises
    :class:`TransportError` or :class:`~appliance.tunnel.http_proxy.ProxyError` (both OSError)."""
    async def connect() -> trio.abc.Stream:
        stream = await _open_tcp(host, port, proxy_for(host, port, environ), timeout)
        return await _start_tls(stream, host, port, timeout)
    return connect


# ------------------------------------------------------------------------- the probe


@dataclass(frozen=True, slots=True)
class Probed:
    """An open connection to an ``--auth-server`` address, and what it speaks.

    ``kind == "ssh"``: ``stream`` replays the bytes the server sent; give it to
    ``ssh_proto.connect(stream=...)``. ``kind == "tls"``: nothing has been sent either way;
    ``start_tls()`` runs the tunnel's TLS on it.
    """

    kind: Literal["ssh", "tls"]
    stream: trio.abc.Stream
    host: str
    port: int

    async def start_tls(self, timeout: float = CONNECT_TIMEOUT) -> trio.SSLStream:
        return await _start_tls(self.stream, self.host, self.port, timeout)


async def open_probed(addr: str, *, silence: float = PROBE_SILENCE, environ: Mapping[str, str] = os.environ,
                      timeout: float = CONNECT_TIMEOUT) -> Probed:
    """Connect to ``addr`` (``HOST[:PORT]``, default port 3025; through ``HTTPS_PROXY`` as
    :func:`tls_connector`) and tell SSH from TLS by who speaks first (module docstring).

    A server that closes the connection without a byte is a :class:`TransportError`.
    """
    host, port = parse_endpoint(addr, AUTH_PORT, "--auth-server")
    stream = await _open_tcp(host, port, proxy_for(host, port, environ), timeout)
    try:
        with trio.move_on_after(silence):
            first = await stream.receive_some(_PROBE_READ)
            if not first:
                raise TransportError(f"{format_endpoint(host, port)} closed the connection without a word: "
                                     "neither a Jumpgate auth server nor a proxy's web port")
            return Probed("ssh", ReplayStream(stream, first), host, port)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return Probed("tls", stream, host, port)


class HandOff:
    """A probed connection handed on to its first user, so the probe costs no connection.

    ``take()`` gives the stream once, then None (the caller dials as usual); ``aclose()``
    closes it if nobody took it. ``first_then(connect)`` is a connector whose first call is
    the handed-on stream made ready by ``prepare`` (TLS, for the web port) and every later call
    ``connect()``::

        hand_off = HandOff(probed.stream)
        stream = hand_off.take() or await trio.open_tcp_stream(host, port)
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream: trio.abc.Stream | None = stream

    def take(self) -> trio.abc.Stream | None:
        stream, self._stream = self._stream, None
        return stream

    def first_then(self, connect: Connect,
                   prepare: Callable[[trio.abc.Stream], Awaitable[trio.abc.Stream]] | None = None) -> Connect:
        async def connect_once() -> trio.abc.Stream:
            stream = self.take()
            if stream is None:
                return await connect()
            return await prepare(stream) if prepare is not None else stream
        return connect_once

    async def aclose(self) -> None:
        stream = self.take()
        if stream is not None:
            await trio.aclose_forcefully(stream)


async def probe_auth_server(addr: str, *, silence: float = PROBE_SILENCE,
                            environ: Mapping[str, str] = os.environ) -> Literal["ssh", "tls"]:
    """``"ssh"`` when ``addr`` is an auth port (it spoke first), ``"tls"`` when it is a web port
    (silent for ``silence`` seconds). The connection is closed; :func:`open_probed` keeps it."""
    probed = await open_probed(addr, silence=silence, environ=environ)
    await trio.aclose_forcefully(probed.stream)
    return probed.kind
