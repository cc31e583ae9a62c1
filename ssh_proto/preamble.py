"""A relay's line in front of an SSH server's input, split off without I/O.

RFC 4253 §4.2 lets only the *server* send lines before its version string; a client's
first bytes are ``SSH-2.0-``. A relay that carries a client's bytes to a server (a bastion
proxy) may still want the server to know whose bytes they are, as HAProxy's PROXY
protocol does for TCP. This module lets a server accept one such line, and only one
whose prefix it chose, from in front of the client's version string:

* input that does not begin with the prefix is plain SSH and passes through untouched
  (decided as soon as the first byte differs, so a normal client is never delayed);
* input that begins with it must end the line with CR LF within ``max_length`` bytes,
  else :class:`PreambleError`; whatever follows the line is the start of the SSH stream.

Whether the line is believed is the caller's business (it should be signed: anyone can
connect and send it); :mod:`ssh_proto.trio_io.preamble` runs the caller's check.

>>> reader = PreambleReader(b"RELAY ")
>>> reader.feed(b"RELAY from 10.0.0.7\\r\\nSSH-2.0-x\\r\\n")
Preamble(line=b'RELAY from 10.0.0.7', rest=b'SSH-2.0-x\\r\\n')
>>> PreambleReader(b"RELAY ").feed(b"SSH-2.0-OpenSSH_9.2\\r\\n")
Preamble(line=None, rest=b'SSH-2.0-OpenSSH_9.2\\r\\n')
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ProtocolError

__all__ = ["MAX_PREAMBLE", "Preamble", "PreambleError", "PreambleReader"]

MAX_PREAMBLE = 8192


class PreambleError(ProtocolError):
    """A relay's line is malformed or not believed; the connection is closed."""


@dataclass(frozen=True, slots=True)
class Preamble:
    """What came in front of the SSH stream: the relay's line (None: there was none)."""

    line: bytes | None
    rest: bytes


class PreambleReader:
    """Feed the server's first input until it returns a :class:`Preamble`."""

    def __init__(self, prefix: bytes, max_length: int = MAX_PREAMBLE):
        if not prefix or prefix.startswith(b"SSH-") or b"SSH-".startswith(prefix) or b"\n" in prefix:
            raise ValueError("a preamble prefix must be non-empty, not SSH-, and on one line")
        self.prefix = prefix
        self.max_length = max_length
        self._buffer = b""

    def feed(self, data: bytes | bytearray) -> Preamble | None:
        """The split once it can be decided, else None (feed more)."""
        buffer = self._buffer + data
        self._buffer = b""
        head = buffer[:len(self.prefix)]
        if head != self.prefix[:len(head)]:
            return Preamble(None, buffer)
        end = buffer.find(b"\n")
        if end < 0 or end >= self.max_length:  # the line, CR LF included, is at most max_length
            if len(buffer) >= self.max_length:
                raise PreambleError(f"relay line longer than {self.max_length} bytes")
            self._buffer = buffer
            return None
        if not buffer[:end].endswith(b"\r"):
            raise PreambleError("relay line not ended by CR LF")
        return Preamble(buffer[:end - 1], buffer[end + 1:])

    def eof(self) -> Preamble:
        """The input ended before a decision: a partial relay line is an error."""
        if self._buffer:
            raise PreambleError("the connection closed inside a relay line")
        return Preamble(None, b"")
