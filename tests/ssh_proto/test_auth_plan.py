"""The client's choice of authentication method and signature algorithm (ssh_proto/auth_plan.py).

Sans-IO: the plan is fed the server's USERAUTH_FAILURE method lists (as AuthResult events
carry them) and server-sig-algs bytes, and says what to try next.
"""
from __future__ import annotations

import pytest

from pairs import user_key
from ssh_proto import events as ev
from ssh_proto.auth_plan import (AuthPlan, GiveUp, TryKbdInt, TryNone, TryPassword, TryPublicKey, kbdint_answers,
                                 signature_algorithm)

ED, RSA = user_key("ssh-ed25519").public_key, user_key("ssh-rsa").public_key
RSA_ALGS = b"ssh-ed25519,rsa-sha2-256,rsa-sha2-512"


def _feed(plan: AuthPlan, *failures: ev.AuthResult):
    """The attempts the plan makes: the first, then one after each failure."""
    attempts = [plan.next(None)]
    for failure in failures:
        attempts.append(plan.next(failure.methods, partial=failure.partial))
    return attempts


def test_a_client_holding_nothing_sends_the_none_probe_first():
    plan = AuthPlan([], password=False, kbdint_handler=False)
    assert plan.next(None) == TryNone()
    assert plan.next(("publickey",)) == GiveUp(("publickey",))


def test_keys_first_in_order_then_the_password():
    plan = AuthPlan([ED, RSA], password=True, kbdint_handler=False)
    failure = ev.AuthResult(False, ("publickey", "password"))
    assert _feed(plan, failure, failure, failure) == [
        TryPublicKey(0, "ssh-ed25519"), TryPublicKey(1, "rsa-sha2-512"), TryPassword(), GiveUp(("publickey", "password"))]


def test_keys_are_skipped_when_the_server_does_not_list_publickey():
    plan = AuthPlan([ED], password=True, kbdint_handler=False)
    assert plan.next(("password",)) == TryPassword()


def test_a_handler_makes_keyboard_interactive_come_before_password():
    plan = AuthPlan([], password=True, kbdint_handler=True)
    failure = ev.AuthResult(False, ("password", "keyboard-interactive"))
    assert _feed(plan, failure, failure) == [TryKbdInt(), TryPassword(), GiveUp(failure.methods)]


def test_each_method_once_but_keyboard_interactive_again_after_partial_success():
    plan = AuthPlan([ED], password=False, kbdint_handler=True)
    attempts = _feed(plan, ev.AuthResult(False, ("publickey", "keyboard-interactive")),
                     ev.AuthResult(False, ("keyboard-interactive",), partial=True),
                     ev.AuthResult(False, ("keyboard-interactive",)))
    assert attempts == [TryPublicKey(0, "ssh-ed25519"), TryKbdInt(), TryKbdInt(), GiveUp(("keyboard-interactive",))]


def test_a_refused_signature_moves_on_to_the_next_key_on_the_same_answer():
    plan = AuthPlan([ED, RSA], password=False, kbdint_handler=False)
    assert plan.next(None) == TryPublicKey(0, "ssh-ed25519")
    assert plan.next(None) == TryPublicKey(1, "rsa-sha2-512")   # the agent said no: same (no) answer
    assert plan.next(("publickey",)) == GiveUp(("publickey",))


@pytest.mark.parametrize("server_sig_algs, expected", [
    (None, "rsa-sha2-512"),                         # no EXT_INFO: the key's first
    (b"ssh-ed25519,rsa-sha2-256", "rsa-sha2-256"),  # RFC 8332 §3.1: what the server verifies
    (RSA_ALGS, "rsa-sha2-512"),                     # our preference among the server's
    (b"ssh-rsa", "rsa-sha2-512"),                   # never SHA-1 ssh-rsa (T9)
])
def test_rsa_signature_algorithm_follows_server_sig_algs(server_sig_algs, expected):
    assert signature_algorithm(RSA, server_sig_algs) == expected


def test_rsa_certificate_algorithm_follows_server_sig_algs_in_its_cert_form():
    from ssh_proto.certs import CERT_TYPE_USER, sign_certificate
    ca = user_key("ssh-ed25519")
    cert = sign_certificate(ca, RSA, cert_type=CERT_TYPE_USER, key_id="x", principals=("alice",),
                            valid_after=0, valid_before=2**63)
    assert signature_algorithm(cert, b"rsa-sha2-256") == "rsa-sha2-256-cert-v01@openssh.com"


def test_non_rsa_keys_ignore_server_sig_algs():
    assert signature_algorithm(ED, b"rsa-sha2-256") == "ssh-ed25519"


def test_algorithm_is_chosen_per_answer_from_the_servers_list():
    plan = AuthPlan([ED, RSA], password=False, kbdint_handler=False)
    plan.next(None)
    assert plan.next(("publickey",), server_sig_algs=b"rsa-sha2-256") == TryPublicKey(1, "rsa-sha2-256")


@pytest.mark.parametrize("prompts, answers", [
    ((), []),
    ((("Password: ", False),), ["pw"]),
    ((("Verification code: ", False),), [""]),
    ((("Password: ", False), ("Code: ", False)), ["", ""]),
])
def test_keyboard_interactive_without_a_handler_answers_only_a_lone_password_prompt(prompts, answers):
    assert kbdint_answers(prompts, "pw") == answers
