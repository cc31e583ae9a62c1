"""Password policy and scrypt hashing (appliance/auth/passwords.py).

Rules: 12..128 characters (Teleport / PCI DSS 8.3.6); scrypt n=2**14 r=8 p=1 with a
per-password salt, parameters recorded in the string; constant-time comparison;
hashing off the event loop; a dummy verification for unknown users (T13)."""
from __future__ import annotations

import time

import pytest

from appliance.auth import passwords
from appliance.auth.passwords import (PasswordPolicyError, check_policy, hash_password, hash_password_sync,
                                      verify_dummy, verify_password, verify_password_sync)

PW = "correct horse battery staple"


@pytest.fixture(scope="module")
def encoded() -> str:
    return hash_password_sync(PW)


def test_hash_verifies_the_right_password_only(encoded):
    assert verify_password_sync(PW, encoded)
    assert not verify_password_sync(PW + "!", encoded)
    assert not verify_password_sync("", encoded)


def test_hash_records_scrypt_parameters_n16384_r8_p1(encoded):
    prefix, n, r, p, salt, digest = encoded.split("$")
    assert (prefix, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(salt) >= 21 and len(digest) >= 42  # 16-byte salt, 32-byte hash, base64


def test_every_password_gets_its_own_salt(encoded):
    other = hash_password_sync(PW)
    assert other != encoded and other.split("$")[4] != encoded.split("$")[4]
    assert verify_password_sync(PW, other)


def test_password_is_nfc_normalised():
    composed, decomposed = "caf\u00e9-password-1", "cafe\u0301-password-1"
    assert verify_password_sync(decomposed, hash_password_sync(composed))


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
    import threading
    threads = []
    real = passwords._scrypt

    def spy(*args):
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(passwords, "_scrypt", spy)
    stored = await hash_password(PW)
    assert await verify_password(PW, stored)
    assert threads and all(t is not threading.main_thread() for t in threads)


async def test_dummy_verification_runs_scrypt_and_fails(monkeypatch):
    await passwords.warm_up()
    calls = []
    real = passwords._scrypt
    monkeypatch.setattr(passwords, "_scrypt", lambda *a: calls.append(a) or real(*a))
    assert await verify_dummy(PW) is False
    assert len(calls) == 1 and calls[0][2:] == (16384, 8, 1, 32)


@pytest.mark.parametrize("n, r, p", [(512, 8, 1), (3000, 8, 1), (2**14, 0, 1), (2**20, 8, 1)])
def test_hasher_refuses_weak_or_unsafe_parameters(n, r, p):
    with pytest.raises(ValueError):
        passwords.PasswordHasher(n=n, r=r, p=p)


def test_hash_from_another_cost_still_verifies():
    cheap = passwords.PasswordHasher(n=2**10)
    stored = cheap.hash_sync(PW)
    assert stored.startswith("scrypt$1024$8$1$") and verify_password_sync(PW, stored)
