"""How the proxy reaches a node: the one ``dial(key, node) -> Dialled`` seam.

The proxy's forwarding code (:mod:`appliance.proxy.server`) never opens a socket itself; it
asks a :class:`Dialer` for a stream to a node and gets back, with the stream, the address the
node sees the proxy at — the relay line (:mod:`appliance.relay`, rule 3) must name exactly
that, and only the dialer knows it: a TCP socket's own end, or the proxy's end of a node's
tunnel connection. Two ways to reach a node exist:

* :class:`TCPDialer` — the node's registered address (``host:port``), within
  :data:`CONNECT_TIMEOUT`; the relay address is the socket's ``getsockname()``.
* :class:`TunnelRegistry` — a node that dialled *us* (issue 15's reverse tunnels) registers
  its connection here under its :class:`~appliance.proxy.routing.NodeKey`; dialling it opens a
  channel on that one connection (:class:`TunnelConnection`), so a tunnelled node costs the
  proxy one connection whatever the number of sessions. The tunnel server (port 3024) is what
  calls :meth:`~TunnelRegistry.register`, after it checked the node's host certificate; until
  it exists the registry stays empty and tunnelled nodes are "not connected".

:class:`ProxyDialer` is what the proxy uses: a registered tunnel first (a node behind a
firewall may also have a stale address), else TCP when the node has an address.
A failure is one :class:`DialError` whose message is the reason the user reads
("no answer within 10s", "connection refused", "not connected by tunnel").

>>> registry = TunnelRegistry()
>>> len(registry), registry.get(NodeKey("acme", "edge")) is None
(0, True)
"""
from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from ..inventory import NodeRecord
from .routing import NodeKey

__all__ = ["CONNECT_TIMEOUT", "DialError", "Dialled", "Dialer", "ProxyDialer", "TCPDialer", "TunnelConflict",
           "TunnelConnection", "TunnelRegistry"]

CONNECT_TIMEOUT = 10.0  # proxy -> node: TCP connect, or a channel open on a tunnel


class DialError(Exception):
    """The node cannot be reached; ``str()`` is the reason, for the user and the audit log."""


class TunnelConflict(Exception):
    """A tunnel for that node is registered with another host key (issue 15: refused)."""


@dataclass(frozen=True, slots=True)
class Dialled:
    """A stream to a node; ``relay`` is the proxy's end as the node sees it (ip, port), the
    relay line's relay address; ``via`` says how (``10.0.0.5:3022`` or ``tunnel``), for audit."""

    stream: trio.abc.HalfCloseableStream
    relay: tuple[str, int]
    via: str


class Dialer(Protocol):
    async def dial(self, key: NodeKey, node: NodeRecord) -> Dialled:
        """A stream to ``node`` (whose routing key is ``key``), or DialError."""


class TCPDialer:
    """Dial the node's registered address. ``open_tcp_stream`` is injectable for tests."""

    def __init__(self, *, timeout: float = CONNECT_TIMEOUT,
                 open_tcp_stream: Callable[..., trio.abc.AsyncResource] = trio.open_tcp_stream):
        self._timeout = timeout
        self._open = open_tcp_stream

    async def dial(self, key: NodeKey, node: NodeRecord) -> Dialled:
        endpoint = node.endpoint
        if endpoint is None:
            raise DialError("it has no address to dial")
        try:
            with trio.fail_after(self._timeout):
                stream = await self._open(*endpoint)
        except trio.TooSlowError:
            raise DialError(f"no answer within {self._timeout:g}s") from None
        except OSError as exc:
            raise DialError(_reason(exc)) from None
        relay = stream.socket.getsockname()
        return Dialled(stream, (str(relay[0]), int(relay[1])), f"{endpoint[0]}:{endpoint[1]}")


def _reason(exc: OSError) -> str:
    """What went wrong, in the OS's words: ``open_tcp_stream`` raises one OSError for all its
    attempts, with each attempt's error in its cause ("Connection refused")."""
    if exc.errno:
        return os.strerror(exc.errno)
    cause = exc.__cause__
    for attempt in getattr(cause, "exceptions", (cause,)):
        if isinstance(attempt, OSError) and attempt.errno:
            return os.strerror(attempt.errno)
    return exc.strerror or "the connection failed"


class TunnelConnection(Protocol):
    """A node's tunnel connection to this proxy, as the tunnel server will hand it over."""

    host_key: bytes                 # the node's host key blob, checked at the tunnel's handshake
    local_address: tuple[str, int]  # the proxy's end of the connection (what the node sees)

    async def open_node_stream(self) -> trio.abc.HalfCloseableStream:
        """Open a channel to the node's SSH server on this connection."""


class TunnelRegistry:
    """The tunnels the nodes keep to this proxy, by :class:`NodeKey`.

    ``unregister = registry.register(key, tunnel)`` when a node's tunnel is up; call
    ``unregister()`` when it ends (it removes that tunnel only, not one that replaced it).
    A second tunnel for a registered key replaces the first if it has the same host key (a
    node that redialled before the old connection was noticed dead) and is refused with
    :class:`TunnelConflict` otherwise: nothing registered changes.
    """

    def __init__(self) -> None:
        self._tunnels: dict[NodeKey, TunnelConnection] = {}

    def __len__(self) -> int:
        return len(self._tunnels)

    def get(self, key: NodeKey) -> TunnelConnection | None:
        return self._tunnels.get(key)

    def register(self, key: NodeKey, tunnel: TunnelConnection) -> Callable[[], None]:
        current = self._tunnels.get(key)
        if current is not None and not hmac.compare_digest(current.host_key, tunnel.host_key):
            raise TunnelConflict(f"a tunnel for {key} is registered with another host key")
        self._tunnels[key] = tunnel
        return lambda: self.unregister(key, tunnel)

    def unregister(self, key: NodeKey, tunnel: TunnelConnection) -> None:
        if self._tunnels.get(key) is tunnel:
            del self._tunnels[key]

    async def dial(self, key: NodeKey, node: NodeRecord, *, timeout: float = CONNECT_TIMEOUT) -> Dialled:
        tunnel = self._tunnels.get(key)
        if tunnel is None:
            raise DialError("it is not connected by tunnel")
        try:
            with trio.fail_after(timeout):
                stream = await tunnel.open_node_stream()
        except trio.TooSlowError:
            raise DialError(f"its tunnel did not answer within {timeout:g}s") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            raise DialError("its tunnel broke") from None
        return Dialled(stream, tunnel.local_address, "tunnel")


class ProxyDialer:
    """A registered tunnel first, else TCP to the registered address."""

    def __init__(self, tunnels: TunnelRegistry | None = None, tcp: TCPDialer | None = None):
        self.tunnels = tunnels if tunnels is not None else TunnelRegistry()
        self.tcp = tcp if tcp is not None else TCPDialer()

    async def dial(self, key: NodeKey, node: NodeRecord) -> Dialled:
        if self.tunnels.get(key) is not None:
            return await self.tunnels.dial(key, node)
        if node.endpoint is None:
            raise DialError("it is not connected by tunnel" if node.tunnel else "it has no address to dial")
        return await self.tcp.dial(key, node)
