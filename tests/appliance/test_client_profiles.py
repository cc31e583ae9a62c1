"""Profiles per proxy and user (issue 14 item 19), the migration of the single-profile layout,
``jumpgate status``'s checks of the certificate (item 12) and OpenSSH's refusal of a private key
others can read (item 12). No network: credentials are signed here by a CA of the test's own."""
from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest

from appliance.cli import status as status_cli
from appliance.cli.errors import CliError
from appliance.cli.main import main
from appliance.client.keyfile import UnprotectedKeyError, load_private_key_file
from appliance.client.profile import ENV_HOME, ClientPaths, Profile, ProfileError
from appliance.client.profiles import LINKED_NAMES, ProfileStore
from appliance.client.ssh import ConnectError, load_credentials
from ssh_proto.certs import sign_certificate
from ssh_proto.keys import CERT_TYPE_HOST, CERT_TYPE_USER, PrivateKey, load_identity

PROXY = "jump.example.com:3080"
CLUSTER = "acme"
NOW = 1_900_000_000.0
PIN = "sha256:" + "B" * 43


def _cert(key: PrivateKey, ca: PrivateKey, *, kind: int = CERT_TYPE_USER, user: str = "alice",
          valid_before: float = NOW + 3600 * 5 + 59 * 60 + 30):
    return sign_certificate(ca, key.public_key, cert_type=kind, key_id=f"user:{user}", principals=[user, "root"],
                            valid_after=int(NOW - 60), valid_before=int(valid_before))


def write_profile(paths: ClientPaths, user: str, user_ca: PrivateKey, host_ca: PrivateKey, *,
                  record_user_ca: bool = True, **cert_args) -> Profile:
    key = PrivateKey.generate("ssh-ed25519")
    cert = _cert(key, user_ca, user=user, **cert_args)
    paths.write_credentials(key, cert, host_ca.public_key, f"{user}@{CLUSTER}",
                            trusted_for=["[jump.example.com]:3023", f"*.{CLUSTER}"])
    profile = Profile(proxy=PROXY, user=user, cluster=CLUSTER, web_pin=PIN, proxy_ssh="jump.example.com:3023",
                      expires=float(cert.valid_before), logins=cert.principals,
                      user_ca=user_ca.public_key.to_line() if record_user_ca else "", paths=paths)
    profile.save()
    return profile


def write_single_profile_layout(home: Path, user_ca: PrivateKey, host_ca: PrivateKey) -> None:
    """A home as the code before profiles (0.1, main at b03154e^) wrote it: every file at the
    top, and a profile.json without ``user_ca``."""
    write_profile(ClientPaths(home), "alice", user_ca, host_ca)
    record = json.loads((home / "profile.json").read_text())
    del record["user_ca"]
    (home / "profile.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def cas() -> tuple[PrivateKey, PrivateKey]:
    return PrivateKey.generate("ssh-ed25519"), PrivateKey.generate("ssh-ed25519")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / ".jumpgate"
    monkeypatch.setenv(ENV_HOME, str(home))
    monkeypatch.setattr(status_cli, "clock", lambda: NOW)
    return home


def _status(capsys) -> tuple[int, str]:
    code = status_cli.status(argparse.Namespace())
    return code, capsys.readouterr().out


# ---------------------------------------------------------------------------- migration


def test_single_profile_home_migrates_and_its_top_level_paths_keep_working(home, cas):
    write_single_profile_layout(home, *cas)
    before = {name: (home / name).read_bytes() for name in LINKED_NAMES}
    key_before, cert_before = load_identity(home / "key")

    store = ProfileStore.open(home)
    own = store.paths_for(PROXY, "alice")
    assert own.home == home / "profiles" / "jump.example.com_3080" / "alice"
    assert os.readlink(home / "current") == "profiles/jump.example.com_3080/alice"
    for name in LINKED_NAMES:  # the names `jumpgate config` wrote into ssh_config: same bytes
        assert (home / name).is_symlink() and (home / name).read_bytes() == before[name]
        assert (own.home / name).stat().st_ino == (home / name).stat().st_ino
        assert stat.S_IMODE((own.home / name).stat().st_mode) == 0o600
    key, cert = load_identity(home / "key")  # what ssh -i ~/.jumpgate/key does
    assert (key.public_key, cert) == (key_before.public_key, cert_before)
    profile = Profile.load(ClientPaths(home))
    assert profile.paths.home == own.home and profile.user == "alice"  # writes go to its own directory
    assert ProfileStore.open(home).profiles() == [profile]  # a second open changes nothing


def test_a_corrupt_single_profile_is_left_in_place_not_moved_or_deleted(home, cas):
    write_single_profile_layout(home, *cas)
    (home / "profile.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        ProfileStore.open(home)
    assert (home / "key").is_file() and not (home / "key").is_symlink()
    assert not (home / "profiles").exists()


def test_profile_directories_refuse_names_that_are_not_user_names(home):
    store = ProfileStore(home)
    for user in ("../x", "a/b", "%h", "~root", ""):
        with pytest.raises(ProfileError):
            store.paths_for(PROXY, user)
    assert store.paths_for("[2001:db8::1]:3080", "bob").home.parent.name == "2001_db8__1_3080"


def test_switching_profiles_moves_every_top_level_name_at_once(home, cas):
    store = ProfileStore.open(home)
    alice = write_profile(store.paths_for(PROXY, "alice"), "alice", *cas)
    bob = write_profile(store.paths_for(PROXY, "bob"), "bob", *cas)
    store.switch(alice.paths)
    assert Profile.load(ClientPaths(home)).user == "alice"
    store.switch(bob.paths)
    assert Profile.load(ClientPaths(home)).user == "bob"
    assert load_identity(home / "key")[1].key_id == "user:bob"
    assert store.remove(bob) and store.current_paths() is None
    assert load_identity(alice.identity_path)[1].key_id == "user:alice"  # alice's files untouched


# ------------------------------------------------------------------------------ status


def test_status_shows_time_remaining_of_a_verified_certificate(home, capsys, cas):
    store = ProfileStore.open(home)
    store.switch(write_profile(store.paths_for(PROXY, "alice"), "alice", *cas).paths)
    code, out = _status(capsys)
    assert code == 0, out
    assert "Valid until:" in out and "(5h 59m left)" in out and out.startswith("> Profile:")


@pytest.mark.parametrize("damage, words", [
    (lambda p, cas: p.cert_path.write_text("garbage\n"), "cannot be read"),
    (lambda p, cas: p.cert_path.write_text(p.paths.public_key_path.read_text()), "holds no certificate"),
    (lambda p, cas: p.cert_path.write_text(
        _cert(PrivateKey.generate("ssh-ed25519"), cas[0]).to_line() + "\n"), "not a certificate for this profile's key"),
    (lambda p, cas: p.cert_path.write_text(
        _cert(load_private_key_file(p.identity_path), cas[0], kind=CERT_TYPE_HOST).to_line() + "\n"),
     "host certificate, not a user certificate"),
    (lambda p, cas: p.cert_path.write_text(
        _cert(load_private_key_file(p.identity_path), PrivateKey.generate("ssh-ed25519")).to_line() + "\n"),
     "not signed by the user CA of cluster 'acme'"),
], ids=["garbage", "plain-key", "other-key", "host-cert", "foreign-ca"])
def test_status_says_what_is_wrong_with_a_certificate_instead_of_valid_until(home, capsys, cas, damage, words):
    store = ProfileStore.open(home)
    profile = write_profile(store.paths_for(PROXY, "alice"), "alice", *cas)
    store.switch(profile.paths)
    damage(profile, cas)
    code, out = _status(capsys)
    assert code == 1
    assert "Certificate: INVALID:" in out and words in out and "Valid until" not in out, out


def test_status_of_an_expired_certificate_says_expired(home, capsys, cas):
    store = ProfileStore.open(home)
    store.switch(write_profile(store.paths_for(PROXY, "alice"), "alice", *cas, valid_before=NOW - 1).paths)
    code, out = _status(capsys)
    assert code == 1 and "Expired:" in out and "jumpgate login --proxy" in out


# ----------------------------------------------------------------------- key permissions


OPENSSH_WORDS = ("UNPROTECTED PRIVATE KEY FILE!", "Permissions 0644 for '{}' are too open",
                 "It is required that your private key files are NOT accessible by others")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_private_key_others_can_read_is_refused_in_openssh_words(home, cas, mode):
    store = ProfileStore.open(home)
    profile = write_profile(store.paths_for(PROXY, "alice"), "alice", *cas)
    store.switch(profile.paths)
    os.chmod(profile.identity_path, mode)
    with pytest.raises(UnprotectedKeyError, match=f"Permissions {mode:04o} for"):
        load_private_key_file(profile.identity_path)
    with pytest.raises(ConnectError) as info:  # jumpgate ssh/scp/ls/config and the session daemon
        load_credentials(Profile.load(ClientPaths(home)))
    if mode == 0o644:
        for words in OPENSSH_WORDS:
            assert words.format(profile.identity_path) in str(info.value)
    os.chmod(profile.identity_path, 0o600)
    assert load_credentials(Profile.load(ClientPaths(home))).user == "alice"


def test_status_reports_a_key_others_can_read(home, capsys, cas):
    store = ProfileStore.open(home)
    profile = write_profile(store.paths_for(PROXY, "alice"), "alice", *cas)
    store.switch(profile.paths)
    os.chmod(profile.identity_path, 0o644)
    code, out = _status(capsys)
    assert code == 1 and "UNPROTECTED PRIVATE KEY FILE!" in out


def test_ctl_identity_others_can_read_is_refused(tmp_path, cas, capsys):
    paths = ClientPaths(tmp_path / "admin")
    write_profile(paths, "alice", *cas)
    os.chmod(paths.identity_path, 0o644)
    code = main(["ctl", "--auth-server", "127.0.0.1:1", "--identity", str(paths.identity_path), "users", "ls"])
    err = capsys.readouterr().err
    assert code != 0 and "UNPROTECTED PRIVATE KEY FILE!" in err and "0644" in err
