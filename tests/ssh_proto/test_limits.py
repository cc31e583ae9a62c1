"""The sans-IO limits of one connection (docs/security.md § Limits), fed bytes in memory.

- L4: channels are counted when *opened*, sessions separately, and the receive windows we
  advertise stay within a per-connection budget; a session the peer opens gets a small
  window until it starts; each refusal is a CHANNEL_OPEN_FAILURE with its reason and a
  ChannelOpenRefused event (which the I/O layer logs).
- L6: before authentication a server asks to stop reading while its output is unsent; after
  it, unread replies (output no window bounds) past a cap end the connection; a refused
  ``none`` counts as a failure after the first request; one key exchange before login.

The attacks over real sockets are in ``test_listener_limits.py``.
"""
from __future__ import annotations

import pytest

from pairs import C, S, authenticated_pair, handshaken_pair, make_pair
from ssh_proto import events as ev
from ssh_proto import messages as m
from ssh_proto.auth import SERVICE_CONNECTION
from ssh_proto.channels import DEFAULT_WINDOW, PENDING_SESSION_WINDOW
from ssh_proto.connection import MAX_UNSENT_BEFORE_AUTH, ConnectionOptions
from ssh_proto.errors import ChannelOpenError, DisconnectReason, ProtocolError
from ssh_proto.transport import Algorithms


def _server(**options) -> dict:
    return {"server_options": ConnectionOptions(**options)}


def _peer_opens(pair, count: int, channel_type: str = "session") -> None:
    """The client sends ``count`` CHANNEL_OPENs of its own making and never reads the answers."""
    for sender in range(count):
        pair.inject(C, m.ChannelOpen(channel_type, sender, DEFAULT_WINDOW, 32768, b"").encode())
    pair.transfer(C)


# ---- L4: channels, sessions, window budget ------------------------------------------------------

def test_L4_channels_are_counted_when_opened_not_when_started():
    pair = authenticated_pair(**_server(max_channels=3))
    for _ in range(3):
        pair.client.channels.open("session")  # opened, never started (no request at all)
    pair.pump()
    assert len(pair.take(S, ev.ChannelOpenRequest)) == 3
    cid = pair.client.channels.open("direct-tcpip", m.DirectTcpip("h", 1, "o", 2).encode())
    pair.pump()
    (refused,) = pair.take(S, ev.ChannelOpenRefused)
    assert refused.channel_type == "direct-tcpip" and "limit 3" in refused.description
    (failed,) = pair.take(C, ev.ChannelOpenFailed)
    assert failed.channel_id == cid and failed.reason == m.OPEN_RESOURCE_SHORTAGE
    assert "too many channels" in failed.description


def test_L4_sessions_have_their_own_cap():
    pair = authenticated_pair(**_server(max_sessions=2))
    for _ in range(3):
        pair.client.channels.open("session")
    pair.client.channels.open("x-app@example.com")
    pair.pump()
    assert [r.channel_type for r in pair.take(S, ev.ChannelOpenRequest)] == ["session", "session",
                                                                            "x-app@example.com"]
    (refused,) = pair.take(S, ev.ChannelOpenRefused)
    assert "too many sessions" in refused.description and "limit 2" in refused.description


def test_L4_a_freed_channel_frees_its_slot_and_window():
    pair = authenticated_pair(**_server(max_channels=1, window_budget=DEFAULT_WINDOW))
    cid = pair.open_session("direct-tcpip", m.DirectTcpip("h", 1, "o", 2).encode())
    assert pair.server.channels.window_granted == DEFAULT_WINDOW
    pair.client.channels.close(cid)
    pair.pump()
    assert pair.server.channels.window_granted == 0 and len(pair.server.channels) == 0
    pair.open_session("direct-tcpip", m.DirectTcpip("h", 1, "o", 2).encode())


def _direct(pair) -> int:
    return pair.open_session("direct-tcpip", m.DirectTcpip("h", 1, "o", 2).encode())


def test_L4_advertised_windows_stay_within_the_budget():
    budget = 5 * DEFAULT_WINDOW // 2
    pair = authenticated_pair(**_server(window_budget=budget, max_channels=4))
    windows = [pair.client.channels[_direct(pair)].remote_window for _ in range(4)]
    # full windows while there is room beyond one packet per channel still to come, then less
    assert windows == [DEFAULT_WINDOW, DEFAULT_WINDOW, DEFAULT_WINDOW // 2 - 32768, 32768]
    assert pair.server.channels.window_granted == sum(windows) == budget
    pair.client.channels.open("direct-tcpip", m.DirectTcpip("h", 1, "o", 2).encode())
    pair.pump()
    (refused,) = pair.take(S, ev.ChannelOpenRefused)
    assert "too many channels" in refused.description


def test_L4_max_channels_channels_always_fit_in_the_budget():
    pair = authenticated_pair(**_server(window_budget=8 * 32768, max_channels=8))
    windows = [pair.client.channels[_direct(pair)].remote_window for _ in range(8)]
    assert windows == [32768] * 8 and pair.server.channels.window_granted == 8 * 32768


def test_L4_the_budget_refuses_when_not_one_packet_fits():
    pair = authenticated_pair(**_server(window_budget=3 * 32768, max_channels=1024))
    for _ in range(3):
        _direct(pair)
    pair.client.channels.open("direct-tcpip", m.DirectTcpip("h", 1, "o", 2).encode())
    pair.pump()
    (refused,) = pair.take(S, ev.ChannelOpenRefused)
    assert "receive window budget" in refused.description


def test_L4_a_channel_granted_less_grows_back_as_it_is_read():
    budget = 5 * DEFAULT_WINDOW // 2
    pair = authenticated_pair(**_server(window_budget=budget, max_channels=4))
    first, second, _third, small = (_direct(pair) for _ in range(4))
    for cid in (first, second):
        pair.client.channels.close(cid)
    pair.pump()
    sid = pair.server_id(small)
    pair.client.channels.send_data(small, bytes(32768))
    pair.pump()
    assert pair.data_received(S, sid) == bytes(32768)   # read: the window adjust carries the growth
    pair.pump()
    assert pair.client.channels[small].remote_window == DEFAULT_WINDOW
    assert pair.server.channels.window_granted <= budget


def test_L4_a_pending_session_gets_a_small_window_until_it_starts():
    pair = authenticated_pair()
    cid = pair.open_session()
    sid = pair.server_id(cid)
    assert pair.client.channels[cid].remote_window == PENDING_SESSION_WINDOW
    assert pair.server.channels.grow_window(sid) == DEFAULT_WINDOW - PENDING_SESSION_WINDOW
    pair.pump()
    assert pair.client.channels[cid].remote_window == DEFAULT_WINDOW
    assert pair.server.channels.window_granted == DEFAULT_WINDOW


def test_L4_a_thousand_pending_sessions_pin_at_most_the_budget():
    """The +411 MiB attack, in memory: 1,000 sessions opened, never started, each filled."""
    budget = 8 * 1024 * 1024
    pair = authenticated_pair(**_server(window_budget=budget, max_channels=1024))
    _peer_opens(pair, 1000)
    assert pair.server.channels.window_granted <= budget
    opened = pair.take(S, ev.ChannelOpenRequest)
    for request in opened:
        pair.server.channels.accept(request.channel_id)
    # the most the peer may now send us, over every channel, before anyone reads
    assert sum(pair.server.channels[r.channel_id].local_window for r in opened) <= budget
    assert len(opened) == budget // 32768     # one packet each: room kept for 1,024 channels
    refused = pair.take(S, ev.ChannelOpenRefused)
    assert len(refused) == 1000 - len(opened) and "window budget" in refused[0].description


def test_L4_our_own_open_past_a_limit_is_a_typed_error():
    pair = authenticated_pair(client_options=ConnectionOptions(window_budget=40_000, max_packet=32768))
    pair.client.channels.open("session")             # 40,000 of window
    with pytest.raises(ChannelOpenError) as info:
        pair.client.channels.open("session")
    assert info.value.reason == m.OPEN_RESOURCE_SHORTAGE and "window budget" in info.value.description


# ---- L6: pre-authentication output and none -----------------------------------------------------

def _none_request() -> bytes:
    return m.UserauthRequest("mallory", SERVICE_CONNECTION, "none", b"").encode()


def test_L6_server_pauses_reading_before_auth_while_its_output_is_unsent():
    pair = handshaken_pair()
    pair.pump()
    server = pair.server
    assert not server.reading_paused()
    # replies the client never collects: UNIMPLEMENTED for unknown message numbers
    for _ in range(MAX_UNSENT_BEFORE_AUTH // 16):
        pair.inject(C, bytes([200]))
        pair.transfer(C)
        if server.reading_paused():
            break
    assert server.reading_paused()
    assert server.transport.unsent_output <= MAX_UNSENT_BEFORE_AUTH + 256
    server.data_to_send()            # the writer got it all out
    assert not server.reading_paused()
    assert server.reading_paused(in_flight=MAX_UNSENT_BEFORE_AUTH + 1)  # ... or is still sending it


def test_L6_after_auth_reading_never_pauses():
    pair = authenticated_pair()
    for _ in range(MAX_UNSENT_BEFORE_AUTH // 16 + 1):
        pair.inject(C, bytes([200]))
    pair.transfer(C)
    assert pair.server.transport.unsent_output > MAX_UNSENT_BEFORE_AUTH
    assert not pair.server.reading_paused()


def test_L6_unread_replies_after_auth_past_the_cap_end_the_connection():
    pair = authenticated_pair(**_server(max_unsent_control=64 * 1024))
    request = m.GlobalRequest("keepalive@openssh.com", False, b"").encode()
    for _ in range(64 * 1024 // 16 + 1):
        pair.inject(C, bytes([200]))          # each is answered with UNIMPLEMENTED
    pair.transfer(C)
    assert pair.server.transport.control_backlog > 64 * 1024
    pair.inject(C, request)
    with pytest.raises(ProtocolError) as info:
        pair.transfer(C)
    assert "does not read" in info.value.description
    assert info.value.reason == DisconnectReason.BY_APPLICATION


def test_L6_channel_data_does_not_count_as_unread_replies():
    pair = authenticated_pair(**_server(max_unsent_control=64 * 1024))
    cid = pair.open_session("direct-tcpip", m.DirectTcpip("h", 1, "o", 2).encode())
    sid = pair.server_id(cid)
    pair.server.channels.send_data(sid, bytes(1024 * 1024))  # window-bounded, never collected
    assert pair.server.transport.control_backlog < 1024
    pair.inject(C, m.ChannelData(sid, b"more").encode())
    pair.transfer(C)                                          # still read


def test_L6_none_after_the_first_request_counts_as_a_failure():
    pair = handshaken_pair(**_server(max_auth_attempts=6))
    pair.pump()
    auth = pair.server.server_auth
    for _ in range(6):                   # the free probe, then five counted failures
        pair.inject(C, _none_request())
        pair.transfer(C)
        pair.take(S, ev.AuthNone)
        auth.reject()
    assert auth.failures == 5
    pair.inject(C, _none_request())
    pair.transfer(C)
    with pytest.raises(ProtocolError) as info:
        auth.reject()                    # the sixth failure: MaxAuthTries
    assert info.value.reason == DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE


def test_L6_the_first_none_probe_is_free():
    pair = handshaken_pair(**_server(max_auth_attempts=1))
    pair.pump()
    pair.inject(C, _none_request())
    pair.transfer(C)
    pair.take(S, ev.AuthNone)
    pair.server.server_auth.reject()
    assert pair.server.server_auth.failures == 0


# ---- L10: one key exchange before authentication ------------------------------------------------

def _kexinit() -> bytes:
    a = Algorithms()
    return m.KexInit(bytes(16), a.kex_for(C), a.host_keys, a.ciphers, a.ciphers, a.macs, a.macs,
                     ("none",), ("none",), (), (), False, 0).encode()


def test_L10_a_client_cannot_start_a_second_key_exchange_before_auth():
    pair = handshaken_pair()
    pair.pump()
    pair.inject(C, _kexinit())
    with pytest.raises(ProtocolError) as info:
        pair.transfer(C)
    assert "too many key exchanges" in info.value.description
    assert pair.server.transport.kex_count == 1


def test_L10_after_auth_the_client_may_rekey():
    pair = authenticated_pair()
    pair.client.transport.start_rekey()
    pair.pump()
    assert pair.server.transport.kex_count == 2


def test_L10_the_limit_is_an_option():
    pair = handshaken_pair(**_server(max_kex_before_auth=2))
    pair.client.transport.start_rekey()
    pair.pump()
    assert pair.server.transport.kex_count == 2


def test_L10_a_client_is_not_limited_by_the_server_rule():
    pair = make_pair()
    assert pair.client.transport.max_kex is None and pair.server.transport.max_kex == 1
