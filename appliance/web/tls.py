"""The web service's TLS certificate, and the pin clients use to trust it.

This module owns three things:

* the **self-signed certificate** the web service (HTTPS on :3080) presents by default: made
  on first start with an ECDSA P-256 key (file mode 0600 in the data dir), subject
  alternative names = the host name, ``localhost``, ``127.0.0.1``, ``::1`` and the
  configured public addresses. It is re-issued with the *same key* when less than
  :data:`RENEW_BEFORE` of its life is left or when its names no longer cover the
  configured addresses, so the pin (which hashes the key, not the certificate) never
  changes;
* an **admin-supplied** certificate chain and key (``[web] cert``/``key``), checked to
  belong together;
* the **pin**: ``"sha256:" + base64url-nopad(sha256(SubjectPublicKeyInfo DER))``, the
  RFC 7469 §2.4 SPKI fingerprint in URL-safe base64. Invite and login tokens carry it
  without the ``sha256:`` prefix (appliance design doc, "Pins").

>>> from pathlib import Path; import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> tls = ensure_web_tls(d, hostname="jump.example")
>>> tls.pin == pin_of(load_certificate(tls.cert_path)) and tls.pin.startswith("sha256:")
True
"""
from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..addresses import host_of
from ..files import write_atomic

__all__ = [
    "CERT_FILE",
    "HTTP_ALPN",
    "KEY_FILE",
    "PIN_PREFIX",
    "TUNNEL_ALPN",
    "TLSSetupError",
    "WebTLS",
    "ensure_web_tls",
    "invite_token",
    "load_certificate",
    "parse_pin",
    "pin_from_token",
    "pin_of",
    "server_ssl_context",
]

CERT_FILE = "web-tls.crt"
KEY_FILE = "web-tls.key"
PIN_PREFIX = "sha256:"
#: The ALPN protocol id (RFC 7301) of a reverse tunnel over the web port: SSH inside TLS.
TUNNEL_ALPN = "jumpgate-tunnel"
HTTP_ALPN = "http/1.1"
_PIN_B64_LEN = 43  # 32 bytes of SHA-256 in unpadded base64
VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)
# Browsers and TLS stacks choke on a backdated or exactly-now notBefore on skewed clocks.
_BACKDATE = datetime.timedelta(minutes=5)


class TLSSetupError(Exception):
    """The web TLS certificate or key cannot be made, read or used; says what to fix."""


@dataclass(frozen=True, slots=True)
class WebTLS:
    """Where the web service's certificate chain and key live, and the certificate's pin."""

    cert_path: Path
    key_path: Path
    pin: str
    self_signed: bool


# ----------------------------------------------------------------------------- pins


def _spki_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def pin_of(cert: x509.Certificate | bytes) -> str:
    """The pin of a certificate (an x509 object or its DER bytes).

    Raises :class:`TLSSetupError` if DER bytes do not parse as a certificate.
    """
    if not isinstance(cert, x509.Certificate):
        try:
            cert = x509.load_der_x509_certificate(bytes(cert))
        except ValueError:
            raise TLSSetupError("not a DER X.509 certificate") from None
    digest = hashlib.sha256(_spki_der(cert)).digest()
    return PIN_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def parse_pin(text: str) -> str:
    """Validate a pin as typed by a user (``sha256:`` prefix optional); return its canonical form.

    Raises :class:`ValueError` with a message fit for the user when it is not a pin.
    """
    body = text.strip()
    if body.startswith(PIN_PREFIX):
        body = body[len(PIN_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=")
    except (binascii.Error, ValueError):
        raw = b""
    if len(body) != _PIN_B64_LEN or len(raw) != 32:
        raise ValueError("a pin looks like sha256:<43 base64url characters>")
    return PIN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def invite_token(secret: str, pin: str) -> str:
    """The token handed to a user: ``<secret>.<pin without "sha256:">``.

    >>> invite_token("c2VjcmV0", "sha256:" + "A" * 43) == "c2VjcmV0." + "A" * 43
    True
    """
    return f"{secret}.{parse_pin(pin).removeprefix(PIN_PREFIX)}"


def pin_from_token(token: str) -> str:
    """The pin carried by an invite token ``<secret>.<pin-b64-without-prefix>``.

    Raises :class:`ValueError` when the token has no well-formed pin part.
    """
    secret, sep, pin_part = token.strip().rpartition(".")
    if not sep or not secret:
        raise ValueError("the token should look like <secret>.<pin>; copy it whole")
    return parse_pin(pin_part)


# ----------------------------------------------------------------- files and certificates


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """The first (leaf) certificate of a PEM file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TLSSetupError(f"cannot read TLS certificate {os.fspath(path)}: "
                            f"{exc.strerror}") from None
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSSetupError(f"{os.fspath(path)}: not a PEM certificate") from None
    return chain[0]


def _load_private_key(path: Path):
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TLSSetupError(f"cannot read TLS key {path}: {exc.strerror}") from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # TypeError: the key is encrypted; the web service has no one to ask for a passphrase.
        raise TLSSetupError(f"{path}: not an unencrypted PEM private key") from None


def _general_names(hostname: str, addresses: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in (hostname, "localhost", "127.0.0.1", "::1", *addresses):
        host = host_of(raw).lower()
        # x509 DNS names are A-labels; a name we cannot encode is left out, not fatal.
        if not host or host in seen or not host.isascii():
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _issue_self_signed(key: ec.EllipticCurvePrivateKey, hostname: str,
                       names: list[x509.GeneralName], now: datetime.datetime) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname or "localhost"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Jumpgate")])
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - _BACKDATE)
               .not_valid_after(now + VALIDITY)
               .add_extension(x509.SubjectAlternativeName(names), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                              critical=False))
    return builder.sign(key, hashes.SHA256())


def _needs_reissue(cert: x509.Certificate, names: list[x509.GeneralName],
                   now: datetime.datetime) -> bool:
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return True
    try:
        present = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return True
    return not set(names) <= present


def _ensure_self_signed(data_dir: Path, hostname: str, addresses: Iterable[str],
                        now: datetime.datetime) -> WebTLS:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    names = _general_names(hostname, addresses)
    if key_path.exists():
        key = _load_private_key(key_path)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TLSSetupError(f"{key_path}: expected the ECDSA key Jumpgate made")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        write_atomic(key_path, pem, 0o600)
    cert = load_certificate(cert_path) if cert_path.exists() else None
    if cert is None or cert.public_key() != key.public_key() or _needs_reissue(cert, names, now):
        cert = _issue_self_signed(key, hostname, names, now)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return WebTLS(cert_path, key_path, pin_of(cert), self_signed=True)


def _load_supplied(cert_path: Path, key_path: Path) -> WebTLS:
    cert = load_certificate(cert_path)
    key = _load_private_key(key_path)
    if key.public_key() != cert.public_key():
        raise TLSSetupError(f"{key_path} is not the key of the certificate in {cert_path}")
    return WebTLS(cert_path, key_path, pin_of(cert), self_signed=False)


def ensure_web_tls(data_dir: str | os.PathLike[str], *, hostname: str,
                   addresses: Iterable[str] = (), cert_path: str | os.PathLike[str] | None = None,
                   key_path: str | os.PathLike[str] | None = None,
                   now: datetime.datetime | None = None) -> WebTLS:
    """The web service's certificate: the admin's (``cert_path`` + ``key_path``) or self-signed.

    The self-signed one lives in ``data_dir`` (:data:`CERT_FILE`, :data:`KEY_FILE`) and is
    created or renewed as the module docstring says. ``addresses`` may carry ports.
    """
    if (cert_path is None) != (key_path is None):
        raise TLSSetupError("give both the web TLS certificate and its key, or neither")
    if cert_path is not None and key_path is not None:
        return _load_supplied(Path(cert_path), Path(key_path))
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return _ensure_self_signed(Path(data_dir), hostname, addresses, now)


def server_ssl_context(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str],
                       alpn: Iterable[str] = (HTTP_ALPN,)) -> ssl.SSLContext:
    """A server context: TLS 1.2+, the certificate chain and key, the ALPN protocols ``alpn``
    (HTTP/1.1 only by default; the web service adds :data:`TUNNEL_ALPN` when it serves tunnels).
    A client that offers none of them, or no ALPN at all, gets HTTP/1.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(alpn))
    try:
        context.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"cannot use TLS certificate {os.fspath(cert_path)} with key "
                            f"{os.fspath(key_path)}: {exc}") from None
    return context
