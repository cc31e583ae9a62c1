"""Replaying a recording: streamed chunk by chunk, in real time, as asciicast v2, or as text.

A recording is never loaded whole: :func:`frames` fetches and decodes one chunk (at most
~330 KB) at a time, so playback starts at once however long the session was. It is never
played short without saying so: a chunk that fails its checksum raises
:class:`~appliance.sessions.format.CorruptRecording`, a chunk not (yet) uploaded
:class:`~appliance.sessions.format.TruncatedRecording`, and :func:`ending_note` says when a
recording ends early because its session was interrupted.

>>> async for frame in frames(fetch, session):               # doctest: +SKIP
...     ...
"""
from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from .format import Frame, TruncatedRecording, decode_blocks
from .text import strip_escapes

__all__ = ["asciicast_header", "asciicast_event", "ending_note", "frames", "play", "TextStream"]

Fetch = Callable[[int], Awaitable[bytes]]


async def frames(fetch: Fetch, session: dict[str, Any]) -> AsyncIterator[Frame]:
    """Every frame of ``session`` (a ``get_session`` answer), chunk by chunk."""
    expected, uploaded = session["chunks"], session["uploaded"]
    count = expected if expected >= 0 else uploaded
    for index in range(count):
        if index >= uploaded:
            raise TruncatedRecording(f"chunk {index} of {count} of session {session['id']} is not uploaded yet "
                                     "(its node still holds it); try again later")
        data = await fetch(index)
        for frame in decode_blocks(data, where=f"chunk {index} of session {session['id']}"):
            yield frame


def ending_note(session: dict[str, Any]) -> str | None:
    """What to tell the viewer after the last frame, when the recording is not the whole session."""
    if session["state"] == "interrupted":
        return (f"session {session['id']} was interrupted (its node stopped): the recording ends where the node "
                "last wrote it, at most the last second before the stop is missing")
    if session["state"] == "active":
        return f"session {session['id']} is still running: this is what was uploaded so far"
    return None


async def play(source: AsyncIterator[Frame], write: Callable[[bytes], None], *, speed: float = 1.0,
               skip_idle: float | None = None, at: float = 0.0) -> None:
    """Write output with its original timing (divided by ``speed``; pauses capped at
    ``skip_idle`` seconds); everything before ``at`` seconds is written at once."""
    previous = 0
    async for frame in source:
        if frame.kind in ("o", "e"):
            if frame.t >= at:
                delay = max(0.0, (frame.t_ms - max(previous, int(at * 1000))) / 1000.0 / speed)
                if skip_idle is not None:
                    delay = min(delay, skip_idle)
                await trio.sleep(delay)
            write(frame.data)
            previous = frame.t_ms
        elif frame.kind == "r" and frame.t >= at:
            cols, rows = frame.data
            write(f"\x1b[8;{int(rows)};{int(cols)}t".encode())  # xterm: resize the window


def asciicast_header(header: dict[str, Any]) -> str:
    """The first line of an asciicast v2 file."""
    head = {"version": 2, "width": int(header.get("cols") or 80), "height": int(header.get("rows") or 24),
            "timestamp": int(header.get("started") or 0), "title": f"{header.get('user')}@{header.get('node')}"}
    if header.get("term"):
        head["env"] = {"TERM": header["term"]}
    return json.dumps(head)


class _Utf8:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def __call__(self, data: bytes) -> str:
        return self._decoder.decode(data)


def asciicast_event(frame: Frame, decode: Callable[[bytes], str]) -> str | None:
    """One event line: output "o", window size "r" (asciicast v2), or None."""
    if frame.kind in ("o", "e"):
        text = decode(frame.data)
        return json.dumps([round(frame.t, 3), "o", text]) if text else None
    if frame.kind == "r":
        return json.dumps([round(frame.t, 3), "r", f"{int(frame.data[0])}x{int(frame.data[1])}"])
    return None


def utf8_decoder() -> Callable[[bytes], str]:
    """A decoder that keeps a character split across two frames whole."""
    return _Utf8()


class TextStream:
    """Output with escape sequences removed, across frame boundaries (an escape cut by a frame
    boundary waits for the rest). Stripping is one regular expression per frame, in bulk."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        data = self._carry + data
        cut = data.rfind(b"\x1b", max(0, len(data) - 64))
        if cut != -1:
            data, self._carry = data[:cut], data[cut:]
        else:
            self._carry = b""
        return strip_escapes(data)

    def close(self) -> bytes:
        rest, self._carry = self._carry, b""
        return strip_escapes(rest)
