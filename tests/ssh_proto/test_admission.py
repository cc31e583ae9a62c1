"""ssh_proto.limits.Admission, sans-IO: the rules of docs/security.md L2, L8-L11 on a fake clock.

The same rules over real sockets, with floods from many loopback sources, are in
``test_listener_limits.py``.
"""
from __future__ import annotations

import pytest

from pairs import FakeClock
from ssh_proto.errors import DisconnectReason, LimitExceeded
from ssh_proto.limits import Admission, ListenerProfile, Outcome, Penalties


def addr(ip: str, port: int = 40000) -> tuple[str, int]:
    return (ip, port)


def admission(clock: FakeClock | None = None, *, drop: float = 1.0, **profile) -> Admission:
    """``drop``: what the early-drop coin says (1.0: never drop, 0.0: always)."""
    return Admission(ListenerProfile(**profile), clock=clock or FakeClock(), rng=lambda: drop)


# ---- sources (L11) -------------------------------------------------------------------------------

def test_L11_sources_are_netblocks_ipv4_32_and_ipv6_64():
    a = admission()
    assert a.source_key(addr("192.0.2.7")) == "192.0.2.7/32"
    assert a.source_key(addr("2001:db8:1:2:aaaa::1")) == a.source_key(addr("2001:db8:1:2:bbbb::2")) == "2001:db8:1:2::/64"
    assert a.source_key(addr("::ffff:192.0.2.7")) == "192.0.2.7/32"   # IPv4-mapped is IPv4
    assert a.source_key("/run/sock") is None and a.source_key(None) is None


def test_L11_netblock_is_configurable():
    a = admission(netblock=(24, 48))
    assert a.source_key(addr("192.0.2.7")) == a.source_key(addr("192.0.2.200")) == "192.0.2.0/24"


def test_L11_a_non_ip_peer_is_counted_only_in_the_totals():
    a = admission(max_startups=(1, 100, 1))
    a.admit(None)
    with pytest.raises(LimitExceeded):
        a.admit(None)


# ---- startups (L8) -------------------------------------------------------------------------------

def test_L8_per_source_max_startups():
    a = admission(per_source_max_startups=2)
    a.admit(addr("192.0.2.1"))
    a.admit(addr("192.0.2.1"))
    with pytest.raises(LimitExceeded) as info:
        a.admit(addr("192.0.2.1"))
    assert "from your address (limit 2)" in info.value.description
    a.admit(addr("192.0.2.2"))                       # another source is not affected


def test_L8_a_startup_stops_counting_once_authenticated_or_ended():
    a = admission(per_source_max_startups=1)
    first = a.admit(addr("192.0.2.1"))
    first.authenticated("alice")
    second = a.admit(addr("192.0.2.1"))
    second.finish(Outcome.NOAUTH)
    a.admit(addr("192.0.2.1"))
    assert a.startups == 1 and a.authenticated == 1


def test_L8_a_sources_first_startup_is_never_dropped_at_random():
    a = admission(max_startups=(2, 100, 50), drop=0.0)   # past start, every coin says drop
    for n in range(10):
        a.admit(addr(f"192.0.2.{n}"))                 # ten sources, one each: all in
    with pytest.raises(LimitExceeded):
        a.admit(addr("192.0.2.1"))                    # a second from a source: dropped


def test_L8_early_drop_follows_maxstartups_between_start_and_full():
    a = admission(max_startups=(10, 30, 100), drop=0.29)  # 29 < 30: dropped at start
    for _ in range(10):
        a.admit(addr("192.0.2.1"))
    with pytest.raises(LimitExceeded):
        a.admit(addr("192.0.2.1"))
    b = admission(max_startups=(10, 30, 100), drop=0.31)  # 31 > 30: admitted at start
    for _ in range(11):
        b.admit(addr("192.0.2.1"))


def test_L8_when_full_a_quieter_source_evicts_the_busiest_sources_oldest_startup():
    a = admission(max_startups=(4, 100, 4))
    evicted = []
    flood = [a.admit(addr("192.0.2.66")) for _ in range(3)]
    for s in flood:
        s.on_evict = lambda s=s: evicted.append(s)
    other = a.admit(addr("192.0.2.77"))
    login = a.admit(addr("127.0.0.1"))                # full: the flood's oldest makes room
    assert evicted == [flood[0]] and flood[0].evicted and not login.evicted
    assert a.startups == 4
    with pytest.raises(LimitExceeded):                # the busiest source itself is refused
        a.admit(addr("192.0.2.66"))
    a.admit(addr("192.0.2.88"))                       # a newcomer evicts again (66 holds 2)
    assert evicted == [flood[0], flood[1]] and not other.evicted


def test_L8_when_full_the_startup_quiet_longest_is_evicted_not_a_login_in_progress():
    clock = FakeClock()
    a = admission(clock, max_startups=(3, 100, 3))
    idle = a.admit(addr("192.0.2.1"))
    clock.advance(1)
    login = a.admit(addr("127.0.0.1"))
    clock.advance(1)
    later = a.admit(addr("192.0.2.2"))
    clock.advance(1)
    login.seen()                                      # the login is talking
    a.admit(addr("192.0.2.3"))
    assert idle.evicted and not login.evicted and not later.evicted
    a.admit(addr("192.0.2.4"))
    assert later.evicted and not login.evicted


def test_L8_when_full_a_source_as_busy_as_any_other_is_refused():
    a = admission(max_startups=(3, 100, 3))
    held = [a.admit(addr(f"192.0.2.{n}")) for n in range(3)]
    with pytest.raises(LimitExceeded) as info:
        a.admit(addr("192.0.2.1"))                    # holds one, as every other source
    assert "try again later" in info.value.description
    a.admit(addr("192.0.2.9"))                        # holds none: the oldest makes room
    assert [s.evicted for s in held] == [True, False, False]


def test_L8_an_evicted_startup_finishing_later_is_not_released_twice():
    a = admission(max_startups=(2, 100, 2))
    s1, _ = a.admit(addr("192.0.2.1")), a.admit(addr("192.0.2.1"))
    a.admit(addr("192.0.2.2"))
    assert s1.evicted and a.startups == 2
    s1.finish(Outcome.NOAUTH)
    assert a.startups == 2


# ---- rate of new connections per source (L10) ------------------------------------------------------

def test_L10_per_source_rate_is_a_token_bucket():
    clock = FakeClock()
    a = admission(clock, per_source_rate=(2.0, 3))
    for _ in range(3):
        a.admit(addr("192.0.2.1")).finish(Outcome.AUTHENTICATED)
    with pytest.raises(LimitExceeded) as info:
        a.admit(addr("192.0.2.1"))
    assert "new connections from your address (limit 2/s)" in info.value.description
    a.admit(addr("192.0.2.2"))                         # its own bucket
    clock.advance(0.5)                                 # one token back
    a.admit(addr("192.0.2.1"))
    with pytest.raises(LimitExceeded):
        a.admit(addr("192.0.2.1"))


# ---- penalties (L9) ------------------------------------------------------------------------------

def test_L9_penalties_accumulate_to_the_minimum_then_refuse():
    clock = FakeClock()
    a = admission(clock)                               # OpenSSH's defaults: authfail 5 s, min 15 s
    for _ in range(2):
        a.admit(addr("192.0.2.1")).finish(Outcome.AUTHFAIL)
    a.admit(addr("192.0.2.1")).finish(Outcome.AUTHFAIL)  # 15 s: reached
    assert a.penalised(addr("192.0.2.1"))
    with pytest.raises(LimitExceeded) as info:
        a.admit(addr("192.0.2.1"))
    assert info.value.reason == DisconnectReason.HOST_NOT_ALLOWED_TO_CONNECT
    a.admit(addr("192.0.2.2"))                          # others are not
    clock.advance(15.1)
    a.admit(addr("192.0.2.1"))                          # served its time


def test_L9_penalties_decay_with_time():
    clock = FakeClock()
    a = admission(clock)
    for _ in range(3):
        a.admit(addr("192.0.2.1")).finish(Outcome.AUTHFAIL)
        clock.advance(3.0)                             # 5 s each, 3 s apart: never 15 s at once
    assert not a.penalised(addr("192.0.2.1"))


def test_L9_each_outcome_has_its_penalty():
    clock = FakeClock()
    a = admission(clock, penalties=Penalties(minimum=10.0))
    for outcome, seconds in ((Outcome.CRASH, 90), (Outcome.GRACE_EXCEEDED, 10), (Outcome.NOAUTH, 1),
                             (Outcome.AUTHFAIL, 5), (Outcome.AUTHENTICATED, 0), (Outcome.NOT_COUNTED, 0)):
        b = admission(FakeClock(), penalties=Penalties(minimum=1.0, noauth=1.0))
        b.admit(addr("192.0.2.1")).finish(outcome)
        assert b.penalised(addr("192.0.2.1")) == (seconds > 0), outcome
    a.admit(addr("192.0.2.1")).finish(Outcome.CRASH)    # 90 s >= 10: at once
    clock.advance(89)
    assert a.penalised(addr("192.0.2.1"))
    clock.advance(2)
    assert not a.penalised(addr("192.0.2.1"))


def test_L9_a_penalty_is_capped_at_the_maximum():
    clock = FakeClock()
    a = admission(clock)
    for _ in range(20):
        a.admit(addr("192.0.2.1")).finish(Outcome.CRASH) if not a.penalised(addr("192.0.2.1")) else None
        clock.advance(0)
    clock.advance(600.1)
    assert not a.penalised(addr("192.0.2.1"))


def test_L9_an_authenticated_connection_is_never_penalised():
    a = admission()
    for _ in range(10):
        s = a.admit(addr("192.0.2.1"))
        s.authenticated("alice")
        s.finish(Outcome.AUTHFAIL)
    assert not a.penalised(addr("192.0.2.1"))


def test_L9_penalties_off():
    a = admission(penalties=None)
    for _ in range(10):
        a.admit(addr("192.0.2.1")).finish(Outcome.CRASH)
    assert not a.penalised(addr("192.0.2.1"))


def test_L11_exempt_networks_are_never_penalised_nor_capped_per_source():
    a = admission(exempt=("10.0.0.0/8",), per_source_max_startups=1)
    for _ in range(5):
        a.admit(addr("10.1.2.3")).finish(Outcome.CRASH)
        a.admit(addr("10.1.2.3"))
    assert not a.penalised(addr("10.1.2.3"))


def test_L11_the_source_table_is_bounded_and_forgets_the_least_recent():
    a = admission(max_sources=200, max_startups=(10, 30, 100))
    a.admit(addr("192.0.2.1")).finish(Outcome.CRASH)    # penalised ...
    assert a.penalised(addr("192.0.2.1"))
    for n in range(300):
        a.admit(addr(f"198.51.{n // 250}.{n % 250}")).finish(Outcome.AUTHENTICATED)
    assert len(a._sources) == 200
    assert not a.penalised(addr("192.0.2.1"))           # ... and forgotten, as OpenSSH's permissive overflow


# ---- authenticated connections (L2) --------------------------------------------------------------

def test_L2_authenticated_connections_per_user():
    a = admission(max_authenticated_per_user=2)
    logins = [a.admit(addr("192.0.2.1")) for _ in range(3)]
    logins[0].authenticated("alice")
    logins[1].authenticated("alice")
    with pytest.raises(LimitExceeded) as info:
        logins[2].authenticated("alice")
    assert info.value.description == "too many connections for user alice (limit 2)"
    assert info.value.reason == DisconnectReason.TOO_MANY_CONNECTIONS
    a.admit(addr("192.0.2.1")).authenticated("bob")
    logins[0].finish(Outcome.AUTHENTICATED)
    a.admit(addr("192.0.2.1")).authenticated("alice")   # a slot came free


def test_L2_authenticated_connections_in_total():
    a = admission(max_authenticated=2)
    a.admit(addr("192.0.2.1")).authenticated("alice")
    a.admit(addr("192.0.2.2")).authenticated("bob")
    refused = a.admit(addr("192.0.2.3"))
    with pytest.raises(LimitExceeded) as info:
        refused.authenticated("carol")
    assert "too many connections to this server (limit 2)" in info.value.description
    refused.finish(Outcome.NOT_COUNTED)
    assert a.authenticated == 2 and a.startups == 0 and not a.penalised(addr("192.0.2.3"))


def test_profile_validation():
    with pytest.raises(ValueError):
        ListenerProfile(max_startups=(10, 30, 5))
    with pytest.raises(ValueError):
        ListenerProfile(netblock=(33, 64))
    with pytest.raises(ValueError):
        ListenerProfile(max_sources=50)
