"""The web service's resource bounds: sizes, deadlines, connection caps and the rate limit.

Nothing here does I/O. :class:`WebLimits` is the one place the numbers live;
:class:`RateLimiter` is the per-client token bucket in front of the credential endpoints;
:class:`ConnectionCounter` is the admission rule of the accept loop (a global cap and a
per-client cap). Both count clients by :func:`appliance.accounting.accounting_key` (an IPv6
client by its /64: docs/security.md W1).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

__all__ = ["ConnectionCounter", "RateLimiter", "WebLimits"]


@dataclass(frozen=True, slots=True)
class WebLimits:
    """Resource bounds of the web service (sizes in bytes, times in seconds)."""

    max_body: int = 64 * 1024
    max_header: int = 16 * 1024
    handshake_timeout: float = 10.0
    request_timeout: float = 30.0     # first byte of a request to its last byte, and the reply
    service_timeout: float = 30.0
    max_connections: int = 512        # HTTP connections (after the TLS handshake)
    max_connections_per_ip: int = 32
    # In the TLS handshake, before the ALPN protocol tells HTTP from a tunnel: a NAT address
    # in front of a fleet of nodes redialling at once must not meet the HTTP caps here (W8).
    max_handshakes: int = 1024
    max_handshakes_per_ip: int = 256
    max_requests_per_connection: int = 100
    rate_per_minute: float = 20.0
    rate_burst: int = 40
    max_tracked_clients: int = 65536
    max_ws_message: int = 64 * 1024   # what a browser may send in one WebSocket message
    ws_queue: int = 16                # WebSocket messages buffered before the reader waits


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


@dataclass(slots=True)
class RateLimiter:
    """Token buckets per client: ``burst`` requests at once, refilled at ``per_minute``.

    At most ``max_clients`` buckets are kept; the least recently used one is forgotten
    first (a forgotten client starts again with a full bucket, which only happens under
    a flood from more than ``max_clients`` addresses).

    >>> t = [0.0]; limiter = RateLimiter(60, 2, clock=lambda: t[0])
    >>> [limiter.retry_after("a") for _ in range(3)]
    [0.0, 0.0, 1.0]
    >>> t[0] = 1.0; limiter.retry_after("a")
    0.0
    """

    per_minute: float
    burst: int
    max_clients: int = 65536
    clock: Callable[[], float] = trio.current_time
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def retry_after(self, client: str) -> float:
        """Take one token for ``client``: 0.0 if allowed, else the seconds until allowed."""
        now, rate = self.clock(), self.per_minute / 60.0
        bucket = self._buckets.pop(client, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        self._buckets[client] = bucket
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate


@dataclass(slots=True)
class ConnectionCounter:
    """Open connections, in all and per client (an accounting key, W1).

    >>> counter = ConnectionCounter(WebLimits(max_connections=2, max_connections_per_ip=1))
    >>> counter.admit("a"), counter.admit("a"), counter.admit("b"), counter.admit("c")
    (True, False, True, False)
    >>> counter.release("a"); counter.admit("c")
    True
    """

    limits: WebLimits
    open: int = 0
    _by_source: dict[str, int] = field(default_factory=dict)

    def admit(self, source: str) -> bool:
        """Count a new connection from ``source`` if both caps allow it."""
        per_source = self._by_source.get(source, 0)
        if self.open >= self.limits.max_connections or per_source >= self.limits.max_connections_per_ip:
            return False
        self.open += 1
        self._by_source[source] = per_source + 1
        return True

    def release(self, source: str) -> None:
        self.open -= 1
        left = self._by_source.pop(source) - 1
        if left:
            self._by_source[source] = left
