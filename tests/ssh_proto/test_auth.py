"""User authentication tests (RFC 4252, RFC 4256) over an in-memory client/server pair.

Rule T12 of docs/security.md (user and service fixed at the first request, failure
cap, decisions only on a key that signed: CVE-2024-45337), C7 (the announced algorithm
must match the key), C8 (no SHA-1 ``ssh-rsa``) and C9 (a key is not used twice);
test_ruleN is CN.
"""
from __future__ import annotations

import types

import pytest

from pairs import C, PASSWORD, S, USERNAME, handshaken_pair, host_key, user_key
from ssh_proto import events as ev
from ssh_proto import messages as m
from ssh_proto.auth import SERVICE_CONNECTION, signed_data
from ssh_proto.connection import ConnectionOptions
from ssh_proto.errors import DisconnectError, DisconnectReason, LocalError, ProtocolError
from ssh_proto.state import AuthStep, check_auth
from ssh_proto.wire import Writer, encode_string


def _ready(**kw):
    """A pair whose client has its SERVICE_ACCEPT: authentication may start."""
    pair = handshaken_pair(**kw)
    assert pair.take(C, ev.ServiceAccepted)
    return pair


def _result(pair) -> ev.AuthResult:
    pair.pump()
    (result,) = pair.take(C, ev.AuthResult)
    return result


def _password_fails(pair, password: str = "wrong") -> ev.AuthResult:
    pair.client.client_auth.request_password(password)
    pair.pump()
    (req,) = pair.take(S, ev.AuthPassword)
    pair.server.server_auth.reject()
    return _result(pair)


# ---- happy paths ---------------------------------------------------------------------------

def test_password_authentication_succeeds():
    pair = _ready()
    pair.client.client_auth.request_password(PASSWORD)
    pair.pump()
    (req,) = pair.take(S, ev.AuthPassword)
    assert (req.username, req.password) == (USERNAME, PASSWORD)
    assert PASSWORD not in repr(req)
    pair.server.auth_accept()
    assert _result(pair).success
    assert pair.take(S, ev.AuthSucceeded) == [ev.AuthSucceeded(USERNAME)]
    assert pair.client.authenticated and pair.server.authenticated


def test_none_then_methods_list():
    pair = _ready(server_options=ConnectionOptions(auth_methods=("publickey", "password")))
    pair.client.client_auth.request_none()
    pair.pump()
    (req,) = pair.take(S, ev.AuthNone)
    assert req.username == USERNAME
    pair.server.server_auth.reject()
    result = _result(pair)
    assert not result.success and result.methods == ("publickey", "password")
    assert pair.server.server_auth.failures == 0  # "none" is not counted


@pytest.mark.parametrize("key_type,alg", [
    ("ssh-ed25519", "ssh-ed25519"),
    ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
    ("ecdsa-sha2-nistp521", "ecdsa-sha2-nistp521"),
    ("ssh-rsa", "rsa-sha2-256"),
    ("ssh-rsa", "rsa-sha2-512"),
])
def test_publickey_authentication_succeeds(key_type, alg):
    key = user_key(key_type)
    pair = _ready()
    pair.client.client_auth.request_publickey(key.public_key, alg, key.sign)
    pair.pump()
    (req,) = pair.take(S, ev.AuthPublicKey)
    assert (req.username, req.key, req.algorithm) == (USERNAME, key.public_key, alg)
    pair.server.auth_accept()
    assert _result(pair).success


def test_publickey_query_then_pk_ok():
    key = user_key()
    pair = _ready()
    pair.client.client_auth.query_publickey(key.public_key, "ssh-ed25519")
    pair.pump()
    (query,) = pair.take(S, ev.AuthPublicKeyQuery)
    assert query.key == key.public_key
    pair.server.server_auth.pk_ok()
    pair.pump()
    (ok,) = pair.take(C, ev.AuthPkOk)
    assert (ok.algorithm, ok.key_blob) == ("ssh-ed25519", key.public_key.blob)
    with pytest.raises(LocalError):
        pair.server.auth_accept()  # nothing pending any more: a query never authenticates


def test_banner_is_sent_once_before_the_first_answer():
    pair = _ready(server_options=ConnectionOptions(banner="Authorized use only\n"))
    _password_fails(pair)
    _password_fails(pair)
    assert pair.take(C, ev.AuthBanner) == [ev.AuthBanner("Authorized use only\n")]


def test_T12_partial_success_publickey_then_keyboard_interactive():
    key = user_key()
    pair = _ready()
    auth = pair.client.client_auth
    auth.request_publickey(key.public_key, "ssh-ed25519", key.sign)
    pair.pump()
    assert pair.take(S, ev.AuthPublicKey)
    pair.server.server_auth.partial(("keyboard-interactive",))
    result = _result(pair)
    assert (result.success, result.partial, result.methods) == (False, True, ("keyboard-interactive",))
    assert not pair.server.authenticated

    auth.request_kbdint()
    pair.pump()
    (kbd,) = pair.take(S, ev.AuthKbdInt)
    assert kbd.username == USERNAME
    pair.server.server_auth.challenge("OTP", "Enter the code", (("Code: ", False), ("PIN: ", False)))
    pair.pump()
    (info,) = pair.take(C, ev.AuthInfoRequest)
    assert (info.name, info.instruction) == ("OTP", "Enter the code")
    assert info.prompts == (("Code: ", False), ("PIN: ", False))
    auth.respond(("123456", "0000"))
    pair.pump()
    (answer,) = pair.take(S, ev.AuthKbdIntResponse)
    assert answer.responses == ("123456", "0000")
    pair.server.auth_accept()
    assert _result(pair).success
    assert pair.server.server_auth.completed == ["publickey"]


def test_T12_keyboard_interactive_second_round_of_prompts():
    pair = _ready()
    pair.client.client_auth.request_kbdint()
    pair.pump()
    pair.take(S, ev.AuthKbdInt)
    for round_ in range(2):
        pair.server.server_auth.challenge("", "", ((f"Q{round_}: ", True),))
        pair.pump()
        pair.take(C, ev.AuthInfoRequest)
        pair.client.client_auth.respond((f"A{round_}",))
        pair.pump()
        assert pair.take(S, ev.AuthKbdIntResponse)[0].responses == (f"A{round_}",)
    pair.server.server_auth.reject()
    assert not _result(pair).success


# ---- T12 user and service fixed, failures counted ------------------------------------------------

def test_T12_username_change_between_requests_is_an_error():
    pair = _ready()
    _password_fails(pair)
    pair.client.client_auth.username = "mallory"
    pair.client.client_auth.request_password("x")
    err = pair.expect_error(S)
    assert "username" in err.description
    assert err.reason == DisconnectReason.PROTOCOL_ERROR


def test_T12_service_other_than_ssh_connection_is_refused():
    pair = _ready()
    pair.client.client_auth.step = AuthStep.REQUEST  # so the client's state machine expects an answer
    pair.client.transport.send(m.UserauthRequest(USERNAME, "ssh-sftp", "none", b"").encode())
    err = pair.expect_error(S)
    assert err.reason == DisconnectReason.SERVICE_NOT_AVAILABLE


@pytest.mark.parametrize("name", ["a\0b", "x" * 257])
def test_T12_invalid_user_name_is_refused(name):
    pair = _ready(username=name)
    pair.client.client_auth.request_none()
    err = pair.expect_error(S)
    assert err.reason == DisconnectReason.ILLEGAL_USER_NAME


def test_T12_attempt_limit_disconnects_with_no_more_auth_methods():
    pair = _ready(server_options=ConnectionOptions(max_auth_attempts=3))
    for _ in range(2):
        assert not _password_fails(pair).success
    pair.client.client_auth.request_password("third")
    pair.pump()
    pair.take(S, ev.AuthPassword)
    with pytest.raises(ProtocolError) as info:
        pair.server.server_auth.reject()
    assert info.value.reason == DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE
    pair.server.send_protocol_error(info.value)
    with pytest.raises(DisconnectError) as got:
        pair.pump()
    assert got.value.reason == DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE


def test_T12_requests_for_methods_not_offered_count_as_failures():
    pair = _ready(server_options=ConnectionOptions(auth_methods=("publickey",), max_auth_attempts=4))
    for _ in range(3):
        pair.client.client_auth.request_password("guess")
        result = _result(pair)
        assert not result.success and result.methods == ("publickey",)
    assert not pair.take(S, ev.AuthPassword)  # the application never saw them
    pair.client.client_auth.request_password("guess")
    err = pair.expect_error(S)
    assert err.reason == DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE


def test_T12_password_change_request_is_refused_and_counted():
    pair = _ready()
    pair.client.client_auth._request("password", m.PasswordMethod(True, "old", encode_string("new")).encode(),
                                     AuthStep.REQUEST)
    assert not _result(pair).success
    assert not pair.take(S, ev.AuthPassword)
    assert pair.server.server_auth.failures == 1


def test_T12_new_request_while_the_application_decides_is_an_error():
    pair = _ready()
    pair.client.client_auth.request_password("one")
    pair.pump()
    pair.client.client_auth.step = AuthStep.IDLE  # a client that does not wait for the answer
    pair.client.client_auth.request_password("two")
    pair.expect_error(S)


def test_T12_client_may_abandon_a_keyboard_interactive_challenge():
    """RFC 4256 §3.3 / OpenSSH: a new USERAUTH_REQUEST ends a pending challenge (counted)."""
    pair = _ready()
    pair.client.client_auth.request_kbdint()
    pair.pump()
    pair.take(S, ev.AuthKbdInt)
    pair.server.server_auth.challenge("", "", (("Password: ", False),))
    pair.pump()
    pair.take(C, ev.AuthInfoRequest)
    # give up on the prompt: a new request is allowed in the challenge step (RFC 4256 §3.3)
    pair.client.client_auth.request_password(PASSWORD)
    pair.pump()
    (req,) = pair.take(S, ev.AuthPassword)
    assert pair.server.server_auth.failures == 1
    pair.server.auth_accept()
    assert _result(pair).success


def test_T12_abandoned_challenges_count_towards_the_limit():
    pair = _ready(server_options=ConnectionOptions(max_auth_attempts=2))
    for attempt in range(3):
        pair.client.client_auth.request_kbdint()  # abandons the challenge (RFC 4256 §3.3)
        if attempt == 2:
            break  # the second abandoned challenge reaches the limit
        pair.pump()
        pair.take(S, ev.AuthKbdInt)
        pair.server.server_auth.challenge("", "", (("Code: ", False),))
        pair.pump()
    err = pair.expect_error(S)
    assert err.reason == DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE


def test_T12_info_response_without_a_challenge_is_an_error():
    pair = _ready()
    pair.client.client_auth.step = AuthStep.CHALLENGE
    pair.client.client_auth.respond(("x",))
    pair.expect_error(S)


def test_T12_wrong_number_of_keyboard_interactive_responses_is_an_error():
    pair = _ready()
    pair.client.client_auth.request_kbdint()
    pair.pump()
    pair.take(S, ev.AuthKbdInt)
    pair.server.server_auth.challenge("", "", (("a", False), ("b", False)))
    pair.pump()
    pair.client.client_auth.respond(("only one",))
    pair.expect_error(S)


def test_T12_requests_after_success_are_ignored():
    pair = _ready()
    pair.client.client_auth.request_password(PASSWORD)
    pair.pump()
    pair.take(S, ev.AuthPassword)
    pair.server.auth_accept()
    pair.pump()
    pair.client.transport.send(m.UserauthRequest(USERNAME, SERVICE_CONNECTION, "password",
                                                 m.PasswordMethod(False, "x", b"").encode()).encode())
    pair.pump()
    assert not pair.take(S, ev.AuthPassword) and pair.failed is None


# ---- T12 / CVE-2024-45337: only a key that signed is ever reported ------------------------------

def test_T12_key_offered_but_signed_by_another_key_is_never_reported():
    a, b = user_key("ssh-ed25519"), host_key("ssh-ed25519")  # two distinct ed25519 keys
    pair = _ready()
    pair.client.client_auth.request_publickey(a.public_key, "ssh-ed25519", b.sign)  # claims A, signs with B
    result = _result(pair)
    assert not result.success
    assert not pair.take(S, ev.AuthPublicKey)
    assert pair.server.server_auth.failures == 1


def test_T12_queried_key_then_other_key_signs_reports_only_the_signer():
    a, b = user_key("ssh-ed25519"), user_key("ecdsa-sha2-nistp256")
    pair = _ready()
    pair.client.client_auth.query_publickey(a.public_key, "ssh-ed25519")
    pair.pump()
    assert pair.take(S, ev.AuthPublicKeyQuery)[0].key == a.public_key
    pair.server.server_auth.pk_ok()
    pair.pump()
    pair.take(C, ev.AuthPkOk)
    pair.client.client_auth.request_publickey(b.public_key, "ecdsa-sha2-nistp256", b.sign)
    pair.pump()
    (signed,) = pair.take(S, ev.AuthPublicKey)
    assert signed.key == b.public_key


def test_T12_signature_over_another_session_is_refused():
    key = user_key()
    pair = _ready()
    other_session = bytes(32)
    forged = lambda data, alg: key.sign(signed_data(other_session, USERNAME, SERVICE_CONNECTION, "ssh-ed25519",
                                                    key.public_key.blob))
    pair.client.client_auth.request_publickey(key.public_key, "ssh-ed25519", forged)
    assert not _result(pair).success
    assert not pair.take(S, ev.AuthPublicKey)


@pytest.mark.parametrize("key_type,alg", [
    ("ssh-ed25519", "ecdsa-sha2-nistp256"),
    ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384"),
    ("ssh-rsa", "ssh-ed25519"),
    ("ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com"),
])
def test_rule7_algorithm_not_matching_the_key_is_refused(key_type, alg):
    key = user_key(key_type)
    pair = _ready()
    pair.client.client_auth.request_publickey(key.public_key, alg, lambda data, _alg: key.sign(data))
    assert not _result(pair).success
    assert not pair.take(S, ev.AuthPublicKey)


def test_rule8_sha1_ssh_rsa_user_signature_is_refused():
    key = user_key("ssh-rsa")
    pair = _ready()
    pair.client.client_auth.request_publickey(key.public_key, "ssh-rsa", lambda data, alg: _sha1_rsa_sign(key, data))
    assert not _result(pair).success
    assert not pair.take(S, ev.AuthPublicKey)


def _sha1_rsa_sign(key, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    raw = key.crypto_key.sign(data, padding.PKCS1v15(), hashes.SHA1())
    return Writer().string("ssh-rsa").string(raw).getvalue()


def test_rule7_signature_algorithm_must_match_the_announced_one():
    key = user_key("ssh-rsa")
    pair = _ready()
    pair.client.client_auth.request_publickey(key.public_key, "rsa-sha2-512",
                                              lambda data, alg: key.sign(data, "rsa-sha2-256"))
    assert not _result(pair).success
    assert not pair.take(S, ev.AuthPublicKey)


def test_rule9_key_that_already_gave_partial_success_is_refused():
    key = user_key()
    pair = _ready()
    for expected_partial in (True, False):
        pair.client.client_auth.request_publickey(key.public_key, "ssh-ed25519", key.sign)
        pair.pump()
        if expected_partial:
            pair.take(S, ev.AuthPublicKey)
            pair.server.server_auth.partial()
            assert _result(pair).partial
        else:
            assert not pair.take(S, ev.AuthPublicKey)
            assert not _result(pair).success


@pytest.mark.parametrize("alg,blob", [
    ("sk-ssh-ed25519@openssh.com", Writer().string("sk-ssh-ed25519@openssh.com").string(bytes(32))
     .string("ssh:").getvalue()),
    ("ssh-dss", Writer().string("ssh-dss").mpint(23).mpint(11).mpint(4).mpint(8).getvalue()),
])
def test_unsupported_key_algorithm_is_a_plain_failure(alg, blob):
    """A client offering a key type we do not support (an sk- or DSA key) may try the next key."""
    pair = _ready()
    pair.client.client_auth.query_publickey(types.SimpleNamespace(blob=blob), alg)
    result = _result(pair)
    assert not result.success and "publickey" in result.methods
    key = user_key()
    pair.client.client_auth.request_publickey(key.public_key, "ssh-ed25519", key.sign)
    pair.pump()
    assert pair.take(S, ev.AuthPublicKey)


def test_malformed_key_blob_is_a_counted_failure():
    """As in OpenSSH: a key blob that does not parse fails the attempt, and counts."""
    pair = _ready()
    pair.client.client_auth.query_publickey(types.SimpleNamespace(blob=b"\0\0\0\x0bssh-ed25519\0\0\0\x01x"),
                                            "ssh-ed25519")
    assert not _result(pair).success
    assert not pair.take(S, ev.AuthPublicKeyQuery)
    assert pair.server.server_auth.failures == 1


def test_trailing_bytes_after_publickey_query_are_an_error():
    key = user_key()
    pair = _ready()
    pair.client.client_auth._request("publickey", m.PublickeyMethod(False, "ssh-ed25519", key.public_key.blob,
                                                                     b"junk").encode(), AuthStep.QUERY)
    pair.expect_error(S)


# ---- client side: replies must answer a request -----------------------------------------------

@pytest.mark.parametrize("payload", [
    m.UserauthSuccess().encode(),
    m.UserauthFailure(("password",), False).encode(),
    m.UserauthPkOk("ssh-ed25519", b"k").encode(),
], ids=["SUCCESS", "FAILURE", "PK_OK"])
def test_client_refuses_an_auth_reply_with_no_request_outstanding(payload):
    pair = _ready()
    pair.inject(S, payload)
    pair.expect_error(C)


def test_client_refuses_pk_ok_answering_a_signed_request():
    key = user_key()
    pair = _ready()
    pair.client.client_auth.request_publickey(key.public_key, "ssh-ed25519", key.sign)
    pair.pump()
    pair.take(S, ev.AuthPublicKey)
    pair.inject(S, m.UserauthPkOk("ssh-ed25519", key.public_key.blob).encode())
    pair.expect_error(C)


# ---- the auth steps' table (ssh_proto/state.py AUTH_ALLOWED), stated independently -------------------

#: (step, sender) -> the USERAUTH numbers that party may send in that step (RFC 4252 §5-§7, RFC 4256 §3).
EXPECTED_AUTH_TABLE = {
    (AuthStep.IDLE, C): {50},                    # a request
    (AuthStep.IDLE, S): {53},                    # a banner only
    (AuthStep.REQUEST, C): set(),                # one request at a time
    (AuthStep.REQUEST, S): {51, 52, 53},         # FAILURE, SUCCESS, BANNER
    (AuthStep.QUERY, C): set(),
    (AuthStep.QUERY, S): {51, 53, 60},           # FAILURE, BANNER, PK_OK (never SUCCESS)
    (AuthStep.KBDINT, C): set(),
    (AuthStep.KBDINT, S): {51, 52, 53, 60},      # ... INFO_REQUEST
    (AuthStep.CHALLENGE, C): {50, 61},           # INFO_RESPONSE, or a new request abandoning it
    (AuthStep.CHALLENGE, S): {53},
}


@pytest.mark.parametrize("step", list(AuthStep), ids=lambda s: s.value)
@pytest.mark.parametrize("sender", [C, S], ids=lambda r: r.value)
def test_T12_auth_steps_accept_exactly_the_literal_expectation(step, sender):
    for n in range(50, 80):
        if n in EXPECTED_AUTH_TABLE[(step, sender)]:
            check_auth(step, sender, n, local=False)
        else:
            with pytest.raises(ProtocolError):
                check_auth(step, sender, n, local=False)
            with pytest.raises(LocalError):
                check_auth(step, sender, n, local=True)


def test_T12_success_answering_a_query_is_refused_by_the_client():
    key = user_key()
    pair = _ready()
    pair.client.client_auth.query_publickey(key.public_key, "ssh-ed25519")
    pair.pump()
    pair.take(S, ev.AuthPublicKeyQuery)
    pair.inject(S, m.UserauthSuccess().encode())
    err = pair.expect_error(C)
    assert "query" in err.description and not pair.client.authenticated


def test_T12_our_second_request_while_one_is_outstanding_is_a_local_error():
    pair = _ready()
    pair.client.client_auth.request_password("one")
    with pytest.raises(LocalError):
        pair.client.client_auth.request_password("two")
