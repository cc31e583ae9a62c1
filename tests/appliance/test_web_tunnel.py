"""Tunnels on the web port: TLS with ALPN ``jumpgate-tunnel`` beside the web UI (docs/security.md W8).

Real TLS on loopback, the real web listener, a test tunnel handler (an echo, one that stalls,
and one that runs ssh_proto's real SSH server over the handed stream)."""
from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

import ssh_proto
from ssh_proto.keys import PrivateKey

from appliance.limits import TunnelLimits
from appliance.web.server import WebLimits
from appliance.web.tls import TUNNEL_ALPN

from _web_helpers import (echo_tunnel_handler as echo_handler, echoes, http_request, is_refused, open_tls,
                          raw_exchange, running_cluster)


async def stalling_handler(stream, peer, local, *, task_status=trio.TASK_STATUS_IGNORED):
    await trio.sleep_forever()   # never through its "SSH handshake": never calls started()


async def open_tunnel(port: int) -> trio.SSLStream:
    stream = await open_tls(port, alpn=[TUNNEL_ALPN])
    assert stream.selected_alpn_protocol() == TUNNEL_ALPN
    return stream


async def closed_by_server(stream: trio.abc.Stream) -> bool:
    try:
        return await stream.receive_some(4096) == b""
    except trio.BrokenResourceError:
        return True


async def test_W2_a_connection_that_negotiates_jumpgate_tunnel_goes_to_the_tunnel_handler(tmp_path):
    peers: list = []
    async with running_cluster(tmp_path, tunnel_handler=echo_handler(peers)) as cluster:
        with trio.fail_after(10):
            tunnel = await open_tunnel(cluster.web.port)
            assert await echoes(tunnel, b"SSH-2.0-not-http\r\n")   # h11 would have answered 400
            await tunnel.aclose()
    [(peer, local)] = peers
    assert peer[0] == "127.0.0.1" and peer[1] > 0 and local == ("127.0.0.1", cluster.web.port)


@pytest.mark.parametrize("alpn", [["http/1.1"], None, ["h2", "http/1.1"], ["spdy/1"]])
async def test_W2_a_client_offering_only_http_still_gets_the_web_ui(tmp_path, alpn):
    peers: list = []
    async with running_cluster(tmp_path, tunnel_handler=echo_handler(peers)) as cluster:
        with trio.fail_after(10):
            stream = await open_tls(cluster.web.port, alpn=alpn)
            assert stream.selected_alpn_protocol() in ("http/1.1", None)
            await stream.send_all(http_request("GET", "/v1/ping"))
            answer = await stream.receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 200 ")
            await trio.aclose_forcefully(stream)
    assert peers == []


async def test_W2_without_a_tunnel_handler_the_tunnel_alpn_is_not_offered(tmp_path):
    async with running_cluster(tmp_path) as cluster:
        with trio.fail_after(10):
            stream = await open_tls(cluster.web.port, alpn=[TUNNEL_ALPN])
            assert stream.selected_alpn_protocol() is None   # so the node can say why
            await trio.aclose_forcefully(stream)


async def test_W2_many_tunnels_from_one_address_are_not_refused_by_the_web_caps(tmp_path):
    """The NAT case: 40 tunnels from 127.0.0.1 against HTTP caps of 2 per client and 4 in all."""
    peers: list = []
    limits = WebLimits(max_connections=4, max_connections_per_ip=2)
    async with running_cluster(tmp_path, limits=limits, tunnel_handler=echo_handler(peers)) as cluster:
        with trio.fail_after(60):
            tunnels = [await open_tunnel(cluster.web.port) for _ in range(40)]
            for number, tunnel in enumerate(tunnels):
                assert await echoes(tunnel, b"node %d" % number)
            # the HTTP caps are untouched by the tunnels: two HTTP connections fit, a third not
            held = [await open_tls(cluster.web.port) for _ in range(2)]
            await trio.testing.wait_all_tasks_blocked()
            assert await is_refused(cluster.web.port)
            for stream in held:
                await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            status, _, _ = await raw_exchange(cluster.web.port, http_request("GET", "/v1/ping"))
            assert status == 200
            for tunnel in tunnels:
                await tunnel.aclose()
    assert len(peers) == 40


async def test_W2_a_tunnel_that_does_not_complete_its_ssh_handshake_in_time_is_cut(tmp_path, caplog):
    caplog.set_level(logging.INFO, "jumpgate.web")
    limits = TunnelLimits(handshake_timeout=0.5)
    async with running_cluster(tmp_path, tunnel_handler=stalling_handler, tunnel_limits=limits) as cluster:
        with trio.fail_after(10):   # 20x the deadline
            tunnel = await open_tunnel(cluster.web.port)
            start = trio.current_time()
            assert await closed_by_server(tunnel)
            assert trio.current_time() - start >= 0.4
            await trio.aclose_forcefully(tunnel)
    assert "did not complete its SSH handshake within 0.5s: cut" in caplog.text


async def test_W2_tunnels_still_in_their_handshake_are_bounded(tmp_path, caplog):
    """Claiming the ALPN is no way around the web caps: the pending tunnels have a cap of
    their own, and one past it is closed at once."""
    limits = TunnelLimits(max_pending=2, handshake_timeout=60)
    async with running_cluster(tmp_path, tunnel_handler=stalling_handler, tunnel_limits=limits) as cluster:
        with trio.fail_after(10):
            held = [await open_tunnel(cluster.web.port) for _ in range(2)]
            await trio.testing.wait_all_tasks_blocked()
            third = await open_tunnel(cluster.web.port)
            assert await closed_by_server(third)
            await trio.aclose_forcefully(third)
            for stream in held:
                await trio.aclose_forcefully(stream)
    assert "refused a tunnel from 127.0.0.1" in caplog.text
    assert "2 tunnels are in their SSH handshake" in caplog.text


async def test_W2_open_tunnels_are_bounded_in_total(tmp_path):
    peers: list = []
    limits = TunnelLimits(max_tunnels=3)
    async with running_cluster(tmp_path, tunnel_handler=echo_handler(peers), tunnel_limits=limits) as cluster:
        with trio.fail_after(10):
            held = [await open_tunnel(cluster.web.port) for _ in range(3)]
            for tunnel in held:
                assert await echoes(tunnel, b"x")
            fourth = await open_tunnel(cluster.web.port)
            assert await closed_by_server(fourth)
            await held[0].aclose()
            await trio.testing.wait_all_tasks_blocked()
            again = await open_tunnel(cluster.web.port)
            assert await echoes(again, b"back")
            for stream in (fourth, again, *held[1:]):
                await trio.aclose_forcefully(stream)


class _Server(ssh_proto.SSHServer):
    async def auth_password(self, username, password):
        return password == "tunnel"


async def test_W4_ssh_runs_inside_the_tls_tunnel_and_its_handshake_stops_the_deadline(tmp_path):
    """SSH over the handed stream: the handler reports the SSH handshake done, so a tunnel that
    lives longer than the hand-off deadline is not cut."""
    host_key = PrivateKey.generate()
    authenticated = trio.Event()

    async def handler(stream, peer, local, *, task_status=trio.TASK_STATUS_IGNORED):
        def started() -> None:
            task_status.started()
            authenticated.set()
        await ssh_proto.serve_stream(stream, _Server, host_keys=[(host_key, None)], peer_address=peer,
                                     on_authenticated=started)

    seen = []

    def verify(key) -> None:
        seen.append(key)

    limits = TunnelLimits(handshake_timeout=2.0)
    async with running_cluster(tmp_path, tunnel_handler=handler, tunnel_limits=limits) as cluster:
        with trio.fail_after(30):
            tunnel = await open_tunnel(cluster.web.port)
            async with ssh_proto.connect("proxy", cluster.web.port, username="node", password="tunnel",
                                         known_hosts=verify, stream=tunnel) as conn:
                await authenticated.wait()
                await trio.sleep(limits.handshake_timeout + 0.5)   # past the deadline: still up
                assert not conn.closed.is_set()
    assert seen == [host_key.public_key]
