"""Password policy and password hashing (scrypt, RFC 7914) for Jumpgate users.

* Policy (Teleport's, from PCI DSS 8.3.6): 12 to 128 characters after Unicode NFC
  normalisation, no control characters (a password is typed on one line).
* Storage: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` with a fresh 16-byte salt per
  password and n=2**17, r=8, p=1 (OWASP's password storage figures: 128 MiB and about
  0.4 s per hash here; docs/security.md A1). The parameters live in the string, so they
  can be raised again without invalidating stored hashes: a hash made with weaker ones
  verifies with them and is replaced after the next successful login (A4).
* Verification recomputes the hash with the stored parameters, bounded by
  :data:`MAX_MEMORY` so a corrupt row cannot make us allocate gigabytes, and compares with
  ``hmac.compare_digest``.
* Every hash runs in a worker thread under the hasher's own ``trio.CapacityLimiter``
  (:data:`HASH_CONCURRENCY` at once: at most 256 MiB of scrypt memory with the defaults).
  Trio's default thread limiter would let 40 run at once, 5 GiB; the web service's rate limit
  is in front, this bound behind it (A2).
* :meth:`PasswordHasher.check` costs the same whatever it is given (docs/security.md T13
  and A3): ``None`` (an unknown or locked user) is checked against a dummy hash
  with the current parameters; a hash with cheaper parameters is verified with them and
  then topped up with scrypt work to the current cost, so its answer comes no sooner.

>>> hasher = PasswordHasher(n=2**10)
>>> encoded = hasher.hash_sync("correct horse battery")
>>> hasher.check_sync("correct horse battery", encoded), hasher.check_sync("x" * 12, None)
(Verdict(ok=True, rehash=False), Verdict(ok=False, rehash=False))
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio

__all__ = [
    "DEFAULT_HASHER",
    "HASH_CONCURRENCY",
    "HashSlot",
    "MAX_LENGTH",
    "MAX_MEMORY",
    "MIN_LENGTH",
    "PasswordHasher",
    "PasswordPolicyError",
    "Verdict",
    "check_policy",
    "hash_password",
    "hash_password_sync",
    "scrypt_memory",
    "verify_password",
    "verify_password_sync",
]

MIN_LENGTH = 12
MAX_LENGTH = 128
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
SALT_LEN = 16
HASH_LEN = 32
#: Hashes running at once per hasher (one process has one: :data:`DEFAULT_HASHER`).
HASH_CONCURRENCY = 2
_PREFIX = "scrypt"
#: The most scrypt memory one hash may use, ours or read from a stored string: twice the
#: default, room for one more raise of the parameters; 2**20 (1 GiB) is refused unrun.
MAX_MEMORY = 256 * 1024 * 1024


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


def scrypt_memory(n: int, r: int, p: int) -> int:
    """The bytes of memory scrypt's ROMix needs for these parameters (RFC 7914 §5: 128·r·N)."""
    return 128 * n * r * p


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # OpenSSL also counts the p blocks and two more of V: leave a MiB of slack above ROMix.
    return hashlib.scrypt(_normalise(password).encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=scrypt_memory(n, r, p) + 1024 * 1024, dklen=length)


def _safe_parameters(n: int, r: int, p: int) -> bool:
    return (n >= 2 and not n & (n - 1) and 1 <= r <= 32 and 1 <= p <= 16
            and scrypt_memory(n, r, p) <= MAX_MEMORY)


@dataclass(frozen=True, slots=True)
class _Stored:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @property
    def cost(self) -> int:
        return self.n * self.r * self.p


def _parse(encoded: str | None) -> _Stored | None:
    """The stored parameters, or None when the string is not one of ours or is unsafe."""
    parts = encoded.split("$") if isinstance(encoded, str) else []
    if len(parts) != 6 or parts[0] != _PREFIX:
        return None
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        return None
    if not _safe_parameters(n, r, p) or not 8 <= len(salt) <= 64 or not 16 <= len(digest) <= 64:
        return None
    return _Stored(n, r, p, salt, digest)


def _matches(password: object, stored: _Stored) -> bool:
    """Recompute and compare; a password we cannot hash costs the same and never matches."""
    usable = isinstance(password, str) and len(password) <= 4 * MAX_LENGTH
    try:
        candidate = _scrypt(password if usable else "", stored.salt, stored.n, stored.r,
                            stored.p, len(stored.digest))
    except (ValueError, UnicodeEncodeError):  # e.g. lone surrogates from a hostile client
        candidate, usable = b"", False
    return hmac.compare_digest(candidate, stored.digest) and usable


def _top_up_sizes(missing: int) -> list[int]:
    """Powers of two (each >= 2) summing to ``missing`` rounded up to even: the N values of
    the scrypt runs that top a cheaper verification up to the current cost."""
    missing += missing & 1
    return [1 << bit for bit in range(1, missing.bit_length()) if missing >> bit & 1]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :meth:`PasswordHasher.check` found: ``ok`` the password matches; ``rehash`` it
    matched a hash made with weaker parameters than the hasher's (replace it: A4)."""

    ok: bool
    rehash: bool = False


@dataclass(frozen=True, slots=True)
class PasswordHasher:
    """scrypt with fixed cost parameters and its own thread limiter. :data:`DEFAULT_HASHER`
    is the product's; the auth service takes another only so that tests which are not about
    the cost can run cheaper (verification always uses the parameters stored in the hash)."""

    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P
    concurrency: int = HASH_CONCURRENCY
    limiter: trio.CapacityLimiter = field(init=False, repr=False, compare=False)
    #: A hash no password matches, with these parameters: what unknown users are checked against.
    dummy: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n < 1024 or not _safe_parameters(self.n, self.r, self.p) or self.concurrency < 1:
            raise ValueError("scrypt needs n a power of two >= 1024, r 1..32, p 1..16, "
                             f"at most {MAX_MEMORY >> 20} MiB, and a concurrency >= 1")
        object.__setattr__(self, "limiter", trio.CapacityLimiter(self.concurrency))
        object.__setattr__(self, "dummy", self._encode(os.urandom(SALT_LEN), os.urandom(HASH_LEN)))

    @property
    def memory(self) -> int:
        """Bytes of scrypt memory one hash with these parameters needs."""
        return scrypt_memory(self.n, self.r, self.p)

    def _encode(self, salt: bytes, digest: bytes) -> str:
        return f"{_PREFIX}${self.n}${self.r}${self.p}${_b64(salt)}${_b64(digest)}"

    def hash_sync(self, password: str) -> str:
        """Hash a password that passed :func:`check_policy` (blocking)."""
        salt = os.urandom(SALT_LEN)
        return self._encode(salt, _scrypt(password, salt, self.n, self.r, self.p, HASH_LEN))

    def check_sync(self, password: object, encoded: str | None) -> Verdict:
        """Verify ``password`` against ``encoded`` (None or unreadable: against :attr:`dummy`)
        at no less than the cost of one hash with this hasher's parameters (blocking)."""
        stored = _parse(encoded)
        if stored is None:
            _matches(password, _parse(self.dummy))
            return Verdict(False)
        ok = _matches(password, stored)
        current = self.n * self.r * self.p
        if stored.cost < current:
            for n in _top_up_sizes(-(-(current - stored.cost) // (self.r * self.p))):
                _scrypt("", stored.salt, n, self.r, self.p, HASH_LEN)
        return Verdict(ok, rehash=ok and stored.cost < current)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[HashSlot]:
        """Wait for, then hold, one of the :attr:`limiter`'s tokens: a login takes its slot
        first and reserves its attempt in it, so that an attempt is never counted while it
        waits in the queue (docs/security.md A5)."""
        async with self.limiter:
            yield HashSlot(self)

    async def hash(self, password: str) -> str:
        """:meth:`hash_sync` in a worker thread, in a :meth:`slot`."""
        async with self.slot() as slot:
            return await slot.hash(password)

    async def check(self, password: object, encoded: str | None) -> Verdict:
        """:meth:`check_sync` in a worker thread, in a :meth:`slot`."""
        async with self.slot() as slot:
            return await slot.check(password, encoded)


@dataclass(frozen=True, slots=True)
class HashSlot:
    """A held slot of a :class:`PasswordHasher`: its work runs in a worker thread at once (the
    slot bounds it; Trio's own thread limiter is then never what waits)."""

    hasher: PasswordHasher

    async def hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(self.hasher.hash_sync, password)

    async def check(self, password: object, encoded: str | None) -> Verdict:
        return await trio.to_thread.run_sync(self.hasher.check_sync, password, encoded)


DEFAULT_HASHER = PasswordHasher()


def verify_password_sync(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded``; False for any malformed input. Unlike
    :meth:`PasswordHasher.check` its cost follows the stored parameters."""
    stored = _parse(encoded)
    return stored is not None and _matches(password, stored)


def hash_password_sync(password: str) -> str:
    """Hash with :data:`DEFAULT_HASHER` (blocking; prefer :func:`hash_password`)."""
    return DEFAULT_HASHER.hash_sync(password)


async def hash_password(password: str) -> str:
    """:meth:`DEFAULT_HASHER.hash <PasswordHasher.hash>`."""
    return await DEFAULT_HASHER.hash(password)


async def verify_password(password: str, encoded: str) -> bool:
    """:meth:`DEFAULT_HASHER.check <PasswordHasher.check>`'s ``ok``."""
    return (await DEFAULT_HASHER.check(password, encoded)).ok
