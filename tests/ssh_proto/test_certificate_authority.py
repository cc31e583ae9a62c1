"""ssh_proto/ca.py: a CA is a key, a kind and an id; it issues only its own kind of
certificate, with lifetimes from an injected clock, backdated, random or given serials,
and what it issues passes ssh_proto.certs' own validation."""
from __future__ import annotations

import pytest

from ssh_proto.ca import DEFAULT_BACKDATE, CAError, CertificateAuthority, load_authority
from ssh_proto.certs import (CERT_TYPE_HOST, CERT_TYPE_USER, DEFAULT_USER_EXTENSIONS, validate_host_certificate,
                             validate_user_certificate)
from ssh_proto.errors import CertificateError
from ssh_proto.keys import PrivateKey, parse_public_line
from ssh_proto.known_hosts import KnownHosts

NOW = 1_750_000_000


def _clock() -> float:
    return NOW


@pytest.fixture(scope="module")
def key():
    return PrivateKey.generate("ssh-ed25519").public_key


def test_ca_is_a_key_a_kind_and_an_id_and_many_can_coexist():
    old, new = (CertificateAuthority.generate("user", name) for name in ("prod-2026", "prod-2027"))
    assert (old.kind, old.id, new.id) == ("user", "prod-2026", "prod-2027")
    assert old.public_key != new.public_key
    assert "prod-2026" in repr(old) and old.fingerprint() in repr(old) and "PRIVATE" not in repr(old)


def test_unknown_kind_is_refused():
    with pytest.raises(CAError, match="'user' or 'host'"):
        CertificateAuthority(PrivateKey.generate(), "both", "x")  # type: ignore[arg-type]


def test_user_certificate_carries_principals_lifetime_extensions_and_critical_options(key):
    ca = CertificateAuthority.generate("user", "corp", clock=_clock)
    cert = ca.issue_user(key, "alice@corp", ["alice", "deploy"], ttl=3600,
                         extensions={"permit-pty": ""},
                         critical_options={"force-command": "uptime", "source-address": "10.0.0.0/8"})
    assert (cert.cert_type, cert.key_id, cert.principals) == (CERT_TYPE_USER, "alice@corp", ("alice", "deploy"))
    assert (cert.valid_after, cert.valid_before) == (NOW - DEFAULT_BACKDATE, NOW + 3600)
    assert set(cert.extensions) == {"permit-pty"}
    perms = validate_user_certificate(cert, principal="deploy", trusted_cas=[ca.public_key], now=NOW,
                                      source_address="10.1.2.3")
    assert perms.force_command == "uptime" and perms.permit_pty and not perms.permit_port_forwarding


def test_user_certificate_defaults_to_ssh_keygen_extensions(key):
    cert = CertificateAuthority.generate("user", "corp").issue_user(key, "a", ["a"], ttl=60)
    assert dict(cert.extensions) == dict(DEFAULT_USER_EXTENSIONS)


def test_host_certificate_validates_for_its_names_and_has_no_critical_options(key):
    ca = CertificateAuthority.generate("host", "corp", clock=_clock)
    cert = ca.issue_host(key, "db1", ["db1.corp", "*.db.corp"], ttl=86400)
    assert cert.cert_type == CERT_TYPE_HOST and not cert.critical_options
    validate_host_certificate(cert, hostname="x.db.corp", trusted_cas=[ca.public_key], now=NOW)
    with pytest.raises(CertificateError):
        validate_host_certificate(cert, hostname="web.corp", trusted_cas=[ca.public_key], now=NOW)


def test_a_ca_signs_only_its_own_kind_of_certificate(key):
    user_ca, host_ca = CertificateAuthority.generate("user", "c"), CertificateAuthority.generate("host", "c")
    with pytest.raises(CAError, match="user CA does not sign host"):
        user_ca.issue_host(key, "h", ["h"], ttl=60)
    with pytest.raises(CAError, match="host CA does not sign user"):
        host_ca.issue_user(key, "u", ["u"], ttl=60)
    with pytest.raises(CAError):
        host_ca.trusted_user_ca_line()
    with pytest.raises(CAError):
        user_ca.known_hosts_line()


def test_empty_principals_are_refused_cve_2024_7594(key):
    with pytest.raises(CAError, match="no principals"):
        CertificateAuthority.generate("user", "c").issue_user(key, "u", [], ttl=60)


def test_lifetime_must_be_positive_and_not_mixed_with_explicit_validity(key):
    ca = CertificateAuthority.generate("user", "c", clock=_clock)
    for kwargs in ({"ttl": 0}, {"ttl": 60, "valid_after": 1}, {}, {"valid_after": 5}):
        with pytest.raises(CAError):
            ca.issue_user(key, "u", ["u"], **kwargs)
    cert = ca.issue_user(key, "u", ["u"], valid_after=100, valid_before=200)
    assert (cert.valid_after, cert.valid_before) == (100, 200)
    assert ca.issue_user(key, "u", ["u"], ttl=10, now=5000).valid_after == 5000 - DEFAULT_BACKDATE


def test_serials_are_random_injectable_or_given(key):
    ca = CertificateAuthority.generate("user", "c")
    serials = {ca.issue_user(key, "u", ["u"], ttl=60).serial for _ in range(4)}
    assert len(serials) == 4 and all(0 <= s < 2**63 for s in serials)
    counter = iter(range(7, 100))
    counted = CertificateAuthority.generate("user", "c", serials=lambda: next(counter))
    assert [counted.issue_user(key, "u", ["u"], ttl=60).serial for _ in range(2)] == [7, 8]
    assert counted.issue_user(key, "u", ["u"], ttl=60, serial=42).serial == 42


def test_a_certificate_cannot_be_certified(key):
    user_ca = CertificateAuthority.generate("user", "c")
    cert = user_ca.issue_user(key, "u", ["u"], ttl=60)
    with pytest.raises(CAError, match="plain public key"):
        user_ca.issue_user(cert, "u", ["u"], ttl=60)  # type: ignore[arg-type]


def test_bad_critical_option_is_refused_before_signing(key):
    with pytest.raises(CAError, match="cannot sign"):
        CertificateAuthority.generate("user", "c").issue_user(key, "u", ["u"], ttl=60,
                                                              critical_options={"source-address": "nonsense"})


def test_trust_lines_are_what_sshd_and_known_hosts_read(key):
    user_ca, host_ca = CertificateAuthority.generate("user", "c"), CertificateAuthority.generate("host", "c")
    parsed, comment = parse_public_line(user_ca.trusted_user_ca_line())
    assert parsed == user_ca.public_key and comment == "user-ca@c"
    line = host_ca.known_hosts_line(["*.c", "c"])
    assert line.startswith("@cert-authority *.c,c ssh-ed25519 ")
    cert = host_ca.issue_host(key, "h", ["h.c"], ttl=3600)
    KnownHosts.parse(line).check("h.c", 22, cert)
    with pytest.raises(CAError):
        host_ca.known_hosts_line(["bad pattern"])


def test_stored_key_loads_back_and_must_match_its_public_half():
    ca = CertificateAuthority.generate("host", "c")
    again = load_authority(ca.private_key_openssh(b"secret"), "host", "c", passphrase=b"secret",
                           expected_public_key=ca.public_key.blob)
    assert again.public_key == ca.public_key and again.kind == "host"
    other = CertificateAuthority.generate("host", "c")
    with pytest.raises(CAError, match="does not match"):
        load_authority(other.private_key_openssh(), "host", "c", expected_public_key=ca.public_key.blob)
    with pytest.raises(CAError, match="cannot be loaded"):
        load_authority(b"junk", "host", "c")
