"""The reverse tunnel's rules (docs/security.md N1-N5), over in-memory streams.

:func:`appliance.tunnel.server.serve_tunnel_stream` runs against a real ssh_proto client on a
``trio.testing.memory_stream_pair``: who may open a tunnel, what is registered, what a
refusal leaves behind (one log line, one audit event, the registry unchanged), the handshake
cap, and that a tunnel that ends marks its node offline unless a newer one replaced it.
"""
from __future__ import annotations

import logging
import time

import pytest
import trio
import trio.testing

import ssh_proto
from _proxy_helpers import CLUSTER, host_identity
from appliance.proxy.dialing import TunnelRegistry
from appliance.proxy.routing import NodeKey
from appliance.tunnel.agent import verify_proxy
from appliance.tunnel.protocol import NODE_CHANNEL, decode_relay
from appliance.tunnel.server import TunnelService, serve_tunnel_stream
from ssh_proto.certs import sign_certificate
from ssh_proto.keys import CERT_TYPE_USER, PrivateKey

PROXY_END = ("10.0.0.1", 3024)


class Env:
    def __init__(self, *, max_handshakes: int = 64):
        self.host_ca = PrivateKey.generate("ssh-ed25519")
        self.proxy = host_identity(self.host_ca, "proxy", "proxy1")
        self.events: list[dict] = []
        self.down: list[str] = []
        self.registry = TunnelRegistry()

        async def audit(event: dict) -> None:
            self.events.append(event)

        async def on_down(name: str) -> None:
            self.down.append(name)

        async def no_auth() -> trio.abc.Stream:
            raise OSError("no auth server in this test")

        self.service = TunnelService(CLUSTER, lambda: self.proxy, lambda: self.host_ca.public_key, no_auth,
                                     registry=self.registry, audit=audit, on_down=on_down,
                                     max_handshakes=max_handshakes)

    def node(self, name: str = "edge1"):
        return host_identity(self.host_ca, "node", name, extra=())

    def refusals(self) -> list[dict]:
        return [e for e in self.events if e["event"] == "tunnel.connect" and not e["success"]]


async def dial(nursery: trio.Nursery, env: Env, username: str, identity, *, host_ca=None):
    """An ssh_proto client over a memory stream to serve_tunnel_stream; yields the connection."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(lambda: serve_tunnel_stream(server, env.service, peer_address=("10.0.0.9", 40000),
                                                   local_address=PROXY_END))
    return ssh_proto.connect("proxy", 0, username=username, client_keys=[identity], stream=client,
                             known_hosts=verify_proxy((host_ca or env.host_ca).public_key), connect_timeout=10)


async def test_n1_a_node_with_its_host_certificate_is_registered_and_reached_through_a_channel():
    env = Env()
    key, cert = env.node()
    async with trio.open_nursery() as nursery:
        async with await dial(nursery, env, "edge1", (key, cert)) as conn:
            async def echo(channel, data):
                assert decode_relay(data) == PROXY_END  # the relay line names the proxy's end
                await channel.send_all(await channel.receive_some(100))
            conn.accept_channels(NODE_CHANNEL, echo)
            tunnel = env.registry.get(NodeKey(CLUSTER, "edge1"))
            assert tunnel is not None and tunnel.host_key == key.public_key.blob
            dialled = await env.registry.dial(NodeKey(CLUSTER, "edge1"), None)
            assert dialled.relay == PROXY_END and dialled.via == "tunnel"
            await dialled.stream.send_all(b"ping")
            assert await dialled.stream.receive_some(100) == b"ping"
            await dialled.stream.aclose()
        with trio.fail_after(10):
            while env.registry.get(NodeKey(CLUSTER, "edge1")) is not None:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [e["success"] for e in env.events] == [True]


async def test_n5_a_tunnel_that_ends_marks_its_node_offline_unless_a_newer_one_replaced_it():
    env = Env()
    key, cert = env.node()
    async with trio.open_nursery() as nursery:
        async with await dial(nursery, env, "edge1", (key, cert)):
            async with await dial(nursery, env, "edge1", (key, cert)):  # the same key: replaces the first
                pass
            # the second ended while the first is... replaced: the first still holds nothing
        with trio.fail_after(10):
            while not env.down:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert env.down == ["edge1"]  # once: the first one's end was covered by the newer tunnel
    assert len(env.registry) == 0


@pytest.mark.parametrize("case", ["user certificate", "another cluster", "plain key", "another name"])
async def test_n4_a_tunnel_without_this_clusters_node_certificate_is_refused_logged_and_audited(case, caplog):
    env = Env()
    key, cert = env.node()
    if case == "user certificate":
        now = int(time.time())
        cert = sign_certificate(env.host_ca, key.public_key, cert_type=CERT_TYPE_USER, key_id="node:edge1",
                                principals=["edge1"], valid_after=now - 60, valid_before=now + 3600)
        identity = (key, cert)
    elif case == "another cluster":
        identity = host_identity(PrivateKey.generate("ssh-ed25519"), "node", "edge1", extra=())
    elif case == "plain key":
        identity = key
    else:
        identity = (key, cert)  # node:edge1 claiming to be edge2
    caplog.set_level(logging.INFO, "jumpgate.tunnel")
    async with trio.open_nursery() as nursery:
        with pytest.raises(ssh_proto.AuthError):
            async with await dial(nursery, env, "edge2" if case == "another name" else "edge1", identity):
                pass
        nursery.cancel_scope.cancel()
    assert len(env.registry) == 0
    assert len(env.refusals()) >= 1 and all(not e["success"] for e in env.events)
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert lines and len({r.getMessage() for r in lines}) == 1


async def test_n4_a_second_tunnel_claiming_a_registered_name_with_another_key_is_refused(caplog):
    env = Env()
    first = env.node()
    impostor = env.node()  # a valid node:edge1 certificate for another key
    caplog.set_level(logging.INFO, "jumpgate.tunnel")
    async with trio.open_nursery() as nursery:
        async with await dial(nursery, env, "edge1", first):
            registered = env.registry.get(NodeKey(CLUSTER, "edge1"))
            with pytest.raises(ssh_proto.AuthError):
                async with await dial(nursery, env, "edge1", impostor):
                    pass
            assert env.registry.get(NodeKey(CLUSTER, "edge1")) is registered
            assert registered.host_key == first[0].public_key.blob
        nursery.cancel_scope.cancel()
    refusals = env.refusals()
    assert refusals and "another host key" in refusals[0]["fields"]["reason"]
    assert any("registered with another host key" in r.getMessage() for r in caplog.records)


async def test_n1_the_node_refuses_a_proxy_certified_by_another_clusters_ca():
    env = Env()
    async with trio.open_nursery() as nursery:
        with pytest.raises(ssh_proto.HostKeyNotVerifiable):
            async with await dial(nursery, env, "edge1", env.node(), host_ca=PrivateKey.generate("ssh-ed25519")):
                pass
        nursery.cancel_scope.cancel()
    assert len(env.registry) == 0


async def test_n3_handshakes_in_progress_are_capped(autojump_clock):
    env = Env(max_handshakes=1)
    silent, silent_server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_tunnel_stream(silent_server, env.service, peer_address=("10.0.0.9", 1)))
        await trio.sleep(1)  # the silent one holds the only slot (it never sends a version line)
        assert env.service.handshakes.value == 0
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(lambda: serve_tunnel_stream(server, env.service, peer_address=("10.0.0.9", 2)))
        with trio.move_on_after(5):
            await client.receive_some(100)  # no version line while the slot is taken
            pytest.fail("a second handshake started beyond the cap")
        await silent.aclose()  # the first ends (its login grace would end it anyway): the slot frees
        with trio.fail_after(60):
            assert (await client.receive_some(100)).startswith(b"SSH-2.0-")
        nursery.cancel_scope.cancel()
