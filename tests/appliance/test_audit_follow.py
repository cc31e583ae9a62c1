"""``ctl audit --follow`` rides the push stream (issue 14 item 17): an admin watcher of the
``jumpgate-watch`` subsystem gets the audit log and nothing else, nodes and proxies never get
it, and a follower that falls behind is cut, not buffered."""
from __future__ import annotations

import argparse
from functools import partial

import pytest
import trio
import trio.testing

from _api_helpers import CLUSTER, FAST_HASHER, OffsetClock, auth_host_identity
from appliance.api.client import ApiClient, ApiError
from appliance.audit import make_event
from appliance.auth import watch
from appliance.auth.server import serve_auth
from appliance.auth.service import AuthService
from appliance.auth.watch import ChangeFeed
from appliance.cli import ctl
from appliance.cli.errors import CliError
from appliance.storage import SQLiteStorage
from ssh_proto.keys import PrivateKey

SAFETY = 30.0


@pytest.fixture
async def auth(nursery, tmp_path):
    clock = OffsetClock()
    storage = SQLiteStorage(tmp_path / "auth.db", clock=clock)
    service = await AuthService.create(storage, CLUSTER, clock=clock, hasher=FAST_HASHER)
    feed = ChangeFeed(storage, clock=clock, poll_interval=0.05)
    await nursery.start(feed.run)
    listener = await nursery.start(partial(serve_auth, service, service.ca, auth_host_identity(service),
                                           "127.0.0.1", 0, clock=clock, feed=feed))
    return service, feed, f"127.0.0.1:{listener.port}"


async def _identity(service: AuthService, name: str, roles=("admin",)):
    from _api_helpers import parse_cert
    await service.create_user(name, [name], list(roles))
    key = PrivateKey.generate()
    return key, parse_cert((await service.sign_user_cert(name, key.public_key.blob, 3600)).cert)


def _args(**kw) -> argparse.Namespace:
    base = dict(type="", user="", since="", limit=50, follow=True, format="json")
    return argparse.Namespace(**{**base, **kw})


class Output:
    """What the follower printed so far (capsys, accumulated), as JSON lines."""

    def __init__(self, capsys) -> None:
        self.capsys = capsys
        self.text = ""

    async def wait_for(self, predicate) -> list[dict]:
        import json
        with trio.fail_after(SAFETY):
            while True:
                self.text += self.capsys.readouterr().out
                events = [json.loads(line) for line in self.text.splitlines() if line.strip()]
                if predicate(events):
                    return events
                await trio.sleep(0.05)


async def test_u5_ctl_audit_follow_prints_the_backlog_then_new_events_from_the_push_stream(auth, nursery, capsys):
    service, _, addr = auth
    identity = await _identity(service, "root")
    await service.create_token("node", 600, actor="user:root")          # the backlog
    out = Output(capsys)
    async with ApiClient.connect(addr, identity=identity, host_ca_key=service.ca.host_ca_public) as api:
        backend = ctl._Backend(api.call, data_dir=None, host="127.0.0.1", web_port=3080, actor="",
                               watch=api.watch)
        args = _args(type="token.*")
        async with trio.open_nursery() as inner:
            inner.start_soon(ctl._follow, backend, args, ctl._audit_filters(args))
            await out.wait_for(lambda events: len(events) == 1)
            await service.create_user("bob", ["bob"], actor="user:root")    # filtered out
            await service.create_token("proxy", 600, actor="user:root")    # followed
            events = await out.wait_for(lambda events: len(events) == 2)
            inner.cancel_scope.cancel()
    assert [(e["event"], e["fields"]["kind"]) for e in events] == [("token.create", "node"), ("token.create", "proxy")]
    assert events[0]["id"] < events[1]["id"]


async def test_u5_nodes_and_proxies_never_get_audit_events_and_admins_get_nothing_else(auth):
    service, feed, _ = auth
    with feed.subscribe("node") as node, feed.subscribe("proxy") as proxy, feed.subscribe("admin") as admin:
        await service.create_user("carol", ["carol"], actor="user:root")
        await service.delete_user("carol", actor="user:root")            # a user push
        await service.add_node("web1", "10.0.0.7:22", actor="user:root")
        await trio.sleep(0.3)
        kinds = {name: [p.kind for p in _drain(sub)] for name, sub in
                 (("node", node), ("proxy", proxy), ("admin", admin))}
    assert "audit" not in kinds["node"] and "audit" not in kinds["proxy"]
    assert set(kinds["admin"]) == {"audit"} and len(kinds["admin"]) == 3
    assert "node" in kinds["proxy"] and "user" in kinds["node"]


def _drain(subscriber) -> list:
    pushes = []
    while True:
        try:
            _change_id, push = subscriber.receive.receive_nowait()
            pushes.append(push)
        except (trio.WouldBlock, trio.EndOfChannel):
            return pushes


async def test_u5_a_follower_that_does_not_read_is_cut_not_buffered(monkeypatch, tmp_path):
    """A watcher whose send is blocked (the peer reads nothing: a full window) is cut as
    soon as it falls SUBSCRIBER_QUEUE pushes behind: serve returns, the queue is dropped."""
    monkeypatch.setattr(watch, "SUBSCRIBER_QUEUE", 8)
    storage = SQLiteStorage(":memory:")
    feed = ChangeFeed(storage, poll_interval=3600)
    class Blocked(trio.abc.SendStream):
        async def send_all(self, data) -> None:
            await trio.sleep_forever()

        async def wait_send_all_might_not_block(self) -> None:
            await trio.sleep_forever()

        async def aclose(self) -> None:
            pass

    async with trio.open_nursery() as nursery:
        served = trio.Event()

        async def serve():
            await feed.serve(Blocked(), "admin")
            served.set()

        nursery.start_soon(serve)
        await trio.sleep(0.1)
        assert len(feed._subscribers) == 1
        await storage.append_audit_batch([make_event("user.create", time=1.0, user=f"u{i}") for i in range(20)])
        await feed.poll()
        with trio.fail_after(SAFETY):
            await served.wait()
    assert not feed._subscribers
    await storage.aclose()


async def test_u5_the_follower_says_when_its_stream_ends(capsys):
    async def call(method, **params):
        return []

    async def watch_(on_push):
        from appliance.api.protocol import Push
        on_push(Push("snapshot", {"audit_last_id": 0}))

    backend = ctl._Backend(call, data_dir=None, host="h", web_port=1, actor="", watch=watch_)
    with pytest.raises(CliError, match="the audit stream ended"):
        await ctl._follow(backend, _args(), ctl._audit_filters(_args()))
