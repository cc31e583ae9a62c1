"""The SSH agent protocol, sans-IO: message codec, framing and an in-memory key store.

This module owns the bytes of the agent protocol and the decisions of an agent; it does
no I/O (the Trio side is :mod:`ssh_proto.trio_io.agent`). It implements:

* framing, RFC 9987 (draft-miller-ssh-agent) §3: ``uint32 length || message``. A length
  above :data:`MAX_MESSAGE` (256 KiB, OpenSSH's AGENT_MAX_LEN) or of zero is refused by
  :func:`parse_frame_header` *before* any body is buffered;
* the messages of §3.2-3.8, one frozen class each, with :func:`decode_request` /
  :func:`decode_response` as the single entry points for bytes from a peer: REQUEST_IDENTITIES
  / IDENTITIES_ANSWER, SIGN_REQUEST / SIGN_RESPONSE with the ``SSH_AGENT_RSA_SHA2_256/512``
  flags (§3.6.1), ADD_IDENTITY and ADD_ID_CONSTRAINED for Ed25519, ECDSA P-256/384/521 and
  RSA keys and their OpenSSH certificates (§3.2, key formats of §4.2), REMOVE_IDENTITY,
  REMOVE_ALL_IDENTITIES, SUCCESS, FAILURE, EXTENSION and EXTENSION_FAILURE (§3.8);
* OpenSSH's ``session-bind@openssh.com`` extension (PROTOCOL.agent §1), parsed and its
  host-key signature over the session identifier verified (docs/security.md T21);
* :class:`KeyStore`, an agent's keys, answering one request with ``handle(message) ->
  message``; :class:`AgentConnection` adds what an agent keeps per client connection
  (its session bindings and a frame decoder).

Decisions, where the protocol leaves a choice:

* **No SHA-1.** A SIGN_REQUEST for an RSA key without an SHA-2 flag asks for an ``ssh-rsa``
  (SHA-1) signature; the store answers FAILURE. OpenSSH clients since 7.2 always set a flag.
  With both flags set, ``rsa-sha2-256`` wins, as in OpenSSH's ``agent_decode_alg``.
* **Unsupported means refused.** The ``confirm`` constraint (there is no one to ask),
  key-constraint extensions (their data is not self-delimiting, so they cannot be skipped),
  LOCK/UNLOCK, smartcard keys and unknown extensions are answered with FAILURE, never
  silently ignored. A malformed request is answered with FAILURE too (as OpenSSH does); a
  broken *frame* is a :class:`~ssh_proto.errors.ProtocolError` that ends the connection.
* **Session bindings** follow OpenSSH's ssh-agent: the signature must verify, a connection
  bound for authentication accepts no further binding, a session identifier is recorded
  once per host key, at most :data:`MAX_BINDINGS` per connection. What a binding permits is
  the store's ``sign_policy`` (see :func:`require_bound_userauth`).

>>> from ssh_proto.keys import PrivateKey
>>> store = KeyStore()
>>> key = PrivateKey.generate()
>>> store.add(key, comment="alice")
>>> answer = decode_response(store.handle(SignRequest(key.public_key.blob, b"hi").encode()))
>>> key.public_key.verify(answer.signature, b"hi")
True
"""
from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .auth import SERVICE_CONNECTION
from .errors import AgentError, KeyFormatError, ProtocolError
from .keys import (
    CERT_SUFFIX,
    MAX_RSA_BITS,
    MIN_RSA_BITS,
    Certificate,
    PrivateKey,
    PublicKey,
    parse_public_blob,
)
from .messages import MSG_USERAUTH_REQUEST
from .wire import Reader, Writer, encode_uint32

__all__ = [
    "MAX_BINDINGS",
    "MAX_MESSAGE",
    "SESSION_BIND",
    "SSH_AGENT_RSA_SHA2_256",
    "SSH_AGENT_RSA_SHA2_512",
    "AddIdentity",
    "AgentConnection",
    "AgentIdentity",
    "Extension",
    "ExtensionFailure",
    "Failure",
    "FrameDecoder",
    "IdentitiesAnswer",
    "KeyStore",
    "RemoveAllIdentities",
    "RemoveIdentity",
    "RequestIdentities",
    "SessionBind",
    "SessionBinding",
    "SessionBindings",
    "SignRequest",
    "SignResponse",
    "Success",
    "check_signature_algorithm",
    "decode_request",
    "decode_response",
    "flags_for_algorithm",
    "frame",
    "identities_from_answer",
    "parse_frame_header",
    "require_bound_userauth",
    "signature_algorithm_for",
]

# RFC 9987 §6.1 message numbers (names as in the draft).
SSH_AGENT_FAILURE = 5
SSH_AGENT_SUCCESS = 6
SSH_AGENTC_REQUEST_IDENTITIES = 11
SSH_AGENT_IDENTITIES_ANSWER = 12
SSH_AGENTC_SIGN_REQUEST = 13
SSH_AGENT_SIGN_RESPONSE = 14
SSH_AGENTC_ADD_IDENTITY = 17
SSH_AGENTC_REMOVE_IDENTITY = 18
SSH_AGENTC_REMOVE_ALL_IDENTITIES = 19
SSH_AGENTC_ADD_SMARTCARD_KEY = 20
SSH_AGENTC_REMOVE_SMARTCARD_KEY = 21
SSH_AGENTC_LOCK = 22
SSH_AGENTC_UNLOCK = 23
SSH_AGENTC_ADD_ID_CONSTRAINED = 25
SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED = 26
SSH_AGENTC_EXTENSION = 27
SSH_AGENT_EXTENSION_FAILURE = 28

# §3.6.1 signature flags
SSH_AGENT_RSA_SHA2_256 = 0x02
SSH_AGENT_RSA_SHA2_512 = 0x04

# §3.2.7 key constraints
SSH_AGENT_CONSTRAIN_LIFETIME = 1
SSH_AGENT_CONSTRAIN_CONFIRM = 2
SSH_AGENT_CONSTRAIN_EXTENSION = 255

#: Largest message accepted, either direction (OpenSSH AGENT_MAX_LEN).
MAX_MESSAGE = 256 * 1024
#: PROTOCOL.agent §1; the extension name.
SESSION_BIND = "session-bind@openssh.com"
#: Session bindings kept per agent connection (OpenSSH AGENT_MAX_SESSION_IDS).
MAX_BINDINGS = 16
#: Longest session identifier accepted in a binding (OpenSSH AGENT_MAX_SID_LEN).
MAX_SESSION_ID = 128
#: Keys one store holds; a bound on what local clients can make us keep.
MAX_KEYS = 1024

_MAX_NAME = 64
_MAX_COMMENT = 4096
_ED25519 = "ssh-ed25519"
_RSA = "ssh-rsa"
# RFC 5656 §6.1 curve identifiers per key type.
_CURVES: dict[str, tuple[str, type[ec.EllipticCurve]]] = {
    "ecdsa-sha2-nistp256": ("nistp256", ec.SECP256R1),
    "ecdsa-sha2-nistp384": ("nistp384", ec.SECP384R1),
    "ecdsa-sha2-nistp521": ("nistp521", ec.SECP521R1),
}


# ----------------------------------------------------------------------------- framing


def frame(message: bytes) -> bytes:
    """``uint32 length || message`` (§3); refuses to build an oversized frame."""
    if not 0 < len(message) <= MAX_MESSAGE:
        raise ProtocolError(f"agent message of {len(message)} bytes is not sendable")
    return encode_uint32(len(message)) + message


def parse_frame_header(header: bytes) -> int:
    """The body length a 4-byte frame header announces, checked against MAX_MESSAGE."""
    if len(header) != 4:
        raise ProtocolError("truncated agent frame header")
    length = int.from_bytes(header, "big")
    if length == 0:
        raise ProtocolError("empty agent message")
    if length > MAX_MESSAGE:
        raise ProtocolError(f"agent message of {length} bytes exceeds {MAX_MESSAGE}")
    return length


class FrameDecoder:
    """Splits a byte stream into agent messages; never buffers more than one frame.

    >>> d = FrameDecoder()
    >>> d.feed(frame(b"\\x0b")[:3]); d.next_message() is None
    True
    >>> d.feed(frame(b"\\x0b")[3:]); d.next_message()
    b'\\x0b'
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Add received bytes; an oversized frame is refused as soon as its length arrives."""
        self._buffer += data
        if len(self._buffer) >= 4:
            # checked on arrival, so an oversized frame is refused before its body comes
            parse_frame_header(bytes(self._buffer[:4]))

    def next_message(self) -> bytes | None:
        """The next complete message (without its length), or None until more data comes."""
        if len(self._buffer) < 4:
            return None
        length = parse_frame_header(bytes(self._buffer[:4]))
        if len(self._buffer) < 4 + length:
            return None
        message = bytes(self._buffer[4:4 + length])
        del self._buffer[:4 + length]
        if len(self._buffer) >= 4:
            parse_frame_header(bytes(self._buffer[:4]))
        return message

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a message."""
        return len(self._buffer)


# -------------------------------------------------------------------- private key formats


def _ed25519_fields(crypto_key: Any) -> bytes:
    """§4.2.3: string ENC(A), string k || ENC(A)."""
    seed = crypto_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    public = crypto_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                  serialization.PublicFormat.Raw)
    return Writer().string(public).string(seed + public).getvalue()


def _encode_private(key: PrivateKey, certificate: Certificate | None) -> bytes:
    """The key part of ADD_IDENTITY (§4.2): the same layout as OpenSSH private key files."""
    key_type, crypto = key.key_type, key.crypto_key
    w = Writer()
    if certificate is not None:
        w.string(certificate.key_type).string(certificate.blob)
    else:
        w.string(key_type)
    if key_type == _ED25519:
        return w.raw(_ed25519_fields(crypto)).getvalue()
    if key_type in _CURVES:
        if certificate is None:
            point = crypto.public_key().public_bytes(serialization.Encoding.X962,
                                                     serialization.PublicFormat.UncompressedPoint)
            w.string(_CURVES[key_type][0]).string(point)
        return w.mpint(crypto.private_numbers().private_value).getvalue()
    n = crypto.private_numbers()
    if certificate is None:
        w.mpint(n.public_numbers.n).mpint(n.public_numbers.e)
    return w.mpint(n.d).mpint(n.iqmp).mpint(n.p).mpint(n.q).getvalue()


def _read_ed25519(r: Reader, expected_public: bytes | None) -> Any:
    public = r.string(64)
    secret = r.string(128)
    if len(public) != 32 or len(secret) != 64:
        raise KeyFormatError("ssh-ed25519 private key has the wrong length")
    # the 64-byte secret repeats the public key; all three copies must agree
    derived = ed25519.Ed25519PrivateKey.from_private_bytes(secret[:32])
    raw = derived.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    if raw != public or secret[32:] != public or expected_public not in (None, public):
        raise KeyFormatError("ssh-ed25519 private key does not match its public key")
    return derived


def _read_ecdsa(r: Reader, key_type: str, certified: Certificate | None) -> Any:
    ident, curve = _CURVES[key_type]
    if certified is None:
        if r.ascii(_MAX_NAME) != ident:
            raise KeyFormatError(f"{key_type} private key names a different curve")
        point = r.string(1 + 2 * 66)
    else:
        point = certified.public_key.crypto_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    scalar = r.mpint()
    try:
        derived = ec.derive_private_key(scalar, curve())
    except (ValueError, TypeError):
        raise KeyFormatError(f"{key_type} private scalar is out of range") from None
    mine = derived.public_key().public_bytes(serialization.Encoding.X962,
                                             serialization.PublicFormat.UncompressedPoint)
    if mine != point:
        raise KeyFormatError(f"{key_type} private key does not match its public point")
    return derived


def _read_rsa(r: Reader, certified: Certificate | None) -> Any:
    if certified is None:
        n, e = r.mpint(), r.mpint()
    else:
        numbers = certified.public_key.crypto_key.public_numbers()
        n, e = numbers.n, numbers.e
    d, iqmp, p, q = r.mpint(), r.mpint(), r.mpint(), r.mpint()
    if min(n, e, d, iqmp) <= 0 or p <= 1 or q <= 1 or p * q != n:
        raise KeyFormatError("ssh-rsa private key is inconsistent")
    if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
        raise KeyFormatError(f"ssh-rsa key must be {MIN_RSA_BITS}..{MAX_RSA_BITS} bits")
    try:
        return rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), iqmp,
                                     rsa.RSAPublicNumbers(e, n)).private_key()
    except (ValueError, TypeError):
        raise KeyFormatError("ssh-rsa private key is inconsistent") from None


def _decode_private(r: Reader) -> tuple[PrivateKey, Certificate | None]:
    key_type = r.ascii(_MAX_NAME)
    certificate = None
    if key_type.endswith(CERT_SUFFIX):
        parsed = parse_public_blob(r.string(MAX_MESSAGE))
        if not isinstance(parsed, Certificate) or parsed.key_type != key_type:
            raise KeyFormatError("ADD_IDENTITY certificate does not match its type name")
        certificate, key_type = parsed, key_type[: -len(CERT_SUFFIX)]
    if key_type == _ED25519:
        expected = certificate.public_key.blob[-32:] if certificate else None
        crypto = _read_ed25519(r, expected)
    elif key_type in _CURVES:
        crypto = _read_ecdsa(r, key_type, certificate)
    elif key_type == _RSA:
        crypto = _read_rsa(r, certificate)
    else:
        raise KeyFormatError(f"unsupported agent key type {key_type[:_MAX_NAME]!r}")
    key = PrivateKey.from_crypto_key(crypto)
    if certificate is not None and certificate.public_key != key.public_key:
        raise KeyFormatError("certificate does not certify the added private key")
    return key, certificate


def _comment(raw: bytes) -> str:
    # OpenSSH comments are C strings of any bytes; keep them readable, never fail on them
    return raw.decode("utf-8", "replace")


# ---------------------------------------------------------------------------- requests


class _TypeOnly:
    """A message that is only its type byte."""

    __slots__ = ()
    TYPE: ClassVar[int]

    def encode(self) -> bytes:
        return bytes((self.TYPE,))

    @classmethod
    def _decode(cls, r: Reader) -> Any:
        return cls()


@dataclass(frozen=True, slots=True)
class RequestIdentities(_TypeOnly):
    """§3.4 SSH_AGENTC_REQUEST_IDENTITIES."""

    TYPE: ClassVar[int] = SSH_AGENTC_REQUEST_IDENTITIES


@dataclass(frozen=True, slots=True)
class SignRequest:
    """§3.6 SSH_AGENTC_SIGN_REQUEST: ``key_blob`` may be a plain key or a certificate."""

    TYPE: ClassVar[int] = SSH_AGENTC_SIGN_REQUEST
    key_blob: bytes
    data: bytes
    flags: int = 0

    def encode(self) -> bytes:
        """The message's bytes (without the length frame)."""
        return (Writer().byte(self.TYPE).string(self.key_blob).string(self.data)
                .uint32(self.flags).getvalue())

    @classmethod
    def _decode(cls, r: Reader) -> SignRequest:
        return cls(r.string(), r.string(), r.uint32())


@dataclass(frozen=True, slots=True, repr=False)
class AddIdentity:
    """§3.2 ADD_IDENTITY, or ADD_ID_CONSTRAINED when a constraint is set (§3.2.7).

    ``lifetime`` is the LIFETIME constraint in seconds; ``confirm`` the CONFIRM one.
    """

    key: PrivateKey
    certificate: Certificate | None = None
    comment: str = ""
    lifetime: int | None = None
    confirm: bool = False

    def encode(self) -> bytes:
        """The message's bytes (without the length frame)."""
        constraints = Writer()
        if self.lifetime is not None:
            constraints.byte(SSH_AGENT_CONSTRAIN_LIFETIME).uint32(self.lifetime)
        if self.confirm:
            constraints.byte(SSH_AGENT_CONSTRAIN_CONFIRM)
        tail = constraints.getvalue()
        kind = SSH_AGENTC_ADD_ID_CONSTRAINED if tail else SSH_AGENTC_ADD_IDENTITY
        return (Writer().byte(kind).raw(_encode_private(self.key, self.certificate))
                .string(self.comment).raw(tail).getvalue())

    @classmethod
    def _decode(cls, r: Reader, constrained: bool) -> AddIdentity:
        key, certificate = _decode_private(r)
        comment = _comment(r.string(_MAX_COMMENT))
        lifetime, confirm = None, False
        while constrained and r.remaining:
            kind = r.byte()
            if kind == SSH_AGENT_CONSTRAIN_LIFETIME and lifetime is None:
                lifetime = r.uint32()
            elif kind == SSH_AGENT_CONSTRAIN_CONFIRM and not confirm:
                confirm = True
            else:
                raise ProtocolError(f"unsupported or repeated key constraint {kind}")
        return cls(key, certificate, comment, lifetime, confirm)

    def __repr__(self) -> str:  # never the private key
        cert = f" cert={self.certificate.key_id!r}" if self.certificate else ""
        return f"<AddIdentity {self.key!r}{cert} comment={self.comment!r}>"


@dataclass(frozen=True, slots=True)
class RemoveIdentity:
    """§3.3 SSH_AGENTC_REMOVE_IDENTITY."""

    TYPE: ClassVar[int] = SSH_AGENTC_REMOVE_IDENTITY
    key_blob: bytes

    def encode(self) -> bytes:
        """The message's bytes (without the length frame)."""
        return Writer().byte(self.TYPE).string(self.key_blob).getvalue()

    @classmethod
    def _decode(cls, r: Reader) -> RemoveIdentity:
        return cls(r.string())


@dataclass(frozen=True, slots=True)
class RemoveAllIdentities(_TypeOnly):
    """§3.3 SSH_AGENTC_REMOVE_ALL_IDENTITIES."""

    TYPE: ClassVar[int] = SSH_AGENTC_REMOVE_ALL_IDENTITIES


@dataclass(frozen=True, slots=True)
class Extension:
    """§3.8 SSH_AGENTC_EXTENSION; ``contents`` are the raw bytes after the name.

    OpenSSH appends the contents without a length, unlike early drafts; so do we.
    """

    TYPE: ClassVar[int] = SSH_AGENTC_EXTENSION
    name: str
    contents: bytes = b""

    def encode(self) -> bytes:
        """The message's bytes (without the length frame)."""
        return Writer().byte(self.TYPE).string(self.name).raw(self.contents).getvalue()


@dataclass(frozen=True, slots=True)
class SessionBind:
    """PROTOCOL.agent §1 ``session-bind@openssh.com``: this connection serves that session.

    ``signature`` is the server's host-key signature over ``session_id`` (the exchange hash
    of the first key exchange, RFC 4253 §8), as sent in its KEX reply.
    """

    host_key: PublicKey | Certificate
    session_id: bytes
    signature: bytes
    is_forwarding: bool

    def encode(self) -> bytes:
        """The message's bytes (without the length frame)."""
        contents = (Writer().string(self.host_key.blob).string(self.session_id)
                    .string(self.signature).boolean(self.is_forwarding).getvalue())
        return Extension(SESSION_BIND, contents).encode()

    @classmethod
    def _decode(cls, contents: bytes) -> SessionBind:
        r = Reader(contents)
        host_key = parse_public_blob(r.string())
        session_id = r.string(MAX_SESSION_ID)
        signature = r.string()
        is_forwarding = r.boolean()
        r.finish()
        if not session_id:
            raise ProtocolError("session-bind with an empty session identifier")
        return cls(host_key, session_id, signature, is_forwarding)

    def verify(self) -> bool:
        """Did the host key sign the session identifier? (no SHA-1, like our transport)"""
        return self.host_key.verify(self.signature, self.session_id)


Request = (RequestIdentities | SignRequest | AddIdentity | RemoveIdentity | RemoveAllIdentities
           | Extension | SessionBind)


def _decode_extension(r: Reader) -> Extension | SessionBind:
    name = r.ascii(_MAX_NAME)
    contents = r.rest()
    if name == SESSION_BIND:
        return SessionBind._decode(contents)
    return Extension(name, contents)


def decode_request(message: bytes) -> Request:
    """Decode one agent request (the message without its frame length).

    Raises :class:`ProtocolError` (or its :class:`KeyFormatError`) for anything malformed,
    unknown or unsupported; nothing else escapes.
    """
    r = Reader(bytes(message))
    kind = r.byte()
    request: Request
    if kind in (SSH_AGENTC_ADD_IDENTITY, SSH_AGENTC_ADD_ID_CONSTRAINED):
        request = AddIdentity._decode(r, kind == SSH_AGENTC_ADD_ID_CONSTRAINED)
    elif kind == SSH_AGENTC_EXTENSION:
        return _decode_extension(r)
    else:
        decoder = _SIMPLE_REQUESTS.get(kind)
        if decoder is None:
            raise ProtocolError(f"unsupported agent request {kind}")
        request = decoder._decode(r)
    r.finish()
    return request


_SIMPLE_REQUESTS: dict[int, Any] = {
    cls.TYPE: cls for cls in (RequestIdentities, SignRequest, RemoveIdentity, RemoveAllIdentities)
}


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class Failure(_TypeOnly):
    """§3.1 SSH_AGENT_FAILURE."""

    TYPE: ClassVar[int] = SSH_AGENT_FAILURE


@dataclass(frozen=True, slots=True)
class Success(_TypeOnly):
    """§3.1 SSH_AGENT_SUCCESS."""

    TYPE: ClassVar[int] = SSH_AGENT_SUCCESS


@dataclass(frozen=True, slots=True)
class ExtensionFailure(_TypeOnly):
    """§3.8 SSH_AGENT_EXTENSION_FAILURE: a supported extension failed."""

    TYPE: ClassVar[int] = SSH_AGENT_EXTENSION_FAILURE


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """One entry of IDENTITIES_ANSWER: the public blob as sent, and its comment."""

    key_blob: bytes
    comment: str = ""


@dataclass(frozen=True, slots=True)
class IdentitiesAnswer:
    """§3.5 SSH_AGENT_IDENTITIES_ANSWER."""

    TYPE: ClassVar[int] = SSH_AGENT_IDENTITIES_ANSWER
    identities: tuple[AgentIdentity, ...] = ()

    def encode(self) -> bytes:
        """The message's bytes (without the length frame)."""
        w = Writer().byte(self.TYPE).uint32(len(self.identities))
        for ident in self.identities:
            w.string(ident.key_blob).string(ident.comment)
        return w.getvalue()

    @classmethod
    def _decode(cls, r: Reader) -> IdentitiesAnswer:
        count = r.uint32()
        # each entry is at least two empty strings: refuse a count the bytes cannot hold
        if count > r.remaining // 8:
            raise ProtocolError(f"identities answer claims {count} keys")
        return cls(tuple(AgentIdentity(r.string(), _comment(r.string())) for _ in range(count)))


@dataclass(frozen=True, slots=True)
class SignResponse:
    """§3.6 SSH_AGENT_SIGN_RESPONSE: an SSH signature blob."""

    TYPE: ClassVar[int] = SSH_AGENT_SIGN_RESPONSE
    signature: bytes

    def encode(self) -> bytes:
        """The message's bytes (without the length frame)."""
        return Writer().byte(self.TYPE).string(self.signature).getvalue()

    @classmethod
    def _decode(cls, r: Reader) -> SignResponse:
        return cls(r.string())


Response = Failure | Success | ExtensionFailure | IdentitiesAnswer | SignResponse
_RESPONSES: dict[int, Any] = {
    cls.TYPE: cls for cls in (Failure, Success, ExtensionFailure, IdentitiesAnswer, SignResponse)
}


def decode_response(message: bytes) -> Response:
    """Decode one agent reply; :class:`ProtocolError` for anything malformed or unknown."""
    r = Reader(bytes(message))
    kind = r.byte()
    decoder = _RESPONSES.get(kind)
    if decoder is None:
        raise ProtocolError(f"unexpected agent reply {kind}")
    response = decoder._decode(r)
    r.finish()
    return response


# ------------------------------------------------------------------ signature algorithms


def _plain_key_type(key: PublicKey | Certificate) -> str:
    return key.public_key.key_type if isinstance(key, Certificate) else key.key_type


def signature_algorithm_for(key: PublicKey | Certificate, flags: int) -> str | None:
    """The signature algorithm a SIGN_REQUEST with ``flags`` asks of ``key`` (§3.6.1).

    None for an RSA key without an SHA-2 flag: that is a request for SHA-1 ``ssh-rsa``,
    which we refuse.
    """
    key_type = _plain_key_type(key)
    if key_type != _RSA:
        return key_type
    if flags & SSH_AGENT_RSA_SHA2_256:  # checked first, like OpenSSH's agent_decode_alg
        return "rsa-sha2-256"
    if flags & SSH_AGENT_RSA_SHA2_512:
        return "rsa-sha2-512"
    return None


def flags_for_algorithm(algorithm: str) -> int:
    """The SIGN_REQUEST flags asking for ``algorithm`` (plain or certificate name)."""
    plain = algorithm.removesuffix(CERT_SUFFIX)
    return {"rsa-sha2-256": SSH_AGENT_RSA_SHA2_256,
            "rsa-sha2-512": SSH_AGENT_RSA_SHA2_512}.get(plain, 0)


# -------------------------------------------------------------------- session bindings


@dataclass(frozen=True, slots=True)
class SessionBinding:
    """A verified ``session-bind@openssh.com`` recorded on one agent connection."""

    host_key: PublicKey | Certificate
    session_id: bytes
    is_forwarding: bool


class SessionBindings:
    """What one agent connection was bound to, oldest first (PROTOCOL.agent §1)."""

    __slots__ = ("_bound",)

    def __init__(self) -> None:
        self._bound: list[SessionBinding] = []

    def __iter__(self):
        return iter(tuple(self._bound))

    def __len__(self) -> int:
        return len(self._bound)

    @property
    def last(self) -> SessionBinding | None:
        """The most recent binding, or None."""
        return self._bound[-1] if self._bound else None

    def bind(self, request: SessionBind) -> bool:
        """Record ``request`` if it verifies and is consistent (rule T21); else False."""
        if not request.verify():
            return False
        for bound in self._bound:
            if not bound.is_forwarding:
                return False  # a connection bound for authentication is done binding
            if hmac.compare_digest(bound.session_id, request.session_id):
                # already recorded: fine for the same host key, a forgery attempt otherwise
                return bound.host_key == request.host_key
        if len(self._bound) >= MAX_BINDINGS:
            return False
        self._bound.append(SessionBinding(request.host_key, request.session_id,
                                          request.is_forwarding))
        return True


#: ``sign_policy(key, data, bindings) -> bool``: may ``key`` sign ``data`` on a connection
#: with these bindings? Called after the key and algorithm are known to be fine.
SignPolicy = Callable[[PublicKey | Certificate, bytes, SessionBindings], bool]


def _userauth_session_id(key: PublicKey | Certificate, data: bytes) -> tuple[bytes, bytes | None]:
    """Parse ``data`` as what a publickey USERAUTH_REQUEST signs (RFC 4252 §7) for ``key``.

    Returns (session id, host key blob or None); ``publickey-hostbound-v00@openssh.com``
    carries the server's host key after the key blob.
    """
    r = Reader(data)
    session_id = r.string(MAX_SESSION_ID)
    if r.byte() != MSG_USERAUTH_REQUEST:
        raise ProtocolError("not a userauth request")
    r.string()  # user name
    service, method = r.ascii(_MAX_NAME), r.ascii(_MAX_NAME)
    if service != SERVICE_CONNECTION or not r.boolean():
        raise ProtocolError("not a signed ssh-connection userauth request")
    r.ascii(_MAX_NAME)  # the pkalg; the key blob below decides
    if r.string() != key.blob:
        raise ProtocolError("userauth request names another key")
    host_key = None
    if method == "publickey-hostbound-v00@openssh.com":
        host_key = r.string()
    elif method != "publickey":
        raise ProtocolError("not a publickey userauth request")
    r.finish()
    return session_id, host_key


def require_bound_userauth(key: PublicKey | Certificate, data: bytes,
                           bindings: SessionBindings) -> bool:
    """A strict ``sign_policy``: sign only user authentication for the bound session.

    The connection must carry a session binding, ``data`` must be a publickey userauth
    request for ``key`` whose session identifier is that of the most recent binding (and,
    for ``publickey-hostbound``, whose host key is the bound one) — what OpenSSH's agent
    demands of destination-constrained keys. Arbitrary data is never signed.
    """
    last = bindings.last
    if last is None:
        return False
    try:
        session_id, host_key = _userauth_session_id(key, data)
    except ProtocolError:
        return False
    if host_key is not None and host_key != last.host_key.blob:
        return False
    return hmac.compare_digest(session_id, last.session_id)


# ---------------------------------------------------------------------------- key store


@dataclass(slots=True, repr=False)
class _Entry:
    public: PublicKey | Certificate
    key: PrivateKey
    comment: str
    expires: float | None


class KeyStore:
    """An agent's keys, and its answer to each request.

    ``handle(message, bindings)`` maps one request message to one reply message; it never
    raises for a peer's bytes. ``clock`` (monotonic seconds) drives LIFETIME constraints;
    ``sign_policy`` may refuse a signature given the connection's session bindings.

    >>> store = KeyStore()
    >>> decode_response(store.handle(RequestIdentities().encode()))
    IdentitiesAnswer(identities=())
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 sign_policy: SignPolicy | None = None, max_keys: int = MAX_KEYS):
        self._clock = clock
        self._sign_policy = sign_policy
        self._max_keys = max_keys
        self._entries: dict[bytes, _Entry] = {}

    # ---- direct use ---------------------------------------------------------------------
    def add(self, key: PrivateKey, certificate: Certificate | None = None, comment: str = "",
            *, lifetime: float | None = None) -> None:
        """Hold ``key`` (as ``certificate`` when given); an existing entry is replaced."""
        if certificate is not None and certificate.public_key != key.public_key:
            raise KeyFormatError("certificate does not certify this key")
        self._expire()
        public = certificate if certificate is not None else key.public_key
        if public.blob not in self._entries and len(self._entries) >= self._max_keys:
            raise AgentError(f"agent already holds {self._max_keys} keys")
        expires = None if lifetime is None else self._clock() + lifetime
        self._entries[public.blob] = _Entry(public, key, comment, expires)

    def remove(self, key: PublicKey | Certificate) -> bool:
        """Forget ``key``; False when it was not held."""
        return self._entries.pop(key.blob, None) is not None

    def remove_all(self) -> None:
        """Forget every key."""
        self._entries.clear()

    def identities(self) -> list[tuple[PublicKey | Certificate, str]]:
        """(public key or certificate, comment) pairs, in the order they were added."""
        self._expire()
        return [(e.public, e.comment) for e in self._entries.values()]

    def _expire(self) -> None:
        now = self._clock()
        for blob in [b for b, e in self._entries.items() if e.expires is not None and e.expires <= now]:
            del self._entries[blob]

    # ---- protocol ----------------------------------------------------------------------
    def handle(self, message: bytes, bindings: SessionBindings | None = None) -> bytes:
        """Answer one request message with one reply message (both without framing)."""
        self._expire()
        try:
            request = decode_request(message)
        except ProtocolError:
            return Failure().encode()
        if bindings is None:
            bindings = SessionBindings()  # a one-shot connection
        return self._answer(request, bindings).encode()

    def _answer(self, request: Request, bindings: SessionBindings) -> Response:
        if isinstance(request, RequestIdentities):
            return IdentitiesAnswer(tuple(AgentIdentity(e.public.blob, e.comment)
                                          for e in self._entries.values()))
        if isinstance(request, SignRequest):
            return self._sign(request, bindings)
        if isinstance(request, AddIdentity):
            return self._add(request)
        if isinstance(request, RemoveIdentity):
            return Success() if self._entries.pop(request.key_blob, None) else Failure()
        if isinstance(request, RemoveAllIdentities):
            self.remove_all()
            return Success()
        if isinstance(request, SessionBind):
            return Success() if bindings.bind(request) else Failure()
        return Failure()  # an extension we do not implement (§3.8: plain FAILURE)

    def _sign(self, request: SignRequest, bindings: SessionBindings) -> Response:
        entry = self._entries.get(request.key_blob)
        if entry is None:
            return Failure()
        algorithm = signature_algorithm_for(entry.public, request.flags)
        if algorithm is None:
            return Failure()  # SHA-1 ssh-rsa: refused, see the module docstring
        if self._sign_policy is not None and not self._sign_policy(entry.public, request.data,
                                                                   bindings):
            return Failure()
        return SignResponse(entry.key.sign(request.data, algorithm))

    def _add(self, request: AddIdentity) -> Response:
        if request.confirm:
            return Failure()  # no way to ask the user: refuse rather than sign unasked
        try:
            self.add(request.key, request.certificate, request.comment,
                     lifetime=request.lifetime)
        except (AgentError, ProtocolError):
            return Failure()
        return Success()


class AgentConnection:
    """What an agent keeps for one client connection: its bindings and partial frames.

    ``receive_data(bytes) -> bytes`` takes what the client sent and returns the framed
    replies to send back; ``handle(message) -> message`` answers one unframed request.
    Frame errors raise :class:`ProtocolError`: close the connection.
    """

    def __init__(self, store: KeyStore):
        self.store = store
        self.bindings = SessionBindings()
        self._frames = FrameDecoder()

    def handle(self, message: bytes) -> bytes:
        """Answer one agent request (unframed) with one reply (unframed)."""
        return self.store.handle(message, self.bindings)

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes from the client; returns the framed replies to the complete requests."""
        self._frames.feed(data)
        replies: list[bytes] = []
        while (message := self._frames.next_message()) is not None:
            replies.append(frame(self.handle(message)))
        return b"".join(replies)


def identities_from_answer(answer: IdentitiesAnswer) -> list[tuple[PublicKey | Certificate, str]]:
    """The keys of an IDENTITIES_ANSWER we can use; other types (sk-*, DSA...) are skipped."""
    keys: list[tuple[PublicKey | Certificate, str]] = []
    for ident in answer.identities:
        try:
            keys.append((parse_public_blob(ident.key_blob), ident.comment))
        except KeyFormatError:
            continue
    return keys


def check_signature_algorithm(signature: bytes, expected: str) -> None:
    """Raise unless an agent's ``signature`` blob is of the plain algorithm ``expected``."""
    r = Reader(signature)
    name = r.ascii(_MAX_NAME)
    r.string()
    r.finish()
    if name != expected.removesuffix(CERT_SUFFIX):
        raise ProtocolError(f"agent signed with {name!r}, not {expected!r}")
