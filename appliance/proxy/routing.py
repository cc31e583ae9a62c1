"""Which node a proxy connection may reach, and the node list the proxy hands to clients.

This module owns the proxy's routing rules, without any I/O of its own (the directory
is fed by a ``fetch`` coroutine the caller supplies, in production the auth API's
``list_nodes``):

* **Targets.** A ``direct-tcpip`` request (RFC 4254 §7.2) names its destination as
  ``host``/``port``. The proxy connects only to *registered* nodes, never to an arbitrary
  address (it is not an open relay). ``host`` may be a node name, ``name.CLUSTER``, or a
  registered node address. For a name, the requested port is ignored and the node's
  registered ``addr`` (host:port) is used, as Teleport does: ``ssh -J proxy root@web1``
  asks for web1:22 while the node listens on 3022. For an address, the node registered at
  that exact ``addr`` wins; else the only node on that host; two nodes on one host and
  neither on the requested port is ambiguous and refused.
* **The directory.** :class:`NodeDirectory` reads the inventory the auth server pushes
  (:class:`~appliance.cluster_view.ClusterView`), and asks the auth server once more about a
  target it does not know before refusing it, so a node that was just added is reachable, and
  one just removed is not, from the moment ``jumpgate ctl`` returns (rule T22).
* **The node list for ``jumpgate ls``** travels on the ``jumpgate-nodes`` SSH subsystem of
  the proxy in the frames of :mod:`appliance.api.protocol`: the client sends one request
  ``list_nodes {"labels": {k: v}}`` and EOF, the proxy answers one response
  ``{"nodes": [...]}`` of :meth:`NodeRecord.to_wire <appliance.inventory.NodeRecord.to_wire>`
  maps (or an error) and closes.

>>> node_target("web1.prod", "prod"), node_target("WEB1.Prod", "prod"), node_target("10.0.0.5", "prod")
('web1', 'WEB1', '10.0.0.5')
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import trio

from ..api.protocol import (E_BAD_REQUEST, ApiProtocolError, ErrorResponse, FrameDecoder, Request, Response,
                            encode_error, encode_request, encode_response)
from ..inventory import MAX_LABEL_TEXT, NodeRecord, NodeRecordError, labels_match
from ..cluster_view import ClusterView
from ..names import is_node_name, strip_cluster

__all__ = [
    "NODES_SUBSYSTEM", "MAX_LABEL_FILTERS",
    "NodeDirectory", "NodeKey", "NodeListError", "Route", "Routes", "routable",
    "node_from_wire", "node_target",
    "encode_list_request", "decode_list_request", "encode_list_response", "encode_list_error",
    "decode_list_response",
]

NODES_SUBSYSTEM = "jumpgate-nodes"
LIST_METHOD = "list_nodes"
#: A label filter holds at most this many pairs, each string at most MAX_LABEL_TEXT long.
MAX_LABEL_FILTERS = 32
MAX_NODES = 10000        # nodes in one list answer


@dataclass(frozen=True, slots=True, order=True)
class NodeKey:
    """A node as the proxy routes to it: its cluster and its name in that cluster (the key of
    the tunnel registry, :mod:`appliance.proxy.dialing`). A leaf cluster's ``db1`` and the
    proxy's own ``db1`` are two nodes."""

    cluster: str
    name: str

    def __str__(self) -> str:
        return f"{self.name}.{self.cluster}" if self.cluster else self.name


@dataclass(frozen=True, slots=True)
class Route:
    """Where a requested target goes: the node's key and its inventory record."""

    key: NodeKey
    node: NodeRecord


def routable(node: NodeRecord) -> bool:
    """A node the proxy can try to reach: one with an address, or one that reaches the proxy
    by tunnel (it has no address; the dialer finds its tunnel, or says it is not connected)."""
    return node.endpoint is not None or node.tunnel


class NodeListError(ApiProtocolError):
    """A node list request or answer is malformed (the message says which field)."""


def node_from_wire(data: Any) -> NodeRecord:
    """One node map (from the auth API or from the proxy) -> NodeRecord; NodeListError if malformed."""
    try:
        return NodeRecord.from_wire(data)
    except NodeRecordError as exc:
        raise NodeListError(str(exc)) from None


def _text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise NodeListError(f"{name} must be a string of at most {limit} characters")
    return value


def node_target(host: str, cluster: str) -> str:
    """The node a requested host names: ``name.CLUSTER`` loses its cluster suffix
    (:func:`appliance.names.strip_cluster`)."""
    return strip_cluster(host, cluster)


def _by_name(nodes: Iterable[NodeRecord], name: str) -> NodeRecord | None:
    wanted = name.casefold()
    return next((n for n in nodes if n.name.casefold() == wanted), None)


def _by_address(nodes: Iterable[NodeRecord], host: str, port: int) -> NodeRecord | None:
    wanted = host.casefold()
    on_host = [n for n in nodes if (ep := n.endpoint) is not None and ep[0].casefold() == wanted]
    exact = [n for n in on_host if n.endpoint[1] == port]
    if exact:
        return exact[0]
    return on_host[0] if len(on_host) == 1 else None


def find_node(nodes: Iterable[NodeRecord], host: str, port: int) -> NodeRecord | None:
    """The registered node ``host`` (already stripped of ``.CLUSTER``) and ``port`` designate."""
    nodes = tuple(nodes)
    return _by_name(nodes, host) or _by_address(nodes, host, port)


Lookup = Callable[[str], Awaitable["Mapping[str, Any] | None"]]


class NodeDirectory:
    """The proxy's view of the registered nodes: ``resolve`` and ``list_nodes`` callbacks.

    Where the nodes come from, best first:

    * ``view`` (a :class:`~appliance.cluster_view.ClusterView` fed by the auth server's push
      stream): once it holds the inventory, lookups and lists read it, with no request to the
      auth server, and an add or a remove counts from the moment its push is applied.
    * ``fetch()``, every node as :meth:`NodeRecord.to_wire` maps (the auth API's
      ``list_nodes``): before the view has its first snapshot, or without a view, the list is
      cached ``ttl`` seconds and :meth:`invalidate` drops it.

    A target found in neither is looked up once more before the answer is "unknown node": a
    name with ``lookup(name)`` (the auth API's ``get_node``: one row, however large the
    inventory), else — or without ``lookup`` — with a fresh ``fetch()`` (at most once per
    ``min_refresh`` seconds, so a stream of unknown addresses cannot make the proxy pull the
    whole inventory again and again). So a node added a moment ago is reachable even if its
    push is still on the way (issue 14 item 6).

    >>> async def fetch():
    ...     return [{"name": "web1", "addr": "10.0.0.5:3022", "labels": {"env": "dev"}}]
    >>> directory = NodeDirectory(fetch)
    >>> trio.run(directory.resolve, "web1", 22).endpoint
    ('10.0.0.5', 3022)
    """

    def __init__(self, fetch: Callable[[], Awaitable[Iterable[Mapping[str, Any]]]], *, cluster: str = "",
                 lookup: Lookup | None = None, view: ClusterView | None = None, ttl: float = 5.0,
                 min_refresh: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.cluster = cluster
        self._fetch = fetch
        self._lookup = lookup
        self._view = view
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._clock = clock
        self._nodes: tuple[NodeRecord, ...] = ()
        self._fetched_at = -math.inf
        self._lock = trio.Lock()
        self._from_view: tuple[int, tuple[NodeRecord, ...]] = (-1, ())

    async def _refresh(self, older_than: float) -> tuple[NodeRecord, ...]:
        async with self._lock:  # one fetch at a time; waiters reuse its answer
            if self._clock() - self._fetched_at >= older_than:
                raw = await self._fetch()
                self._nodes = tuple(node_from_wire(n) for n in raw)
                self._fetched_at = self._clock()
            return self._nodes

    def _view_nodes(self) -> tuple[NodeRecord, ...] | None:
        view = self._view
        if view is None or not view.has_inventory:
            return None
        version, nodes = self._from_view
        if version != view.inventory_version:  # parsed once per change, not per lookup
            nodes = tuple(node_from_wire(n) for n in view.nodes.values() if n.get("kind") != "proxy")
            self._from_view = (view.inventory_version, nodes)
        return nodes

    async def nodes(self) -> tuple[NodeRecord, ...]:
        pushed = self._view_nodes()
        return pushed if pushed is not None else await self._refresh(self._ttl)

    def invalidate(self) -> None:
        """The inventory changed (the auth server's push stream said so): the next lookup
        fetches afresh, so a node that joined is reachable, and one removed is not, at once."""
        self._fetched_at = -math.inf

    async def resolve(self, host: str, port: int) -> NodeRecord | None:
        """The node to connect to for ``host``/``port`` (see the module rules), or None
        (also for a node the proxy has no way to reach: :func:`routable`)."""
        node = find_node(await self.nodes(), host, port) or await self._look_again(host, port)
        return node if node is not None and routable(node) else None

    async def _look_again(self, host: str, port: int) -> NodeRecord | None:
        """A target the directory does not know: ask the auth server once before refusing."""
        if self._lookup is not None and is_node_name(host.lower()):
            found = await self._lookup(host.lower())
            node = node_from_wire(found) if found is not None else None
            return node if node is not None and node.kind != "proxy" else None
        return find_node(await self._refresh(self._min_refresh), host, port)

    async def list_nodes(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """For `jumpgate ls`: the auth server's list, at most ``min_refresh`` old, so a node that
        just joined shows up at once — and with what only the auth server knows: the labels and
        liveness of its last heartbeat (heartbeats are not pushed; at 10,000 nodes they must not
        be). Routing (:meth:`resolve`) reads the pushed inventory instead."""
        nodes = await self._refresh(self._min_refresh)
        return [n.to_wire() for n in nodes if labels_match(n.labels, labels)]


class Routes:
    """The node directories of the clusters this proxy routes to, keyed by cluster name: its
    own cluster (``local``) today; a trusted leaf cluster's directory is :meth:`add`-ed when it
    links to this one (issue 15). ``resolve(host, port)`` takes the host as the client sent it:
    ``name.CLUSTER`` goes to that cluster's directory (the longest cluster suffix wins, case-
    insensitively), anything else to the local one.

    >>> async def fetch():
    ...     return [{"name": "web1", "addr": "10.0.0.5:3022"}]
    >>> routes = Routes(NodeDirectory(fetch, cluster="acme"))
    >>> str(trio.run(routes.resolve, "WEB1.acme", 22).key)
    'web1.acme'
    """

    def __init__(self, local: NodeDirectory):
        self.local = local
        self._directories: dict[str, NodeDirectory] = {local.cluster.casefold(): local}

    def add(self, directory: NodeDirectory) -> None:
        self._directories[directory.cluster.casefold()] = directory

    def remove(self, cluster: str) -> None:
        if cluster.casefold() != self.local.cluster.casefold():
            self._directories.pop(cluster.casefold(), None)

    def split(self, host: str) -> tuple[NodeDirectory, str]:
        """The directory ``host`` names and the name within it."""
        for cluster in sorted(self._directories, key=len, reverse=True):
            if cluster:
                name = strip_cluster(host, cluster)
                if name != host:
                    return self._directories[cluster], name
        return self.local, host

    async def resolve(self, host: str, port: int) -> Route | None:
        directory, name = self.split(host)
        node = await directory.resolve(name, port)
        return Route(NodeKey(directory.cluster, node.name), node) if node is not None else None

    async def list_nodes(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return await self.local.list_nodes(labels)


# ------------------------------------------------------------------ the jumpgate-nodes subsystem

def encode_list_request(labels: Mapping[str, str]) -> bytes:
    """The client's one request: list the nodes carrying every label in ``labels``."""
    return encode_request(Request(1, LIST_METHOD, {"labels": _label_filter(labels)}))


def _label_filter(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or len(value) > MAX_LABEL_FILTERS:
        raise NodeListError(f"a label filter is a map of at most {MAX_LABEL_FILTERS} pairs")
    return {_text(k, "label name", MAX_LABEL_TEXT): _text(v, "label value", MAX_LABEL_TEXT)
            for k, v in value.items()}


def decode_list_request(decoder: FrameDecoder) -> tuple[int, dict[str, str]] | None:
    """(request id, label filter) once a whole request is in ``decoder``, else None."""
    message = decoder.next_message()
    if message is None:
        return None
    if not isinstance(message, Request) or message.method != LIST_METHOD or set(message.params) != {"labels"}:
        raise NodeListError(f"the only request here is {LIST_METHOD}(labels)")
    return message.id, _label_filter(message.params["labels"])


def encode_list_response(request_id: int, nodes: Iterable[Mapping[str, Any]]) -> bytes:
    records = [node_from_wire(n).to_wire() for n in nodes]
    return encode_response(Response(request_id, {"nodes": records}))


def encode_list_error(request_id: int, message: str, code: str = E_BAD_REQUEST) -> bytes:
    return encode_error(ErrorResponse(request_id, code, message))


def decode_list_response(data: bytes) -> list[NodeRecord]:
    """The proxy's whole answer -> nodes; NodeListError for anything malformed or refused."""
    decoder = FrameDecoder.for_responses()
    decoder.feed(data)
    decoder.feed_eof()
    message = decoder.next_message()
    if message is None or decoder.pending:
        raise NodeListError("the proxy's node list is not exactly one answer")
    if isinstance(message, ErrorResponse):
        raise NodeListError(f"the proxy refused to list nodes: {message.message}")
    result = message.result
    if not isinstance(result, Mapping) or not isinstance(result.get("nodes"), list):
        raise NodeListError("the proxy's answer holds no node list")
    if len(result["nodes"]) > MAX_NODES:
        raise NodeListError("the proxy's node list is too long")
    return [node_from_wire(n) for n in result["nodes"]]
