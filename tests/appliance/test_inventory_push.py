"""The proxy's directory sees adds and removes at once (docs/security.md R2, R4; issue 14 item 6).

A real auth server with its change feed on an SQLite file, and a proxy's API pool following
its push stream into a :class:`ClusterView` and a :class:`NodeDirectory`, as ``jumpgate start``
wires them. The admin's changes are made through a *second* storage connection on the same
file, as ``jumpgate ctl`` on the auth host makes them, then :func:`request_sync` knocks on the
feed's sync socket as ctl does. The feed's own tick is set to an hour, so nothing here can
pass by waiting for it.
"""
from __future__ import annotations

from functools import partial

import pytest
import trio

from _api_helpers import CLUSTER, FAST_HASHER, auth_host_identity, parse_cert
from appliance.api.client import ApiClient
from appliance.api.pool import ApiPool
from appliance.auth.server import serve_auth
from appliance.auth.service import AuthService
from appliance.auth.watch import ChangeFeed, request_sync
from appliance.cli.start import _node_lookup
from appliance.cluster_view import ClusterView
from appliance.proxy.routing import NodeDirectory
from appliance.storage import SQLiteStorage
from ssh_proto.keys import PrivateKey

LOOPBACK = "127.0.0.1"
SAFETY = 30.0  # a safety net only: every wait below ends on an event
NEVER = 3600.0  # the feed's tick: longer than any test


class Proxy:
    def __init__(self, view: ClusterView, directory: NodeDirectory, fetches: list[int], lookups: list[str]):
        self.view, self.directory, self.fetches, self.lookups = view, directory, fetches, lookups


@pytest.fixture
async def auth(nursery, tmp_path):
    db = tmp_path / "auth.db"
    storage = SQLiteStorage(db)
    service = await AuthService.create(storage, CLUSTER, hasher=FAST_HASHER)
    feed = ChangeFeed(storage, poll_interval=NEVER)
    await nursery.start(feed.run)
    sock = tmp_path / "feed.sock"
    await nursery.start(feed.serve_sync, sock)
    listener = await nursery.start(partial(serve_auth, service, service.ca, auth_host_identity(service),
                                           LOOPBACK, 0, feed=feed))
    return service, f"{LOOPBACK}:{listener.port}", db, sock


async def _proxy(nursery, service: AuthService, auth_addr: str) -> Proxy:
    key = PrivateKey.generate("ssh-ed25519")
    token = (await service.create_token("proxy", 600, addresses=[LOOPBACK])).token
    cert = parse_cert((await service.join(token, "proxy", "proxy1", key.public_key.blob, [LOOPBACK], {},
                                          f"{LOOPBACK}:3023")).host_cert)
    view = ClusterView()
    pool = ApiPool(partial(ApiClient.connect, auth_addr, identity=(key, cert), host_ca_key=service.ca.host_ca_public),
                   view=view)
    await nursery.start(pool.run)
    with trio.fail_after(SAFETY):
        await view.ready.wait()
    fetches: list[int] = []
    lookups: list[str] = []
    lookup = _node_lookup(pool)

    async def fetch():
        fetches.append(1)
        return await pool.list_nodes(labels={})

    async def counted_lookup(name):
        lookups.append(name)
        return await lookup(name)
    directory = NodeDirectory(fetch, lookup=counted_lookup, view=view)
    view.on_nodes_changed(directory.invalidate)
    return Proxy(view, directory, fetches, lookups)


async def test_r4_ctl_nodes_add_then_rm_is_routed_then_refused_the_moment_ctl_returns(auth, nursery):
    service, auth_addr, db, sock = auth
    proxy = await _proxy(nursery, service, auth_addr)
    ctl_storage = SQLiteStorage(db)   # what `jumpgate ctl` on the auth host opens
    ctl = await AuthService.create(ctl_storage, CLUSTER, hasher=FAST_HASHER)
    for i in range(10):
        await ctl.add_node(f"web{i}", f"10.0.0.{i + 1}:22")
        assert await request_sync(sock)
        node = await proxy.directory.resolve(f"web{i}", 22)
        assert node is not None and node.endpoint == (f"10.0.0.{i + 1}", 22)
        await ctl.remove_node(f"web{i}")
        assert await request_sync(sock)
        assert await proxy.directory.resolve(f"web{i}", 22) is None
        assert await proxy.directory.resolve(f"10.0.0.{i + 1}", 22) is None
    # every route came from the pushed inventory; each refusal asked the auth server once more
    # (a name with get_node, an address with a list: a push had just reset min_refresh)
    assert proxy.lookups == [f"web{i}" for i in range(10)] and len(proxy.fetches) == 10
    await ctl_storage.aclose()


async def test_r4_a_target_missing_from_the_view_is_looked_up_once_before_unknown_node(auth, nursery):
    service, auth_addr, db, _ = auth
    proxy = await _proxy(nursery, service, auth_addr)
    ctl_storage = SQLiteStorage(db)
    await (await AuthService.create(ctl_storage, CLUSTER, hasher=FAST_HASHER)).add_node("late", "10.0.0.9:22")
    assert "late" not in proxy.view.nodes       # no knock, and the feed's tick is an hour away
    node = await proxy.directory.resolve("late", 22)
    assert node is not None and node.endpoint == ("10.0.0.9", 22)
    assert await proxy.directory.resolve("nosuch", 22) is None
    assert proxy.lookups == ["late", "nosuch"] and proxy.fetches == []
    await ctl_storage.aclose()


async def test_r4_an_admin_api_call_is_answered_after_its_change_was_pushed(auth, nursery):
    service, auth_addr, _, _ = auth
    proxy = await _proxy(nursery, service, auth_addr)
    await service.add_node("apiadd", "10.0.0.7:22")   # in this process: storage wakes the feed
    with trio.fail_after(SAFETY):
        await proxy.view.wait_for(lambda: "apiadd" in proxy.view.nodes)
    await service.remove_node("apiadd")
    with trio.fail_after(SAFETY):
        await proxy.view.wait_for(lambda: "apiadd" not in proxy.view.nodes)


async def test_request_sync_without_a_running_auth_service_returns_false_at_once(tmp_path):
    with trio.fail_after(SAFETY):
        assert await request_sync(tmp_path / "feed.sock") is False
