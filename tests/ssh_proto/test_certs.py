"""OpenSSH certificates: parsing (keys.py) and policy (certs.py), one test per rule.

Rule numbers are docs/security.md's: test_ruleN is CN. Certificates come from three sources: real
``ssh-keygen -s``, our :func:`sign_certificate`, and :func:`build_cert` below, which
writes blobs field by field so that malformed and hostile certificates can be made.
"""
from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import string
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssh_proto import certs, keys
from ssh_proto.certs import (
    DEFAULT_CA_SIGNATURE_ALGORITHMS,
    DEFAULT_USER_EXTENSIONS,
    CertPermissions,
    sign_certificate,
    validate_host_certificate,
    validate_user_certificate,
)
from ssh_proto.errors import CertificateError, KeyFormatError, ProtocolError
from ssh_proto.keys import CERT_TYPE_HOST, CERT_TYPE_USER, Certificate, PrivateKey, PublicKey
from ssh_proto.wire import Reader, Writer, encode_string

FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # module fixtures, read only
SSH_KEYGEN = shutil.which("ssh-keygen")
needs_keygen = pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen is not installed")

NOW = 1_750_000_000  # fixed clock for every validity check
HOUR = 3600
KEY_TYPES = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "ssh-rsa"]


def generate(key_type: str) -> PrivateKey:
    return PrivateKey.generate(key_type, bits=2048 if key_type == "ssh-rsa" else None)


@pytest.fixture(scope="module")
def kc_ca() -> dict[str, PrivateKey]:
    return {t: generate(t) for t in ("ssh-ed25519", "ecdsa-sha2-nistp384", "ssh-rsa")}


@pytest.fixture(scope="module")
def kc_user() -> dict[str, PrivateKey]:
    return {t: generate(t) for t in KEY_TYPES}


# ------------------------------------------------------------------------------ helpers


def _pairs(pairs: Sequence[tuple[str, bytes]]) -> bytes:
    return b"".join(encode_string(name) + encode_string(data) for name, data in pairs)


def build_cert(ca: PrivateKey, key: PublicKey, *, key_type: str | None = None,
               nonce: bytes = b"\x07" * 32, serial: int = 1, cert_type: int = CERT_TYPE_USER,
               key_id: str | bytes = "build-cert", principals: Sequence[str] = ("alice",),
               principals_raw: bytes | None = None, valid_after: int = NOW - HOUR,
               valid_before: int = NOW + HOUR, critical: Sequence[tuple[str, bytes]] = (),
               critical_raw: bytes | None = None, extensions: Sequence[tuple[str, bytes]] = (),
               extensions_raw: bytes | None = None, signature_key_blob: bytes | None = None,
               sign: Callable[[bytes], bytes] | None = None, trailing: bytes = b"") -> bytes:
    """A certificate blob written field by field (PROTOCOL.certkeys), no checks at all."""
    key_fields = Reader(key.blob)
    key_fields.string()
    body = (Writer()
            .string(key_type or key.key_type + keys.CERT_SUFFIX).string(nonce)
            .raw(key_fields.rest())
            .uint64(serial).uint32(cert_type).string(key_id)
            .string(principals_raw if principals_raw is not None
                    else b"".join(encode_string(p) for p in principals))
            .uint64(valid_after).uint64(valid_before)
            .string(critical_raw if critical_raw is not None else _pairs(critical))
            .string(extensions_raw if extensions_raw is not None else _pairs(extensions))
            .string(b"")
            .string(signature_key_blob or ca.public_key.blob)
            .getvalue())
    signature = sign(body) if sign else ca.sign(body)
    return body + encode_string(signature) + trailing


def parse_cert(blob: bytes) -> Certificate:
    cert = keys.parse_public_blob(blob)
    assert isinstance(cert, Certificate)
    return cert


def user_cert(ca: PrivateKey, key: PrivateKey, **kw) -> Certificate:
    args = dict(cert_type=CERT_TYPE_USER, key_id="alice@test", principals=["alice"],
                valid_after=NOW - HOUR, valid_before=NOW + HOUR, extensions=DEFAULT_USER_EXTENSIONS,
                serial=77)
    args.update(kw)
    return sign_certificate(ca, key.public_key, **args)


def host_cert(ca: PrivateKey, key: PrivateKey, **kw) -> Certificate:
    args = dict(cert_type=CERT_TYPE_HOST, key_id="host", principals=["server.example.com"],
                valid_after=NOW - HOUR, valid_before=NOW + HOUR)
    args.update(kw)
    return sign_certificate(ca, key.public_key, **args)


def validate_user(cert: Certificate, ca: PrivateKey, **kw) -> CertPermissions:
    args = dict(principal="alice", trusted_cas=[ca.public_key], now=NOW)
    args.update(kw)
    return validate_user_certificate(cert, **args)


def validate_host(cert: Certificate, ca: PrivateKey, **kw) -> None:
    args = dict(hostname="server.example.com", trusted_cas=[ca.public_key], now=NOW)
    args.update(kw)
    validate_host_certificate(cert, **args)


def sha1_rsa_signer(ca: PrivateKey) -> Callable[[bytes], bytes]:
    def sign(body: bytes) -> bytes:
        raw = ca.crypto_key.sign(body, padding.PKCS1v15(), hashes.SHA1())
        return Writer().string("ssh-rsa").string(raw).getvalue()
    return sign


def refused(rule: int):
    return pytest.raises(CertificateError, match=rf"\(rule {rule}\)")


# ---------------------------------------------------------------- sign / parse round trip


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_signed_certificate_round_trips_every_field(kc_ca, kc_user, key_type):
    ca, key = kc_ca["ssh-rsa"], kc_user[key_type]
    cert = sign_certificate(
        ca, key.public_key, cert_type=CERT_TYPE_USER, key_id="id-1", principals=["alice", "bob"],
        valid_after=NOW - 60, valid_before=NOW + 60, serial=2**64 - 1, nonce=b"n" * 16,
        critical_options={"source-address": "10.0.0.0/8", "force-command": "/bin/true"},
        extensions={**DEFAULT_USER_EXTENSIONS, "x@example.com": "value"},
        signature_algorithm="rsa-sha2-256")
    assert cert.key_type == key_type + "-cert-v01@openssh.com"
    assert cert.public_key == key.public_key and cert.signature_key == ca.public_key
    assert (cert.key_id, cert.principals, cert.serial, cert.nonce) == \
        ("id-1", ("alice", "bob"), 2**64 - 1, b"n" * 16)
    assert (cert.valid_after, cert.valid_before, cert.cert_type) == (NOW - 60, NOW + 60, 1)
    assert list(cert.critical_options) == ["force-command", "source-address"], "sorted"
    assert cert.critical_options["force-command"] == encode_string("/bin/true")
    assert cert.extensions["permit-pty"] == b"" and cert.extensions["x@example.com"] == \
        encode_string("value")
    assert list(cert.extensions) == sorted(cert.extensions, key=str.encode)
    assert cert.signature_algorithm == "rsa-sha2-256"
    assert cert.signed_data == cert.blob[:len(cert.signed_data)]
    assert keys.parse_public_blob(cert.blob) == cert
    assert keys.parse_public_line(cert.to_line("c")) == (cert, "c")
    assert cert.fingerprint() == key.public_key.fingerprint()
    assert cert.verify_ca_signature()


def test_certificate_signature_algorithms_are_cert_forms(kc_ca, kc_user):
    rsa_cert = user_cert(kc_ca["ssh-ed25519"], kc_user["ssh-rsa"])
    assert rsa_cert.signature_algorithms == ("rsa-sha2-512-cert-v01@openssh.com",
                                             "rsa-sha2-256-cert-v01@openssh.com")
    ec_cert = user_cert(kc_ca["ssh-ed25519"], kc_user["ecdsa-sha2-nistp256"])
    assert ec_cert.signature_algorithms == ("ecdsa-sha2-nistp256-cert-v01@openssh.com",)


def test_sign_certificate_refuses_bad_requests(kc_ca, kc_user):
    ca, key = kc_ca["ssh-ed25519"], kc_user["ssh-ed25519"]
    with pytest.raises(ValueError, match="no principals"):
        user_cert(ca, key, principals=[])
    with pytest.raises(TypeError):
        user_cert(ca, key, principals="alice")
    with pytest.raises(ValueError):
        user_cert(ca, key, principals=[f"p{i}" for i in range(257)])
    with pytest.raises(ValueError):
        user_cert(ca, key, valid_after=NOW, valid_before=NOW)
    with pytest.raises(ValueError):
        user_cert(ca, key, cert_type=3)
    with pytest.raises(ValueError, match="critical"):
        host_cert(ca, key, critical_options={"force-command": "x"})
    with pytest.raises(ValueError):
        user_cert(ca, key, critical_options={"source-address": "10.0.0.1/8"})
    with pytest.raises(ValueError):
        user_cert(ca, key, critical_options={"force-command": b"\0\0\0\2ls+"})
    with pytest.raises(ValueError):
        user_cert(ca, key, extensions={"permit-pty": "yes"})
    with pytest.raises(TypeError):
        sign_certificate(ca, user_cert(ca, key), cert_type=CERT_TYPE_USER, key_id="x",
                         principals=["a"], valid_after=0, valid_before=1)
    with pytest.raises(ValueError):
        user_cert(kc_ca["ssh-rsa"], key, signature_algorithm="ssh-rsa")


def test_user_permissions_follow_extensions(kc_ca, kc_user):
    ca, key = kc_ca["ssh-ed25519"], kc_user["ssh-ed25519"]
    perms = validate_user(user_cert(ca, key), ca)
    assert perms == CertPermissions(
        force_command=None, source_address=None, permit_pty=True, permit_port_forwarding=True,
        permit_agent_forwarding=True, permit_x11_forwarding=True, permit_user_rc=True,
        extensions=dict(DEFAULT_USER_EXTENSIONS), key_id="alice@test", serial=77)
    bare = validate_user(user_cert(ca, key, extensions={"permit-pty": ""}), ca)
    assert bare.permit_pty and not (bare.permit_port_forwarding or bare.permit_agent_forwarding
                                    or bare.permit_x11_forwarding or bare.permit_user_rc)


# ----------------------------------------------------------------------- rules 1 to 6


def test_rule1_certificate_type_must_map_exactly_to_its_key_fields(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    rsa_key = kc_user["ssh-rsa"].public_key
    with pytest.raises(KeyFormatError):
        keys.parse_public_blob(build_cert(ca, rsa_key,
                                          key_type="ssh-ed25519-cert-v01@openssh.com"))
    p256 = kc_user["ecdsa-sha2-nistp256"].public_key
    with pytest.raises(KeyFormatError, match="different curve"):
        keys.parse_public_blob(build_cert(ca, p256,
                                          key_type="ecdsa-sha2-nistp384-cert-v01@openssh.com"))
    for unknown in ("ssh-ed25519-cert-v00@openssh.com", "ssh-ed25519-cert-v01@example.com",
                    "ssh-dss-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com"):
        with pytest.raises(KeyFormatError, match="unsupported key type"):
            keys.parse_public_blob(build_cert(ca, kc_user["ssh-ed25519"].public_key,
                                              key_type=unknown))


def test_rule1_trailing_bytes_after_certificate_are_rejected(kc_ca, kc_user):
    ca, key = kc_ca["ssh-ed25519"], kc_user["ssh-ed25519"].public_key
    assert parse_cert(build_cert(ca, key))
    with pytest.raises(KeyFormatError, match="trailing"):
        keys.parse_public_blob(build_cert(ca, key, trailing=b"\0"))


def test_rule1_outer_line_type_must_match_certificate_type(kc_ca, kc_user):
    cert = user_cert(kc_ca["ssh-ed25519"], kc_user["ssh-ed25519"])
    b64 = cert.to_line().split()[1]
    with pytest.raises(KeyFormatError):
        keys.parse_public_line(f"ssh-ed25519 {b64}")


@pytest.mark.parametrize("cert_type", [0, 3, 2**32 - 1])
def test_rule2_certificate_type_must_be_user_or_host(kc_ca, kc_user, cert_type):
    blob = build_cert(kc_ca["ssh-ed25519"], kc_user["ssh-ed25519"].public_key, cert_type=cert_type)
    with pytest.raises(KeyFormatError, match="unknown certificate type"):
        keys.parse_public_blob(blob)


def test_rule3_at_most_256_well_formed_principals(kc_ca, kc_user):
    ca, key = kc_ca["ssh-ed25519"], kc_user["ssh-ed25519"].public_key
    assert len(parse_cert(build_cert(ca, key, principals=[f"u{i}" for i in range(256)]))
               .principals) == 256
    with pytest.raises(KeyFormatError, match="more than 256"):
        keys.parse_public_blob(build_cert(ca, key, principals=[f"u{i}" for i in range(257)]))
    bad_lists = [encode_string("alice") + b"\0\0\0\x09bob",  # truncated second string
                 encode_string("alice") + b"\0\0",  # dangling length bytes
                 encode_string(b"ali\0ce"),  # OpenSSH reads principals as C strings
                 encode_string(b"\xff\xfe")]  # not UTF-8
    for raw in bad_lists:
        with pytest.raises(KeyFormatError):
            keys.parse_public_blob(build_cert(ca, key, principals_raw=raw))


def test_rule4_options_and_extensions_must_parse_as_string_pairs(kc_ca, kc_user):
    ca, key = kc_ca["ssh-ed25519"], kc_user["ssh-ed25519"].public_key
    bad_sections = [encode_string("force-command"),  # name without data
                    encode_string("force-command") + b"\0\0\0\x10/bin",  # truncated data
                    b"\0\0\0",  # dangling bytes
                    encode_string("") + encode_string("")]  # empty name
    for raw in bad_sections:
        with pytest.raises(KeyFormatError):
            keys.parse_public_blob(build_cert(ca, key, critical_raw=raw))
        with pytest.raises(KeyFormatError):
            keys.parse_public_blob(build_cert(ca, key, extensions_raw=raw))


def test_rule5_cert_rejected_when_signing_key_is_itself_a_cert(kc_ca, kc_user):
    root, intermediate = kc_ca["ssh-ed25519"], kc_ca["ecdsa-sha2-nistp384"]
    intermediate_cert = user_cert(root, intermediate)
    chained = build_cert(intermediate, kc_user["ssh-ed25519"].public_key,
                         signature_key_blob=intermediate_cert.blob)
    with pytest.raises(KeyFormatError, match="itself a certificate"):
        keys.parse_public_blob(chained)


def test_rule5_certificate_listed_as_trusted_ca_does_not_authorise(kc_ca, kc_user):
    # CVE-2025-49825: a certificate among the "authorities" must never count as one,
    # even when it certifies the very key that signed.
    root, ca = kc_ca["ssh-ed25519"], kc_ca["ecdsa-sha2-nistp384"]
    ca_as_cert = user_cert(root, ca)
    cert = user_cert(ca, kc_user["ssh-ed25519"])
    with refused(10):
        validate_user(cert, ca, trusted_cas=[ca_as_cert])
    with refused(10):
        validate_host(host_cert(ca, kc_user["ssh-ed25519"]), ca, trusted_cas=[ca_as_cert])


def test_rule6_ca_signature_is_verified_at_parse_and_its_algorithm_recorded(kc_ca, kc_user):
    ca, key = kc_ca["ssh-rsa"], kc_user["ssh-ed25519"].public_key
    blob = build_cert(ca, key, sign=lambda body: ca.sign(body, "rsa-sha2-256"))
    cert = parse_cert(blob)
    assert cert.signature_algorithm == "rsa-sha2-256" and cert.verify_ca_signature()
    # Flip one bit of the key id: the signature no longer covers these bytes.
    at = blob.index(b"build-cert")
    tampered = blob[:at] + b"Build-cert" + blob[at + 10:]
    with pytest.raises(KeyFormatError, match="does not verify"):
        keys.parse_public_blob(tampered)
    # A signature by a key other than the signature key fails too.
    other = build_cert(ca, key, sign=lambda body: kc_ca["ssh-ed25519"].sign(body))
    with pytest.raises(KeyFormatError, match="does not verify"):
        keys.parse_public_blob(other)


# ---------------------------------------------------------------------- rules 8 to 16


def test_rule8_sha1_ssh_rsa_ca_signature_is_refused(kc_ca, kc_user):
    ca = kc_ca["ssh-rsa"]
    cert = parse_cert(build_cert(ca, kc_user["ssh-ed25519"].public_key, sign=sha1_rsa_signer(ca)))
    assert cert.signature_algorithm == "ssh-rsa"
    assert not cert.verify_ca_signature()
    assert "ssh-rsa" not in DEFAULT_CA_SIGNATURE_ALGORITHMS
    with refused(8):
        validate_user(cert, ca)
    # Only an explicit opt-in accepts it, which shows the refusal is the algorithm policy.
    validate_user(cert, ca, ca_signature_algorithms=[*DEFAULT_CA_SIGNATURE_ALGORITHMS, "ssh-rsa"])


def test_rule8_ca_signature_algorithm_must_be_in_the_allowed_list(kc_ca, kc_user):
    ca = kc_ca["ssh-rsa"]
    cert = user_cert(ca, kc_user["ssh-ed25519"], signature_algorithm="rsa-sha2-256")
    validate_user(cert, ca)
    with refused(8):
        validate_user(cert, ca, ca_signature_algorithms=["rsa-sha2-512"])


def test_rule9_certificate_for_a_small_rsa_key_is_refused(kc_ca):
    from cryptography.hazmat.primitives.asymmetric import rsa
    small = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    small_blob = Writer().string("ssh-rsa").mpint(small.e).mpint(small.n).getvalue()
    fake = PublicKey("ssh-rsa", small_blob, None)  # bypasses parsing, as a hostile peer would
    with pytest.raises(KeyFormatError, match="below the minimum"):
        keys.parse_public_blob(build_cert(kc_ca["ssh-ed25519"], fake))


def test_rule10_signing_ca_must_be_trusted(kc_ca, kc_user):
    cert = user_cert(kc_ca["ssh-ed25519"], kc_user["ssh-ed25519"])
    with refused(10):
        validate_user(cert, kc_ca["ssh-ed25519"], trusted_cas=[kc_ca["ssh-rsa"].public_key])
    with refused(10):
        validate_user(cert, kc_ca["ssh-ed25519"], trusted_cas=[])
    validate_user(cert, kc_ca["ssh-ed25519"],
                  trusted_cas=[kc_ca["ssh-rsa"].public_key, kc_ca["ssh-ed25519"].public_key])


def test_rule11_revoked_certified_key_or_ca_key_is_refused(kc_ca, kc_user):
    ca, key = kc_ca["ssh-ed25519"], kc_user["ecdsa-sha2-nistp256"]
    cert = user_cert(ca, key)
    with refused(11):
        validate_user(cert, ca, revoked_keys={key.public_key.blob})
    with refused(11):
        validate_user(cert, ca, revoked_keys=[ca.public_key.blob])
    with refused(11):
        validate_user(cert, ca, revoked_keys=[cert.blob])
    with refused(11):
        validate_host(host_cert(ca, key), ca, revoked_keys=[ca.public_key])
    validate_user(cert, ca, revoked_keys=[kc_user["ssh-ed25519"].public_key.blob])


def test_rule12_host_certificate_is_refused_for_user_login(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    cert = host_cert(ca, kc_user["ssh-ed25519"], principals=["alice"])
    with refused(12):
        validate_user(cert, ca)


def test_rule12_validity_window_with_boundaries_and_skew(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    cert = user_cert(ca, kc_user["ssh-ed25519"], valid_after=NOW, valid_before=NOW + 10)
    validate_user(cert, ca, now=NOW)  # valid_after is inclusive
    validate_user(cert, ca, now=NOW + 9.999)
    with refused(12):
        validate_user(cert, ca, now=NOW + 10)  # valid_before is exclusive
    with refused(12):
        validate_user(cert, ca, now=NOW - 1)
    validate_user(cert, ca, now=NOW - 5, skew=5)
    validate_user(cert, ca, now=NOW + 14, skew=5)
    with pytest.raises(CertificateError, match="not yet valid"):
        validate_user(cert, ca, now=NOW - 6, skew=5)
    with pytest.raises(CertificateError, match="expired"):
        validate_user(cert, ca, now=NOW + 15, skew=5)


def test_rule12_validity_defaults_to_the_real_clock(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    old = user_cert(ca, kc_user["ssh-ed25519"], valid_after=NOW - 2 * HOUR,
                    valid_before=NOW - HOUR)
    assert time.time() > NOW
    with pytest.raises(CertificateError, match="expired"):
        validate_user_certificate(old, principal="alice", trusted_cas=[ca.public_key])


def test_rule12_empty_principal_list_is_refused(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    cert = parse_cert(build_cert(ca, kc_user["ssh-ed25519"].public_key, principals=()))
    with pytest.raises(CertificateError, match=r"\(rule 12\): the principal list is empty"):
        validate_user(cert, ca)


def test_rule12_principal_must_match_exactly_without_wildcards(kc_ca, kc_user):
    ca, key = kc_ca["ssh-ed25519"], kc_user["ssh-ed25519"]
    cert = user_cert(ca, key, principals=["alice", "bob"])
    validate_user(cert, ca, principal="bob")
    for principal in ("carol", "Alice", "alice ", "ali", ""):
        with refused(12):
            validate_user(cert, ca, principal=principal)
    for pattern in ("*", "a*", "ali?e"):
        with refused(12):
            validate_user(user_cert(ca, key, principals=[pattern]), ca, principal="alice")


def test_rule13_unknown_critical_option_is_refused(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    cert = user_cert(ca, kc_user["ssh-ed25519"], critical_options={"no-such-option@x": ""})
    with pytest.raises(CertificateError, match="unknown critical option"):
        validate_user(cert, ca)


def test_rule13_duplicate_or_unsorted_options_are_refused(kc_ca, kc_user):
    ca, key = kc_ca["ssh-ed25519"], kc_user["ssh-ed25519"].public_key
    command = encode_string("/bin/true")
    for section in ("critical", "extensions"):
        dup = {section: [("force-command", command), ("force-command", command)]}
        with pytest.raises(KeyFormatError, match="repeated"):
            keys.parse_public_blob(build_cert(ca, key, **dup))
        unsorted = {section: [("source-address", encode_string("10.0.0.0/8")),
                              ("force-command", command)]}
        with pytest.raises(KeyFormatError, match="out of order"):
            keys.parse_public_blob(build_cert(ca, key, **unsorted))


@pytest.mark.parametrize("cidr", ["10.0.0.1/8", "10.0.0.0/33", "not-an-address", "10.0.0.0/8,",
                                  "", " 10.0.0.0/8", "fe80::1%eth0", "10.0.0.0/8;1.2.3.4",
                                  "*", "10.0.0.0/8,,::1"])
def test_rule13_bad_cidr_in_source_address_is_refused(kc_ca, kc_user, cidr):
    ca = kc_ca["ssh-ed25519"]
    blob = build_cert(ca, kc_user["ssh-ed25519"].public_key,
                      critical=[("source-address", encode_string(cidr))])
    with pytest.raises(CertificateError, match=r"\(rule 13\)"):
        validate_user(parse_cert(blob), ca, source_address="10.1.2.3")


@pytest.mark.parametrize("name,data", [
    ("force-command", encode_string("/bin/true") + b"x"),
    ("force-command", b"/bin/true"),
    ("force-command", encode_string(b"/bin/\0true")),
    ("source-address", encode_string("10.0.0.0/8") + encode_string("")),
    ("verify-required", b""),
])
def test_rule13_known_option_with_extra_or_corrupt_data_is_refused(kc_ca, kc_user, name, data):
    ca = kc_ca["ssh-ed25519"]
    blob = build_cert(ca, kc_user["ssh-ed25519"].public_key, critical=[(name, data)])
    with pytest.raises(CertificateError, match=r"\(rule 13\)"):
        validate_user(parse_cert(blob), ca, source_address="10.1.2.3")


def test_rule13_known_flag_extension_with_data_is_refused(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    blob = build_cert(ca, kc_user["ssh-ed25519"].public_key,
                      extensions=[("permit-pty", encode_string("yes"))])
    with pytest.raises(CertificateError, match=r"\(rule 13\).*permit-pty"):
        validate_user(parse_cert(blob), ca)


def test_rule13_unknown_extension_is_ignored_but_reported(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    cert = user_cert(ca, kc_user["ssh-ed25519"], extensions={"login@example.com": "root"})
    perms = validate_user(cert, ca)
    assert perms.extensions == {"login@example.com": encode_string("root")}
    assert not perms.permit_pty


def test_rule14_source_address_must_match_the_peer(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    cert = user_cert(ca, kc_user["ssh-ed25519"],
                     critical_options={"source-address": "192.0.2.0/24,2001:db8::/32,10.9.9.9"})
    perms = validate_user(cert, ca, source_address="192.0.2.200")
    assert perms.source_address == (ipaddress.ip_network("192.0.2.0/24"),
                                    ipaddress.ip_network("2001:db8::/32"),
                                    ipaddress.ip_network("10.9.9.9/32"))
    validate_user(cert, ca, source_address="2001:db8::1")
    validate_user(cert, ca, source_address="10.9.9.9")
    validate_user(cert, ca, source_address="::ffff:192.0.2.1")  # IPv4 via a dual-stack socket
    for peer in ("192.0.3.1", "2001:db9::1", "10.9.9.8", "not-an-ip"):
        with refused(14):
            validate_user(cert, ca, source_address=peer)
    with pytest.raises(CertificateError, match=r"\(rule 14\).*peer address is unknown"):
        validate_user(cert, ca)


def test_rule14_force_command_is_returned_for_enforcement(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    cert = user_cert(ca, kc_user["ssh-ed25519"],
                     critical_options={"force-command": "/usr/bin/rsync --server"})
    assert validate_user(cert, ca).force_command == "/usr/bin/rsync --server"


@pytest.mark.parametrize("key_type", ["ssh-ed25519", "ecdsa-sha2-nistp521", "ssh-rsa"])
def test_rule15_userauth_signature_must_be_made_by_the_certified_key(kc_ca, kc_user, key_type):
    ca, key = kc_ca["ssh-ed25519"], kc_user[key_type]
    cert = user_cert(ca, key)
    data = b"session id and userauth request"
    for pkalg in cert.signature_algorithms:
        signature = key.sign(data, pkalg)
        assert cert.verify(signature, data)
        assert cert.verify(signature, data, algorithms=[pkalg])
        assert cert.verify(signature, data, algorithms=[keys.plain_signature_algorithm(pkalg)])
        assert not cert.verify(signature, data + b"!")
    assert not cert.verify(ca.sign(data), data), "signed by the CA, not the certified key"
    assert not cert.verify(kc_user["ssh-ed25519" if key_type != "ssh-ed25519" else "ssh-rsa"]
                           .sign(data), data)


def test_rule15_rsa_cert_signature_algorithm_is_bound_to_the_pkalg(kc_ca, kc_user):
    cert = user_cert(kc_ca["ssh-ed25519"], kc_user["ssh-rsa"])
    sig512 = kc_user["ssh-rsa"].sign(b"d", "rsa-sha2-512")
    assert cert.verify(sig512, b"d", algorithms=["rsa-sha2-512-cert-v01@openssh.com"])
    assert not cert.verify(sig512, b"d", algorithms=["rsa-sha2-256-cert-v01@openssh.com"])
    sha1 = Writer().string("ssh-rsa").string(kc_user["ssh-rsa"].crypto_key.sign(
        b"d", padding.PKCS1v15(), hashes.SHA1())).getvalue()
    assert not cert.verify(sha1, b"d")


def test_rule16_refusal_names_rule_key_id_serial_and_ca_fingerprint(kc_ca, kc_user):
    ca = kc_ca["ecdsa-sha2-nistp384"]
    cert = user_cert(ca, kc_user["ssh-ed25519"], key_id="alice\n@corp", serial=123456)
    with pytest.raises(CertificateError) as err:
        validate_user(cert, ca, principal="mallory")
    message = str(err.value)
    assert "(rule 12)" in message and "'mallory'" in message
    assert "'alice\\n@corp'" in message, "key id is quoted so it cannot forge log lines"
    assert "serial 123456" in message and ca.public_key.fingerprint() in message
    assert "\n" not in message


# ------------------------------------------------------------------------------ rule 17


def test_rule17_host_certificate_accepted_with_wildcard_principals(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    cert = host_cert(ca, kc_user["ssh-ed25519"], principals=["*.example.com", "db?.lan"])
    for name in ("server.example.com", "A.Example.COM", "db1.lan"):
        validate_host(cert, ca, hostname=name)
    for name in ("example.com", "db12.lan", "server.example.org"):
        with refused(17):
            validate_host(cert, ca, hostname=name)


def test_rule17_user_certificate_is_refused_as_host_certificate(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    cert = user_cert(ca, kc_user["ssh-ed25519"], principals=["server.example.com"])
    with pytest.raises(CertificateError, match=r"\(rule 17\): not a host certificate"):
        validate_host(cert, ca)


def test_rule17_host_certificate_with_critical_options_is_refused(kc_ca, kc_user):
    ca = kc_ca["ssh-ed25519"]
    blob = build_cert(ca, kc_user["ssh-ed25519"].public_key, cert_type=CERT_TYPE_HOST,
                      principals=["server.example.com"],
                      critical=[("force-command", encode_string("/bin/true"))])
    with pytest.raises(CertificateError,
                       match=r"\(rule 17\): host certificates may not carry critical options"):
        validate_host(parse_cert(blob), ca)


def test_rule17_host_certificate_validity_principals_and_ca_algorithm(kc_ca, kc_user):
    ca, key = kc_ca["ssh-rsa"], kc_user["ssh-ed25519"]
    with refused(17):
        validate_host(host_cert(ca, key, valid_after=NOW - 2 * HOUR, valid_before=NOW - HOUR), ca)
    empty = parse_cert(build_cert(ca, key.public_key, cert_type=CERT_TYPE_HOST, principals=()))
    with pytest.raises(CertificateError, match="principal list is empty"):
        validate_host(empty, ca)
    sha1 = parse_cert(build_cert(ca, key.public_key, cert_type=CERT_TYPE_HOST,
                                 principals=["server.example.com"], sign=sha1_rsa_signer(ca)))
    with refused(8):
        validate_host(sha1, ca)


def test_match_pattern_is_linear_on_hostile_patterns():
    start = time.perf_counter()
    assert not certs.match_pattern("a" * 2000, "*a" * 40 + "b")
    assert time.perf_counter() - start < 1.0


# ----------------------------------------------------------------- ssh-keygen interop


def keygen(*args: str | os.PathLike[str]) -> str:
    result = subprocess.run([SSH_KEYGEN, *map(str, args)], capture_output=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"ssh-keygen {args} failed: {result.stderr.decode()}")
    return result.stdout.decode()


VALIDITY = f"0x{NOW - HOUR:x}:0x{NOW + HOUR:x}"


@pytest.fixture(scope="module")
def kc_keygen_dir(tmp_path_factory, kc_ca, kc_user) -> Path:
    """Our CA and user keys written out for ssh-keygen to use."""
    base = tmp_path_factory.mktemp("certs")
    for name, key in [*(("ca_" + t, k) for t, k in kc_ca.items()),
                      *(("user_" + t, k) for t, k in kc_user.items())]:
        keys.write_private_key(base / name, key)
        keys.write_public_file(base / f"{name}.pub", key.public_key)
    return base


def keygen_sign(base: Path, ca: str, user: str, *args: str) -> Certificate:
    """Run ssh-keygen -s; return the parsed certificate (a fresh copy of the key each time)."""
    target = base / f"{user}-{os.urandom(4).hex()}.pub"
    target.write_bytes((base / f"user_{user}.pub").read_bytes())
    keygen("-s", base / f"ca_{ca}", *args, target)
    cert, _ = keys.load_public_file(str(target)[:-4] + "-cert.pub")
    assert isinstance(cert, Certificate)
    return cert


@needs_keygen
@pytest.mark.parametrize("ca_type,ca_alg", [("ssh-ed25519", "ssh-ed25519"),
                                            ("ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"),
                                            ("ssh-rsa", "rsa-sha2-512"),
                                            ("ssh-rsa", "rsa-sha2-256")])
@pytest.mark.parametrize("user_type", ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"])
def test_ssh_keygen_user_certificate_parses_and_validates(kc_keygen_dir, kc_ca, kc_user,
                                                          ca_type, ca_alg, user_type):
    extra = ["-t", ca_alg] if ca_type == "ssh-rsa" else []
    cert = keygen_sign(kc_keygen_dir, ca_type, user_type, *extra, "-I", "alice@corp",
                       "-n", "alice,deploy", "-z", "4242", "-V", VALIDITY,
                       "-O", "force-command=/usr/bin/uptime -p",
                       "-O", "source-address=10.1.0.0/16,2001:db8::/32")
    assert cert.key_type == user_type + "-cert-v01@openssh.com"
    assert cert.public_key == kc_user[user_type].public_key
    assert cert.signature_key == kc_ca[ca_type].public_key
    assert (cert.key_id, cert.serial, cert.principals) == ("alice@corp", 4242, ("alice", "deploy"))
    assert (cert.valid_after, cert.valid_before) == (NOW - HOUR, NOW + HOUR)
    assert cert.signature_algorithm == ca_alg
    perms = validate_user(cert, kc_ca[ca_type], principal="deploy", source_address="10.1.200.3")
    assert perms.force_command == "/usr/bin/uptime -p"
    assert perms.source_address == (ipaddress.ip_network("10.1.0.0/16"),
                                    ipaddress.ip_network("2001:db8::/32"))
    assert perms.permit_pty and perms.permit_port_forwarding and perms.permit_agent_forwarding
    assert perms.permit_x11_forwarding and perms.permit_user_rc
    with refused(14):
        validate_user(cert, kc_ca[ca_type], source_address="10.2.0.1")


@needs_keygen
def test_ssh_keygen_restricted_extensions_map_to_permissions(kc_keygen_dir, kc_ca):
    ca = kc_ca["ssh-ed25519"]
    cert = keygen_sign(kc_keygen_dir, "ssh-ed25519", "ssh-ed25519", "-I", "r", "-n", "alice",
                       "-V", VALIDITY, "-O", "no-pty", "-O", "no-agent-forwarding")
    perms = validate_user(cert, ca)
    assert not perms.permit_pty and not perms.permit_agent_forwarding
    assert perms.permit_port_forwarding and perms.permit_x11_forwarding
    cert = keygen_sign(kc_keygen_dir, "ssh-ed25519", "ssh-ed25519", "-I", "r", "-n", "alice",
                       "-V", VALIDITY, "-O", "clear", "-O", "permit-port-forwarding")
    perms = validate_user(cert, ca)
    assert perms.permit_port_forwarding and not (perms.permit_pty or perms.permit_user_rc)


@needs_keygen
def test_ssh_keygen_host_certificate_validates(kc_keygen_dir, kc_ca):
    ca = kc_ca["ecdsa-sha2-nistp384"]
    cert = keygen_sign(kc_keygen_dir, "ecdsa-sha2-nistp384", "ssh-ed25519", "-h", "-I", "web",
                       "-n", "*.example.com,web1.lan", "-V", VALIDITY)
    assert cert.cert_type == CERT_TYPE_HOST and not cert.extensions
    validate_host(cert, ca, hostname="api.example.com")
    validate_host(cert, ca, hostname="web1.lan")
    with refused(17):
        validate_host(cert, ca, hostname="web2.lan")
    with refused(12):
        validate_user(cert, ca, principal="web1.lan")


@needs_keygen
def test_rule12_ssh_keygen_certificate_without_principals_is_refused(kc_keygen_dir, kc_ca):
    for flags in ([], ["-h"]):
        cert = keygen_sign(kc_keygen_dir, "ssh-ed25519", "ssh-ed25519", *flags, "-I", "nobody",
                           "-V", VALIDITY)
        assert cert.principals == ()
        with pytest.raises(CertificateError, match="principal list is empty"):
            if flags:
                validate_host(cert, kc_ca["ssh-ed25519"])
            else:
                validate_user(cert, kc_ca["ssh-ed25519"])


@needs_keygen
def test_rule12_ssh_keygen_certificate_outside_its_validity_is_refused(kc_keygen_dir, kc_ca):
    cert = keygen_sign(kc_keygen_dir, "ssh-ed25519", "ssh-ed25519", "-I", "t", "-n", "alice",
                       "-V", VALIDITY)
    with pytest.raises(CertificateError, match="expired"):
        validate_user(cert, kc_ca["ssh-ed25519"], now=NOW + HOUR)
    with pytest.raises(CertificateError, match="not yet valid"):
        validate_user(cert, kc_ca["ssh-ed25519"], now=NOW - HOUR - 1)


@needs_keygen
def test_rule8_ssh_keygen_sha1_ca_signature_is_refused(kc_keygen_dir, kc_ca):
    cert = keygen_sign(kc_keygen_dir, "ssh-rsa", "ssh-ed25519", "-t", "ssh-rsa", "-I", "old",
                       "-n", "alice", "-V", VALIDITY)
    assert cert.signature_algorithm == "ssh-rsa"
    with refused(8):
        validate_user(cert, kc_ca["ssh-rsa"])


@needs_keygen
def test_rule13_ssh_keygen_unknown_critical_option_is_refused(kc_keygen_dir, kc_ca):
    cert = keygen_sign(kc_keygen_dir, "ssh-ed25519", "ssh-ed25519", "-I", "c", "-n", "alice",
                       "-V", VALIDITY, "-O", "critical:restrict-to@example.com=yes")
    with pytest.raises(CertificateError, match="unknown critical option 'restrict-to@example.com'"):
        validate_user(cert, kc_ca["ssh-ed25519"])


@needs_keygen
def test_rule13_ssh_keygen_verify_required_cannot_be_enforced(kc_keygen_dir, kc_ca):
    cert = keygen_sign(kc_keygen_dir, "ssh-ed25519", "ssh-ed25519", "-I", "v", "-n", "alice",
                       "-V", VALIDITY, "-O", "verify-required")
    with pytest.raises(CertificateError, match="verify-required"):
        validate_user(cert, kc_ca["ssh-ed25519"])


@needs_keygen
def test_rule13_ssh_keygen_unknown_extension_is_ignored(kc_keygen_dir, kc_ca):
    cert = keygen_sign(kc_keygen_dir, "ssh-ed25519", "ssh-ed25519", "-I", "e", "-n", "alice",
                       "-V", VALIDITY, "-O", "extension:note@example.com=hello")
    perms = validate_user(cert, kc_ca["ssh-ed25519"])
    assert perms.extensions["note@example.com"] == encode_string("hello")


def parse_listing(text: str) -> dict[str, list[str]]:
    """``ssh-keygen -L`` output as {field: [values]}; list sections become several values."""
    fields: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines()[1:]:
        if line.startswith("\t\t") or line.startswith(" " * 16):
            fields[current].append(line.strip())
            continue
        name, _, value = line.strip().partition(":")
        current = name
        fields[name] = [value.strip()] if value.strip() else []
    return fields


def _local(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


@needs_keygen
@pytest.mark.parametrize("ca_type,alg", [("ssh-ed25519", None), ("ecdsa-sha2-nistp384", None),
                                         ("ssh-rsa", "rsa-sha2-256"), ("ssh-rsa", None)])
@pytest.mark.parametrize("cert_type", [CERT_TYPE_USER, CERT_TYPE_HOST])
def test_our_certificate_is_read_by_ssh_keygen(tmp_path, kc_ca, kc_user, ca_type, alg, cert_type):
    ca, key = kc_ca[ca_type], kc_user["ecdsa-sha2-nistp256"]
    user = cert_type == CERT_TYPE_USER
    cert = sign_certificate(
        ca, key.public_key, cert_type=cert_type, key_id="ours \"quoted\"", serial=99,
        principals=["alice", "bob"] if user else ["*.example.com"],
        valid_after=NOW - HOUR, valid_before=NOW + HOUR, signature_algorithm=alg,
        critical_options={"force-command": "/bin/echo hi", "source-address": "10.0.0.0/8"}
        if user else {},
        extensions={"permit-pty": "", "permit-port-forwarding": ""} if user else {})
    path = tmp_path / "id-cert.pub"
    keys.write_public_file(path, cert)
    listing = parse_listing(keygen("-L", "-f", path))
    kind = "user" if user else "host"
    assert listing["Type"] == [f"ecdsa-sha2-nistp256-cert-v01@openssh.com {kind} certificate"]
    assert listing["Public key"][0].endswith(key.public_key.fingerprint())
    signing_ca = listing["Signing CA"][0]
    assert ca.public_key.fingerprint() in signing_ca
    assert signing_ca.endswith(f"(using {alg or ca.public_key.signature_algorithms[0]})")
    assert listing["Key ID"] == ['"ours "quoted""']
    assert listing["Serial"] == ["99"]
    assert listing["Valid"] == [f"from {_local(NOW - HOUR)} to {_local(NOW + HOUR)}"]
    if user:
        assert listing["Principals"] == ["alice", "bob"]
        assert listing["Critical Options"] == ["force-command /bin/echo hi",
                                               "source-address 10.0.0.0/8"]
        assert listing["Extensions"] == ["permit-port-forwarding", "permit-pty"]
    else:
        assert listing["Principals"] == ["*.example.com"]
        assert listing["Critical Options"] == ["(none)"]
        assert listing["Extensions"] == ["(none)"]


# ----------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def kc_cert_blobs(kc_ca, kc_user) -> list[bytes]:
    return [
        user_cert(kc_ca["ssh-ed25519"], kc_user["ssh-ed25519"],
                  critical_options={"force-command": "/bin/true"}).blob,
        user_cert(kc_ca["ssh-rsa"], kc_user["ecdsa-sha2-nistp256"]).blob,
        host_cert(kc_ca["ecdsa-sha2-nistp384"], kc_user["ssh-rsa"]).blob,
    ]


def _flip_bits(blob: bytes, positions: list[tuple[int, int]]) -> bytes:
    out = bytearray(blob)
    for byte, bit in positions:
        out[byte % len(out)] ^= 1 << bit
    return bytes(out)


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(data=st.data())
def test_bit_flipped_certificates_are_always_rejected(kc_cert_blobs, data):
    """OpenSSH fuzz.c 1- and 2-bit flips: every single flip must fail to parse.

    Every byte before the signature is signed and every byte of the signature is
    checked, so no flip may produce a certificate that parses.
    """
    blob = data.draw(st.sampled_from(kc_cert_blobs))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 7)),
                               min_size=1, max_size=2, unique_by=lambda f: f[0]))
    with pytest.raises(ProtocolError):
        keys.parse_public_blob(_flip_bits(blob, flips))


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(data=st.data())
def test_byte_flipped_and_truncated_certificates_raise_only_protocol_errors(kc_cert_blobs, data):
    """OpenSSH fuzz.c byte flips and truncations from either end."""
    blob = data.draw(st.sampled_from(kc_cert_blobs))
    at = data.draw(st.integers(0, len(blob) - 1))
    flipped = bytearray(blob)
    flipped[at] ^= 0xFF
    cut = data.draw(st.integers(1, len(blob) - 1))
    for candidate in (bytes(flipped), blob[:cut], blob[cut:]):
        with pytest.raises(ProtocolError):
            keys.parse_public_blob(candidate)


@settings(max_examples=100, deadline=None, suppress_health_check=FIXTURE_OK)
@given(data=st.data())
def test_base64_character_changes_in_cert_lines_raise_only_protocol_errors(kc_cert_blobs, data):
    """OpenSSH fuzz.c base64 mutation: replace one character of the encoded line."""
    text = base64.b64encode(data.draw(st.sampled_from(kc_cert_blobs))).decode()
    at = data.draw(st.integers(0, len(text) - 1))
    char = data.draw(st.sampled_from(string.ascii_letters + string.digits + "+/=!"))
    mutated = text[:at] + char + text[at + 1:]
    try:
        cert, _ = keys.parse_public_line(f"ssh-ed25519-cert-v01@openssh.com {mutated}")
    except ProtocolError:
        return
    assert base64.b64encode(cert.blob).decode() == text, "only a no-op change may parse"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_certificate_type_prefix_with_arbitrary_body_raises_only_protocol_errors(body):
    try:
        keys.parse_public_blob(encode_string("ssh-ed25519-cert-v01@openssh.com") + body)
    except ProtocolError:
        pass
