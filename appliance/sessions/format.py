"""The recording format, sans-IO: frames, checksummed blocks, chunk files.

This module owns the bytes of a session recording and nothing else (no files, no Trio).

Theory of operation::

    recording = chunk 0, chunk 1, ...            (files NNNNNN.chunk, each at most ~CHUNK_TARGET bytes)
    chunk     = block*                           (appended as the session runs)
    block     = "JGRB" || uint32 length || uint32 crc32(payload) || payload
    payload   = msgpack array of frames          (what was batched between two writes)
    frame     = [t_ms, kind, data]               (t_ms: milliseconds since the session started)

Frame kinds (:data:`KINDS`): ``h`` the header (a map with ``v``: 1, the session id, user, login,
node, kind, command, start time, terminal size), always the first frame of chunk 0; ``o``
terminal output (bytes) and ``e`` stderr of an exec (bytes); ``i`` input (bytes, only when the
cluster records input); ``r`` a window-size change ``[cols, rows]``; ``j`` / ``l`` a party joined
or left (``{"party", "user", "mode"}``); ``x`` the end (``{"exit_status", "exit_signal"}``).

A block is written with one ``write`` (so a SIGKILL of the writer leaves whole blocks and at
most one partial one at the end); its CRC guards each block. Reading is strict: a block whose
magic, length or CRC is wrong raises :class:`CorruptRecording` (never a silently short
replay); a partial block at the end of the last chunk raises :class:`TruncatedRecording`
unless the caller allows it (:func:`valid_prefix`: what a node recovering from a crash keeps).
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = ["BLOCK_MAGIC", "CHUNK_TARGET", "FORMAT_VERSION", "KINDS", "CorruptRecording", "Frame",
           "RecordingError", "TruncatedRecording", "decode_blocks", "encode_block", "valid_prefix"]

FORMAT_VERSION = 1
BLOCK_MAGIC = b"JGRB"
_HEADER = struct.Struct(">4sII")
#: A chunk is sealed (fsync'd, then uploaded) once it holds this many bytes; one block may
#: overshoot it, so a chunk stays well inside the API's 1 MiB frame.
CHUNK_TARGET = 256 * 1024
#: The largest block a reader accepts (a writer flushes long before).
MAX_BLOCK = 768 * 1024
KINDS = frozenset("hoeirjlx")


class RecordingError(Exception):
    """A recording cannot be read as it was written; ``str()`` says where and why."""


class CorruptRecording(RecordingError):
    """A block or chunk fails its checksum or framing."""


class TruncatedRecording(RecordingError):
    """The recording ends inside a block, or chunks are missing."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One timestamped event of a recording."""

    t_ms: int
    kind: str
    data: Any

    @property
    def t(self) -> float:
        return self.t_ms / 1000.0


def encode_block(frames: Sequence[Frame]) -> bytes:
    """One block holding ``frames`` (written with a single ``write``)."""
    payload = msgpack.packb([[f.t_ms, f.kind, f.data] for f in frames], use_bin_type=True)
    return _HEADER.pack(BLOCK_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _frames_of(payload: bytes, where: str) -> list[Frame]:
    try:
        items = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CorruptRecording(f"{where}: undecodable block ({type(exc).__name__})") from None
    if not isinstance(items, list):
        raise CorruptRecording(f"{where}: a block must hold a list of frames")
    frames = []
    for item in items:
        if (not isinstance(item, list) or len(item) != 3 or type(item[0]) is not int
                or item[1] not in KINDS):
            raise CorruptRecording(f"{where}: malformed frame")
        frames.append(Frame(item[0], item[1], item[2]))
    return frames


def decode_blocks(data: bytes | memoryview, *, where: str = "chunk", allow_partial_end: bool = False
                  ) -> Iterator[Frame]:
    """The frames of a chunk's bytes, block by block (a generator: a long chunk is not decoded
    at once). Raises :class:`CorruptRecording` or :class:`TruncatedRecording`."""
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        if len(view) - offset < _HEADER.size:
            if allow_partial_end:
                return
            raise TruncatedRecording(f"{where}: ends inside a block header at byte {offset}")
        magic, length, crc = _HEADER.unpack_from(view, offset)
        if magic != BLOCK_MAGIC or length > MAX_BLOCK:
            raise CorruptRecording(f"{where}: bad block header at byte {offset}")
        start = offset + _HEADER.size
        if start + length > len(view):
            if allow_partial_end:
                return
            raise TruncatedRecording(f"{where}: ends inside a block at byte {offset}")
        payload = bytes(view[start:start + length])
        if zlib.crc32(payload) != crc:
            raise CorruptRecording(f"{where}: block at byte {offset} fails its checksum")
        yield from _frames_of(payload, f"{where} byte {offset}")
        offset = start + length


def valid_prefix(data: bytes) -> int:
    """How many leading bytes of ``data`` are whole, valid blocks (a crashed writer's file is
    cut there: the partial block at the end is the at-most-one-second a SIGKILL loses)."""
    view = memoryview(data)
    offset = 0
    while len(view) - offset >= _HEADER.size:
        magic, length, crc = _HEADER.unpack_from(view, offset)
        start = offset + _HEADER.size
        if magic != BLOCK_MAGIC or length > MAX_BLOCK or start + length > len(view):
            break
        if zlib.crc32(view[start:start + length]) != crc:
            break
        offset = start + length
    return offset
