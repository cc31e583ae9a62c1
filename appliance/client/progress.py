"""``jumpgate scp``'s progress meter, as OpenSSH scp's (sans I/O: text out, the clock injected).

One line per file, redrawn in place (carriage return) at most every :data:`REDRAW` seconds
and once at the end, then ended with a newline::

    report.bin                                     42%   41MB  20.5MB/s   00:03 ETA
    report.bin                                    100%   98MB  20.1MB/s   00:04

name, percent, bytes so far, the rate (averaged over the transfer), and the time left (or,
at the end, the time taken). ``jumpgate scp`` draws it only when stdout is a terminal and
``-q`` is not given, as OpenSSH does.

>>> lines = []
>>> clock = iter([0.0, 2.0, 4.0]).__next__
>>> meter = ProgressMeter("a.bin", 4 * 2**20, lines.append, clock=clock, width=60)
>>> meter.update(2 * 2**20); meter.finish()
>>> lines[0]
'\\ra.bin                      50% 2048KB   1.0MB/s 00:02 ETA'
>>> lines[1]
'\\ra.bin                     100% 4096KB   1.0MB/s 00:04    \\n'
"""
from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["ProgressMeter", "format_size"]

REDRAW = 0.25
_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")
_FIELDS = 35  # the width of everything after the name


def format_size(n: float, width: int = 5) -> str:
    """``n`` bytes in at most ``width`` digits, with OpenSSH's units (B, KB, MB ... powers of 1024)."""
    unit = 0
    while n >= 10 ** (width - 1) and unit < len(_UNITS) - 1:
        n /= 1024
        unit += 1
    return f"{int(n)}{_UNITS[unit]}"


def _rate(bytes_per_second: float) -> str:
    unit = 0
    while bytes_per_second >= 1000 and unit < len(_UNITS) - 1:
        bytes_per_second /= 1024
        unit += 1
    return f"{bytes_per_second:.1f}{_UNITS[unit]}/s"


def _clock_time(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 100 * 3600:
        return "--:--"
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class ProgressMeter:
    """The progress of one file of ``total`` bytes; ``out`` takes each redrawn line."""

    def __init__(self, name: str, total: int, out: Callable[[str], None], *,
                 clock: Callable[[], float] = time.monotonic, width: int = 80):
        self.name, self.total, self.out, self.clock = name, total, out, clock
        self.width = max(width, _FIELDS + 10)
        self.done = 0
        self.started = clock()
        self._drawn_at: float | None = None

    def update(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if self._drawn_at is None or now - self._drawn_at >= REDRAW:
            self._draw(now, final=False)

    def finish(self) -> None:
        self.done = self.total
        self._draw(self.clock(), final=True)

    def _draw(self, now: float, *, final: bool) -> None:
        self._drawn_at = now
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        percent = 100 if self.total == 0 else min(100, self.done * 100 // self.total)
        if final:
            when = f"{_clock_time(elapsed)}    "
        elif rate > 0:
            when = f"{_clock_time((self.total - self.done) / rate)} ETA"
        else:
            when = "--:-- ETA"
        shown = "".join(c if c.isprintable() else "?" for c in self.name)
        name_width = self.width - _FIELDS
        if len(shown) > name_width:
            shown = shown[:name_width]
        line = f"{shown:<{name_width}} {percent:3d}% {format_size(self.done):>6} {_rate(rate):>9} {when:>9}"
        self.out("\r" + line + ("\n" if final else ""))
