"""ssh_proto.agent (codec, framing, KeyStore, session-bind) and ssh_proto.trio_io.agent in-process.

Rule names refer to docs/security.md (T21: agent forwarding direction
checks and session-bind@openssh.com). Tests against the real OpenSSH ssh-agent / ssh-add
live in tests/interop/test_agent_interop.py.
"""
from __future__ import annotations

import functools
import os
import shutil
import stat
import tempfile

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ssh_proto
from ssh_proto import agent as proto
from ssh_proto.auth import signed_data
from ssh_proto.certs import CERT_TYPE_USER, DEFAULT_USER_EXTENSIONS, sign_certificate
from ssh_proto.errors import AgentError, ChannelOpenError, KeyFormatError, ProtocolError
from ssh_proto.keys import Certificate, PrivateKey, PublicKey
from ssh_proto.trio_io.agent import AgentClient, InProcessAgent, forward_agent_to_unix_socket, read_message
from ssh_proto.wire import Writer

HYPOTHESIS = settings(max_examples=150, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])
KEY_TYPES = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"]


def _generate(key_type: str) -> PrivateKey:
    return PrivateKey.generate(key_type, bits=2048 if key_type == "ssh-rsa" else None)


KEYS = {t: _generate(t) for t in KEY_TYPES}
CA = PrivateKey.generate()
HOST = PrivateKey.generate()
OTHER_HOST = PrivateKey.generate("ecdsa-sha2-nistp256")


def certify(key: PrivateKey, principal: str = "alice") -> Certificate:
    return sign_certificate(CA, key.public_key, cert_type=CERT_TYPE_USER, key_id=f"{principal}@test",
                            principals=[principal], valid_after=0, valid_before=2**40,
                            extensions=DEFAULT_USER_EXTENSIONS)


CERTS = {t: certify(k) for t, k in KEYS.items()}


def ask(store: proto.KeyStore, request, bindings: proto.SessionBindings | None = None):
    return proto.decode_response(store.handle(request.encode(), bindings))


def store_with(*entries) -> proto.KeyStore:
    store = proto.KeyStore()
    for key, cert in entries:
        store.add(key, cert, comment=key.key_type)
    return store


def bind_request(host: PrivateKey = HOST, session_id: bytes = b"S" * 32, *, forwarding: bool = False,
                 signer: PrivateKey | None = None) -> proto.SessionBind:
    signature = (signer or host).sign(session_id)
    return proto.SessionBind(host.public_key, session_id, signature, forwarding)


# ------------------------------------------------------------------------------- framing


def test_frame_decoder_splits_messages_across_arbitrary_chunks():
    messages = [proto.RequestIdentities().encode(), proto.SignRequest(b"k", b"d" * 1000, 2).encode(), b"\x13"]
    stream = b"".join(proto.frame(m) for m in messages)
    decoder = proto.FrameDecoder()
    out = []
    for i in range(0, len(stream), 7):
        decoder.feed(stream[i:i + 7])
        while (m := decoder.next_message()) is not None:
            out.append(m)
    assert out == messages and decoder.buffered == 0


def test_oversized_frame_rejected_from_its_header_before_the_body_arrives():
    decoder = proto.FrameDecoder()
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed((proto.MAX_MESSAGE + 1).to_bytes(4, "big"))
    assert decoder.buffered == 4  # nothing allocated for the announced 256 KiB + 1


@HYPOTHESIS
@given(st.integers(proto.MAX_MESSAGE + 1, 2**32 - 1), st.binary(max_size=16))
def test_any_oversized_length_rejected_on_arrival_of_its_header(length, tail):
    decoder = proto.FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(length.to_bytes(4, "big") + tail)


def test_largest_frame_accepted_and_empty_frame_rejected():
    assert proto.parse_frame_header(proto.MAX_MESSAGE.to_bytes(4, "big")) == proto.MAX_MESSAGE
    with pytest.raises(ProtocolError):
        proto.parse_frame_header(b"\0\0\0\0")
    with pytest.raises(ProtocolError):
        proto.frame(b"x" * (proto.MAX_MESSAGE + 1))


async def test_trio_reader_rejects_oversized_length_without_reading_a_body():
    send, receive = trio.testing.memory_stream_pair()
    await send.send_all(b"\xff\xff\xff\xff")  # 4 GiB announced, nothing follows
    with trio.fail_after(2):
        with pytest.raises(ProtocolError, match="exceeds"):
            await read_message(receive)


async def test_trio_reader_end_of_stream_inside_a_message_is_a_protocol_error():
    send, receive = trio.testing.memory_stream_pair()
    await send.send_all(proto.frame(b"\x0b\x00\x00")[:-1])
    await send.aclose()
    with pytest.raises(ProtocolError):
        await read_message(receive)


@HYPOTHESIS
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=5), st.integers(1, 50))
def test_frame_decoder_round_trip_property(messages, chunk):
    stream = b"".join(proto.frame(m) for m in messages)
    decoder, out = proto.FrameDecoder(), []
    for i in range(0, len(stream), chunk):
        decoder.feed(stream[i:i + chunk])
        while (m := decoder.next_message()) is not None:
            out.append(m)
    assert out == messages


@HYPOTHESIS
@given(st.binary(max_size=64))
def test_frame_decoder_raises_only_protocol_error(data):
    decoder = proto.FrameDecoder()
    try:
        decoder.feed(data)
        while decoder.next_message() is not None:
            pass
    except ProtocolError:
        pass


# --------------------------------------------------------------------------------- codec


SIMPLE_REQUESTS = [
    proto.RequestIdentities(),
    proto.SignRequest(b"blob", b"data to sign", proto.SSH_AGENT_RSA_SHA2_512),
    proto.RemoveIdentity(b"blob"),
    proto.RemoveAllIdentities(),
    proto.Extension("query", b""),
    proto.Extension("frob@example.com", b"\x00\x01raw"),
]


@pytest.mark.parametrize("request_", SIMPLE_REQUESTS, ids=lambda r: type(r).__name__)
def test_request_round_trip(request_):
    assert proto.decode_request(request_.encode()) == request_


def test_session_bind_round_trip():
    bind = bind_request(forwarding=True)
    decoded = proto.decode_request(bind.encode())
    assert decoded == bind and decoded.verify()


RESPONSES = [
    proto.Failure(), proto.Success(), proto.ExtensionFailure(), proto.IdentitiesAnswer(),
    proto.IdentitiesAnswer((proto.AgentIdentity(b"k1", "one"), proto.AgentIdentity(b"k2", "ü"))),
    proto.SignResponse(b"sig"),
]


@pytest.mark.parametrize("response", RESPONSES, ids=lambda r: type(r).__name__)
def test_response_round_trip(response):
    assert proto.decode_response(response.encode()) == response


@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("with_cert", [False, True], ids=["plain", "cert"])
def test_add_identity_round_trip_for_every_key_format(key_type, with_cert):
    key, cert = KEYS[key_type], CERTS[key_type] if with_cert else None
    message = proto.AddIdentity(key, cert, "c", lifetime=60).encode()
    assert message[0] == proto.SSH_AGENTC_ADD_ID_CONSTRAINED
    decoded = proto.decode_request(message)
    assert decoded.key.public_key == key.public_key and decoded.certificate == cert
    assert (decoded.comment, decoded.lifetime, decoded.confirm) == ("c", 60, False)
    assert decoded.encode() == message  # the private parts survived exactly


def test_add_identity_without_constraints_uses_plain_add_message():
    assert proto.AddIdentity(KEYS["ssh-ed25519"]).encode()[0] == proto.SSH_AGENTC_ADD_IDENTITY


def test_add_identity_repr_never_shows_private_key():
    key = KEYS["ecdsa-sha2-nistp256"]
    text = repr(proto.AddIdentity(key, comment="x"))
    secret = key.crypto_key.private_numbers().private_value
    assert key.public_key.fingerprint() in text
    assert str(secret) not in text and f"{secret:x}" not in text and "object at" not in text


def _ed25519_add(public: bytes, secret: bytes) -> bytes:
    return (Writer().byte(proto.SSH_AGENTC_ADD_IDENTITY).string("ssh-ed25519").string(public)
            .string(secret).string("c").getvalue())


def test_add_identity_ed25519_with_mismatched_public_half_rejected():
    good = proto.AddIdentity(KEYS["ssh-ed25519"]).encode()
    other = KEYS["ssh-ed25519"].public_key.blob[-32:]
    seed = os.urandom(32)
    with pytest.raises(KeyFormatError):
        proto.decode_request(_ed25519_add(other, seed + other))
    assert proto.decode_request(good).key.public_key == KEYS["ssh-ed25519"].public_key


def test_add_identity_ecdsa_with_wrong_point_rejected():
    key, other = KEYS["ecdsa-sha2-nistp256"], PrivateKey.generate("ecdsa-sha2-nistp256")
    n = other.crypto_key.private_numbers().private_value
    fields = key.public_key.blob[len(Writer().string("ecdsa-sha2-nistp256").getvalue()):]
    message = (Writer().byte(proto.SSH_AGENTC_ADD_IDENTITY).string("ecdsa-sha2-nistp256").raw(fields)
               .mpint(n).string("").getvalue())
    with pytest.raises(KeyFormatError):
        proto.decode_request(message)


def test_add_identity_rsa_with_inconsistent_primes_rejected():
    numbers = KEYS["ssh-rsa"].crypto_key.private_numbers()
    message = (Writer().byte(proto.SSH_AGENTC_ADD_IDENTITY).string("ssh-rsa")
               .mpint(numbers.public_numbers.n).mpint(numbers.public_numbers.e).mpint(numbers.d)
               .mpint(numbers.iqmp).mpint(numbers.p).mpint(numbers.q + 2).string("").getvalue())
    with pytest.raises(KeyFormatError):
        proto.decode_request(message)


def test_add_identity_certificate_for_another_key_rejected():
    message = proto.AddIdentity(KEYS["ssh-ed25519"], CERTS["ssh-ed25519"]).encode()
    impostor = proto.AddIdentity(PrivateKey.generate(), None).encode()
    # splice: the certificate of one key with the private half of another
    cert_part = Writer().string(CERTS["ssh-ed25519"].key_type).string(CERTS["ssh-ed25519"].blob).getvalue()
    private_part = impostor[1 + len(Writer().string("ssh-ed25519").getvalue()):]
    with pytest.raises(KeyFormatError):
        proto.decode_request(bytes([proto.SSH_AGENTC_ADD_IDENTITY]) + cert_part + private_part)
    assert proto.decode_request(message).certificate == CERTS["ssh-ed25519"]


def test_identities_answer_count_beyond_its_bytes_rejected_before_looping():
    message = Writer().byte(proto.SSH_AGENT_IDENTITIES_ANSWER).uint32(2**32 - 1).getvalue()
    with pytest.raises(ProtocolError, match="claims"):
        proto.decode_response(message)


def test_trailing_bytes_rejected():
    with pytest.raises(ProtocolError):
        proto.decode_request(proto.RequestIdentities().encode() + b"\0")
    with pytest.raises(ProtocolError):
        proto.decode_response(proto.Success().encode() + b"\0")


REQUEST_TYPES = [5, 6, 11, 12, 13, 14, 17, 18, 19, 20, 22, 25, 27, 28, 255]
VALID_MESSAGES = ([r.encode() for r in SIMPLE_REQUESTS] + [r.encode() for r in RESPONSES]
                  + [bind_request().encode(), proto.AddIdentity(KEYS["ssh-ed25519"], CERTS["ssh-ed25519"]).encode(),
                     proto.AddIdentity(KEYS["ecdsa-sha2-nistp256"], lifetime=5, confirm=True).encode()])


def _decode_both(data: bytes) -> None:
    for decode in (proto.decode_request, proto.decode_response):
        try:
            decode(data)
        except ProtocolError:
            pass


@HYPOTHESIS
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(st.sampled_from(REQUEST_TYPES), st.binary(max_size=200)).map(
                     lambda t: bytes([t[0]]) + t[1])))
def test_decoders_raise_only_protocol_error_on_random_bytes(data):
    _decode_both(data)


@HYPOTHESIS
@given(st.sampled_from(VALID_MESSAGES), st.integers(0, 10**6), st.integers(0, 7), st.booleans())
def test_decoders_raise_only_protocol_error_on_mutated_messages(message, where, bit, truncate):
    # OpenSSH's fuzz.c mutations: a bit flip, or a truncation
    i = where % len(message)
    mutated = message[:i] if truncate else message[:i] + bytes([message[i] ^ (1 << bit)]) + message[i + 1:]
    _decode_both(mutated)


@HYPOTHESIS
@given(st.binary(max_size=300))
def test_key_store_answers_any_bytes_with_a_well_formed_reply(data):
    reply = store_with((KEYS["ssh-ed25519"], None)).handle(data)
    proto.decode_response(reply)


# ------------------------------------------------------------------------------- signing


@pytest.mark.parametrize("key_type", ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                                      "ecdsa-sha2-nistp521"])
def test_key_store_signs_with_each_key_type(key_type):
    key = KEYS[key_type]
    reply = ask(store_with((key, None)), proto.SignRequest(key.public_key.blob, b"payload"))
    assert isinstance(reply, proto.SignResponse)
    assert key.public_key.verify(reply.signature, b"payload")


@pytest.mark.parametrize(("flags", "expected"), [
    (proto.SSH_AGENT_RSA_SHA2_256, "rsa-sha2-256"),
    (proto.SSH_AGENT_RSA_SHA2_512, "rsa-sha2-512"),
    (proto.SSH_AGENT_RSA_SHA2_256 | proto.SSH_AGENT_RSA_SHA2_512, "rsa-sha2-256"),  # OpenSSH's precedence
])
def test_rsa_sha2_flags_pick_the_signature_algorithm(flags, expected):
    key = KEYS["ssh-rsa"]
    reply = ask(store_with((key, None)), proto.SignRequest(key.public_key.blob, b"payload", flags))
    assert proto.check_signature_algorithm(reply.signature, expected) is None
    assert key.public_key.verify(reply.signature, b"payload", algorithms=[expected])


def test_rsa_sign_request_without_sha2_flag_refused_never_sha1():
    key = KEYS["ssh-rsa"]
    store = store_with((key, None))
    assert ask(store, proto.SignRequest(key.public_key.blob, b"payload", 0)) == proto.Failure()
    assert ask(store, proto.SignRequest(key.public_key.blob, b"payload", 1)) == proto.Failure()


@pytest.mark.parametrize("key_type", ["ssh-ed25519", "ssh-rsa"])
def test_certificate_identity_signs_with_the_certified_key(key_type):
    key, cert = KEYS[key_type], CERTS[key_type]
    store = store_with((key, cert))
    flags = proto.flags_for_algorithm("rsa-sha2-512-cert-v01@openssh.com")
    reply = ask(store, proto.SignRequest(cert.blob, b"payload", flags))
    assert cert.verify(reply.signature, b"payload")
    # the certificate is the identity; the bare key was never added
    assert ask(store, proto.SignRequest(key.public_key.blob, b"payload", flags)) == proto.Failure()


def test_sign_with_unknown_key_refused():
    store = store_with((KEYS["ssh-ed25519"], None))
    assert ask(store, proto.SignRequest(KEYS["ecdsa-sha2-nistp256"].public_key.blob, b"x")) == proto.Failure()


# --------------------------------------------------------------------- identities management


def test_add_list_remove_and_remove_all_through_the_protocol():
    store = proto.KeyStore()
    ed, ec = KEYS["ssh-ed25519"], KEYS["ecdsa-sha2-nistp384"]
    assert ask(store, proto.AddIdentity(ed, None, "ed")) == proto.Success()
    assert ask(store, proto.AddIdentity(ec, CERTS["ecdsa-sha2-nistp384"], "ec-cert")) == proto.Success()
    answer = ask(store, proto.RequestIdentities())
    assert answer.identities == (proto.AgentIdentity(ed.public_key.blob, "ed"),
                                 proto.AgentIdentity(CERTS["ecdsa-sha2-nistp384"].blob, "ec-cert"))
    assert ask(store, proto.RemoveIdentity(ed.public_key.blob)) == proto.Success()
    assert ask(store, proto.RemoveIdentity(ed.public_key.blob)) == proto.Failure()
    assert ask(store, proto.RemoveAllIdentities()) == proto.Success()
    assert store.identities() == []


def test_adding_the_same_key_again_replaces_its_entry():
    store = proto.KeyStore()
    ask(store, proto.AddIdentity(KEYS["ssh-ed25519"], None, "first"))
    ask(store, proto.AddIdentity(KEYS["ssh-ed25519"], None, "second"))
    assert store.identities() == [(KEYS["ssh-ed25519"].public_key, "second")]


def test_lifetime_constraint_expires_the_key_on_the_injected_clock():
    now = [1000.0]
    store = proto.KeyStore(clock=lambda: now[0])
    key = KEYS["ssh-ed25519"]
    assert ask(store, proto.AddIdentity(key, None, "", lifetime=30)) == proto.Success()
    now[0] += 29.9
    assert isinstance(ask(store, proto.SignRequest(key.public_key.blob, b"x")), proto.SignResponse)
    now[0] += 0.1
    assert ask(store, proto.SignRequest(key.public_key.blob, b"x")) == proto.Failure()
    assert ask(store, proto.RequestIdentities()) == proto.IdentitiesAnswer()


def test_confirm_constraint_refused_rather_than_ignored():
    store = proto.KeyStore()
    assert ask(store, proto.AddIdentity(KEYS["ssh-ed25519"], confirm=True)) == proto.Failure()
    assert store.identities() == []


@pytest.mark.parametrize("tail", [
    bytes([proto.SSH_AGENT_CONSTRAIN_EXTENSION]) + Writer().string("restrict-destination-v00@openssh.com").getvalue(),
    bytes([3, 0, 0, 0, 5]),  # SSH_AGENT_CONSTRAIN_MAXSIGN (XMSS only)
    bytes([1, 0, 0, 0, 5, 1, 0, 0, 0, 6]),  # lifetime twice
])
def test_unsupported_or_repeated_constraints_refused(tail):
    plain = proto.AddIdentity(KEYS["ssh-ed25519"]).encode()
    message = bytes([proto.SSH_AGENTC_ADD_ID_CONSTRAINED]) + plain[1:] + tail
    store = proto.KeyStore()
    assert proto.decode_response(store.handle(message)) == proto.Failure()
    assert store.identities() == []


@pytest.mark.parametrize("message", [
    b"\x16" + Writer().string("passphrase").getvalue(),  # LOCK: not supported
    b"\x14" + Writer().string("/usr/lib/evil.so").string("").getvalue(),  # ADD_SMARTCARD_KEY
    b"\x01", b"\xff", b"\x0d\x00",
    proto.Extension("query").encode(),
], ids=["lock", "smartcard", "rsa1", "unknown", "truncated", "unknown-extension"])
def test_unsupported_or_malformed_requests_answered_with_failure(message):
    store = store_with((KEYS["ssh-ed25519"], None))
    assert proto.decode_response(store.handle(message)) == proto.Failure()
    assert len(store.identities()) == 1


def test_store_refuses_keys_beyond_its_capacity():
    store = proto.KeyStore(max_keys=1)
    assert ask(store, proto.AddIdentity(KEYS["ssh-ed25519"])) == proto.Success()
    assert ask(store, proto.AddIdentity(KEYS["ecdsa-sha2-nistp256"])) == proto.Failure()
    with pytest.raises(AgentError):
        store.add(KEYS["ssh-rsa"])


# ---------------------------------------------------------------- session-bind (rule T21)


def test_rule_t21_session_bind_verified_and_recorded():
    connection = proto.AgentConnection(proto.KeyStore())
    reply = connection.receive_data(proto.frame(bind_request(forwarding=True).encode()))
    assert proto.decode_response(reply[4:]) == proto.Success()
    assert [(b.host_key, b.is_forwarding) for b in connection.bindings] == [(HOST.public_key, True)]


def test_rule_t21_session_bind_with_bad_signature_refused():
    bindings = proto.SessionBindings()
    forged = bind_request(signer=OTHER_HOST)
    assert ask(proto.KeyStore(), forged, bindings) == proto.Failure()
    assert len(bindings) == 0


def test_rule_t21_session_bind_with_sha1_rsa_host_signature_refused():
    host = KEYS["ssh-rsa"]
    session_id = os.urandom(32)
    raw = host.crypto_key.sign(session_id, padding.PKCS1v15(), hashes.SHA1())
    sha1 = Writer().string("ssh-rsa").string(raw).getvalue()
    request = proto.SessionBind(host.public_key, session_id, sha1, False)
    assert ask(proto.KeyStore(), request) == proto.Failure()
    assert ask(proto.KeyStore(), bind_request(host, session_id)) == proto.Success()  # rsa-sha2-512


def test_rule_t21_no_binding_after_a_binding_for_authentication():
    bindings, store = proto.SessionBindings(), proto.KeyStore()
    assert ask(store, bind_request(session_id=b"A" * 32, forwarding=False), bindings) == proto.Success()
    assert ask(store, bind_request(session_id=b"B" * 32, forwarding=True), bindings) == proto.Failure()
    assert ask(store, bind_request(session_id=b"A" * 32, forwarding=False), bindings) == proto.Failure()
    assert len(bindings) == 1


def test_rule_t21_forwarding_hops_then_authentication_accepted():
    bindings, store = proto.SessionBindings(), proto.KeyStore()
    assert ask(store, bind_request(HOST, b"1" * 32, forwarding=True), bindings) == proto.Success()
    assert ask(store, bind_request(OTHER_HOST, b"2" * 32, forwarding=False), bindings) == proto.Success()
    assert [b.session_id for b in bindings] == [b"1" * 32, b"2" * 32]


def test_rule_t21_same_session_id_with_another_host_key_refused():
    bindings, store = proto.SessionBindings(), proto.KeyStore()
    session_id = b"S" * 32
    assert ask(store, bind_request(HOST, session_id, forwarding=True), bindings) == proto.Success()
    assert ask(store, bind_request(OTHER_HOST, session_id, forwarding=True), bindings) == proto.Failure()
    # the identical binding again is accepted but recorded once
    assert ask(store, bind_request(HOST, session_id, forwarding=True), bindings) == proto.Success()
    assert len(bindings) == 1


def test_rule_t21_bindings_per_connection_are_bounded():
    bindings, store = proto.SessionBindings(), proto.KeyStore()
    for i in range(proto.MAX_BINDINGS):
        assert ask(store, bind_request(session_id=bytes([i]) * 32, forwarding=True), bindings) == proto.Success()
    assert ask(store, bind_request(session_id=b"\xff" * 32, forwarding=True), bindings) == proto.Failure()


def test_rule_t21_oversized_or_empty_session_id_refused():
    store = proto.KeyStore()
    assert ask(store, bind_request(session_id=b"x" * (proto.MAX_SESSION_ID + 1))) == proto.Failure()
    assert ask(store, bind_request(session_id=b"")) == proto.Failure()


def _userauth_data(session_id: bytes, key: PublicKey, method: str = "publickey", host_key: bytes = b"") -> bytes:
    data = signed_data(session_id, "alice", "ssh-connection", key.key_type, key.blob)
    if method != "publickey":
        data = data.replace(Writer().string("publickey").getvalue(), Writer().string(method).getvalue())
        data += Writer().string(host_key).getvalue()
    return data


def test_rule_t21_bound_userauth_policy_signs_only_for_the_bound_session():
    key = KEYS["ssh-ed25519"]
    store = proto.KeyStore(sign_policy=proto.require_bound_userauth)
    store.add(key)
    bindings = proto.SessionBindings()
    sid = os.urandom(32)
    request = proto.SignRequest(key.public_key.blob, _userauth_data(sid, key.public_key))
    assert ask(store, request, bindings) == proto.Failure()  # unbound connection
    assert ask(store, bind_request(HOST, sid), bindings) == proto.Success()
    assert isinstance(ask(store, request, bindings), proto.SignResponse)
    elsewhere = proto.SignRequest(key.public_key.blob, _userauth_data(os.urandom(32), key.public_key))
    assert ask(store, elsewhere, bindings) == proto.Failure()
    assert ask(store, proto.SignRequest(key.public_key.blob, b"arbitrary"), bindings) == proto.Failure()


def test_rule_t21_bound_userauth_policy_checks_hostbound_host_key():
    key = KEYS["ssh-ed25519"]
    store = proto.KeyStore(sign_policy=proto.require_bound_userauth)
    store.add(key)
    bindings, sid = proto.SessionBindings(), os.urandom(32)
    ask(store, bind_request(HOST, sid), bindings)
    method = "publickey-hostbound-v00@openssh.com"
    good = _userauth_data(sid, key.public_key, method, HOST.public_key.blob)
    bad = _userauth_data(sid, key.public_key, method, OTHER_HOST.public_key.blob)
    assert isinstance(ask(store, proto.SignRequest(key.public_key.blob, good), bindings), proto.SignResponse)
    assert ask(store, proto.SignRequest(key.public_key.blob, bad), bindings) == proto.Failure()


# ------------------------------------------------------------------------ Trio: agents


@pytest.fixture
def sock_dir():
    # unix socket paths must stay short (108 bytes): not under pytest's tmp_path
    path = tempfile.mkdtemp(prefix="jga-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_in_process_agent_add_list_sign_remove():
    agent = InProcessAgent()
    key, cert = KEYS["ssh-rsa"], CERTS["ssh-rsa"]
    await agent.add(key, comment="plain")
    await agent.add(key, cert, comment="cert")
    assert await agent.list_identities() == [(key.public_key, "plain"), (cert, "cert")]
    sig = await agent.sign(cert, b"data", "rsa-sha2-256-cert-v01@openssh.com")
    assert cert.verify(sig, b"data")
    await agent.remove(key.public_key)
    assert await agent.identities() == [cert]
    await agent.remove_all()
    assert await agent.identities() == []
    with pytest.raises(AgentError):
        await agent.sign(key.public_key, b"data")


async def test_agent_client_and_in_process_agent_over_a_private_unix_socket(nursery, sock_dir):
    agent = InProcessAgent()
    path = await nursery.start(agent.serve_unix, os.path.join(sock_dir, "agent", "sock"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    async with AgentClient(path) as client:
        for key_type in KEY_TYPES:
            await client.add(KEYS[key_type], comment=key_type)
        assert await client.identities() == [KEYS[t].public_key for t in KEY_TYPES]
        for key_type in KEY_TYPES:
            public = KEYS[key_type].public_key
            for algorithm in public.signature_algorithms:
                assert public.verify(await client.sign(public, b"msg", algorithm), b"msg", algorithms=[algorithm])
        await client.remove_all()
        assert await agent.identities() == []


async def test_serve_unix_refuses_a_directory_others_can_enter(sock_dir):
    os.chmod(sock_dir, 0o755)
    with pytest.raises(AgentError, match="0700"):
        await InProcessAgent().serve_unix(os.path.join(sock_dir, "sock"))


async def test_agent_client_without_socket_raises_agent_error(sock_dir, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(AgentError, match="SSH_AUTH_SOCK"):
        AgentClient()
    with pytest.raises(AgentError, match="cannot reach"):
        await AgentClient(os.path.join(sock_dir, "nothing")).identities()


async def test_serve_unix_refuses_to_replace_an_existing_file(sock_dir):
    path = os.path.join(sock_dir, "sock")
    open(path, "w").close()
    with pytest.raises(AgentError, match="cannot listen"):
        await InProcessAgent().serve_unix(path)


async def test_agent_client_raises_agent_error_when_the_agent_hangs_up(nursery, sock_dir):
    path = os.path.join(sock_dir, "rude")
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(path)
    listener.listen(1)

    async def hang_up():
        conn, _ = await listener.accept()
        conn.close()

    nursery.start_soon(hang_up)
    with pytest.raises(AgentError, match="closed|failed"):
        await AgentClient(path).identities()
    listener.close()


async def test_rule_t21_bind_session_applies_to_later_requests_on_the_same_connection(nursery, sock_dir):
    key = KEYS["ssh-ed25519"]
    agent = InProcessAgent(proto.KeyStore(sign_policy=proto.require_bound_userauth))
    await agent.add(key)
    path = await nursery.start(agent.serve_unix, os.path.join(sock_dir, "a", "sock"))
    sid = os.urandom(32)
    data = _userauth_data(sid, key.public_key)
    async with AgentClient(path) as client:
        with pytest.raises(AgentError):
            await client.sign(key.public_key, data)
        await client.bind_session(HOST.public_key, sid, HOST.sign(sid), is_forwarding=False)
        assert key.public_key.verify(await client.sign(key.public_key, data), data)
    async with AgentClient(path) as fresh:  # another connection carries no binding
        with pytest.raises(AgentError):
            await fresh.sign(key.public_key, data)


# --------------------------------------------------------- Trio: our client and our server


class AgentServer(ssh_proto.SSHServer):
    """Accepts the keys in ``allowed``; its session handler is the test's ``on_session``."""

    allowed: set[bytes] = set()
    seen: list[PublicKey] = []
    on_session = None

    async def auth_publickey_acceptable(self, username, key):
        return key.blob in self.allowed

    async def auth_publickey(self, username, key):
        AgentServer.seen.append(key)
        return key.blob in self.allowed

    async def session(self, session):
        return await type(self).on_session(session)


@pytest.fixture
async def server(nursery):
    AgentServer.allowed, AgentServer.seen, AgentServer.on_session = set(), [], None
    return await nursery.start(functools.partial(ssh_proto.serve, AgentServer, "127.0.0.1", 0,
                                                 host_keys=[(HOST, None)]))


def connect(server, agent, **kw):
    return ssh_proto.connect("127.0.0.1", server.port, username="alice", agent=agent, known_hosts=None, **kw)


async def test_client_authenticates_with_an_agent_key(server):
    agent = InProcessAgent()
    await agent.add(KEYS["ssh-rsa"])
    AgentServer.allowed = {KEYS["ssh-rsa"].public_key.blob}

    async def hello(session):
        await session.send_all(b"in")
        return 0

    AgentServer.on_session = hello
    async with connect(server, agent) as conn:
        assert (await conn.run("x")).stdout == b"in"


async def test_rule_t21_client_binds_the_agent_to_the_session_before_signing(server):
    # An agent that signs only userauth for a bound session (as OpenSSH's agent does for
    # destination-constrained keys) works only if our client sent session-bind first.
    key = KEYS["ssh-ed25519"]
    agent = InProcessAgent(proto.KeyStore(sign_policy=proto.require_bound_userauth))
    await agent.add(key)
    AgentServer.allowed = {key.public_key.blob}

    async def hello(session):
        await session.send_all(b"bound")
        return 0

    AgentServer.on_session = hello
    async with connect(server, agent) as conn:
        assert (await conn.run("x")).stdout == b"bound"
    assert AgentServer.seen == [key.public_key]


async def test_client_skips_a_key_the_agent_refuses_to_sign_with(server):
    refused, used = KEYS["ssh-ed25519"], KEYS["ecdsa-sha2-nistp256"]
    store = proto.KeyStore(sign_policy=lambda key, data, bindings: key == used.public_key)
    store.add(refused)
    store.add(used)
    AgentServer.allowed = {refused.public_key.blob, used.public_key.blob}
    async with connect(server, InProcessAgent(store)):
        pass
    assert AgentServer.seen == [used.public_key]


async def _forwarded_socket_listing(session, results):
    path = await forward_agent_to_unix_socket(session.conn, "/tmp")
    results["mode"] = (stat.S_IMODE(os.stat(path).st_mode), stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode))
    results["path"] = path
    async with AgentClient(path) as forwarded:
        results["keys"] = await forwarded.identities()
        key = results["keys"][0]
        results["signature"] = await forwarded.sign(key, b"from the server")
        for attempt in (forwarded.add(PrivateKey.generate()), forwarded.remove_all()):
            try:
                await attempt
            except AgentError:
                results.setdefault("refused", 0)
                results["refused"] += 1
    return 0


async def test_agent_forwarding_end_to_end_in_process(server):
    key = KEYS["ssh-ed25519"]
    agent = InProcessAgent()
    await agent.add(key, comment="alice")
    AgentServer.allowed = {key.public_key.blob}
    results: dict = {}
    AgentServer.on_session = functools.partial(_forwarded_socket_listing, results=results)
    async with connect(server, agent) as conn:
        proc = await conn.open_session("x", agent_forwarding=True)
        assert (await proc.communicate()).exit_status == 0
    assert results["keys"] == [key.public_key]
    assert key.public_key.verify(results["signature"], b"from the server")
    assert results["mode"] == (0o600, 0o700)
    # rule T21 / CVE-2023-38408: a forwarded agent only lists and signs
    assert results["refused"] == 2 and await agent.identities() == [key.public_key]
    with trio.fail_after(5):
        while os.path.exists(results["path"]):  # removed with the connection
            await trio.sleep(0.01)


async def test_rule_t21_agent_channel_refused_when_client_did_not_request_forwarding(server):
    key = KEYS["ssh-ed25519"]
    agent = InProcessAgent()
    await agent.add(key)
    AgentServer.allowed = {key.public_key.blob}
    outcome: dict = {}

    async def rogue(session):
        with pytest.raises(AgentError):
            await forward_agent_to_unix_socket(session.conn, "/tmp")
        try:
            await session.conn.open_channel("auth-agent@openssh.com")  # the server tries anyway
        except ChannelOpenError as exc:
            outcome["refused"] = exc.reason
        return 0

    AgentServer.on_session = rogue
    async with connect(server, agent) as conn:
        await conn.run("x")  # agent_forwarding not requested
    assert outcome == {"refused": 1}  # SSH_OPEN_ADMINISTRATIVELY_PROHIBITED


async def test_rule_t21_no_forwarding_request_without_an_agent(server):
    key = KEYS["ssh-ed25519"]
    AgentServer.allowed = {key.public_key.blob}
    seen: list[bool] = []

    async def record(session):
        seen.append(session.agent_forwarding)
        return 0

    AgentServer.on_session = record
    async with ssh_proto.connect("127.0.0.1", server.port, username="alice", client_keys=[key],
                                 known_hosts=None) as conn:
        proc = await conn.open_session("x", agent_forwarding=True)
        await proc.communicate()
    assert seen == [False]
