"""known_hosts: which host keys and host CAs the client trusts.

Implements the file format of sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT":
``[@marker] patterns keytype base64 [comment]`` where patterns are a comma list of
host names with ``*``/``?`` wildcards and ``!negation``, ``[host]:port`` for ports other
than 22, or one hashed name ``|1|base64(salt)|base64(HMAC-SHA1(salt, host))``
(``ssh-keygen -H``). Markers: ``@cert-authority`` (host certificates signed by this key
are trusted for the matching hosts, docs/security.md C17) and ``@revoked``.

Theory of operation. :meth:`KnownHosts.check` has exactly one way to succeed: an
internal verdict must be the ``_ACCEPTED`` sentinel; any other outcome, including a
verdict a future edit forgets to set, raises :class:`HostKeyNotVerifiable`
(docs/security.md T16). In order:

1. ``@revoked`` keys are refused for every host, whatever the line's host patterns
   (stricter than OpenSSH, which only consults lines matching the host). For a
   certificate the certificate, its key and its CA key are all checked.
2. A certificate is accepted iff a matching ``@cert-authority`` line holds its CA (for
   ``[host]:port``, a line for ``host`` also matches, as in OpenSSH) and
   :func:`~ssh_proto.certs.validate_host_certificate` passes; a CA match with an invalid
   certificate is final. If no CA line matches, the certified key is judged as a
   plain key (what OpenSSH does), so it is accepted only if that very key is listed
   (C18) — never just because its signature is valid.
3. A plain key is accepted iff a matching plain line lists it. A host listed with
   other keys only is reported as a changed key (possible man-in-the-middle).

Unusable lines are skipped and recorded in :attr:`KnownHosts.invalid_lines`, except an
unusable ``@revoked`` line, which makes parsing fail: a revocation we cannot read must
not silently stop applying.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from .certs import match_pattern, validate_host_certificate
from .errors import CertificateError, HostKeyNotVerifiable, KeyFormatError
from .keys import Certificate, PublicKey, parse_public_line

__all__ = ["KnownHostEntry", "KnownHosts", "host_string"]

MARKER_CERT_AUTHORITY = "cert-authority"
MARKER_REVOKED = "revoked"
_MARKERS = (MARKER_CERT_AUTHORITY, MARKER_REVOKED)
_HASH_MAGIC = "|1|"
_SHA1_LEN = 20
_FORBIDDEN_HOST_CHARS = frozenset(" \t\r\n,*?!|#@")


def host_string(host: str, port: int = 22) -> str:
    """The name looked up in known_hosts: ``host``, or ``[host]:port`` unless port 22."""
    host = host.lower()
    return host if port == 22 else f"[{host}]:{port}"


def _hash_host(name: str, salt: bytes) -> bytes:
    return hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()


@dataclass(frozen=True, slots=True)
class KnownHostEntry:
    """One usable known_hosts line."""

    marker: str | None  # None, "cert-authority" or "revoked"
    patterns: tuple[str, ...]  # empty when the line is hashed
    hashed: tuple[bytes, bytes] | None  # (salt, HMAC-SHA1) of a hashed line
    key: PublicKey | Certificate
    comment: str = ""
    line_number: int = 0

    def matches(self, name: str) -> bool:
        """Does this line apply to ``name`` (a :func:`host_string`)?"""
        if self.hashed is not None:
            salt, digest = self.hashed
            return hmac.compare_digest(_hash_host(name, salt), digest)
        matched = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            if match_pattern(name, pattern[1:].lower() if negated else pattern.lower()):
                if negated:
                    return False  # a negated match vetoes the whole line
                matched = True
        return matched


class _Accepted:
    __slots__ = ()


_ACCEPTED = _Accepted()
_Verdict = _Accepted | str


def _parse_hashed(field: str) -> tuple[bytes, bytes]:
    parts = field[len(_HASH_MAGIC):].split("|")
    try:
        if len(parts) != 2:
            raise ValueError
        salt, digest = (base64.b64decode(p.encode("ascii"), validate=True) for p in parts)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise KeyFormatError("malformed hashed host name") from None
    if len(salt) != _SHA1_LEN or len(digest) != _SHA1_LEN:
        raise KeyFormatError("hashed host name has a bad salt or hash length")
    return salt, digest


def _split_marker(line: str) -> tuple[str | None, str]:
    if not line.startswith("@"):
        return None, line
    head, *rest = line.split(None, 1)
    if head[1:] not in _MARKERS:
        raise KeyFormatError(f"unknown marker {head[:32]}")
    return head[1:], rest[0] if rest else ""


def _parse_line(line: str, line_number: int) -> KnownHostEntry:
    marker, rest = _split_marker(line)
    fields = rest.split(None, 1)
    if len(fields) != 2:
        raise KeyFormatError("expected 'host-patterns key-type base64-key'")
    hosts, key_text = fields
    key, comment = parse_public_line(key_text)
    if isinstance(key, Certificate) and marker != MARKER_REVOKED:
        # C5 again: a certificate is never a CA, nor a pinned host key.
        raise KeyFormatError("a certificate can only appear on a @revoked line")
    if hosts.startswith(_HASH_MAGIC):
        return KnownHostEntry(marker, (), _parse_hashed(hosts), key, comment, line_number)
    patterns = tuple(p for p in hosts.split(",") if p)
    if not patterns:
        raise KeyFormatError("no host patterns")
    return KnownHostEntry(marker, patterns, None, key, comment, line_number)


def _revocable_blobs(key: PublicKey | Certificate) -> set[bytes]:
    """A revoked certificate line revokes its key as well (OpenSSH compares keys)."""
    if isinstance(key, Certificate):
        return {key.blob, key.public_key.blob}
    return {key.blob}


class KnownHosts:
    """The trusted host keys and host CAs of one known_hosts file.

    >>> from ssh_proto.keys import PrivateKey
    >>> kh, key = KnownHosts(), PrivateKey.generate().public_key
    >>> line = kh.add("example.com", 2222, key)
    >>> kh.check("Example.com", 2222, key)  # returns: trusted
    >>> kh.check("example.com", 22, key)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ssh_proto.errors.HostKeyNotVerifiable: no known host key for example.com ...
    """

    def __init__(self, entries: tuple[KnownHostEntry, ...] = (),
                 invalid_lines: tuple[tuple[int, str], ...] = ()):
        self._entries = list(entries)
        #: (line number, reason) of each skipped line
        self.invalid_lines = list(invalid_lines)

    @classmethod
    def parse(cls, text: str) -> KnownHosts:
        """Parse known_hosts text; raises KeyFormatError for an unusable @revoked line."""
        entries, invalid = [], []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                entries.append(_parse_line(line, number))
            except KeyFormatError as exc:
                if line.startswith("@" + MARKER_REVOKED):
                    raise KeyFormatError(f"known_hosts line {number}: unusable @revoked "
                                         f"line: {exc}") from None
                invalid.append((number, str(exc)))
        return cls(tuple(entries), tuple(invalid))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KnownHosts:
        """Read a known_hosts file; a missing file is an empty one."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return cls()
        try:
            return cls.parse(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise KeyFormatError(f"{os.fspath(path)}: not a text file") from None

    @property
    def entries(self) -> tuple[KnownHostEntry, ...]:
        """The parsed lines, in file order."""
        return tuple(self._entries)

    def add(self, host: str, port: int, key: PublicKey, hashed: bool = False) -> str:
        """Trust ``key`` for ``host``:``port``; return the line to append to the file."""
        if not isinstance(key, PublicKey):
            raise TypeError("only plain host keys can be added; trust host certificates "
                            "with a @cert-authority line")
        if not host or set(host) & _FORBIDDEN_HOST_CHARS:
            raise ValueError(f"invalid host name {host!r}")
        if not 0 < port < 65536:
            raise ValueError(f"invalid port {port}")
        name = host_string(host, port)
        if hashed:
            salt = os.urandom(_SHA1_LEN)
            digest = _hash_host(name, salt)
            encoded = (base64.b64encode(part).decode("ascii") for part in (salt, digest))
            name = _HASH_MAGIC + "|".join(encoded)
        line = f"{name} {key.to_line()}"
        self._entries.append(_parse_line(line, 0))
        return line

    def check(self, host: str, port: int, key: PublicKey | Certificate, *,
              now: float | None = None) -> None:
        """Return only if ``key`` is trusted for ``host``:``port``; else raise.

        Raises :class:`HostKeyNotVerifiable` saying why (unknown host, changed key,
        revoked key, certificate refused). ``now`` is for certificate validity.
        """
        name = host_string(host, port)
        verdict = self._verdict(name, host.lower(), key, now)
        if verdict is _ACCEPTED:
            return
        raise HostKeyNotVerifiable(verdict if isinstance(verdict, str)
                                   else f"host key for {name} is not verifiable")

    # -- verdicts ---------------------------------------------------------------------
    def _matching(self, name: str, marker: str | None) -> list[KnownHostEntry]:
        return [e for e in self._entries if e.marker == marker and e.matches(name)]

    def _revoked(self) -> set[bytes]:
        revoked: set[bytes] = set()
        for entry in self._entries:
            if entry.marker == MARKER_REVOKED:
                revoked |= _revocable_blobs(entry.key)
        return revoked

    def _verdict(self, name: str, hostname: str, key: object, now: float | None) -> _Verdict:
        if not isinstance(key, (PublicKey, Certificate)):
            return "host key is neither a public key nor a certificate"
        revoked = self._revoked()
        presented = _revocable_blobs(key)
        if isinstance(key, Certificate):
            presented.add(key.signature_key.blob)
        if presented & revoked:
            return f"host key {key.fingerprint()} for {name} is marked @revoked"
        if isinstance(key, Certificate):
            return self._verdict_certificate(name, hostname, key, now, revoked)
        return self._verdict_plain(name, key)

    def _certificate_authorities(self, name: str, hostname: str, ca_blob: bytes) -> list[PublicKey]:
        """The ``@cert-authority`` keys for ``name``; for ``[host]:port``, OpenSSH looks the
        CA up again by the bare host name ("checking without port identifier",
        sshconnect.c), so ``@cert-authority host KEY`` vouches for every port of ``host``."""
        for candidate in dict.fromkeys((name, hostname)):
            cas = [e.key for e in self._matching(candidate, MARKER_CERT_AUTHORITY)
                   if isinstance(e.key, PublicKey) and e.key.blob == ca_blob]
            if cas:
                return cas
        return []

    def _verdict_certificate(self, name: str, hostname: str, cert: Certificate,
                             now: float | None, revoked: set[bytes]) -> _Verdict:
        cas = self._certificate_authorities(name, hostname, cert.signature_key.blob)
        if cas:
            try:
                validate_host_certificate(cert, hostname=hostname, trusted_cas=cas, now=now,
                                          revoked_keys=revoked)
            except CertificateError as exc:
                return f"host certificate for {name} refused: {exc}"
            return _ACCEPTED
        # C18: no CA of ours signed it; only the very same key listed plainly counts.
        verdict = self._verdict_plain(name, cert.public_key)
        if verdict is _ACCEPTED:
            return verdict
        return (f"host certificate for {name} is signed by CA "
                f"{cert.signature_key.fingerprint()}, which is not a @cert-authority for "
                f"this host, and its key is not trusted either: {verdict}")

    def _verdict_plain(self, name: str, key: PublicKey) -> _Verdict:
        known = self._matching(name, None)
        if any(e.key == key for e in known):
            return _ACCEPTED
        if known:
            lines = ", ".join(str(e.line_number) for e in known)
            return (f"WARNING: the host key for {name} has changed (possible "
                    f"man-in-the-middle attack): got {key.key_type} {key.fingerprint()}, "
                    f"known_hosts line(s) {lines} list a different key")
        return f"no known host key for {name} ({key.key_type} {key.fingerprint()})"
