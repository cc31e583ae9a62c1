"""Time-based one-time passwords (TOTP, RFC 6238 over HOTP, RFC 4226) for user logins.

Authenticator-app defaults: 6 digits, HMAC-SHA-1, 30-second steps (RFC 6238 §4,
Google Authenticator's ``otpauth://`` format). Codes are produced with ``pyotp``;
this module adds what a login needs:

* :func:`verify` accepts the current step and one step either side (clock skew,
  RFC 6238 §5.2), compares every candidate with ``hmac.compare_digest`` (no early
  exit) and returns the **time-step counter** that matched. The auth service stores
  the last counter used per user and refuses any code whose counter is not greater
  (Teleport's "previously used totp token"), so a code works once.
* The time is always passed in (``now``): callers inject their clock and tests fake it.

>>> secret = new_secret()
>>> verify(secret, code_at(secret, 1_700_000_000), now=1_700_000_000) == 1_700_000_000 // 30
True
"""
from __future__ import annotations

import base64
import binascii
import hmac
import re

import pyotp

__all__ = ["DIGITS", "ISSUER", "PERIOD", "WINDOW", "code_at", "counter_at", "new_secret",
           "provisioning_uri", "verify"]

DIGITS = 6
PERIOD = 30
WINDOW = 1  # steps accepted on each side of the current one
ISSUER = "Jumpgate"
SECRET_BYTES = 20  # 160 bits, RFC 4226 §4 R6 recommends it for HMAC-SHA-1

_CODE = re.compile(r"[0-9]{%d}" % DIGITS)
_BASE32 = re.compile(r"[A-Z2-7]{16,128}")


def new_secret() -> str:
    """A fresh base32 secret (no padding), as authenticator apps expect."""
    return pyotp.random_base32(length=32)


def _check_secret(secret: str) -> str:
    if not isinstance(secret, str) or not _BASE32.fullmatch(secret):
        raise ValueError("TOTP secret must be unpadded base32")
    try:
        base64.b32decode(secret + "=" * (-len(secret) % 8))
    except binascii.Error:
        raise ValueError("TOTP secret must be unpadded base32") from None
    return secret


def counter_at(now: float) -> int:
    """The RFC 6238 time step ``T`` at epoch time ``now``."""
    return int(now // PERIOD)


def _code_for_counter(secret: str, counter: int) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD).generate_otp(counter)


def code_at(secret: str, now: float) -> str:
    """The code an authenticator shows at ``now`` (tests and the CLI's self-checks use it)."""
    return _code_for_counter(_check_secret(secret), counter_at(now))


def _normalise(code: object) -> str | None:
    """Digits only; spaces are allowed as authenticators group "123 456"."""
    if not isinstance(code, str) or len(code) > 16:
        return None
    code = code.replace(" ", "")
    return code if _CODE.fullmatch(code) else None


def verify(secret: str, code: object, *, now: float, window: int = WINDOW) -> int | None:
    """The matched time-step counter, or None when ``code`` is not valid around ``now``.

    Every candidate step is compared (constant time, no early exit); if more than one
    matches, the latest step wins so the replay guard moves as far as possible.
    """
    _check_secret(secret)
    digits = _normalise(code)
    candidate = (digits or "0" * DIGITS).encode("ascii")
    current = counter_at(now)
    matched: int | None = None
    for counter in range(max(0, current - window), current + window + 1):
        expected = _code_for_counter(secret, counter).encode("ascii")
        if hmac.compare_digest(expected, candidate) and digits is not None:
            matched = counter
    return matched


def provisioning_uri(secret: str, user: str, cluster: str) -> str:
    """``otpauth://totp/Jumpgate:user%40cluster?secret=...&issuer=Jumpgate`` for QR codes."""
    _check_secret(secret)
    account = f"{user}@{cluster}"
    uri = pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD).provisioning_uri(
        name=account, issuer_name=ISSUER)
    return uri
