"""Connection tests: message gating by phase from the one table in ssh_proto/state.py (rule
T11), the service request, UNIMPLEMENTED for unknown numbers, global requests, and
property tests feeding arbitrary payloads (protected with the negotiated keys) and
arbitrary bytes into Connection.receive_data.
"""
from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairs import (C, S, all_message_classes, authenticated_pair, handshaken_pair, host_key, make_pair,
                   message_strategy, record_packets)
from ssh_proto import events as ev
from ssh_proto import messages as m
from ssh_proto.connection import Connection
from ssh_proto.errors import DisconnectError, DisconnectReason, LocalError, ProtocolError
from ssh_proto.state import KEX_MESSAGES, KEX_METHOD_MESSAGES, ConnectionState, KexStep, Phase, Role, Verdict
from ssh_proto.transport import accept_any_host_key

#: A well-formed payload for each connection-protocol number (the gate, not the decoder, must refuse it).
CONNECTION_PAYLOADS = {
    80: m.GlobalRequest("tcpip-forward", True, m.TcpipForward("0.0.0.0", 2222).encode()).encode(),
    81: m.RequestSuccess(b"").encode(),
    82: m.RequestFailure().encode(),
    90: m.ChannelOpen("session", 0, 65536, 32768, b"").encode(),
    91: m.ChannelOpenConfirmation(0, 0, 65536, 32768, b"").encode(),
    92: m.ChannelOpenFailure(0, 1, "no", b"").encode(),
    93: m.ChannelWindowAdjust(0, 100).encode(),
    94: m.ChannelData(0, b"id").encode(),
    95: m.ChannelExtendedData(0, 1, b"id").encode(),
    96: m.ChannelEof(0).encode(),
    97: m.ChannelClose(0).encode(),
    98: m.ChannelRequest(0, "exec", True, m.ExecRequest(b"id").encode()).encode(),
    99: m.ChannelSuccess(0).encode(),
    100: m.ChannelFailure(0).encode(),
}


def _payload(n: int) -> bytes:
    return CONNECTION_PAYLOADS.get(n, bytes([n]) + bytes(12))


# ---- pairs whose receiving side sits in a given phase ---------------------------------------------

def _to_client_newkeys(drain: bool):
    """KEXINITs, KEX_INIT, REPLY+NEWKEYS+EXT_INFO moved: the client's kex is complete."""
    pair = make_pair()
    pair.transfer(C)
    pair.transfer(S)
    pair.transfer(C)
    pair.transfer(S, drain=drain)
    return pair


def pair_with_receiver_in(receiver: Role, phase: Phase):
    """A pair in which a payload injected now by ``receiver.peer`` is read in ``phase``."""
    if phase is Phase.KEX_INITIAL:
        pair = make_pair()
        pair.transfer(C)
        pair.transfer(S)
        return pair
    if phase is Phase.SERVICE:
        # Server: the client finished its kex but has not yet sent SERVICE_REQUEST.
        # Client: its kex is complete; the server's SERVICE_ACCEPT is yet to come.
        return _to_client_newkeys(drain=receiver is C)
    if phase is Phase.AUTH:
        return handshaken_pair()
    return authenticated_pair()


# ---- T11 the table ----------------------------------------------------------------------------
#
# The expectation is written out here, independently of ssh_proto/state.py, from RFC 4253
# §7.1 and §11, RFC 4252 §5-§7, RFC 4254 and RFC 8308 §2.4: a number listed here is
# accepted from that sender in that phase (outside its key exchange), everything else in
# 1-127 is refused, 128-255 get UNIMPLEMENTED.

GENERIC_LITERAL = {1, 2, 3, 4}           # DISCONNECT, IGNORE, UNIMPLEMENTED, DEBUG
CONNECTION_LITERAL = set(range(80, 101))  # GLOBAL_REQUEST .. CHANNEL_FAILURE
EXPECTED_PHASE_TABLE = {
    (Phase.SERVICE, C): {5, 20},                      # SERVICE_REQUEST, KEXINIT
    (Phase.SERVICE, S): {6, 20},                      # SERVICE_ACCEPT, KEXINIT
    (Phase.AUTH, C): {50, 61, 20},                    # USERAUTH_REQUEST, INFO_RESPONSE, KEXINIT
    (Phase.AUTH, S): {51, 52, 53, 60, 20},            # FAILURE, SUCCESS, BANNER, PK_OK/INFO_REQUEST, KEXINIT
    (Phase.OPEN, C): CONNECTION_LITERAL | {50, 20},   # USERAUTH_REQUEST after success is ignored (§5.1)
    (Phase.OPEN, S): CONNECTION_LITERAL | {20},
}
#: (kex step, sender) -> accepted while that party's own key exchange runs (plus GENERIC_LITERAL,
#: outside a strict initial exchange).
EXPECTED_KEX_TABLE = {
    (KexStep.KEXINIT, C): {20}, (KexStep.KEXINIT, S): {20},
    (KexStep.METHOD, C): {30}, (KexStep.METHOD, S): {31},   # the client sends INIT, the server REPLY
    (KexStep.GUESS, C): set(range(30, 50)), (KexStep.GUESS, S): set(range(30, 50)),
    (KexStep.NEWKEYS, C): {21}, (KexStep.NEWKEYS, S): {21},
}

# The messages that put a party in each phase, fed to a fresh ConnectionState for both parties
# (it does not know which one is "us").
_TO_PHASE = {
    Phase.KEX_INITIAL: [],
    Phase.SERVICE: [(C, 20), (S, 20), (C, 30), (S, 31), (S, 21), (C, 21)],
}
_TO_PHASE[Phase.AUTH] = _TO_PHASE[Phase.SERVICE] + [(C, 5), (S, 6)]
_TO_PHASE[Phase.OPEN] = _TO_PHASE[Phase.AUTH] + [(C, 50), (S, 52)]


def _state_in(phase: Phase, *, ext_info: bool = False) -> ConnectionState:
    state = ConnectionState()
    state.negotiated(strict=True, client_ext_info=ext_info, server_ext_info=ext_info)
    for sender, n in _TO_PHASE[phase]:
        state.receive(sender, n)
    assert state.phase(C) is phase and state.phase(S) is phase
    return state


@pytest.mark.parametrize("phase", [Phase.SERVICE, Phase.AUTH, Phase.OPEN], ids=lambda p: p.value)
@pytest.mark.parametrize("sender", [C, S], ids=lambda r: r.value)
def test_T11_the_table_accepts_exactly_the_literal_expectation(phase, sender):
    for n in range(1, 256):
        state = _state_in(phase)
        if n in EXPECTED_PHASE_TABLE[(phase, sender)] | GENERIC_LITERAL:
            assert state.receive(sender, n) is Verdict.HANDLE, n
        elif n >= 128:
            assert state.receive(sender, n) is Verdict.UNIMPLEMENTED, n
        else:
            with pytest.raises(ProtocolError):
                state.receive(sender, n)


@pytest.mark.parametrize("phase", [Phase.SERVICE, Phase.AUTH, Phase.OPEN], ids=lambda p: p.value)
@pytest.mark.parametrize("sender", [C, S], ids=lambda r: r.value)
def test_T11_our_own_messages_are_checked_against_the_same_table(phase, sender):
    """What we hand the transport (held during a key exchange, not sent) must be on the
    phase's table too: off it, a LocalError, never a message on the wire."""
    for n in range(1, 256):
        state = _state_in(phase)
        if n in (EXPECTED_PHASE_TABLE[(phase, sender)] - {20}) | GENERIC_LITERAL:
            state.queue(sender, n)
        else:
            with pytest.raises(LocalError):
                state.queue(sender, n)


@pytest.mark.parametrize("strict", [False, True], ids=["not-strict", "strict"])
@pytest.mark.parametrize("sender", [C, S], ids=lambda r: r.value)
def test_T11_key_exchange_steps_accept_exactly_the_literal_expectation(sender, strict):
    """RFC 4253 §7.1: from its KEXINIT to its NEWKEYS a party sends only the exchange's
    messages, in order; strict kex (T1) leaves only DISCONNECT besides them at first."""
    steps = {KexStep.KEXINIT: [], KexStep.METHOD: [20], KexStep.NEWKEYS: [20, 30 if sender is C else 31]}
    for step, before in steps.items():
        for n in range(1, 256):
            state = ConnectionState()
            state.negotiated(strict=strict, client_ext_info=False, server_ext_info=False)
            for msg in before:
                state.receive(sender, msg)
            assert state.kex_step(sender) is step
            generic = {1} if strict else GENERIC_LITERAL
            if n in EXPECTED_KEX_TABLE[(step, sender)] | generic:
                state.receive(sender, n)
            else:
                with pytest.raises(ProtocolError):
                    state.receive(sender, n)


def test_T11_the_phases_move_as_the_rfcs_say():
    """Each party's phase moves on its own messages, and both on the server's USERAUTH_SUCCESS."""
    state = ConnectionState()
    expected = [  # (sender, message) -> (client phase, server phase) after it
        ((C, 20), ("kex-initial", "kex-initial")), ((S, 20), ("kex-initial", "kex-initial")),
        ((C, 30), ("kex-initial", "kex-initial")), ((S, 31), ("kex-initial", "kex-initial")),
        ((S, 21), ("kex-initial", "service")), ((C, 21), ("service", "service")),
        ((C, 5), ("auth", "service")), ((S, 6), ("auth", "auth")),
        ((C, 50), ("auth", "auth")), ((S, 51), ("auth", "auth")), ((C, 50), ("auth", "auth")),
        ((S, 52), ("open", "open")),
        ((C, 20), ("open", "open")), ((C, 30), ("open", "open")), ((C, 21), ("open", "open")),
    ]
    for (sender, n), (client, server) in expected:
        state.receive(sender, n)
        assert (state.phase(C).value, state.phase(S).value) == (client, server), (sender, n)


def test_T11_a_re_exchange_holds_off_everything_but_its_own_messages_until_newkeys():
    state = _state_in(Phase.OPEN)
    state.receive(C, 94)                 # data before its KEXINIT is fine (T8)
    state.receive(C, 20)
    with pytest.raises(ProtocolError, match="key exchange"):
        _copy_receive(state, C, 94)
    with pytest.raises(ProtocolError, match="KEXINIT"):
        _copy_receive(state, C, 20)      # a second KEXINIT
    with pytest.raises(ProtocolError):
        _copy_receive(state, C, 31)      # the server's message, from the client
    with pytest.raises(ProtocolError, match="NEWKEYS"):
        _copy_receive(state, C, 21)      # NEWKEYS before the method's message
    state.receive(S, 94)                 # the other party is not in its exchange yet
    state.receive(C, 30)
    state.receive(C, 21)
    state.receive(C, 94)


def _copy_receive(state: ConnectionState, sender: Role, n: int):
    return copy.deepcopy(state).receive(sender, n)


def test_T11_a_wrong_guess_skips_one_kex_method_packet():
    state = ConnectionState()
    state.receive(C, 20)
    state.skip_guess(C)
    assert state.receive(C, 30) is Verdict.SKIP
    assert state.receive(C, 30) is Verdict.HANDLE
    assert state.kex_step(C) is KexStep.NEWKEYS


def test_T11_named_constants_of_the_kex_ranges():
    assert KEX_METHOD_MESSAGES == frozenset(range(30, 50))
    assert KEX_MESSAGES == KEX_METHOD_MESSAGES | {20, 21}


def test_T11_table_keeps_connection_messages_out_of_every_phase_before_auth():
    for phase in (Phase.SERVICE, Phase.AUTH):
        for sender in Role:
            state = _state_in(phase)
            for n in range(80, 128):
                with pytest.raises(ProtocolError):
                    copy.deepcopy(state).receive(sender, n)


@pytest.mark.parametrize("n", range(80, 101))
@pytest.mark.parametrize("phase", [Phase.KEX_INITIAL, Phase.SERVICE, Phase.AUTH], ids=lambda p: p.value)
def test_T11_connection_message_from_client_before_auth_success_disconnects(n, phase):
    """Paramiko CVE-2018-7750, Erlang/OTP CVE-2025-32433: nothing >= 80 before USERAUTH_SUCCESS."""
    pair = pair_with_receiver_in(S, phase)
    pair.inject(C, _payload(n))
    err = pair.expect_error(S)
    assert "not allowed" in err.description or "strict" in err.description
    assert not [e for e in pair.server_events
                if isinstance(e, (ev.ChannelOpenRequest, ev.GlobalRequestReceived, ev.ChannelDataReceived))]


@pytest.mark.parametrize("n", range(80, 101))
def test_T11_connection_message_from_server_before_auth_success_disconnects(n):
    pair = pair_with_receiver_in(C, Phase.AUTH)
    pair.inject(S, _payload(n))
    pair.expect_error(C)


@pytest.mark.parametrize("receiver", [Role.SERVER, Role.CLIENT], ids=lambda r: r.value)
def test_T11_every_message_off_the_table_disconnects(receiver):
    """Over real pairs, from the literal table: every known number the peer may not send.

    Each number is tried in one phase, round robin (the table itself is checked in full
    by test_T11_the_table_accepts_exactly_the_literal_expectation); 80-100 are tried in
    every phase above. EXT_INFO's places are T9's tests.
    """
    sender, phases = receiver.peer, (Phase.SERVICE, Phase.AUTH, Phase.OPEN)
    tried = {phase: 0 for phase in phases}
    for n in range(1, 128):
        if n == 7:
            continue
        for phase in phases[n % 3:] + phases[:n % 3]:
            if n not in EXPECTED_PHASE_TABLE[(phase, sender)] | GENERIC_LITERAL:
                break
        else:
            continue  # allowed in every phase
        pair = pair_with_receiver_in(receiver, phase)
        pair.inject(sender, _payload(n))
        pair.expect_error(receiver)
        tried[phase] += 1
    assert sum(tried.values()) > 100 and min(tried.values()) > 25


def test_T11_our_connection_message_before_authentication_is_a_local_error():
    """A bug on our side (here: a global request before USERAUTH_SUCCESS) is refused before
    it reaches the wire, and is not a ProtocolError: it never disconnects the peer."""
    pair = handshaken_pair()
    with pytest.raises(LocalError) as info:
        pair.client.send_global_request("keepalive@openssh.com")
    assert not isinstance(info.value, ProtocolError)
    pair.authenticate()


def test_T11_userauth_success_sent_by_the_client_disconnects():
    """Paramiko CVE-2018-1000805."""
    pair = handshaken_pair()
    pair.inject(C, m.UserauthSuccess().encode())
    err = pair.expect_error(S)
    assert "not allowed" in err.description
    assert not pair.server.authenticated


def test_T11_service_request_for_another_service_is_refused():
    pair = _to_client_newkeys(drain=False)  # the client has not queued its own SERVICE_REQUEST
    pair.inject(C, m.ServiceRequest("ssh-connection").encode())
    with pytest.raises(ProtocolError) as info:
        pair.transfer(C)
    assert pair.failed is S and info.value.reason == DisconnectReason.SERVICE_NOT_AVAILABLE


def test_T11_second_service_request_disconnects():
    pair = handshaken_pair()
    pair.inject(C, m.ServiceRequest("ssh-userauth").encode())
    pair.expect_error(S)


def test_T11_service_accept_for_another_service_disconnects():
    pair = _to_client_newkeys(drain=True)
    pair.inject(S, m.ServiceAccept("ssh-connection").encode())
    pair.expect_error(C)


@pytest.mark.parametrize("n", [128, 192, 255])
@pytest.mark.parametrize("receiver", [Role.SERVER, Role.CLIENT], ids=lambda r: r.value)
@pytest.mark.parametrize("phase", [Phase.SERVICE, Phase.AUTH, Phase.OPEN], ids=lambda p: p.value)
def test_T11_unknown_message_numbers_get_unimplemented_and_the_connection_continues(n, receiver, phase,
                                                                                   monkeypatch):
    log = record_packets(monkeypatch)
    pair = pair_with_receiver_in(receiver, phase)
    pair.inject(receiver.peer, bytes([n]) + b"whatever")
    pair.pump()
    got = [seq for seq, p in log.received(pair.side(receiver)) if p[0] == n]
    replies = [m.Unimplemented.decode(p).seq for _, p in log.sent(pair.side(receiver)) if p[0] == m.MSG_UNIMPLEMENTED]
    assert replies == got and len(got) == 1
    if not pair.client.authenticated:
        pair.authenticate()
    pair.open_session()


def test_T11_unknown_message_during_strict_initial_kex_disconnects():
    pair = pair_with_receiver_in(S, Phase.KEX_INITIAL)
    pair.inject(C, bytes([200]))
    pair.expect_error(S)


# ---- global requests (RFC 4254 §4) ---------------------------------------------------------------

def test_global_request_replies_go_out_in_arrival_order():
    pair = authenticated_pair()
    for i in range(3):
        pair.client.send_global_request(f"x-{i}@example.com", b"%d" % i)
    pair.pump()
    reqs = pair.take(S, ev.GlobalRequestReceived)
    assert [(r.name, r.data, r.want_reply) for r in reqs] == [(f"x-{i}@example.com", b"%d" % i, True) for i in range(3)]
    pair.server.reply_global_request(reqs[2].token, True, b"two")
    pair.server.reply_global_request(reqs[1].token, False)
    pair.pump()
    assert not pair.take(C, ev.GlobalRequestReplied)
    pair.server.reply_global_request(reqs[0].token, True, b"zero")
    pair.pump()
    assert pair.take(C, ev.GlobalRequestReplied) == [
        ev.GlobalRequestReplied(True, b"zero"), ev.GlobalRequestReplied(False, b""),
        ev.GlobalRequestReplied(True, b"two")]


def test_global_request_without_want_reply_gets_no_reply():
    pair = authenticated_pair()
    pair.client.send_global_request("keepalive@openssh.com", want_reply=False)
    pair.pump()
    (req,) = pair.take(S, ev.GlobalRequestReceived)
    assert (req.want_reply, req.token) == (False, -1)
    with pytest.raises(LocalError):
        pair.server.reply_global_request(req.token, True)


def test_global_request_from_server_to_client():
    pair = authenticated_pair()
    pair.server.send_global_request("hostkeys-00@openssh.com", b"", want_reply=False)
    pair.server.send_global_request("x@example.com", b"q")
    pair.pump()
    reqs = pair.take(C, ev.GlobalRequestReceived)
    assert [r.name for r in reqs] == ["hostkeys-00@openssh.com", "x@example.com"]
    pair.client.reply_global_request(reqs[1].token, True, m.TcpipForwardReply(4242).encode())
    pair.pump()
    (rep,) = pair.take(S, ev.GlobalRequestReplied)
    assert m.TcpipForwardReply.decode(rep.data).port == 4242


@pytest.mark.parametrize("payload", [m.RequestSuccess(b"").encode(), m.RequestFailure().encode()])
def test_global_request_reply_without_a_request_is_an_error(payload):
    pair = authenticated_pair()
    pair.inject(S, payload)
    err = pair.expect_error(C)
    assert "without a request" in err.description


def test_too_many_unanswered_global_requests_is_an_error():
    pair = authenticated_pair()
    for _ in range(65):
        pair.client.send_global_request("x@example.com")
    pair.expect_error(S)


def test_no_more_sessions_then_session_open_is_refused():
    pair = authenticated_pair()
    first = pair.open_session()
    pair.client.send_global_request("no-more-sessions@openssh.com", want_reply=False)
    pair.pump()
    assert not pair.take(S, ev.GlobalRequestReceived)
    assert pair.server.no_more_sessions
    cid = pair.client.channels.open("session")
    pair.pump()
    assert not pair.take(S, ev.ChannelOpenRequest)
    (failed,) = pair.take(C, ev.ChannelOpenFailed)
    assert (failed.channel_id, failed.reason) == (cid, m.OPEN_ADMINISTRATIVELY_PROHIBITED)
    # Other channel types, and the session already open, still work.
    pair.open_session("direct-tcpip", m.DirectTcpip("localhost", 22, "127.0.0.1", 5555).encode())
    pair.client.channels.send_data(first, b"still here")
    pair.pump()
    assert pair.data_received(S, pair.server_id(first)) == b"still here"


def test_no_more_sessions_with_want_reply_is_answered():
    pair = authenticated_pair()
    pair.client.send_global_request("no-more-sessions@openssh.com", want_reply=True)
    pair.pump()
    assert pair.take(C, ev.GlobalRequestReplied) == [ev.GlobalRequestReplied(True, b"")]


def test_no_more_sessions_from_the_server_does_not_restrict_the_server():
    pair = authenticated_pair()
    pair.server.send_global_request("no-more-sessions@openssh.com", want_reply=False)
    pair.pump()
    assert not pair.client.no_more_sessions and not pair.server.no_more_sessions
    pair.open_session()


# ---- end of connection ---------------------------------------------------------------------------

def test_peer_disconnect_closes_the_connection():
    pair = authenticated_pair()
    pair.client.disconnect(DisconnectReason.BY_APPLICATION, "done")
    with pytest.raises(DisconnectError) as info:
        pair.pump()
    assert (info.value.reason, info.value.description) == (DisconnectReason.BY_APPLICATION, "done")
    assert pair.server.closed


# ---- properties: arbitrary input raises only ProtocolError -------------------------------------------

_any_payload = st.one_of(
    st.builds(lambda t, tail: bytes([t]) + tail, st.integers(1, 255), st.binary(max_size=48)),
    st.sampled_from(all_message_classes()).filter(lambda c: c.number is not None)
    .flatmap(message_strategy).map(lambda msg: msg.encode()),
    st.sampled_from(list(CONNECTION_PAYLOADS.values())),
)


def _feed(pair, sender: Role, payloads: list[bytes]) -> None:
    receiver = sender.peer
    for payload in payloads:
        pair.inject(sender, payload)
        try:
            pair.pump()
        except DisconnectError:
            assert pair.failed is receiver and payload[0] == m.MSG_DISCONNECT
            return
        except ProtocolError:
            return  # the property: nothing but ProtocolError (and DISCONNECT's DisconnectError)


@settings(max_examples=60, deadline=None)
@given(payloads=st.lists(_any_payload, min_size=1, max_size=4), authenticated=st.booleans(),
       to_server=st.booleans())
def test_receive_of_arbitrary_protected_payloads_raises_only_protocol_error(payloads, authenticated, to_server):
    pair = authenticated_pair() if authenticated else handshaken_pair()
    if authenticated:
        pair.open_session()
    _feed(pair, C if to_server else S, payloads)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_receive_of_arbitrary_bytes_after_the_version_raises_only_protocol_error(data, as_server):
    if as_server:
        conn = Connection(Role.SERVER, host_keys=((host_key(), None),))
    else:
        conn = Connection(Role.CLIENT, verify_host_key=accept_any_host_key, username="u")
    try:
        conn.receive_data(b"SSH-2.0-Fuzz\r\n" + data)
        while conn.next_event() is not None:
            pass
    except ProtocolError:
        pass
    except DisconnectError:
        assert data  # only a (well-formed) DISCONNECT packet gives this
