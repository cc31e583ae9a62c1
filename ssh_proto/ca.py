"""A certificate authority: OpenSSH user and host certificates (PROTOCOL.certkeys).

A :class:`CertificateAuthority` is one signing key with its **kind** (``"user"``: it signs
user certificates that servers trust with ``TrustedUserCAKeys``; ``"host"``: it signs host
certificates that clients trust with an ``@cert-authority`` known_hosts line) and an **id**,
the application's name for it. An application holds as many as it needs — one per cluster,
an old and a new one while a CA is rotated — and stores each wherever it likes
(:meth:`CertificateAuthority.private_key_openssh` and :func:`load_authority`).

What this module decides, on top of :func:`ssh_proto.certs.sign_certificate`:

* a CA signs only its own kind of certificate, so one key is never both a user and a
  host CA (a leaked host-signing path cannot mint logins);
* validity comes from a lifetime and an injectable clock, backdated a little so that a
  peer whose clock is slightly behind accepts a fresh certificate (OpenSSH checks
  ``valid_after <= now < valid_before``);
* serials are random 63-bit numbers unless the caller gives one (KRLs can revoke by serial);
* principals are never empty (an empty list means "anyone" to OpenSSH before 10.3,
  CVE-2024-7594), and the signature is never SHA-1.

Checking certificates is :mod:`ssh_proto.certs`' job (``validate_user_certificate``,
``validate_host_certificate``); this module only issues them.

>>> user_ca = CertificateAuthority.generate("user", "example")
>>> alice = PrivateKey.generate("ssh-ed25519")
>>> cert = user_ca.issue_user(alice.public_key, "alice@example", ["alice"], ttl=3600,
...                           critical_options={"source-address": "10.0.0.0/8"})
>>> cert.principals, cert.valid_before - cert.valid_after == 3600 + user_ca.backdate
(('alice',), True)
>>> user_ca.trusted_user_ca_line().startswith("ssh-ed25519 ")
True
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from .certs import CERT_TYPE_HOST, CERT_TYPE_USER, DEFAULT_USER_EXTENSIONS, sign_certificate
from .errors import KeyFormatError
from .keys import Certificate, PrivateKey, PublicKey, load_private_key

__all__ = ["DEFAULT_BACKDATE", "CAError", "CAKind", "CertificateAuthority", "load_authority", "random_serial"]

#: ``"user"`` or ``"host"``: which certificates a CA signs.
CAKind = Literal["user", "host"]
_KINDS = ("user", "host")
#: Seconds a certificate is backdated by default (as Teleport does), for peers whose clock lags.
DEFAULT_BACKDATE = 60
_NO_OPTIONS: Mapping[str, bytes | str] = {}


class CAError(ValueError):
    """The CA refused to issue: wrong kind, bad lifetime, principals or options, or an
    unusable key. The message says which, and never holds key material."""


def random_serial() -> int:
    """A random 63-bit certificate serial (what :class:`CertificateAuthority` uses by default)."""
    return secrets.randbits(63)


def _check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    if isinstance(patterns, str):
        patterns = (patterns,)
    out = tuple(patterns)
    if not out or not all(isinstance(p, str) and p and not any(c.isspace() or c == "," for c in p)
                          for p in out):
        raise CAError("host patterns must be non-empty known_hosts patterns without spaces or commas")
    return out


class CertificateAuthority:
    """One CA key, its kind and its id; issues certificates of that kind.

    ``clock`` (default :func:`time.time`) gives "now" for lifetimes, ``serials`` (default
    :func:`random_serial`) the serial of each certificate, ``backdate`` the seconds by which
    ``valid_after`` precedes now. The private key never leaves the object except through
    :meth:`private_key_openssh`, which says so; ``repr`` shows the fingerprint only.

    >>> host_ca = CertificateAuthority.generate("host", "example")
    >>> server = PrivateKey.generate("ssh-ed25519")
    >>> cert = host_ca.issue_host(server.public_key, "db1", ["db1.example.com"], ttl=86400)
    >>> host_ca.known_hosts_line(["*.example.com"]).split()[:2]
    ['@cert-authority', '*.example.com']
    >>> host_ca.issue_user(server.public_key, "x", ["x"], ttl=60)
    Traceback (most recent call last):
    ...
    ssh_proto.ca.CAError: a host CA does not sign user certificates
    """

    __slots__ = ("_key", "backdate", "clock", "id", "kind", "serials")

    def __init__(self, key: PrivateKey, kind: CAKind, id: str, *, clock: Callable[[], float] = time.time,
                 serials: Callable[[], int] = random_serial, backdate: int = DEFAULT_BACKDATE):
        if kind not in _KINDS:
            raise CAError(f"a CA's kind is 'user' or 'host', not {str(kind)[:16]!r}")
        if not isinstance(key, PrivateKey):
            raise CAError("a CA needs a PrivateKey")
        if not 0 <= backdate <= 86400:
            raise CAError("backdate must be between 0 and 86400 seconds")
        self._key = key
        #: ``"user"`` or ``"host"``.
        self.kind: CAKind = kind
        #: The application's name for this CA (e.g. a cluster name, or ``"prod-2027"`` in a rotation).
        self.id = id
        self.clock = clock
        self.serials = serials
        self.backdate = backdate

    @classmethod
    def generate(cls, kind: CAKind, id: str, key_type: str = "ssh-ed25519", **options) -> CertificateAuthority:
        """A CA with a fresh key (Ed25519 unless ``key_type`` says otherwise); ``options``
        as for the constructor."""
        return cls(PrivateKey.generate(key_type), kind, id, **options)

    def __repr__(self) -> str:
        return f"<CertificateAuthority {self.kind} {self.id!r} {self.public_key.fingerprint()}>"

    # -- the public half, and the lines peers trust it by ------------------------------
    @property
    def public_key(self) -> PublicKey:
        """The CA's public key (what peers trust)."""
        return self._key.public_key

    def fingerprint(self) -> str:
        """``SHA256:...``, as ``ssh-keygen -l`` prints it."""
        return self.public_key.fingerprint()

    def _comment(self, comment: str | None) -> str:
        return f"{self.kind}-ca@{self.id}" if comment is None else comment

    def trusted_user_ca_line(self, comment: str | None = None) -> str:
        """A line for sshd's ``TrustedUserCAKeys`` file (a user CA only)."""
        self._require("user", "is not trusted by TrustedUserCAKeys")
        return self.public_key.to_line(self._comment(comment))

    def known_hosts_line(self, patterns: Sequence[str] = ("*",), comment: str | None = None) -> str:
        """``@cert-authority PATTERNS KEY`` for a client's known_hosts (a host CA only):
        hosts matching ``patterns`` are trusted when they show a certificate this CA signed."""
        self._require("host", "is not an @cert-authority")
        names = _check_patterns(patterns)
        return f"@cert-authority {','.join(names)} {self.public_key.to_line(self._comment(comment))}"

    def private_key_openssh(self, passphrase: bytes | None = None, comment: str | None = None) -> bytes:
        """The CA's **private** key as an OpenSSH PEM file, to store it (encrypted with
        ``passphrase`` when given). Read it back with :func:`load_authority`."""
        return self._key.to_openssh(passphrase, comment=self._comment(comment))

    # -- issuing ------------------------------------------------------------------------
    def issue_user(self, public_key: PublicKey | Certificate, key_id: str, principals: Sequence[str], *,
                   ttl: float | None = None, now: float | None = None,
                   valid_after: int | None = None, valid_before: int | None = None,
                   extensions: Mapping[str, bytes | str] = DEFAULT_USER_EXTENSIONS,
                   critical_options: Mapping[str, bytes | str] = _NO_OPTIONS,
                   serial: int | None = None) -> Certificate:
        """A user certificate for ``public_key`` (a certificate is refused): it may log in as
        any of ``principals``.

        Validity is ``ttl`` seconds from ``now`` (default: the clock), backdated by
        :attr:`backdate`; or exactly ``valid_after``/``valid_before`` (Unix seconds) when
        given instead. ``extensions`` default to ``ssh-keygen``'s (pty, port, agent and X11
        forwarding, user rc); pass fewer to withhold them. ``critical_options`` such as
        ``force-command`` and ``source-address`` take a ``str``; flags such as
        ``verify-required`` take ``""``. ``key_id`` is what sshd logs.
        """
        self._require("user", "does not sign user certificates")
        return self._issue(CERT_TYPE_USER, public_key, key_id, principals, ttl, now, valid_after,
                           valid_before, extensions, critical_options, serial)

    def issue_host(self, public_key: PublicKey | Certificate, key_id: str, principals: Sequence[str], *,
                   ttl: float | None = None, now: float | None = None,
                   valid_after: int | None = None, valid_before: int | None = None,
                   extensions: Mapping[str, bytes | str] = _NO_OPTIONS,
                   serial: int | None = None) -> Certificate:
        """A host certificate for ``public_key``, valid for the host names (or patterns)
        ``principals``; validity as for :meth:`issue_user`. Host certificates carry no
        critical options (PROTOCOL.certkeys)."""
        self._require("host", "does not sign host certificates")
        return self._issue(CERT_TYPE_HOST, public_key, key_id, principals, ttl, now, valid_after,
                           valid_before, extensions, _NO_OPTIONS, serial)

    def _require(self, kind: str, what: str) -> None:
        if self.kind != kind:
            raise CAError(f"a {self.kind} CA {what}")

    def validity(self, ttl: float | None = None, now: float | None = None,
                 valid_after: int | None = None, valid_before: int | None = None) -> tuple[int, int]:
        """``(valid_after, valid_before)`` for a lifetime, or the explicit pair checked."""
        if ttl is not None:
            if valid_after is not None or valid_before is not None:
                raise CAError("give a ttl or valid_after/valid_before, not both")
            if not ttl > 0:
                raise CAError("certificate lifetime must be positive")
            start = self.clock() if now is None else now
            return max(0, int(start) - self.backdate), int(start + ttl)
        if valid_after is None or valid_before is None:
            raise CAError("a certificate needs a ttl or both valid_after and valid_before")
        return int(valid_after), int(valid_before)

    def _issue(self, cert_type: int, public_key: PublicKey | Certificate, key_id: str, principals: Sequence[str],
               ttl: float | None, now: float | None, valid_after: int | None, valid_before: int | None,
               extensions: Mapping[str, bytes | str], critical_options: Mapping[str, bytes | str],
               serial: int | None) -> Certificate:
        if not isinstance(public_key, PublicKey):
            raise CAError("only a plain public key can be certified, not a certificate")
        after, before = self.validity(ttl, now, valid_after, valid_before)
        try:
            return sign_certificate(self._key, public_key, cert_type=cert_type, key_id=key_id,
                                    principals=principals, valid_after=after, valid_before=before,
                                    critical_options=critical_options, extensions=extensions,
                                    serial=self.serials() if serial is None else serial)
        except (TypeError, ValueError) as exc:
            raise CAError(f"cannot sign: {exc}") from None


def load_authority(data: bytes, kind: CAKind, id: str, *, passphrase: bytes | None = None,
                   expected_public_key: bytes | None = None, **options) -> CertificateAuthority:
    """A CA from its stored OpenSSH private key; ``expected_public_key`` (a key blob), when
    given, must match it. Raises :class:`CAError` when the key cannot be used."""
    try:
        key = load_private_key(data, passphrase)
    except KeyFormatError:
        raise CAError(f"the stored {kind} CA key cannot be loaded") from None
    if expected_public_key is not None and key.public_key.blob != expected_public_key:
        raise CAError(f"the stored {kind} CA key does not match its public key")
    return CertificateAuthority(key, kind, id, **options)
