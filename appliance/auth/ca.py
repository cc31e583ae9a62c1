"""The cluster's two certificate authorities (OpenSSH certificates, PROTOCOL.certkeys).

* The **user CA** signs user certificates: ``key_id = "user:<name>"`` (``"bot:<name>"`` for a
  bot), principals = the
  user's logins (never empty — an empty list means "anyone" to OpenSSH before 10.3,
  CVE-2024-7594), extensions = ``ssh-keygen``'s defaults plus
  ``jumpgate-roles@jumpgate`` (comma list) when the user has user roles (``admin``).
* The **host CA** signs host certificates for nodes, proxies and the auth server:
  ``key_id = "<kind>:<name>"`` (kind ``node``, ``proxy`` or ``auth``), principals given by
  the caller (name, name.CLUSTER, addresses, ...).

Both are Ed25519 keys created on the first start and kept, OpenSSH-PEM encoded, in
the auth service's storage; each is an :class:`ssh_proto.ca.CertificateAuthority` (kind
and id = the cluster name), which does the signing: this module adds the cluster's key
ids, principal syntax and extensions. The private keys never leave this object: no method returns
them and ``repr`` shows fingerprints only. Certificates are backdated by one minute
so that a node whose clock is slightly behind accepts them (as Teleport does).

Exports: :meth:`ClusterCA.user_ca_line` is a ``TrustedUserCAKeys`` line for sshd;
:meth:`ClusterCA.host_ca_known_hosts_line` an ``@cert-authority`` known_hosts line;
:meth:`ClusterCA.pin_for_host_ca` the pin carried by join tokens.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Sequence

from ssh_proto.ca import DEFAULT_BACKDATE, CAError, CAKind, CertificateAuthority, load_authority
from ssh_proto.certs import DEFAULT_USER_EXTENSIONS
from ssh_proto.errors import KeyFormatError, ProtocolError
from ssh_proto.keys import Certificate, PrivateKey, PublicKey, parse_public_blob
from ssh_proto.wire import Reader

from ..storage.base import CARecord, Storage

__all__ = [
    "BACKDATE_SECONDS",
    "HOST_KINDS",
    "USER_IDENTITIES",
    "holder_of",
    "GENERATION_EXTENSION",
    "ROLES_EXTENSION",
    "CAError",
    "ClusterCA",
    "parse_plain_public_key",
    "pin_matches",
    "pin_of",
    "generation_of",
    "roles_from_certificate",
]

ROLES_EXTENSION = "jumpgate-roles@jumpgate"
#: The user's certificate generation when the certificate was issued (decimal): deleting or
#: resetting the user bumps it, and proxies and nodes refuse older ones (docs/security.md R1).
GENERATION_EXTENSION = "jumpgate-generation@jumpgate"
#: Who a user certificate may be for: its key id is ``<identity>:<name>``.
USER_IDENTITIES = frozenset({"user", "bot"})
#: What a host certificate may be for: its key id is ``<kind>:<name>``.
HOST_KINDS = frozenset({"node", "proxy", "auth"})
BACKDATE_SECONDS = DEFAULT_BACKDATE
CA_KINDS: tuple[CAKind, ...] = ("user", "host")
# A principal or host pattern is one token of a known_hosts / principals list.
_PRINCIPAL = re.compile(r"[A-Za-z0-9_.:%@\-]{1,255}")
_PATTERN = re.compile(r"!?[A-Za-z0-9_.:*?\[\]\-]{1,255}")


def pin_of(data: bytes) -> str:
    """``"sha256:" + base64url-nopad(sha256(data))`` (host CA blob or TLS SPKI DER)."""
    digest = hashlib.sha256(bytes(data)).digest()
    return "sha256:" + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def pin_matches(pin: str, data: bytes) -> bool:
    """Constant-time check of a pin, with or without its ``sha256:`` prefix."""
    if not isinstance(pin, str):
        return False
    expected = pin_of(data)
    given = pin if pin.startswith("sha256:") else "sha256:" + pin
    return hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace"))


def _extension_text(cert: Certificate, name: str) -> str | None:
    """An extension's string value; None when absent, empty or malformed."""
    data = cert.extensions.get(name)
    if not data:
        return None
    try:
        r = Reader(data)
        text = r.string().decode("utf-8")
        r.finish()
    except (ProtocolError, UnicodeDecodeError):
        return None
    return text


def holder_of(key_id: str) -> tuple[str, str]:
    """``(identity, name)`` of a user certificate's key id: ``("user", "alice")``,
    ``("bot", "ci")``, or ``("", key_id)`` for one we did not issue."""
    identity, sep, name = key_id.partition(":")
    return (identity, name) if sep and identity in USER_IDENTITIES and name else ("", key_id)


def roles_from_certificate(cert: Certificate) -> tuple[str, ...]:
    """The Jumpgate user roles a user certificate carries (``()`` when none or malformed)."""
    text = _extension_text(cert, ROLES_EXTENSION)
    return tuple(role for role in text.split(",") if role) if text else ()


def generation_of(cert: Certificate) -> int:
    """The generation a user certificate was issued at: 0 without the extension (issued
    before it existed), -1 when it is malformed (older than every generation: refused as
    soon as the user has been revoked once — never a way around revocation)."""
    if GENERATION_EXTENSION not in cert.extensions:
        return 0
    text = _extension_text(cert, GENERATION_EXTENSION)
    if text is None or not text.isdigit() or len(text) > 18:
        return -1
    return int(text)


def _check_principals(principals: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for p in principals:
        if not isinstance(p, str) or not _PRINCIPAL.fullmatch(p):
            raise CAError(f"invalid principal {str(p)[:64]!r}")
        if p not in out:
            out.append(p)
    if not out:
        raise CAError("refusing to issue a certificate with no principals")
    return tuple(out)


def _load(record: CARecord, kind: CAKind, cluster: str) -> CertificateAuthority:
    if record.cluster != cluster:
        raise CAError(f"the data directory belongs to cluster {record.cluster!r}, "
                      f"not {cluster!r}")
    return load_authority(record.private_key, kind, cluster, expected_public_key=record.public_key)


class ClusterCA:
    """The user and host CAs of one cluster; build it with :meth:`load_or_create`.

    >>> ca = await ClusterCA.load_or_create(storage, "prod")            # doctest: +SKIP
    >>> cert = ca.sign_user(key, "alice", ["alice"], (), 3600, time.time())  # doctest: +SKIP
    """

    __slots__ = ("_host", "_user", "cluster", "new_kinds")

    def __init__(self, cluster: str, user_ca: CertificateAuthority, host_ca: CertificateAuthority,
                 new_kinds: Sequence[str] = ()):
        self.cluster = cluster
        self._user = user_ca
        self._host = host_ca
        #: The CA kinds created by :meth:`load_or_create` (to audit "ca.create").
        self.new_kinds = tuple(new_kinds)

    @classmethod
    async def load_or_create(cls, storage: Storage, cluster: str, *,
                             clock: Callable[[], float] = time.time) -> ClusterCA:
        """Load both CAs, creating whichever is missing (two racing starts agree on one)."""
        keys: dict[str, CertificateAuthority] = {}
        new: list[str] = []
        for kind in CA_KINDS:
            record = await storage.get_ca(kind)
            if record is None:
                fresh = PrivateKey.generate("ssh-ed25519")
                record = await storage.insert_ca(CARecord(
                    kind, cluster, fresh.to_openssh(comment=f"jumpgate-{kind}-ca@{cluster}"),
                    fresh.public_key.blob, clock()))
                if record.public_key == fresh.public_key.blob:
                    new.append(kind)
            keys[kind] = _load(record, kind, cluster)
        return cls(cluster, keys["user"], keys["host"], new)

    def __repr__(self) -> str:
        return (f"<ClusterCA {self.cluster!r} user={self._user.public_key.fingerprint()} "
                f"host={self._host.public_key.fingerprint()}>")

    def authority(self, kind: CAKind) -> CertificateAuthority:
        """The cluster's ``"user"`` or ``"host"`` :class:`~ssh_proto.ca.CertificateAuthority`."""
        return self._user if kind == "user" else self._host

    # -- public halves ---------------------------------------------------------------
    @property
    def user_ca_public(self) -> PublicKey:
        return self._user.public_key

    @property
    def host_ca_public(self) -> PublicKey:
        return self._host.public_key

    def pin_for_host_ca(self) -> str:
        """The pin of the host CA public key blob, carried by join tokens."""
        return pin_of(self._host.public_key.blob)

    def user_ca_line(self) -> str:
        """A ``TrustedUserCAKeys`` (or ``cert-authority`` authorized_keys) key line."""
        return self._user.public_key.to_line(f"jumpgate-user-ca@{self.cluster}")

    def host_ca_known_hosts_line(self, patterns: Sequence[str] = ("*",)) -> str:
        """``@cert-authority <patterns> <host CA key>`` for known_hosts."""
        if isinstance(patterns, str):
            patterns = (patterns,)
        if not patterns or not all(isinstance(p, str) and _PATTERN.fullmatch(p) for p in patterns):
            raise CAError("host patterns must be non-empty known_hosts patterns")
        return self._host.known_hosts_line(patterns, f"jumpgate-host-ca@{self.cluster}")

    # -- signing ---------------------------------------------------------------------
    def sign_user(self, public_key: PublicKey, user: str, logins: Sequence[str],
                  roles: Sequence[str], ttl: float, now: float, generation: int = 0,
                  identity: str = "user") -> Certificate:
        """A user certificate whose principals are exactly ``logins`` (never empty), carrying
        the user's current certificate ``generation``; its key id is ``<identity>:<user>``
        (``bot:ci`` for a bot: nodes, sshd logs and the audit log tell them apart)."""
        if identity not in USER_IDENTITIES:
            raise CAError(f"unknown identity kind {str(identity)[:16]!r}")
        principals = _check_principals(logins)
        extensions: dict[str, bytes | str] = dict(DEFAULT_USER_EXTENSIONS)
        if roles:
            extensions[ROLES_EXTENSION] = ",".join(roles)
        extensions[GENERATION_EXTENSION] = str(int(generation))
        return self._user.issue_user(public_key, f"{identity}:{user}", principals, ttl=ttl, now=now,
                                     extensions=extensions)

    def sign_host(self, public_key: PublicKey, kind: str, name: str, principals: Sequence[str],
                  ttl: float, now: float) -> Certificate:
        """A host certificate ``key_id = "<kind>:<name>"`` for ``principals`` (never empty)."""
        if kind not in HOST_KINDS:
            raise CAError(f"unknown host kind {str(kind)[:16]!r}")
        names = _check_principals(principals)
        return self._host.issue_host(public_key, f"{kind}:{name}", names, ttl=ttl, now=now)


def parse_plain_public_key(blob: bytes) -> PublicKey:
    """Decode a public key blob to certify; certificates and junk raise CAError."""
    try:
        key = parse_public_blob(bytes(blob))
    except (KeyFormatError, TypeError):
        raise CAError("malformed public key") from None
    if not isinstance(key, PublicKey):
        raise CAError("a certificate cannot be certified; send the plain public key")
    return key

