"""AuthService (appliance/auth/service.py, accounts.py, hosts.py): each business rule of the auth
service, by name.

Issue 3 and Teleport's defaults (docs/security.md A1-A6): invites 1 h and single use;
passwords >= 12; TOTP enrolment confirmed at signup; generic access_denied (no user
enumeration, T13); reused TOTP codes refused; 5 failures lock for 30 min; cert TTL 12 h
default, 1 min min, 30 h max; principals = the user's logins, never empty; join tokens
single use with a 30 min default TTL and only their sha256 stored; audit events for
everything.
Time is a FakeClock; nothing sleeps.
"""
from __future__ import annotations

import hashlib

import msgpack
import pytest
import trio

from _auth_helpers import CLUSTER, PASSWORD, FakeClock, make_env, new_key, otp_secret, signup
from appliance.auth import passwords, rejoin, totp
from appliance.auth.ca import pin_matches, roles_from_certificate
from appliance.auth.accounts import MAX_SIGNUP_ATTEMPTS
from appliance.auth.service import (HOST_CERT_TTL, LOCK_SECONDS, AuthService, AuthServiceError, CertResult,
                                    to_wire)
from appliance.storage import CARecord, SQLiteStorage, UserRecord
from ssh_proto.certs import validate_host_certificate, validate_user_certificate
from ssh_proto.errors import CertificateError
from ssh_proto.keys import parse_public_line

H = 3600


@pytest.fixture
async def env():
    env = await make_env()
    yield env
    await env.storage.aclose()


async def refused(code: str, call) -> AuthServiceError:
    with pytest.raises(AuthServiceError) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


async def login(env, seed, name="alice", password=PASSWORD, key=None, ttl=None, code=None):
    key = key or new_key()
    return await env.service.login(name, password, env.code(seed) if code is None else code,
                                   key.public_key.blob, ttl, "192.0.2.7")


async def audit_codes(env) -> list[str]:
    return [e.code for e in reversed(await env.service.list_audit(limit=1000))]


def cert_of(result):
    cert, _ = parse_public_line(result.cert)
    return cert


# ------------------------------------------------------------------- users and invites


async def test_create_user_returns_invite_valid_one_hour(env):
    invite = await env.service.create_user("alice", ["alice", "root"])
    assert invite.user == "alice" and invite.expires == env.clock.now + H
    assert len(invite.token) == 22  # 16 random bytes, base64url
    info = await env.service.get_invite(invite.token)
    assert info.user == "alice" and info.logins == ("alice", "root") and info.cluster == CLUSTER


async def test_invite_stored_only_as_sha256(env):
    invite = await env.service.create_user("alice", ["alice"])
    digest = hashlib.sha256(invite.token.encode()).hexdigest()
    assert (await env.storage.get_invite(digest)).user == "alice"


async def test_invite_shows_otpauth_uri_issuer_jumpgate_account_user_at_cluster(env):
    invite = await env.service.create_user("alice", ["alice"])
    uri = (await env.service.get_invite(invite.token)).otp_uri
    assert uri.startswith("otpauth://totp/Jumpgate:alice%40acme?") and "issuer=Jumpgate" in uri


async def test_invite_token_may_carry_the_web_pin_suffix(env):
    invite = await env.service.create_user("alice", ["alice"])
    assert (await env.service.get_invite(f"{invite.token}.AbCdEf")).user == "alice"


async def test_invite_single_use(env):
    invite = await env.service.create_user("alice", ["alice"])
    seed = otp_secret((await env.service.get_invite(invite.token)).otp_uri)
    await env.service.complete_signup(invite.token, PASSWORD, env.code(seed))
    await refused("already_used", env.service.get_invite(invite.token))
    env.clock.next_step()
    await refused("already_used", env.service.complete_signup(invite.token, "another password!", env.code(seed)))


async def test_invite_expires_after_one_hour(env):
    invite = await env.service.create_user("alice", ["alice"])
    seed = otp_secret((await env.service.get_invite(invite.token)).otp_uri)
    env.clock.advance(H - 1)
    await env.service.get_invite(invite.token)
    env.clock.advance(1)
    await refused("expired", env.service.get_invite(invite.token))
    await refused("expired", env.service.complete_signup(invite.token, PASSWORD, env.code(seed)))


async def test_unknown_or_malformed_invite_not_found(env):
    for token in ("A" * 22, "", "../../etc/passwd", None, "x" * 1000):
        await refused("not_found", env.service.get_invite(token))


async def test_signup_password_at_least_12_characters(env):
    invite = await env.service.create_user("alice", ["alice"])
    seed = otp_secret((await env.service.get_invite(invite.token)).otp_uri)
    error = await refused("weak_password", env.service.complete_signup(invite.token, "short pw 11", env.code(seed)))
    assert "12" in error.message and "short pw 11" not in error.message
    await refused("weak_password", env.service.complete_signup(invite.token, "x" * 129, env.code(seed)))
    await env.service.complete_signup(invite.token, "exactly 12 c", env.code(seed))  # the invite survived


async def test_signup_totp_enrolment_confirmed_by_current_code(env):
    invite = await env.service.create_user("alice", ["alice"])
    seed = otp_secret((await env.service.get_invite(invite.token)).otp_uri)
    await refused("access_denied", env.service.complete_signup(invite.token, PASSWORD, "000000"))
    stale = totp.code_at(seed, env.clock.now - 90)
    await refused("access_denied", env.service.complete_signup(invite.token, PASSWORD, stale))
    assert not (await env.storage.get_user("alice")).signed_up
    await env.service.complete_signup(invite.token, PASSWORD, env.code(seed))
    assert (await env.storage.get_user("alice")).signed_up


async def test_a8_guessing_an_invites_code_spends_the_invite_after_five_attempts(env):
    # The attack: someone holding an invite link (not the authenticator) guesses codes.
    invite = await env.service.create_user("alice", ["alice"])
    seed = otp_secret((await env.service.get_invite(invite.token)).otp_uri)
    right = env.code(seed)
    wrong = [f"{(int(right) + n) % 10**6:06d}" for n in range(1, MAX_SIGNUP_ATTEMPTS + 1)]
    for guess in wrong[:MAX_SIGNUP_ATTEMPTS]:
        await refused("access_denied", env.service.complete_signup(invite.token, PASSWORD, guess))
    error = await refused("expired", env.service.complete_signup(invite.token, PASSWORD, right))
    assert "attempts" in error.message and right not in error.message
    assert not (await env.storage.get_user("alice")).signed_up
    [last] = await env.service.list_audit(limit=1, types=["user.signup"])
    assert not last.success and last.fields["reason"] == "too many attempts"
    # a weak password is refused before the count: it spends nothing
    fresh = await env.service.reset_user("alice")
    seed = otp_secret((await env.service.get_invite(fresh.token)).otp_uri)
    for _ in range(MAX_SIGNUP_ATTEMPTS + 2):
        await refused("weak_password", env.service.complete_signup(fresh.token, "short", env.code(seed)))
    await env.service.complete_signup(fresh.token, PASSWORD, env.code(seed))
    assert (await env.storage.get_user("alice")).signed_up


async def test_a8_forty_concurrent_guesses_check_at_most_five_codes(env, monkeypatch):
    invite = await env.service.create_user("alice", ["alice"])
    seed = otp_secret((await env.service.get_invite(invite.token)).otp_uri)
    checked = []
    real_verify = totp.verify

    def counting_verify(*args, **kwargs):
        checked.append(args[1])
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(totp, "verify", counting_verify)
    right = env.code(seed)
    outcomes: list[str] = []

    async def guess(n: int) -> None:
        code = f"{(int(right) + 1 + n) % 10**6:06d}"
        try:
            await env.service.complete_signup(invite.token, PASSWORD, code)
            outcomes.append("in")
        except AuthServiceError as exc:
            outcomes.append(exc.code)

    async with trio.open_nursery() as nursery:
        for n in range(40):
            nursery.start_soon(guess, n)
    assert len(checked) <= MAX_SIGNUP_ATTEMPTS and "in" not in outcomes
    assert outcomes.count("expired") >= 40 - MAX_SIGNUP_ATTEMPTS
    await refused("expired", env.service.complete_signup(invite.token, PASSWORD, right))


async def test_signup_code_cannot_be_reused_for_login(env):
    invite = await env.service.create_user("alice", ["alice"])
    seed = otp_secret((await env.service.get_invite(invite.token)).otp_uri)
    code = env.code(seed)
    await env.service.complete_signup(invite.token, PASSWORD, code)
    await refused("access_denied", login(env, seed, code=code))


@pytest.mark.parametrize("name", ["Alice", "../x", "a b", "", "x" * 33, "-x", "1abc", "root;id", "al\nice", None])
async def test_rule_t22_invalid_user_names_refused(env, name):
    await refused("bad_request", env.service.create_user(name, ["alice"]))


@pytest.mark.parametrize("logins", [["root", "../etc"], ["ro ot"], ["*"], "alice", [1], ["a,b"]])
async def test_rule_t22_logins_validated_like_user_names(env, logins):
    await refused("bad_request", env.service.create_user("alice", logins))


async def test_user_without_logins_refused_no_empty_principals(env):
    error = await refused("bad_request", env.service.create_user("alice", []))
    assert "at least one login" in error.message


async def test_user_names_at_the_limits_accepted(env):
    await env.service.create_user("_a", ["a" * 32, "svc-1.x_y"])
    await env.service.create_user("b" * 32, ["b"])


async def test_unknown_role_refused(env):
    await refused("bad_request", env.service.create_user("alice", ["alice"], ["superuser"]))


async def test_create_user_twice_already_exists(env):
    await env.service.create_user("alice", ["alice"])
    await refused("already_exists", env.service.create_user("alice", ["root"]))


async def test_list_users_shows_status_without_secrets(env):
    await env.service.create_user("bob", ["bob"])
    await signup(env, "alice", roles=("admin",))
    users = {u.name: u for u in await env.service.list_users()}
    assert users["bob"].status == "invited" and users["alice"].status == "active"
    assert users["alice"].roles == ("admin",)
    packed = msgpack.packb(to_wire(list(users.values())))
    assert b"scrypt" not in packed
    assert (await env.service.get_user("alice")).logins == ("alice", "root")
    await refused("not_found", env.service.get_user("carol"))


async def test_delete_user_then_login_denied(env):
    seed = await signup(env)
    await env.service.delete_user("alice")
    await refused("access_denied", login(env, seed))
    await refused("not_found", env.service.delete_user("alice"))


async def test_reset_user_clears_password_and_totp_and_issues_new_invite(env):
    invite = await env.service.create_user("alice", ["alice"])
    seed = otp_secret((await env.service.get_invite(invite.token)).otp_uri)
    await env.service.complete_signup(invite.token, PASSWORD, env.code(seed))
    env.clock.next_step()
    fresh = await env.service.reset_user("alice")
    assert fresh.token != invite.token and fresh.expires == env.clock.now + H
    await refused("access_denied", login(env, seed))  # old password and seed no longer work
    await refused("not_found", env.service.get_invite(invite.token))
    new_seed = otp_secret((await env.service.get_invite(fresh.token)).otp_uri)
    assert new_seed != seed
    env.clock.next_step()
    await env.service.complete_signup(fresh.token, "a new password!", env.code(new_seed))
    env.clock.next_step()
    await login(env, new_seed, password="a new password!")
    await refused("not_found", env.service.reset_user("nobody"))


# --------------------------------------------------------------------------------- login


async def test_login_issues_cert_for_the_users_logins_only(env):
    seed = await signup(env, logins=("alice", "root"))
    key = new_key()
    result = await login(env, seed, key=key)
    cert = cert_of(result)
    assert cert.public_key == key.public_key and cert.key_id == "user:alice"
    assert cert.principals == ("alice", "root") and result.logins == ("alice", "root")
    assert result.cluster == CLUSTER and result.user == "alice"
    user_ca, _ = parse_public_line(result.user_ca)
    for login_name in ("alice", "root"):
        validate_user_certificate(cert, principal=login_name, trusted_cas=[user_ca], now=env.clock.now)
    with pytest.raises(CertificateError):
        validate_user_certificate(cert, principal="bob", trusted_cas=[user_ca], now=env.clock.now)
    assert result.host_ca.startswith("@cert-authority * ssh-ed25519 ")


async def test_login_cert_carries_admin_role(env):
    seed = await signup(env, roles=("admin",))
    result = await login(env, seed)
    assert roles_from_certificate(cert_of(result)) == ("admin",) and result.roles == ("admin",)


async def test_cert_ttl_default_12h(env):
    seed = await signup(env)
    result = await login(env, seed)
    assert result.expires == int(env.clock.now + 12 * H)
    assert cert_of(result).valid_before == int(env.clock.now + 12 * H)


async def test_cert_ttl_max_30h(env):
    seed = await signup(env)
    await refused("bad_request", login(env, seed, ttl=30 * H + 1))
    result = await login(env, seed, ttl=30 * H)
    assert result.expires == int(env.clock.now + 30 * H)


async def test_cert_ttl_min_1_minute(env):
    seed = await signup(env)
    await refused("bad_request", login(env, seed, ttl=59))
    await refused("bad_request", login(env, seed, ttl="3600"))
    assert (await login(env, seed, ttl=60)).expires == int(env.clock.now + 60)


async def test_cert_never_has_empty_principals(env):
    seed = await signup(env)
    record = await env.storage.get_user("alice")
    # A record damaged behind the service's back must not yield a "valid for anyone" cert.
    await env.storage.put_user(UserRecord(record.name, (), record.roles, record.password_hash,
                                          record.totp_secret, record.last_totp_counter))
    await refused("bad_request", login(env, seed))
    await refused("bad_request", env.service.sign_user_cert("alice", new_key().public_key.blob))


async def test_login_accepts_a_pub_line_and_refuses_certificates_or_junk(env):
    seed = await signup(env)
    key = new_key()
    result = await env.service.login("alice", PASSWORD, env.code(seed), key.public_key.to_line("me@laptop"))
    env.clock.next_step()
    await refused("bad_request", env.service.login("alice", PASSWORD, env.code(seed), cert_of(result).blob))
    await refused("bad_request", env.service.login("alice", PASSWORD, env.code(seed), b"garbage"))
    await refused("bad_request", env.service.login("alice", PASSWORD, env.code(seed), 42))


async def test_login_errors_are_generic_no_user_enumeration(env):
    seed = await signup(env)
    await env.service.create_user("bob", ["bob"])  # invited, never signed up
    errors = [
        await refused("access_denied", login(env, seed, name="nobody")),
        await refused("access_denied", login(env, seed, name="bob")),
        await refused("access_denied", login(env, seed, name="Not A Name!")),
        await refused("access_denied", login(env, seed, password="wrong password!!")),
        await refused("access_denied", login(env, seed, code="000000")),
    ]
    assert len({e.message for e in errors}) == 1
    assert PASSWORD not in errors[0].message and "wrong password" not in errors[0].message.split(":")[0]


async def test_unknown_user_still_hashes_a_dummy_password(env, monkeypatch):
    calls = []
    real = passwords._scrypt
    monkeypatch.setattr(passwords, "_scrypt", lambda *a: calls.append(a) or real(*a))
    await refused("access_denied", env.service.login("nobody", PASSWORD, "123456", new_key().public_key.blob))
    assert len(calls) == 1


async def test_reused_totp_code_refused(env):
    seed = await signup(env)
    code = env.code(seed)
    await login(env, seed, code=code)
    error = await refused("access_denied", login(env, seed, code=code))
    assert "once" in error.message
    env.clock.advance(20)  # the same step, still inside the window
    await refused("access_denied", login(env, seed, code=code))
    env.clock.next_step()
    await login(env, seed)


async def test_totp_code_from_an_earlier_step_refused_after_a_later_one(env):
    seed = await signup(env)
    older = env.code(seed)
    env.clock.next_step()
    await login(env, seed)  # uses the current step
    await refused("access_denied", login(env, seed, code=older))  # previous step: within window, but older


async def test_totp_window_accepts_one_step_of_clock_skew(env):
    seed = await signup(env)
    env.clock.advance(30)
    await login(env, seed, code=totp.code_at(seed, env.clock.now - 30))
    await refused("access_denied", login(env, seed, code=totp.code_at(seed, env.clock.now + 90)))


async def test_concurrent_logins_with_one_code_only_one_succeeds(env):
    seed = await signup(env)
    code = env.code(seed)
    outcomes = []

    async def attempt():
        try:
            await login(env, seed, code=code)
            outcomes.append("ok")
        except AuthServiceError as exc:
            outcomes.append(exc.code)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(attempt)
    assert sorted(outcomes) == ["access_denied"] * 4 + ["ok"]


async def test_login_locked_after_five_failures_for_30_minutes(env):
    seed = await signup(env)
    for _ in range(5):
        await refused("access_denied", login(env, seed, password="wrong password!!"))
        env.clock.next_step()
    error = await refused("access_denied", login(env, seed))  # right credentials, still locked
    assert "30 min" in error.message
    assert (await env.service.get_user("alice")).status == "locked"
    env.clock.advance(LOCK_SECONDS - 60)
    await refused("access_denied", login(env, seed))
    env.clock.advance(60)
    env.clock.next_step()
    await login(env, seed)


async def test_lock_counts_wrong_codes_and_reused_codes_too(env):
    seed = await signup(env)
    used = env.code(seed)
    await login(env, seed, code=used)
    for _ in range(3):
        await refused("access_denied", login(env, seed, code="000000"))
    for _ in range(2):
        await refused("access_denied", login(env, seed, code=used))
    env.clock.next_step()
    await refused("access_denied", login(env, seed))
    assert (await env.service.get_user("alice")).status == "locked"


async def test_failed_login_count_resets_on_success(env):
    seed = await signup(env)
    for _ in range(4):
        await refused("access_denied", login(env, seed, password="wrong password!!"))
    await login(env, seed)
    env.clock.next_step()
    for _ in range(4):
        await refused("access_denied", login(env, seed, password="wrong password!!"))
    await login(env, seed)


async def test_lock_and_failures_are_audited(env):
    seed = await signup(env)
    for _ in range(5):
        await refused("access_denied", login(env, seed, password="wrong password!!"))
    await refused("access_denied", login(env, seed))
    events = list(reversed(await env.service.list_audit(limit=100)))
    failures = [e for e in events if e.code == "T1000W"]
    assert len(failures) == 6 and failures[0].fields["reason"] == "wrong password"
    assert failures[-1].fields["reason"] == "locked" and failures[0].fields["client_ip"] == "192.0.2.7"
    [lock] = [e for e in events if e.code == "T1001W"]
    assert lock.user == "alice" and lock.fields["locked_until"] == env.clock.now + LOCK_SECONDS


async def test_reset_user_clears_the_lock(env):
    seed = await signup(env)
    for _ in range(5):
        await refused("access_denied", login(env, seed, password="wrong password!!"))
    fresh = await env.service.reset_user("alice")
    new_seed = otp_secret((await env.service.get_invite(fresh.token)).otp_uri)
    await env.service.complete_signup(fresh.token, PASSWORD, env.code(new_seed))
    env.clock.next_step()
    await login(env, new_seed)


# ------------------------------------------------------------------------- certificates


async def test_sign_user_cert_for_automation(env):
    await env.service.create_user("ci", ["deploy"], ["admin"])
    key = new_key()
    result = await env.service.sign_user_cert("ci", key.public_key.blob, 3600, actor="user:alice")
    assert isinstance(result, CertResult) and result.principals == ("deploy",) and result.key_id == "user:ci"
    assert result.expires == int(env.clock.now + 3600)
    assert roles_from_certificate(parse_public_line(result.cert)[0]) == ("admin",)
    await refused("not_found", env.service.sign_user_cert("nobody", key.public_key.blob))
    await refused("bad_request", env.service.sign_user_cert("ci", key.public_key.blob, 31 * H))


async def test_sign_host_cert_key_id_and_principals(env):
    key = new_key()
    result = await env.service.sign_host_cert("Db1", key.public_key.blob, ["10.0.0.9", "db1.example.com"])
    cert, _ = parse_public_line(result.cert)
    assert cert.key_id == "node:db1" and cert.principals == ("db1", "db1.acme", "10.0.0.9", "db1.example.com")
    assert result.expires == int(env.clock.now + HOST_CERT_TTL)
    validate_host_certificate(cert, hostname="db1.acme", trusted_cas=[env.service.ca.host_ca_public],
                              now=env.clock.now)
    auth = await env.service.sign_auth_cert(key.public_key.blob, ["localhost", "127.0.0.1"])
    assert auth.key_id == "auth:auth" and "localhost" in auth.principals
    await refused("bad_request", env.service.sign_host_cert("x", key.public_key.blob, ["a b"]))


async def test_j1_sign_host_cert_gives_only_node_certificates_for_a_free_one_label_name(env):
    """ctl auth sign --host: no kind parameter (an admin's API call minted proxy: and auth:
    certificates before), no dotted name, no name of a joined node, no NAME.CLUSTER address."""
    key = new_key().public_key.blob
    with pytest.raises(TypeError):
        await env.service.sign_host_cert("x", key, kind="auth")
    await refused("bad_request", env.service.sign_host_cert("github.com", key))
    await refused("bad_request", env.service.sign_host_cert("x", key, ["db1.acme"]))
    await joined(env, "web1")
    await refused("already_exists", env.service.sign_host_cert("web1", key))


async def test_export_ca_lines_and_cluster_info(env):
    user_line = await env.service.export_ca("user")
    assert parse_public_line(user_line)[0] == env.service.ca.user_ca_public
    assert (await env.service.export_ca("host")).startswith("@cert-authority * ssh-ed25519 ")
    patterned = await env.service.export_ca("host", ["*.acme"])
    assert patterned.startswith("@cert-authority *.acme ")
    await refused("bad_request", env.service.export_ca("root"))
    info = await env.service.cluster_info()
    assert info.cluster == CLUSTER and info.user_ca == user_line
    assert pin_matches(info.host_ca_pin, env.service.ca.host_ca_public.blob)


# -------------------------------------------------------------------------- join tokens


async def test_join_token_is_secret_dot_host_ca_pin(env):
    created = await env.service.create_token("node")
    secret, pin = created.token.split(".")
    assert len(secret) == 22 and pin_matches(pin, env.service.ca.host_ca_public.blob)
    assert created.kind == "node" and created.expires == env.clock.now + 30 * 60


async def test_join_token_secret_stored_only_as_sha256(tmp_path):
    env = await make_env(str(tmp_path / "j.db"))
    created = await env.service.create_token("node")
    secret = created.token.split(".")[0]
    [record] = await env.storage.list_tokens()
    assert record.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    await env.storage.aclose()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert secret.encode() not in raw


async def test_join_issues_host_cert_and_registers_node(env):
    created = await env.service.create_token("node", addresses=["10.0.0.5", "web1.example.com"])
    key = new_key()
    result = await env.service.join(created.token, "node", "web1", key.public_key.blob,
                                    ["10.0.0.5", "web1.example.com"], {"env": "dev"}, "10.0.0.5:3022")
    cert, _ = parse_public_line(result.host_cert)
    assert cert.key_id == "node:web1" and cert.public_key == key.public_key
    assert cert.principals == ("web1", "web1.acme", "10.0.0.5", "web1.example.com")
    assert result.expires == int(env.clock.now + HOST_CERT_TTL)
    for host in ("web1", "web1.acme", "10.0.0.5"):
        validate_host_certificate(cert, hostname=host, trusted_cas=[env.service.ca.host_ca_public],
                                  now=env.clock.now)
    assert result.user_ca == env.service.ca.user_ca_line() and result.cluster == CLUSTER
    [node] = await env.service.list_nodes()
    assert (node.name, node.kind, node.addr, dict(node.labels)) == ("web1", "node", "10.0.0.5:3022", {"env": "dev"})


async def test_join_token_single_use(env):
    created = await env.service.create_token("node")
    await env.service.join(created.token, "node", "web1", new_key().public_key.blob)
    await refused("already_used", env.service.join(created.token, "node", "web2", new_key().public_key.blob))
    await refused("already_used", env.service.validate_token(created.token))
    assert [n.name for n in await env.service.list_nodes()] == ["web1"]
    [token] = await env.service.list_tokens()
    assert token.status == "used" and token.used_by == "node:web1"


async def test_join_token_expires_after_30_minutes_by_default(env):
    created = await env.service.create_token("node")
    env.clock.advance(30 * 60)
    await refused("expired", env.service.join(created.token, "node", "web1", new_key().public_key.blob))
    assert [t.status for t in await env.service.list_tokens()] == ["expired"]


async def test_join_token_custom_ttl_bounds(env):
    assert (await env.service.create_token("proxy", 3600)).expires == env.clock.now + H
    await refused("bad_request", env.service.create_token("node", 10))
    await refused("bad_request", env.service.create_token("node", 25 * H))
    await refused("bad_request", env.service.create_token("admin"))


async def test_join_token_kind_must_match(env):
    created = await env.service.create_token("proxy")
    await refused("access_denied", env.service.join(created.token, "node", "web1", new_key().public_key.blob))
    result = await env.service.join(created.token, "proxy", "proxy1", new_key().public_key.blob)
    assert parse_public_line(result.host_cert)[0].key_id == "proxy:proxy1"


async def test_unknown_join_token_not_found(env):
    await refused("not_found", env.service.join("A" * 22, "node", "web1", new_key().public_key.blob))
    await refused("not_found", env.service.validate_token("nonsense!"))


async def test_concurrent_joins_with_one_token_only_one_succeeds(env):
    created = await env.service.create_token("node")
    outcomes = []

    async def attempt(i):
        try:
            await env.service.join(created.token, "node", f"web{i}", new_key().public_key.blob)
            outcomes.append("ok")
        except AuthServiceError as exc:
            outcomes.append(exc.code)

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(attempt, i)
    assert outcomes.count("ok") == 1 and set(outcomes) == {"ok", "already_used"}
    assert len(await env.service.list_nodes()) == 1


async def test_join_validates_name_addresses_and_labels(env):
    created = await env.service.create_token("node")
    key = new_key().public_key.blob
    for args in (("web 1", key), ("web1", b"junk"), ("web1", key, ["not an address!"]),
                 ("web1", key, [], {"bad key": "v"}), ("web1", key, [], {}, "nohostport")):
        await refused("bad_request", env.service.join(created.token, "node", *args))
    await env.service.validate_token(created.token)  # still unused


async def test_validate_token_checks_without_consuming(env):
    created = await env.service.create_token("node")
    info = await env.service.validate_token(created.token, "node")
    assert info.status == "active" and info.id == created.id
    await refused("access_denied", env.service.validate_token(created.token, "proxy"))
    await env.service.join(created.token, "node", "web1", new_key().public_key.blob)


async def test_list_and_delete_tokens_never_show_secrets(env):
    created = await env.service.create_token("node")
    listed = await env.service.list_tokens()
    packed = msgpack.packb(to_wire(listed))
    assert created.token.split(".")[0].encode() not in packed
    await env.service.delete_token(created.id)
    assert await env.service.list_tokens() == []
    await refused("not_found", env.service.delete_token(created.id))
    await refused("not_found", env.service.join(created.token, "node", "web1", new_key().public_key.blob))


# ---------------------------------------------------------------------------------- nodes


async def joined(env, name="web1", kind="node", approve=(), **kw):
    created = await env.service.create_token(kind, addresses=list(approve))
    key = new_key()
    await env.service.join(created.token, kind, name, key.public_key.blob, **kw)
    return key


async def test_heartbeat_updates_last_seen_and_labels_but_never_the_address(env):
    await joined(env, approve=["10.0.0.5"], addr="10.0.0.5:3022")
    env.clock.advance(10)
    result = await env.service.heartbeat("web1", "203.0.113.66:22", {"env": "prod", "kernel": "6.1"})
    assert result.addr == "10.0.0.5:3022"   # J4: the node is told where it is dialled
    node = await env.service.get_node("web1")
    assert node.last_seen == env.clock.now and node.addr == "10.0.0.5:3022"
    assert dict(node.labels) == {"env": "prod", "kernel": "6.1"} and not node.tunnel
    await env.service.heartbeat("web1", "", {}, tunnel=True)
    assert (await env.service.get_node("web1")).tunnel


async def test_heartbeat_of_unknown_node_not_found(env):
    await refused("not_found", env.service.heartbeat("ghost", "10.0.0.1:3022", {}))


async def test_add_agentless_openssh_node_and_filter_by_labels(env):
    await joined(env, "web1", labels={"env": "dev"})
    node = await env.service.add_node("db1", "[2001:db8::1]:22", {"env": "prod", "role": "db"})
    assert node.kind == "openssh" and node.addr == "[2001:db8::1]:22"
    assert [n.name for n in await env.service.list_nodes({"env": "prod"})] == ["db1"]
    assert [n.name for n in await env.service.list_nodes()] == ["db1", "web1"]
    for addr in ("db1", "db1:0", "db1:70000", "2001:db8::1:22", "", None):
        await refused("bad_request", env.service.add_node("db2", addr))


async def test_adding_a_registered_openssh_node_again_is_refused_and_keeps_its_labels(env):
    """Issue 14 item 4: re-adding wiped the labels; now it is refused and says what to do."""
    await env.service.add_node("db1", "10.0.0.9:22", {"env": "prod"})
    with pytest.raises(AuthServiceError, match="ctl nodes update") as info:
        await env.service.add_node("db1", "db1.example.com:2222")
    assert info.value.code == "already_exists"
    node = await env.service.get_node("db1")
    assert (node.addr, dict(node.labels)) == ("10.0.0.9:22", {"env": "prod"})


async def test_update_node_changes_what_it_is_given_and_keeps_the_rest(env):
    await env.service.add_node("db1", "10.0.0.9:22", {"env": "prod", "team": "db"})
    moved = await env.service.update_node("db1", addr="DB1.example.com:2222")
    assert (moved.addr, dict(moved.labels)) == ("db1.example.com:2222", {"env": "prod", "team": "db"})
    relabelled = await env.service.update_node("db1", labels={"env": "dev"})   # replaced as a whole
    assert (relabelled.addr, dict(relabelled.labels)) == ("db1.example.com:2222", {"env": "dev"})
    assert dict((await env.service.update_node("db1", labels={})).labels) == {}
    updates = [e for e in await env.service.list_audit(limit=100) if e.event == "node.update"]
    assert [(e.code, e.fields["node"]) for e in updates] == [("T3203I", "db1")] * 3
    await refused("bad_request", env.service.update_node("db1"))                 # nothing to change
    await refused("bad_request", env.service.update_node("db1", addr="db1:0"))
    await refused("bad_request", env.service.update_node("db1", labels={"bad name": "x"}))
    await refused("not_found", env.service.update_node("db2", addr="10.0.0.9:22"))


async def test_update_node_leaves_a_joined_node_to_its_join_and_heartbeats(env):
    await joined(env, "web1", labels={"env": "dev"})
    await refused("bad_request", env.service.update_node("web1", labels={"env": "prod"}))
    await refused("bad_request", env.service.update_node("web1", addr="10.0.0.66:3022"))   # J4


async def test_add_node_cannot_overwrite_a_joined_node(env):
    await joined(env)
    await refused("already_exists", env.service.add_node("web1", "10.0.0.9:22"))


async def test_list_nodes_hides_proxies_unless_asked(env):
    await joined(env, "web1")
    await joined(env, "proxy1", kind="proxy")
    assert [n.name for n in await env.service.list_nodes()] == ["web1"]
    assert [n.name for n in await env.service.list_nodes(include_proxies=True)] == ["proxy1", "web1"]


async def test_remove_node(env):
    await env.service.add_node("db1", "10.0.0.9:22")
    await env.service.remove_node("db1")
    await refused("not_found", env.service.remove_node("db1"))
    await refused("not_found", env.service.get_node("db1"))


async def test_renew_host_cert_only_for_the_key_the_node_joined_with(env):
    key = await joined(env, approve=["10.0.0.5"], addresses=["10.0.0.5"])
    env.clock.advance(20 * 86400)
    result = await env.service.renew_host_cert("web1", key.public_key.blob)
    cert, _ = parse_public_line(result.host_cert)
    assert cert.principals == ("web1", "web1.acme", "10.0.0.5")
    assert result.expires == int(env.clock.now + HOST_CERT_TTL)
    await refused("access_denied", env.service.renew_host_cert("web1", new_key().public_key.blob))
    await refused("not_found", env.service.renew_host_cert("ghost", key.public_key.blob))


SESSION = b"\x07" * 32   # the join connection's session id (the API fills it in)


async def test_j2_a_fresh_token_cannot_take_over_a_registered_name(env):
    """The hole: a second join with a new token replaced db1's key and address."""
    owner = await joined(env, "web1", approve=["10.0.0.5"], addr="10.0.0.5:3022")
    thief = new_key()
    created = await env.service.create_token("node", addresses=["203.0.113.66"])
    error = await refused("already_exists", env.service.join(
        created.token, "node", "web1", thief.public_key.blob, addr="203.0.113.66:3022",
        proof=rejoin.sign_proof(thief, SESSION, "node", "web1"), session_id=SESSION))
    assert "jumpgate ctl nodes rm web1" in error.message and owner.public_key.fingerprint() in error.message
    record = await env.storage.get_node("web1")
    assert record.host_key == owner.public_key.blob and record.addr == "10.0.0.5:3022"
    assert sorted(t.status for t in await env.service.list_tokens()) == ["active", "used"]   # not consumed
    await refused("access_denied", env.service.renew_host_cert("web1", thief.public_key.blob))
    await refused("already_exists", joined(env, "web1", kind="proxy"))


async def test_j2_a_proof_for_another_connection_or_key_does_not_rejoin(env):
    owner = await joined(env, "web1")
    created = await env.service.create_token("node")
    replayed = rejoin.sign_proof(owner, b"\x01" * 32, "node", "web1")   # seen on another connection
    for proof, session in ((replayed, SESSION), (b"", SESSION), (rejoin.sign_proof(owner, SESSION, "node", "web1"), b"")):
        await refused("already_exists", env.service.join(created.token, "node", "web1", owner.public_key.blob,
                                                         proof=proof, session_id=session))


async def test_j2_rejoin_with_the_registered_key_renews_and_may_move_the_address(env):
    owner = await joined(env, "web1", approve=["10.0.0.5"], addr="10.0.0.5:3022")
    env.clock.advance(31 * 86400)   # the certificate expired: joining again is the way back
    created = await env.service.create_token("node", addresses=["10.0.0.6"])
    result = await env.service.join(created.token, "node", "web1", owner.public_key.blob, addr="10.0.0.6:3022",
                                    proof=rejoin.sign_proof(owner, SESSION, "node", "web1"), session_id=SESSION)
    assert parse_public_line(result.host_cert)[0].principals == ("web1", "web1.acme", "10.0.0.6")
    record = await env.storage.get_node("web1")
    assert record.addr == "10.0.0.6:3022" and record.host_key == owner.public_key.blob
    assert [e.fields.get("rejoin") for e in await env.service.list_audit(limit=100)
            if e.event == "node.join"][0] is True


async def test_j2_after_ctl_nodes_rm_the_name_is_free_for_a_new_host(env):
    await joined(env, "web1")
    await env.service.remove_node("web1", actor="user:root")
    newcomer = new_key()
    await joined(env, "web1")
    await env.service.join((await env.service.create_token("node")).token, "node", "web2", newcomer.public_key.blob)


async def test_j3_requested_addresses_nobody_vouched_for_are_left_out(env):
    """The hole: the joiner's addresses became principals unchecked (another node's name or
    IP, the proxy's public name)."""
    await joined(env, "proxy1", kind="proxy", approve=["jump.acme.io", "10.0.0.1"])
    created = await env.service.create_token("node", addresses=["10.0.0.5"])
    result = await env.service.join(created.token, "node", "web1", new_key().public_key.blob,
                                    ["10.0.0.5", "jump.acme.io", "10.0.0.1", "db1", "192.0.2.7"],
                                    client_ip="192.0.2.7")
    cert = parse_public_line(result.host_cert)[0]
    assert cert.principals == ("web1", "web1.acme", "10.0.0.5", "192.0.2.7")
    assert set(result.dropped) == {"jump.acme.io", "10.0.0.1", "db1"}


async def test_j3_the_source_address_of_another_registered_host_is_not_granted(env):
    await joined(env, "proxy1", kind="proxy", client_ip="192.0.2.7")   # holds its source address
    created = await env.service.create_token("node")
    result = await env.service.join(created.token, "node", "web1", new_key().public_key.blob,
                                    ["192.0.2.7"], client_ip="192.0.2.7")
    assert parse_public_line(result.host_cert)[0].principals == ("web1", "web1.acme")


async def test_j4_the_dial_address_must_be_vouched_for(env):
    created = await env.service.create_token("node")
    error = await refused("access_denied", env.service.join(created.token, "node", "web1", new_key().public_key.blob,
                                                            addr="10.9.9.9:3022", client_ip="192.0.2.7"))
    assert "ctl tokens add --addr 10.9.9.9" in error.message and "192.0.2.7" in error.message
    await env.service.join(created.token, "node", "web1", new_key().public_key.blob, addr="192.0.2.7:3022",
                           client_ip="192.0.2.7")   # the address it joins from is vouched for


async def test_j1_node_names_are_one_dns_label(env):
    created = await env.service.create_token("node")
    for name in ("github.com", "web1.acme", "-web", "a" * 64, "web_1"):
        await refused("bad_request", env.service.join(created.token, "node", name, new_key().public_key.blob))
        await refused("bad_request", env.service.add_node(name, "10.0.0.9:22"))
        await refused("bad_request", env.service.create_token("node", name=name))
    await env.service.validate_token(created.token)   # still unused


async def test_token_binds_the_name_and_refuses_addresses_under_the_cluster(env):
    created = await env.service.create_token("node", name="DB1", addresses=["10.0.0.5"])
    assert (created.name, created.addresses) == ("db1", ("10.0.0.5",))
    [info] = await env.service.list_tokens()
    assert (info.name, info.addresses) == ("db1", ("10.0.0.5",))
    await refused("access_denied", env.service.join(created.token, "node", "web1", new_key().public_key.blob))
    await env.service.join(created.token, "node", "db1", new_key().public_key.blob, addr="10.0.0.5:3022")
    for bad in (["db2.acme"], ["acme"], ["not an address!"]):
        await refused("bad_request", env.service.create_token("node", addresses=bad))


async def test_j9_a_new_cluster_named_after_a_public_suffix_is_refused(tmp_path):
    for name in ("com", "prod", "co.uk", "github.io"):
        await refused("bad_request", AuthService.create(SQLiteStorage(":memory:"), name))
    service = await AuthService.create(SQLiteStorage(":memory:"), "prod.acme.io")
    assert service.warnings == ()


async def test_j9_an_installed_cluster_named_after_a_public_suffix_still_starts_with_a_warning(tmp_path):
    """A data dir made before J9 (its CA stored under "prod") must not be bricked."""
    storage = SQLiteStorage(":memory:")
    for kind in ("user", "host"):
        key = new_key()
        await storage.insert_ca(CARecord(kind, "prod", key.to_openssh(), key.public_key.blob, 1.0))
    service = await AuthService.create(storage, "prod")
    assert service.cluster == "prod" and len(service.warnings) == 1
    assert "public suffix" in service.warnings[0] and "*.prod" in service.warnings[0]
    await service.join((await service.create_token("node")).token, "node", "web1", new_key().public_key.blob)


# ---------------------------------------------------------------------------------- audit


async def test_every_action_is_audited_with_its_code(env):
    seed = await signup(env, roles=("admin",))
    await login(env, seed)
    await refused("access_denied", login(env, seed, password="wrong password!!"))
    created = await env.service.create_token("node")
    await env.service.join(created.token, "node", "web1", new_key().public_key.blob)
    await env.service.add_node("db1", "10.0.0.9:22")
    await env.service.remove_node("db1")
    await env.service.create_user("bob", ["bob"])
    await env.service.reset_user("bob")
    await env.service.delete_user("bob")
    await env.service.sign_user_cert("alice", new_key().public_key.blob)
    codes = await audit_codes(env)
    assert codes[:2] == ["TCA01I", "TCA01I"]  # both CAs created on the first start
    for code in ("T1002I", "T1005I", "T1000I", "TC000I", "T1000W", "TJ000I", "TJ001I", "T3200I", "T3201I",
                 "T3202I", "T1003I", "T1004I"):
        assert code in codes, code
    assert codes.count("TC000I") == 3  # login, host cert at join, sign_user_cert


async def test_audit_events_hold_no_secrets(env):
    seed = await signup(env)
    await login(env, seed)
    await refused("access_denied", login(env, seed, password="wrong password!!"))
    created = await env.service.create_token("node")
    await env.service.join(created.token, "node", "web1", new_key().public_key.blob)
    packed = msgpack.packb(to_wire(await env.service.list_audit(limit=1000)))
    for secret in (PASSWORD, "wrong password!!", seed, created.token.split(".")[0]):
        assert secret.encode() not in packed


async def test_emit_audit_accepts_session_events_from_nodes(env):
    event_id = await env.service.emit_audit(
        {"event": "session.start", "user": "alice", "fields": {"login": "root", "node": "web1"}},
        emitter="node:web1")
    [event] = await env.service.list_audit(limit=1)
    assert event.id == event_id and event.code == "T2000I" and event.time == env.clock.now
    assert event.fields == {"login": "root", "node": "web1", "emitter": "node:web1"}
    await env.service.emit_audit({"event": "exec", "success": False, "fields": {"command": "ls"}})
    assert (await env.service.list_audit(limit=1))[0].code == "T3002E"


@pytest.mark.parametrize("event", [
    {"event": "user.login", "user": "alice"},  # a node cannot forge a login
    {"event": "cert.create"}, {"event": "nope"}, "session.start", {"user": "x"},
    {"event": "session.start", "fields": {str(i): i for i in range(40)}},
    {"event": "session.start", "fields": {"k": {"nested": 1}}},
    {"event": "session.start", "success": "yes"},
    {"event": "session.end", "success": False},  # no failure code for session.end
])
async def test_emit_audit_refuses_forged_or_unbounded_events(env, event):
    await refused("bad_request", env.service.emit_audit(event))


async def test_emit_audit_cuts_oversized_values_and_keeps_the_event(env):
    """U1: an oversized value is cut and named, never a reason to lose the event."""
    await env.service.emit_audit({"event": "session.start", "user": "u" * 300,
                                  "fields": {"k": "v" * 5000, "ok": "short"}})
    [event] = await env.service.list_audit(limit=1)
    assert event.code == "T2000I" and len(event.user) == 256 and len(event.fields["k"]) == 4096
    assert event.fields["k"].endswith("\u2026") and event.fields["ok"] == "short"
    assert event.fields["truncated"] == ("user", "k") and "claimed" not in event.fields


async def test_list_audit_pages_newest_first(env):
    for i in range(5):
        await env.service.emit_audit({"event": "session.end", "fields": {"n": i}})
    first = await env.service.list_audit(limit=2)
    assert [e.fields["n"] for e in first] == [4, 3]
    nxt = await env.service.list_audit(limit=2, before_id=first[-1].id)
    assert [e.fields["n"] for e in nxt] == [2, 1]
    await refused("bad_request", env.service.list_audit(limit=0))
    await refused("bad_request", env.service.list_audit(limit="5"))


# ----------------------------------------------------------------- wire and persistence


async def test_results_are_msgpack_serialisable_and_hold_no_ca_private_key(env):
    seed = await signup(env)
    created = await env.service.create_token("node")
    results = [
        await env.service.create_user("bob", ["bob"]),
        await env.service.get_invite((await env.service.reset_user("bob")).token),
        await login(env, seed), await env.service.list_users(), created, await env.service.list_tokens(),
        await env.service.join(created.token, "node", "web1", new_key().public_key.blob),
        await env.service.add_node("db1", "10.0.0.9:22"), await env.service.list_nodes(),
        await env.service.sign_user_cert("alice", new_key().public_key.blob),
        await env.service.cluster_info(), await env.service.list_audit(),
        await env.service.export_ca("host"),
    ]
    ca_pems = [(await env.storage.get_ca(kind)).private_key for kind in ("user", "host")]
    for result in results:
        packed = msgpack.packb(to_wire(result), use_bin_type=True)
        assert msgpack.unpackb(packed, raw=False) == to_wire(result)
        assert b"PRIVATE KEY" not in packed
        assert not any(pem.split(b"\n")[1] in packed for pem in ca_pems)


async def test_service_state_survives_restart(tmp_path):
    clock = FakeClock()
    path = str(tmp_path / "data" / "jumpgate.db")
    env = await make_env(path, clock)
    seed = await signup(env)
    host_ca = env.service.ca.host_ca_public
    await env.storage.aclose()

    again = await make_env(path, clock)
    assert again.service.ca.host_ca_public == host_ca
    assert again.service.ca.new_kinds == ()
    await login(again, seed)
    await again.storage.aclose()


async def test_service_refuses_a_data_dir_of_another_cluster(tmp_path):
    path = str(tmp_path / "j.db")
    env = await make_env(path)
    await env.storage.aclose()
    storage = SQLiteStorage(path)
    with pytest.raises(AuthServiceError, match="belongs to cluster"):
        await AuthService.create(storage, "staging")
    await storage.aclose()
    await refused("bad_request", AuthService.create(SQLiteStorage(":memory:"), "Bad Cluster!"))


def test_error_codes_are_stable_and_serialisable():
    error = AuthServiceError("locked", "user is locked")
    assert error.to_wire() == {"code": "locked", "message": "user is locked"}
    assert str(error) == "locked: user is locked"


def test_secrets_never_start_with_a_dash(monkeypatch):
    # A token is pasted as a command-line argument; argparse would take "-..." for an option.
    from appliance.auth import checks
    drawn = iter(["-starts-with-a-dash", "-again", "fine_secret_value"])
    monkeypatch.setattr(checks.secrets, "token_urlsafe", lambda n: next(drawn))
    secret, digest = checks.new_secret()
    assert secret == "fine_secret_value" and len(digest) == 64


async def test_the_facade_offers_every_api_method_as_its_half_defines_it(env):
    """AuthService is two halves (accounts.py: users; hosts.py: nodes and tokens) behind one
    flat API: the dispatcher calls each ALLOWED method by name and binds its parameters."""
    import inspect

    from appliance.api.server import ALLOWED
    half = {"users": env.service.users, "hosts": env.service.hosts, "bots": env.service.bots,
            "sessions": env.service.sessions}
    for method in sorted(set().union(*ALLOWED.values())):
        bound = getattr(env.service, method)
        assert inspect.iscoroutinefunction(bound), method
        owner = [name for name, part in half.items() if getattr(type(part), method, None) is not None]
        if owner:
            assert owner == [type(env.service).__dict__[method].part], method
            assert inspect.signature(bound) == inspect.signature(getattr(half[owner[0]], method))
        else:   # what the halves share: the CAs and the audit log
            assert method in {"cluster_info", "cluster_status", "export_ca", "emit_audit", "list_audit"}, method
