"""Transport tests: a client and a server core in memory (tests/ssh_proto/pairs.py).

Covers the version exchange (T17), every kex method and cipher/MAC end to end, strict
key exchange (T1), rekeying by volume and time with data in flight (T8), EXT_INFO
placement (T9), host-key checks (T10, T16) and the integrity of the protected stream
(OpenSSH regress/integrity.sh: one flipped bit after the kex, for every cipher).
"""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairs import (PASSWORD, C, S, FakeClock, authenticated_pair, algorithms, handshaken_pair, host_key,
                   insert_before, make_pair, record_packets, transport_without)
from ssh_proto import events as ev
from ssh_proto import messages as m
from ssh_proto.ciphers import CIPHERS, MACS, cipher_needs_mac
from ssh_proto.connection import Connection, ConnectionOptions
from ssh_proto.errors import (ConnectionLost, DisconnectError, DisconnectReason, HostKeyNotVerifiable,
                              KeyExchangeError, LocalError, MACError, ProtocolError)
from ssh_proto.kex import KEX_METHODS
from ssh_proto.keys import PrivateKey
from ssh_proto.state import Role
from ssh_proto.transport import (EXT_INFO_CLIENT, EXT_INFO_SERVER, STRICT_KEX_CLIENT, STRICT_KEX_SERVER, Transport,
                                 accept_any_host_key)

CIPHER_MACS = [(c, None) for c in CIPHERS if not cipher_needs_mac(c)] + [
    (c, mac) for c in CIPHERS if cipher_needs_mac(c) for mac in MACS]
KEXES = sorted(KEX_METHODS)
#: Pairwise: every cipher/MAC once, the kex methods cycled through them (each one used).
KEX_CIPHER_MACS = [(KEXES[i % len(KEXES)], c, mac) for i, (c, mac) in enumerate(CIPHER_MACS)]
assert {k for k, _, _ in KEX_CIPHER_MACS} == set(KEXES)
#: Every cipher, each CTR one with an EtM and a MAC-then-encrypt MAC, and every MAC once.
INTEGRITY_CASES = [(c, mac) for c, mac in CIPHER_MACS
                   if mac in (None, "hmac-sha2-256-etm@openssh.com", "hmac-sha2-256") or c == "aes128-ctr"]


def _opts(**kw) -> ConnectionOptions:
    return ConnectionOptions(algorithms=algorithms(**kw))


def _exchange_data(pair, size: int = 5000) -> None:
    """Open a session and move ``size`` bytes each way, checking every byte."""
    cid = pair.open_session()
    sid = pair.server_id(cid)
    up, down = bytes(range(256)) * (size // 256 + 1), bytes(reversed(range(256))) * (size // 256 + 1)
    assert pair.client.channels.send_data(cid, up[:size]) == size
    assert pair.server.channels.send_data(sid, down[:size], m.EXTENDED_DATA_STDERR) == size
    pair.pump()
    assert pair.data_received(S, sid) == up[:size]
    assert pair.data_received(C, cid, m.EXTENDED_DATA_STDERR) == down[:size]


# ---- T17 version exchange ------------------------------------------------------------------

def _client() -> Connection:
    return Connection(Role.CLIENT, verify_host_key=accept_any_host_key, username="u")


def _server() -> Connection:
    return Connection(Role.SERVER, host_keys=((host_key(), None),))


def _version_error(conn: Connection, data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(data)
    assert info.value.reason == DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED
    return info.value


@pytest.mark.parametrize("make", [_client, _server])
def test_T17_version_line_longer_than_255_bytes_is_refused(make):
    _version_error(make(), b"SSH-2.0-" + b"x" * 246 + b"\r\n")  # 256 bytes


@pytest.mark.parametrize("make", [_client, _server])
def test_T17_unterminated_version_line_is_refused_once_past_255_bytes(make):
    conn = make()
    conn.receive_data(b"SSH-2.0-" + b"x" * 200)
    _version_error(conn, b"x" * 60)


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
def test_T17_version_line_of_exactly_255_bytes_is_accepted(ending):
    conn = _server()
    line = b"SSH-2.0-" + b"v" * (255 - 8 - len(ending))
    conn.receive_data(line + ending)
    assert conn.transport.peer_version == line


@pytest.mark.parametrize("version", [b"SSH-1.5-OpenSSH", b"SSH-2.1-x", b"SSH-3.0-x", b"SSH-2.0", b"SSH-20-x"])
def test_T17_non_ssh2_version_is_refused(version):
    _version_error(_server(), version + b"\r\n")


def test_T17_ssh_1_99_version_is_accepted_as_ssh2():
    conn = _server()
    conn.receive_data(b"SSH-1.99-Old\r\n")
    assert conn.transport.peer_version == b"SSH-1.99-Old"


def test_T17_control_characters_in_version_are_refused():
    _version_error(_server(), b"SSH-2.0-a\x00b\r\n")


def test_T17_pre_banner_lines_from_server_are_allowed_up_to_the_cap():
    conn = _client()
    conn.receive_data(b"".join(b"hello %d\r\n" % i for i in range(64)) + b"SSH-2.0-Peer\r\n")
    assert conn.transport.peer_version == b"SSH-2.0-Peer"


def test_T17_too_many_pre_banner_lines_from_server_are_refused():
    conn = _client()
    conn.receive_data(b"line\r\n" * 64)
    _version_error(conn, b"one too many\r\n")


def test_T17_overlong_pre_banner_line_is_refused():
    _version_error(_client(), b"x" * 9000)


def test_T17_pre_banner_lines_from_client_are_refused():
    _version_error(_server(), b"GET / HTTP/1.0\r\n")


@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_T17_lf_only_version_ending_completes_the_handshake(direction):
    done = []

    def lf_only(data: bytes) -> bytes:
        if not done:
            done.append(True)
            return data.replace(b"\r\n", b"\n", 1)
        return data

    pair = authenticated_pair(**{direction: lf_only})
    assert pair.client.session_id == pair.server.session_id
    _exchange_data(pair, 100)


def test_T17_version_split_across_reads_with_packets_behind_it():
    """The version line and the first packets arrive byte by byte."""
    pair = make_pair()
    client_bytes = pair.client.data_to_send()
    for i in range(len(client_bytes)):
        pair.server.receive_data(client_bytes[i:i + 1])
    assert pair.server.transport.peer_version.startswith(b"SSH-2.0-")
    pair.pump()
    assert pair.server.transport.handshake_complete


# ---- every kex method x every cipher/MAC ------------------------------------------------------

@pytest.mark.parametrize("kex,cipher,mac", KEX_CIPHER_MACS, ids=lambda v: str(v))
def test_handshake_auth_channel_and_data_for_every_kex_and_cipher(kex, cipher, mac):
    pair = authenticated_pair(options=_opts(kex=kex, cipher=cipher, mac=mac))
    n = pair.client.transport.negotiated
    assert (n.kex, n.cipher_cs, n.cipher_sc, n.mac_cs, n.mac_sc) == (kex, cipher, cipher, mac, mac)
    assert pair.client.session_id == pair.server.session_id
    _exchange_data(pair, 3000)


@pytest.mark.parametrize("key_type,alg", [
    ("ssh-ed25519", "ssh-ed25519"),
    ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
    ("ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"),
    ("ecdsa-sha2-nistp521", "ecdsa-sha2-nistp521"),
    ("ssh-rsa", "rsa-sha2-256"),
    ("ssh-rsa", "rsa-sha2-512"),
])
def test_handshake_for_every_host_key_algorithm(key_type, alg):
    seen = []
    pair = authenticated_pair(client_options=_opts(host_key_alg=alg), host_keys=((host_key(key_type), None),),
                              verify_host_key=seen.append)
    assert pair.client.transport.negotiated.host_key == alg
    assert seen == [host_key(key_type).public_key]
    assert pair.client.transport.host_key == host_key(key_type).public_key


def test_server_offers_only_host_key_algorithms_it_has_keys_for():
    pair = make_pair(host_keys=((host_key("ecdsa-sha2-nistp256"), None),))
    pair.pump()
    assert pair.client.transport.negotiated.host_key == "ecdsa-sha2-nistp256"


def test_no_common_algorithm_fails_the_kex():
    pair = make_pair(client_options=_opts(cipher="aes128-ctr"), server_options=_opts(cipher="aes256-gcm@openssh.com"))
    pair.expect_error(S, KeyExchangeError)  # the server reads the other KEXINIT first


def test_wrong_first_kex_packet_guess_is_ignored():
    """RFC 4253 §7: a KEXINIT with first_kex_packet_follows and a wrong guess; the guessed packet is dropped."""

    class Guessing(Transport):
        def _make_kexinit(self) -> m.KexInit:
            msg = super()._make_kexinit()
            if self.kex_count or self._first_kex_done:
                return msg
            # Our first choice is one the server lacks, so the guess below must be wrong.
            return msg.replace(kex_algorithms=("x-unknown@example.com",) + msg.kex_algorithms,
                                       first_kex_packet_follows=True)

        def _start_kex(self) -> None:
            super()._start_kex()
            if not self._first_kex_done:
                # written raw: our own transport never guesses, so its table has no room for it
                self._out.append(self._writer.write(bytes([m.MSG_KEX_INIT]) + b"a guess the server must ignore"))

    pair = authenticated_pair(client_transport=Guessing)
    assert pair.server.transport.negotiated.kex != "x-unknown@example.com"
    _exchange_data(pair, 100)


# ---- T1 strict key exchange ----------------------------------------------------------------------

GENERIC = [m.Ignore(b"x").encode(), m.Debug(False, "hi", b"").encode(), m.Unimplemented(0).encode()]
GENERIC_IDS = ["IGNORE", "DEBUG", "UNIMPLEMENTED"]


def test_T1_disconnect_during_strict_initial_kex_ends_with_the_peers_reason():
    """A server refusing a login at its door (a limit) says why even before NEWKEYS."""
    pair = make_pair()
    pair.transfer(C)
    pair.inject(S, m.Disconnect(12, "too many connections", b"").encode())
    with pytest.raises(DisconnectError) as info:
        pair.pump()
    assert (info.value.reason, info.value.description) == (12, "too many connections")


@pytest.mark.parametrize("payload", GENERIC, ids=GENERIC_IDS)
def test_T1_ignore_before_newkeys_under_strict_kex_disconnects(payload):
    """The client sends KEX_INIT, then IGNORE (or DEBUG, UNIMPLEMENTED), before its NEWKEYS."""
    pair = make_pair()
    pair.transfer(C)
    pair.transfer(S)  # the client now has KEX_INIT queued
    pair.inject(C, payload)
    err = pair.expect_error(S)
    assert "strict" in err.description
    assert not pair.server.transport.handshake_complete


@pytest.mark.parametrize("payload", GENERIC, ids=GENERIC_IDS)
def test_T1_server_ignore_during_initial_kex_under_strict_kex_disconnects(payload):
    pair = make_pair()
    pair.transfer(C)  # the server has its KEXINIT queued and now knows the kex is strict
    pair.inject(S, payload)
    pair.expect_error(C)


@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_T1_ignore_inserted_before_newkeys_by_a_mitm_disconnects(direction):
    """Terrapin's first step: a man in the middle adds an IGNORE before NEWKEYS."""
    mitm = insert_before(m.MSG_NEWKEYS, m.Ignore(b"terrapin").encode())
    pair = make_pair(**{direction: mitm})
    pair.expect_error(S if direction == "c2s" else C)


@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_T1_kexinit_not_first_packet_under_strict_disconnects(direction):
    mitm = insert_before(m.MSG_KEXINIT, m.Ignore(b"").encode())
    pair = make_pair(**{direction: mitm})
    err = pair.expect_error(S if direction == "c2s" else C)
    assert "first packet" in err.description


def _seq_after_each_newkeys(packets: list[tuple[int, bytes]]) -> list[int]:
    return [packets[i + 1][0] for i, (_, p) in enumerate(packets[:-1]) if p[0] == m.MSG_NEWKEYS]


def test_T1_sequence_numbers_reset_to_zero_after_every_newkeys(monkeypatch):
    log = record_packets(monkeypatch)
    pair = authenticated_pair()
    for side in (C, S, C):  # rekeys started by either side, with traffic in between
        _exchange_data(pair, 100)
        pair.side(side).transport.start_rekey()
        pair.pump()
        for conn in (pair.client, pair.server):  # one packet after each NEWKEYS, both ways
            conn.send_global_request("keepalive@openssh.com", want_reply=False)
        pair.pump()
    assert pair.client.transport.strict_kex and pair.server.transport.strict_kex
    assert pair.client.transport.kex_count == pair.server.transport.kex_count == 4
    for conn in (pair.client, pair.server):
        assert _seq_after_each_newkeys(log.sent(conn)) == [0, 0, 0, 0]
        assert _seq_after_each_newkeys(log.received(conn)) == [0, 0, 0, 0]
        seq, first = log.sent(conn)[0]
        assert (seq, first[0]) == (0, m.MSG_KEXINIT)


def test_T1_without_strict_kex_sequence_numbers_keep_counting(monkeypatch):
    log = record_packets(monkeypatch)
    pair = authenticated_pair(client_transport=transport_without(STRICT_KEX_CLIENT))
    pair.server.transport.start_rekey()
    pair.pump()
    pair.server.send_global_request("keepalive@openssh.com", want_reply=False)
    pair.pump()
    assert not pair.client.transport.strict_kex and not pair.server.transport.strict_kex
    for conn in (pair.client, pair.server):
        for packets in (log.sent(conn), log.received(conn)):
            seqs = [seq for seq, _ in packets]
            assert seqs == list(range(len(seqs)))


@pytest.mark.parametrize("offers_strict", ["client", "server"])
def test_T1_strict_kex_needs_both_markers(offers_strict):
    """Only one side offering kex-strict-* means no strict kex, on both sides."""
    kw = ({"server_transport": transport_without(STRICT_KEX_SERVER)} if offers_strict == "client"
          else {"client_transport": transport_without(STRICT_KEX_CLIENT)})
    pair = authenticated_pair(**kw)
    assert not pair.client.transport.strict_kex and not pair.server.transport.strict_kex
    pair.client.transport.start_rekey()
    pair.pump()
    _exchange_data(pair, 100)


@pytest.mark.parametrize("payload", GENERIC, ids=GENERIC_IDS)
def test_T1_without_strict_kex_ignore_during_kex_is_tolerated(payload):
    pair = make_pair(client_transport=transport_without(STRICT_KEX_CLIENT))
    pair.transfer(C)
    pair.transfer(S)
    pair.inject(C, payload)
    pair.inject(S, payload)
    pair.pump()
    assert pair.server.transport.handshake_complete and not pair.server.transport.strict_kex
    pair.authenticate()


def test_T1_ignore_during_rekey_is_tolerated_under_strict_kex():
    pair = authenticated_pair()
    pair.client.transport.start_rekey()
    pair.inject(C, m.Ignore(b"").encode())
    pair.pump()
    assert pair.server.transport.kex_count == 2


def test_T1_T9_pseudo_algorithms_only_in_the_first_kexinit(monkeypatch):
    log = record_packets(monkeypatch)
    pair = authenticated_pair()
    pair.client.transport.start_rekey()
    pair.pump()
    pair.server.transport.start_rekey()
    pair.pump()
    for conn, markers in ((pair.client, {STRICT_KEX_CLIENT, EXT_INFO_CLIENT}),
                          (pair.server, {STRICT_KEX_SERVER, EXT_INFO_SERVER})):
        kexinits = [m.KexInit.decode(p) for _, p in log.sent(conn) if p[0] == m.MSG_KEXINIT]
        assert len(kexinits) == 3
        assert markers <= set(kexinits[0].kex_algorithms)
        for later in kexinits[1:]:
            assert not markers & set(later.kex_algorithms)
            assert not set(later.kex_algorithms) & {STRICT_KEX_CLIENT, STRICT_KEX_SERVER,
                                                    EXT_INFO_CLIENT, EXT_INFO_SERVER}
    assert pair.client.transport.strict_kex


def test_T1_sequence_number_wrap_during_initial_kex_disconnects():
    pair = make_pair(client_transport=transport_without(STRICT_KEX_CLIENT))
    pair.server.transport._reader.seq = 0xFFFFFFFF  # the client's KEXINIT will wrap it
    err = pair.expect_error(S)
    assert "wrapped" in err.description


# ---- T8 rekey ---------------------------------------------------------------------------------

def _stream(pair, cid: int, total: int, chunk: int = 20000) -> tuple[bytes, bytes]:
    """Send ``total`` bytes client->server in chunks, pumping; return (sent, received)."""
    sid = pair.server_id(cid)
    sent = bytes(i * 7 % 251 for i in range(total))
    got = bytearray()
    pos = 0
    while pos < total:
        pos += pair.client.channels.send_data(cid, sent[pos:pos + chunk])
        pair.pump()
        got += pair.data_received(S, sid)
    return sent, bytes(got)


def test_T8_rekey_forced_by_volume():
    pair = authenticated_pair(options=ConnectionOptions(rekey_bytes=32 * 1024))
    cid = pair.open_session()
    session_id = pair.client.session_id
    sent, got = _stream(pair, cid, 600_000)
    assert got == sent
    assert pair.client.transport.kex_count >= 10
    assert pair.server.transport.kex_count == pair.client.transport.kex_count
    assert pair.client.session_id == pair.server.session_id == session_id


@pytest.mark.parametrize("side", [C, S])
def test_T8_rekey_forced_by_time(side):
    clock = FakeClock()
    pair = authenticated_pair(options=ConnectionOptions(rekey_seconds=600), clock=clock)
    t = pair.side(side).transport
    clock.advance(599)
    t.check_rekey_timer()
    assert not t.kex_running
    clock.advance(1)
    t.check_rekey_timer()
    assert t.kex_running
    pair.pump()
    assert pair.client.transport.kex_count == pair.server.transport.kex_count == 2
    clock.advance(300)
    t.check_rekey_timer()
    assert not t.kex_running  # the timer restarted with the new keys
    _exchange_data(pair, 100)


@pytest.mark.parametrize("side", [C, S])
def test_T8_rekey_started_by_either_side_with_data_flowing(side):
    pair = authenticated_pair()
    cid = pair.open_session()
    sid = pair.server_id(cid)
    pair.side(side).transport.start_rekey()
    ups, downs = [], []
    for i in range(20):
        ups.append(b"up%d;" % i)
        downs.append(b"down%d;" % i)
        pair.client.channels.send_data(cid, ups[-1])
        pair.server.channels.send_data(sid, downs[-1])
        pair.client.channels.send_request(cid, "env", m.EnvRequest(f"V{i}", "x").encode(), want_reply=False)
        pair.transfer(C if i % 2 else S)  # interleave the kex with the data
    pair.pump()
    assert pair.data_received(S, sid) == b"".join(ups)
    assert pair.data_received(C, cid) == b"".join(downs)
    envs = [m.EnvRequest.decode(e.data).name for e in pair.take(S, ev.ChannelRequestReceived)]
    assert envs == [f"V{i}" for i in range(20)]
    assert pair.client.transport.kex_count == pair.server.transport.kex_count == 2


def test_T8_messages_sent_during_kex_are_held_until_newkeys(monkeypatch):
    log = record_packets(monkeypatch)
    pair = authenticated_pair()
    cid = pair.open_session()
    pair.client.transport.start_rekey()
    assert pair.client.transport.kex_running
    before = pair.client.transport.pending_output
    pair.client.channels.send_data(cid, b"held" * 100)
    assert pair.client.transport.pending_output > before  # held bytes count as pending output
    pair.pump()
    sent = [p[0] for _, p in log.sent(pair.client)]
    kexinit = len(sent) - 1 - sent[::-1].index(m.MSG_KEXINIT)
    newkeys = len(sent) - 1 - sent[::-1].index(m.MSG_NEWKEYS)
    assert all(t in (m.MSG_KEXINIT, m.MSG_NEWKEYS) or 30 <= t <= 49 for t in sent[kexinit:newkeys + 1])
    assert sent[newkeys + 1] == m.MSG_CHANNEL_DATA
    assert pair.data_received(S, pair.server_id(cid)) == b"held" * 100


def test_T8_many_rekeys_in_a_row_from_both_sides():
    pair = authenticated_pair(options=_opts(kex="curve25519-sha256"))
    cid = pair.open_session()
    sid = pair.server_id(cid)
    expected = bytearray()
    for i in range(30):
        if i % 3 == 2:  # both at once: crossing KEXINITs
            pair.client.transport.start_rekey()
            pair.server.transport.start_rekey()
        else:
            pair.side(C if i % 2 else S).transport.start_rekey()
        data = b"%d," % i
        pair.client.channels.send_data(cid, data)
        expected += data
        pair.pump()
        assert pair.client.transport.kex_count == pair.server.transport.kex_count == i + 2
    assert pair.data_received(S, sid) == bytes(expected)


def test_T8_start_rekey_while_a_kex_runs_is_a_no_op():
    pair = authenticated_pair()
    pair.client.transport.start_rekey()
    pair.client.transport.start_rekey()
    pair.pump()
    assert pair.client.transport.kex_count == 2


def test_T8_peer_may_send_data_before_its_own_kexinit():
    """Until the peer's KEXINIT arrives, its application messages are still valid."""
    pair = authenticated_pair()
    cid = pair.open_session()
    pair.server.transport.start_rekey()     # server's KEXINIT is queued, not yet sent
    pair.client.channels.send_data(cid, b"early")
    pair.transfer(C)                        # arrives at the server while its kex runs
    pair.pump()
    assert pair.data_received(S, pair.server_id(cid)) == b"early"
    assert pair.server.transport.kex_count == 2


def _kexinit_payload() -> bytes:
    a = algorithms()
    return m.KexInit(bytes(16), a.kex_for(C), a.host_keys, a.ciphers, a.ciphers, a.macs, a.macs, ("none",), ("none",),
                     (), (), False, 0).encode()


def test_T8_kexinit_during_initial_kex_is_an_error():
    pair = make_pair()
    pair.inject(C, _kexinit_payload())
    err = pair.expect_error(S)
    assert "KEXINIT" in err.description


def test_T8_kexinit_during_rekey_is_an_error():
    pair = authenticated_pair()
    pair.client.transport.start_rekey()
    pair.inject(C, _kexinit_payload())
    pair.expect_error(S)


@pytest.mark.parametrize("payload", [
    m.GlobalRequest("keepalive@openssh.com", False, b"").encode(),
    m.ChannelData(0, b"x").encode(),
    m.ServiceRequest("ssh-userauth").encode(),
    bytes([200]),
], ids=["GLOBAL_REQUEST", "CHANNEL_DATA", "SERVICE_REQUEST", "msg200"])
def test_T8_application_message_after_kexinit_before_newkeys_is_an_error(payload):
    pair = authenticated_pair()
    pair.open_session()
    pair.client.transport.start_rekey()
    pair.inject(C, payload)
    err = pair.expect_error(S)
    assert "key exchange" in err.description


def test_T8_rekey_also_before_authentication():
    pair = handshaken_pair()
    pair.server.transport.start_rekey()
    pair.authenticate()
    assert pair.client.transport.kex_count == 2


# ---- T9 EXT_INFO ----------------------------------------------------------------------------------

def test_T9_server_sends_server_sig_algs_right_after_its_first_newkeys(monkeypatch):
    log = record_packets(monkeypatch)
    pair = authenticated_pair()
    pair.server.transport.start_rekey()
    pair.pump()
    algs = pair.client.transport.peer_ext_info["server-sig-algs"].decode().split(",")
    assert "ssh-ed25519" in algs and "rsa-sha2-256" in algs and "ssh-rsa" not in algs
    types = [p[0] for _, p in log.sent(pair.server)]
    assert types.count(m.MSG_EXT_INFO) == 1
    assert types[types.index(m.MSG_NEWKEYS) + 1] == m.MSG_EXT_INFO
    assert log.sent(pair.server)[types.index(m.MSG_EXT_INFO)][0] == 0  # first packet under the new keys


def test_T9_no_ext_info_for_a_client_that_did_not_offer_ext_info_c(monkeypatch):
    log = record_packets(monkeypatch)
    pair = authenticated_pair(client_transport=transport_without(EXT_INFO_CLIENT))
    assert pair.client.transport.peer_ext_info == {}
    assert m.MSG_EXT_INFO not in [p[0] for _, p in log.sent(pair.server)]


def _ext_info() -> bytes:
    return m.ExtInfo((("server-sig-algs", b"ssh-rsa"),)).encode()


@pytest.mark.parametrize("side", [C, S])
def test_T9_ext_info_after_authentication_is_an_error(side):
    pair = authenticated_pair()
    pair.inject(side, _ext_info())
    err = pair.expect_error(side.peer)
    assert "EXT_INFO" in err.description


def test_T9_ext_info_before_service_accept_but_not_first_is_an_error():
    pair = make_pair()
    pair.transfer(C)
    pair.transfer(S)
    pair.transfer(C)
    pair.transfer(S)  # REPLY, NEWKEYS and the server's EXT_INFO: the client's kex is complete
    assert pair.client.transport.handshake_complete and not pair.take(C, ev.ServiceAccepted)
    pair.inject(S, _ext_info())
    err = pair.expect_error(C)
    assert "EXT_INFO" in err.description


def _in_auth_with_password_pending(**kw):
    """The client's password request waits for the server's decision (AUTH, both parties)."""
    pair = handshaken_pair(**kw)
    assert pair.take(C, ev.ServiceAccepted)
    pair.client.client_auth.request_password(PASSWORD)
    pair.pump()
    assert pair.take(S, ev.AuthPassword)
    return pair


def test_T9_second_ext_info_right_before_userauth_success_is_accepted():
    """RFC 8308 §2.4: "a client that sent ext-info-c MUST accept a server's EXT_INFO at both
    opportunities" — the second is immediately before USERAUTH_SUCCESS."""
    pair = _in_auth_with_password_pending()
    pair.inject(S, m.ExtInfo((("x-second@example.com", b"2"),)).encode())
    pair.server.auth_accept()
    pair.pump()
    (result,) = pair.take(C, ev.AuthResult)
    assert result.success and pair.client.authenticated
    assert pair.client.transport.peer_ext_info["x-second@example.com"] == b"2"
    assert "server-sig-algs" in pair.client.transport.peer_ext_info  # the first one's extensions stay


def test_T9_second_ext_info_not_followed_by_userauth_success_is_an_error():
    pair = _in_auth_with_password_pending()
    pair.inject(S, _ext_info())
    pair.server.server_auth.reject()  # USERAUTH_FAILURE right behind it: not the RFC's place
    err = pair.expect_error(C)
    assert "USERAUTH_FAILURE" in err.description and "EXT_INFO" in err.description


def test_T9_third_ext_info_is_an_error():
    pair = _in_auth_with_password_pending()
    pair.inject(S, _ext_info())
    pair.inject(S, _ext_info())
    pair.expect_error(C)


def test_T9_second_ext_info_is_an_error_when_the_client_did_not_offer_ext_info_c():
    pair = _in_auth_with_password_pending(client_transport=transport_without(EXT_INFO_CLIENT))
    pair.inject(S, _ext_info())
    pair.server.auth_accept()
    err = pair.expect_error(C)
    assert "EXT_INFO" in err.description


def test_T9_ext_info_from_the_client_in_auth_is_an_error():
    """The second opportunity is the server's alone."""
    pair = _in_auth_with_password_pending()
    pair.inject(C, _ext_info())
    err = pair.expect_error(S)
    assert "EXT_INFO" in err.description


def test_T9_our_server_never_sends_ext_info_outside_the_kex():
    """Our own sends are checked by the same table: EXT_INFO is not an upper-layer message."""
    pair = _in_auth_with_password_pending()
    with pytest.raises(LocalError):
        pair.server.transport.send(_ext_info())


def test_T9_second_ext_info_after_newkeys_is_an_error():
    class TwoExtInfo(Transport):
        def _server_ext_info(self) -> bytes:
            payload = super()._server_ext_info()
            self._out.append(self._writer.write(payload))
            return payload

    pair = make_pair(server_transport=TwoExtInfo)
    pair.expect_error(C)


def test_T9_ext_info_as_first_packet_after_rekey_newkeys_is_an_error():
    class ExtInfoEveryKex(Transport):
        def _send_newkeys(self) -> None:
            first = self._first_kex_done
            super()._send_newkeys()
            if first:
                self._out.append(self._writer.write(_ext_info()))

    pair = authenticated_pair(server_transport=ExtInfoEveryKex)
    pair.client.transport.start_rekey()
    pair.expect_error(C)


def test_T9_ext_info_during_initial_kex_is_an_error():
    pair = make_pair()
    pair.transfer(C)
    pair.inject(S, _ext_info())
    pair.expect_error(C)


def test_T9_client_ext_info_first_after_newkeys_is_accepted():
    class ClientExtInfo(Transport):
        def _send_newkeys(self) -> None:
            super()._send_newkeys()
            if self.kex_count == 0:
                self._out.append(self._writer.write(m.ExtInfo((("x-test@example.com", b"1"),)).encode()))

    pair = authenticated_pair(client_transport=ClientExtInfo)
    assert pair.server.transport.peer_ext_info == {"x-test@example.com": b"1"}


# ---- T10 / T16 host key ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Signer:
    """Stands in for a host key: presents ``public`` and signs with ``sign``."""

    public_key: object
    sign: object


def _server_signing_with(signer: _Signer) -> type[Transport]:
    class Server(Transport):
        def _pick_host_key(self, alg):
            return signer, None

    return Server


def test_T10_host_key_signature_must_verify():
    key = host_key()
    bad = _Signer(key.public_key, lambda h, alg: key.sign(h + b"!", alg))
    pair = make_pair(server_transport=_server_signing_with(bad))
    err = pair.expect_error(C, KeyExchangeError)
    assert "signature" in err.description


def test_T10_host_key_type_must_match_the_negotiated_algorithm():
    ed = host_key("ssh-ed25519")
    signer = _Signer(ed.public_key, lambda h, alg: ed.sign(h))  # an ed25519 key for an ecdsa kex
    pair = make_pair(options=_opts(host_key_alg="ecdsa-sha2-nistp256"),
                     host_keys=((host_key("ecdsa-sha2-nistp256"), None),),
                     server_transport=_server_signing_with(signer))
    err = pair.expect_error(C, KeyExchangeError)
    assert "negotiated" in err.description


def test_T10_signature_algorithm_must_be_the_negotiated_one():
    rsa = host_key("ssh-rsa")
    signer = _Signer(rsa.public_key, lambda h, alg: rsa.sign(h, "rsa-sha2-256"))  # negotiated: rsa-sha2-512
    pair = make_pair(options=_opts(host_key_alg="rsa-sha2-512"), host_keys=((rsa, None),),
                     server_transport=_server_signing_with(signer))
    pair.expect_error(C, KeyExchangeError)


@pytest.mark.parametrize("exc", [HostKeyNotVerifiable("unknown host"), ValueError("policy bug"),
                                 KeyError("x")], ids=["HostKeyNotVerifiable", "ValueError", "KeyError"])
def test_T16_verify_host_key_raising_fails_the_handshake(exc):
    def verify(key):
        raise exc

    pair = make_pair(verify_host_key=verify)
    err = pair.expect_error(C, HostKeyNotVerifiable)
    assert err.reason == DisconnectReason.HOST_KEY_NOT_VERIFIABLE
    assert not pair.client.transport.handshake_complete
    assert not [e for e in pair.client_events if isinstance(e, ev.HandshakeComplete)]


@pytest.mark.parametrize("verdict", [False, 0, "yes", object()], ids=["False", "0", "str", "object"])
def test_T16_only_a_normal_return_accepts_the_host_key(verdict):
    pair = make_pair(verify_host_key=lambda key: verdict)
    pair.expect_error(C, HostKeyNotVerifiable)


def test_T16_verify_host_key_returning_true_or_none_accepts():
    for verdict in (None, True):
        pair = handshaken_pair(verify_host_key=lambda key, v=verdict: v)
        assert pair.client.transport.host_key == host_key().public_key


def test_T10_host_key_changed_during_rekey_is_refused():
    calls = []
    pair = authenticated_pair(verify_host_key=calls.append)
    pair.server.transport._host_keys = ((PrivateKey.generate("ssh-ed25519"), None),)
    pair.client.transport.start_rekey()
    err = pair.expect_error(C, HostKeyNotVerifiable)
    assert "changed" in err.description
    assert len(calls) == 1


def test_T10_host_key_checked_once_and_kept_across_rekeys():
    calls = []
    pair = authenticated_pair(verify_host_key=calls.append)
    for _ in range(3):
        pair.server.transport.start_rekey()
        pair.pump()
    assert calls == [host_key().public_key]


# ---- integrity: one flipped bit after the kex, for every cipher (regress/integrity.sh) --------

@pytest.mark.parametrize("cipher,mac", INTEGRITY_CASES, ids=lambda v: str(v))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_integrity_bit_flip_after_kex_is_detected(cipher, mac, data):
    pair = authenticated_pair(options=_opts(cipher=cipher, mac=mac, kex="curve25519-sha256"))
    cid = pair.open_session()
    payload = bytes(range(256)) * 4
    pair.server.channels.send_data(pair.server_id(cid), payload)
    wire = bytearray(pair.server.data_to_send())
    pos = data.draw(st.integers(0, len(wire) - 1), label="byte")
    wire[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    with pytest.raises(ProtocolError) as info:
        pair.client.receive_data(bytes(wire))
        while (event := pair.client.next_event()) is not None:
            pair.client_events.append(event)
        # A flipped length may announce a longer packet: the check comes once it is all here.
        for _ in range(20):
            pair.client.receive_data(bytes(16384))
    assert isinstance(info.value, MACError) or "length" in info.value.description
    assert pair.client.transport.next_payload() is None
    assert not [e for e in pair.client_events if isinstance(e, ev.ChannelDataReceived)]


@pytest.mark.parametrize("cipher,mac", INTEGRITY_CASES, ids=lambda v: str(v))
def test_integrity_bit_flip_in_header_and_tag_is_detected(cipher, mac):
    """The deterministic complement: each length byte, the padding length, the middle, the tag's ends."""
    pair = authenticated_pair(options=_opts(cipher=cipher, mac=mac, kex="curve25519-sha256"))
    pair.server.send_global_request("keepalive@openssh.com", want_reply=False)
    wire = pair.server.data_to_send()
    tail = MACS[mac].digest_size if mac else 16
    for pos in [0, 1, 2, 3, 4, len(wire) // 2, len(wire) - tail, len(wire) - 1]:
        receiver = authenticated_pair(options=_opts(cipher=cipher, mac=mac, kex="curve25519-sha256"))
        receiver.server.send_global_request("keepalive@openssh.com", want_reply=False)
        good = receiver.server.data_to_send()
        assert len(good) == len(wire)
        bad = bytearray(good)
        bad[pos] ^= 0x80
        with pytest.raises(ProtocolError):
            receiver.client.receive_data(bytes(bad))
            for _ in range(20):
                receiver.client.receive_data(bytes(16384))
        assert receiver.client.transport.next_payload() is None  # nothing reached the upper layers


# ---- DISCONNECT -----------------------------------------------------------------------------------

def test_disconnect_reaches_the_peer_with_its_reason():
    pair = authenticated_pair()
    pair.server.disconnect(DisconnectReason.BY_APPLICATION, "bye")
    with pytest.raises(DisconnectError) as info:
        pair.pump()
    assert info.value.reason == DisconnectReason.BY_APPLICATION and info.value.description == "bye"
    assert pair.client.closed and pair.server.closed


def test_disconnect_during_kex_drops_held_messages():
    pair = authenticated_pair()
    cid = pair.open_session()
    pair.client.transport.start_rekey()
    pair.client.channels.send_data(cid, b"never sent")
    pair.client.disconnect()
    assert pair.client.transport.pending_output > 0
    pair.client.data_to_send()
    assert pair.client.transport.pending_output == 0


def test_end_of_stream_is_connection_lost():
    pair = authenticated_pair()
    with pytest.raises(ConnectionLost):
        pair.client.receive_data(b"")


# ---- T18 delayed compression (zlib@openssh.com) -------------------------------------------------

def _zlib_options(**kw) -> ConnectionOptions:
    return ConnectionOptions(algorithms=dataclasses.replace(algorithms(), compression=("zlib@openssh.com",)), **kw)


def _auth_with(pair, after_accept=lambda pair: None) -> None:
    pair.pump()
    pair.take(C, ev.ServiceAccepted)
    pair.client.client_auth.request_password("pw")
    pair.pump()
    pair.take(S, ev.AuthPassword)
    pair.server.auth_accept()
    after_accept(pair)
    pair.pump()
    assert pair.take(C, ev.AuthResult)[0].success


def test_T18_compression_starts_after_userauth_success(monkeypatch):
    log = record_packets(monkeypatch)
    pair = make_pair(options=_zlib_options())
    _auth_with(pair)
    assert pair.client.transport.negotiated.compression_cs == "zlib@openssh.com"
    for conn in (pair.client, pair.server):
        assert conn.transport._writer.compression == conn.transport._reader.compression == "zlib@openssh.com"
    _exchange_data(pair, 20000)
    pair.client.transport.start_rekey()
    pair.pump()
    _exchange_data(pair, 100)


def test_T18_packets_right_behind_userauth_success_are_decompressed():
    """The server sends SUCCESS and, in the same read, a compressed global request (OpenSSH's hostkeys-00)."""
    pair = make_pair(options=_zlib_options())
    _auth_with(pair, lambda p: p.server.send_global_request("hostkeys-00@openssh.com", b"", want_reply=False))
    assert [e.name for e in pair.take(C, ev.GlobalRequestReceived)] == ["hostkeys-00@openssh.com"]
    _exchange_data(pair, 1000)


def test_T18_userauth_success_held_by_a_rekey_is_sent_uncompressed():
    pair = make_pair(options=_zlib_options())

    def rekey_then_more(p):
        p.server.send_global_request("x@example.com", b"after", want_reply=False)

    pair.pump()
    pair.take(C, ev.ServiceAccepted)
    pair.client.client_auth.request_password("pw")
    pair.pump()
    pair.take(S, ev.AuthPassword)
    pair.server.transport.start_rekey()      # SUCCESS and what follows are held by this kex
    pair.server.auth_accept()
    rekey_then_more(pair)
    pair.pump()
    assert pair.take(C, ev.AuthResult)[0].success
    assert [e.data for e in pair.take(C, ev.GlobalRequestReceived)] == [b"after"]
    _exchange_data(pair, 1000)


def test_T18_no_compression_before_authentication():
    pair = handshaken_pair(options=_zlib_options())
    for conn in (pair.client, pair.server):
        assert conn.transport._writer.compression == conn.transport._reader.compression == "none"


def test_disconnect_before_the_peers_version_is_still_sent():
    """A listener refusing a connection on its first bytes (a limit) says why, even when our
    version line has already been collected and the peer's has not been read."""
    t = Transport(S, host_keys=((host_key("ssh-ed25519"), None),))
    assert t.data_to_send().startswith(b"SSH-2.0-")
    t.disconnect(DisconnectReason.TOO_MANY_CONNECTIONS, "too many connections")
    c = Transport(C, verify_host_key=lambda key: None)
    c.receive_data(b"SSH-2.0-peer\r\n")
    with pytest.raises(DisconnectError) as info:
        c.receive_data(t.data_to_send())
    assert info.value.description == "too many connections"
