"""A proxy's or node's view of the cluster, kept current by the auth server's push stream.

The auth service pushes changes (:mod:`appliance.auth.watch`) over the API connection a proxy or
node already holds; :class:`ClusterView` applies them and answers the questions revocation
asks (docs/security.md R1-R4):

* ``revoked(user, generation)`` — a user certificate carries the user's certificate generation
  (``jumpgate-generation@jumpgate``); deleting or resetting the user bumps it, and a
  certificate of an older generation is refused from then on.
* ``proxy_registered(name, host_key)`` — a relay line counts only from a proxy still
  registered with that host key.
* ``proxy_tunnels`` — where each proxy takes reverse tunnels (``{name: HOST:PORT}``): a
  tunnelled node keeps one to each (:class:`appliance.tunnel.fleet.TunnelFleet`).
* ``nodes`` (proxies only) — the inventory, so the proxy routes to a node that just joined and
  stops routing to one just removed at once; ``has_inventory`` says whether the server sends
  it (a snapshot came with it), ``inventory_version`` counts its changes (a cache key).

It also holds :class:`LiveSessions`: the authenticated connections (and, at a proxy, the
streams to nodes) that a revocation must end. Each is registered with a ``close(reason)``
callable that must not block (it schedules the close in the connection's own nursery).

Before the first snapshot the view knows nothing and refuses nothing (best effort, as
Teleport's ``best_effort`` lock mode): a proxy or node starts serving even while the auth
server is down. After a lost connection it keeps the last view until a new snapshot replaces
it. ``ready`` is set by the first snapshot.
"""
from __future__ import annotations

import dataclasses
import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any

import trio

from .api.protocol import Push

__all__ = ["ClusterView", "LiveSessions"]

log = logging.getLogger("jumpgate.view")

Close = Callable[[str], None]


@dataclasses.dataclass(eq=False, slots=True)
class _Live:
    close: Close
    user: str | None
    generation: int
    proxy: str | None
    node: str | None


class LiveSessions:
    """Authenticated connections and relayed streams that a revocation must end."""

    def __init__(self) -> None:
        self._live: set[_Live] = set()

    def __len__(self) -> int:
        return len(self._live)

    def add(self, close: Close, *, user: str | None = None, generation: int = 0,
            proxy: str | None = None, node: str | None = None) -> Callable[[], None]:
        """Register one; returns the function that unregisters it (call it when it ends)."""
        entry = _Live(close, user, generation, proxy, node)
        self._live.add(entry)
        return lambda: self._live.discard(entry)

    def end(self, should_end: Callable[[_Live], str | None]) -> int:
        """Close every entry for which ``should_end`` gives a reason; returns how many."""
        ended = 0
        for entry in tuple(self._live):
            reason = should_end(entry)
            if reason is not None:
                self._live.discard(entry)
                entry.close(reason)
                ended += 1
        return ended


class ClusterView:
    """What the push stream said last; see the module docstring."""

    def __init__(self) -> None:
        self._generations: dict[str, int] = {}
        self._proxies: dict[str, bytes] | None = None
        self.proxy_tunnels: dict[str, str] = {}
        self.nodes: dict[str, Mapping[str, Any]] = {}
        self._inventory = False  # whether the server sends us the nodes (proxies only)
        self.inventory_version = 0
        self.live = LiveSessions()
        self.ready = trio.Event()
        self._node_listeners: list[Callable[[], None]] = []
        self._applied = trio.Event()   # set (and replaced) at every push applied

    # ---- the questions -------------------------------------------------------------------
    def revoked(self, user: str, generation: int) -> bool:
        return generation < self._generations.get(user, 0)

    def proxy_registered(self, name: str, host_key: bytes) -> bool:
        if self._proxies is None:
            return True  # no view yet: best effort
        registered = self._proxies.get(name)
        return registered is not None and hmac.compare_digest(registered, host_key)

    @property
    def has_inventory(self) -> bool:
        """Whether ``nodes`` is the inventory (a snapshot with nodes was applied)."""
        return self._inventory

    def on_nodes_changed(self, listener: Callable[[], None]) -> None:
        """``listener()`` after every change to the inventory (a proxy's directory refresh)."""
        self._node_listeners.append(listener)

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checking it again after each push applied (the
        caller bounds the wait: ``with trio.fail_after(...)``)::

            await view.wait_for(lambda: view.revoked("alice", 3))
        """
        while not condition():
            await self._applied.wait()

    # ---- applying pushes -----------------------------------------------------------------
    def apply(self, push: Push) -> None:
        """Take one push; then end what it revoked. Unknown kinds are ignored (newer server)."""
        handler = _HANDLERS.get(push.kind)
        if handler is None:
            return
        handler(self, push.data)
        ended = self.live.end(self._why_end)
        if ended:
            log.info("revocation ended %d live connection(s)", ended)
        self._applied.set()
        self._applied = trio.Event()

    def _snapshot(self, data: Mapping[str, Any]) -> None:
        self._generations = {str(k): int(v) for k, v in dict(data.get("users", {})).items()}
        self._proxies = {str(k): bytes(v) for k, v in dict(data.get("proxies", {})).items()}
        self.proxy_tunnels = {str(k): str(v) for k, v in dict(data.get("tunnels", {})).items()
                              if str(k) in self._proxies and v}
        self._inventory = "nodes" in data
        if self._inventory:
            self.nodes = {str(n["name"]): n for n in data["nodes"]}
            self._nodes_changed()
        self.ready.set()

    def _user(self, data: Mapping[str, Any]) -> None:
        self._generations[str(data["name"])] = int(data["generation"])

    def _node(self, data: Mapping[str, Any]) -> None:
        name, node = str(data["name"]), data.get("node")
        if self._proxies is not None:
            if node is not None and node.get("kind") == "proxy":
                self._proxies[name] = bytes(node.get("host_key", b""))
            else:
                self._proxies.pop(name, None)
        if node is not None and node.get("kind") == "proxy" and node.get("tunnel_addr"):
            self.proxy_tunnels[name] = str(node["tunnel_addr"])
        else:
            self.proxy_tunnels.pop(name, None)
        if not self._inventory:
            return
        if node is None:
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = node
        self._nodes_changed()

    def _nodes_changed(self) -> None:
        self.inventory_version += 1
        for listener in self._node_listeners:
            listener()

    def _why_end(self, entry: _Live) -> str | None:
        if entry.user is not None and self.revoked(entry.user, entry.generation):
            return f"the certificate of {entry.user} was revoked"
        if entry.proxy is not None and self._proxies is not None and entry.proxy not in self._proxies:
            return f"proxy {entry.proxy} was removed from the cluster"
        if entry.node is not None and self._inventory and entry.node not in self.nodes:
            return f"node {entry.node} was removed from the cluster"
        return None


_HANDLERS: dict[str, Callable[[ClusterView, Mapping[str, Any]], None]] = {
    "snapshot": ClusterView._snapshot,
    "user": ClusterView._user,
    "node": ClusterView._node,
}
