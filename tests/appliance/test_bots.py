"""Bots: automation identities (issue 14 item 16, docs/security.md B1-B4) — no password ever,
certificates marked ``bot:NAME``, a single-use bot token exchanged over the auth API and renewed
with the certificate it bought, revocable with ``ctl bots rm``."""
from __future__ import annotations

import pytest
import trio

from _api_helpers import parse_cert, running_auth
from _auth_helpers import PASSWORD, make_env, new_key
from appliance.api.client import ApiClient, ApiError
from appliance.auth.ca import GENERATION_EXTENSION, generation_of, roles_from_certificate
from appliance.auth.checks import AuthServiceError
from ssh_proto import SSHError


async def _refused(code: str, call) -> AuthServiceError:
    with pytest.raises(AuthServiceError) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


async def test_b1_a_bot_can_never_log_in_with_a_password():
    """The attack: an admin (or an attacker with the admin's ctl) "resets" the bot to get an
    invite, signs up with a password of its choosing, then logs in — and plain password
    guesses at the bot's name. Every door is shut, and the answers are those of a wrong password."""
    env = await make_env()
    await env.service.create_bot("ci", ["deploy"], actor="user:root")
    for password in (PASSWORD, "", "x" * 12):
        await _refused("access_denied", env.service.login("ci", password, "000000", new_key().public_key.blob))
    refused = await _refused("bad_request", env.service.reset_user("ci", actor="user:root"))
    assert "is a bot" in refused.message
    # storage itself refuses: no invite is ever made for a bot, and signup/login never reach it
    from appliance.storage.base import InviteRecord
    assert not await env.storage.reset_user("ci", InviteRecord("0" * 64, "ci", "A" * 32, 0, 2**40))
    attempt = await env.storage.reserve_login_attempt("ci", env.clock(), max_failures=5, lock_seconds=60)
    assert not attempt.reserved
    record = await env.storage.get_user("ci")
    assert record.is_bot and record.password_hash is None and record.totp_secret is None
    assert not record.signed_up


async def test_b2_bot_certificates_carry_the_bot_marker_its_logins_roles_and_generation():
    env = await make_env()
    await env.service.create_bot("ci", ["deploy"], ["admin"], actor="user:root")
    key = new_key()
    result = await env.service.sign_bot_cert("ci", key.public_key.blob, 1800, actor="user:root")
    cert = parse_cert(result.cert)
    assert cert.key_id == "bot:ci" and cert.principals == ("deploy",)
    assert roles_from_certificate(cert) == ("admin",)
    assert GENERATION_EXTENSION in cert.extensions and cert.valid_before - cert.valid_after <= 1800 + 60
    await _refused("bad_request", env.service.sign_bot_cert("ci", key.public_key.blob, 25 * 3600))
    # a human's door does not open for a bot, nor a bot's for a human
    refused = await _refused("bad_request", env.service.sign_user_cert("ci", key.public_key.blob, 600))
    assert "--bot ci" in refused.message
    await env.service.create_user("alice", ["alice"])
    await _refused("not_found", env.service.sign_bot_cert("alice", key.public_key.blob))
    created = [e for e in await env.service.list_audit(100) if e.event == "cert.create" and e.user == "ci"]
    assert created and created[0].fields["identity"] == "bot" and created[0].fields["key_id"] == "bot:ci"
    assert [e.event for e in await env.service.list_audit(100, types=["bot.*"])] == ["bot.create"]


async def test_b3_a_bot_token_buys_one_certificate_over_the_api_then_the_bot_renews_with_it():
    async with running_auth() as env:
        created = await env.service.create_bot("ci", ["deploy"], actor="user:root")
        secret, _, pin = created.token.partition(".")
        key = new_key()
        async with ApiClient.connect_join(env.addr, secret, f"sha256:{pin}") as api:
            first = parse_cert((await api.bot_join(public_key_blob=key.public_key.blob, ttl=600))["cert"])
        assert first.key_id == "bot:ci"
        with pytest.raises((ApiError, SSHError)):   # single use
            async with ApiClient.connect_join(env.addr, secret, f"sha256:{pin}") as api:
                await api.bot_join(public_key_blob=key.public_key.blob)
        async with env.connect((key, first), ca_pin=env.pin, host_ca_key=None) as api:
            renewed = parse_cert((await api.renew_bot_cert(public_key_blob=key.public_key.blob, ttl=900))["cert"])
            assert renewed.key_id == "bot:ci" and renewed.serial != first.serial
            with pytest.raises(ApiError) as denied:          # a bot renews itself only
                await api.renew_bot_cert(name="other", public_key_blob=key.public_key.blob)
            assert denied.value.code == "permission_denied"
            with pytest.raises(ApiError) as denied:          # and is no admin, whatever its roles
                await api.list_users()
            assert denied.value.code == "permission_denied"
        events = [e for e in await env.service.list_audit(100) if e.event == "bot.join"]
        assert [(e.success, e.user) for e in reversed(events)] == [(True, "ci"), (False, "")]


async def test_b3_a_bot_token_never_joins_a_host_and_a_join_token_never_buys_a_bot_certificate():
    async with running_auth() as env:
        created = await env.service.create_bot("ci", ["deploy"])
        node_token = await env.token("node")
        key = new_key()
        for token, call in ((created.token, "join"), (node_token, "bot_join")):
            secret, _, pin = token.partition(".")
            async with ApiClient.connect_join(env.addr, secret, f"sha256:{pin}") as api:
                with pytest.raises(ApiError):
                    if call == "join":
                        await api.join(kind="node", name="ci", host_public_key_blob=key.public_key.blob)
                    else:
                        await api.bot_join(public_key_blob=key.public_key.blob)
        assert (await env.service.validate_token(node_token)).status == "active"


async def test_b4_bots_rm_revokes_its_certificates_renewals_and_tokens():
    async with running_auth() as env:
        created = await env.service.create_bot("ci", ["deploy"])
        key = new_key()
        cert = parse_cert((await env.service.sign_bot_cert("ci", key.public_key.blob, 600)).cert)
        spare = await env.service.add_bot_token("ci")
        before = await env.service.storage.get_generation("ci")
        await env.service.delete_bot("ci", actor="user:root")
        assert generation_of(cert) < await env.service.storage.get_generation("ci") == before + 1
        assert not [t for t in await env.service.list_tokens() if t.kind == "bot"]
        with pytest.raises((ApiError, SSHError)):
            async with env.connect((key, cert), ca_pin=env.pin, host_ca_key=None) as api:
                await api.renew_bot_cert(public_key_blob=key.public_key.blob)
        secret, _, pin = spare.token.partition(".")
        with pytest.raises((ApiError, SSHError)):
            async with ApiClient.connect_join(env.addr, secret, f"sha256:{pin}") as api:
                await api.bot_join(public_key_blob=key.public_key.blob)
        # a new bot under the name does not revive the old certificate (generations outlive it)
        await env.service.create_bot("ci", ["deploy"])
        assert generation_of(cert) < await env.service.storage.get_generation("ci")
        events = await env.service.list_audit(100, types=["bot.*"])
        assert [e.event for e in reversed(events)] == ["bot.create", "bot.delete", "bot.create"]
        assert all(e.fields["identity"] == "bot" for e in events)
