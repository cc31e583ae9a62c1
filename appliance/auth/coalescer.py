"""Coalescing of refusals per source: what bounds the audit rows a flood of refusals can write.

Every refused attempt (a wrong password, a refused certificate, an unknown invite or join
token) used to be one fsync'd row with text the client chose, so anyone who can connect could
fill the disk. :class:`RefusalCoalescer` decides, without I/O, which refusals are written in
full and which are only counted. The rules (docs/security.md U2):

* A refusal is an event with ``success`` false. Its source is the accounting key of its
  ``client_ip`` field (:func:`appliance.accounting.accounting_key`: an IPv6 client by its /64);
  a refusal that names no client counts against the source ``-``.
* A window opens at a source's first refusal and lasts :data:`WINDOW` seconds. In it the first
  :data:`PER_SOURCE` refusals from that source (10; ``[audit] refusals_per_source``) are
  written in full; the rest are counted.
* Across every source, at most :data:`TOTAL` refusals per window are written in full (a flood
  from many addresses); the rest are counted in one window for all sources (source ``*``,
  whose summary also says from how many distinct sources, counted up to :data:`MAX_SOURCES`).
* A window that ends having counted refusals it did not write becomes one ``audit.coalesced``
  event: how many, from which source, first and last time, which events, and a sample of the
  claimed user names ("37 more refusals from 10.0.0.9 in 60 s"). Nothing is dropped: every
  refusal is written or counted in such an event.
* At most :data:`MAX_SOURCES` windows are kept; when a new source needs one, the oldest window
  is closed early (its summary, if any, is written then).

So the log grows by at most ``TOTAL + TOTAL // PER_SOURCE + 1`` rows a window from refusals
(111 a minute with the defaults) whatever the number of sources, and by at most
``PER_SOURCE + 1`` a window from any one source. Successes are never coalesced.

>>> from appliance.audit import make_event
>>> coalescer = RefusalCoalescer(per_source=2)
>>> refusal = make_event("user.login", time=0, user="x", success=False, client_ip="10.0.0.9")
>>> [len(coalescer.admit(refusal, now=t)) for t in range(4)]
[1, 1, 0, 0]
>>> [e.fields["count"] for e in coalescer.expire(now=60)]
[2]
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ..accounting import accounting_key
from ..audit import DEFAULT_REFUSALS_PER_SOURCE, AuditEvent, make_event

__all__ = ["MAX_SOURCES", "PER_SOURCE", "TOTAL", "WINDOW", "RefusalCoalescer"]

WINDOW = 60.0
PER_SOURCE = DEFAULT_REFUSALS_PER_SOURCE
TOTAL = 100
MAX_SOURCES = 4096
#: How many distinct claimed user names (and event names) a summary lists.
SAMPLE = 8
ALL_SOURCES = "*"
NO_SOURCE = "-"


def source_of(event: AuditEvent) -> str:
    """The source a refusal counts against (see the module docstring)."""
    client_ip = event.fields.get("client_ip")
    return accounting_key(client_ip) if isinstance(client_ip, str) and client_ip else NO_SOURCE


@dataclass(slots=True)
class _Window:
    """One source's (or every source's) refusals in one window."""

    source: str
    start: float
    written: int = 0
    counted: int = 0
    first: float = 0.0
    last: float = 0.0
    events: dict[str, int] = field(default_factory=dict)
    users: list[str] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)

    def count(self, event: AuditEvent, source: str) -> None:
        """Count a refusal that is not written."""
        if not self.counted:
            self.first = event.time
        self.counted += 1
        self.last = event.time
        if event.event in self.events or len(self.events) < SAMPLE:
            self.events[event.event] = self.events.get(event.event, 0) + 1
        if event.user and event.user not in self.users and len(self.users) < SAMPLE:
            self.users.append(event.user)
        if len(self.sources) < MAX_SOURCES:
            self.sources.add(source)

    def summary(self, now: float, window: float) -> AuditEvent | None:
        """The ``audit.coalesced`` event of this window, or None if it counted nothing."""
        if not self.counted:
            return None
        fields: dict = {
            "source": self.source, "count": self.counted, "first": self.first, "last": self.last,
            "window": window, "events": tuple(self.events), "users": tuple(self.users),
            "summary": f"{self.counted} more refusals from "
                       f"{'all sources' if self.source == ALL_SOURCES else self.source} "
                       f"in {window:g} s",
        }
        if self.source == ALL_SOURCES:
            fields["sources"] = len(self.sources)
        return make_event("audit.coalesced", time=now, **fields)


class RefusalCoalescer:
    """Which refusals to write and which to count (rules in the module docstring). No I/O:
    each method returns the events to write now, in order; ``now`` is the caller's clock."""

    def __init__(self, *, window: float = WINDOW, per_source: int = PER_SOURCE,
                 total: int = TOTAL, max_sources: int = MAX_SOURCES) -> None:
        if per_source < 1 or total < per_source or max_sources < 1:
            raise ValueError("the coalescer needs 1 <= per_source <= total and max_sources >= 1")
        self.window, self.per_source, self.total, self.max_sources = window, per_source, total, max_sources
        self._windows: OrderedDict[str, _Window] = OrderedDict()  # oldest first
        self._all: _Window | None = None

    def admit(self, event: AuditEvent, now: float) -> list[AuditEvent]:
        """``[event]`` if the refusal is written in full, ``[]`` if it is counted; preceded by the
        summaries of the windows that ended before ``now``."""
        out = self.expire(now)
        source = source_of(event)
        window = self._windows.get(source)
        if window is not None and window.written >= self.per_source:
            window.count(event, source)
            return out
        everyone = self._all = self._all or _Window(ALL_SOURCES, now)
        if everyone.written >= self.total:
            everyone.count(event, source)
            return out
        if window is None:
            if len(self._windows) >= self.max_sources:
                out += self._close(next(iter(self._windows)), now)
            window = self._windows[source] = _Window(source, now)
        window.written += 1
        everyone.written += 1
        out.append(event)
        return out

    def expire(self, now: float) -> list[AuditEvent]:
        """The summaries of the windows that ended by ``now``."""
        out: list[AuditEvent] = []
        while self._windows:
            source, window = next(iter(self._windows.items()))
            if window.start + self.window > now:
                break
            out += self._close(source, now)
        if self._all is not None and self._all.start + self.window <= now:
            out += self._close_all(now)
        return out

    def close(self, now: float) -> list[AuditEvent]:
        """Every pending summary (at shutdown): nothing counted is left unwritten."""
        out: list[AuditEvent] = []
        while self._windows:
            out += self._close(next(iter(self._windows)), now)
        return out + self._close_all(now)

    def _close(self, source: str, now: float) -> list[AuditEvent]:
        summary = self._windows.pop(source).summary(now, self.window)
        return [summary] if summary is not None else []

    def _close_all(self, now: float) -> list[AuditEvent]:
        everyone, self._all = self._all, None
        summary = everyone.summary(now, self.window) if everyone is not None else None
        return [summary] if summary is not None else []
