"""The reply time of a refused login, padded to a per-user delay (docs/security.md A6, T13).

Every refused login already costs one password hash at the current parameters, for unknown,
locked and real users alike (docs/security.md A3). What is left differs by a database write
or two, a few milliseconds: a real user's attempt is counted, an unknown one's is not. As
OpenSSH does (``auth2.c user_specific_delay``), a refusal is answered no sooner than a delay
of its own user name: 5 ms plus 0 to 4.2 ms taken from a keyed hash of the name, doubled
until it exceeds the time the attempt took. One name always gets the same delay whether or
not it exists, and two names differ by an amount the attacker cannot tell from a real one;
a difference of a few milliseconds shows only when it straddles a doubling, about once in
a hundred attempts at a 0.4 s hash. The key is random per process.

>>> delay = FailureDelay(key=b"k" * 32)
>>> 0.4 < delay.target("alice", 0.4) <= 0.8, delay.target("alice", 0.4) == delay.target("alice", 0.41)
(True, True)
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

import trio

__all__ = ["BASE_DELAY", "SPREAD", "FailureDelay"]

BASE_DELAY = 0.005
SPREAD = 0.0042


class FailureDelay:
    """Pads a refusal to its user's delay (see the module docstring); ``base=0`` turns it off."""

    def __init__(self, base: float = BASE_DELAY, spread: float = SPREAD, key: bytes | None = None):
        self.base, self.spread = base, spread
        self._key = key if key is not None else secrets.token_bytes(32)

    def target(self, name: str, elapsed: float) -> float:
        """The reply time for a refusal of ``name`` that took ``elapsed`` seconds so far."""
        if self.base <= 0:
            return elapsed
        mac = hmac.new(self._key, name.encode("utf-8", "replace"), hashlib.sha256).digest()
        delay = self.base + self.spread * int.from_bytes(mac[:4], "big") / 2**32
        while delay < elapsed:
            delay *= 2
        return delay

    async def pad(self, started: float, name: str) -> None:
        """Sleep until the reply time of a refusal that started at ``started`` (trio clock)."""
        elapsed = trio.current_time() - started
        await trio.sleep(max(0.0, self.target(name, elapsed) - elapsed))
