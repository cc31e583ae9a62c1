"""Terminal output as text: escape sequences removed in bulk (regular expressions over bytes).

Used by ``play --format text`` and by the search index (each line a session printed, with
the time it started)."""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = ["LineSplitter", "strip_escapes"]

# CSI ... final, OSC ... BEL/ST, other ESC sequences, then the C0 controls but \t and \n
_ESCAPES = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[P^_][^\x1b]*\x1b\\"
                      rb"|\x1b[ -/]*[0-~]|[\x00-\x08\x0b-\x1f\x7f]")
MAX_LINE = 1024


def strip_escapes(data: bytes) -> bytes:
    """``data`` without terminal escape sequences and control characters (\\r\\n becomes \\n)."""
    return _ESCAPES.sub(b"", data.replace(b"\r\n", b"\n"))


class LineSplitter:
    """Feed output as it came (escapes may span two feeds); get (offset_ms, line) back."""

    def __init__(self) -> None:
        self._tail = b""
        self._start_ms = 0

    def feed(self, t_ms: int, data: bytes) -> Iterator[tuple[int, str]]:
        if not self._tail:
            self._start_ms = t_ms
        buffered = self._tail + data
        cut = buffered.rfind(b"\x1b")  # an escape that may be incomplete waits for the next feed
        keep = b""
        if cut != -1 and len(buffered) - cut < 32 and b"\n" not in buffered[cut:]:
            buffered, keep = buffered[:cut], buffered[cut:]
        text = strip_escapes(buffered)
        *lines, rest = text.split(b"\n")
        for line in lines:
            yield from self._line(line)
            self._start_ms = t_ms
        self._tail = (rest[-MAX_LINE:] + keep)

    def _line(self, line: bytes) -> Iterable[tuple[int, str]]:
        if line.strip():
            yield self._start_ms, line[:MAX_LINE].decode("utf-8", "replace")

    def close(self) -> Iterator[tuple[int, str]]:
        yield from self._line(strip_escapes(self._tail))
        self._tail = b""
