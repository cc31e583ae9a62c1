"""Admission of connections to one listener, sans-IO (docs/security.md § Limits L2, L8-L11).

This module owns every decision a listener makes *across* connections: whether a new
connection may start a login, whether a login may become an authenticated connection, and
what a connection's end teaches about its source. It never does I/O; the clock and the
randomness of the early drop are injectable. :class:`~ssh_proto.SSHListener` drives it.

Rules (each a rule of OpenSSH 9.8's sshd, unless said otherwise):

* **Sources.** A connection is accounted to its *source*: the network its address falls
  in, ``netblock`` bits wide (PerSourceNetBlockSize; /32 for IPv4 and — unlike OpenSSH's
  /128 — /64 for IPv6, the smallest network a host is given). Behind a relay the address
  is the one the relay vouched for (the listener passes it), never the relay's own.
  Addresses in ``exempt`` networks are counted only in the listener's totals.
* **Penalties** (PerSourcePenalties). How a connection that never authenticated ended adds
  seconds to its source's penalty: ``authfail`` (it tried and failed), ``noauth`` (it never
  tried), ``grace_exceeded``, ``crash`` (its handler failed). Penalties accumulate, less
  the time that passed, up to ``maximum``; once a source's penalty reaches ``minimum`` the
  source is refused until it has run out.
* **Startups.** A connection is a *startup* from admission until it authenticates or ends.
  A source may hold ``per_source_max_startups`` (PerSourceMaxStartups) and may start at most
  ``per_source_rate`` = (per second, burst) of them (a token bucket; not in OpenSSH): the
  pre-auth key exchanges one source can make us compute (DHEat) are bounded by it, since a
  connection does one key exchange before authentication (L10).
* **The listener's startups** (MaxStartups start:rate:full), with one change so that a flood
  from some sources does not stop a login from another: a source's *first* startup is
  never dropped at random, and when ``full`` startups are in progress a newcomer whose
  source holds fewer than the busiest source evicts, among the busiest sources'
  startups, the one that has been quiet longest (:meth:`Startup.seen` marks input; a
  login in progress talks every round trip, an idle flood does not). Only sources at
  least as busy as every other are refused when full.
* **Authenticated connections**: at most ``max_authenticated`` per listener and
  ``max_authenticated_per_user`` per user (the *account* the application names when it
  accepts a login; the SSH user name by default). Not in sshd.

Every refusal raises :class:`~ssh_proto.errors.LimitExceeded`, whose description says which
limit and is what the peer reads in the DISCONNECT.

Typical use (what the listener does)::

    admission = Admission(ListenerProfile(per_source_max_startups=10))
    startup = admission.admit(("203.0.113.7", 50022))   # or LimitExceeded
    startup.on_evict = close_that_connection
    ...
    startup.authenticated("alice")                        # or LimitExceeded
    ...
    startup.finish(Outcome.AUTHENTICATED)                 # exactly once, at the end
"""
from __future__ import annotations

import dataclasses
import enum
import ipaddress
import random
import time
from collections import OrderedDict, deque
from typing import Callable

from .errors import DisconnectReason, LimitExceeded

__all__ = ["Admission", "ListenerProfile", "Outcome", "Penalties", "Startup"]


@dataclasses.dataclass(frozen=True, slots=True)
class Penalties:
    """Seconds of penalty per way a login can end (OpenSSH 9.8 PerSourcePenalties defaults)."""

    crash: float = 90.0
    authfail: float = 5.0
    noauth: float = 1.0
    grace_exceeded: float = 10.0
    minimum: float = 15.0     # refused once a source's penalty reaches this ...
    maximum: float = 600.0    # ... for at most this long


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerProfile:
    """How a listener admits connections (the module's rules); pass to ``SSHListener``.

    The defaults are sshd's (MaxStartups 10:30:100, penalties on) plus IPv6 sources by /64;
    per-source startup caps and rates, and the authenticated limits, are off by default.
    """

    max_startups: tuple[int, int, int] = (10, 30, 100)
    per_source_max_startups: int | None = None
    per_source_rate: tuple[float, int] | None = None
    netblock: tuple[int, int] = (32, 64)
    penalties: Penalties | None = Penalties()
    exempt: tuple[str, ...] = ()
    max_sources: int = 65536
    max_authenticated: int | None = None
    max_authenticated_per_user: int | None = None

    def __post_init__(self) -> None:
        start, rate, full = self.max_startups
        if not 0 < start <= full or not 0 <= rate <= 100:
            raise ValueError("max_startups must be start:rate:full with 0 < start <= full")
        if self.max_sources <= full:
            raise ValueError("max_sources must exceed the startups in progress")
        v4, v6 = self.netblock
        if not (0 < v4 <= 32 and 0 < v6 <= 128):
            raise ValueError("netblock must be IPv4 bits 1..32 and IPv6 bits 1..128")


class Outcome(enum.Enum):
    """How a connection ended, as far as its source's penalty is concerned."""

    AUTHENTICATED = "authenticated"
    AUTHFAIL = "authfail"            # tried to authenticate and failed
    NOAUTH = "noauth"                # never tried (scanners, protocol errors)
    GRACE_EXCEEDED = "grace-exceeded"
    CRASH = "crash"                  # its handler failed
    NOT_COUNTED = "not-counted"      # refused by a limit, or a relay line we did not believe


@dataclasses.dataclass(slots=True)
class _Source:
    """What the listener remembers of one source."""

    startups: deque = dataclasses.field(default_factory=deque)  # Startups in progress, oldest first
    penalty_until: float = 0.0
    penalised: bool = False
    tokens: float = 0.0
    refilled: float = 0.0


class Startup:
    """One admitted connection, from admission to its end (made by :meth:`Admission.admit`)."""

    __slots__ = ("_admission", "key", "address", "started", "active", "account", "evicted", "released",
                 "finished", "on_evict")

    def __init__(self, admission: Admission, key: str | None, address, started: float):
        self._admission = admission
        self.key = key                # the source (None: not an IP address, not tracked)
        self.address = address
        self.started = started
        self.active = started             # when input last arrived
        self.account: str | None = None   # set once authenticated (and counted as such)
        self.evicted = False              # made room for another source's login
        self.released = False             # no longer counted as a startup
        self.finished = False
        self.on_evict: Callable[[], None] | None = None

    @property
    def pending(self) -> bool:
        """Still a startup: admitted, not authenticated, not evicted, not ended."""
        return not self.released

    def seen(self) -> None:
        """Input arrived from the peer (the connection is doing something)."""
        self.active = self._admission._clock()

    def authenticated(self, account: str) -> None:
        """The login succeeded as ``account``: LimitExceeded if that is one too many."""
        self._admission._authenticated(self, account)

    def finish(self, outcome: Outcome) -> None:
        """The connection ended (call exactly once); its source learns from ``outcome``."""
        if not self.finished:
            self._admission._finish(self, outcome)
            self.finished = True


class Admission:
    """The admission state of one listener (see the module docstring)."""

    def __init__(self, profile: ListenerProfile = ListenerProfile(), *,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random):
        self.profile = profile
        self._clock = clock
        self._rng = rng
        self._exempt = tuple(ipaddress.ip_network(n, strict=False) for n in profile.exempt)
        self._sources: OrderedDict[str, _Source] = OrderedDict()  # least recently seen first
        self._busy: dict[str, _Source] = {}  # the sources with startups in progress (<= full)
        self.startups = 0                   # in progress, over every source
        self.authenticated = 0
        self._users: dict[str, int] = {}

    # ---- sources -------------------------------------------------------------------------
    def source_key(self, address) -> str | None:
        """The source ``address`` counts against (its netblock), or None if it is not an IP."""
        ip = _ip_of(address)
        if ip is None:
            return None
        bits = self.profile.netblock[0 if ip.version == 4 else 1]
        return str(ipaddress.ip_network((ip, bits), strict=False))

    def _is_exempt(self, address) -> bool:
        ip = _ip_of(address)
        return ip is not None and any(ip in net for net in self._exempt)

    def _source(self, key: str, now: float) -> _Source:
        source = self._sources.get(key)
        if source is None:
            burst = self.profile.per_source_rate[1] if self.profile.per_source_rate else 0
            source = self._sources[key] = _Source(tokens=float(burst), refilled=now)
            self._forget_sources()
        else:
            self._sources.move_to_end(key)
        return source

    def _forget_sources(self) -> None:
        """Past max_sources, forget the least recent source with nothing in progress (its
        penalty with it: OpenSSH's "permissive" overflow). Those in progress, which are
        skipped, number at most ``full``."""
        while len(self._sources) > self.profile.max_sources:
            key = next(k for k, s in self._sources.items() if not s.startups)
            del self._sources[key]

    # ---- admission -----------------------------------------------------------------------
    def admit(self, address) -> Startup:
        """A new connection from ``address`` may start a login, or LimitExceeded says why not."""
        now = self._clock()
        key = self.source_key(address)
        tracked = key is not None and not self._is_exempt(address)
        source = self._source(key, now) if key is not None else None
        if tracked and source is not None:  # tracked: it has a key, so a source
            self._check_source(source, now)
        held = len(source.startups) if source is not None else 0
        self._check_listener(held, tracked)
        if tracked and source is not None and self.profile.per_source_rate is not None:
            source.tokens -= 1
        startup = Startup(self, key, address, now)
        if source is not None and key is not None:
            source.startups.append(startup)
            self._busy[key] = source
        self.startups += 1
        return startup

    def _check_source(self, source: _Source, now: float) -> None:
        if source.penalised:
            if now < source.penalty_until:
                raise LimitExceeded(f"your address is refused for {source.penalty_until - now:.0f}s more "
                                    "(penalty for failed or abandoned logins)",
                                    DisconnectReason.HOST_NOT_ALLOWED_TO_CONNECT)
            source.penalised = False
        cap = self.profile.per_source_max_startups
        if cap is not None and len(source.startups) >= cap:
            raise LimitExceeded(f"too many unauthenticated connections from your address (limit {cap})")
        rate = self.profile.per_source_rate
        if rate is not None:
            per_second, burst = rate
            source.tokens = min(float(burst), source.tokens + (now - source.refilled) * per_second)
            source.refilled = now
            if source.tokens < 1:
                raise LimitExceeded(f"too many new connections from your address (limit {per_second:g}/s)")

    def _check_listener(self, held: int, tracked: bool) -> None:
        start, rate, full = self.profile.max_startups
        n = self.startups
        if n >= full:
            if not (tracked and self._evict_for(held)):
                raise LimitExceeded("too many unauthenticated connections; try again later")
            return
        if n >= start and held > 0:
            drop = rate + (100 - rate) * (n - start) / max(1, full - start)
            if self._rng() * 100 < drop:
                raise LimitExceeded("too many unauthenticated connections; try again later")

    def _evict_for(self, held: int) -> bool:
        """Make room for a source holding ``held`` startups: among the startups of the
        busiest tracked sources, if they hold more, evict the one quiet longest. True when
        a startup was evicted."""
        sources = [s for s in self._busy.values() if not self._is_exempt(s.startups[0].address)]
        most = max((len(s.startups) for s in sources), default=0)
        if most <= held:
            return False
        victim = min((startup for s in sources if len(s.startups) == most for startup in s.startups),
                     key=lambda startup: startup.active)
        self._release(victim)
        victim.evicted = True
        if victim.on_evict is not None:
            victim.on_evict()
        return True

    # ---- after admission -------------------------------------------------------------------
    def _release(self, startup: Startup) -> None:
        """The startup no longer counts as one (authenticated, evicted or ended); once."""
        if startup.released:
            return
        startup.released = True
        self.startups -= 1
        key = startup.key
        source = self._busy.get(key) if key is not None else None
        if source is not None and key is not None:
            source.startups.remove(startup)
            if not source.startups:
                del self._busy[key]

    def _authenticated(self, startup: Startup, account: str) -> None:
        self._release(startup)
        if startup.account is not None:
            return  # counted already (a second accept on one connection cannot happen)
        p = self.profile
        if p.max_authenticated is not None and self.authenticated >= p.max_authenticated:
            raise LimitExceeded(f"too many connections to this server (limit {p.max_authenticated})")
        count = self._users.get(account, 0)
        if p.max_authenticated_per_user is not None and count >= p.max_authenticated_per_user:
            raise LimitExceeded(f"too many connections for user {account} (limit {p.max_authenticated_per_user})")
        self._users[account] = count + 1
        self.authenticated += 1
        startup.account = account

    def _finish(self, startup: Startup, outcome: Outcome) -> None:
        self._release(startup)
        if startup.account is not None:
            self._logged_out(startup.account)
        elif outcome is not Outcome.AUTHENTICATED:
            self._penalise(startup, outcome)

    def _logged_out(self, account: str) -> None:
        self.authenticated -= 1
        left = self._users.pop(account) - 1
        if left:
            self._users[account] = left

    def _penalise(self, startup: Startup, outcome: Outcome) -> None:
        penalties = self.profile.penalties
        seconds = _penalty_of(penalties, outcome)
        if not seconds or penalties is None or startup.key is None or self._is_exempt(startup.address):
            return
        now = self._clock()
        source = self._source(startup.key, now)
        remaining = min(max(source.penalty_until - now, 0.0) + seconds, penalties.maximum)
        source.penalty_until = now + remaining
        if remaining >= penalties.minimum:
            source.penalised = True

    def penalty(self, address) -> float:
        """The seconds of penalty the source of ``address`` holds now (0.0: none), refused
        or not yet."""
        key = self.source_key(address)
        source = self._sources.get(key) if key is not None else None
        return max(source.penalty_until - self._clock(), 0.0) if source is not None else 0.0

    def penalised(self, address) -> bool:
        """Is ``address``'s source refused right now?"""
        key = self.source_key(address)
        source = self._sources.get(key) if key is not None else None
        return source is not None and source.penalised and self._clock() < source.penalty_until


def _penalty_of(penalties: Penalties | None, outcome: Outcome) -> float:
    if penalties is None:
        return 0.0
    return {Outcome.AUTHFAIL: penalties.authfail, Outcome.NOAUTH: penalties.noauth,
            Outcome.GRACE_EXCEEDED: penalties.grace_exceeded, Outcome.CRASH: penalties.crash}.get(outcome, 0.0)


def _ip_of(address) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of a socket address (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    except (ValueError, IndexError, TypeError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
