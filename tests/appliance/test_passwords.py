"""Password policy and scrypt hashing (appliance/auth/passwords.py, docs/security.md A1-A3).

Rules: 12..128 characters (Teleport / PCI DSS 8.3.6); scrypt n=2**17 r=8 p=1 (OWASP, 128 MiB)
with a per-password salt, parameters recorded in the string; constant-time comparison;
hashing off the event loop under the hasher's own limiter; one check costs the current
parameters whatever it is given (unknown user, older hash: T13).

The tests that are not about the cost use a cheaper hasher (n=2**10); the production
parameters, their memory bound and one real hash at them are checked by name below."""
from __future__ import annotations

import threading
import time

import pytest
import trio

from _auth_helpers import ScryptPeak
from appliance.auth import passwords
from appliance.auth.passwords import (DEFAULT_HASHER, HASH_CONCURRENCY, MAX_MEMORY, PasswordHasher,
                                      PasswordPolicyError, Verdict, check_policy, hash_password,
                                      verify_password, verify_password_sync)

PW = "correct horse battery staple"
CHEAP = PasswordHasher(n=2**10)


@pytest.fixture(scope="module")
def encoded() -> str:
    return CHEAP.hash_sync(PW)


def scrypt_calls(monkeypatch, *, run: bool = True) -> list[tuple]:
    """Record every scrypt run (password, salt, n, r, p, length); ``run=False`` skips the work."""
    calls: list[tuple] = []
    real = passwords._scrypt

    def spy(*args):
        calls.append(args)
        return real(*args) if run else b"\0" * args[-1]
    monkeypatch.setattr(passwords, "_scrypt", spy)
    return calls


def test_production_default_is_scrypt_n2_17_r8_p1_128_mib_and_hashes_for_real():
    assert (DEFAULT_HASHER.n, DEFAULT_HASHER.r, DEFAULT_HASHER.p) == (2**17, 8, 1)
    assert DEFAULT_HASHER.memory == 128 * 1024 * 1024 <= MAX_MEMORY
    stored = passwords.hash_password_sync(PW)  # one real hash at the production cost
    prefix, n, r, p, salt, digest = stored.split("$")
    assert (prefix, n, r, p) == ("scrypt", "131072", "8", "1")
    assert verify_password_sync(PW, stored) and not verify_password_sync(PW + "!", stored)


async def test_production_hashing_memory_is_bounded_by_its_limiter():
    """A2: at most HASH_CONCURRENCY hashes at once, so at most 256 MiB of scrypt memory
    (Trio's default thread limiter would allow 40: 5 GiB)."""
    assert DEFAULT_HASHER.limiter.total_tokens == HASH_CONCURRENCY == 2
    assert DEFAULT_HASHER.limiter is not trio.to_thread.current_default_thread_limiter()
    assert HASH_CONCURRENCY * DEFAULT_HASHER.memory <= 256 * 1024 * 1024


def test_hash_verifies_the_right_password_only(encoded):
    assert verify_password_sync(PW, encoded)
    assert not verify_password_sync(PW + "!", encoded)
    assert not verify_password_sync("", encoded)


def test_hash_records_its_scrypt_parameters_salt_and_digest(encoded):
    prefix, n, r, p, salt, digest = encoded.split("$")
    assert (prefix, n, r, p) == ("scrypt", "1024", "8", "1")
    assert len(salt) >= 21 and len(digest) >= 42  # 16-byte salt, 32-byte hash, base64


def test_every_password_gets_its_own_salt(encoded):
    other = CHEAP.hash_sync(PW)
    assert other != encoded and other.split("$")[4] != encoded.split("$")[4]
    assert verify_password_sync(PW, other)


def test_password_is_nfc_normalised():
    composed, decomposed = "caf\u00e9-password-1", "cafe\u0301-password-1"
    assert verify_password_sync(decomposed, CHEAP.hash_sync(composed))


@pytest.mark.parametrize("password", ["a" * 12, "a" * 128, "é" * 12, "twelve chars"])
def test_policy_accepts_12_to_128_characters(password):
    check_policy(password)


@pytest.mark.parametrize("password, why", [
    ("a" * 11, "at least 12"), ("", "at least 12"), ("a" * 129, "at most 128"),
    ("twelve chars\n", "control"), ("twelve\x00chars", "control"), (b"x" * 12, "text"),
])
def test_policy_refuses_short_long_or_control_characters(password, why):
    with pytest.raises(PasswordPolicyError, match=why) as info:
        check_policy(password)
    if isinstance(password, str) and password:
        assert password not in str(info.value)  # never echo the password


@pytest.mark.parametrize("stored", [
    "", "bcrypt$2b$...", "scrypt$16384$8$1$c2FsdA", "scrypt$16385$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
    "scrypt$1048576$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",  # 1 GiB of memory: refused, not run
    "scrypt$524288$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",   # 512 MiB: over MAX_MEMORY
    "scrypt$16384$8$1$!!!$aGFzaGhhc2hoYXNoaGFzaA", "scrypt$x$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
])
def test_verify_refuses_malformed_or_unsafe_stored_strings(stored):
    started = time.monotonic()
    assert not verify_password_sync(PW, stored)
    assert time.monotonic() - started < 1.0


def test_verify_refuses_unencodable_password(encoded):
    assert not verify_password_sync("\ud800" * 12, encoded)
    assert not verify_password_sync(None, encoded)  # type: ignore[arg-type]


def test_verify_compares_in_constant_time(encoded, monkeypatch):
    calls = []
    real = passwords.hmac.compare_digest

    def spy(a, b):
        calls.append(len(a))
        return real(a, b)

    monkeypatch.setattr(passwords.hmac, "compare_digest", spy)
    assert not verify_password_sync("wrong password!", encoded)
    assert calls == [32]


async def test_async_hash_and_verify_run_in_a_worker_thread(monkeypatch):
    threads = []
    real = passwords._scrypt

    def spy(*args):
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(passwords, "_scrypt", spy)
    stored = await CHEAP.hash(PW)
    assert await CHEAP.check(PW, stored) == Verdict(True)
    assert threads and all(t is not threading.main_thread() for t in threads)


async def test_module_functions_use_the_default_hasher(monkeypatch):
    calls = scrypt_calls(monkeypatch, run=False)  # the cost is checked, not paid
    await verify_password(PW, await hash_password(PW))
    assert [c[2:5] for c in calls] == [(2**17, 8, 1)] * 2


async def test_check_without_a_hash_runs_scrypt_at_the_current_cost_and_fails(monkeypatch):
    calls = scrypt_calls(monkeypatch)
    assert await CHEAP.check(PW, None) == Verdict(False)
    assert await CHEAP.check(PW, "not a hash") == Verdict(False)
    assert [c[2:] for c in calls] == [(1024, 8, 1, 32)] * 2


def test_default_dummy_hash_has_the_production_parameters_and_matches_nothing(monkeypatch):
    calls = scrypt_calls(monkeypatch, run=False)
    assert DEFAULT_HASHER.dummy.startswith("scrypt$131072$8$1$")
    assert DEFAULT_HASHER.check_sync(PW, None) == Verdict(False)
    assert [c[2:] for c in calls] == [(2**17, 8, 1, 32)]


@pytest.mark.parametrize("stored_n", [2**10, 2**11, 2**13])
def test_check_of_a_cheaper_hash_tops_up_to_the_current_cost(monkeypatch, stored_n):
    """A3: a user whose hash predates the current parameters is answered no sooner than
    anyone else: the scrypt work of one check sums to the current cost, right or wrong."""
    current = PasswordHasher(n=2**14)
    old = PasswordHasher(n=stored_n).hash_sync(PW)
    calls = scrypt_calls(monkeypatch)
    assert current.check_sync(PW, old) == Verdict(True, rehash=True)
    assert current.check_sync("wrong password!", old) == Verdict(False)
    for wrong in (False, True):
        runs = calls[:len(calls) // 2] if not wrong else calls[len(calls) // 2:]
        assert sum(n * r * p for _, _, n, r, p, _ in runs) == 2**14 * 8
    calls.clear()
    assert current.check_sync(PW, current.hash_sync(PW)) == Verdict(True)  # no rehash at the current cost
    assert [c[2] for c in calls] == [2**14, 2**14]


def test_a_stronger_stored_hash_is_kept_and_verified_at_its_own_cost():
    strong = PasswordHasher(n=2**11).hash_sync(PW)
    assert CHEAP.check_sync(PW, strong) == Verdict(True, rehash=False)


async def test_hashes_run_in_the_hashers_slots_never_more_at_once(monkeypatch):
    hasher = PasswordHasher(n=2**10, concurrency=2)
    spy = ScryptPeak(monkeypatch, passwords)  # two run together (the slots allow it), no third
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(hasher.check, PW, None)
    assert spy.peak == 2


@pytest.mark.parametrize("n, r, p", [(512, 8, 1), (3000, 8, 1), (2**14, 0, 1), (2**20, 8, 1),
                                     (2**19, 8, 1), (2**18, 8, 2)])
def test_hasher_refuses_weak_or_unsafe_parameters(n, r, p):
    with pytest.raises(ValueError):
        passwords.PasswordHasher(n=n, r=r, p=p)


def test_hasher_accepts_up_to_max_memory():
    assert PasswordHasher(n=2**18).memory == MAX_MEMORY


def test_hash_from_another_cost_still_verifies():
    cheap = passwords.PasswordHasher(n=2**10)
    stored = cheap.hash_sync(PW)
    assert stored.startswith("scrypt$1024$8$1$") and verify_password_sync(PW, stored)
