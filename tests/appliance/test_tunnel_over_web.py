"""The reverse tunnel over the web port, end to end in one process: a real auth server, the
proxy's real tunnel server (appliance/tunnel/server.py) registered as the web listener's
tunnel handler, and a node that joins and holds its tunnel through TLS with ALPN
``jumpgate-tunnel`` — directly and through an HTTP CONNECT proxy (docs/security.md W8-W10)."""
from __future__ import annotations

import functools

import trio

from appliance.cli.start import _web_tunnel_handler
from appliance.membership import MembershipHolder, join
from appliance.proxy.routing import NodeKey
from appliance.tunnel.agent import AUTH_NAME, TunnelAgent, join_stream
from appliance.tunnel.server import TunnelService
from appliance.tunnel.transport import tls_connector

from _api_helpers import CLUSTER, running_auth
from _web_helpers import running_cluster
from test_tunnel_transport import ConnectProxy, no_proxy_environment  # noqa: F401  (fixture)


async def _unused_node(stream, relay, proxy) -> None:
    await trio.aclose_forcefully(stream)


async def _join_and_hold(tmp_path, env, web_port: int) -> TunnelAgent:
    connect = tls_connector("127.0.0.1", web_port)
    member = await join(AUTH_NAME, await env.token(), kind="node", name="edge1", data_dir=tmp_path / "node",
                        via=lambda pin: join_stream(connect, pin))
    return TunnelAgent(connect, MembershipHolder(member), _unused_node)


async def _tunnel_proxy(env):
    key, cert = await env.joined_identity("jump", kind="proxy")

    async def open_auth() -> trio.abc.Stream:
        return await trio.open_tcp_stream("127.0.0.1", env.port)
    return TunnelService(CLUSTER, lambda: (key, cert), lambda: env.host_ca, open_auth)


async def test_W2_a_node_joins_and_holds_its_tunnel_through_the_web_port(tmp_path):
    async with running_auth() as env:
        service = await _tunnel_proxy(env)
        async with running_cluster(tmp_path, tunnel_handler=_web_tunnel_handler(service)) as web:
            with trio.fail_after(30):
                agent = await _join_and_hold(tmp_path, env, web.web.port)
                async with trio.open_nursery() as nursery:
                    await nursery.start(agent.run)
                    await agent.wait_up()
                    assert service.registry.get(NodeKey(CLUSTER, "edge1")) is not None
                    assert agent.proxy == "jump"   # the proxy's host certificate, checked inside
                    nursery.cancel_scope.cancel()
    assert "edge1" in {n.name for n in await env.service.list_nodes()}


async def test_W3_a_node_joins_and_holds_its_tunnel_through_an_http_proxy(tmp_path, monkeypatch):
    async with running_auth() as env, trio.open_nursery() as outer:
        service = await _tunnel_proxy(env)
        proxy = await outer.start(ConnectProxy().run)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        async with running_cluster(tmp_path, tunnel_handler=_web_tunnel_handler(service)) as web:
            with trio.fail_after(30):
                agent = await _join_and_hold(tmp_path, env, web.web.port)
                async with trio.open_nursery() as nursery:
                    await nursery.start(agent.run)
                    await agent.wait_up()
                    assert service.registry.get(NodeKey(CLUSTER, "edge1")) is not None
                    nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    # the join's tunnel, then the node's own: both through the proxy, to the web port
    assert [target for _, target, _ in proxy.requests] == [f"127.0.0.1:{web.web.port}"] * 2
