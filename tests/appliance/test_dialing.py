"""The proxy's seams for reverse tunnels (issue 15, "Seams first"): routing by (cluster, name),
one ``dial(key, node)`` seam with a TCP dialer and a tunnel registry, and the relay line's
relay address taken from the dialer."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import pytest
import trio
import trio.testing

from _proxy_helpers import CLUSTER, host_identity
from appliance.inventory import NodeRecord
from appliance.proxy.dialing import (DialError, Dialled, ProxyDialer, TCPDialer, TunnelConflict, TunnelRegistry)
from appliance.proxy.routing import NodeDirectory, NodeKey, Routes
from appliance.proxy.server import ProxyIdentity, ProxyServer, _ProxyConfig
from appliance.relay import RelayVerifier
from ssh_proto.keys import PrivateKey

NODES = [{"name": "web1", "addr": "10.0.0.5:3022"}, {"name": "edge", "addr": "", "tunnel": True},
         {"name": "gone", "addr": ""}]


def _directory(cluster: str, nodes=NODES) -> NodeDirectory:
    async def fetch():
        return nodes
    return NodeDirectory(fetch, cluster=cluster)


@dataclass
class FakeTunnel:
    """A node's tunnel connection: each open_node_stream is one end of an in-memory pair."""
    host_key: bytes
    local_address: tuple[str, int] = ("192.0.2.7", 3024)
    node_ends: list = field(default_factory=list)

    async def open_node_stream(self):
        ours, theirs = trio.testing.memory_stream_pair()
        self.node_ends.append(theirs)
        return ours


async def test_a_tunnelled_node_without_an_address_is_routable_and_keyed_by_cluster_and_name():
    routes = Routes(_directory(CLUSTER))
    route = await routes.resolve("EDGE", 22)
    assert route is not None and route.key == NodeKey(CLUSTER, "edge") and route.node.endpoint is None
    assert (await routes.resolve(f"edge.{CLUSTER}", 22)).key == NodeKey(CLUSTER, "edge")
    assert await routes.resolve("gone", 22) is None   # no address and no tunnel: nothing to dial


async def test_a_leaf_clusters_nodes_are_other_nodes_under_the_same_name():
    routes = Routes(_directory(CLUSTER))
    routes.add(_directory("leaf", [{"name": "web1", "addr": "10.9.0.1:3022"}]))
    assert (await routes.resolve("web1", 22)).key == NodeKey(CLUSTER, "web1")
    leaf = await routes.resolve("web1.LEAF", 22)
    assert leaf.key == NodeKey("leaf", "web1") and leaf.node.endpoint == ("10.9.0.1", 3022)
    routes.remove("leaf")
    assert await routes.resolve("web1.leaf", 22) is None
    routes.remove(CLUSTER)   # the proxy's own cluster cannot be removed
    assert await routes.resolve("web1", 22) is not None


async def test_dial_uses_the_registered_tunnel_first_and_says_when_a_tunnelled_node_is_not_connected():
    dialer = ProxyDialer()
    edge = NodeRecord("edge", "node", tunnel=True)
    with pytest.raises(DialError, match="not connected by tunnel"):
        await dialer.dial(NodeKey(CLUSTER, "edge"), edge)
    tunnel = FakeTunnel(b"edge-key")
    unregister = dialer.tunnels.register(NodeKey(CLUSTER, "edge"), tunnel)
    dialled = await dialer.dial(NodeKey(CLUSTER, "edge"), edge)
    assert (dialled.relay, dialled.via) == (("192.0.2.7", 3024), "tunnel")
    await dialled.stream.send_all(b"SSH-2.0-x\r\n")
    assert await tunnel.node_ends[0].receive_some() == b"SSH-2.0-x\r\n"
    with pytest.raises(DialError, match="not connected"):   # another cluster's edge is another node
        await dialer.dial(NodeKey("leaf", "edge"), edge)
    unregister()
    assert len(dialer.tunnels) == 0


def test_a_second_tunnel_with_another_host_key_is_refused_and_nothing_registered_changes():
    registry, key = TunnelRegistry(), NodeKey(CLUSTER, "edge")
    first = FakeTunnel(b"key-1")
    unregister_first = registry.register(key, first)
    with pytest.raises(TunnelConflict):
        registry.register(key, FakeTunnel(b"key-2"))
    assert registry.get(key) is first
    again = FakeTunnel(b"key-1")   # the same node redialled before its old tunnel was noticed dead
    registry.register(key, again)
    unregister_first()             # the old connection ending does not remove its replacement
    assert registry.get(key) is again


async def test_the_tcp_dialers_relay_address_is_the_sockets_own_end():
    async def accept(stream):
        await stream.aclose()
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, accept, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        dialled = await TCPDialer().dial(NodeKey(CLUSTER, "web1"), NodeRecord("web1", "node", f"127.0.0.1:{port}"))
        assert dialled.relay == tuple(dialled.stream.socket.getsockname()[:2]) and dialled.via == f"127.0.0.1:{port}"
        await dialled.stream.aclose()
        with pytest.raises(DialError, match="no address"):
            await TCPDialer().dial(NodeKey(CLUSTER, "edge"), NodeRecord("edge", "node", tunnel=True))
        nursery.cancel_scope.cancel()


async def test_the_relay_line_names_the_relay_address_the_dialer_gave_and_the_node_accepts_it():
    """The node checks the relay address against the peer it sees (relay rule 3): through a
    tunnel that is the proxy's end of the tunnel connection, which only the dialer knows."""
    host_ca = PrivateKey.generate("ssh-ed25519")
    identity = ProxyIdentity(*host_identity(host_ca, "proxy", "proxy1"))
    dialer = ProxyDialer()
    tunnel = FakeTunnel(b"edge-key", local_address=("198.51.100.4", 40000))
    dialer.tunnels.register(NodeKey(CLUSTER, "edge"), tunnel)
    routes = Routes(_directory(CLUSTER))
    config = _ProxyConfig((), CLUSTER, routes.resolve, routes.list_nodes, None, lambda: identity, None, dialer)
    server = ProxyServer(config)
    server.peer_address, server.user = ("203.0.113.9", 55000), "alice"
    await server.direct_tcpip("edge", 22, "203.0.113.9", 55000)
    line = await tunnel.node_ends[0].receive_some()
    verifier = RelayVerifier(lambda: "edge", lambda: [host_ca.public_key])
    assert tuple(verifier.check(line.rstrip(b"\r\n"), ("198.51.100.4", 40000))) == ("203.0.113.9", 55000)
