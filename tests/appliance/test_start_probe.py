"""`jumpgate start --roles node --auth-server HOST:3025` costs the auth port no penalty.

The node probes ``--auth-server`` to tell an auth port from a proxy's web port
(:func:`appliance.tunnel.transport.open_probed`). A probe that hung up unauthenticated would
add a ``noauth`` penalty to the node's source at the auth listener (docs/security.md L9), and a
fleet behind one NAT starting at once would be refused: the probed connection carries the
join, or, for a node already joined, its first API connection. The auth listener's own
admission table is what is checked.
"""
from __future__ import annotations

import socket

import trio

from appliance.cli.start import run_services
from appliance.config import load_config

from _api_helpers import running_auth

LOCAL = ("127.0.0.1", 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _start_node_until_seen(env, cfg) -> None:
    """Run the node's services until the auth server has its heartbeat, then stop them."""
    async def last_seen() -> float:
        return max([n.last_seen for n in await env.service.list_nodes() if n.name == "n1"] or [0.0])

    before = await last_seen()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_services, cfg)
        with trio.fail_after(30):
            while await last_seen() <= before:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_L9_a_node_started_with_auth_server_host_3025_leaves_no_penalty_at_the_auth_port(tmp_path):
    async with running_auth() as env:
        admission = env.listener.admission
        cfg = load_config(None, data_dir=str(tmp_path / "data"), services=("node",), auth_server=env.addr,
                          token=await env.token(addresses=["127.0.0.1"]), node_name="n1",
                          listen_addr="127.0.0.1", public_addr="127.0.0.1", port_overrides={"node": _free_port()})
        await _start_node_until_seen(env, cfg)       # joins on the probed connection
        await trio.sleep(0.2)                         # every connection it closed has been accounted
        assert admission.penalty(LOCAL) == 0.0
        await _start_node_until_seen(env, cfg)       # joined already: the first API connection is the probe's
        await trio.sleep(0.2)
        assert admission.penalty(LOCAL) == 0.0
