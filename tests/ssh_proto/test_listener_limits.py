"""The limit attacks against a real listener on loopback (docs/security.md § Limits).

Each test runs the attack itself — a peer that never reads, a flood of connections from many
loopback sources, too many channels — and shows it fail while the server keeps serving.
Every wait is on an event (or on Trio's scheduler going quiet, ``wait_all_tasks_blocked``);
the ``fail_after`` bounds are safety nets far above the expected times.
"""
from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

import floods
import ssh_proto
from ssh_proto import events as ev
from ssh_proto import messages as m
from ssh_proto.channels import PENDING_SESSION_WINDOW
from ssh_proto.connection import MAX_UNSENT_BEFORE_AUTH
from ssh_proto.trio_io.connection import PREAUTH_RECEIVE_SIZE
from ssh_proto.keys import PrivateKey

HOST_KEY = PrivateKey.generate("ssh-ed25519")
PASSWORD = "correct horse"
SAFETY = 60  # seconds: a net under every wait, never what a test waits for
QUIET = 0.2  # Trio's scheduler quiet this long: nothing can move any more


class Recorded(ssh_proto.SSHServer):
    """Accepts the password; keeps its connections, with small kernel socket buffers."""

    connections: list[ssh_proto.SSHServerConnection] = []

    def connection_made(self, conn):
        super().connection_made(conn)
        floods.shrink_buffers(conn._stream.socket, socket.SO_SNDBUF)
        type(self).connections.append(conn)

    async def auth_password(self, username, password):
        return password == PASSWORD


def recorded() -> type[Recorded]:
    return type("RecordedServer", (Recorded,), {"connections": []})


async def serve(nursery, factory, **kw) -> ssh_proto.SSHListener:
    return await nursery.start(lambda task_status: ssh_proto.serve(
        factory, floods.LOOPBACK, 0, host_keys=[(HOST_KEY, None)], task_status=task_status, **kw))


# ---- L6: a peer that sends requests and never reads ------------------------------------------------

async def test_L6_preauth_peer_that_never_reads_is_not_read_either(nursery):
    factory = recorded()
    listener = await serve(nursery, factory)
    attacker = await floods.RawClient.connect(listener.port, small_buffers=True)
    with trio.fail_after(SAFETY):
        await attacker.handshake()
    # 10,000 unknown message numbers, each answered with UNIMPLEMENTED (~320 kB of replies),
    # then 32 MiB of IGNORE: more than the kernel buffers between us can hold
    attacker.queue(bytes([200]), 10_000)
    attacker.queue(m.Ignore(bytes(250_000)).encode(), 128)
    sent = trio.Event()

    async def flood():
        await attacker.send_queued()
        sent.set()

    async with trio.open_nursery() as attack:
        attack.start_soon(flood)
        with trio.fail_after(SAFETY):
            await trio.testing.wait_all_tasks_blocked(QUIET)
        (conn,) = factory.connections
        assert not sent.is_set(), "the server read the whole flood"
        assert conn.core.reading_paused(conn._queued)
        # the bound, overshot at most by the replies to one (small) pre-auth read
        assert conn.core.transport.unsent_output + conn._queued <= MAX_UNSENT_BEFORE_AUTH + 2 * PREAUTH_RECEIVE_SIZE
        attack.cancel_scope.cancel()
    await attacker.aclose()


async def test_L6_unread_replies_after_login_end_the_connection(nursery):
    factory = recorded()
    listener = await serve(nursery, factory)
    attacker = await floods.RawClient.connect(listener.port, small_buffers=True)
    with trio.fail_after(SAFETY):
        await attacker.login_with_password(PASSWORD)
    attacker.queue(bytes([200]), 60_000)   # ~1.9 MB of UNIMPLEMENTED replies, never read
    (conn,) = factory.connections
    async with trio.open_nursery() as attack:
        attack.start_soon(attacker.send_queued)
        with trio.fail_after(SAFETY):
            await conn.closed.wait()
        attack.cancel_scope.cancel()
    assert isinstance(conn.error, ssh_proto.ProtocolError)
    assert "does not read our replies" in conn.error.description
    await attacker.aclose()
    # the listener is unharmed
    async with ssh_proto.connect(floods.LOOPBACK, listener.port, username="alice", password=PASSWORD,
                                 known_hosts=None) as ok:
        assert ok.core.authenticated


async def test_L6_bulk_data_both_ways_after_login_still_flows(nursery):
    """The reader must keep reading after login: two peers pushing bulk at each other."""

    class Echo(ssh_proto.SSHServer):
        async def auth_password(self, username, password):
            return True

        async def session(self, session):
            while data := await session.receive_some():
                await session.send_all(data)
            return 0

    listener = await serve(nursery, Echo)
    async with ssh_proto.connect(floods.LOOPBACK, listener.port, username="a", password="x",
                                 known_hosts=None) as conn:
        with trio.fail_after(SAFETY):
            result = await conn.run("cat", input=bytes(8 * 1024 * 1024))
        assert len(result.stdout) == 8 * 1024 * 1024


@pytest.mark.parametrize("method", ["none"])
async def test_L6_a_stream_of_none_requests_ends_at_max_auth_tries(nursery, method):
    factory = recorded()
    listener = await serve(nursery, factory)
    attacker = await floods.RawClient.connect(listener.port)
    with trio.fail_after(SAFETY):
        await attacker.handshake()
    request = m.UserauthRequest("mallory", "ssh-connection", method, b"").encode()
    attacker.queue(request, 100)
    await attacker.send_queued()
    (conn,) = factory.connections
    with trio.fail_after(SAFETY):
        await conn.closed.wait()
    assert conn.core.server_auth.failures == 6
    assert "too many authentication failures" in conn.error.description
    await attacker.aclose()


# ---- L4: sessions opened and never started ------------------------------------------------------

async def test_L4_a_thousand_sessions_opened_and_never_started_pin_at_most_the_window_budget(nursery):
    budget = 16 * 1024 * 1024
    factory = recorded()
    listener = await serve(nursery, factory, options=ssh_proto.ConnectionOptions(window_budget=budget))
    attacker = floods.RawClient(await floods.open_from(floods.LOOPBACK, listener.port),
                                options=ssh_proto.ConnectionOptions(max_channels=2000, window=32768))
    with trio.fail_after(SAFETY):
        await attacker.login_with_password(PASSWORD)
        opened = [attacker.core.channels.open("session") for _ in range(1000)]
        answers = await attacker.read_events((ev.ChannelOpenConfirmed, ev.ChannelOpenFailed), len(opened))
    confirmed = [a.channel_id for a in answers if isinstance(a, ev.ChannelOpenConfirmed)]
    failed = [a for a in answers if isinstance(a, ev.ChannelOpenFailed)]
    assert len(confirmed) == budget // PENDING_SESSION_WINDOW
    assert {(f.code, f.description) for f in failed} == {
        (m.OPEN_RESOURCE_SHORTAGE, f"receive window budget of this connection exhausted ({budget} bytes)")}
    # fill every window the server gave, and never start a session
    for cid in confirmed:
        attacker.core.channels.send_data(cid, bytes(attacker.core.channels.send_capacity(cid)))
    async with trio.open_nursery() as attack:
        attack.start_soon(attacker.send_queued)
        with trio.fail_after(SAFETY):
            await trio.testing.wait_all_tasks_blocked(QUIET)
        (conn,) = factory.connections
        buffered = sum(ch._stdout.size for ch in conn._channels.values())
        assert buffered == len(confirmed) * PENDING_SESSION_WINDOW <= budget
        assert conn.core.channels.window_granted <= budget
        attack.cancel_scope.cancel()
    await attacker.aclose()
