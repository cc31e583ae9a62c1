"""Tests of ssh_proto.ciphers: each construction checked against an independent one.

* chacha20-poly1305@openssh.com (rule T6) against a pure-Python ChaCha20/Poly1305 written
  here from the papers (itself checked on RFC 8439 test vectors) and against asyncssh's
  chacha module, so neither OpenSSL nor our own code vouches for itself.
* AES-GCM (RFC 5647) against AESGCM called with nonces computed here, including the carry
  of the 64-bit invocation counter.
* AES-CTR against a keystream built here from AES-ECB, including the 128-bit counter carry.
* HMAC (plain and EtM) against the standard library's hmac.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ssh_proto import ciphers
from ssh_proto.ciphers import (
    CIPHERS,
    DEFAULT_CIPHERS,
    DEFAULT_COMPRESSION,
    DEFAULT_MACS,
    MACS,
    cipher_needs_mac,
    make_opener,
    make_sealer,
)
from ssh_proto.errors import MACError, ProtocolError

# ---- an independent ChaCha20 (DJB, 64-bit counter and nonce) and Poly1305 ------------------

_MASK32 = 0xFFFFFFFF


def _rotl(v: int, n: int) -> int:
    return ((v << n) & _MASK32) | (v >> (32 - n))


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & _MASK32
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & _MASK32
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & _MASK32
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & _MASK32
    s[b] = _rotl(s[b] ^ s[c], 7)


def ref_chacha20_block(key: bytes, counter: int, nonce8: bytes) -> bytes:
    """One 64-byte block of the original ChaCha20: state = consts, key, counter64, nonce64."""
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    state += list(struct.unpack("<8I", key))
    state += [counter & _MASK32, counter >> 32]
    state += list(struct.unpack("<2I", nonce8))
    s = list(state)
    for _ in range(10):
        _quarter(s, 0, 4, 8, 12)
        _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14)
        _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15)
        _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13)
        _quarter(s, 3, 4, 9, 14)
    return struct.pack("<16I", *((x + y) & _MASK32 for x, y in zip(s, state)))


def ref_chacha20_xor(key: bytes, nonce8: bytes, counter: int, data: bytes) -> bytes:
    stream = b"".join(ref_chacha20_block(key, counter + i, nonce8) for i in range((len(data) + 63) // 64))
    return bytes(a ^ b for a, b in zip(data, stream))


def ref_poly1305(key: bytes, msg: bytes) -> bytes:
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:], "little")
    p = (1 << 130) - 5
    acc = 0
    for i in range(0, len(msg), 16):
        block = msg[i : i + 16] + b"\x01"
        acc = (acc + int.from_bytes(block, "little")) * r % p
    return ((acc + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def ref_openssh_chacha_seal(key64: bytes, seq: int, packet: bytes) -> bytes:
    """PROTOCOL.chacha20poly1305, written from the spec: packet = length || padlen || ..."""
    k2, k1 = key64[:32], key64[32:]
    nonce = seq.to_bytes(8, "big")
    enc_len = ref_chacha20_xor(k1, nonce, 0, packet[:4])
    enc_body = ref_chacha20_xor(k2, nonce, 1, packet[4:])
    poly_key = ref_chacha20_block(k2, 0, nonce)[:32]
    return enc_len + enc_body + ref_poly1305(poly_key, enc_len + enc_body)


def test_reference_chacha20_matches_rfc8439_vector():
    # RFC 8439 A.1 test vector #1: all-zero key, nonce and counter.
    expected = bytes.fromhex(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    )
    assert ref_chacha20_block(bytes(32), 0, bytes(8)) == expected


def test_reference_poly1305_matches_rfc8439_vector():
    # RFC 8439 §2.5.2.
    key = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    tag = ref_poly1305(key, b"Cryptographic Forum Research Group")
    assert tag == bytes.fromhex("a8061dc1305136c6c22b8baf0c0127a9")


def _packet(payload: bytes, padlen: int) -> bytes:
    return struct.pack(">IB", 1 + len(payload) + padlen, padlen) + payload + os.urandom(padlen)


@pytest.mark.parametrize("seq", [0, 1, 0x01020304, 0xFFFFFFFF])
@pytest.mark.parametrize("size", [3, 59, 200])
def test_rule_t6_chacha20_poly1305_matches_independent_reference(seq, size):
    key = os.urandom(64)
    payload = os.urandom(size)
    padlen = 8 - (1 + size) % 8
    padlen += 8 if padlen < 4 else 0
    packet = _packet(payload, padlen)
    wire = make_sealer("chacha20-poly1305@openssh.com", None, key, b"", None).seal(
        seq, len(packet) - 4, padlen, payload, packet[5 + size :]
    )
    assert wire == ref_openssh_chacha_seal(key, seq, packet)


def test_rule_t6_chacha20_poly1305_matches_asyncssh():
    from asyncssh.crypto.chacha import ChachaCipher

    key = os.urandom(64)
    sealer = make_sealer("chacha20-poly1305@openssh.com", None, key, b"", None)
    opener = make_opener("chacha20-poly1305@openssh.com", None, key, b"", None)
    theirs = ChachaCipher(key)
    for seq in (0, 7, 0xFFFFFFFF):
        payload = os.urandom(100)
        packet = _packet(payload, 11)
        wire = sealer.seal(seq, len(packet) - 4, 11, payload, packet[105:])
        enc, tag = theirs.encrypt_and_sign(packet[:4], packet[4:], seq.to_bytes(8, "big"))
        assert wire == enc + tag
        # And asyncssh's output opens with ours.
        assert opener.packet_length(enc, 0, seq) == len(packet) - 4
        assert opener.open(memoryview(enc + tag), 0, len(packet) - 4, seq) == payload


def test_rule_t6_chacha20_uses_k2_for_payload_and_k1_for_length():
    # Swapping the two halves of the key must break interoperation: guards the key order.
    key = os.urandom(64)
    payload = b"\x05" * 11
    packet = _packet(payload, 4)
    swapped = key[32:] + key[:32]
    wire = make_sealer("chacha20-poly1305@openssh.com", None, swapped, b"", None).seal(0, 16, 4, payload, packet[16:])
    assert wire != ref_openssh_chacha_seal(key, 0, packet)


# ---- AES-GCM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"])
def test_rule_t6_gcm_nonce_is_fixed_field_and_incrementing_invocation_counter(name):
    key = os.urandom(CIPHERS[name].key_size)
    # The invocation counter starts just below a 32-bit boundary to check the carry.
    iv = os.urandom(4) + (0xFFFFFFFF).to_bytes(8, "big")
    sealer = make_sealer(name, None, key, iv, None)
    aead = AESGCM(key)
    for i in range(3):
        payload = os.urandom(27)
        packet = _packet(payload, 4)
        wire = sealer.seal(i, len(packet) - 4, 4, payload, packet[32:])
        nonce = iv[:4] + (0xFFFFFFFF + i).to_bytes(8, "big")
        assert wire == packet[:4] + aead.encrypt(nonce, packet[4:], packet[:4])


def test_gcm_invocation_counter_wraps_at_64_bits():
    key = os.urandom(16)
    iv = os.urandom(4) + b"\xff" * 8
    sealer = make_sealer("aes128-gcm@openssh.com", None, key, iv, None)
    packet = _packet(b"\x05" * 11, 4)
    sealer.seal(0, 16, 4, packet[5:16], packet[16:])
    wire = sealer.seal(1, 16, 4, packet[5:16], packet[16:])
    assert wire == packet[:4] + AESGCM(key).encrypt(iv[:4] + bytes(8), packet[4:], packet[:4])


def test_gcm_matches_asyncssh():
    from asyncssh.crypto.cipher import GCMCipher

    key, iv = os.urandom(32), os.urandom(12)
    sealer = make_sealer("aes256-gcm@openssh.com", None, key, iv, None)
    theirs = GCMCipher("aes256-gcm", key, iv)
    for seq in range(3):
        packet = _packet(os.urandom(43), 4)
        wire = sealer.seal(seq, len(packet) - 4, 4, packet[5:48], packet[48:])
        body, tag = theirs.encrypt_and_sign(packet[:4], packet[4:])
        assert wire == body + tag


def test_gcm_opener_rejects_bad_tag_with_mac_error():
    key, iv = os.urandom(16), os.urandom(12)
    packet = _packet(b"\x05" * 11, 4)
    wire = bytearray(make_sealer("aes128-gcm@openssh.com", None, key, iv, None).seal(0, 16, 4, packet[5:16], packet[16:]))
    wire[-1] ^= 1
    with pytest.raises(MACError):
        make_opener("aes128-gcm@openssh.com", None, key, iv, None).open(memoryview(wire), 0, 16, 0)


# ---- AES-CTR and the HMACs ------------------------------------------------------------------------


def _ref_ctr_keystream(key: bytes, iv: bytes, n: int) -> bytes:
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    counter = int.from_bytes(iv, "big")
    blocks = [((counter + i) % (1 << 128)).to_bytes(16, "big") for i in range((n + 15) // 16)]
    return ecb.update(b"".join(blocks))[:n]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


_HASH = {"hmac-sha2-256": hashlib.sha256, "hmac-sha2-512": hashlib.sha512, "hmac-sha1": hashlib.sha1}


@pytest.mark.parametrize("cipher", ["aes128-ctr", "aes192-ctr", "aes256-ctr"])
@pytest.mark.parametrize("mac", sorted(MACS))
def test_ctr_with_hmac_matches_reference(cipher, mac):
    key = os.urandom(CIPHERS[cipher].key_size)
    iv = b"\xff" * 15 + b"\xfe"  # the counter carries through all 128 bits within 3 blocks
    mac_key = os.urandom(MACS[mac].key_size)
    etm = MACS[mac].etm
    digest = _HASH[mac.removesuffix("-etm@openssh.com")]
    sealer = make_sealer(cipher, mac, key, iv, mac_key)
    stream = _ref_ctr_keystream(key, iv, 4096)
    used = 0
    for seq in (5, 6):
        payload = os.urandom(40)
        padlen = 16 - (40 + (1 if etm else 5)) % 16
        padlen += 16 if padlen < 4 else 0
        packet = _packet(payload, padlen)
        wire = sealer.seal(seq, len(packet) - 4, padlen, payload, packet[45:])
        seqb = seq.to_bytes(4, "big")
        if etm:
            body = _xor(packet[4:], stream[used:])
            used += len(body)
            expected = packet[:4] + body + hmac.new(mac_key, seqb + packet[:4] + body, digest).digest()
        else:
            body = _xor(packet, stream[used:])
            used += len(body)
            expected = body + hmac.new(mac_key, seqb + packet, digest).digest()
        assert wire == expected


def test_rule_t5_etm_mac_is_verified_before_anything_is_decrypted():
    key, iv, mac_key = os.urandom(16), os.urandom(16), os.urandom(32)
    name = "hmac-sha2-256-etm@openssh.com"
    packet = _packet(b"\x05" * 26, 4)
    wire = bytearray(make_sealer("aes128-ctr", name, key, iv, mac_key).seal(0, 32, 4, packet[5:31], packet[31:]))
    wire[10] ^= 0x40
    opener = make_opener("aes128-ctr", name, key, iv, mac_key)

    class RecordingContext:
        """Wraps the real CTR context and records whether anything was decrypted."""

        def __init__(self, ctx):
            self.ctx, self.calls = ctx, 0

        def update(self, data):
            self.calls += 1
            return self.ctx.update(data)

    spy = RecordingContext(opener._ctx)
    opener._ctx = spy
    with pytest.raises(MACError):
        opener.open(memoryview(wire), 0, 32, 0)
    assert spy.calls == 0


# ---- tables and helpers -----------------------------------------------------------------------------


def test_default_lists_are_the_contract():
    assert DEFAULT_CIPHERS == (
        "chacha20-poly1305@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-ctr",
        "aes192-ctr",
        "aes256-ctr",
    )
    assert DEFAULT_MACS == (
        "hmac-sha2-256-etm@openssh.com",
        "hmac-sha2-512-etm@openssh.com",
    )
    assert DEFAULT_COMPRESSION == ("none", "zlib@openssh.com")
    assert all(name in CIPHERS for name in DEFAULT_CIPHERS)
    assert all(name in MACS for name in DEFAULT_MACS)


def test_T2a_default_macs_are_encrypt_then_mac_only():
    assert all(MACS[name].etm for name in DEFAULT_MACS)
    assert {"hmac-sha2-256", "hmac-sha2-512"} <= set(MACS)  # still there, for explicit use


def test_no_cbc_and_no_sha1_in_defaults():
    assert not any("cbc" in name for name in CIPHERS)
    assert not any("sha1" in name for name in DEFAULT_MACS)


def test_cipher_sizes_follow_the_specs():
    chacha = CIPHERS["chacha20-poly1305@openssh.com"]
    assert (chacha.key_size, chacha.iv_size, chacha.block_size, chacha.aead) == (64, 0, 8, True)
    assert (CIPHERS["aes256-gcm@openssh.com"].key_size, CIPHERS["aes256-gcm@openssh.com"].iv_size) == (32, 12)
    assert CIPHERS["aes192-ctr"].key_size == 24 and CIPHERS["aes192-ctr"].iv_size == 16
    assert MACS["hmac-sha2-512-etm@openssh.com"].digest_size == 64 and MACS["hmac-sha2-512-etm@openssh.com"].etm


def test_cipher_needs_mac():
    assert not cipher_needs_mac("chacha20-poly1305@openssh.com")
    assert not cipher_needs_mac("aes128-gcm@openssh.com")
    assert cipher_needs_mac("aes128-ctr")
    assert not cipher_needs_mac("none")
    with pytest.raises(ValueError):
        cipher_needs_mac("3des-cbc")


def test_aead_ignores_the_mac_argument():
    key, iv = os.urandom(16), os.urandom(12)
    a = make_sealer("aes128-gcm@openssh.com", "hmac-sha2-256", key, iv, os.urandom(32))
    b = make_sealer("aes128-gcm@openssh.com", None, key, iv, None)
    packet = _packet(b"\x05" * 11, 4)
    assert a.seal(0, 16, 4, packet[5:16], packet[16:]) == b.seal(0, 16, 4, packet[5:16], packet[16:])


@pytest.mark.parametrize(
    "args",
    [
        ("aes128-ctr", "hmac-sha2-256", bytes(15), bytes(16), bytes(32)),  # short key
        ("aes128-ctr", "hmac-sha2-256", bytes(16), bytes(12), bytes(32)),  # short IV
        ("aes128-ctr", "hmac-sha2-256", bytes(16), bytes(16), bytes(31)),  # short MAC key
        ("aes128-ctr", None, bytes(16), bytes(16), None),  # CTR without a MAC
        ("aes128-ctr", "hmac-md5", bytes(16), bytes(16), bytes(16)),
        ("aes128-cbc", None, bytes(16), bytes(16), None),
        ("chacha20-poly1305@openssh.com", None, bytes(32), b"", None),
    ],
)
def test_bad_key_material_is_a_caller_error(args):
    with pytest.raises(ValueError):
        make_sealer(*args)
    with pytest.raises(ValueError):
        make_opener(*args)


def test_rule_t4_payload_length_checks_padding():
    assert ciphers.payload_length(16, 4) == 11
    with pytest.raises(ProtocolError):
        ciphers.payload_length(16, 3)  # fewer than 4 bytes of padding
    with pytest.raises(ProtocolError):
        ciphers.payload_length(16, 15)  # no room for a message number
    with pytest.raises(ProtocolError):
        ciphers.payload_length(16, 255)
