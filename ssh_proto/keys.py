"""SSH public keys, private keys, signatures and OpenSSH certificates.

This module owns the *formats*: how a key, a signature and a certificate look on the wire
and in files, and whether a signature is mathematically valid. Whether a certificate is
*acceptable* for a user or a host (principals, validity, options, trusted CAs) is policy
and lives in :mod:`ssh_proto.certs`.

Implemented:

* public key blobs: ``ssh-ed25519`` (RFC 8709 §4), ``ecdsa-sha2-nistp256/384/521``
  (RFC 5656 §3.1, uncompressed points only, as OpenSSH), ``ssh-rsa`` (RFC 4253 §6.6);
* signature blobs: RFC 8709 §6, RFC 5656 §3.1.2, RFC 8332 §3 (``rsa-sha2-256/512``).
  SHA-1 ``ssh-rsa`` signatures are never made, and verified only when a caller names
  ``ssh-rsa`` explicitly;
* OpenSSH certificates ``*-cert-v01@openssh.com`` (PROTOCOL.certkeys), parsed strictly:
  exact type mapping, no trailing bytes, type 1 or 2, at most 256 principals,
  (name, data) option lists sorted and unique, no certificate as signing key, and the CA
  signature verified at parse time (docs/security.md C1-C6);
* ``.pub`` lines and files, and OpenSSH private key files (PROTOCOL.key; bcrypt KDF and
  aes256-ctr when a passphrase is given). PEM PKCS#1/PKCS#8/SEC1 files are read too.

Every malformed input raises :class:`~ssh_proto.errors.KeyFormatError`, a
:class:`~ssh_proto.errors.ProtocolError`; ``verify`` methods return ``False`` instead.

>>> key = PrivateKey.generate("ssh-ed25519")
>>> sig = key.sign(b"data")
>>> key.public_key.verify(sig, b"data")
True
>>> parse_public_blob(key.public_key.blob) == key.public_key
True
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import types
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import KeyFormatError, ProtocolError
from .wire import Reader, Writer, encode_string

__all__ = [
    "CERT_SUFFIX",
    "CERT_TYPE_HOST",
    "CERT_TYPE_USER",
    "DEFAULT_CA_SIGNATURE_ALGORITHMS",
    "DEFAULT_SIGNATURE_ALGORITHMS",
    "MAX_PRINCIPALS",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "Certificate",
    "ECDSAPublicKey",
    "Ed25519PublicKey",
    "PrivateKey",
    "PublicKey",
    "RSAPublicKey",
    "algorithm_matches_key",
    "key_type_for_algorithm",
    "load_identity",
    "load_private_key",
    "load_public_file",
    "parse_public_blob",
    "parse_public_line",
    "plain_signature_algorithm",
    "write_private_key",
    "write_public_file",
]

#: Smallest RSA modulus accepted anywhere (parsing, loading, generating); docs/security.md C9.
MIN_RSA_BITS = 2048
#: Largest RSA modulus accepted; OpenSSH's SSHBUF_MAX_BIGNUM is 16384 bits as well.
MAX_RSA_BITS = 16384
#: Certificate ``type`` field values (PROTOCOL.certkeys).
CERT_TYPE_USER = 1
CERT_TYPE_HOST = 2
#: OpenSSH's SSHKEY_CERT_MAX_PRINCIPALS; docs/security.md C3.
MAX_PRINCIPALS = 256

CERT_SUFFIX = "-cert-v01@openssh.com"
_MAX_NAME = 64  # longest algorithm name we could know is well below this

_ED25519 = "ssh-ed25519"
_RSA = "ssh-rsa"

#: Host key / public key algorithms in order of preference, certificates first.
DEFAULT_SIGNATURE_ALGORITHMS: tuple[str, ...] = (
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)

#: Signature algorithms a CA may use (docs/security.md C8, OpenSSH SSH_ALLOWED_CA_SIGALGS
#: without the sk-* types we do not implement). Never ``ssh-rsa`` (SHA-1).
DEFAULT_CA_SIGNATURE_ALGORITHMS: tuple[str, ...] = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)


@dataclass(frozen=True, slots=True)
class _Curve:
    ident: str  # the curve name inside the blob, RFC 5656 §6.1
    curve: type[ec.EllipticCurve]
    hash: type[hashes.HashAlgorithm]  # RFC 5656 §6.2.1
    coord_len: int


_CURVES: Mapping[str, _Curve] = types.MappingProxyType({
    "ecdsa-sha2-nistp256": _Curve("nistp256", ec.SECP256R1, hashes.SHA256, 32),
    "ecdsa-sha2-nistp384": _Curve("nistp384", ec.SECP384R1, hashes.SHA384, 48),
    "ecdsa-sha2-nistp521": _Curve("nistp521", ec.SECP521R1, hashes.SHA512, 66),
})
_RSA_HASHES: Mapping[str, type[hashes.HashAlgorithm]] = types.MappingProxyType({
    "rsa-sha2-512": hashes.SHA512,
    "rsa-sha2-256": hashes.SHA256,
    "ssh-rsa": hashes.SHA1,  # legacy; only when a caller allows it by name
})

_PLAIN_KEY_TYPES = (_ED25519, *_CURVES, _RSA)
_CERT_TO_PLAIN: Mapping[str, str] = types.MappingProxyType(
    {t + CERT_SUFFIX: t for t in _PLAIN_KEY_TYPES})


def _algorithm_table() -> dict[str, str]:
    """Signature / pkalg name -> key type name, including the certificate forms."""
    plain = {_ED25519: _ED25519, **{t: t for t in _CURVES}, **{a: _RSA for a in _RSA_HASHES}}
    table = dict(plain)
    for alg, key_type in plain.items():
        table[alg + CERT_SUFFIX] = key_type + CERT_SUFFIX
    return table


_ALG_TO_KEY_TYPE: Mapping[str, str] = types.MappingProxyType(_algorithm_table())


def key_type_for_algorithm(alg: str) -> str:
    """The key type a signature or public key algorithm name belongs to.

    >>> key_type_for_algorithm("rsa-sha2-256-cert-v01@openssh.com")
    'ssh-rsa-cert-v01@openssh.com'

    Raises :class:`KeyFormatError` for an unknown name.
    """
    try:
        return _ALG_TO_KEY_TYPE[alg]
    except (KeyError, TypeError):
        raise KeyFormatError(f"unknown public key algorithm {alg!r}") from None


def plain_signature_algorithm(alg: str) -> str:
    """The signature algorithm inside a signature made for ``alg``.

    A certificate pkalg signs with the plain algorithm of its key:
    ``rsa-sha2-256-cert-v01@openssh.com`` -> ``rsa-sha2-256``. Plain names map to
    themselves; unknown names raise :class:`KeyFormatError`.
    """
    key_type_for_algorithm(alg)
    return alg[: -len(CERT_SUFFIX)] if alg.endswith(CERT_SUFFIX) else alg


def algorithm_matches_key(alg: str, key: PublicKey | Certificate) -> bool:
    """docs/security.md C7: may ``key`` be used under the pkalg ``alg``?

    A certificate algorithm needs a certificate blob and a plain one a plain blob, the
    ECDSA curve must match, and ``rsa-sha2-*`` belongs to ``ssh-rsa`` keys.
    """
    try:
        return key_type_for_algorithm(alg) == key.key_type
    except KeyFormatError:
        return False


def _names(algorithms: Collection[str]) -> Collection[str]:
    """Guard against a bare string, where ``in`` would test for substrings."""
    return (algorithms,) if isinstance(algorithms, str) else algorithms


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- public keys


class _WireKey:
    """What a public key and a certificate share: identity by wire blob, the one-line form."""

    __slots__ = ()
    blob: bytes
    key_type: str

    def to_line(self, comment: str = "") -> str:
        """The ``.pub`` / ``-cert.pub`` / authorized_keys form ``type base64 [comment]``."""
        line = f"{self.key_type} {_b64(self.blob)}"
        return f"{line} {comment}" if comment else line

    def __eq__(self, other: object) -> bool:
        # a certificate never equals the plain key it certifies (nor the reverse)
        if isinstance(other, _WireKey) and isinstance(other, Certificate) == isinstance(self, Certificate):
            return self.blob == other.blob
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.blob)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class PublicKey(_WireKey):
    """A plain (non-certificate) public key; compare and hash by :attr:`blob`.

    Create one with :func:`parse_public_blob`, :func:`parse_public_line` or from a
    :class:`PrivateKey`; the concrete classes are :class:`Ed25519PublicKey`,
    :class:`ECDSAPublicKey` and :class:`RSAPublicKey`.
    """

    key_type: str
    blob: bytes  # RFC 4253 §6.6 encoding, canonical
    crypto_key: Any  # the ``cryptography`` public key object

    #: Every signature algorithm the key type can verify (``ssh-rsa`` included for RSA).
    _known_algorithms: ClassVar[tuple[str, ...]] = ()

    @property
    def signature_algorithms(self) -> tuple[str, ...]:
        """Algorithms accepted by default, best first (never SHA-1 ``ssh-rsa``)."""
        return (self.key_type,)

    def verify(self, signature: bytes, data: bytes, *,
               algorithms: Collection[str] | None = None) -> bool:
        """True only if ``signature`` (an SSH signature blob) is valid for ``data``.

        The blob's algorithm must belong to this key type and be in ``algorithms``
        (default :attr:`signature_algorithms`). Malformed blobs give ``False``.
        """
        allowed = self.signature_algorithms if algorithms is None else _names(algorithms)
        try:
            r = Reader(signature)
            alg = r.ascii(_MAX_NAME)
            raw = r.string()
            r.finish()
        except ProtocolError:
            return False
        if alg not in allowed or alg not in self._known_algorithms:
            return False
        try:
            return self._verify_raw(alg, raw, bytes(data))
        except (InvalidSignature, ProtocolError, ValueError):
            return False

    def fingerprint(self) -> str:
        """``SHA256:`` and the unpadded base64 digest of the blob, like ``ssh-keygen -l``."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + _b64(digest).rstrip("=")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key_type} {self.fingerprint()}>"

    # -- per key type ---------------------------------------------------------------
    def _verify_raw(self, alg: str, sig: bytes, data: bytes) -> bool:
        raise NotImplementedError

    def _sign_raw(self, private: Any, alg: str, data: bytes) -> bytes:
        raise NotImplementedError

    def _private_fields(self, private: Any) -> bytes:
        """The key-specific part of an OpenSSH private key section (PROTOCOL.key)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Ed25519PublicKey(PublicKey):
    """``ssh-ed25519`` (RFC 8709)."""

    _known_algorithms: ClassVar[tuple[str, ...]] = (_ED25519,)

    def _verify_raw(self, alg: str, sig: bytes, data: bytes) -> bool:
        if len(sig) != 64:
            return False
        self.crypto_key.verify(sig, data)
        return True

    def _sign_raw(self, private: Any, alg: str, data: bytes) -> bytes:
        return private.sign(data)

    def _private_fields(self, private: Any) -> bytes:
        raw_pub = self.blob[-32:]
        seed = private.private_bytes(serialization.Encoding.Raw,
                                     serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
        # OpenSSH stores the 64-byte "secret key" seed || public key.
        return Writer().string(raw_pub).string(seed + raw_pub).getvalue()


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ECDSAPublicKey(PublicKey):
    """``ecdsa-sha2-nistp256/384/521`` (RFC 5656)."""

    _known_algorithms: ClassVar[tuple[str, ...]] = tuple(_CURVES)

    def _verify_raw(self, alg: str, sig: bytes, data: bytes) -> bool:
        if alg != self.key_type:  # the curve is part of the name
            return False
        r = Reader(sig)
        sig_r, sig_s = r.mpint(), r.mpint()
        r.finish()
        if sig_r <= 0 or sig_s <= 0:
            return False
        der = encode_dss_signature(sig_r, sig_s)
        self.crypto_key.verify(der, data, ec.ECDSA(_CURVES[alg].hash()))
        return True

    def _sign_raw(self, private: Any, alg: str, data: bytes) -> bytes:
        der = private.sign(data, ec.ECDSA(_CURVES[alg].hash()))
        sig_r, sig_s = decode_dss_signature(der)
        return Writer().mpint(sig_r).mpint(sig_s).getvalue()

    def _private_fields(self, private: Any) -> bytes:
        # the public fields after the type string, then the private scalar
        fields = Reader(self.blob)
        fields.string()
        return fields.rest() + Writer().mpint(private.private_numbers().private_value).getvalue()


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class RSAPublicKey(PublicKey):
    """``ssh-rsa`` keys with ``rsa-sha2-512`` / ``rsa-sha2-256`` signatures (RFC 8332)."""

    _known_algorithms: ClassVar[tuple[str, ...]] = tuple(_RSA_HASHES)

    @property
    def signature_algorithms(self) -> tuple[str, ...]:
        """RSA keys sign with SHA-2 only (RFC 8332); never SHA-1 ``ssh-rsa``."""
        return ("rsa-sha2-512", "rsa-sha2-256")

    def _verify_raw(self, alg: str, sig: bytes, data: bytes) -> bool:
        modulus_len = (self.crypto_key.key_size + 7) // 8
        if len(sig) > modulus_len:
            return False
        # Some signers drop leading zero bytes; OpenSSH pads them back, so do we.
        sig = sig.rjust(modulus_len, b"\0")
        self.crypto_key.verify(sig, data, padding.PKCS1v15(), _RSA_HASHES[alg]())
        return True

    def _sign_raw(self, private: Any, alg: str, data: bytes) -> bytes:
        return private.sign(data, padding.PKCS1v15(), _RSA_HASHES[alg]())

    def _private_fields(self, private: Any) -> bytes:
        n = private.private_numbers()
        return (Writer().mpint(n.public_numbers.n).mpint(n.public_numbers.e).mpint(n.d)
                .mpint(n.iqmp).mpint(n.p).mpint(n.q).getvalue())


# ------------------------------------------------------------------------ blob parsing


def _read_ed25519(r: Reader) -> Any:
    raw = r.string()
    if len(raw) != 32:
        raise KeyFormatError("ssh-ed25519 public key must be 32 bytes")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def _read_ecdsa(r: Reader, key_type: str) -> Any:
    curve = _CURVES[key_type]
    if r.ascii(_MAX_NAME) != curve.ident:
        raise KeyFormatError(f"{key_type} key names a different curve")
    point = r.string()
    # Uncompressed points only (0x04 || X || Y), like OpenSSH's sshbuf_get_ec.
    if len(point) != 1 + 2 * curve.coord_len or point[0] != 4:
        raise KeyFormatError(f"{key_type} public point is not an uncompressed point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve.curve(), point)
    except ValueError:
        raise KeyFormatError(f"{key_type} public point is not on the curve") from None


def _read_rsa(r: Reader) -> Any:
    e, n = r.mpint(), r.mpint()
    if n <= 0 or e <= 0:
        raise KeyFormatError("ssh-rsa key has a non-positive parameter")
    bits = n.bit_length()
    if bits < MIN_RSA_BITS:
        raise KeyFormatError(f"ssh-rsa key of {bits} bits is below the minimum of {MIN_RSA_BITS}")
    if bits > MAX_RSA_BITS:
        raise KeyFormatError(f"ssh-rsa key of {bits} bits exceeds the maximum of {MAX_RSA_BITS}")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise KeyFormatError("ssh-rsa key has invalid parameters") from None


def _read_key_fields(key_type: str, r: Reader) -> Any:
    """Read the fields after the type string of a plain key; return the crypto key."""
    if key_type == _ED25519:
        return _read_ed25519(r)
    if key_type in _CURVES:
        return _read_ecdsa(r, key_type)
    if key_type == _RSA:
        return _read_rsa(r)
    raise KeyFormatError(f"unsupported key type {key_type!r}")


_KEY_CLASSES: Mapping[str, type[PublicKey]] = types.MappingProxyType({
    _ED25519: Ed25519PublicKey,
    **{t: ECDSAPublicKey for t in _CURVES},
    _RSA: RSAPublicKey,
})


def _offset(r: Reader, data: bytes) -> int:
    return len(data) - r.remaining


def parse_public_blob(blob: bytes) -> PublicKey | Certificate:
    """Decode a public key or certificate blob; trailing bytes are an error.

    Raises :class:`KeyFormatError` for anything malformed, unknown or too weak.
    """
    data = bytes(blob)
    try:
        r = Reader(data)
        key_type = r.ascii(_MAX_NAME)
        if key_type in _CERT_TO_PLAIN:
            return _parse_certificate(data, r, key_type)
        crypto_key = _read_key_fields(key_type, r)
        r.finish()
    except KeyFormatError:
        raise
    except ProtocolError as exc:
        raise KeyFormatError(f"malformed key blob: {exc.description}") from None
    return _KEY_CLASSES[key_type](key_type, data, crypto_key)


# ------------------------------------------------------------------------- certificates


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Certificate(_WireKey):
    """An OpenSSH certificate (PROTOCOL.certkeys), as parsed by :func:`parse_public_blob`.

    Parsing already enforced the format rules and verified the CA signature with any
    algorithm of the CA key type; :mod:`ssh_proto.certs` decides whether the CA, its
    signature algorithm, the principals, the validity window and the options are
    acceptable. ``critical_options`` and ``extensions`` map each name to its *data*
    field (for ``force-command`` that is itself an SSH string; for flags it is empty).
    """

    key_type: str
    blob: bytes
    public_key: PublicKey
    nonce: bytes
    serial: int
    cert_type: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: Mapping[str, bytes]
    extensions: Mapping[str, bytes]
    signature_key: PublicKey
    signature: bytes
    signature_algorithm: str
    signed_data: bytes = field(repr=False)

    @property
    def signature_algorithms(self) -> tuple[str, ...]:
        """The certificate pkalg names usable with this certificate, best first."""
        return tuple(a + CERT_SUFFIX for a in self.public_key.signature_algorithms)

    def verify(self, signature: bytes, data: bytes, *,
               algorithms: Collection[str] | None = None) -> bool:
        """Verify a signature made by the *certified* key (docs/security.md C15).

        ``algorithms`` may hold certificate pkalg names (default
        :attr:`signature_algorithms`) or plain names; the signature blob itself always
        carries the plain name, e.g. ``rsa-sha2-256`` for
        ``rsa-sha2-256-cert-v01@openssh.com``.
        """
        allowed = self.signature_algorithms if algorithms is None else _names(algorithms)
        plain = set()
        for alg in allowed:
            try:
                plain.add(plain_signature_algorithm(alg))
            except KeyFormatError:
                continue
        return self.public_key.verify(signature, data, algorithms=plain)

    def verify_ca_signature(self, *, algorithms: Collection[str] | None = None) -> bool:
        """Check the CA signature over :attr:`signed_data` (docs/security.md C6 and C8).

        ``algorithms`` defaults to :data:`DEFAULT_CA_SIGNATURE_ALGORITHMS`, so a SHA-1
        ``ssh-rsa`` CA signature is refused unless named explicitly.
        """
        allowed = DEFAULT_CA_SIGNATURE_ALGORITHMS if algorithms is None else _names(algorithms)
        return self.signature_key.verify(self.signature, self.signed_data, algorithms=allowed)

    def fingerprint(self) -> str:
        """The certified key's fingerprint (what ``ssh-keygen -l`` prints for a cert)."""
        return self.public_key.fingerprint()

    def __repr__(self) -> str:
        kind = {CERT_TYPE_USER: "user", CERT_TYPE_HOST: "host"}.get(self.cert_type, "?")
        return (f"<Certificate {kind} {self.key_type} id={self.key_id!r} "
                f"serial={self.serial} key={self.public_key.fingerprint()}>")


def _cstring(r: Reader, what: str) -> str:
    """A string that OpenSSH reads as a C string: no NUL; we also require UTF-8."""
    return _text(r.string(), what)


def _text(raw: bytes, what: str) -> str:
    if b"\0" in raw:
        raise KeyFormatError(f"certificate {what} contains a NUL byte")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFormatError(f"certificate {what} is not valid UTF-8") from None


def _parse_principals(data: bytes) -> tuple[str, ...]:
    r = Reader(data)
    principals: list[str] = []
    while r.remaining:
        if len(principals) == MAX_PRINCIPALS:
            raise KeyFormatError(f"certificate has more than {MAX_PRINCIPALS} principals")
        principals.append(_cstring(r, "principal"))
    return tuple(principals)


def _parse_options(data: bytes, what: str) -> Mapping[str, bytes]:
    """(string name, string data) pairs; names strictly increasing (sorted, unique)."""
    r = Reader(data)
    options: dict[str, bytes] = {}
    previous: bytes | None = None
    while r.remaining:
        raw_name = r.string()
        value = r.string()
        name = _text(raw_name, what + " name")
        if not name:
            raise KeyFormatError(f"certificate has an empty {what} name")
        if previous is not None and raw_name <= previous:
            problem = "repeated" if raw_name == previous else "out of order"
            raise KeyFormatError(f"certificate {what} {name!r} is {problem}")
        previous = raw_name
        options[name] = value
    return types.MappingProxyType(options)


def _parse_ca_key(blob: bytes) -> PublicKey:
    """docs/security.md C5: any plain key may sign certificates, a certificate may not."""
    r = Reader(blob)
    if r.ascii(_MAX_NAME) in _CERT_TO_PLAIN:
        raise KeyFormatError("certificate signature key is itself a certificate "
                         "(chained certificates are not allowed)")
    key = parse_public_blob(blob)
    if not isinstance(key, PublicKey):  # pragma: no cover - excluded just above
        raise KeyFormatError("certificate signature key is not a plain key")
    return key


def _signature_name(signature: bytes) -> str:
    r = Reader(signature)
    alg = r.ascii(_MAX_NAME)
    r.string()
    r.finish()
    return alg


@dataclass(frozen=True, slots=True)
class _CertFields:
    """The parts of a certificate read before the signature."""

    nonce: bytes
    public_key: PublicKey
    serial: int
    cert_type: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: Mapping[str, bytes]
    extensions: Mapping[str, bytes]


def _read_cert_fields(data: bytes, r: Reader, plain_type: str) -> _CertFields:
    nonce = r.string()
    start = _offset(r, data)
    crypto_key = _read_key_fields(plain_type, r)
    public_blob = encode_string(plain_type) + data[start:_offset(r, data)]
    public_key = _KEY_CLASSES[plain_type](plain_type, public_blob, crypto_key)
    serial = r.uint64()
    cert_type = r.uint32()
    if cert_type not in (CERT_TYPE_USER, CERT_TYPE_HOST):
        raise KeyFormatError(f"unknown certificate type {cert_type} (must be 1 user or 2 host)")
    key_id = _cstring(r, "key id")
    principals = _parse_principals(r.string())
    valid_after, valid_before = r.uint64(), r.uint64()
    critical = _parse_options(r.string(), "critical option")
    extensions = _parse_options(r.string(), "extension")
    r.string()  # reserved: ignored, as PROTOCOL.certkeys says
    return _CertFields(nonce, public_key, serial, cert_type, key_id, principals,
                       valid_after, valid_before, critical, extensions)


def _parse_certificate(data: bytes, r: Reader, key_type: str) -> Certificate:
    fields = _read_cert_fields(data, r, _CERT_TO_PLAIN[key_type])
    signature_key_blob = r.string()
    signed_len = _offset(r, data)
    signature = r.string()
    r.finish()
    signature_key = _parse_ca_key(signature_key_blob)
    cert = Certificate(
        key_type=key_type, blob=data, public_key=fields.public_key, nonce=fields.nonce,
        serial=fields.serial, cert_type=fields.cert_type, key_id=fields.key_id,
        principals=fields.principals, valid_after=fields.valid_after,
        valid_before=fields.valid_before, critical_options=fields.critical_options,
        extensions=fields.extensions, signature_key=signature_key, signature=signature,
        signature_algorithm=_signature_name(signature), signed_data=data[:signed_len])
    # C6: verify now with whatever algorithm the CA key type supports; which
    # algorithms are *acceptable* (C8) is decided by certs.validate_*.
    if not cert.verify_ca_signature(algorithms=signature_key._known_algorithms):
        raise KeyFormatError("certificate CA signature does not verify")
    return cert


# ------------------------------------------------------------------------- text forms


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise KeyFormatError("key is not valid base64") from None


def parse_public_line(line: str) -> tuple[PublicKey | Certificate, str]:
    """Parse ``type base64 [comment]`` (``.pub``, ``-cert.pub``); return (key, comment).

    The type named in front must equal the type inside the blob. authorized_keys
    options in front of the type are not handled here.
    """
    fields = line.strip().split(None, 2)
    if len(fields) < 2:
        raise KeyFormatError("expected 'key-type base64-key [comment]'")
    key = parse_public_blob(_b64decode(fields[1]))
    if key.key_type != fields[0]:
        raise KeyFormatError(f"key line says {fields[0][:_MAX_NAME]!r} but the key is "
                             f"{key.key_type}")
    return key, (fields[2].strip() if len(fields) == 3 else "")


def load_public_file(path: str | os.PathLike[str]) -> tuple[PublicKey | Certificate, str]:
    """Read the first key line of a ``.pub`` or ``-cert.pub`` file; return (key, comment)."""
    try:
        text = Path(path).read_text("utf-8")
    except UnicodeDecodeError:
        raise KeyFormatError(f"{os.fspath(path)}: not a text key file") from None
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return parse_public_line(line)
    raise KeyFormatError(f"{os.fspath(path)}: no public key found")


# ------------------------------------------------------------------------ private keys

_OPENSSH_MAGIC = b"openssh-key-v1\0"
_OPENSSH_PEM = ("-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----")
_KDF_ROUNDS = 16  # ssh-keygen's default
_KDF_SALT_LEN = 16


def _public_blob_of(crypto_public: Any) -> bytes:
    """Encode a ``cryptography`` public key as an SSH blob."""
    if isinstance(crypto_public, ed25519.Ed25519PublicKey):
        raw = crypto_public.public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)
        return Writer().string(_ED25519).string(raw).getvalue()
    if isinstance(crypto_public, ec.EllipticCurvePublicKey):
        for key_type, curve in _CURVES.items():
            if isinstance(crypto_public.curve, curve.curve):
                point = crypto_public.public_bytes(serialization.Encoding.X962,
                                                   serialization.PublicFormat.UncompressedPoint)
                return Writer().string(key_type).string(curve.ident).string(point).getvalue()
    if isinstance(crypto_public, rsa.RSAPublicKey):
        numbers = crypto_public.public_numbers()
        return Writer().string(_RSA).mpint(numbers.e).mpint(numbers.n).getvalue()
    raise KeyFormatError("unsupported private key type (need Ed25519, ECDSA P-256/384/521 or RSA)")


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class PrivateKey:
    """A private key able to make SSH signatures.

    >>> key = PrivateKey.generate("ecdsa-sha2-nistp256")
    >>> key.public_key.verify(key.sign(b"hello"), b"hello")
    True
    """

    crypto_key: Any
    public_key: PublicKey

    @classmethod
    def from_crypto_key(cls, crypto_key: Any) -> PrivateKey:
        """Wrap a ``cryptography`` private key (RSA below MIN_RSA_BITS is refused)."""
        public = parse_public_blob(_public_blob_of(crypto_key.public_key()))
        if not isinstance(public, PublicKey):  # pragma: no cover - blob built just above
            raise KeyFormatError("private key did not yield a plain public key")
        return cls(crypto_key, public)

    @classmethod
    def generate(cls, key_type: str = _ED25519, *, bits: int | None = None) -> PrivateKey:
        """A fresh key; ``bits`` only for ``ssh-rsa`` (default 3072)."""
        if bits is not None and key_type != _RSA:
            raise ValueError("bits is only meaningful for ssh-rsa keys")
        if key_type == _ED25519:
            return cls.from_crypto_key(ed25519.Ed25519PrivateKey.generate())
        if key_type in _CURVES:
            return cls.from_crypto_key(ec.generate_private_key(_CURVES[key_type].curve()))
        if key_type == _RSA:
            bits = 3072 if bits is None else bits
            if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
                raise ValueError(f"RSA key size must be {MIN_RSA_BITS}..{MAX_RSA_BITS} bits")
            return cls.from_crypto_key(rsa.generate_private_key(65537, bits))
        raise ValueError(f"unsupported key type {key_type!r}")

    @property
    def key_type(self) -> str:
        """The key's type name, e.g. ``ssh-ed25519``."""
        return self.public_key.key_type

    def sign(self, data: bytes, algorithm: str | None = None) -> bytes:
        """Sign ``data``; return the SSH signature blob (string alg, string sig).

        ``algorithm`` defaults to the key's first signature algorithm; certificate pkalg
        names map to their plain algorithm. SHA-1 ``ssh-rsa`` is refused.
        """
        if algorithm is None:
            alg = self.public_key.signature_algorithms[0]
        else:
            try:
                alg = plain_signature_algorithm(algorithm)
            except KeyFormatError:
                raise ValueError(f"unknown signature algorithm {algorithm!r}") from None
        if alg not in self.public_key.signature_algorithms:
            raise ValueError(f"cannot sign with {alg} using a {self.key_type} key")
        raw = self.public_key._sign_raw(self.crypto_key, alg, bytes(data))
        return Writer().string(alg).string(raw).getvalue()

    def to_openssh(self, passphrase: bytes | None = None, comment: str = "", *,
                   kdf_rounds: int = _KDF_ROUNDS) -> bytes:
        """The key as an OpenSSH private key file (PROTOCOL.key), PEM armoured.

        With a (non-empty) passphrase the key is encrypted with aes256-ctr under a
        bcrypt-pbkdf key of ``kdf_rounds`` rounds, as ``ssh-keygen -a`` does.
        """
        if not 1 <= kdf_rounds < 2**32:
            raise ValueError("kdf_rounds must be a positive uint32")
        if isinstance(passphrase, str):
            passphrase = passphrase.encode("utf-8")
        encrypted = bool(passphrase)
        check = os.urandom(4)
        section = (Writer().raw(check).raw(check).string(self.key_type)
                   .raw(self.public_key._private_fields(self.crypto_key))
                   .string(comment).getvalue())
        block = 16 if encrypted else 8
        # PROTOCOL.key: pad with 1, 2, 3, ... to a multiple of the cipher block size
        section += bytes(range(1, 1 + (-len(section)) % block))
        outer = Writer().raw(_OPENSSH_MAGIC)
        if encrypted:
            assert passphrase is not None
            salt = os.urandom(_KDF_SALT_LEN)
            section = _aes256_ctr(passphrase, salt, kdf_rounds, section)
            kdf_options = Writer().string(salt).uint32(kdf_rounds).getvalue()
            outer.string("aes256-ctr").string("bcrypt").string(kdf_options)
        else:
            outer.string("none").string("none").string(b"")
        outer.uint32(1).string(self.public_key.blob).string(section)
        body = base64.encodebytes(outer.getvalue()).decode("ascii").replace("\n", "")
        lines = [body[i:i + 70] for i in range(0, len(body), 70)]
        return "\n".join([_OPENSSH_PEM[0], *lines, _OPENSSH_PEM[1], ""]).encode("ascii")

    def __repr__(self) -> str:
        return f"<PrivateKey {self.key_type} {self.public_key.fingerprint()}>"


def _aes256_ctr(passphrase: bytes, salt: bytes, rounds: int, data: bytes) -> bytes:
    try:
        import bcrypt
    except ImportError:  # pragma: no cover - bcrypt ships with the test/runtime deps
        raise KeyFormatError("encrypting a private key needs the 'bcrypt' package") from None
    # 16 rounds is ssh-keygen's default; bcrypt warns below 50, which PROTOCOL.key predates.
    derived = bcrypt.kdf(password=passphrase, salt=salt, desired_key_bytes=48, rounds=rounds,
                         ignore_few_rounds=True)
    encryptor = Cipher(algorithms.AES(derived[:32]), modes.CTR(derived[32:])).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _load_crypto_private(data: bytes, passphrase: bytes | None) -> Any:
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
        return serialization.load_ssh_private_key(data, passphrase)
    return serialization.load_pem_private_key(data, passphrase)


def load_private_key(path_or_data: str | os.PathLike[str] | bytes,
                     passphrase: bytes | None = None) -> PrivateKey:
    """Load an OpenSSH (or PEM PKCS#1/PKCS#8/SEC1) private key from a path or bytes.

    A wrong passphrase, a missing one or a corrupt file raise :class:`KeyFormatError`
    whose message never includes key material; an unreadable path raises OSError.
    """
    if isinstance(path_or_data, (bytes, bytearray, memoryview)):
        data = bytes(path_or_data)
    else:
        data = Path(path_or_data).read_bytes()
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    passphrase = passphrase or None
    try:
        try:
            crypto_key = _load_crypto_private(data, passphrase)
        except TypeError:
            if passphrase is None:
                raise KeyFormatError("private key is encrypted; a passphrase is needed") from None
            # A passphrase for an unencrypted key is harmless (ssh-keygen -P ignores it).
            crypto_key = _load_crypto_private(data, None)
    except KeyFormatError:
        raise
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFormatError("cannot load private key: wrong passphrase, or a corrupt "
                             "or unsupported key file") from None
    return PrivateKey.from_crypto_key(crypto_key)


def load_identity(path: str | os.PathLike[str],
                  passphrase: bytes | None = None) -> tuple[PrivateKey, Certificate | None]:
    """Load a private key and, when ``PATH-cert.pub`` exists, its certificate.

    The certificate must certify this very key, else :class:`KeyFormatError`.
    """
    key = load_private_key(path, passphrase)
    cert_path = Path(f"{os.fspath(path)}-cert.pub")
    if not cert_path.exists():
        return key, None
    cert, _ = load_public_file(cert_path)
    if not isinstance(cert, Certificate):
        raise KeyFormatError(f"{cert_path}: not a certificate")
    if cert.public_key != key.public_key:
        raise KeyFormatError(f"{cert_path}: certificate is for a different key "
                             f"({cert.public_key.fingerprint()})")
    return key, cert


def _atomic_write(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Write via a temporary file created with ``mode``, then rename over ``path``."""
    target = os.fspath(path)
    tmp = f"{target}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; make it exact
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_private_key(path: str | os.PathLike[str], key: PrivateKey,
                      passphrase: bytes | None = None, *, comment: str = "",
                      kdf_rounds: int = _KDF_ROUNDS) -> None:
    """Write ``key`` in OpenSSH format to ``path`` with mode 0600, atomically."""
    _atomic_write(path, key.to_openssh(passphrase, comment, kdf_rounds=kdf_rounds), 0o600)


def write_public_file(path: str | os.PathLike[str], key_or_cert: PublicKey | Certificate,
                      comment: str = "") -> None:
    """Write a ``.pub`` / ``-cert.pub`` line (mode 0644), atomically."""
    _atomic_write(path, (key_or_cert.to_line(comment) + "\n").encode("utf-8"), 0o644)
