"""Password policy and password hashing (scrypt, RFC 7914) for Jumpgate users.

* Policy (Teleport's, from PCI DSS 8.3.6): 12 to 128 characters after Unicode NFC
  normalisation, no control characters (a password is typed on one line).
* Storage: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` with a fresh 16-byte salt per
  password and n=2**14, r=8, p=1 (RFC 7914 §2's interactive-login figures; ~16 MiB and
  tens of milliseconds). The parameters live in the string so they can be raised later
  without invalidating stored hashes.
* Verification recomputes the hash with the stored parameters (bounded, so a corrupt
  row cannot make us allocate gigabytes) and compares with ``hmac.compare_digest``.
* Hashing is CPU-bound: the async functions run it in a Trio worker thread.
  :func:`verify_dummy` spends the same time for an unknown user (SECURITY-CHECKLIST T13).

>>> encoded = hash_password_sync("correct horse battery")
>>> verify_password_sync("correct horse battery", encoded), verify_password_sync("x" * 12, encoded)
(True, False)
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import trio

__all__ = [
    "DEFAULT_HASHER",
    "MAX_LENGTH",
    "MIN_LENGTH",
    "PasswordHasher",
    "PasswordPolicyError",
    "check_policy",
    "hash_password",
    "hash_password_sync",
    "verify_dummy",
    "verify_password",
    "verify_password_sync",
    "warm_up",
]

MIN_LENGTH = 12
MAX_LENGTH = 128
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_LEN = 16
HASH_LEN = 32
_PREFIX = "scrypt"
# Upper bounds accepted from a stored string: 2**20 * 8 * 128 B = 1 GiB is already too
# much for a login; keep n*r*p within 64 MiB of scrypt memory.
_MAX_MEMORY = 64 * 1024 * 1024


class PasswordPolicyError(ValueError):
    """The password breaks the policy; the message says how (never the password)."""


def _normalise(password: str) -> str:
    return unicodedata.normalize("NFC", password)


def check_policy(password: str) -> None:
    """Raise :class:`PasswordPolicyError` unless ``password`` is acceptable."""
    if not isinstance(password, str):
        raise PasswordPolicyError("the password must be text")
    text = _normalise(password)
    if len(text) < MIN_LENGTH:
        raise PasswordPolicyError(f"the password must have at least {MIN_LENGTH} characters")
    if len(text) > MAX_LENGTH:
        raise PasswordPolicyError(f"the password must have at most {MAX_LENGTH} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise PasswordPolicyError("the password must not contain control characters")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(_normalise(password).encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=_MAX_MEMORY + 1024 * 1024, dklen=length)


@dataclass(frozen=True, slots=True)
class PasswordHasher:
    """scrypt with fixed cost parameters. :data:`DEFAULT_HASHER` is the product's;
    the auth service takes another only so that its own tests can run at a lower cost
    (verification always uses the parameters stored in the hash)."""

    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def __post_init__(self) -> None:
        if self.n < 1024 or self.n & (self.n - 1) or not 1 <= self.r <= 32 \
                or not 1 <= self.p <= 16 or 128 * self.n * self.r * self.p > _MAX_MEMORY:
            raise ValueError("scrypt needs n a power of two >= 1024, r 1..32, p 1..16, <= 64 MiB")

    def hash_sync(self, password: str) -> str:
        """Hash a password that passed :func:`check_policy` (blocking)."""
        salt = os.urandom(SALT_LEN)
        digest = _scrypt(password, salt, self.n, self.r, self.p, HASH_LEN)
        return f"{_PREFIX}${self.n}${self.r}${self.p}${_b64(salt)}${_b64(digest)}"

    async def hash(self, password: str) -> str:
        """:meth:`hash_sync` in a worker thread."""
        return await trio.to_thread.run_sync(self.hash_sync, password)

    async def verify(self, password: str, encoded: str) -> bool:
        """:func:`verify_password_sync` in a worker thread."""
        return await trio.to_thread.run_sync(verify_password_sync, password, encoded)

    async def verify_dummy(self, password: str) -> bool:
        """Spend the time of a real verification and return False (unknown user, T13)."""
        def work() -> bool:
            verify_password_sync(password, _dummy_hash(self))
            return False
        return await trio.to_thread.run_sync(work)

    async def warm_up(self) -> None:
        """Compute the dummy hash now, so the first unknown-user login is not slower."""
        await trio.to_thread.run_sync(_dummy_hash, self)


DEFAULT_HASHER = PasswordHasher()


def hash_password_sync(password: str) -> str:
    """Hash with :data:`DEFAULT_HASHER` (blocking; prefer :func:`hash_password`)."""
    return DEFAULT_HASHER.hash_sync(password)


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    """The stored parameters, or None when the string is not one of ours or is unsafe."""
    parts = encoded.split("$") if isinstance(encoded, str) else []
    if len(parts) != 6 or parts[0] != _PREFIX:
        return None
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        return None
    if n < 2 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        return None
    if 128 * n * r * p > _MAX_MEMORY or not 8 <= len(salt) <= 64 or not 16 <= len(digest) <= 64:
        return None
    return n, r, p, salt, digest


def verify_password_sync(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded``; False for any malformed input."""
    parsed = _parse(encoded)
    if parsed is None or not isinstance(password, str) or len(password) > 4 * MAX_LENGTH:
        return False
    n, r, p, salt, digest = parsed
    try:
        candidate = _scrypt(password, salt, n, r, p, len(digest))
    except (ValueError, UnicodeEncodeError):  # e.g. lone surrogates from a hostile client
        return False
    return hmac.compare_digest(candidate, digest)


@lru_cache(maxsize=4)
def _dummy_hash(hasher: PasswordHasher) -> str:
    return hasher.hash_sync(base64.b64encode(os.urandom(18)).decode("ascii"))


async def hash_password(password: str) -> str:
    """:func:`hash_password_sync` in a worker thread."""
    return await DEFAULT_HASHER.hash(password)


async def verify_password(password: str, encoded: str) -> bool:
    """:func:`verify_password_sync` in a worker thread."""
    return await DEFAULT_HASHER.verify(password, encoded)


async def verify_dummy(password: str) -> bool:
    """Spend the time of a real verification and return False (unknown user, T13)."""
    return await DEFAULT_HASHER.verify_dummy(password)


async def warm_up() -> None:
    """Compute the default dummy hash now (see :meth:`PasswordHasher.warm_up`)."""
    await DEFAULT_HASHER.warm_up()
