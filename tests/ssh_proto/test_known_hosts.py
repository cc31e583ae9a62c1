"""ssh_proto.known_hosts: host key trust decisions, with files from real ssh-keygen."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssh_proto.certs import sign_certificate
from ssh_proto.errors import HostKeyNotVerifiable, KeyFormatError, ProtocolError
from ssh_proto.keys import CERT_TYPE_HOST, CERT_TYPE_USER, Certificate, PrivateKey
from ssh_proto.known_hosts import KnownHosts, host_string

SSH_KEYGEN = shutil.which("ssh-keygen")
needs_keygen = pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen is not installed")

NOW = 1_750_000_000
HOUR = 3600


@pytest.fixture(scope="module")
def kc_hosts() -> dict[str, PrivateKey]:
    """Host keys and CAs used throughout; names say their role."""
    return {
        "web": PrivateKey.generate("ssh-ed25519"),
        "web_ecdsa": PrivateKey.generate("ecdsa-sha2-nistp256"),
        "db": PrivateKey.generate("ssh-ed25519"),
        "attacker": PrivateKey.generate("ssh-ed25519"),
        "ca": PrivateKey.generate("ssh-ed25519"),
        "other_ca": PrivateKey.generate("ecdsa-sha2-nistp384"),
    }


def line(host_field: str, key: PrivateKey, marker: str = "") -> str:
    prefix = f"@{marker} " if marker else ""
    return f"{prefix}{host_field} {key.public_key.to_line('comment here')}"


def host_cert(ca: PrivateKey, key: PrivateKey, principals=("web.example.com",),
              cert_type: int = CERT_TYPE_HOST, **kw) -> Certificate:
    args = dict(key_id="web", valid_after=NOW - HOUR, valid_before=NOW + HOUR)
    args.update(kw)
    return sign_certificate(ca, key.public_key, cert_type=cert_type, principals=list(principals),
                            **args)


def accepts(kh: KnownHosts, host: str, port: int, key, now: float = NOW) -> bool:
    try:
        kh.check(host, port, key, now=now)
    except HostKeyNotVerifiable:
        return False
    return True


# ------------------------------------------------------------------------- plain lines


def test_listed_key_is_accepted_and_others_are_not(kc_hosts):
    kh = KnownHosts.parse(line("web.example.com,192.0.2.10", kc_hosts["web"]))
    assert accepts(kh, "web.example.com", 22, kc_hosts["web"].public_key)
    assert accepts(kh, "192.0.2.10", 22, kc_hosts["web"].public_key)
    assert accepts(kh, "WEB.Example.com", 22, kc_hosts["web"].public_key), "names ignore case"
    assert not accepts(kh, "db.example.com", 22, kc_hosts["web"].public_key)


def test_changed_host_key_is_reported_as_possible_mitm(kc_hosts):
    kh = KnownHosts.parse("# my hosts\n\n" + line("web.example.com", kc_hosts["web"]))
    with pytest.raises(HostKeyNotVerifiable, match="has changed.*man-in-the-middle") as err:
        kh.check("web.example.com", 22, kc_hosts["attacker"].public_key)
    assert kc_hosts["attacker"].public_key.fingerprint() in str(err.value)
    assert "line(s) 3" in str(err.value)
    # A key of another type for a known host is no more acceptable.
    with pytest.raises(HostKeyNotVerifiable, match="has changed"):
        kh.check("web.example.com", 22, kc_hosts["web_ecdsa"].public_key)


def test_host_with_several_keys_accepts_each(kc_hosts):
    kh = KnownHosts.parse("\n".join([line("web.example.com", kc_hosts["web"]),
                                     line("web.example.com", kc_hosts["web_ecdsa"])]))
    assert accepts(kh, "web.example.com", 22, kc_hosts["web"].public_key)
    assert accepts(kh, "web.example.com", 22, kc_hosts["web_ecdsa"].public_key)


def test_unknown_host_is_rejected_with_a_clear_reason(kc_hosts):
    with pytest.raises(HostKeyNotVerifiable, match="no known host key for new.example.com"):
        KnownHosts().check("new.example.com", 22, kc_hosts["web"].public_key)


def test_missing_file_is_an_empty_known_hosts(tmp_path, kc_hosts):
    kh = KnownHosts.load(tmp_path / "does-not-exist")
    assert kh.entries == ()
    assert not accepts(kh, "web.example.com", 22, kc_hosts["web"].public_key)


def test_non_standard_port_uses_bracketed_host(kc_hosts):
    kh = KnownHosts.parse(line("[web.example.com]:2222", kc_hosts["web"]))
    assert accepts(kh, "web.example.com", 2222, kc_hosts["web"].public_key)
    assert not accepts(kh, "web.example.com", 22, kc_hosts["web"].public_key)
    assert not accepts(kh, "web.example.com", 2200, kc_hosts["web"].public_key)
    kh = KnownHosts.parse(line("web.example.com", kc_hosts["web"]))
    assert not accepts(kh, "web.example.com", 2222, kc_hosts["web"].public_key)
    assert host_string("::1", 22) == "::1" and host_string("::1", 830) == "[::1]:830"


def test_wildcard_patterns_and_negation(kc_hosts):
    kh = KnownHosts.parse(line("*.example.com,!secret.example.com,db?.lan,[*.dev]:*",
                               kc_hosts["web"]))
    web = kc_hosts["web"].public_key
    for host, port in [("a.example.com", 22), ("x.y.example.com", 22), ("db1.lan", 22),
                       ("box.dev", 2022)]:
        assert accepts(kh, host, port, web), host
    for host, port in [("secret.example.com", 22), ("example.com", 22), ("db10.lan", 22),
                       ("box.dev", 22), ("a.example.com", 2222)]:
        assert not accepts(kh, host, port, web), host


def test_line_with_only_negations_matches_nothing(kc_hosts):
    kh = KnownHosts.parse(line("!bad.example.com", kc_hosts["web"]))
    assert not accepts(kh, "good.example.com", 22, kc_hosts["web"].public_key)


@needs_keygen
def test_hashed_lines_from_ssh_keygen_H(tmp_path, kc_hosts):
    path = tmp_path / "known_hosts"
    path.write_text("\n".join([line("web.example.com", kc_hosts["web"]),
                               line("[db.example.com]:2222", kc_hosts["db"])]) + "\n")
    subprocess.run([SSH_KEYGEN, "-H", "-f", str(path)], check=True, capture_output=True,
                   timeout=60)
    assert all(entry.startswith("|1|") for entry in path.read_text().splitlines())
    kh = KnownHosts.load(path)
    assert all(e.hashed is not None for e in kh.entries) and not kh.invalid_lines
    assert accepts(kh, "web.example.com", 22, kc_hosts["web"].public_key)
    assert accepts(kh, "db.example.com", 2222, kc_hosts["db"].public_key)
    assert not accepts(kh, "db.example.com", 22, kc_hosts["db"].public_key)
    assert not accepts(kh, "web.example.org", 22, kc_hosts["web"].public_key)
    with pytest.raises(HostKeyNotVerifiable, match="changed"):
        kh.check("web.example.com", 22, kc_hosts["attacker"].public_key)


@needs_keygen
@pytest.mark.parametrize("hashed", [False, True])
def test_added_lines_are_found_by_ssh_keygen_F(tmp_path, kc_hosts, hashed):
    kh = KnownHosts()
    lines = [kh.add("web.example.com", 22, kc_hosts["web"].public_key, hashed=hashed),
             kh.add("db.example.com", 2222, kc_hosts["db"].public_key, hashed=hashed)]
    assert all(text.startswith("|1|") == hashed for text in lines)
    path = tmp_path / "known_hosts"
    path.write_text("\n".join(lines) + "\n")
    for host, key in [("web.example.com", "web"), ("[db.example.com]:2222", "db")]:
        found = subprocess.run([SSH_KEYGEN, "-F", host, "-f", str(path)], capture_output=True,
                               text=True, timeout=60)
        assert found.returncode == 0 and kc_hosts[key].public_key.to_line() in found.stdout
    reloaded = KnownHosts.load(path)
    assert accepts(reloaded, "db.example.com", 2222, kc_hosts["db"].public_key)
    assert accepts(kh, "web.example.com", 22, kc_hosts["web"].public_key)


def test_add_refuses_certificates_and_pattern_characters(kc_hosts):
    kh = KnownHosts()
    with pytest.raises(TypeError):
        kh.add("web", 22, host_cert(kc_hosts["ca"], kc_hosts["web"]))
    for bad in ("*.example.com", "a,b", "a b", "!x", ""):
        with pytest.raises(ValueError):
            kh.add(bad, 22, kc_hosts["web"].public_key)
    with pytest.raises(ValueError):
        kh.add("web", 0, kc_hosts["web"].public_key)


def test_invalid_lines_are_skipped_and_recorded(kc_hosts):
    text = "\n".join([
        "garbage",
        "@unknown-marker web.example.com " + kc_hosts["web"].public_key.to_line(),
        "web.example.com ssh-ed25519 AAAA!!!!",
        "|1|bm90MjBieXRlcw==|bm90MjBieXRlcw== " + kc_hosts["web"].public_key.to_line(),
        line("db.example.com", kc_hosts["db"]),
    ])
    kh = KnownHosts.parse(text)
    assert [n for n, _ in kh.invalid_lines] == [1, 2, 3, 4]
    assert len(kh.entries) == 1 and kh.entries[0].line_number == 5
    assert accepts(kh, "db.example.com", 22, kc_hosts["db"].public_key)


def test_check_refuses_objects_that_are_not_keys():
    with pytest.raises(HostKeyNotVerifiable):
        KnownHosts().check("web", 22, b"not a key")


# --------------------------------------------------------------------- @cert-authority


def ca_known_hosts(kc_hosts, pattern: str = "*.example.com", extra: tuple[str, ...] = ()):
    return KnownHosts.parse("\n".join([line(pattern, kc_hosts["ca"], "cert-authority"),
                                       *extra]))


def test_rule17_host_certificate_from_listed_ca_is_accepted(kc_hosts):
    kh = ca_known_hosts(kc_hosts)
    cert = host_cert(kc_hosts["ca"], kc_hosts["web"], principals=["web.example.com"])
    kh.check("web.example.com", 22, cert, now=NOW)
    kh.check("WEB.example.com", 22, cert, now=NOW)


def test_rule17_cert_authority_for_a_bare_host_also_matches_its_other_ports(kc_hosts):
    # OpenSSH: "checking without port identifier" (the CA, not plain keys)
    kh = ca_known_hosts(kc_hosts, pattern="web.example.com")
    cert = host_cert(kc_hosts["ca"], kc_hosts["web"], principals=["web.example.com"])
    kh.check("web.example.com", 2222, cert, now=NOW)
    plain = KnownHosts.parse(line("web.example.com", kc_hosts["web"]))
    with pytest.raises(HostKeyNotVerifiable, match=r"\[web.example.com\]:2222"):
        plain.check("web.example.com", 2222, kc_hosts["web"].public_key, now=NOW)
    elsewhere = ca_known_hosts(kc_hosts, pattern="[web.example.com]:2200")
    with pytest.raises(HostKeyNotVerifiable, match="not a @cert-authority"):
        elsewhere.check("web.example.com", 2222, cert, now=NOW)


def test_rule17_cert_authority_only_for_its_host_patterns(kc_hosts):
    kh = ca_known_hosts(kc_hosts, pattern="*.internal")
    cert = host_cert(kc_hosts["ca"], kc_hosts["web"], principals=["web.example.com"])
    with pytest.raises(HostKeyNotVerifiable, match="not a @cert-authority for this host"):
        kh.check("web.example.com", 22, cert, now=NOW)


def test_rule17_host_certificate_must_name_the_host(kc_hosts):
    kh = ca_known_hosts(kc_hosts)
    cert = host_cert(kc_hosts["ca"], kc_hosts["web"], principals=["db.example.com"])
    with pytest.raises(HostKeyNotVerifiable, match=r"rule 17.*matches no principal"):
        kh.check("web.example.com", 22, cert, now=NOW)


def test_rule17_expired_or_user_host_certificate_is_refused(kc_hosts):
    kh = ca_known_hosts(kc_hosts)
    cert = host_cert(kc_hosts["ca"], kc_hosts["web"])
    with pytest.raises(HostKeyNotVerifiable, match="expired"):
        kh.check("web.example.com", 22, cert, now=NOW + HOUR)
    user = host_cert(kc_hosts["ca"], kc_hosts["web"], cert_type=CERT_TYPE_USER)
    with pytest.raises(HostKeyNotVerifiable, match="not a host certificate"):
        kh.check("web.example.com", 22, user, now=NOW)


def test_rule18_certificate_from_unknown_ca_is_not_accepted(kc_hosts):
    kh = ca_known_hosts(kc_hosts)
    forged = host_cert(kc_hosts["other_ca"], kc_hosts["attacker"])
    with pytest.raises(HostKeyNotVerifiable, match="not a @cert-authority"):
        kh.check("web.example.com", 22, forged, now=NOW)


def test_rule18_unknown_ca_falls_back_only_to_the_same_plain_key(kc_hosts):
    kh = ca_known_hosts(kc_hosts, extra=(line("web.example.com", kc_hosts["web"]),))
    # The certified key is pinned as a plain key: accepting it is what OpenSSH does.
    kh.check("web.example.com", 22, host_cert(kc_hosts["other_ca"], kc_hosts["web"]), now=NOW)
    # A different key under an unknown CA is a changed key, not a fallback success.
    with pytest.raises(HostKeyNotVerifiable, match="has changed"):
        kh.check("web.example.com", 22, host_cert(kc_hosts["other_ca"], kc_hosts["attacker"]),
                 now=NOW)


def test_rule18_invalid_certificate_from_trusted_ca_does_not_fall_back(kc_hosts):
    # The plain key is listed too, but a CA we trust issued a certificate that fails:
    # that verdict is final.
    kh = ca_known_hosts(kc_hosts, extra=(line("web.example.com", kc_hosts["web"]),))
    expired = host_cert(kc_hosts["ca"], kc_hosts["web"])
    with pytest.raises(HostKeyNotVerifiable, match="expired"):
        kh.check("web.example.com", 22, expired, now=NOW + 2 * HOUR)


def test_rule5_certificate_on_cert_authority_line_is_ignored(kc_hosts):
    ca_cert = host_cert(kc_hosts["other_ca"], kc_hosts["ca"], principals=["*"])
    kh = KnownHosts.parse(f"@cert-authority * {ca_cert.to_line()}\n"
                          f"web.example.com {ca_cert.to_line()}")
    assert [n for n, _ in kh.invalid_lines] == [1, 2] and kh.entries == ()
    cert = host_cert(kc_hosts["ca"], kc_hosts["web"])
    with pytest.raises(HostKeyNotVerifiable):
        kh.check("web.example.com", 22, cert, now=NOW)


# ----------------------------------------------------------------------------- @revoked


def test_revoked_plain_key_is_refused_even_when_listed(kc_hosts):
    kh = KnownHosts.parse("\n".join([line("web.example.com", kc_hosts["web"]),
                                     line("*", kc_hosts["web"], "revoked")]))
    with pytest.raises(HostKeyNotVerifiable, match="@revoked"):
        kh.check("web.example.com", 22, kc_hosts["web"].public_key)


def test_revoked_key_is_refused_whatever_the_host_pattern(kc_hosts):
    kh = KnownHosts.parse("\n".join([line("web.example.com", kc_hosts["web"]),
                                     line("elsewhere.example.org", kc_hosts["web"], "revoked")]))
    assert not accepts(kh, "web.example.com", 22, kc_hosts["web"].public_key)


def test_rule17_revoked_ca_or_certified_key_refuses_the_certificate(kc_hosts):
    cert = host_cert(kc_hosts["ca"], kc_hosts["web"])
    for revoked in (kc_hosts["ca"], kc_hosts["web"]):
        kh = ca_known_hosts(kc_hosts, extra=(line("*", revoked, "revoked"),))
        with pytest.raises(HostKeyNotVerifiable, match="@revoked"):
            kh.check("web.example.com", 22, cert, now=NOW)
    kh = KnownHosts.parse(f"{line('*.example.com', kc_hosts['ca'], 'cert-authority')}\n"
                          f"@revoked * {cert.to_line()}")
    with pytest.raises(HostKeyNotVerifiable, match="@revoked"):
        kh.check("web.example.com", 22, cert, now=NOW)
    with pytest.raises(HostKeyNotVerifiable, match="@revoked"):
        kh.check("web.example.com", 22, host_cert(kc_hosts["ca"], kc_hosts["web"], serial=2),
                 now=NOW)


def test_unusable_revoked_line_fails_parsing(kc_hosts):
    with pytest.raises(KeyFormatError, match="line 2: unusable @revoked"):
        KnownHosts.parse(line("web.example.com", kc_hosts["web"]) + "\n@revoked * ssh-ed25519 AAAA")


# ----------------------------------------------------------------------------- fuzzing


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_parse_raises_only_protocol_errors(text):
    try:
        KnownHosts.parse(text)
    except ProtocolError:
        pass


_FUZZ_KEY_LINE = PrivateKey.generate().public_key.to_line()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab.*?!,[]:2", max_size=20), st.text(alphabet="ab.2", max_size=12))
def test_pattern_matching_never_raises(patterns, host):
    kh = KnownHosts.parse(f"{patterns or 'x'} {_FUZZ_KEY_LINE}")
    for entry in kh.entries:
        assert entry.matches(host) in (True, False)
