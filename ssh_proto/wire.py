"""SSH data type encoding, RFC 4251 §5.

:class:`Reader` decodes ``byte``, ``boolean``, ``uint32``, ``uint64``, ``string``,
``mpint`` and ``name-list`` from a buffer and raises :class:`ProtocolError` (never
anything else) on truncated or malformed input. Every length is checked against the
bytes actually present before anything is allocated. :class:`Writer` and the
``encode_*`` helpers build the same types.
"""
from __future__ import annotations

import re
import struct

from .errors import ProtocolError

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

_NAME_LIST_OK = re.compile(r"[\x21-\x7e]*")

#: Upper bound on a name-list's entries; RFC 4251 names are short and lists small.
MAX_NAME_LIST_ITEMS = 256


class Reader:
    """Sequential decoder over ``data``.

    >>> r = Reader(encode_string(b"hi") + encode_uint32(7))
    >>> r.string(), r.uint32()
    (b'hi', 7)
    >>> r.finish()
    """

    __slots__ = ("_data", "_pos", "_end")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0):
        self._data = bytes(data) if not isinstance(data, bytes) else data
        self._pos = pos
        self._end = len(self._data)

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def _need(self, n: int, what: str) -> int:
        pos = self._pos
        if n < 0 or pos + n > self._end:
            raise ProtocolError(f"truncated {what}")
        self._pos = pos + n
        return pos

    def byte(self) -> int:
        pos = self._need(1, "byte")
        return self._data[pos]

    def boolean(self) -> bool:
        return self.byte() != 0

    def uint32(self) -> int:
        pos = self._need(4, "uint32")
        return _U32.unpack_from(self._data, pos)[0]

    def uint64(self) -> int:
        pos = self._need(8, "uint64")
        return _U64.unpack_from(self._data, pos)[0]

    def raw(self, n: int) -> bytes:
        pos = self._need(n, "field")
        return self._data[pos : pos + n]

    def string(self, max_len: int | None = None) -> bytes:
        n = self.uint32()
        if max_len is not None and n > max_len:
            raise ProtocolError(f"string of {n} bytes exceeds limit {max_len}")
        pos = self._need(n, "string")
        return self._data[pos : pos + n]

    def utf8(self, max_len: int | None = None) -> str:
        try:
            return self.string(max_len).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("invalid UTF-8 in string") from None

    def ascii(self, max_len: int | None = None) -> str:
        try:
            return self.string(max_len).decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("non-ASCII byte in name") from None

    def mpint(self, max_bytes: int = 16384 // 8 + 1) -> int:
        b = self.string(max_bytes)
        if not b:
            return 0
        # RFC 4251: no unnecessary leading 0x00 / 0xff bytes.
        if len(b) > 1 and ((b[0] == 0 and b[1] < 0x80) or (b[0] == 0xFF and b[1] >= 0x80)):
            raise ProtocolError("mpint has unnecessary leading bytes")
        return int.from_bytes(b, "big", signed=True)

    def name_list(self) -> tuple[str, ...]:
        s = self.ascii()
        if not s:
            return ()
        names = s.split(",")
        if len(names) > MAX_NAME_LIST_ITEMS:
            raise ProtocolError("name-list too long")
        # RFC 4251 §5: names are non-empty, printable US-ASCII without spaces or commas.
        if "" in names or not _NAME_LIST_OK.fullmatch(s):
            raise ProtocolError("malformed name-list")
        return tuple(names)

    def rest(self) -> bytes:
        pos, self._pos = self._pos, self._end
        return self._data[pos:]

    def finish(self) -> None:
        """Raise unless every byte was consumed (trailing bytes are a format error)."""
        if self._pos != self._end:
            raise ProtocolError("trailing bytes after message")


def encode_uint32(n: int) -> bytes:
    return _U32.pack(n)


def encode_uint64(n: int) -> bytes:
    return _U64.pack(n)


def encode_string(b: bytes | str) -> bytes:
    if isinstance(b, str):
        b = b.encode("utf-8")
    return _U32.pack(len(b)) + b


def encode_mpint(n: int) -> bytes:
    if n == 0:
        return b"\0\0\0\0"
    length = (n.bit_length() + 8) // 8  # room for the sign bit
    b = n.to_bytes(length, "big", signed=True)
    # to_bytes with signed=True keeps exactly one sign byte when needed; strip extras.
    while len(b) > 1 and ((b[0] == 0 and b[1] < 0x80) or (b[0] == 0xFF and b[1] >= 0x80)):
        b = b[1:]
    return _U32.pack(len(b)) + b


def encode_name_list(names) -> bytes:
    return encode_string(",".join(names).encode("ascii"))


def encode_bool(v: bool) -> bytes:
    return b"\1" if v else b"\0"


class Writer:
    """Accumulates SSH-encoded fields; ``bytes(w)`` or ``w.getvalue()`` gives the result."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def byte(self, v: int) -> "Writer":
        self._parts.append(bytes((v,)))
        return self

    def boolean(self, v: bool) -> "Writer":
        self._parts.append(encode_bool(v))
        return self

    def uint32(self, v: int) -> "Writer":
        self._parts.append(_U32.pack(v))
        return self

    def uint64(self, v: int) -> "Writer":
        self._parts.append(_U64.pack(v))
        return self

    def string(self, v: bytes | str) -> "Writer":
        self._parts.append(encode_string(v))
        return self

    def mpint(self, v: int) -> "Writer":
        self._parts.append(encode_mpint(v))
        return self

    def name_list(self, v) -> "Writer":
        self._parts.append(encode_name_list(v))
        return self

    def raw(self, v: bytes) -> "Writer":
        self._parts.append(bytes(v))
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)

    __bytes__ = getvalue
