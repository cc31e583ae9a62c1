"""Two proxies and more (docs/security.md N6): a tunnelled node keeps a tunnel to each.

In one process: a real auth server with its push stream, three proxies' real tunnel servers
(:func:`appliance.tunnel.server.serve_tunnel` on TCP listeners of their own, each advertising
its tunnel port by heartbeat as ``jumpgate start --roles proxy`` does), and a node that joins
through the first and runs :class:`appliance.tunnel.fleet.TunnelFleet` with its push stream on
the tunnels' API channels. Every wait ends on an event; ``SAFETY`` is only a net.
"""
from __future__ import annotations

import contextlib
import functools

import pytest
import trio

from appliance.api.pool import ApiPool
from appliance.auth.server import serve_auth
from appliance.auth.service import AuthService, AuthServiceError
from appliance.auth.watch import ChangeFeed
from appliance.cluster_view import ClusterView
from appliance.membership import MembershipHolder, join
from appliance.proxy.routing import NodeKey
from appliance.storage import SQLiteStorage
from appliance.tunnel.agent import AUTH_NAME, TunnelAgent, join_stream
from appliance.tunnel.fleet import TunnelFleet
from appliance.tunnel.server import TunnelService, serve_tunnel
from appliance.tunnel.transport import tcp_connector
from ssh_proto.errors import SSHError
from ssh_proto.keys import PrivateKey

from _api_helpers import CLUSTER, FAST_HASHER, auth_host_identity, parse_cert

LOOPBACK = "127.0.0.1"
SAFETY = 30.0          # the issue: a new proxy is picked up within 30 s
KEY = NodeKey(CLUSTER, "edge1")


class Proxy:
    """One proxy's tunnel server, stopped by :meth:`stop` (its connections closed, as a
    process that exits closes them)."""

    def __init__(self, name: str, service: TunnelService, scope: trio.CancelScope, port: int):
        self.name, self.service, self.scope, self.port = name, service, scope, port

    @property
    def tunnel_addr(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        self.scope.cancel()


@pytest.fixture
async def auth(nursery, tmp_path):
    storage = SQLiteStorage(tmp_path / "auth.db")
    service = await AuthService.create(storage, CLUSTER, hasher=FAST_HASHER)
    feed = ChangeFeed(storage)
    await nursery.start(feed.run)
    listener = await nursery.start(functools.partial(serve_auth, service, service.ca, auth_host_identity(service),
                                                     LOOPBACK, 0, feed=feed))
    return service, listener.port


async def start_proxy(nursery: trio.Nursery, auth, name: str) -> Proxy:
    """A proxy joined to the cluster, its tunnel port listening and advertised by heartbeat."""
    service, auth_port = auth
    key = PrivateKey.generate("ssh-ed25519")
    token = (await service.create_token("proxy", 600, addresses=[LOOPBACK])).token
    cert = parse_cert((await service.join(token, "proxy", name, key.public_key.blob, [LOOPBACK], {},
                                          f"{LOOPBACK}:3023")).host_cert)

    async def open_auth() -> trio.abc.Stream:
        return await trio.open_tcp_stream(LOOPBACK, auth_port)

    tunnels = TunnelService(CLUSTER, lambda: (key, cert), lambda: service.ca.host_ca_public, open_auth)
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await serve_tunnel(tunnels, listeners, task_status=task_status)
    await nursery.start(run)
    proxy = Proxy(name, tunnels, scope, listeners[0].socket.getsockname()[1])
    await service.heartbeat(name, addr=f"{LOOPBACK}:3023", tunnel_addr=proxy.tunnel_addr)
    return proxy


class Node:
    """The node's side: what it served, by proxy."""

    def __init__(self) -> None:
        self.served: list[str] = []

    async def serve(self, stream, relay, proxy: str) -> None:
        self.served.append(proxy)
        try:
            while data := await stream.receive_some(100):
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # its tunnel died: the session is over
        finally:
            with contextlib.suppress(SSHError):
                await trio.aclose_forcefully(stream)


async def start_node(nursery: trio.Nursery, auth, first: Proxy, tmp_path, node: Node, **fleet_options) -> TunnelFleet:
    service, _ = auth
    connect = tcp_connector(LOOPBACK, first.port)
    token = (await service.create_token("node", 600)).token
    member = await join(AUTH_NAME, token, kind="node", name="edge1", data_dir=tmp_path / "node",
                        via=lambda pin: join_stream(connect, pin))
    holder, view = MembershipHolder(member), ClusterView()
    fleet = TunnelFleet(TunnelAgent(connect, holder, node.serve), holder, node.serve, view, **fleet_options)
    await nursery.start(fleet.run)
    pool = ApiPool(fleet.api_factory(), view=view)
    await nursery.start(pool.run)
    with trio.fail_after(SAFETY):
        await view.ready.wait()
    return fleet


async def tunnel_up(proxy: Proxy) -> None:
    """Wait until ``proxy`` has the node's tunnel registered (its registry: the proxy's own view)."""
    while proxy.service.registry.get(KEY) is None:
        await trio.sleep(0.02)


async def echoes(proxy: Proxy, stream=None) -> bool:
    stream = stream or (await proxy.service.registry.dial(KEY, None)).stream
    await stream.send_all(b"ping")
    return await stream.receive_some(100) == b"ping"


async def test_N6_a_node_keeps_a_tunnel_to_each_proxy_and_either_reaches_it(auth, nursery, tmp_path):
    a, b = await start_proxy(nursery, auth, "jump-a"), await start_proxy(nursery, auth, "jump-b")
    node = Node()
    fleet = await start_node(nursery, auth, a, tmp_path, node)
    with trio.fail_after(SAFETY):
        await tunnel_up(a)
        await tunnel_up(b)
        assert await echoes(a) and await echoes(b)
    assert sorted(set(node.served)) == ["jump-a", "jump-b"]
    assert list(fleet.agents) == ["jump-b"]  # the bootstrap tunnel is a's: not dialled twice


async def test_N6_a_session_ends_when_its_tunnel_dies_while_the_other_proxy_keeps_serving(auth, nursery, tmp_path):
    a, b = await start_proxy(nursery, auth, "jump-a"), await start_proxy(nursery, auth, "jump-b")
    fleet = await start_node(nursery, auth, a, tmp_path, Node())
    with trio.fail_after(SAFETY):
        await tunnel_up(a)
        await tunnel_up(b)
        through_a = (await a.service.registry.dial(KEY, None)).stream
        through_b = (await b.service.registry.dial(KEY, None)).stream
        assert await echoes(a, through_a) and await echoes(b, through_b)
        await fleet.agents["jump-b"].connection.aclose()   # the tunnel to b dies ...
        with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
            await through_b.send_all(b"more")
            if not await through_b.receive_some(100):   # EOF: the session ended, it does not hang
                raise trio.BrokenResourceError
        b.stop()                                       # ... and proxy b goes away: the node cannot redial it
        assert await echoes(a, through_a)             # the session through a is untouched
        assert await echoes(a)                         # and a still reaches the node afresh


async def test_N6_a_proxy_added_is_dialled_within_30s_and_one_removed_is_dropped(auth, nursery, tmp_path):
    service, _ = auth
    a = await start_proxy(nursery, auth, "jump-a")
    fleet = await start_node(nursery, auth, a, tmp_path, Node(), reconcile_interval=SAFETY)
    with trio.fail_after(SAFETY):
        await tunnel_up(a)
    start = trio.current_time()
    c = await start_proxy(nursery, auth, "jump-c")         # its heartbeat is pushed to the node
    with trio.fail_after(SAFETY):
        await fleet.wait_for(lambda: "jump-c" in fleet.agents)
        await fleet.agents["jump-c"].wait_up()
        await tunnel_up(c)
    assert trio.current_time() - start < SAFETY
    assert await echoes(c)
    await service.remove_node("jump-c")                    # `ctl nodes rm jump-c`: pushed too
    with trio.fail_after(SAFETY):
        await fleet.wait_for(lambda: "jump-c" not in fleet.agents)
        while c.service.registry.get(KEY) is not None:    # its tunnel was closed by the node
            await trio.sleep(0.02)
    assert await echoes(a)


async def test_N6_a_proxy_advertises_a_tunnel_address_only_on_its_own_host_and_a_node_none(auth, nursery):
    service, _ = auth
    a = await start_proxy(nursery, auth, "jump-a")
    with pytest.raises(AuthServiceError, match="not on a host this proxy joined with"):
        await service.heartbeat("jump-a", tunnel_addr="10.9.9.9:3024")
    token = (await service.create_token("node", 600, addresses=[LOOPBACK])).token
    await service.join(token, "node", "db1", PrivateKey.generate("ssh-ed25519").public_key.blob, [LOOPBACK], {},
                       f"{LOOPBACK}:3022")
    with pytest.raises(AuthServiceError, match="only a proxy"):
        await service.heartbeat("db1", tunnel_addr=f"{LOOPBACK}:3024")
    assert (await service.storage.get_node("jump-a")).tunnel_addr == a.tunnel_addr   # unchanged by the refusal
