"""SSH key exchange methods, the exchange hash and key derivation (sans-IO).

This module owns the cryptographic half of an SSH key exchange: the ephemeral
key shares, the checks on the peer's share, the shared secret ``K``, the
exchange hash ``H`` and the derivation of session keys from them. It never
negotiates (the transport picks the method from the two KEXINITs), never
verifies host-key signatures (the transport knows the host-key policy) and
never does I/O: a client turns into the payload of message 30 and then turns
the payload of message 31 into a :class:`KexResult`; a server does the reverse.

Implemented:

* ``mlkem768x25519-sha256`` -- draft-ietf-sshm-mlkem-hybrid-kex §2: ML-KEM-768
  (FIPS 203) combined with X25519; ``K = string(SHA-256(K_PQ || K_CL))``.
* ``curve25519-sha256`` and ``curve25519-sha256@libssh.org`` -- RFC 8731 §3;
  ``K = mpint`` of the X25519 output read as an unsigned big-endian number.
* ``ecdh-sha2-nistp256/384/521`` -- RFC 5656 §4 and §7.1; uncompressed points only.
* ``diffie-hellman-group14-sha256`` and ``diffie-hellman-group16-sha512`` --
  RFC 8268 §3 with the MODP groups of RFC 3526 §3 and §5; exchange per RFC 4253 §8.
* :func:`derive_key` -- RFC 4253 §7.2, including the extension ``K1 || K2 || ...``.

Every method hashes the same shape (RFC 4253 §8, RFC 5656 §4)::

    H = HASH(string V_C || string V_S || string I_C || string I_S ||
             string K_S || client value || server value || K)

where the client and server values are encoded exactly as on the wire
(``mpint`` for finite-field DH, ``string`` for everything else).

Rule T10 of docs/security.md is enforced here: X25519 values are exactly
32 bytes and an all-zero X25519 result aborts; NIST points must be uncompressed
and on the curve; DH values must lie in ``[2, p-2]``; ML-KEM keys and
ciphertexts have exact lengths and pass the FIPS 203 key check. Every such
failure raises :class:`KeyExchangeError`; malformed messages raise
:class:`ProtocolError`.

Example (both roles in memory)::

    method = KEX_METHODS["curve25519-sha256"]
    client, server = method.client(), method.server()
    reply, server_result = server.process_init(client.init_message(), inputs,
                                               host_key_blob, host_key.sign)
    client_result = client.process_reply(reply, inputs)
    assert client_result.exchange_hash == server_result.exchange_hash
"""
from __future__ import annotations

import abc
import hashlib
import hmac
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
from cryptography.utils import CryptographyDeprecationWarning

from .errors import KeyExchangeError, ProtocolError
from .wire import Reader, encode_mpint, encode_string

with warnings.catch_warnings():
    # cryptography 50 deprecates finite-field DH (the warning fires when these
    # names are looked up). SSH still needs it for peers without ECDH, and
    # OpenSSL's constant-time modexp beats a hand-written pow() here.
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    from cryptography.hazmat.primitives.asymmetric.dh import (
        DHParameterNumbers,
        DHPrivateNumbers,
        DHPublicNumbers,
    )

__all__ = [
    "DEFAULT_KEX",
    "DEFAULT_SERVER_KEX",
    "KEX_METHODS",
    "ExchangeInputs",
    "KexClient",
    "KexMethod",
    "KexResult",
    "KexServer",
    "SSH_MSG_KEXDH_INIT",
    "SSH_MSG_KEXDH_REPLY",
    "SSH_MSG_KEX_ECDH_INIT",
    "SSH_MSG_KEX_ECDH_REPLY",
    "SSH_MSG_KEX_HYBRID_INIT",
    "SSH_MSG_KEX_HYBRID_REPLY",
    "derive_key",
]

# RFC 4253 §8, RFC 5656 §7.1 and the hybrid draft all reuse numbers 30 and 31.
SSH_MSG_KEXDH_INIT = 30
SSH_MSG_KEXDH_REPLY = 31
SSH_MSG_KEX_ECDH_INIT = 30
SSH_MSG_KEX_ECDH_REPLY = 31
SSH_MSG_KEX_HYBRID_INIT = 30
SSH_MSG_KEX_HYBRID_REPLY = 31

class _Hasher(Protocol):
    """What the exchange hash and key derivation use of a ``hashlib`` object."""

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


_HASHES: Mapping[str, Callable[..., _Hasher]] = types.MappingProxyType(
    {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
)

_X25519_LEN = 32
_MLKEM768_PUBLIC_LEN = 1184  # FIPS 203 §8, table 3: ek for ML-KEM-768
_MLKEM768_CIPHERTEXT_LEN = 1088
_MLKEM768_SEED_LEN = 64  # d || z, FIPS 203 §7.1


def _hash_function(hash_name: str) -> Callable[..., _Hasher]:
    try:
        return _HASHES[hash_name]
    except KeyError:
        raise ValueError(f"unsupported key exchange hash {hash_name!r}") from None


# --------------------------------------------------------------------------
# Inputs and results


@dataclass(frozen=True, slots=True)
class ExchangeInputs:
    """The part of the exchange hash every method shares (RFC 4253 §8).

    ``client_kexinit``/``server_kexinit`` are the full KEXINIT payloads, starting
    with the message number 20; the versions carry no CR LF.
    """

    client_version: bytes
    server_version: bytes
    client_kexinit: bytes
    server_kexinit: bytes

    def hash_prefix(self) -> bytes:
        """The exchange hash's common fields (versions, KEXINITs, host key), each an SSH string."""
        return b"".join(
            encode_string(part)
            for part in (
                self.client_version,
                self.server_version,
                self.client_kexinit,
                self.server_kexinit,
            )
        )


@dataclass(frozen=True, slots=True)
class KexResult:
    """Outcome of one key exchange, identical on both sides when it succeeded.

    ``shared_secret`` is K already SSH-encoded (mpint or string) as it enters
    the hash and :func:`derive_key`; it is kept out of ``repr``.
    """

    shared_secret: bytes = field(repr=False)
    exchange_hash: bytes
    host_key_blob: bytes
    signature: bytes
    hash_name: str


@dataclass(frozen=True, slots=True)
class _Reply:
    """Decoded SSH_MSG_KEX*_REPLY (RFC 4253 §8, RFC 5656 §4)."""

    host_key_blob: bytes
    server_value: bytes | int
    signature: bytes


def _exchange_hash(
    method: KexMethod,
    inputs: ExchangeInputs,
    host_key_blob: bytes,
    client_value: bytes | int,
    server_value: bytes | int,
    shared_secret: bytes,
) -> bytes:
    h = _hash_function(method.hash_name)()
    h.update(inputs.hash_prefix())
    h.update(encode_string(host_key_blob))
    h.update(method._encode_value(client_value))
    h.update(method._encode_value(server_value))
    h.update(shared_secret)
    return h.digest()


def derive_key(
    hash_name: str,
    shared_secret: bytes,
    exchange_hash: bytes,
    session_id: bytes,
    letter: bytes,
    size: int,
) -> bytes:
    """Derive ``size`` bytes of key material, RFC 4253 §7.2.

    ``letter`` is one of ``b"A"`` .. ``b"F"`` (IVs, encryption keys and MAC keys,
    client-to-server first). ``shared_secret`` is the encoded K from
    :class:`KexResult`. Longer keys are extended with
    ``K2 = HASH(K || H || K1)``, ``K3 = HASH(K || H || K1 || K2)``, ...
    """
    hash_fn = _hash_function(hash_name)
    if len(letter) != 1 or letter not in b"ABCDEF":
        raise ValueError("key letter must be one of A..F")
    if size < 0:
        raise ValueError("key size must not be negative")
    prefix = shared_secret + exchange_hash
    key = hash_fn(prefix + letter + session_id).digest()
    while len(key) < size:
        key += hash_fn(prefix + key).digest()
    return key[:size]


# --------------------------------------------------------------------------
# The two roles; the methods below only supply key shares.


class KexClient:
    """Client side of one key exchange; single use.

    Send :meth:`init_message`, then hand the server's reply to
    :meth:`process_reply`. The ephemeral secret is dropped after that call,
    whether it succeeded or not.
    """

    __slots__ = ("_method", "_share", "_value")

    def __init__(self, method: KexMethod, share: _ClientShare):
        self._method = method
        self._share: _ClientShare | None = share
        self._value = share.value

    def init_message(self) -> bytes:
        """Payload of SSH_MSG_KEXDH_INIT / KEX_ECDH_INIT / KEX_HYBRID_INIT."""
        return bytes((SSH_MSG_KEXDH_INIT,)) + self._method._encode_value(self._value)

    def process_reply(self, payload: bytes, inputs: ExchangeInputs) -> KexResult:
        """Check the server's value, compute K and H; the signature is not verified."""
        share, self._share = self._share, None
        if share is None:
            raise ProtocolError("unexpected second key exchange reply")
        reply = _decode_reply(self._method, payload)
        shared_secret = share.agree(reply.server_value)
        exchange_hash = _exchange_hash(
            self._method,
            inputs,
            reply.host_key_blob,
            self._value,
            reply.server_value,
            shared_secret,
        )
        return KexResult(
            shared_secret=shared_secret,
            exchange_hash=exchange_hash,
            host_key_blob=reply.host_key_blob,
            signature=reply.signature,
            hash_name=self._method.hash_name,
        )


class KexServer:
    """Server side of one key exchange; single use."""

    __slots__ = ("_method", "_private_key", "_used")

    def __init__(self, method: KexMethod, private_key: bytes | None):
        self._method = method
        self._private_key = private_key
        self._used = False

    def process_init(
        self,
        payload: bytes,
        inputs: ExchangeInputs,
        host_key_blob: bytes,
        sign: Callable[[bytes], bytes],
    ) -> tuple[bytes, KexResult]:
        """Answer the client's init message: returns (reply payload, result).

        ``sign(H)`` must return the signature blob over the exchange hash made
        with the host key whose public blob is ``host_key_blob``.
        """
        if self._used:
            raise ProtocolError("unexpected second key exchange init")
        self._used = True
        private_key, self._private_key = self._private_key, None
        client_value = _decode_init(self._method, payload)
        server_value, shared_secret = self._method._server_agree(client_value, private_key)
        exchange_hash = _exchange_hash(
            self._method, inputs, host_key_blob, client_value, server_value, shared_secret
        )
        signature = sign(exchange_hash)
        reply = b"".join(
            (
                bytes((SSH_MSG_KEXDH_REPLY,)),
                encode_string(host_key_blob),
                self._method._encode_value(server_value),
                encode_string(signature),
            )
        )
        result = KexResult(
            shared_secret=shared_secret,
            exchange_hash=exchange_hash,
            host_key_blob=host_key_blob,
            signature=signature,
            hash_name=self._method.hash_name,
        )
        return reply, result


def _decode_init(method: KexMethod, payload: bytes) -> bytes | int:
    r = Reader(payload)
    if r.byte() != SSH_MSG_KEXDH_INIT:
        raise ProtocolError("expected a key exchange init message (30)")
    value = method._read_value(r)
    r.finish()
    return value


def _decode_reply(method: KexMethod, payload: bytes) -> _Reply:
    r = Reader(payload)
    if r.byte() != SSH_MSG_KEXDH_REPLY:
        raise ProtocolError("expected a key exchange reply message (31)")
    host_key_blob = r.string()
    server_value = method._read_value(r)
    signature = r.string()
    r.finish()
    return _Reply(host_key_blob, server_value, signature)


# --------------------------------------------------------------------------
# Methods


class _ClientShare(abc.ABC):
    """A client's ephemeral secret: ``value`` goes on the wire, ``agree`` gives K."""

    __slots__ = ()
    value: bytes | int

    @abc.abstractmethod
    def agree(self, server_value: bytes | int) -> bytes:
        """Check the server's value and return the encoded shared secret K."""


class KexMethod(abc.ABC):
    """One key exchange method; immutable, makes a fresh client or server per exchange.

    ``private_key`` lets tests fix the ephemeral secret (the format is given
    by each method class); leave it out to draw one from the OS.
    """

    __slots__ = ()
    name: str
    hash_name: str

    def client(self, private_key: bytes | None = None) -> KexClient:
        """The client's side of one exchange (``private_key`` fixes the ephemeral key, for tests)."""
        return KexClient(self, self._client_share(private_key))

    def server(self, private_key: bytes | None = None) -> KexServer:
        """The server's side of one exchange (``private_key`` fixes the ephemeral key, for tests)."""
        return KexServer(self, private_key)

    @abc.abstractmethod
    def _client_share(self, private_key: bytes | None) -> _ClientShare: ...

    @abc.abstractmethod
    def _server_agree(
        self, client_value: bytes | int, private_key: bytes | None
    ) -> tuple[bytes | int, bytes]:
        """Check the client's value; return (server value, encoded K)."""

    def _read_value(self, r: Reader) -> bytes | int:
        # Lengths are checked by the share, which raises KeyExchangeError (T10).
        return r.string()

    def _encode_value(self, value: bytes | int) -> bytes:
        return encode_string(value)  # type: ignore[arg-type]


class _SymmetricKex(KexMethod):
    """A Diffie-Hellman-shaped method: both sides make the same kind of share."""

    __slots__ = ()

    def _server_agree(self, client_value, private_key):
        share = self._client_share(private_key)
        return share.value, share.agree(client_value)


def _x25519_private(private_key: bytes | None) -> x25519.X25519PrivateKey:
    if private_key is None:
        return x25519.X25519PrivateKey.generate()
    return x25519.X25519PrivateKey.from_private_bytes(private_key)


def _x25519_shared(key: x25519.X25519PrivateKey, peer_public: bytes) -> bytes:
    """Raw X25519 output; T10: exact length and never the all-zero value."""
    if len(peer_public) != _X25519_LEN:
        raise KeyExchangeError("X25519 public value must be exactly 32 bytes")
    peer = x25519.X25519PublicKey.from_public_bytes(peer_public)
    try:
        shared = key.exchange(peer)
    except ValueError:
        # OpenSSL refuses the all-zero result of a low-order point itself.
        raise KeyExchangeError("X25519 shared secret is all-zero") from None
    if hmac.compare_digest(shared, bytes(_X25519_LEN)):
        raise KeyExchangeError("X25519 shared secret is all-zero")
    return shared


class _Curve25519Share(_ClientShare):
    __slots__ = ("_key", "value")

    def __init__(self, private_key: bytes | None):
        self._key = _x25519_private(private_key)
        self.value = self._key.public_key().public_bytes_raw()

    def agree(self, server_value):
        shared = _x25519_shared(self._key, server_value)
        # RFC 8731 §3.1: the octets are an unsigned big-endian number, sent as mpint.
        return encode_mpint(int.from_bytes(shared, "big"))


@dataclass(frozen=True, slots=True)
class Curve25519Kex(_SymmetricKex):
    """``curve25519-sha256`` (RFC 8731). ``private_key``: a 32-byte X25519 scalar."""

    name: str
    hash_name: str = "sha256"

    def _client_share(self, private_key):
        return _Curve25519Share(private_key)


class _EcdhShare(_ClientShare):
    __slots__ = ("_key", "_curve", "value")

    def __init__(self, curve: ec.EllipticCurve, private_key: bytes | None):
        if private_key is None:
            self._key = ec.generate_private_key(curve)
        else:
            self._key = ec.derive_private_key(int.from_bytes(private_key, "big"), curve)
        self._curve = curve
        self.value = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def agree(self, peer_value):
        peer = _ecdh_public(self._curve, peer_value)
        shared = self._key.exchange(ec.ECDH(), peer)
        # RFC 5656 §4: K is the x coordinate, an integer sent as mpint.
        return encode_mpint(int.from_bytes(shared, "big"))


def _ecdh_public(curve: ec.EllipticCurve, point: bytes) -> ec.EllipticCurvePublicKey:
    """T10: only uncompressed points (SEC 1 §2.3.3, 0x04 || X || Y) on the curve."""
    coordinate_len = (curve.key_size + 7) // 8
    if len(point) != 1 + 2 * coordinate_len or point[0] != 0x04:
        raise KeyExchangeError(f"{curve.name} public value is not an uncompressed point")
    try:
        # Checks that X and Y are field elements and that the point is on the curve.
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError:
        raise KeyExchangeError(f"{curve.name} public value is not on the curve") from None


@dataclass(frozen=True, slots=True)
class EcdhKex(_SymmetricKex):
    """``ecdh-sha2-nistp*`` (RFC 5656). ``private_key``: the big-endian scalar."""

    name: str
    hash_name: str
    curve: ec.EllipticCurve

    def _client_share(self, private_key):
        return _EcdhShare(self.curve, private_key)


@dataclass(frozen=True, slots=True)
class _DhGroup:
    """A MODP group of RFC 3526 with generator 2."""

    p: int
    g: int = 2

    @property
    def mpint_max_bytes(self) -> int:
        return (self.p.bit_length() + 8) // 8


class _DhShare(_ClientShare):
    __slots__ = ("_key", "_group", "value")

    def __init__(self, group: _DhGroup, private_key: bytes | None):
        numbers = DHParameterNumbers(group.p, group.g)
        if private_key is None:
            self._key = numbers.parameters().generate_private_key()
        else:
            x = int.from_bytes(private_key, "big")
            if not 2 <= x <= group.p - 2:
                raise ValueError("DH private exponent out of range")
            y = pow(group.g, x, group.p)  # test-only path: fixed, known exponents
            self._key = DHPrivateNumbers(x, DHPublicNumbers(y, numbers)).private_key()
        self._group = group
        self.value = self._key.public_key().public_numbers().y

    def agree(self, peer_value):
        p = self._group.p
        # T10 / RFC 4253 §8: 1 and p-1 (and anything outside) give away K.
        if not 2 <= peer_value <= p - 2:
            raise KeyExchangeError("DH public value out of range [2, p-2]")
        peer = DHPublicNumbers(peer_value, DHParameterNumbers(p, self._group.g)).public_key()
        try:
            shared = self._key.exchange(peer)
        except ValueError:
            raise KeyExchangeError("DH public value rejected") from None
        return encode_mpint(int.from_bytes(shared, "big"))


@dataclass(frozen=True, slots=True)
class DhGroupKex(_SymmetricKex):
    """``diffie-hellman-group*`` (RFC 8268). ``private_key``: big-endian exponent."""

    name: str
    hash_name: str
    group: _DhGroup

    def _client_share(self, private_key):
        return _DhShare(self.group, private_key)

    def _read_value(self, r: Reader) -> int:
        return r.mpint(max_bytes=self.group.mpint_max_bytes)

    def _encode_value(self, value) -> bytes:
        return encode_mpint(value)


def _hybrid_secret(pq_secret: bytes, ecdh_secret: bytes) -> bytes:
    # draft-ietf-sshm-mlkem-hybrid-kex §2.4: K = HASH(K_PQ || K_CL), sent as a string.
    return encode_string(hashlib.sha256(pq_secret + ecdh_secret).digest())


class _MlkemX25519Share(_ClientShare):
    __slots__ = ("_kem", "_ecdh", "value")

    def __init__(self, private_key: bytes | None):
        if private_key is None:
            kem_seed, ecdh_key = None, None
        elif len(private_key) == _MLKEM768_SEED_LEN + _X25519_LEN:
            kem_seed, ecdh_key = private_key[:_MLKEM768_SEED_LEN], private_key[_MLKEM768_SEED_LEN:]
        else:
            raise ValueError("hybrid private key is a 64-byte ML-KEM seed + 32-byte X25519 key")
        self._kem = (
            mlkem.MLKEM768PrivateKey.generate()
            if kem_seed is None
            else mlkem.MLKEM768PrivateKey.from_seed_bytes(kem_seed)
        )
        self._ecdh = _x25519_private(ecdh_key)
        # C_INIT = C_PK2 (ML-KEM encapsulation key) || C_PK1 (X25519 public key)
        self.value = (
            self._kem.public_key().public_bytes_raw()
            + self._ecdh.public_key().public_bytes_raw()
        )

    def agree(self, server_value):
        # S_REPLY = S_CT2 (ML-KEM ciphertext) || S_PK1 (X25519 public key)
        if len(server_value) != _MLKEM768_CIPHERTEXT_LEN + _X25519_LEN:
            raise KeyExchangeError("hybrid reply must be 1088 + 32 bytes")
        ciphertext = server_value[:_MLKEM768_CIPHERTEXT_LEN]
        try:
            # ML-KEM rejects implicitly: a bad ciphertext yields an unrelated secret.
            pq_secret = self._kem.decapsulate(ciphertext)
        except ValueError:
            raise KeyExchangeError("ML-KEM ciphertext rejected") from None
        ecdh_secret = _x25519_shared(self._ecdh, server_value[_MLKEM768_CIPHERTEXT_LEN:])
        return _hybrid_secret(pq_secret, ecdh_secret)


def _mlkem_encapsulate(encapsulation_key: bytes) -> tuple[bytes, bytes]:
    """Return (shared secret, ciphertext); FIPS 203 §7.2 input check included."""
    try:
        public = mlkem.MLKEM768PublicKey.from_public_bytes(encapsulation_key)
    except ValueError:
        # Raised for coefficients >= q too (the "modulus check").
        raise KeyExchangeError("ML-KEM public key rejected") from None
    return public.encapsulate()


@dataclass(frozen=True, slots=True)
class MlkemX25519Kex(KexMethod):
    """``mlkem768x25519-sha256`` (draft-ietf-sshm-mlkem-hybrid-kex).

    Client ``private_key``: the 64-byte ML-KEM-768 seed (d || z) followed by a
    32-byte X25519 scalar. Server ``private_key``: the 32-byte X25519 scalar;
    the encapsulation randomness always comes from the OS (cryptography has no
    deterministic encapsulation).
    """

    name: str = "mlkem768x25519-sha256"
    hash_name: str = "sha256"

    def _client_share(self, private_key):
        return _MlkemX25519Share(private_key)

    def _server_agree(self, client_value, private_key):
        if len(client_value) != _MLKEM768_PUBLIC_LEN + _X25519_LEN:
            raise KeyExchangeError("hybrid init must be 1184 + 32 bytes")
        pq_secret, ciphertext = _mlkem_encapsulate(client_value[:_MLKEM768_PUBLIC_LEN])
        ecdh = _x25519_private(private_key)
        ecdh_secret = _x25519_shared(ecdh, client_value[_MLKEM768_PUBLIC_LEN:])
        server_value = ciphertext + ecdh.public_key().public_bytes_raw()
        return server_value, _hybrid_secret(pq_secret, ecdh_secret)


# --------------------------------------------------------------------------
# Registry

# RFC 3526 §3 (2048-bit, group 14) and §5 (4096-bit, group 16); both are
# 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) * pi) + c), checked in the tests.
_MODP_COMMON = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AA"
)
_MODP_2048 = _DhGroup(p=int(_MODP_COMMON + "CAA68FFFFFFFFFFFFFFFF", 16))
_MODP_4096 = _DhGroup(
    p=int(
        _MODP_COMMON
        + "AC42DAD33170D04507A33"
        "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
        "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
        "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
        "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
        "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
        "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
        "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
        "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF",
        16,
    )
)


def _mlkem_supported() -> bool:
    # cryptography >= 48 has the API, but only some OpenSSL builds implement it.
    try:
        mlkem.MLKEM768PrivateKey.generate()
    except UnsupportedAlgorithm:
        return False
    return True


def _build_registry() -> dict[str, KexMethod]:
    methods: list[KexMethod] = [
        Curve25519Kex("curve25519-sha256"),
        Curve25519Kex("curve25519-sha256@libssh.org"),
        EcdhKex("ecdh-sha2-nistp256", "sha256", ec.SECP256R1()),
        EcdhKex("ecdh-sha2-nistp384", "sha384", ec.SECP384R1()),
        EcdhKex("ecdh-sha2-nistp521", "sha512", ec.SECP521R1()),
        DhGroupKex("diffie-hellman-group16-sha512", "sha512", _MODP_4096),
        DhGroupKex("diffie-hellman-group14-sha256", "sha256", _MODP_2048),
    ]
    if _mlkem_supported():
        methods.insert(0, MlkemX25519Kex())
    return {method.name: method for method in methods}


#: Every supported method by name (read-only).
KEX_METHODS: Mapping[str, KexMethod] = types.MappingProxyType(_build_registry())

#: Our preference order, the OpenSSH 10 default minus what we do not implement: what a
#: client offers by default (it may meet an old server that has only the DH groups).
DEFAULT_KEX: tuple[str, ...] = tuple(
    name
    for name in (
        "mlkem768x25519-sha256",
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "ecdh-sha2-nistp256",
        "ecdh-sha2-nistp384",
        "ecdh-sha2-nistp521",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group14-sha256",
    )
    if name in KEX_METHODS
)

#: What a server offers by default: DEFAULT_KEX without the finite-field DH groups. A DH
#: exchange costs the server ~30x an X25519 one (docs/security.md L10: DHEat,
#: CVE-2002-20001), so a flood of handshakes is cheapest to serve without them; they stay
#: implemented and are offered when a server lists them explicitly.
DEFAULT_SERVER_KEX: tuple[str, ...] = tuple(name for name in DEFAULT_KEX if not name.startswith("diffie-hellman-"))
