"""The cluster CAs (appliance/auth/ca.py): two Ed25519 CAs made once and kept in
storage, user and host certificates as the appliance doc fixes them (key ids,
principals never empty, roles extension, backdating), pins and export lines, and
OpenSSH's own ``ssh-keygen -L`` reading what we issue."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from appliance.auth.ca import (BACKDATE_SECONDS, GENERATION_EXTENSION, ROLES_EXTENSION, CAError, ClusterCA,
                               generation_of, parse_plain_public_key, pin_matches, pin_of, roles_from_certificate)
from appliance.storage import SQLiteStorage
from ssh_proto.certs import (CERT_TYPE_HOST, CERT_TYPE_USER, DEFAULT_USER_EXTENSIONS, validate_host_certificate,
                             validate_user_certificate)
from ssh_proto.errors import CertificateError, HostKeyNotVerifiable
from ssh_proto.keys import PrivateKey, load_private_key, parse_public_line
from ssh_proto.known_hosts import KnownHosts

NOW = 1_700_000_000.0


@pytest.fixture
async def storage():
    db = SQLiteStorage(":memory:", clock=lambda: NOW)
    yield db
    await db.aclose()


@pytest.fixture
async def ca(storage):
    return await ClusterCA.load_or_create(storage, "prod", clock=lambda: NOW)


@pytest.fixture
def key():
    return PrivateKey.generate("ssh-ed25519").public_key


async def test_load_or_create_makes_ed25519_user_and_host_cas_once(storage):
    first = await ClusterCA.load_or_create(storage, "prod")
    assert first.new_kinds == ("user", "host")
    assert first.user_ca_public.key_type == first.host_ca_public.key_type == "ssh-ed25519"
    assert first.user_ca_public != first.host_ca_public
    again = await ClusterCA.load_or_create(storage, "prod")
    assert again.new_kinds == ()
    assert (again.user_ca_public, again.host_ca_public) == (first.user_ca_public, first.host_ca_public)


async def test_ca_private_keys_stored_as_openssh_pem_and_never_shown(storage, ca):
    for kind, public in (("user", ca.user_ca_public), ("host", ca.host_ca_public)):
        record = await storage.get_ca(kind)
        assert record.private_key.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        assert load_private_key(record.private_key).public_key == public
        assert b"PRIVATE" not in repr(record).encode() and "PRIVATE" not in repr(ca)
    public_api = [ca.user_ca_line(), ca.host_ca_known_hosts_line(), ca.pin_for_host_ca()]
    assert not any("PRIVATE" in text for text in public_api)


async def test_data_dir_of_another_cluster_refused(storage, ca):
    with pytest.raises(CAError, match="belongs to cluster 'prod'"):
        await ClusterCA.load_or_create(storage, "staging")


async def test_user_cert_has_key_id_logins_default_extensions_and_validity(ca, key):
    cert = ca.sign_user(key, "alice", ["alice", "root"], (), 3600, NOW)
    assert cert.cert_type == CERT_TYPE_USER and cert.key_id == "user:alice"
    assert cert.principals == ("alice", "root")
    extensions = dict(cert.extensions)
    assert generation_of(cert) == 0 and extensions.pop(GENERATION_EXTENSION)
    assert extensions == dict(DEFAULT_USER_EXTENSIONS) and not cert.critical_options
    assert (cert.valid_after, cert.valid_before) == (NOW - BACKDATE_SECONDS, NOW + 3600)
    assert cert.signature_key == ca.user_ca_public and cert.public_key == key
    validate_user_certificate(cert, principal="root", trusted_cas=[ca.user_ca_public], now=NOW)
    with pytest.raises(CertificateError):
        validate_user_certificate(cert, principal="bob", trusted_cas=[ca.user_ca_public], now=NOW)
    with pytest.raises(CertificateError):  # the host CA does not vouch for users
        validate_user_certificate(cert, principal="root", trusted_cas=[ca.host_ca_public], now=NOW)


async def test_admin_role_carried_in_roles_extension(ca, key):
    cert = ca.sign_user(key, "alice", ["alice"], ["admin"], 3600, NOW)
    assert ROLES_EXTENSION in cert.extensions
    assert roles_from_certificate(cert) == ("admin",)
    assert roles_from_certificate(ca.sign_user(key, "bob", ["bob"], (), 3600, NOW)) == ()


async def test_cert_never_has_empty_principals(ca, key):
    with pytest.raises(CAError, match="no principals"):
        ca.sign_user(key, "alice", [], (), 3600, NOW)
    with pytest.raises(CAError, match="no principals"):
        ca.sign_host(key, "node", "web1", [], 3600, NOW)


@pytest.mark.parametrize("bad", ["", "a b", "x,y", "a\nb", "*", "ro\x00t"])
async def test_cert_principals_must_be_single_plain_names(ca, key, bad):
    with pytest.raises(CAError, match="invalid principal"):
        ca.sign_user(key, "alice", ["alice", bad], (), 3600, NOW)


async def test_non_positive_ttl_refused(ca, key):
    with pytest.raises(CAError):
        ca.sign_user(key, "alice", ["alice"], (), 0, NOW)


async def test_host_cert_key_id_is_role_colon_name_and_validates_for_its_principals(ca, key):
    cert = ca.sign_host(key, "node", "web1", ["web1", "web1.prod", "10.0.0.5", "web1"], 86400, NOW)
    assert cert.cert_type == CERT_TYPE_HOST and cert.key_id == "node:web1"
    assert cert.principals == ("web1", "web1.prod", "10.0.0.5")  # duplicates dropped
    assert not cert.extensions and not cert.critical_options
    for host in ("web1", "web1.prod", "10.0.0.5"):
        validate_host_certificate(cert, hostname=host, trusted_cas=[ca.host_ca_public], now=NOW)
    with pytest.raises(CertificateError):
        validate_host_certificate(cert, hostname="db1", trusted_cas=[ca.host_ca_public], now=NOW)


async def test_host_kind_must_be_node_proxy_or_auth(ca, key):
    for kind in ("node", "proxy", "auth"):
        assert ca.sign_host(key, kind, "h", ["h"], 60, NOW).key_id == f"{kind}:h"
    with pytest.raises(CAError, match="unknown host kind"):
        ca.sign_host(key, "user", "h", ["h"], 60, NOW)


async def test_a_certificate_is_never_certified(ca, key):
    cert = ca.sign_user(key, "alice", ["alice"], (), 3600, NOW)
    with pytest.raises(CAError):
        ca.sign_user(cert, "alice", ["alice"], (), 3600, NOW)
    with pytest.raises(CAError, match="certificate cannot be certified"):
        parse_plain_public_key(cert.blob)
    with pytest.raises(CAError, match="malformed"):
        parse_plain_public_key(b"\x00\x00\x00\x0bssh-ed25519junk")


async def test_pin_is_sha256_base64url_of_host_ca_blob(ca):
    pin = ca.pin_for_host_ca()
    assert pin == pin_of(ca.host_ca_public.blob)
    assert pin.startswith("sha256:") and len(pin) == 7 + 43 and "=" not in pin and "+" not in pin
    assert pin_matches(pin, ca.host_ca_public.blob)
    assert pin_matches(pin.removeprefix("sha256:"), ca.host_ca_public.blob)
    assert not pin_matches(pin, ca.user_ca_public.blob)
    assert not pin_matches(None, ca.host_ca_public.blob)


async def test_user_ca_export_is_a_trusted_user_ca_keys_line(ca):
    line = ca.user_ca_line()
    key, comment = parse_public_line(line)
    assert key == ca.user_ca_public and comment == "jumpgate-user-ca@prod"
    assert "\n" not in line


async def test_host_ca_export_is_a_cert_authority_known_hosts_line(ca, key):
    line = ca.host_ca_known_hosts_line()
    assert line.startswith("@cert-authority * ssh-ed25519 ")
    cert = ca.sign_host(key, "node", "web1", ["web1", "web1.prod"], 86400, NOW)
    known = KnownHosts.parse(line + "\n")
    known.check("web1.prod", 3022, cert, now=NOW)  # raises if not trusted
    stranger = await ClusterCA.load_or_create(SQLiteStorage(":memory:"), "prod")
    foreign = stranger.sign_host(key, "node", "web1", ["web1.prod"], 86400, NOW)
    with pytest.raises(HostKeyNotVerifiable):
        known.check("web1.prod", 3022, foreign, now=NOW)


async def test_host_ca_export_with_host_patterns(ca):
    line = ca.host_ca_known_hosts_line(["*.prod", "proxy.example.com"])
    assert line.startswith("@cert-authority *.prod,proxy.example.com ssh-ed25519 ")
    for bad in ([], ["a b"], ["x\n@cert-authority *"], [""]):
        with pytest.raises(CAError):
            ca.host_ca_known_hosts_line(bad)


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
async def test_ssh_keygen_reads_our_user_and_host_certificates(ca, key, tmp_path):
    user = ca.sign_user(key, "alice", ["alice", "root"], ["admin"], 3600, NOW)
    host = ca.sign_host(key, "node", "web1", ["web1", "web1.prod"], 86400, NOW)
    for name, cert in (("user-cert.pub", user), ("host-cert.pub", host)):
        (tmp_path / name).write_text(cert.to_line() + "\n")
    out = subprocess.run(["ssh-keygen", "-L", "-f", tmp_path / "user-cert.pub"], capture_output=True,
                         text=True, check=True).stdout
    assert "ssh-ed25519-cert-v01@openssh.com user certificate" in out
    assert 'Key ID: "user:alice"' in out
    assert ca.user_ca_public.fingerprint() in out
    principals = out.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["alice", "root"]
    assert "permit-pty" in out and ROLES_EXTENSION in out
    out = subprocess.run(["ssh-keygen", "-L", "-f", tmp_path / "host-cert.pub"], capture_output=True,
                         text=True, check=True).stdout
    assert "host certificate" in out and 'Key ID: "node:web1"' in out
    assert ca.host_ca_public.fingerprint() in out
