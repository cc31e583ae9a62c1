"""The SSH binary packet protocol, RFC 4253 §6: framing, padding, sequence numbers.

Everything about *how a packet is laid out* lives here; the cryptography of each cipher and
MAC lives in ``ciphers.py``.  :class:`PacketWriter` turns payloads into wire bytes and
:class:`PacketReader` turns wire bytes back into payloads.  Both are sans-IO: no sockets, no
clocks, no threads.  One writer and one reader serve one connection; each keeps its own
sequence number (rule T7).

Rules enforced here (docs/security.md, § Transport):

* T3 -- ``packet_length`` must be 5..262144 (OpenSSH's ``PACKET_MAX_SIZE``).  The reader
  checks it as soon as the first ``header_size`` bytes are in, before it waits for the body.
* T4 -- padding is 4..255 random bytes; the encrypted part must be a multiple of
  ``max(8, block size)`` (for AEAD and EtM the length field is not part of it).
* T5 -- MACs and tags are checked before decryption, in constant time (``ciphers.py``).
* T7 -- sequence numbers are 32-bit, count every packet and wrap; only strict KEX resets
  them (:meth:`reset_sequence`).  A wrap is recorded in ``seq_wrapped`` (T1).
* T8 -- ``packets``, ``bytes`` and ``blocks`` count traffic since the last key change and
  ``rekey_limit_bytes`` gives the cipher's hard limit; the transport decides when to rekey.
* T18 -- ``zlib@openssh.com`` starts only when the caller says authentication succeeded
  (:meth:`enable_compression`); inflated payloads are capped at 256 KiB (zip bombs).

Typical use::

    w, r = PacketWriter(), PacketReader()
    r.feed(w.write(b"\\x05hello"))
    assert r.next_packet() == b"\\x05hello"

Key changes take effect on the *next* packet: the reader decodes lazily in
:meth:`PacketReader.next_packet`, so bytes fed before the caller processed NEWKEYS and
called :meth:`PacketReader.set_keys` are still decoded with the new keys.
"""
from __future__ import annotations

import os
import zlib
from collections import deque

from .ciphers import CipherInfo, Opener, cipher_info, make_opener, make_sealer
from .errors import DisconnectReason, ProtocolError

#: Largest ``packet_length`` accepted (OpenSSH PACKET_MAX_SIZE, rule T3).
MAX_PACKET_LENGTH = 262144
#: Largest payload :meth:`PacketWriter.write` accepts.  The margin below 256 KiB leaves room
#: for the padding-length byte, padding and zlib's worst-case growth (deflateBound: about
#: n/4096 + 13 bytes, plus 5 for the flush), so every accepted payload fits in a packet
#: the peer accepts.  Channels should size ``max_packet`` by it.
MAX_PAYLOAD_SIZE = MAX_PACKET_LENGTH - 1024
#: Largest payload the reader inflates from one compressed packet.
MAX_DECOMPRESSED_SIZE = MAX_PACKET_LENGTH

_SEQ_MASK = 0xFFFFFFFF
_PAD_POOL_SIZE = 512
_ZLIB = "zlib@openssh.com"
_EMPTY = memoryview(b"")
#: Received chunks kept apart before they are merged (bounds the cost of tiny segments).
_MAX_CHUNKS = 64


def _rekey_limit(info: CipherInfo) -> int:
    """Bytes one key may protect (RFC 4344 §3.2, as OpenSSH computes it, rule T8).

    For 16-byte blocks 2^(2*16) blocks = 64 GiB; for smaller blocks (chacha20-poly1305
    and ``none`` count in 8-byte blocks) 1 GiB.
    """
    bs = info.block_size
    if bs >= 16:
        return (1 << (2 * bs)) * bs
    return 1 << 30


class _Deflater:
    """The sending half of ``zlib@openssh.com``: one stream, flushed after every packet."""

    __slots__ = ("_z",)

    def __init__(self) -> None:
        self._z = zlib.compressobj()

    def __call__(self, payload) -> bytes:
        z = self._z
        return z.compress(payload) + z.flush(zlib.Z_SYNC_FLUSH)


class _Inflater:
    """The receiving half, refusing more than :data:`MAX_DECOMPRESSED_SIZE` per packet."""

    __slots__ = ("_z",)

    def __init__(self) -> None:
        self._z = zlib.decompressobj()

    def __call__(self, data: bytes) -> bytes:
        z = self._z
        try:
            # Ask for one byte more than allowed: getting it means the packet is too big,
            # and zlib never produces more than it is asked for.
            out = z.decompress(data, MAX_DECOMPRESSED_SIZE + 1)
        except zlib.error:
            raise ProtocolError("bad compressed data", DisconnectReason.COMPRESSION_ERROR) from None
        if len(out) > MAX_DECOMPRESSED_SIZE:
            raise ProtocolError("decompressed packet too large", DisconnectReason.COMPRESSION_ERROR)
        if z.eof or not out:
            raise ProtocolError("bad compressed data", DisconnectReason.COMPRESSION_ERROR)
        return out


class _Direction:
    """What both directions have: the cipher in use, the sequence number, the counters."""

    __slots__ = ("seq", "seq_wrapped", "packets", "bytes", "_info")

    def __init__(self) -> None:
        self.seq = 0
        self.seq_wrapped = False
        self.packets = 0
        self.bytes = 0
        self._info = cipher_info("none")

    def _new_keys(self, cipher: str) -> None:
        self._info = cipher_info(cipher)
        self.packets = 0
        self.bytes = 0

    def _count(self, plen: int) -> None:
        """One packet of ``plen`` (length field excluded) went through: the sequence number
        moves on (mod 2**32, noting a wrap: T1) and the rekey counters grow."""
        seq = (self.seq + 1) & _SEQ_MASK
        if not seq:
            self.seq_wrapped = True
        self.seq = seq
        self.packets += 1
        self.bytes += 4 + plen

    def reset_sequence(self) -> None:
        """Strict KEX (T1): the sequence number restarts at 0 after every NEWKEYS."""
        self.seq = 0

    @property
    def cipher(self) -> str:
        return self._info.name

    @property
    def blocks(self) -> int:
        """Cipher blocks processed since the last key change (RFC 4344 §3.2)."""
        return self.bytes // self._info.block_size

    @property
    def rekey_limit_bytes(self) -> int:
        """Hard limit on :attr:`bytes` for the current cipher; rekey before reaching it."""
        return _rekey_limit(self._info)


class PacketWriter(_Direction):
    """The outgoing direction: ``write(payload)`` returns one packet's wire bytes.

    ``seq`` is the sequence number the next packet will carry.
    """

    __slots__ = ("_sealer", "_deflate", "_pad_pool", "_pad_pos")

    def __init__(self) -> None:
        super().__init__()
        self._sealer = make_sealer("none", None, b"", b"", None)
        self._deflate: _Deflater | None = None
        self._pad_pool = b""
        self._pad_pos = 0

    def set_keys(self, cipher: str, mac: str | None, key: bytes, iv: bytes, mac_key: bytes | None) -> None:
        """Protect every later packet with ``cipher`` (and ``mac`` unless it is an AEAD).

        Raises ValueError for unknown names or wrong key sizes (a caller bug, not the peer's).
        """
        self._sealer = make_sealer(cipher, mac, key, iv, mac_key)
        self._new_keys(cipher)

    def enable_compression(self) -> None:
        """Start ``zlib@openssh.com`` (call after authentication, only if negotiated)."""
        if self._deflate is None:
            self._deflate = _Deflater()

    def restart_compression(self, enabled: bool) -> None:
        """After a NEWKEYS once compression has started: a fresh zlib stream, or none.

        OpenSSH starts a new stream with every new set of keys (packet.c
        ssh_set_newkeys), so a re-exchange must do the same to stay in step with it.
        """
        self._deflate = _Deflater() if enabled else None

    @property
    def compression(self) -> str:
        return "none" if self._deflate is None else _ZLIB

    def write(self, payload: bytes) -> bytes:
        """Frame, pad, protect and count one payload; return its wire bytes.

        Raises ValueError if ``payload`` is empty or longer than :data:`MAX_PAYLOAD_SIZE`.
        """
        if not 0 < len(payload) <= MAX_PAYLOAD_SIZE:
            raise ValueError("payload must be 1..MAX_PAYLOAD_SIZE bytes")
        if self._deflate is not None:
            payload = self._deflate(payload)
        n = len(payload)
        sealer = self._sealer
        bs = sealer.block_size
        # RFC 4253 §6: the encrypted part (for AEAD/EtM: all but the length) is a multiple
        # of the block size, with at least 4 bytes of padding.
        padlen = bs - (n + (1 if sealer.aad_length else 5)) % bs
        if padlen < 4:
            padlen += bs
        plen = n + 1 + padlen
        wire = sealer.seal(self.seq, plen, padlen, payload, self._padding(padlen))
        self._count(plen)
        return wire

    def _padding(self, n: int) -> bytes:
        """``n`` CSPRNG bytes, cut from a pool to spare one getrandom() call per packet."""
        pos = self._pad_pos
        end = pos + n
        if end > len(self._pad_pool):
            self._pad_pool = os.urandom(_PAD_POOL_SIZE)
            pos, end = 0, n
        self._pad_pos = end
        return self._pad_pool[pos:end]


class PacketReader(_Direction):
    """The incoming direction: ``feed(bytes)``, then ``next_packet()`` until it returns None.

    ``seq`` is the sequence number expected next and ``seq_of_last`` the one of the packet
    ``next_packet`` returned last (for SSH_MSG_UNIMPLEMENTED).  Call :meth:`next_packet`
    after every :meth:`feed`: malformed lengths are only detected there.  After it raised
    once, the reader stays failed.
    """

    __slots__ = ("seq_of_last", "_opener", "_inflate", "_win", "_pos", "_queue", "_queued", "_plen", "_failed")

    def __init__(self) -> None:
        super().__init__()
        self.seq_of_last = 0
        self._opener = make_opener("none", None, b"", b"", None)
        self._inflate: _Inflater | None = None
        # Received bytes stay in the immutable chunks they arrived in.  ``_win`` is the chunk
        # being parsed (from ``_pos``) and ``_queue`` holds the chunks after it.  A packet
        # that lies inside one chunk is decrypted straight out of it; only a packet that
        # straddles chunks is joined into a window of its own, and parsing then continues
        # in place in the rest of its last chunk.  So most packets are decrypted without
        # any copy, the others after one, and the buffer never grows or shrinks.
        self._win = _EMPTY
        self._pos = 0
        self._queue: deque[memoryview] = deque()
        self._queued = 0  # bytes in _queue
        self._plen = -1  # packet_length of the next packet once its header was read
        self._failed = False

    def set_keys(self, cipher: str, mac: str | None, key: bytes, iv: bytes, mac_key: bytes | None) -> None:
        """Decode every packet not yet returned with ``cipher`` (and ``mac`` unless AEAD)."""
        self._opener = make_opener(cipher, mac, key, iv, mac_key)
        self._plen = -1  # a header read with the old keys is read again with the new ones
        self._new_keys(cipher)

    def enable_compression(self) -> None:
        """Start ``zlib@openssh.com`` for packets not yet returned (after authentication)."""
        if self._inflate is None:
            self._inflate = _Inflater()

    def restart_compression(self, enabled: bool) -> None:
        """After a NEWKEYS once compression has started: a fresh zlib stream, or none."""
        self._inflate = _Inflater() if enabled else None

    @property
    def compression(self) -> str:
        return "none" if self._inflate is None else _ZLIB

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as part of a packet."""
        return len(self._win) - self._pos + self._queued

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Hand over received bytes.  Nothing is parsed until :meth:`next_packet`."""
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer; a bytes object cannot change
        if not data:
            return
        queue = self._queue
        if not queue and self._pos == len(self._win):
            self._win, self._pos = memoryview(data), 0
            return
        queue.append(memoryview(data))
        self._queued += len(data)
        if len(queue) > _MAX_CHUNKS:
            # A peer trickling tiny segments must not cost a memoryview per byte.
            merged = memoryview(b"".join(queue))
            queue.clear()
            queue.append(merged)

    def next_packet(self) -> bytes | None:
        """The next payload (verified, decrypted, inflated), or None if more bytes are needed.

        Raises :class:`ProtocolError` (or :class:`MACError`) on any malformed packet.
        """
        if self._failed:
            raise ProtocolError("packet stream already failed")
        try:
            return self._next()
        except ProtocolError:
            self._failed = True
            raise

    def _next(self) -> bytes | None:
        opener = self._opener
        plen = self._plen
        if plen < 0:
            if not self._window(opener.header_size):
                return None
            plen = self._read_length(opener)
        total = 4 + plen + opener.mac_size
        if not self._window(total):
            return None
        pos = self._pos
        payload = opener.open(self._win, pos, plen, self.seq)
        self._plen = -1
        self._pos = pos + total
        self.seq_of_last = self.seq
        self._count(plen)
        if self._inflate is not None:
            payload = self._inflate(payload)
        return payload

    def _window(self, need: int) -> bool:
        """Make ``need`` bytes from ``_pos`` contiguous in ``_win``; False if not all here."""
        win, pos = self._win, self._pos
        avail = len(win) - pos
        if avail >= need:
            return True
        queue = self._queue
        if not avail:
            if not queue:
                self._win, self._pos = _EMPTY, 0  # let go of the consumed chunk
                return False
            win = self._win = queue.popleft()  # the next chunk, used in place
            pos = self._pos = 0
            avail = len(win)
            self._queued -= avail
            if avail >= need:
                return True
        if avail + self._queued < need:
            return False
        # The packet straddles chunks: join exactly its bytes, keep the rest where it is.
        parts = [win[pos:]]
        missing = need - avail
        while missing:
            chunk = queue.popleft()
            if len(chunk) > missing:
                parts.append(chunk[:missing])
                queue.appendleft(chunk[missing:])
                self._queued -= missing
                break
            parts.append(chunk)
            self._queued -= len(chunk)
            missing -= len(chunk)
        self._win, self._pos = memoryview(b"".join(parts)), 0
        return True

    def _read_length(self, opener: Opener) -> int:
        """Read and check ``packet_length`` before any of the body is waited for (T3, T4)."""
        plen = opener.packet_length(self._win, self._pos, self.seq)
        if plen < 5 or plen > MAX_PACKET_LENGTH:
            raise ProtocolError("bad packet length")
        if (plen if opener.aad_length else plen + 4) % opener.block_size:
            raise ProtocolError("packet length is not a multiple of the block size")
        self._plen = plen
        return plen
