"""Issue 15, "Inventory and labels": which nodes `jumpgate ls` shows, and how it shows them.

A node that missed 3 heartbeats is hidden from ``jumpgate ls`` (``--all`` shows it, marked
offline) and is back at its next heartbeat; an agentless OpenSSH node never heartbeats and is
never offline for that. ``jumpgate ls`` runs as a subprocess against a real proxy whose
directory reads a real auth service (in-memory SQLite, a clock the test moves); the heartbeat
loop itself runs on Trio's MockClock against the same auth rules.
"""
from __future__ import annotations

import json
import pytest
import trio

from _auth_helpers import FakeClock, make_env
from _proxy_helpers import LOOPBACK, NODE, jumpgate, proxy_fixtures
from appliance.inventory import HEARTBEAT_INTERVAL, MISSED_HEARTBEATS, NodeRecord
from appliance.membership import heartbeat_loop

login, cluster, profile = proxy_fixtures("live")


@pytest.fixture
async def auth(cluster):
    """The proxy's directory reads this auth service: node1 joined, db1 and db2 joined, web1
    agentless (``ctl nodes add``)."""
    env = await make_env(clock=FakeClock())
    now = env.clock.now
    for name, addr, labels in ((NODE, f"{LOOPBACK}:{cluster.node_port}", {"env": "test"}),
                               ("db2", "10.0.0.12:3022", {"env": "prod", "role": "db"}),
                               ("db1", "10.0.0.11:3022", {"env": "prod", "role": "db"})):
        await env.storage.put_node(NodeRecord(name, "node", addr, labels, now, created=now))  # as a join does
    await env.service.add_node("web1", "10.0.0.20:22", {"env": "prod", "role": "web"})
    cluster.source = env.service.list_nodes
    return env


def _rows(done) -> dict[str, list[str]]:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    end = lines.index("")
    return {line.split()[0]: line.split()[1:] for line in lines[2:end]} | {"#": [lines[end + 1]]}


async def _miss_heartbeats(env, *alive: str) -> None:
    """Three heartbeat intervals (and a second) pass; only ``alive`` heartbeat meanwhile."""
    env.clock.advance(MISSED_HEARTBEATS * HEARTBEAT_INTERVAL + 1)
    for name in alive:
        await env.service.heartbeat(name, "", {"env": "test"} if name == NODE else {"env": "prod", "role": "db"})


async def test_a_node_that_missed_3_heartbeats_is_hidden_shown_by_all_and_back_at_its_next(cluster, profile, auth):
    assert list(_rows(await jumpgate(profile, "ls"))) == ["db1", "db2", NODE, "web1", "#"]   # sorted
    await _miss_heartbeats(auth, NODE, "db1")                  # db2 is silent
    rows = _rows(await jumpgate(profile, "ls"))
    assert list(rows) == ["db1", NODE, "web1", "#"]            # the agentless web1 never heartbeats: kept
    assert rows["#"] == ["3 nodes (1 offline not shown: jumpgate ls --all)"]
    rows = _rows(await jumpgate(profile, "ls", "--all"))
    assert rows["db2"][0] == "offline" and rows["db1"][0] == "online" and rows["web1"][0] == "agentless"
    assert rows["#"] == ["4 nodes"]
    await auth.service.heartbeat("db2", "", {"env": "prod", "role": "db"})   # it reconnected
    assert list(_rows(await jumpgate(profile, "ls"))) == ["db1", "db2", NODE, "web1", "#"]


async def test_two_heartbeats_missed_is_not_yet_offline(cluster, profile, auth):
    auth.clock.advance(MISSED_HEARTBEATS * HEARTBEAT_INTERVAL - 1)
    assert "db2" in _rows(await jumpgate(profile, "ls"))


async def test_mark_offline_hides_a_node_at_once_until_it_heartbeats(cluster, profile, auth):
    """The hook a dropped reverse tunnel calls: offline now, not three intervals from now."""
    auth.service.mark_offline("db1")
    assert "db1" not in _rows(await jumpgate(profile, "ls"))
    await auth.service.heartbeat("db1", "", {"env": "prod", "role": "db"})
    assert "db1" in _rows(await jumpgate(profile, "ls"))


async def test_ls_selectors_are_anded_as_words_or_a_comma_list(cluster, profile, auth):
    for words in (["env=prod", "role=db"], ["env=prod,role=db"]):
        rows = _rows(await jumpgate(profile, "ls", *words))
        assert list(rows) == ["db1", "db2", "#"] and rows["#"] == ["2 nodes"]
    assert list(_rows(await jumpgate(profile, "ls", "env=prod", "role=nothing"))) == ["#"]


async def test_ls_format_names_and_json_are_sorted_and_leave_offline_nodes_out_unless_all(cluster, profile, auth):
    await _miss_heartbeats(auth, NODE, "db1")
    done = await jumpgate(profile, "ls", "--format", "names", "env=prod")
    assert done.returncode == 0 and done.stdout == b"db1\nweb1\n"
    done = await jumpgate(profile, "ls", "--format", "names", "--all", "env=prod")
    assert done.stdout == b"db1\ndb2\nweb1\n"
    done = await jumpgate(profile, "ls", "--format", "json", "--all", "role=db")
    listed = json.loads(done.stdout)
    assert [(n["name"], n["offline"]) for n in listed] == [("db1", False), ("db2", True)]
    assert listed[0]["labels"] == {"env": "prod", "role": "db"} and listed[0]["kind"] == "node"


# ----------------------------------------------------------------- the heartbeat loop on MockClock

class _InMemoryApi:
    """The auth API as a node's heartbeat loop sees it, answered by the real auth service."""

    def __init__(self, service):
        self.service = service

    def connect(self):
        return self

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def heartbeat(self, *, name, addr, labels, tunnel):
        return await self.service.heartbeat(name, addr, labels, tunnel)


async def test_the_heartbeat_loop_keeps_a_node_online_and_3_missed_intervals_take_it_offline(mock_clock):
    """Time moves only when the test jumps the MockClock (storage runs in threads, so no autojump);
    each step waits for the loop's own ``on_beat``."""
    env = await make_env(clock=mock_clock.current_time)   # the auth service reads the same clock
    env.service.hosts.heartbeat_interval = 5.0
    await env.storage.put_node(NodeRecord("db1", "node", "10.0.0.11:3022", {}, trio.current_time()))
    api, beats = _InMemoryApi(env.service), trio.Semaphore(0, max_value=1)

    async def offline() -> bool:
        return next(n for n in await env.service.list_nodes() if n.name == "db1").offline

    def run_loop(scope: trio.CancelScope):
        async def run():
            with scope:
                await heartbeat_loop(api.connect, "db1", "10.0.0.11:3022", dict, interval=5.0,
                                     on_beat=lambda: beats.release() if beats.value == 0 else None)
        return run

    async with trio.open_nursery() as nursery:
        node = trio.CancelScope()
        nursery.start_soon(run_loop(node))
        await beats.acquire()
        for _ in range(12):                            # a minute of heartbeats every 5 s: always online
            mock_clock.jump(5.0)
            await beats.acquire()
            assert not await offline()
        node.cancel()                                  # the node stops (or its host dies)
        mock_clock.jump(2 * 5.0 + 1)
        assert not await offline()                     # two missed: not yet
        mock_clock.jump(5.0)
        assert await offline()                         # the third missed
        nursery.start_soon(run_loop(trio.CancelScope()))
        await beats.acquire()
        assert not await offline()                     # back at its first heartbeat
        nursery.cancel_scope.cancel()
