"""The limit attacks against a real listener on loopback (docs/security.md § Limits).

Each test runs the attack itself — a peer that never reads, a flood of connections from many
loopback sources, too many channels — and shows it fail while the server keeps serving.
Every wait is on an event (or on Trio's scheduler going quiet, ``wait_all_tasks_blocked``);
the ``fail_after`` bounds are safety nets far above the expected times.
"""
from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

import floods
import ssh_proto
from ssh_proto import events as ev
from ssh_proto import messages as m
from ssh_proto.connection import MAX_UNSENT_BEFORE_AUTH
from ssh_proto.trio_io.connection import PREAUTH_RECEIVE_SIZE
from ssh_proto.keys import PrivateKey

HOST_KEY = PrivateKey.generate("ssh-ed25519")
PASSWORD = "correct horse"
SAFETY = 60  # seconds: a net under every wait, never what a test waits for
QUIET = 0.2  # Trio's scheduler quiet this long: nothing can move any more


class Recorded(ssh_proto.SSHServer):
    """Accepts the password; keeps its connections, with small kernel socket buffers, and
    reports each one's end on ``ended`` (after the listener accounted for it)."""

    connections: list[ssh_proto.SSHServerConnection] = []
    ended: trio.MemorySendChannel

    def connection_made(self, conn):
        super().connection_made(conn)
        floods.shrink_buffers(conn._stream.socket, socket.SO_SNDBUF)
        type(self).connections.append(conn)

    def connection_lost(self, error):
        type(self).ended.send_nowait(self.conn)

    async def auth_password(self, username, password):
        return password == PASSWORD


def recorded() -> type[Recorded]:
    send, receive = trio.open_memory_channel(math.inf)
    return type("RecordedServer", (Recorded,), {"connections": [], "ended": send, "endings": receive})


async def wait_ended(factory, count: int) -> None:
    """Until ``count`` more connections ended on the server (and were accounted)."""
    with trio.fail_after(SAFETY):
        for _ in range(count):
            await factory.endings.receive()


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
    # a pending session's window is 64 KiB, but the budget keeps one packet (32 KiB) for each
    # of the 1,024 channels a connection may hold: 512 sessions of 32 KiB fill the 16 MiB
    windows = [attacker.core.channels.send_capacity(cid) for cid in confirmed]
    assert windows == [32768] * 512 and sum(windows) == budget
    assert {(f.reason, f.description) for f in failed} == {
        (m.OPEN_RESOURCE_SHORTAGE, f"receive window budget of this connection exhausted ({budget} bytes)")}
    # fill every window the server gave, and never start a session
    for cid, window in zip(confirmed, windows):
        attacker.core.channels.send_data(cid, bytes(window))
    async with trio.open_nursery() as attack:
        attack.start_soon(attacker.send_queued)
        with trio.fail_after(SAFETY):
            await trio.testing.wait_all_tasks_blocked(QUIET)
        (conn,) = factory.connections
        buffered = sum(ch._stdout.size for ch in conn._channels.values())
        assert buffered == sum(windows) <= budget
        assert conn.core.channels.window_granted <= budget
        attack.cancel_scope.cancel()
    await attacker.aclose()


# ---- L8, L9, L10: floods from many sources ---------------------------------------------------------

async def _hold(streams: list, source: str, port: int) -> None:
    try:
        streams.append(await floods.hold_preauth(source, port))
    except OSError:
        pass  # refused at the door (closed before the connect completed): that is the point


async def test_L8_a_flood_from_many_sources_does_not_stop_a_login_from_another(nursery):
    """1,000 junk pre-auth connections from 250 other loopback addresses, still arriving while
    a real login from 127.0.0.1 runs: the login succeeds (before, the MaxStartups drop
    refused it at once)."""
    factory = recorded()
    listener = await serve(nursery, factory)          # ssh_proto's default profile: MaxStartups 10:30:100
    held: list[trio.SocketStream] = []

    async def flood(first: int, count: int) -> None:
        for n in range(first, first + count):
            await _hold(held, floods.source_address(n % 250), listener.port)

    with trio.fail_after(SAFETY):
        await flood(0, 500)
        await trio.testing.wait_all_tasks_blocked(QUIET)   # the server has taken them all in
    assert listener.admission.startups == 100         # full: the flood holds every slot
    async with trio.open_nursery() as attack:
        attack.start_soon(flood, 500, 500)                 # and keeps arriving during the login
        with trio.fail_after(SAFETY):
            async with ssh_proto.connect(floods.LOOPBACK, listener.port, username="alice", password=PASSWORD,
                                         known_hosts=None) as conn:
                assert (await conn.run("true")).exit_status is not None
    assert listener.admission.startups <= 100
    for stream in held:
        await trio.aclose_forcefully(stream)


async def test_L8_per_source_startups_are_capped_and_other_sources_are_not(nursery):
    listener = await serve(nursery, recorded(), profile=ssh_proto.ListenerProfile(per_source_max_startups=3))
    held = [await floods.hold_preauth("127.0.0.2", listener.port) for _ in range(3)]
    for stream in held:
        assert (await stream.receive_some()).startswith(b"SSH-2.0-")
    extra = await floods.open_from("127.0.0.2", listener.port)
    with trio.fail_after(SAFETY):
        assert await extra.receive_some() == b""        # closed unanswered: the 4th from that source
    async with ssh_proto.connect(floods.LOOPBACK, listener.port, username="alice", password=PASSWORD,
                                 known_hosts=None):
        pass
    for stream in [*held, extra]:
        await trio.aclose_forcefully(stream)


async def _failed_login(port: int, source: str) -> None:
    with pytest.raises(ssh_proto.AuthError):
        async with ssh_proto.connect(floods.LOOPBACK, port, username="mallory", password="wrong",
                                     known_hosts=None, stream=await floods.open_from(source, port)):
            pass


async def test_L9_a_source_that_keeps_failing_is_refused_and_another_still_logs_in(nursery, caplog):
    caplog.set_level("INFO", logger="ssh_proto.server")
    factory = recorded()
    profile = ssh_proto.ListenerProfile(penalties=ssh_proto.Penalties(authfail=10.0))
    listener = await serve(nursery, factory, profile=profile)
    with trio.fail_after(SAFETY):
        for _ in range(2):                            # 2 x 10 s >= the 15 s minimum
            await _failed_login(listener.port, "127.0.0.2")
        await wait_ended(factory, 2)
        assert listener.admission.penalised(("127.0.0.2", 0))
        refused = await floods.open_from("127.0.0.2", listener.port)
        assert await refused.receive_some() == b""    # no banner, no work
        async with ssh_proto.connect(floods.LOOPBACK, listener.port, username="alice", password=PASSWORD,
                                     known_hosts=None):
            pass
    assert any("refused a connection from 127.0.0.2" in r.getMessage() and "penalty" in r.getMessage()
               for r in caplog.records)
    await refused.aclose()


async def test_L10_pre_auth_key_exchanges_per_source_are_rate_limited(nursery):
    """DHEat: one source doing handshake after handshake gets `burst` of them, then refusals."""
    factory = recorded()
    profile = ssh_proto.ListenerProfile(per_source_rate=(0.5, 5), max_startups=(100, 30, 100))
    listener = await serve(nursery, factory, profile=profile)
    done = refused = 0
    with trio.fail_after(SAFETY):
        for _ in range(20):
            attacker = await floods.RawClient.connect(listener.port, source="127.0.0.2")
            try:
                await attacker.handshake()
                done += 1
            except (trio.BrokenResourceError, ssh_proto.SSHError):
                refused += 1
            await attacker.aclose()
        async with ssh_proto.connect(floods.LOOPBACK, listener.port, username="alice", password=PASSWORD,
                                     known_hosts=None):
            pass
    kexes = sum(conn.core.transport.kex_count for conn in factory.connections if conn.peer_address[0] == "127.0.0.2")
    assert done == kexes <= 6 and refused >= 14     # the burst (and a token that came back, at most)


# ---- L2: authenticated connections per user and in total ------------------------------------------

async def test_L2_a_user_past_the_per_user_limit_gets_a_clear_disconnect(nursery, caplog):
    caplog.set_level("INFO", logger="ssh_proto.server")
    profile = ssh_proto.ListenerProfile(max_authenticated_per_user=2, max_authenticated=3)
    factory = recorded()
    listener = await serve(nursery, factory, profile=profile)

    def login(user):
        return ssh_proto.connect(floods.LOOPBACK, listener.port, username=user, password=PASSWORD,
                                 known_hosts=None)

    with trio.fail_after(SAFETY):
        async with login("alice"), login("alice"):
            with pytest.raises(ssh_proto.DisconnectError) as info:
                async with login("alice"):
                    pass
            assert info.value.reason == ssh_proto.DisconnectReason.TOO_MANY_CONNECTIONS
            assert info.value.description == "too many connections for user alice (limit 2)"
            async with login("bob"):                  # bob has his own count ...
                with pytest.raises(ssh_proto.DisconnectError) as total:
                    async with login("carol"):        # ... but the listener's total is 3
                        pass
                assert "too many connections to this server (limit 3)" in total.value.description
        async with login("alice"):                    # the slots came back
            pass
    assert any("refused the login of alice" in r.getMessage() and "limit 2" in r.getMessage()
               for r in caplog.records)
    await wait_ended(factory, len(factory.connections))
    assert listener.admission.authenticated == 0 and not listener.admission.penalised(("127.0.0.1", 0))


# ---- L3: remote forwards per connection -----------------------------------------------------------

async def test_L3_remote_forwards_per_connection_are_capped(nursery, caplog):
    caplog.set_level("INFO", logger="ssh_proto")

    class Forwarding(Recorded):
        async def tcpip_forward(self, address, port):
            return True

    factory = type("F", (Forwarding,), {"connections": []})
    listener = await serve(nursery, factory, options=ssh_proto.ConnectionOptions(max_remote_forwards=3))
    async with ssh_proto.connect(floods.LOOPBACK, listener.port, username="alice", password=PASSWORD,
                                 known_hosts=None) as conn:
        for _ in range(3):
            await conn.forward_remote_port(floods.LOOPBACK, 0, floods.LOOPBACK, 9)
        with pytest.raises(ssh_proto.ChannelOpenError):
            await conn.forward_remote_port(floods.LOOPBACK, 0, floods.LOOPBACK, 9)
        assert len(factory.connections[0].remote_forwards) == 3
        assert (await conn.run("true")).exit_status is not None   # the connection is unharmed
    assert any("too many remote forwards on this connection (limit 3)" in r.getMessage() for r in caplog.records)


# ---- L1: accept() out of descriptors --------------------------------------------------------------

FD_SERVER = Path(__file__).with_name("fd_limited_server.py")


async def _lines(stream, into: list[str], seen: dict[str, trio.Event]) -> None:
    """Collect a subprocess's lines; set ``seen[text]`` once a line contains ``text``."""
    buffer = b""
    while data := await stream.receive_some(65536):
        buffer += data
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace")
            into.append(line)
            for text, event in seen.items():
                if text in line:
                    event.set()


async def test_L1_accept_loop_survives_emfile(nursery):
    """A process with 256 descriptors, flooded with logins until accept() fails with EMFILE:
    its listeners stay up, an established connection keeps working, and both listeners
    accept again once the flood is gone (before, the EMFILE ended the listener's nursery)."""
    proc = await trio.lowlevel.open_process([sys.executable, str(FD_SERVER), "256"],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stderr: list[str] = []
        emfile, recovered = trio.Event(), trio.Event()
        nursery.start_soon(_lines, proc.stderr, stderr, {"Too many open files": emfile, "works again": recovered})
        with trio.fail_after(SAFETY):
            ports = json.loads(await _first_line(proc.stdout))
        await _flood_until_emfile(ports, emfile, proc)
        with trio.fail_after(SAFETY):
            await recovered.wait()
            for name in ("a", "b"):
                async with _login(ports[name]) as conn:
                    assert (await conn.run("again")).stdout == b"again"
        assert proc.returncode is None
        assert not any("Traceback" in line for line in stderr), "\n".join(stderr)
    finally:
        proc.kill()
        await proc.wait()


def _login(port: int):
    return ssh_proto.connect(floods.LOOPBACK, port, username="u", password="pw", known_hosts=None,
                             connect_timeout=SAFETY)


async def _first_line(stream) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            raise AssertionError("the server exited before printing its ports")
        data += chunk
    return data.decode()


async def _flood_until_emfile(ports: dict, emfile: trio.Event, proc) -> None:
    async with _login(ports["b"]) as kept:             # an established connection on the other listener
        async with trio.open_nursery() as attack:
            async def stay():
                try:
                    async with _login(ports["a"]):
                        await trio.sleep_forever()
                except (ssh_proto.SSHError, OSError, trio.TooSlowError):
                    pass

            for _ in range(400):                       # more than 256 descriptors' worth
                attack.start_soon(stay)
            with trio.fail_after(SAFETY):
                await emfile.wait()
            assert proc.returncode is None
            # while the process is out of descriptors, what it has keeps working
            with trio.fail_after(SAFETY):
                assert (await kept.run("still here")).stdout == b"still here"
            attack.cancel_scope.cancel()
