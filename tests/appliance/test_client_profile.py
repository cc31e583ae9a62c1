"""The client's profile directory, prompts, TTL and pin parsing (no network)."""
from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from appliance.cli.account import parse_ttl
from appliance.cli.errors import CliError
from appliance.cli.prompts import prompt
from appliance.client.profile import ENV_HOME, ClientPaths, Profile, ProfileError, jumpgate_home
from appliance.web.tls import parse_pin, pin_from_token
from ssh_proto.certs import sign_certificate
from ssh_proto.keys import CERT_TYPE_HOST, CERT_TYPE_USER, PrivateKey, load_identity
from ssh_proto.errors import HostKeyNotVerifiable
from ssh_proto.known_hosts import KnownHosts


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _user_cert(key: PrivateKey, ca: PrivateKey):
    return sign_certificate(ca, key.public_key, cert_type=CERT_TYPE_USER, key_id="user:alice",
                            principals=["alice", "root"], valid_after=0,
                            valid_before=2**40)


@pytest.fixture
def paths(tmp_path: Path) -> ClientPaths:
    return ClientPaths(tmp_path / "home" / ".jumpgate")


def test_home_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "jg"))
    assert jumpgate_home() == tmp_path / "jg"
    assert ClientPaths.default().identity_path == tmp_path / "jg" / "key"
    monkeypatch.delenv(ENV_HOME)
    assert jumpgate_home() == Path("~/.jumpgate").expanduser()


def test_profile_round_trip_with_private_modes(paths):
    profile = Profile(proxy="jump:3080", user="alice", cluster="c1", web_pin="sha256:x",
                      proxy_ssh="jump:3023", expires=1234.5, logins=("alice", "root"),
                      paths=paths)
    profile.save()
    assert Profile.load(paths) == profile
    assert _mode(paths.home) == 0o700
    assert _mode(paths.profile_path) == 0o600


def test_existing_wide_directory_is_tightened(paths):
    paths.home.mkdir(parents=True, mode=0o755)
    paths.home.chmod(0o755)
    Profile(proxy="p", user="u", paths=paths).save()
    assert _mode(paths.home) == 0o700


def test_missing_profile_loads_as_none(paths):
    assert Profile.load(paths) is None


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": 1}',
                                     b'{"version": 2, "proxy": "p"}', b"\xff\xfe",
                                     b"[" * 100_000])
def test_corrupt_profile_raises_profile_error(paths, content):
    paths.home.mkdir(parents=True)
    paths.profile_path.write_bytes(content)
    with pytest.raises(ProfileError):
        Profile.load(paths)


def test_profile_with_wrong_field_types_is_refused(paths):
    Profile(proxy="p", user="u", paths=paths).save()
    raw = json.loads(paths.profile_path.read_text())
    raw["logins"] = ["ok", 3]
    paths.profile_path.write_text(json.dumps(raw))
    with pytest.raises(ProfileError, match="logins"):
        Profile.load(paths)


PATTERNS = ["[jump.acme.io]:3023", "*.acme", "[*.acme]:*", "db1", "[db1]:*"]


def _host_cert(host_ca, principals, key_id="node:db1"):
    host_key = PrivateKey.generate("ssh-ed25519")
    return sign_certificate(host_ca, host_key.public_key, cert_type=CERT_TYPE_HOST, key_id=key_id,
                            principals=list(principals), valid_after=0, valid_before=2**40)


def test_credentials_are_0600_and_loadable_by_ssh_proto(paths):
    ca, host_ca, key = (PrivateKey.generate("ssh-ed25519") for _ in range(3))
    cert = _user_cert(key, ca)
    paths.write_credentials(key, cert, host_ca.public_key, comment="alice@c1", trusted_for=PATTERNS)
    for path in (paths.identity_path, paths.public_key_path, paths.cert_path,
                 paths.known_hosts_path):
        assert _mode(path) == 0o600, path
    loaded_key, loaded_cert = load_identity(paths.identity_path)
    assert loaded_key.public_key == key.public_key and loaded_cert == cert
    known = KnownHosts.load(paths.known_hosts_path)
    known.check("db1", 3022, _host_cert(host_ca, ["db1"]))  # trusted through the @cert-authority line


def test_j6_known_hosts_trusts_the_host_ca_for_the_clusters_names_only(paths):
    """The old line was '@cert-authority *': a cluster certificate then vouched for any host."""
    ca, host_ca, key = (PrivateKey.generate("ssh-ed25519") for _ in range(3))
    paths.write_credentials(key, _user_cert(key, ca), host_ca.public_key, trusted_for=PATTERNS)
    text = paths.known_hosts_path.read_text()
    assert text.startswith("@cert-authority [jump.acme.io]:3023,*.acme,[*.acme]:*,db1,[db1]:* ssh-ed25519 ")
    known = KnownHosts.load(paths.known_hosts_path)
    for host, port in (("jump.acme.io", 3023), ("web7.acme", 3022), ("web7.acme", 22), ("db1", 22), ("db1", 3022)):
        known.check(host, port, _host_cert(host_ca, [host]))
    for host, port in (("github.com", 22), ("jump.acme.io", 22), ("db2", 22), ("acme.evil.com", 22)):
        with pytest.raises(HostKeyNotVerifiable):
            known.check(host, port, _host_cert(host_ca, [host]))   # valid for the name, but not ours to vouch


def test_credentials_refused_for_a_certificate_of_another_key(paths):
    ca, key, other = (PrivateKey.generate("ssh-ed25519") for _ in range(3))
    with pytest.raises(ProfileError):
        paths.write_credentials(key, _user_cert(other, ca), ca.public_key, trusted_for=PATTERNS)
    assert not paths.identity_path.exists()


def test_clear_removes_every_file(paths):
    ca, key = PrivateKey.generate("ssh-ed25519"), PrivateKey.generate("ssh-ed25519")
    paths.write_credentials(key, _user_cert(key, ca), ca.public_key, trusted_for=PATTERNS)
    profile = Profile(proxy="p", user="u", expires=2**40, paths=paths)
    profile.save()
    assert profile.logged_in()
    assert profile.clear() is True
    assert sorted(paths.home.iterdir()) == []
    assert profile.clear() is False
    assert not profile.logged_in()


# ---------------------------------------------------------------------------- prompts


def test_prompts_read_one_line_each_from_non_tty_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret with spaces \r\n123456\n"))
    assert prompt("Password: ", secret=True) == "s3cret with spaces "
    assert prompt("Code: ") == "123456"
    err = capsys.readouterr().err
    assert "Password: " in err and "s3cret" not in err
    with pytest.raises(CliError, match="no answer"):
        prompt("Again: ")


def test_prompt_refuses_an_endless_line(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("x" * 10_000 + "\n"))
    with pytest.raises(CliError, match="too long"):
        prompt("Password: ", secret=True)


def test_cli_error_is_one_line():
    assert str(CliError("bad\nthing\r\n  here")) == "bad thing here"


# ------------------------------------------------------------------------ ttl and pins


@pytest.mark.parametrize("text,seconds", [("8h", 28800), ("30m", 1800), ("1h30m", 5400),
                                          ("90s", 90), ("3600", 3600), ("1d", 86400)])
def test_ttl_forms(text, seconds):
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "8x", "-5", "1.5h", "m30"])
def test_bad_ttl_is_a_cli_error(text):
    with pytest.raises(CliError):
        parse_ttl(text)


def test_pin_parsing_accepts_prefix_and_bare_forms():
    bare = "A" * 42 + "E"
    assert parse_pin(bare) == parse_pin("sha256:" + bare) == "sha256:" + bare
    assert pin_from_token("c2VjcmV0c2VjcmV0c2VjcmV0." + bare) == "sha256:" + bare
    for bad in ["sha256:short", "A" * 44, "A" * 42 + "!", "sha1:" + bare]:
        with pytest.raises(ValueError):
            parse_pin(bad)
    with pytest.raises(ValueError):
        pin_from_token("no-dot-here")


def test_profile_file_never_holds_secrets(paths):
    Profile(proxy="p", user="u", web_pin="sha256:abc", paths=paths).save()
    record = json.loads(paths.profile_path.read_text())
    assert set(record) == {"version", "proxy", "user", "cluster", "web_pin", "proxy_ssh",
                           "expires", "logins", "user_ca"}  # user_ca: a public key
    assert os.listdir(paths.home) == ["profile.json"]
