"""`jumpgate signup / login / status / logout` driven as a script would: stdin lines,
JUMPGATE_HOME in a tmp dir, the real web role and AuthService in process (the CLI
functions run in a worker thread with their own trio.run, as they do from main)."""
from __future__ import annotations

import argparse
import dataclasses
import io
import re
import stat
import sys
import time

import pytest
import trio

from appliance.cli import account, status as status_cli
from appliance.cli.errors import CliError
from appliance.client.profile import ENV_HOME, ClientPaths, Profile
from appliance.client.profiles import ProfileStore
from appliance.web.tls import invite_token
from ssh_proto.errors import HostKeyNotVerifiable
from ssh_proto.keys import PrivateKey, load_identity, parse_public_line
from ssh_proto.known_hosts import KnownHosts

from _web_helpers import CLUSTER, PASSWORD, PROXY_SSH, running_cluster

OTHER_PIN = "sha256:" + "A" * 43


@pytest.fixture
def home(tmp_path, monkeypatch) -> ClientPaths:
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "client" / ".jumpgate"))
    # login starts a session daemon; forked from the test process it would outlive the test
    # (tests/e2e/test_session_daemon.py checks the daemon login starts, as real processes)
    monkeypatch.setenv("JUMPGATE_MUX", "0")
    return ClientPaths.default()


async def run_cli(monkeypatch, func, lines=(), **flags) -> int:
    """Run ``func(Namespace(**flags))`` with ``lines`` as its (non-tty) stdin."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    return await trio.to_thread.run_sync(func, argparse.Namespace(**flags))


def login_flags(**overrides):
    flags = {"proxy": None, "user": None, "ttl": None, "ca_pin": None, "insecure": False}
    flags.update(overrides)
    return flags


async def signup_alice(cluster, monkeypatch, capsys, *, use_url: bool = False) -> str:
    """Run `jumpgate signup` for a fresh alice; return the otp URI it printed."""
    token = await cluster.invite("alice", ("alice", "root"))
    otp_uri = (await cluster.service.get_invite(token)).otp_uri
    target = f"https://{cluster.addr}/web/invite/{token}" if use_url else token
    proxy = None if use_url else cluster.addr
    status = await run_cli(monkeypatch, account.signup,
                           [PASSWORD, PASSWORD, cluster.code(otp_uri)], proxy=proxy, token=target)
    assert status == 0
    out, err = capsys.readouterr()
    assert otp_uri in out and PASSWORD not in out + err
    assert "\u2584" in out or "\u2580" in out  # the QR code, in half-block characters
    return otp_uri


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_signup_login_status_logout(tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        # status judges the certificate at the cluster's time: each TOTP code moved that clock a
        # step (30 s) ahead of the wall clock, past the certificate's 60 s backdating
        monkeypatch.setattr(status_cli, "clock", cluster.clock)
        otp_uri = await signup_alice(cluster, monkeypatch, capsys, use_url=True)
        saved = Profile.load(home)
        assert (saved.user, saved.proxy, saved.web_pin) == ("alice", cluster.addr, cluster.web.pin)
        assert await run_cli(monkeypatch, status_cli.status) == 1
        assert "Certificate: none (not logged in)" in capsys.readouterr().out

        assert await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)],
                             **login_flags(ttl="1h")) == 0
        out, err = capsys.readouterr()
        assert out.startswith("logged in as alice, valid until ") and PASSWORD not in out + err

        key, cert = load_identity(home.identity_path)
        assert cert.principals == ("alice", "root") and cert.public_key == key.public_key
        assert cert.valid_before - cluster.clock.now <= 3600
        assert _mode(home.home) == 0o700
        for path in (home.identity_path, home.cert_path, home.known_hosts_path,
                     home.profile_path, home.public_key_path):
            assert _mode(path) == 0o600 and path.is_symlink(), path  # the current profile's files
        own = ProfileStore(home.home).paths_for(cluster.addr, "alice")
        for directory in (own.home, own.home.parent, own.home.parent.parent):
            assert _mode(directory) == 0o700, directory
        profile = Profile.load(home)
        assert (profile.cluster, profile.proxy_ssh, profile.logins) == (CLUSTER, PROXY_SSH,
                                                                        ("alice", "root"))
        assert profile.expires == cert.valid_before

        # known_hosts trusts what the cluster's host CA certifies for the cluster's names
        # (the proxy, *.CLUSTER), and nothing else: the old line was "@cert-authority *" (J6).
        host_key = PrivateKey.generate("ssh-ed25519")
        host_cert = await cluster.service.sign_host_cert("db1", host_key.public_key.blob, ["db1.example.com"])
        known = KnownHosts.load(home.known_hosts_path)
        known.check(f"db1.{CLUSTER}", 3022, parse_public_line(host_cert.cert)[0], now=cluster.clock.now)
        for host in ("db1.example.com", "github.com"):
            with pytest.raises(HostKeyNotVerifiable):
                known.check(host, 22, parse_public_line(host_cert.cert)[0], now=cluster.clock.now)

        assert await run_cli(monkeypatch, status_cli.status) == 0
        out = capsys.readouterr().out
        for text in ("> Profile:", "alice", "alice, root", CLUSTER, cluster.addr, "Valid until", "left)"):
            assert text in out

        assert await run_cli(monkeypatch, account.logout) == 0
        assert capsys.readouterr().out.strip() == f"logged out alice at {cluster.addr}"
        assert not any(p.exists() for p in (home.identity_path, home.cert_path, home.known_hosts_path,
                                            home.profile_path, home.public_key_path))
        assert not list((home.home / "profiles").rglob("*"))  # the profile's directory is gone too
        assert ProfileStore(home.home).known_pin(cluster.addr) == cluster.web.pin  # the pin stays
        assert await run_cli(monkeypatch, status_cli.status) == 1


async def test_second_login_makes_a_fresh_key(tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        otp_uri = await signup_alice(cluster, monkeypatch, capsys)
        await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)],
                      **login_flags())
        first, _ = load_identity(home.identity_path)
        await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)],
                      **login_flags(proxy=cluster.addr, user="alice"))
        second, cert = load_identity(home.identity_path)
        assert first.public_key != second.public_key and cert.public_key == second.public_key


async def test_status_reports_an_expired_certificate(tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        otp_uri = await signup_alice(cluster, monkeypatch, capsys)
        await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)],
                      **login_flags())
        cert, _ = parse_public_line(home.cert_path.read_text())
        capsys.readouterr()
        # what counts is the certificate's own validity, not what profile.json remembers
        monkeypatch.setattr(status_cli, "clock", lambda: cert.valid_before + 1)
        assert await run_cli(monkeypatch, status_cli.status) == 1
        out = capsys.readouterr().out
        assert "Expired:" in out and "Valid until" not in out


async def test_signup_gives_up_after_three_short_or_mismatched_passwords_and_sends_nothing(
        tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        token = await cluster.invite()
        with pytest.raises(CliError, match="at least 12 characters \\(3 tries\\)"):
            await run_cli(monkeypatch, account.signup, ["too short"] * 3, proxy=cluster.addr, token=token)
        with pytest.raises(CliError, match="do not match \\(3 tries\\)"):
            await run_cli(monkeypatch, account.signup, [PASSWORD, PASSWORD + "x"] * 3,
                          proxy=cluster.addr, token=token)
        assert "try again" in capsys.readouterr().err
        assert Profile.load(home) is None
        # nothing was sent: the invite still works
        assert (await cluster.service.get_invite(token)).user == "alice"


async def test_signup_asks_again_after_a_short_password_a_mismatch_and_a_wrong_code(
        tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        token = await cluster.invite()
        otp_uri = (await cluster.service.get_invite(token)).otp_uri
        answers = ["too short",                      # 1: too short
                   PASSWORD, PASSWORD + "x",         # 2: not the same twice
                   PASSWORD, PASSWORD,               # 3: good
                   "000000",                         # a wrong code: the invite is not used up
                   cluster.code(otp_uri)]
        assert await run_cli(monkeypatch, account.signup, answers, proxy=cluster.addr, token=token) == 0
        out, err = capsys.readouterr()
        assert "at least 12 characters; try again" in err and "do not match; try again" in err
        assert "one-time code is wrong" in err and "try the next code" in err
        assert "Signed up as alice" in out and PASSWORD not in out + err
        assert (await cluster.service.get_user("alice")).status == "active"


async def test_signup_with_three_wrong_codes_or_a_used_invite_fails_in_one_line(
        tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        token = await cluster.invite()
        with pytest.raises(CliError, match="one-time code is wrong"):
            await run_cli(monkeypatch, account.signup, [PASSWORD, PASSWORD, "000000", "000001", "000002"],
                          proxy=cluster.addr, token=token)
        otp_uri = (await cluster.service.get_invite(token)).otp_uri
        await run_cli(monkeypatch, account.signup, [PASSWORD, PASSWORD, cluster.code(otp_uri)],
                      proxy=cluster.addr, token=token)
        with pytest.raises(CliError) as info:
            await run_cli(monkeypatch, account.signup, [PASSWORD, PASSWORD, "123456"],
                          proxy=cluster.addr, token=token)
        assert "already used" in str(info.value) and "\n" not in str(info.value)


async def test_signup_refuses_a_token_without_pin_and_a_proxy_with_another_pin(
        tmp_path, monkeypatch, home):
    async with running_cluster(tmp_path) as cluster:
        token = await cluster.invite()
        with pytest.raises(CliError, match="not an invite token"):
            await run_cli(monkeypatch, account.signup, proxy=cluster.addr,
                          token=token.split(".")[0])
        forged = token.split(".")[0] + "." + OTHER_PIN.removeprefix("sha256:")
        with pytest.raises(CliError, match="TLS pin mismatch"):
            await run_cli(monkeypatch, account.signup, proxy=cluster.addr, token=forged)


async def test_login_with_a_wrong_password_writes_nothing(tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        otp_uri = await signup_alice(cluster, monkeypatch, capsys)
        with pytest.raises(CliError, match="access denied"):
            await run_cli(monkeypatch, account.login, ["wrong password!", cluster.code(otp_uri)],
                          **login_flags())
        assert not home.identity_path.exists() and not home.cert_path.exists()


async def test_locked_user_gets_the_lock_message(tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        otp_uri = await signup_alice(cluster, monkeypatch, capsys)
        for _ in range(5):
            with pytest.raises(CliError):
                await run_cli(monkeypatch, account.login, ["wrong password!", "123456"],
                              **login_flags())
        with pytest.raises(CliError, match="locked"):
            await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)],
                          **login_flags())


async def test_first_login_elsewhere_needs_a_pin_or_insecure(tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        otp_uri = await signup_alice(cluster, monkeypatch, capsys)
        import shutil
        shutil.rmtree(home.home)  # another machine: no profile, no saved pin
        with pytest.raises(CliError, match="--ca-pin"):
            await run_cli(monkeypatch, account.login, **login_flags(proxy=cluster.addr,
                                                                    user="alice"))
        with pytest.raises(CliError, match="TLS pin mismatch"):
            await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)],
                          **login_flags(proxy=cluster.addr, user="alice", ca_pin=OTHER_PIN))
        capsys.readouterr()
        assert await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)],
                             **login_flags(proxy=cluster.addr, user="alice", insecure=True)) == 0
        err = capsys.readouterr().err
        assert "WARNING: --insecure" in err and "NOT checked" in err and cluster.web.pin in err
        # with a pin kept for the proxy, --insecure is ignored, and says so
        assert await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)],
                             **login_flags(insecure=True)) == 0
        assert "--insecure ignored" in capsys.readouterr().err
        assert Profile.load(home).web_pin == cluster.web.pin  # pinned from now on
        assert await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)],
                             **login_flags()) == 0
        shutil.rmtree(home.home)
        assert await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)],
                             **login_flags(proxy=cluster.addr, user="alice",
                                           ca_pin=cluster.web.pin)) == 0


async def test_login_checks_the_ttl_limit_before_asking_for_the_password(tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        await signup_alice(cluster, monkeypatch, capsys)
        # no answers on stdin: a prompt would fail with "no answer"; the limit is checked first
        with pytest.raises(CliError, match="--ttl 31h is above the cluster's limit of 30h"):
            await run_cli(monkeypatch, account.login, [], **login_flags(ttl="31h"))
        with pytest.raises(CliError, match="below the cluster's minimum of 1m"):
            await run_cli(monkeypatch, account.login, [], **login_flags(ttl="30s"))
        assert "Password" not in capsys.readouterr().err


async def test_login_checks_the_proxy_address_and_pin_before_asking_for_the_password(
        tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        await signup_alice(cluster, monkeypatch, capsys)
        with pytest.raises(CliError, match="cannot reach the proxy at 127.0.0.1:1"):
            await run_cli(monkeypatch, account.login, [], **login_flags(proxy="127.0.0.1:1", user="alice",
                                                                         ca_pin=cluster.web.pin))
        with pytest.raises(CliError, match="TLS pin mismatch"):
            await run_cli(monkeypatch, account.login, [], **login_flags(ca_pin=OTHER_PIN))
        assert "Password" not in capsys.readouterr().err


async def test_login_with_no_proxy_anywhere_says_what_to_pass(monkeypatch, home):
    with pytest.raises(CliError, match="--proxy"):
        await run_cli(monkeypatch, account.login, **login_flags())


async def test_logout_keeps_the_clusters_pin_so_the_next_login_needs_no_ca_pin(
        tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        otp_uri = await signup_alice(cluster, monkeypatch, capsys)
        await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)], **login_flags())
        assert await run_cli(monkeypatch, account.logout) == 0
        assert not home.cert_path.exists()
        capsys.readouterr()
        assert await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)],
                             **login_flags(proxy=cluster.addr, user="alice")) == 0
        assert "--insecure" not in capsys.readouterr().err and home.cert_path.exists()
        # the only proxy this machine knows is the default one
        assert await run_cli(monkeypatch, account.logout) == 0
        assert await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)],
                             **login_flags(user="alice")) == 0


async def test_logout_when_not_logged_in(monkeypatch, capsys, home):
    assert await run_cli(monkeypatch, account.logout) == 0
    assert capsys.readouterr().out.strip() == "not logged in"


async def test_signup_and_failed_login_of_another_user_never_touch_the_current_credentials(
        tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        otp_uri = await signup_alice(cluster, monkeypatch, capsys)
        await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)], **login_flags())
        files = {p: p.read_bytes() for p in (home.identity_path, home.cert_path, home.known_hosts_path)}

        bob = await cluster.invite("bob", ("bob",))
        bob_uri = (await cluster.service.get_invite(bob)).otp_uri
        await run_cli(monkeypatch, account.signup, [PASSWORD, PASSWORD, cluster.code(bob_uri)],
                      proxy=cluster.addr, token=bob)
        with pytest.raises(CliError, match="access denied"):
            await run_cli(monkeypatch, account.login, ["wrong password!", cluster.code(bob_uri)],
                          **login_flags(user="bob"))
        assert {p: p.read_bytes() for p in files} == files  # alice's key, certificate, known_hosts
        assert Profile.load(home).user == "alice"
        capsys.readouterr()
        assert await run_cli(monkeypatch, status_cli.status) == 0
        out = capsys.readouterr().out
        assert re.search(r"^> Profile: +alice @", out, re.M) and re.search(r"^  Profile: +bob @", out, re.M)


async def test_profiles_per_user_login_switches_and_logout_of_one_leaves_the_other(
        tmp_path, monkeypatch, capsys, home):
    async with running_cluster(tmp_path) as cluster:
        otp_uri = await signup_alice(cluster, monkeypatch, capsys)
        await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(otp_uri)], **login_flags())
        alice_cert = home.cert_path.read_bytes()
        bob = await cluster.invite("bob", ("bob",))
        bob_uri = (await cluster.service.get_invite(bob)).otp_uri
        await run_cli(monkeypatch, account.signup, [PASSWORD, PASSWORD, cluster.code(bob_uri)],
                      proxy=cluster.addr, token=bob)
        await run_cli(monkeypatch, account.login, [PASSWORD, cluster.code(bob_uri)], **login_flags(user="bob"))
        _, bob_cert = load_identity(home.identity_path)
        assert bob_cert.principals == ("bob",) and Profile.load(home).user == "bob"
        capsys.readouterr()

        # back to alice: her certificate is still valid, so no password is asked
        assert await run_cli(monkeypatch, account.login, [], **login_flags(user="alice")) == 0
        assert capsys.readouterr().out.startswith("switched to alice at ")
        assert home.cert_path.read_bytes() == alice_cert and Profile.load(home).user == "alice"
        assert await run_cli(monkeypatch, status_cli.status) == 0
        out = capsys.readouterr().out
        assert re.search(r"^> Profile: +alice @(.|\n)*^  Profile: +bob @", out, re.M)

        assert await run_cli(monkeypatch, account.logout, user="bob") == 0
        assert capsys.readouterr().out.strip() == f"logged out bob at {cluster.addr}"
        assert home.cert_path.read_bytes() == alice_cert  # alice stays current and logged in
        assert await run_cli(monkeypatch, account.logout, all=True) == 0
        assert not home.cert_path.exists() and ProfileStore(home.home).profiles() == []
