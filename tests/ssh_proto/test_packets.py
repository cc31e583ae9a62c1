"""Tests of ssh_proto.packets: framing, sequence numbers, key changes, limits, tampering.

Every cipher/MAC combination goes through PacketWriter -> PacketReader whole, byte by byte
and in random chunks, and both ways against asyncssh's packet encryption (an independent
implementation).  Rule tests are named after docs/security.md rules T1, T3-T8, T18.
"""
from __future__ import annotations

import os
import random
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssh_proto.ciphers import CIPHERS, MACS, make_sealer
from ssh_proto.errors import DisconnectReason, MACError, ProtocolError
from ssh_proto.packets import (
    MAX_DECOMPRESSED_SIZE,
    MAX_PACKET_LENGTH,
    MAX_PAYLOAD_SIZE,
    PacketReader,
    PacketWriter,
)

COMBOS = [(c, None) for c, info in CIPHERS.items() if info.aead] + [
    (c, m) for c, info in CIPHERS.items() if not info.aead for m in MACS
]
PROTECTED = [pytest.param(c, m, id=f"{c}+{m}" if m else c) for c, m in COMBOS]
ALL = [pytest.param("none", None, id="none")] + PROTECTED


def keys(cipher: str, mac: str | None) -> tuple:
    if cipher == "none":
        return (cipher, None, b"", b"", None)
    info = CIPHERS[cipher]
    mac_key = os.urandom(MACS[mac].key_size) if mac else None
    return (cipher, mac, os.urandom(info.key_size), os.urandom(info.iv_size), mac_key)


def pair(cipher: str, mac: str | None) -> tuple[PacketWriter, PacketReader]:
    k = keys(cipher, mac)
    w, r = PacketWriter(), PacketReader()
    w.set_keys(*k)
    r.set_keys(*k)
    return w, r


def drain(r: PacketReader) -> list[bytes]:
    out = []
    while (p := r.next_packet()) is not None:
        out.append(p)
    return out


def block_of(cipher: str) -> int:
    return 8 if cipher == "none" else max(8, CIPHERS[cipher].block_size)


def clear_length(cipher: str, mac: str | None) -> bool:
    return cipher != "none" and (CIPHERS[cipher].aead or MACS[mac].etm)


# ---- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cipher,mac", ALL)
def test_round_trip_every_combination(cipher, mac):
    w, r = pair(cipher, mac)
    payloads = [os.urandom(n) for n in (1, 4, 11, 16, 255, 1000, 32768)] + [os.urandom(MAX_PAYLOAD_SIZE)]
    for p in payloads:
        r.feed(w.write(p))
    assert drain(r) == payloads
    assert r.buffered == 0
    assert w.seq == r.seq == len(payloads)


@pytest.mark.parametrize("cipher,mac", ALL)
def test_round_trip_fed_byte_by_byte(cipher, mac):
    w, r = pair(cipher, mac)
    payloads = [b"\x05" + os.urandom(n) for n in (0, 30, 77)]
    got = []
    for byte in b"".join(w.write(p) for p in payloads):
        r.feed(bytes((byte,)))
        got += drain(r)
    assert got == payloads


@pytest.mark.parametrize("cipher,mac", ALL)
def test_round_trip_fed_in_random_chunks(cipher, mac):
    rng = random.Random(cipher + str(mac))
    w, r = pair(cipher, mac)
    payloads = [os.urandom(rng.choice((1, 17, 300, 5000, 40000))) for _ in range(12)]
    stream = memoryview(b"".join(w.write(p) for p in payloads))
    got, pos = [], 0
    while pos < len(stream):
        n = rng.randint(1, 9000)
        r.feed(stream[pos : pos + n])  # memoryviews are accepted too
        pos += n
        got += drain(r)
    assert got == payloads


@pytest.mark.parametrize("cipher,mac", ALL)
def test_rule_t4_writer_pads_to_block_size_with_at_least_4_bytes(cipher, mac):
    w, r = pair(cipher, mac)
    bs = block_of(cipher)
    overhead = 16 if cipher != "none" and CIPHERS[cipher].aead else (MACS[mac].digest_size if mac else 0)
    for n in range(1, 40):
        wire = w.write(os.urandom(n))
        r.feed(wire)
        r.next_packet()
        plen = len(wire) - 4 - overhead
        padlen = plen - 1 - n
        assert 4 <= padlen < 4 + bs
        assert (plen if clear_length(cipher, mac) else plen + 4) % bs == 0


def test_rule_t4_padding_is_random():
    w = PacketWriter()
    a, b = w.write(b"\x02" * 10), w.write(b"\x02" * 10)
    assert a[:15] == b[:15] and a[15:] != b[15:]


def test_writer_refuses_empty_and_oversized_payloads():
    w = PacketWriter()
    with pytest.raises(ValueError):
        w.write(b"")
    with pytest.raises(ValueError):
        w.write(bytes(MAX_PAYLOAD_SIZE + 1))
    assert w.seq == 0 and w.packets == 0


# ---- interop with an independent implementation (asyncssh's packet encryption) ----------------------


def asyncssh_encryption(k: tuple):
    from asyncssh.encryption import get_encryption

    cipher, mac, key, iv, mac_key = k
    etm = bool(mac and MACS[mac].etm)
    return get_encryption(cipher.encode(), key, iv, (mac or "").encode(), mac_key or b"", etm)


@pytest.mark.parametrize("cipher,mac", PROTECTED)
def test_interop_our_writer_to_asyncssh(cipher, mac):
    k = keys(cipher, mac)
    w = PacketWriter()
    w.set_keys(*k)
    w.seq = 0xFFFFFFFE  # cross the wrap, which also changes the chacha nonce and the MAC input
    theirs = asyncssh_encryption(k)
    bs, tag = block_of(cipher), (16 if CIPHERS[cipher].aead else MACS[mac].digest_size)
    for size in (1, 100, 5000):
        seq, payload = w.seq, os.urandom(size)
        wire = w.write(payload)
        first, length = theirs.decrypt_header(seq, wire[:bs], 4)
        plen = int.from_bytes(length, "big")
        assert len(wire) == 4 + plen + tag
        packet = theirs.decrypt_packet(seq, first, wire[bs : 4 + plen], 4, wire[4 + plen :])
        assert packet is not None and packet[1 : len(packet) - packet[0]] == payload


@pytest.mark.parametrize("cipher,mac", PROTECTED)
def test_interop_asyncssh_to_our_reader(cipher, mac):
    k = keys(cipher, mac)
    r = PacketReader()
    r.set_keys(*k)
    r.seq = 0xFFFFFFFE
    theirs = asyncssh_encryption(k)
    bs = block_of(cipher)
    clear = 1 if clear_length(cipher, mac) else 5
    payloads = [os.urandom(n) for n in (1, 100, 5000)]
    seq = r.seq
    for payload in payloads:
        padlen = -(clear + len(payload)) % bs
        padlen += bs if padlen < 4 else 0
        body = bytes((padlen,)) + payload + os.urandom(padlen)
        packet, tag = theirs.encrypt_packet(seq, len(body).to_bytes(4, "big"), body)
        r.feed(packet + tag)
        seq = (seq + 1) & 0xFFFFFFFF
    assert drain(r) == payloads


# ---- key changes, sequence numbers, counters ----------------------------------------------------------


@pytest.mark.parametrize("cipher,mac", PROTECTED)
def test_key_change_applies_to_bytes_already_buffered(cipher, mac):
    k = keys(cipher, mac)
    w, r = PacketWriter(), PacketReader()
    stream = w.write(b"\x14kexinit") + w.write(b"\x15")  # ..., NEWKEYS in clear
    w.set_keys(*k)
    stream += w.write(b"\x05first") + w.write(b"\x06second")
    r.feed(stream)  # everything arrives in one read, before the reader knows the keys
    assert r.next_packet() == b"\x14kexinit"
    assert r.next_packet() == b"\x15"
    r.set_keys(*k)
    assert drain(r) == [b"\x05first", b"\x06second"]


def test_key_change_rereads_a_header_read_with_the_old_keys():
    # With CTR and a plain MAC, reading a header advances the keystream.  New keys (here:
    # the same keys again, so a fresh stream) must read that header again from scratch.
    k = keys("aes128-ctr", "hmac-sha2-256")
    w, r = PacketWriter(), PacketReader()
    w.set_keys(*k)
    r.set_keys(*k)
    wire = w.write(b"\x05" * 100)
    r.feed(wire[:20])
    assert r.next_packet() is None  # header decrypted, body missing
    r.set_keys(*k)
    r.feed(wire[20:])
    assert r.next_packet() == b"\x05" * 100


@pytest.mark.parametrize("cipher,mac", ALL)
def test_rule_t7_sequence_numbers_wrap_at_32_bits(cipher, mac):
    w, r = pair(cipher, mac)
    w.seq = r.seq = 0xFFFFFFFF
    r.feed(w.write(b"\x02a") + w.write(b"\x02b"))
    assert r.next_packet() == b"\x02a"
    assert r.seq_of_last == 0xFFFFFFFF and r.seq == 0 and r.seq_wrapped
    assert r.next_packet() == b"\x02b"
    assert r.seq_of_last == 0 and r.seq == 1
    assert w.seq == 1 and w.seq_wrapped


def test_rule_t1_seq_wrapped_not_set_without_a_wrap():
    w, r = pair("aes128-gcm@openssh.com", None)
    r.feed(w.write(b"\x02"))
    r.next_packet()
    assert not r.seq_wrapped and not w.seq_wrapped


@pytest.mark.parametrize("cipher,mac", PROTECTED)
def test_rule_t7_dropped_or_replayed_packet_fails_authentication(cipher, mac):
    # The MAC/nonce binds each packet to its place in the stream: the sequence number for
    # chacha and HMACs, the invocation counter for GCM.
    w, r = pair(cipher, mac)
    w.write(b"\x02" * 20)  # lost on the way
    r.feed(w.write(b"\x02" * 20))
    with pytest.raises(ProtocolError):
        r.next_packet()
    w, r = pair(cipher, mac)
    first = w.write(b"\x02" * 20)
    r.feed(first + first)
    assert r.next_packet() == b"\x02" * 20
    with pytest.raises(ProtocolError):
        r.next_packet()


def test_rule_t1_reset_sequence_after_newkeys():
    w, r = pair("chacha20-poly1305@openssh.com", None)
    for _ in range(3):
        r.feed(w.write(b"\x02"))
    drain(r)
    assert w.seq == r.seq == 3
    w.reset_sequence()
    r.reset_sequence()
    assert w.seq == r.seq == 0
    r.feed(w.write(b"\x15"))
    assert r.next_packet() == b"\x15" and r.seq_of_last == 0


def test_rule_t7_directions_count_independently():
    a_out, a_in = PacketWriter(), PacketReader()
    b_out, b_in = PacketWriter(), PacketReader()
    for _ in range(3):
        b_in.feed(a_out.write(b"\x02"))
    a_in.feed(b_out.write(b"\x02"))
    drain(a_in), drain(b_in)
    assert (a_out.seq, b_in.seq, b_out.seq, a_in.seq) == (3, 3, 1, 1)


@pytest.mark.parametrize("cipher,mac", ALL)
def test_rule_t8_counters_reset_on_new_keys(cipher, mac):
    w, r = PacketWriter(), PacketReader()
    r.feed(w.write(b"\x02" * 10))
    drain(r)
    assert w.packets == r.packets == 1 and w.bytes == r.bytes == 24  # 4 + 1 + 10 + 9 padding
    k = keys(cipher, mac)
    w.set_keys(*k)
    r.set_keys(*k)
    assert w.packets == r.packets == w.bytes == r.bytes == w.blocks == 0
    for _ in range(4):
        r.feed(w.write(b"\x02" * 100))
    drain(r)
    assert w.packets == r.packets == 4
    assert w.bytes == r.bytes and w.bytes >= 4 * 105
    assert w.blocks == w.bytes // block_of(cipher)


def test_rule_t8_rekey_limits_per_cipher():
    for cipher, mac in COMBOS:
        w, r = pair(cipher, mac)
        expected = 1 << 30 if CIPHERS[cipher].block_size < 16 else (1 << 32) * 16
        assert w.rekey_limit_bytes == r.rekey_limit_bytes == expected
    assert pair("chacha20-poly1305@openssh.com", None)[0].rekey_limit_bytes == 1 << 30  # 1 GiB


# ---- T3 / T4: lengths and padding --------------------------------------------------------------------


def set_length(wire: bytes, old_plen: int, new_plen: int) -> bytes:
    """``wire`` with its packet_length changed to ``new_plen``, whatever the cipher.

    The length is in clear or encrypted with a stream cipher (chacha's K_1, CTR), so XOR-ing
    the difference into the first four bytes sets the length the reader will see.
    """
    delta = (old_plen ^ new_plen).to_bytes(4, "big")
    return bytes(a ^ b for a, b in zip(wire[:4], delta)) + wire[4:]


def header_size(cipher: str, mac: str | None) -> int:
    return 16 if mac and not MACS[mac].etm else 4


def one_packet(cipher: str, mac: str | None, payload: bytes = b"\x05" * 27):
    w, r = pair(cipher, mac)
    wire = w.write(payload)
    overhead = 16 if cipher != "none" and CIPHERS[cipher].aead else (MACS[mac].digest_size if mac else 0)
    return wire, len(wire) - 4 - overhead, r


@pytest.mark.parametrize("cipher,mac", ALL)
@pytest.mark.parametrize("bad", [MAX_PACKET_LENGTH + 1, 0x7FFFFFFF, 0xFFFFFFFF])
def test_rule_t3_too_long_length_rejected_from_the_header_alone(cipher, mac, bad):
    wire, plen, r = one_packet(cipher, mac)
    r.feed(set_length(wire, plen, bad)[: header_size(cipher, mac)])
    with pytest.raises(ProtocolError):
        r.next_packet()


@pytest.mark.parametrize("cipher,mac", ALL)
@pytest.mark.parametrize("bad", [0, 1, 4])
def test_rule_t3_too_short_length_rejected(cipher, mac, bad):
    wire, plen, r = one_packet(cipher, mac)
    r.feed(set_length(wire, plen, bad)[: header_size(cipher, mac)])
    with pytest.raises(ProtocolError):
        r.next_packet()


@pytest.mark.parametrize("cipher,mac", ALL)
def test_rule_t4_length_not_block_aligned_rejected_from_the_header(cipher, mac):
    wire, plen, r = one_packet(cipher, mac)
    r.feed(set_length(wire, plen, plen + 4)[: header_size(cipher, mac)])
    with pytest.raises(ProtocolError) as err:
        r.next_packet()
    assert not isinstance(err.value, MACError)


def test_rule_t3_largest_length_is_accepted():
    r = PacketReader()
    r.set_keys(*keys("aes128-gcm@openssh.com", None))  # length in clear, aligned on itself
    r.feed(struct.pack(">I", MAX_PACKET_LENGTH))
    assert r.next_packet() is None  # waits for the body; 262144 itself is allowed


@pytest.mark.parametrize("cipher,mac", ALL)
@pytest.mark.parametrize("padlen", [3, 0, "all", 255])
def test_rule_t4_bad_padding_length_rejected_after_authentication(cipher, mac, padlen):
    """A correctly authenticated packet whose padding_length is < 4 or leaves no payload."""
    k = keys(cipher, mac)
    plen = 16 if clear_length(cipher, mac) else 28  # aligned for every cipher
    padlen = plen - 1 if padlen == "all" else padlen
    n = max(0, plen - 1 - padlen)
    wire = make_sealer(*k).seal(0, plen, padlen, os.urandom(n), os.urandom(plen - 1 - n))
    r = PacketReader()
    r.set_keys(*k)
    r.feed(wire)
    with pytest.raises(ProtocolError) as err:
        r.next_packet()
    assert not isinstance(err.value, MACError)
    assert "padding" in str(err.value)


# ---- T5: tampering is always detected -----------------------------------------------------------------


def flip_cases():
    for cipher, mac in COMBOS:
        yield pytest.param(cipher, mac, id=f"{cipher}+{mac}" if mac else cipher)


@pytest.mark.parametrize("cipher,mac", list(flip_cases()))
def test_rule_t5_bit_flip_anywhere_is_rejected_for_every_cipher(cipher, mac):
    """OpenSSH integrity.sh at codec level: flip one bit in every byte of a packet.

    The tampered packet is followed by a valid one and, if the reader is still waiting
    (a flipped length can ask for more bytes), by filler up to the largest packet.  The
    reader must fail and must never hand out a payload.
    """
    rng = random.Random(f"{cipher}{mac}")
    k = keys(cipher, mac)
    w = PacketWriter()
    w.set_keys(*k)
    first, second = w.write(b"\x5e" + os.urandom(40)), w.write(b"\x5e" + os.urandom(40))
    filler = bytes(MAX_PACKET_LENGTH + 64)
    for pos in range(len(first)):
        bit = 1 << rng.randrange(8)
        tampered = first[:pos] + bytes((first[pos] ^ bit,)) + first[pos + 1 :]
        r = PacketReader()
        r.set_keys(*k)
        r.feed(tampered + second)
        assert outcome(r, filler) == "rejected", f"byte {pos} bit {bit}"


def outcome(r: PacketReader, filler: bytes) -> str:
    try:
        if r.next_packet() is not None:
            return "payload"
        r.feed(filler)
        return "waiting" if r.next_packet() is None else "payload"
    except ProtocolError:
        return "rejected"


def test_rule_t5_reader_stays_failed_after_an_error():
    w, r = pair("aes128-gcm@openssh.com", None)
    good = w.write(b"\x05" * 10)
    bad = bytearray(good)
    bad[-1] ^= 1
    r.feed(bytes(bad))
    with pytest.raises(MACError):
        r.next_packet()
    r.feed(good)
    with pytest.raises(ProtocolError):
        r.next_packet()


def test_tiny_segments_are_merged_not_kept_one_by_one():
    w, r = pair("aes128-gcm@openssh.com", None)
    wire = w.write(b"\x05" * 5000)
    got = []
    for i in range(0, len(wire), 3):
        r.feed(wire[i : i + 3])
        assert len(r._queue) <= 64  # a peer trickling bytes costs no object per segment
        got += drain(r)
    assert got == [b"\x05" * 5000]


def test_feed_copies_mutable_buffers():
    w, r = PacketWriter(), PacketReader()
    buf = bytearray(w.write(b"\x05hello"))
    r.feed(buf)
    buf[:] = bytes(len(buf))  # the caller reuses its receive buffer
    assert r.next_packet() == b"\x05hello"


@pytest.mark.parametrize("cipher,mac", PROTECTED)
def test_rule_t5_truncated_packet_is_never_returned(cipher, mac):
    w, r = pair(cipher, mac)
    wire = w.write(b"\x05" * 50)
    r.feed(wire[:-1])
    assert r.next_packet() is None
    assert r.buffered == len(wire) - 1


_READER_CASES = [("none", None)] + [c for c in COMBOS if c[1] in (None, "hmac-sha2-256", "hmac-sha2-256-etm@openssh.com")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(_READER_CASES), chunks=st.lists(st.binary(max_size=300), max_size=6))
def test_arbitrary_bytes_raise_only_protocol_errors(case, chunks):
    r = PacketReader()
    if case[0] != "none":
        r.set_keys(*keys(*case))
    try:
        for data in chunks:
            r.feed(data)
            drain(r)
    except ProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=5, max_size=400))
def test_arbitrary_plaintext_packets_raise_only_protocol_errors(data):
    # Mostly-valid lengths, so the padding and payload checks are reached too.
    r = PacketReader()
    r.feed(struct.pack(">I", len(data)) + data)
    try:
        payload = r.next_packet()
    except ProtocolError:
        return
    assert payload is None or 0 < len(payload) <= len(data)


# ---- T18: compression ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cipher,mac", [("none", None), ("aes128-gcm@openssh.com", None), ("aes128-ctr", "hmac-sha2-256")])
def test_rule_t18_delayed_compression_round_trip(cipher, mac):
    w, r = pair(cipher, mac)
    assert w.compression == r.compression == "none"
    text = b"\x5e" + b"all work and no play " * 500
    r.feed(w.write(text))
    assert drain(r) == [text]
    before = w.bytes
    w.enable_compression()
    r.enable_compression()
    assert w.compression == r.compression == "zlib@openssh.com"
    for _ in range(3):  # one zlib stream across packets
        r.feed(w.write(text))
    assert drain(r) == [text] * 3
    assert w.bytes - before < len(text)  # it did compress


def test_rule_t18_compression_state_survives_rekey():
    w, r = pair("aes128-gcm@openssh.com", None)
    w.enable_compression()
    r.enable_compression()
    r.feed(w.write(b"\x5eabcabcabc"))
    assert r.next_packet() == b"\x5eabcabcabc"
    k = keys("chacha20-poly1305@openssh.com", None)
    w.set_keys(*k)
    r.set_keys(*k)
    r.feed(w.write(b"\x5eabcabcabc"))
    assert drain(r) == [b"\x5eabcabcabc"]


def test_rule_t18_compression_enabled_with_packets_already_buffered():
    w, r = PacketWriter(), PacketReader()
    r.feed(w.write(b"\x34success"))  # USERAUTH_SUCCESS is sent uncompressed
    w.enable_compression()
    r.feed(w.write(b"\x5e" + b"x" * 1000))
    assert r.next_packet() == b"\x34success"
    r.enable_compression()  # the caller processed USERAUTH_SUCCESS
    assert r.next_packet() == b"\x5e" + b"x" * 1000


def test_rule_t3_incompressible_largest_payload_still_fits_when_compressed():
    w, r = pair("aes128-gcm@openssh.com", None)
    w.enable_compression()
    r.enable_compression()
    noise = os.urandom(MAX_PAYLOAD_SIZE)
    wire = w.write(noise)
    assert len(wire) - 4 - 16 <= MAX_PACKET_LENGTH
    r.feed(wire)
    assert r.next_packet() == noise


def _compressed(data: bytes) -> bytes:
    z = zlib.compressobj()
    return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)


def test_rule_t18_zlib_bomb_is_capped():
    bomb = _compressed(bytes(MAX_DECOMPRESSED_SIZE + 1))
    assert len(bomb) < 1000
    w, r = PacketWriter(), PacketReader()
    r.enable_compression()
    r.feed(w.write(bomb))
    with pytest.raises(ProtocolError) as err:
        r.next_packet()
    assert err.value.reason == DisconnectReason.COMPRESSION_ERROR


def test_rule_t18_largest_decompressed_payload_is_accepted():
    w, r = PacketWriter(), PacketReader()
    r.enable_compression()
    r.feed(w.write(_compressed(b"\x5e" * MAX_DECOMPRESSED_SIZE)))
    assert r.next_packet() == b"\x5e" * MAX_DECOMPRESSED_SIZE


@pytest.mark.parametrize("junk", [b"\x00\x01\x02garbage", b"", _compressed(b"")])
def test_rule_t18_corrupt_or_empty_compressed_payload_rejected(junk):
    r = PacketReader()
    r.enable_compression()
    if not junk:
        junk = zlib.compress(b"\x5e")  # a complete zlib stream ends it: not allowed
    r.feed(PacketWriter().write(junk))
    with pytest.raises(ProtocolError) as err:
        r.next_packet()
    assert err.value.reason == DisconnectReason.COMPRESSION_ERROR
