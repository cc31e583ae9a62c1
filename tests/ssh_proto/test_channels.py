"""Channel tests (RFC 4254 §5): flow control (rule T19), channel-id confusion (rule T20),
ordered request replies, the channel cap; a property test feeding arbitrary CHANNEL_*
payloads to a ChannelTable, and a state machine over a connected pair.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pairs import C, S, authenticated_pair, message_strategy
from ssh_proto import events as ev
from ssh_proto import messages as m
from ssh_proto.channels import MAX_WINDOW, ChannelState, ChannelTable
from ssh_proto.connection import ConnectionOptions
from ssh_proto.errors import ChannelOpenError, ProtocolError


def _pair(**server_opts):
    return authenticated_pair(server_options=ConnectionOptions(**server_opts))


def _open(**server_opts):
    pair = _pair(**server_opts)
    cid = pair.open_session()
    return pair, cid, pair.server_id(cid)


# ---- basics ------------------------------------------------------------------------------------

def test_open_data_eof_close_lifecycle():
    pair, cid, sid = _open()
    pair.client.channels.send_data(cid, b"to server")
    pair.server.channels.send_data(sid, b"err", m.EXTENDED_DATA_STDERR)
    pair.client.channels.send_eof(cid)
    pair.pump()
    assert pair.data_received(S, sid) == b"to server"
    assert pair.data_received(C, cid, m.EXTENDED_DATA_STDERR) == b"err"
    assert pair.take(S, ev.ChannelEofReceived) == [ev.ChannelEofReceived(sid)]
    pair.server.channels.close(sid)
    pair.pump()
    assert pair.take(C, ev.ChannelCloseReceived) == [ev.ChannelCloseReceived(cid)]
    assert pair.take(S, ev.ChannelCloseReceived) == [ev.ChannelCloseReceived(sid)]
    assert len(pair.client.channels) == len(pair.server.channels) == 0


def test_open_refused_by_the_peer():
    pair = _pair()
    cid = pair.client.channels.open("x11", m.X11Open("1.2.3.4", 6000).encode())
    pair.pump()
    (req,) = pair.take(S, ev.ChannelOpenRequest)
    pair.server.channels.reject(req.channel_id, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "no X11")
    pair.pump()
    expected = ev.ChannelOpenFailed(cid, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "no X11")
    assert pair.take(C, ev.ChannelOpenFailed) == [expected]
    assert len(pair.client.channels) == len(pair.server.channels) == 0


# ---- T19 flow control ----------------------------------------------------------------------------

def test_T19_data_beyond_the_window_is_an_error():
    pair, cid, sid = _open(window=4096, max_packet=4096)
    pair.inject(C, m.ChannelData(sid, bytes(3000)).encode())
    pair.pump()
    assert len(pair.take(S, ev.ChannelDataReceived)) == 1  # not consumed: no WINDOW_ADJUST
    pair.inject(C, m.ChannelData(sid, bytes(2000)).encode())  # 1096 bytes of window left
    err = pair.expect_error(S)
    assert "window" in err.description


def test_T19_extended_data_counts_against_the_window_too():
    pair, cid, sid = _open(window=4096, max_packet=4096)
    pair.inject(C, m.ChannelData(sid, bytes(4000)).encode())
    pair.inject(C, m.ChannelExtendedData(sid, 1, bytes(100)).encode())
    pair.expect_error(S)


@pytest.mark.parametrize("extended", [False, True])
def test_T19_data_larger_than_max_packet_is_an_error(extended):
    pair, cid, sid = _open(max_packet=1024)
    msg = m.ChannelExtendedData(sid, 1, bytes(1025)) if extended else m.ChannelData(sid, bytes(1025))
    pair.inject(C, msg.encode())
    err = pair.expect_error(S)
    assert "maximum packet" in err.description


def test_T19_sender_never_exceeds_peer_window_or_max_packet():
    pair, cid, sid = _open(window=4096, max_packet=1000)
    ch = pair.client.channels[cid]
    assert (ch.remote_window, ch.remote_max_packet) == (4096, 1000)
    assert pair.client.channels.send_data(cid, bytes(100_000)) == 4096
    assert pair.client.channels.send_capacity(cid) == 0
    assert pair.client.channels.send_data(cid, b"more") == 0
    pair.pump()
    chunks = [e.data for e in pair.server_events if isinstance(e, ev.ChannelDataReceived)]
    assert max(map(len, chunks)) <= 1000 and sum(map(len, chunks)) == 4096
    pair.data_received(S, sid)  # the server application consumes it: the window reopens
    pair.pump()
    assert pair.take(C, ev.ChannelWindowAdjusted)
    assert 2048 <= pair.client.channels.send_capacity(cid) <= 4096


def test_T19_window_adjust_waits_until_half_the_window_is_consumed():
    pair, cid, sid = _open(window=4096)
    pair.client.channels.send_data(cid, bytes(2000))
    pair.pump()
    pair.data_received(S, sid)
    pair.pump()
    assert not pair.take(C, ev.ChannelWindowAdjusted)
    pair.client.channels.send_data(cid, bytes(48))
    pair.pump()
    pair.data_received(S, sid)
    pair.pump()
    assert pair.take(C, ev.ChannelWindowAdjusted)
    assert pair.client.channels.send_capacity(cid) == 4096


def test_T19_window_adjust_overflowing_2_32_is_an_error():
    pair, cid, sid = _open()
    room = MAX_WINDOW - pair.client.channels[cid].remote_window
    pair.inject(S, m.ChannelWindowAdjust(cid, room).encode())
    pair.pump()
    assert pair.client.channels.send_capacity(cid) == MAX_WINDOW
    pair.inject(S, m.ChannelWindowAdjust(cid, 1).encode())
    err = pair.expect_error(C)
    assert "overflow" in err.description


def test_T19_zero_length_data_is_accepted_silently():
    pair, cid, sid = _open()
    pair.inject(C, m.ChannelData(sid, b"").encode())
    pair.pump()
    assert not pair.take(S, ev.ChannelDataReceived) and pair.failed is None


# ---- T20 channel-id confusion ----------------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    m.ChannelData(7, b"x").encode(),
    m.ChannelExtendedData(7, 1, b"x").encode(),
    m.ChannelWindowAdjust(7, 1).encode(),
    m.ChannelEof(7).encode(),
    m.ChannelClose(7).encode(),
    m.ChannelRequest(7, "exit-status", False, m.ExitStatus(0).encode()).encode(),
    m.ChannelSuccess(7).encode(),
    m.ChannelFailure(7).encode(),
    m.ChannelOpenConfirmation(7, 1, 100, 100, b"").encode(),
    m.ChannelOpenFailure(7, 1, "", b"").encode(),
], ids=["DATA", "EXTENDED_DATA", "WINDOW_ADJUST", "EOF", "CLOSE", "REQUEST", "SUCCESS", "FAILURE",
        "OPEN_CONFIRMATION", "OPEN_FAILURE"])
def test_T20_message_for_an_unknown_channel_is_an_error(payload):
    pair, cid, sid = _open()
    pair.inject(S, payload)
    err = pair.expect_error(C)
    assert "unknown channel" in err.description


@pytest.mark.parametrize("payload", [
    m.ChannelOpenConfirmation(0, 1, 100, 100, b"").encode(),
    m.ChannelOpenFailure(0, 1, "", b"").encode(),
], ids=["OPEN_CONFIRMATION", "OPEN_FAILURE"])
def test_T20_open_answer_for_a_channel_that_is_not_opening_is_an_error(payload):
    pair, cid, sid = _open()
    assert cid == 0
    pair.inject(S, payload)
    err = pair.expect_error(C)
    assert "not opening" in err.description


def test_T20_open_confirmation_for_a_channel_the_peer_is_opening_is_an_error():
    """The server confirms 'its own' id 0, which is a channel the *client* asked to open."""
    pair = _pair()
    pair.client.channels.open("session")
    pair.pump()
    (req,) = pair.take(S, ev.ChannelOpenRequest)
    pair.inject(C, m.ChannelOpenConfirmation(req.channel_id, 5, 100, 100, b"").encode())
    pair.expect_error(S)


@pytest.mark.parametrize("payload", [
    m.ChannelData(0, b"x").encode(),
    m.ChannelWindowAdjust(0, 10).encode(),
    m.ChannelEof(0).encode(),
    m.ChannelClose(0).encode(),
    m.ChannelRequest(0, "shell", True, b"").encode(),
], ids=["DATA", "WINDOW_ADJUST", "EOF", "CLOSE", "REQUEST"])
def test_T20_messages_for_a_channel_still_opening_are_errors(payload):
    pair = _pair()
    cid = pair.client.channels.open("session")
    pair.pump()
    assert pair.client.channels[cid].state is ChannelState.OPENING
    pair.inject(S, payload)
    pair.expect_error(C)


def test_T20_data_after_eof_is_an_error():
    pair, cid, sid = _open()
    pair.client.channels.send_eof(cid)
    pair.pump()
    pair.inject(C, m.ChannelData(sid, b"late").encode())
    err = pair.expect_error(S)
    assert "not open" in err.description


def test_T20_second_eof_is_an_error():
    pair, cid, sid = _open()
    pair.client.channels.send_eof(cid)
    pair.pump()
    pair.inject(C, m.ChannelEof(sid).encode())
    pair.expect_error(S)


def test_T20_data_in_flight_after_our_close_is_ignored():
    pair, cid, sid = _open()
    pair.client.channels.close(cid)                     # CLOSE queued at the client
    pair.server.channels.send_data(sid, b"in flight")   # crosses it on the wire
    pair.server.channels.send_eof(sid)
    pair.server.send_global_request("keepalive@openssh.com", want_reply=False)
    pair.transfer(S)
    assert not pair.take(C, ev.ChannelDataReceived) and not pair.take(C, ev.ChannelEofReceived)
    pair.pump()
    assert pair.take(C, ev.ChannelCloseReceived) and pair.take(S, ev.ChannelCloseReceived)
    assert len(pair.client.channels) == len(pair.server.channels) == 0


def test_T20_close_twice_is_an_error():
    pair, cid, sid = _open()
    pair.client.channels.close(cid)
    pair.pump()
    pair.inject(S, m.ChannelClose(cid).encode())
    pair.expect_error(C)


def test_T20_ids_are_not_reused_before_both_closes():
    pair, cid, sid = _open()
    pair.client.channels.close(cid)                # our CLOSE sent, the peer's not yet here
    second = pair.client.channels.open("session")
    assert second != cid
    pair.pump()
    (req,) = pair.take(S, ev.ChannelOpenRequest)
    pair.server.channels.accept(req.channel_id)
    pair.pump()
    assert pair.take(C, ev.ChannelCloseReceived) == [ev.ChannelCloseReceived(cid)]
    third = pair.client.channels.open("session")   # both CLOSEs done: id free again
    assert third == cid


def test_T20_peer_close_frees_the_id_only_after_our_close_went_out():
    pair, cid, sid = _open()
    pair.server.channels.close(sid)
    pair.pump()
    assert pair.take(C, ev.ChannelCloseReceived) == [ev.ChannelCloseReceived(cid)]
    assert cid not in pair.client.channels and sid not in pair.server.channels
    pair.client.channels.close(cid)  # the application closing too is harmless
    pair.pump()
    assert pair.failed is None


def test_T20_channel_cap_refuses_opens_with_resource_shortage():
    pair = _pair(max_channels=2)
    ids = [pair.client.channels.open("session") for _ in range(3)]
    pair.pump()
    for req in pair.take(S, ev.ChannelOpenRequest):
        pair.server.channels.accept(req.channel_id)
    pair.pump()
    assert [e.channel_id for e in pair.take(C, ev.ChannelOpenConfirmed)] == ids[:2]
    (failed,) = pair.take(C, ev.ChannelOpenFailed)
    assert (failed.channel_id, failed.reason) == (ids[2], m.OPEN_RESOURCE_SHORTAGE)


def test_T20_own_channel_cap():
    pair = authenticated_pair(client_options=ConnectionOptions(max_channels=1))
    pair.client.channels.open("session")
    with pytest.raises(ChannelOpenError) as info:
        pair.client.channels.open("session")
    assert info.value.reason == m.OPEN_RESOURCE_SHORTAGE and "limit 1" in info.value.description


def test_T20_open_with_zero_max_packet_is_an_error():
    pair = _pair()
    pair.inject(C, m.ChannelOpen("session", 0, 1000, 0, b"").encode())
    pair.expect_error(S)


# ---- channel requests ---------------------------------------------------------------------------

def test_channel_request_replies_go_out_in_arrival_order():
    pair, cid, sid = _open()
    for name in ("pty-req", "env", "shell"):
        pair.client.channels.send_request(cid, name, b"", want_reply=True)
    pair.pump()
    tokens = [e.token for e in pair.take(S, ev.ChannelRequestReceived)]
    assert len(tokens) == 3
    pair.server.channels.reply_request(sid, tokens[2], True)
    pair.pump()
    assert not pair.take(C, ev.ChannelRequestReplied)  # the first is still undecided
    pair.server.channels.reply_request(sid, tokens[0], False)
    pair.pump()
    assert pair.take(C, ev.ChannelRequestReplied) == [ev.ChannelRequestReplied(cid, False)]
    pair.server.channels.reply_request(sid, tokens[1], True)
    pair.pump()
    assert pair.take(C, ev.ChannelRequestReplied) == [ev.ChannelRequestReplied(cid, True)] * 2


def test_channel_request_without_reply_needs_no_answer():
    pair, cid, sid = _open()
    pair.client.channels.send_request(cid, "env", m.EnvRequest("LANG", "C").encode(), want_reply=False)
    pair.client.channels.send_request(cid, "shell", b"", want_reply=True)
    pair.pump()
    env, shell = pair.take(S, ev.ChannelRequestReceived)
    assert m.EnvRequest.decode(env.data) == m.EnvRequest("LANG", "C") and not env.want_reply
    pair.server.channels.reply_request(sid, shell.token, True)
    pair.pump()
    assert pair.take(C, ev.ChannelRequestReplied) == [ev.ChannelRequestReplied(cid, True)]


def test_channel_request_reply_without_a_request_is_an_error():
    pair, cid, sid = _open()
    pair.inject(S, m.ChannelSuccess(cid).encode())
    err = pair.expect_error(C)
    assert "without a request" in err.description


def test_too_many_unanswered_channel_requests_is_an_error():
    pair, cid, sid = _open()
    for _ in range(65):
        pair.client.channels.send_request(cid, "env", m.EnvRequest("A", "b").encode(), want_reply=True)
    pair.expect_error(S)


def test_reply_to_a_request_on_a_channel_closed_meanwhile_is_dropped():
    pair, cid, sid = _open()
    pair.client.channels.send_request(cid, "exec", m.ExecRequest(b"true").encode(), want_reply=True)
    pair.pump()
    (req,) = pair.take(S, ev.ChannelRequestReceived)
    pair.server.channels.close(sid)
    pair.server.channels.reply_request(sid, req.token, True)
    pair.pump()
    assert not pair.take(C, ev.ChannelRequestReplied) and pair.failed is None


# ---- property: arbitrary CHANNEL_* payloads raise only ProtocolError -----------------------------

def _table_in_every_state() -> ChannelTable:
    table = ChannelTable(lambda payload: None, window=1000, max_packet=500, max_channels=8)
    table.open("session")                                                        # 0: opening
    table.receive(m.ChannelOpen("session", 70, 1000, 500, b"").encode())         # 1: peer opening
    for sender in (71, 72, 73):                                                  # 2, 3, 4: open
        table.receive(m.ChannelOpenConfirmation(table.open("session"), sender, 1000, 500, b"").encode())
    table.receive(m.ChannelEof(3).encode())                                      # 3: got EOF
    table.close(4)                                                               # 4: closed (ours)
    table.send_request(2, "shell", want_reply=True)
    return table


_CHANNEL_CLASSES = [m.ChannelOpen, m.ChannelOpenConfirmation, m.ChannelOpenFailure, m.ChannelWindowAdjust,
                    m.ChannelData, m.ChannelExtendedData, m.ChannelEof, m.ChannelClose, m.ChannelRequest,
                    m.ChannelSuccess, m.ChannelFailure]
_small_id = st.integers(0, 6)
_payloads = st.one_of(
    st.builds(lambda t, tail: bytes([t]) + tail, st.integers(90, 100), st.binary(max_size=40)),
    st.sampled_from(_CHANNEL_CLASSES).flatmap(message_strategy).map(lambda msg: msg.encode()),
    st.builds(lambda cls, rid, tail: bytes([cls.number]) + rid.to_bytes(4, "big") + tail,
              st.sampled_from(_CHANNEL_CLASSES), _small_id, st.binary(max_size=24)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_payloads, min_size=1, max_size=6))
def test_channel_table_on_arbitrary_payloads_raises_only_protocol_error(payloads):
    table = _table_in_every_state()
    for payload in payloads:
        try:
            table.receive(payload)
        except ProtocolError:
            return
        for ch in table._channels.values():
            assert 0 <= ch.local_window <= ch.local_window_max and 0 <= ch.remote_window <= MAX_WINDOW
        assert len(table) <= table.max_channels


# ---- state machine over a connected pair -------------------------------------------------------

class ChannelMachine(RuleBasedStateMachine):
    """Open, write, consume, EOF and close channels on both ends; windows and bytes stay right."""

    @initialize()
    def setup(self):
        self.pair = authenticated_pair(options=ConnectionOptions(window=3000, max_packet=700, max_channels=4))
        self.sent: dict[tuple, bytearray] = {}   # (role, local id) -> bytes sent on it
        self.got: dict[tuple, bytearray] = {}

    def _open_ids(self):
        return sorted(cid for cid in self.pair.client.channels._channels
                      if self.pair.client.channels[cid].state is ChannelState.OPEN)

    @rule()
    def open_channel(self):
        if len(self.pair.client.channels) >= 4:
            return
        cid = self.pair.client.channels.open("session")
        self.pair.pump()
        for req in self.pair.take(S, ev.ChannelOpenRequest):
            self.pair.server.channels.accept(req.channel_id)
        self.pair.pump()
        for ok in self.pair.take(C, ev.ChannelOpenConfirmed):
            sid = self.pair.server_id(ok.channel_id)
            for key in ((C, ok.channel_id), (S, sid)):
                self.sent[key], self.got[key] = bytearray(), bytearray()

    @precondition(lambda self: self._open_ids())
    @rule(data=st.data(), size=st.integers(0, 5000), from_client=st.booleans())
    def write(self, data, size, from_client):
        cid = data.draw(st.sampled_from(self._open_ids()))
        role, local = (C, cid) if from_client else (S, self.pair.server_id(cid))
        table = self.pair.side(role).channels
        if table.send_capacity(local) == 0:
            return
        chunk = bytes((len(self.sent[(role, local)]) + i) % 251 for i in range(size))
        n = table.send_data(local, chunk)
        self.sent[(role, local)] += chunk[:n]
        self.pair.pump()

    @rule()
    def consume(self):
        self.pair.pump()
        for role in (C, S):
            for e in self.pair.take(role, ev.ChannelDataReceived):
                self.got[(role.peer, self._peer_id(role, e.channel_id))] += e.data
                self.pair.side(role).channels.consumed(e.channel_id, len(e.data))
        self.pair.pump()

    def _peer_id(self, role, local):
        return self.pair.side(role).channels[local].remote_id

    @precondition(lambda self: self._open_ids())
    @rule(data=st.data(), eof=st.booleans())
    def close(self, data, eof):
        cid = data.draw(st.sampled_from(self._open_ids()))
        self.consume()
        sid = self.pair.server_id(cid)
        if eof:
            self.pair.client.channels.send_eof(cid)
        self.pair.client.channels.close(cid)
        self.pair.pump()
        self.consume()
        for key in ((C, cid), (S, sid)):
            assert self.got.pop(key) == self.sent.pop(key)

    @invariant()
    def windows_are_sane(self):
        if not hasattr(self, "pair"):
            return
        for role in (C, S):
            for ch in self.pair.side(role).channels._channels.values():
                assert 0 <= ch.local_window <= ch.local_window_max
                assert 0 <= ch.remote_window <= MAX_WINDOW
        assert self.pair.failed is None


ChannelMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
test_channel_state_machine = ChannelMachine.TestCase
