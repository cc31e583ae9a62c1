"""The one door to a node: route, dial, vouch, audit and track — for the SSH proxy and the web terminal.

Reaching a node for a user is the same five steps whoever asks, so they live here once:

1. **route** the requested target (a node name, ``name.CLUSTER`` or a registered address) to a
   registered node (:mod:`appliance.proxy.routing`; never an address the caller chose);
2. **dial** it through the ``dial(key, node)`` seam (:mod:`appliance.proxy.dialing`: its
   registered address, or its tunnel);
3. **vouch**: to a Jumpgate node, send the signed relay line (:mod:`appliance.relay`) naming the
   caller's address, so the node's audit, ``SSH_CONNECTION`` and ``source-address`` see the
   real client;
4. **audit** a ``port`` event (the forward or its refusal) with the caller's service, user, login
   and address;
5. **track** the stream in the cluster view's live registry, so that removing the node or
   revoking the user cuts it (docs/security.md R4).

:class:`~appliance.proxy.server.ProxyServer` calls :meth:`NodeGate.open` for each
``direct-tcpip`` channel; the web role's terminal (:mod:`appliance.web.terminal`) calls it
in-process for a browser session, with ``service="web"`` — the node then authenticates the
user's certificate itself, exactly as for ``jumpgate ssh``. A refusal is one
:class:`NodeRefused` carrying the RFC 4254 §5.1 reason code and the words the user reads.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from ssh_proto.messages import OPEN_ADMINISTRATIVELY_PROHIBITED, OPEN_CONNECT_FAILED

from ..cluster_view import ClusterView
from ..relay import relay_line
from . import routing
from .dialing import CONNECT_TIMEOUT, DialError, Dialled, Dialer

__all__ = ["Caller", "NodeGate", "NodeRefused"]

log = logging.getLogger("jumpgate.proxy")

AuditSink = Callable[[dict], Awaitable[None]]
Resolve = Callable[[str, int], Awaitable["routing.Route | None"]]


class NodeRefused(Exception):
    """The gate will not, or cannot, reach the node; ``reason`` is an RFC 4254 §5.1 code
    (ADMINISTRATIVELY_PROHIBITED: no such node; CONNECT_FAILED: unreachable), ``str()`` the words."""

    def __init__(self, reason: int, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks the gate: the cluster user, the login asked for, the client's (ip, port),
    the certificate's generation (revocation), and the service that asks (for audit)."""

    user: str
    login: str
    client: tuple[str, int] | None
    generation: int = 0
    service: str = "proxy"
    origin: str = ""          # direct-tcpip's originator (host:port), for audit


class _TrackedStream(trio.abc.HalfCloseableStream):
    """A stream to a node that leaves the live registry when it is closed."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, unregister: Callable[[], None]):
        self.stream = stream
        self._unregister = unregister

    async def send_all(self, data) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def receive_some(self, max_bytes=None) -> bytes:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        self._unregister()
        await self.stream.aclose()


class NodeGate:
    """Route, dial, vouch, audit, track (see the module docstring).

    ``identity()`` gives the proxy's current :class:`~appliance.proxy.server.ProxyIdentity`
    (its host key and certificate sign the relay lines); ``view`` enforces R4; ``audit``
    receives the ``port`` events::

        gate = NodeGate(routes.resolve, dialer, cluster="prod", identity=provider, view=view)
        stream = await gate.open("web1", 3022, caller=Caller("alice", "root", ("10.0.0.9", 5000)),
                                 nursery=nursery)
    """

    def __init__(self, resolve: Resolve, dialer: Dialer, *, cluster: str, identity: Callable[[], Any] | None = None,
                 view: ClusterView | None = None, audit: AuditSink | None = None) -> None:
        self._resolve, self.dialer, self.cluster = resolve, dialer, cluster
        self._identity, self._view, self._audit = identity, view, audit

    async def open(self, host: str, port: int, *, caller: Caller,
                   nursery: trio.Nursery | Callable[[], trio.Nursery]) -> trio.abc.HalfCloseableStream:
        """A stream to the node ``host`` names, the relay line sent; or :class:`NodeRefused`.
        ``nursery`` (or a function giving it, asked only when needed) runs the cut when the
        node is removed or the user revoked."""
        target = f"{host}:{port}"
        try:
            route = await self._resolve(host, port)
        except Exception as exc:  # the directory's backend (auth API) failed: refuse this one only
            log.warning("proxy: node directory unavailable: %r", exc)
            await self._emit(caller, False, target=target, reason="node directory unavailable")
            raise NodeRefused(OPEN_CONNECT_FAILED, "the node directory is unavailable; try again") from None
        if route is None:
            await self._emit(caller, False, target=target, reason="unknown node")
            raise NodeRefused(OPEN_ADMINISTRATIVELY_PROHIBITED, f"unknown node {host!r} in cluster {self.cluster!r}")
        dialled = await self._dial(route, host, target, caller)
        try:
            await self._emit(caller, True, target=target, addr=dialled.via, origin=caller.origin,
                             node=route.key.name, node_cluster=route.key.cluster)
        except BaseException:  # cancelled: the caller went away; the stream is ours to close (L1)
            await trio.aclose_forcefully(dialled.stream)
            raise
        return self._tracked(dialled.stream, route.node.name, caller, nursery)

    async def _dial(self, route: routing.Route, host: str, target: str, caller: Caller) -> Dialled:
        node, where = route.node, {"node": route.key.name, "node_cluster": route.key.cluster}
        try:
            dialled = await self.dialer.dial(route.key, node)
        except DialError as exc:
            await self._emit(caller, False, target=target, addr=node.shown_addr, reason=str(exc), **where)
            raise NodeRefused(OPEN_CONNECT_FAILED, f"node {host!r} at {node.shown_addr} is unreachable: {exc}") from None
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                await self._send_relay_line(dialled, node, caller)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = (f"no answer within {CONNECT_TIMEOUT:g}s" if isinstance(exc, trio.TooSlowError)
                      else getattr(exc, "strerror", None) or "the connection broke")
            await self._emit(caller, False, target=target, addr=dialled.via, reason=reason, **where)
            raise NodeRefused(OPEN_CONNECT_FAILED, f"node {host!r} at {dialled.via} is unreachable: {reason}") from None
        return dialled

    async def _send_relay_line(self, dialled: Dialled, node: routing.NodeRecord, caller: Caller) -> None:
        """Tell a Jumpgate node whom it serves (agentless OpenSSH nodes get plain SSH); the
        relay address is the dialer's (the node checks it against the peer it sees)."""
        if node.kind != "node" or self._identity is None or caller.client is None:
            return
        identity = self._identity()
        if identity.host_cert is None:
            return
        try:
            await dialled.stream.send_all(relay_line(client=caller.client, relay=dialled.relay, node=node.name,
                                                     host_key=identity.host_key, host_cert=identity.host_cert))
        except BaseException:
            await trio.aclose_forcefully(dialled.stream)
            raise

    def _tracked(self, stream: trio.abc.HalfCloseableStream, node: str, caller: Caller,
                 nursery: trio.Nursery | Callable[[], trio.Nursery]) -> trio.abc.HalfCloseableStream:
        """A stream that is cut when the node is removed or the user revoked (docs/security.md R4)."""
        if self._view is None:
            return stream
        if not isinstance(nursery, trio.Nursery):
            nursery = nursery()

        def cut(reason: str) -> None:
            log.info("proxy: cutting %s's stream to %s: %s", caller.user, node, reason)
            try:
                nursery.start_soon(trio.aclose_forcefully, stream)
            except RuntimeError:
                pass
        unregister = self._view.live.add(cut, user=caller.user, generation=caller.generation, node=node)
        return _TrackedStream(stream, unregister)

    async def _emit(self, caller: Caller, success: bool, **fields: Any) -> None:
        if self._audit is None:
            return
        record = {"event": "port", "user": caller.user, "success": success,
                  "fields": {"service": caller.service, "cluster": self.cluster,
                             "client_ip": caller.client[0] if caller.client else "", "login": caller.login,
                             **fields}}
        try:
            await self._audit(record)
        except Exception:
            # A failing audit sink must not break the connection; it is logged loudly.
            log.exception("proxy: audit event port could not be recorded")
