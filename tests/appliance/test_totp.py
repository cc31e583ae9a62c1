"""TOTP (appliance/auth/totp.py): RFC 6238 codes (6 digits, SHA-1, 30 s), a ±1 step
window, constant-time comparison, the matched time-step counter for the replay guard,
and the otpauth URI (issuer "Jumpgate", account "user@cluster")."""
from __future__ import annotations

import base64
import urllib.parse

import pytest

from appliance.auth import totp

# RFC 6238 Appendix B, SHA-1 seed "12345678901234567890"; 8-digit codes truncated to 6.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC_VECTORS = [(59, "287082"), (1111111109, "081804"), (1111111111, "050471"),
               (1234567890, "005924"), (2000000000, "279037"), (20000000000, "353130")]
NOW = 1_700_000_010.0


@pytest.mark.parametrize("t, code", RFC_VECTORS)
def test_codes_match_rfc6238_sha1_vectors(t, code):
    assert totp.code_at(RFC_SECRET, t) == code


def test_new_secret_is_160_bit_unpadded_base32():
    secret = totp.new_secret()
    assert len(secret) == 32 and "=" not in secret
    assert len(base64.b32decode(secret)) == 20
    assert secret != totp.new_secret()


def test_verify_returns_the_matched_time_step_counter():
    secret = totp.new_secret()
    assert totp.verify(secret, totp.code_at(secret, NOW), now=NOW) == int(NOW // 30)


def test_verify_window_is_one_step_each_side():
    secret = totp.new_secret()
    step = int(NOW // 30)
    assert totp.verify(secret, totp.code_at(secret, NOW - 30), now=NOW) == step - 1
    assert totp.verify(secret, totp.code_at(secret, NOW + 30), now=NOW) == step + 1
    assert totp.verify(secret, totp.code_at(secret, NOW - 60), now=NOW) is None
    assert totp.verify(secret, totp.code_at(secret, NOW + 60), now=NOW) is None


def test_verify_accepts_authenticator_spacing():
    secret = totp.new_secret()
    code = totp.code_at(secret, NOW)
    assert totp.verify(secret, f"{code[:3]} {code[3:]}", now=NOW) == int(NOW // 30)


@pytest.mark.parametrize("bad", [None, b"123456", 123456, "", "12345", "1234567", "12345a", "١٢٣٤٥٦", "9" * 100])
def test_verify_refuses_malformed_codes(bad):
    assert totp.verify(RFC_SECRET, bad, now=59) is None


def test_verify_compares_every_candidate_in_constant_time(monkeypatch):
    calls = []
    real = totp.hmac.compare_digest
    monkeypatch.setattr(totp.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    secret = totp.new_secret()
    totp.verify(secret, totp.code_at(secret, NOW - 30), now=NOW)  # matches the first candidate
    assert len(calls) == 3  # no early exit


def test_verify_with_injected_clock_far_from_real_time():
    assert totp.verify(RFC_SECRET, "279037", now=2000000000) == 2000000000 // 30


@pytest.mark.parametrize("secret", ["", "not base32!", "abcdefghabcdefgh", "A" * 8, 12])
def test_malformed_secret_refused(secret):
    with pytest.raises(ValueError):
        totp.verify(secret, "123456", now=NOW)


def test_provisioning_uri_names_issuer_jumpgate_and_user_at_cluster():
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, "alice", "prod")
    parsed = urllib.parse.urlparse(uri)
    assert (parsed.scheme, parsed.netloc) == ("otpauth", "totp")
    assert urllib.parse.unquote(parsed.path) == "/Jumpgate:alice@prod"
    query = urllib.parse.parse_qs(parsed.query)
    assert query["secret"] == [secret] and query["issuer"] == ["Jumpgate"]
    assert query.get("digits", ["6"]) == ["6"] and query.get("period", ["30"]) == ["30"]
    assert query.get("algorithm", ["SHA1"]) == ["SHA1"]
