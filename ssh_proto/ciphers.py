"""Packet protection: the ciphers and MACs of the SSH binary packet protocol.

This module owns the keys and the cryptography of one direction of a connection.
``packets.py`` owns framing (length, padding sizes, sequence numbers, buffering) and
asks this module for a *sealer* (outgoing) or an *opener* (incoming).

Implemented:

* ``chacha20-poly1305@openssh.com`` -- OpenSSH ``PROTOCOL.chacha20poly1305``. Not RFC 8439:
  two ChaCha20 keys (K_2 for the payload, K_1 for the 4-byte length), 64-bit nonce = the
  sequence number, Poly1305 key = the first 32 bytes of K_2's keystream block 0, payload
  from block 1, tag over ``enc(length) || enc(payload)`` (rules T3, T6).
* ``aes128-gcm@openssh.com``, ``aes256-gcm@openssh.com`` -- RFC 5647 §7 as used by OpenSSH
  (PROTOCOL §1.6): 12-byte nonce = 4 fixed bytes || 8-byte invocation counter incremented
  per packet; the length travels in clear as additional data; no separate MAC.
* ``aes128-ctr``, ``aes192-ctr``, ``aes256-ctr`` -- RFC 4344 §4, one keystream for the
  whole direction.
* MACs (RFC 4253 §6.4, RFC 6668): ``hmac-sha2-256``, ``hmac-sha2-512`` over
  ``seqnr || plaintext packet``; their ``-etm@openssh.com`` forms (OpenSSH PROTOCOL §1.5)
  over ``seqnr || length || ciphertext``, checked before anything is decrypted (T5).
  Only the EtM forms are offered by default; ``hmac-sha2-256``/``-512`` (MAC-then-encrypt),
  ``hmac-sha1`` and ``hmac-sha1-etm@openssh.com`` exist for old peers, offered only when
  listed explicitly.
* ``none``, the state before the first NEWKEYS (RFC 4253 §6.3).

Theory of operation.  A sealer's ``seal(seq, plen, padlen, payload, padding)`` returns the
complete wire bytes of one packet.  An opener works in two steps so that the packet layer can
reject a bad length before it buffers a body (T3): ``packet_length(buf, pos, seq)`` needs
``header_size`` bytes and returns the (decrypted) ``packet_length``; ``open(mv, pos, plen,
seq)`` needs the whole packet plus ``mac_size`` bytes, authenticates it, and only then
decrypts and returns the payload.  Every failure raises :class:`MACError` or
:class:`ProtocolError`; no exception from ``cryptography`` escapes.

Speed: this is the hot path.  Cipher contexts are built once per key and reused
(``reset_nonce`` for ChaCha20, one AESGCM object, one CTR stream), HMAC state is copied
from a keyed template, and openers decrypt straight out of the receive buffer, writing the
payload as their last output so no further copy is needed.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

from .errors import MACError, ProtocolError


@dataclass(frozen=True, slots=True)
class CipherInfo:
    """Sizes the key exchange needs to derive keys for a cipher (RFC 4253 §7.2)."""

    name: str
    key_size: int
    iv_size: int
    block_size: int
    aead: bool


@dataclass(frozen=True, slots=True)
class MacInfo:
    """Sizes of a MAC; ``etm`` MACs authenticate the ciphertext (encrypt-then-MAC)."""

    name: str
    key_size: int
    digest_size: int
    etm: bool


CIPHERS: dict[str, CipherInfo] = {
    c.name: c
    for c in (
        CipherInfo("chacha20-poly1305@openssh.com", 64, 0, 8, True),
        CipherInfo("aes128-gcm@openssh.com", 16, 12, 16, True),
        CipherInfo("aes256-gcm@openssh.com", 32, 12, 16, True),
        CipherInfo("aes128-ctr", 16, 16, 16, False),
        CipherInfo("aes192-ctr", 24, 16, 16, False),
        CipherInfo("aes256-ctr", 32, 16, 16, False),
    )
}

MACS: dict[str, MacInfo] = {
    m.name: m
    for m in (
        MacInfo("hmac-sha2-256-etm@openssh.com", 32, 32, True),
        MacInfo("hmac-sha2-512-etm@openssh.com", 64, 64, True),
        MacInfo("hmac-sha2-256", 32, 32, False),
        MacInfo("hmac-sha2-512", 64, 64, False),
        MacInfo("hmac-sha1-etm@openssh.com", 20, 20, True),
        MacInfo("hmac-sha1", 20, 20, False),
    )
}

DEFAULT_CIPHERS: tuple[str, ...] = (
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
#: Encrypt-then-MAC only (rules T2, T5): the MAC-then-encrypt forms stay implemented for
#: peers that need them, offered only when listed explicitly.
DEFAULT_MACS: tuple[str, ...] = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
)
DEFAULT_COMPRESSION: tuple[str, ...] = ("none", "zlib@openssh.com")

#: The cipher of the initial, unprotected state (RFC 4253 §6.3).
NONE_CIPHER = CipherInfo("none", 0, 0, 8, False)

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "hmac-sha2-256-etm@openssh.com": hashes.SHA256,
    "hmac-sha2-512-etm@openssh.com": hashes.SHA512,
    "hmac-sha2-256": hashes.SHA256,
    "hmac-sha2-512": hashes.SHA512,
    "hmac-sha1-etm@openssh.com": hashes.SHA1,
    "hmac-sha1": hashes.SHA1,
}

_U32 = struct.Struct(">I")
_LEN_PAD = struct.Struct(">IB")
_MASK64 = (1 << 64) - 1
_TAG_SIZE = 16
# ChaCha20 in ``cryptography`` takes a 16-byte "nonce" that is the 64-bit little-endian
# block counter followed by the 64-bit nonce (DJB's original layout, which OpenSSH uses).
_COUNTER0 = bytes(8)
_ZERO_BLOCK = bytes(64)


def cipher_needs_mac(name: str) -> bool:
    """True if ``name`` needs a separately negotiated MAC (False for AEADs and ``none``)."""
    if name == "none":
        return False
    try:
        return not CIPHERS[name].aead
    except KeyError:
        raise ValueError(f"unknown cipher {name!r}") from None


def cipher_info(name: str) -> CipherInfo:
    """The :class:`CipherInfo` for ``name``, including ``none``."""
    if name == "none":
        return NONE_CIPHER
    try:
        return CIPHERS[name]
    except KeyError:
        raise ValueError(f"unknown cipher {name!r}") from None


def payload_length(plen: int, padlen: int) -> int:
    """Length of the payload of a packet; checks rule T4 (padding of 4..255 bytes).

    The payload must hold at least the message number, so an empty one is refused too.
    """
    n = plen - 1 - padlen
    if padlen < 4 or n < 1:
        raise ProtocolError("corrupted padding length")
    return n


class Sealer(Protocol):
    """What the packet layer needs of an outgoing direction's protection (see the module docs).

    ``aad_length``: the length travels outside the encrypted, block-aligned part (AEAD, EtM).
    """

    block_size: int
    aad_length: bool
    mac_size: int

    def seal(self, seq: int, plen: int, padlen: int, payload: bytes, padding: bytes) -> bytes: ...


class Opener(Protocol):
    """What the packet layer needs of an incoming direction's protection (see the module docs)."""

    block_size: int
    aad_length: bool
    header_size: int
    mac_size: int

    def packet_length(self, buf: memoryview, pos: int, seq: int) -> int: ...

    def open(self, mv: memoryview, pos: int, plen: int, seq: int) -> bytes: ...


# ---- the "none" cipher -------------------------------------------------------------------


class NoneSealer:
    """Plain framing before the first NEWKEYS."""

    __slots__ = ()
    block_size = 8
    aad_length = False
    mac_size = 0

    def seal(self, seq: int, plen: int, padlen: int, payload: bytes, padding: bytes) -> bytes:
        return b"".join((_LEN_PAD.pack(plen, padlen), payload, padding))


class NoneOpener:
    __slots__ = ()
    block_size = 8
    aad_length = False
    header_size = 4
    mac_size = 0

    def packet_length(self, buf: memoryview, pos: int, seq: int) -> int:
        return _U32.unpack_from(buf, pos)[0]

    def open(self, mv: memoryview, pos: int, plen: int, seq: int) -> bytes:
        n = payload_length(plen, mv[pos + 4])
        return bytes(mv[pos + 5 : pos + 5 + n])


# ---- chacha20-poly1305@openssh.com ---------------------------------------------------------


class _ChaChaBase:
    """Two ChaCha20 contexts, re-nonced per packet instead of rebuilt (5 us saved each)."""

    __slots__ = ("_main", "_header")
    block_size = 8
    aad_length = True
    mac_size = _TAG_SIZE

    def __init__(self, key: bytes):
        # The 64 bytes of key material are K_2 (payload) || K_1 (length).
        self._main = Cipher(algorithms.ChaCha20(key[:32], bytes(16)), None).encryptor()
        self._header = Cipher(algorithms.ChaCha20(key[32:], bytes(16)), None).encryptor()

    def _poly_key(self, nonce: bytes) -> bytes:
        """Restart K_2's stream for this packet and return its Poly1305 key."""
        main = self._main
        main.reset_nonce(nonce)
        # Block 0 of K_2 gives the Poly1305 key; consuming all of it leaves the stream at
        # block 1, where the payload starts.
        return main.update(_ZERO_BLOCK)[:32]


class ChaChaSealer(_ChaChaBase):
    __slots__ = ()

    def seal(self, seq: int, plen: int, padlen: int, payload: bytes, padding: bytes) -> bytes:
        nonce = _COUNTER0 + seq.to_bytes(8, "big")
        poly_key = self._poly_key(nonce)
        n = len(payload)
        size = 4 + plen
        out = bytearray(size + _TAG_SIZE)
        mv = memoryview(out)
        header = self._header
        header.reset_nonce(nonce)
        header.update_into(_U32.pack(plen), mv[:4])
        main = self._main
        main.update_into(bytes((padlen,)), mv[4:5])
        main.update_into(payload, mv[5 : 5 + n])
        main.update_into(padding, mv[5 + n : size])
        mv[size:] = Poly1305.generate_tag(poly_key, mv[:size])
        mv.release()
        return bytes(out)


class ChaChaOpener(_ChaChaBase):
    __slots__ = ()
    header_size = 4

    def packet_length(self, buf: memoryview, pos: int, seq: int) -> int:
        # Only the length is decrypted here; the tag is checked once the body is in.
        header = self._header
        header.reset_nonce(_COUNTER0 + seq.to_bytes(8, "big"))
        return int.from_bytes(header.update(buf[pos : pos + 4]), "big")

    def open(self, mv: memoryview, pos: int, plen: int, seq: int) -> bytes:
        poly_key = self._poly_key(_COUNTER0 + seq.to_bytes(8, "big"))
        end = pos + 4 + plen
        try:
            Poly1305.verify_tag(poly_key, mv[pos:end], bytes(mv[end : end + _TAG_SIZE]))
        except InvalidSignature:
            raise MACError("packet authentication failed") from None
        main = self._main
        n = payload_length(plen, main.update(mv[pos + 4 : pos + 5])[0])
        return main.update(mv[pos + 5 : pos + 5 + n])


# ---- AES-GCM ---------------------------------------------------------------------------------


class _GcmBase:
    __slots__ = ("_aead", "_fixed", "_counter")
    block_size = 16
    aad_length = True
    mac_size = _TAG_SIZE

    def __init__(self, key: bytes, iv: bytes):
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:], "big")

    def _nonce(self) -> bytes:
        counter = self._counter
        self._counter = (counter + 1) & _MASK64
        return self._fixed + counter.to_bytes(8, "big")


class GcmSealer(_GcmBase):
    __slots__ = ()

    def seal(self, seq: int, plen: int, padlen: int, payload: bytes, padding: bytes) -> bytes:
        head = _LEN_PAD.pack(plen, padlen)
        body = b"".join((head, payload, padding))
        mv = memoryview(body)
        sealed = self._aead.encrypt(self._nonce(), mv[4:], head[:4])
        mv.release()
        return head[:4] + sealed


class GcmOpener(_GcmBase):
    __slots__ = ()
    header_size = 4

    def packet_length(self, buf: memoryview, pos: int, seq: int) -> int:
        return _U32.unpack_from(buf, pos)[0]

    def open(self, mv: memoryview, pos: int, plen: int, seq: int) -> bytes:
        try:
            plain = self._aead.decrypt(self._nonce(), mv[pos + 4 : pos + 4 + plen + _TAG_SIZE], mv[pos : pos + 4])
        except InvalidTag:
            raise MACError("packet authentication failed") from None
        n = payload_length(plen, plain[0])
        return plain[1 : 1 + n]


# ---- AES-CTR with an HMAC -------------------------------------------------------------------


class _CtrBase:
    __slots__ = ("_ctx", "_mac", "mac_size", "aad_length")
    block_size = 16

    def __init__(self, key: bytes, iv: bytes, mac: MacInfo, mac_key: bytes, decrypt: bool):
        cipher = Cipher(algorithms.AES(key), modes.CTR(iv))
        self._ctx = cipher.decryptor() if decrypt else cipher.encryptor()
        # A keyed template; copy() per packet is far cheaper than re-keying.
        self._mac = hmac.HMAC(mac_key, _HASHES[mac.name]())
        self.mac_size = mac.digest_size
        self.aad_length = mac.etm


class CtrSealer(_CtrBase):
    __slots__ = ()

    def seal(self, seq: int, plen: int, padlen: int, payload: bytes, padding: bytes) -> bytes:
        head = _LEN_PAD.pack(plen, padlen)
        n = len(payload)
        size = 4 + plen
        out = bytearray(size + self.mac_size)
        mv = memoryview(out)
        ctx = self._ctx
        mac = self._mac.copy()
        mac.update(_U32.pack(seq))
        if self.aad_length:  # encrypt-then-MAC: length in clear, MAC over the ciphertext
            mv[:4] = head[:4]
            ctx.update_into(head[4:], mv[4:5])
        else:  # MAC over the plaintext, then encrypt everything including the length
            mac.update(head)
            mac.update(payload)
            mac.update(padding)
            ctx.update_into(head, mv[:5])
        ctx.update_into(payload, mv[5 : 5 + n])
        ctx.update_into(padding, mv[5 + n : size])
        if self.aad_length:
            mac.update(mv[:size])
        mv[size:] = mac.finalize()
        mv.release()
        return bytes(out)


class CtrEtmOpener(_CtrBase):
    """aes*-ctr with an ``-etm@openssh.com`` MAC: authenticate, then decrypt (T5)."""

    __slots__ = ()
    header_size = 4

    def packet_length(self, buf: memoryview, pos: int, seq: int) -> int:
        return _U32.unpack_from(buf, pos)[0]

    def open(self, mv: memoryview, pos: int, plen: int, seq: int) -> bytes:
        end = pos + 4 + plen
        _check_mac(self._mac, seq, (mv[pos:end],), mv[end : end + self.mac_size])
        ctx = self._ctx
        n = payload_length(plen, ctx.update(mv[pos + 4 : pos + 5])[0])
        payload = ctx.update(mv[pos + 5 : pos + 5 + n])
        ctx.update(mv[pos + 5 + n : end])  # keep the keystream in step with the peer
        return payload


class CtrMteOpener(_CtrBase):
    """aes*-ctr with a plain HMAC: the first block is decrypted to learn the length.

    CTR has no padding oracle, and the length is range- and alignment-checked before the
    body is buffered, so the CBC-era length oracle (CVE-2008-5161) does not apply.
    """

    __slots__ = ("_first",)
    header_size = 16

    def __init__(self, key: bytes, iv: bytes, mac: MacInfo, mac_key: bytes, decrypt: bool):
        super().__init__(key, iv, mac, mac_key, decrypt)
        self._first = b""

    def packet_length(self, buf: memoryview, pos: int, seq: int) -> int:
        # The keystream advances here, so the packet layer asks only once per packet.
        self._first = first = self._ctx.update(buf[pos : pos + 16])
        return _U32.unpack_from(first)[0]

    def open(self, mv: memoryview, pos: int, plen: int, seq: int) -> bytes:
        first = self._first
        end = pos + 4 + plen
        rest = self._ctx.update(mv[pos + 16 : end])
        _check_mac(self._mac, seq, (first, rest), mv[end : end + self.mac_size])
        n = payload_length(plen, first[4])
        if n <= 11:
            return first[5 : 5 + n]
        return first[5:] + rest[: n - 11]


def _check_mac(template: hmac.HMAC, seq: int, parts: tuple[bytes | memoryview, ...], received: memoryview) -> None:
    mac = template.copy()
    mac.update(_U32.pack(seq))
    for part in parts:
        mac.update(part)
    try:
        mac.verify(bytes(received))  # constant-time comparison
    except InvalidSignature:
        raise MACError("packet authentication failed") from None


# ---- construction ------------------------------------------------------------------------------


def _check_sizes(info: CipherInfo, key: bytes, iv: bytes) -> None:
    if len(key) != info.key_size or len(iv) != info.iv_size:
        raise ValueError(f"wrong key or IV size for {info.name}")


def _mac_for(cipher: str, mac: str | None, mac_key: bytes | None) -> tuple[MacInfo, bytes]:
    """The MAC ``cipher`` needs and its key, both checked."""
    if mac is None or mac_key is None:
        raise ValueError(f"{cipher} needs a MAC")
    try:
        info = MACS[mac]
    except KeyError:
        raise ValueError(f"unknown MAC {mac!r}") from None
    if len(mac_key) != info.key_size:
        raise ValueError(f"wrong key size for {mac}")
    return info, mac_key


def make_sealer(cipher: str, mac: str | None, key: bytes, iv: bytes, mac_key: bytes | None) -> Sealer:
    """A sealer for outgoing packets.  ``mac`` is ignored for AEAD ciphers."""
    info = cipher_info(cipher)
    _check_sizes(info, key, iv)
    if info is NONE_CIPHER:
        return NoneSealer()
    if cipher.startswith("chacha20"):
        return ChaChaSealer(key)
    if info.aead:
        return GcmSealer(key, iv)
    mac_info, checked_key = _mac_for(cipher, mac, mac_key)
    return CtrSealer(key, iv, mac_info, checked_key, decrypt=False)


def make_opener(cipher: str, mac: str | None, key: bytes, iv: bytes, mac_key: bytes | None) -> Opener:
    """An opener for incoming packets.  ``mac`` is ignored for AEAD ciphers."""
    info = cipher_info(cipher)
    _check_sizes(info, key, iv)
    if info is NONE_CIPHER:
        return NoneOpener()
    if cipher.startswith("chacha20"):
        return ChaChaOpener(key)
    if info.aead:
        return GcmOpener(key, iv)
    mac_info, checked_key = _mac_for(cipher, mac, mac_key)
    opener = CtrEtmOpener if mac_info.etm else CtrMteOpener
    return opener(key, iv, mac_info, checked_key, decrypt=True)
