"""OpenSSH certificate policy: is this certificate acceptable, and issuing new ones.

:mod:`ssh_proto.keys` parses certificates (PROTOCOL.certkeys) and checks their format;
this module holds the *authority* checks of docs/security.md C5-C18, the way OpenSSH's
``auth2-pubkey.c``, ``auth-options.c`` and ``sshkey_cert_check_authority`` apply them:

* :func:`validate_user_certificate` (server side): C5, C6, C8, C10-C14 — user type,
  validity window, non-empty principal list with an *exact* match, trusted and
  non-revoked CA, allowed CA signature algorithm, critical options understood and
  well formed, ``source-address`` matched against the peer. It returns the
  :class:`CertPermissions` the connection layer must enforce (C14).
* :func:`validate_host_certificate` (client side): C17 — host type, validity,
  principals may be wildcard patterns, no critical options at all.
* :func:`sign_certificate`: our CA. It never issues an empty principal list (the
  fail-open case of CVE-2024-7594) nor a SHA-1 signature.

Every refusal raises :class:`~ssh_proto.errors.CertificateError` whose message names
the rule, the key id, the serial and the CA fingerprint (C16), never a secret; the
message's "(rule N)" is docs/security.md CN.

>>> from ssh_proto.keys import PrivateKey
>>> ca, user = PrivateKey.generate(), PrivateKey.generate()
>>> cert = sign_certificate(ca, user.public_key, cert_type=CERT_TYPE_USER, key_id="alice@x",
...                         principals=["alice"], valid_after=0, valid_before=2**40,
...                         extensions=DEFAULT_USER_EXTENSIONS)
>>> perms = validate_user_certificate(cert, principal="alice", trusted_cas=[ca.public_key],
...                                   now=1_700_000_000)
>>> perms.permit_pty, perms.force_command
(True, None)
"""
from __future__ import annotations

import ipaddress
import os
import time
import types
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import CertificateError, ProtocolError
from .keys import (
    CERT_SUFFIX,
    CERT_TYPE_HOST,
    CERT_TYPE_USER,
    DEFAULT_CA_SIGNATURE_ALGORITHMS,
    MAX_PRINCIPALS,
    Certificate,
    PrivateKey,
    PublicKey,
    parse_public_blob,
)
from .wire import Reader, Writer, encode_string

__all__ = [
    "CERT_TYPE_HOST",
    "CERT_TYPE_USER",
    "DEFAULT_CA_SIGNATURE_ALGORITHMS",
    "DEFAULT_USER_EXTENSIONS",
    "CertPermissions",
    "match_pattern",
    "parse_cidr_list",
    "sign_certificate",
    "validate_host_certificate",
    "validate_user_certificate",
]

# Critical options (user certificates only; PROTOCOL.certkeys).
OPT_FORCE_COMMAND = "force-command"
OPT_SOURCE_ADDRESS = "source-address"
OPT_VERIFY_REQUIRED = "verify-required"
# Extensions (user certificates only).
EXT_NO_TOUCH_REQUIRED = "no-touch-required"
EXT_PERMIT_X11_FORWARDING = "permit-X11-forwarding"
EXT_PERMIT_AGENT_FORWARDING = "permit-agent-forwarding"
EXT_PERMIT_PORT_FORWARDING = "permit-port-forwarding"
EXT_PERMIT_PTY = "permit-pty"
EXT_PERMIT_USER_RC = "permit-user-rc"

#: What ``ssh-keygen -s`` grants a user certificate unless told otherwise.
DEFAULT_USER_EXTENSIONS: Mapping[str, bytes] = types.MappingProxyType({
    EXT_PERMIT_X11_FORWARDING: b"",
    EXT_PERMIT_AGENT_FORWARDING: b"",
    EXT_PERMIT_PORT_FORWARDING: b"",
    EXT_PERMIT_PTY: b"",
    EXT_PERMIT_USER_RC: b"",
})

_STRING_OPTIONS = frozenset({OPT_FORCE_COMMAND, OPT_SOURCE_ADDRESS})
_FLAG_OPTIONS = frozenset({OPT_VERIFY_REQUIRED})
_FLAG_EXTENSIONS = frozenset({EXT_NO_TOUCH_REQUIRED, EXT_PERMIT_X11_FORWARDING,
                              EXT_PERMIT_AGENT_FORWARDING, EXT_PERMIT_PORT_FORWARDING,
                              EXT_PERMIT_PTY, EXT_PERMIT_USER_RC})
_CIDR_CHARS = frozenset("0123456789abcdefABCDEF.:/")  # as OpenSSH addr_match_cidr_list
_EMPTY: Mapping[str, bytes | str] = types.MappingProxyType({})
_UINT64_MAX = 2**64 - 1

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class CertPermissions:
    """What an accepted user certificate allows; the session layer enforces it (C14).

    ``force_command`` replaces any exec, shell or subsystem request. Without
    ``permit_pty`` refuse pty-req; without ``permit_port_forwarding`` refuse
    direct-tcpip and tcpip-forward; without ``permit_agent_forwarding`` refuse
    auth-agent-req; without ``permit_x11_forwarding`` refuse x11-req. ``extensions``
    holds every extension, unknown ones included (they are ignored, not refused).
    """

    force_command: str | None
    source_address: tuple[IPNetwork, ...] | None
    permit_pty: bool
    permit_port_forwarding: bool
    permit_agent_forwarding: bool
    permit_x11_forwarding: bool
    permit_user_rc: bool
    extensions: Mapping[str, bytes] = field(default_factory=dict)
    key_id: str = ""
    serial: int = 0


def match_pattern(name: str, pattern: str) -> bool:
    """OpenSSH ``match_pattern``: ``*`` matches any run, ``?`` one character.

    No character classes, no escapes; callers lower-case host names. Linear
    backtracking (no regular expressions), so hostile patterns cannot blow up.
    """
    n = p = 0
    star_p, star_n = -1, 0
    while n < len(name):
        if p < len(pattern) and pattern[p] == "*":
            star_p, star_n = p, n
            p += 1
        elif p < len(pattern) and pattern[p] in ("?", name[n]):
            n += 1
            p += 1
        elif star_p >= 0:  # let the last star swallow one more character
            star_n += 1
            n, p = star_n, star_p + 1
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


# ---------------------------------------------------------------------------- refusals


def _refuse(cert: Certificate, rule: int, reason: str) -> CertificateError:
    """C16: say why, and identify the certificate and its CA (never secrets)."""
    return CertificateError(
        f"certificate rejected (rule {rule}): {reason}; key id {cert.key_id!r}, "
        f"serial {cert.serial}, signed by CA {cert.signature_key.key_type} "
        f"{cert.signature_key.fingerprint()}")


def _blobs(keys: Iterable[object]) -> set[bytes]:
    """Blobs of revoked/trusted entries given as bytes or as key objects."""
    out: set[bytes] = set()
    for key in keys:
        raw = getattr(key, "blob", key)
        if isinstance(raw, (bytes, bytearray, memoryview)):
            out.add(bytes(raw))
    return out


def _check_revoked(cert: Certificate, revoked_keys: Collection[object]) -> None:
    """C11: the certificate, its key or its CA key revoked -> refuse."""
    revoked = _blobs(revoked_keys)
    if cert.signature_key.blob in revoked:
        raise _refuse(cert, 11, "the CA key is revoked")
    if cert.blob in revoked or cert.public_key.blob in revoked:
        raise _refuse(cert, 11, "the certified key is revoked")


def _check_trusted_ca(cert: Certificate, trusted_cas: Iterable[PublicKey]) -> None:
    """C5 and C10: the CA must be one of ``trusted_cas`` and a plain key.

    A certificate listed among the trusted CAs never counts (CVE-2025-49825).
    """
    if not isinstance(cert.signature_key, PublicKey):
        raise _refuse(cert, 5, "the signature key is itself a certificate")
    trusted = {ca.blob for ca in trusted_cas if isinstance(ca, PublicKey)}
    if cert.signature_key.blob not in trusted:
        raise _refuse(cert, 10, "the CA is not trusted")


def _check_signature(cert: Certificate, ca_signature_algorithms: Collection[str]) -> None:
    """C8 and C6: an allowed CA signature algorithm, and a valid signature."""
    if isinstance(ca_signature_algorithms, str):  # "in" would match substrings
        ca_signature_algorithms = (ca_signature_algorithms,)
    if cert.signature_algorithm not in ca_signature_algorithms:
        raise _refuse(cert, 8, f"CA signature algorithm {cert.signature_algorithm!r} "
                               "is not allowed")
    if not cert.verify_ca_signature(algorithms=ca_signature_algorithms):
        raise _refuse(cert, 6, "the CA signature does not verify")


def _check_validity(cert: Certificate, rule: int, now: float | None, skew: int) -> None:
    """``valid_after - skew <= now < valid_before + skew``."""
    now = time.time() if now is None else now
    if now + skew < cert.valid_after:
        raise _refuse(cert, rule, f"not yet valid (valid after {cert.valid_after}, "
                                  f"now {int(now)})")
    if now - skew >= cert.valid_before:
        raise _refuse(cert, rule, f"expired (valid before {cert.valid_before}, now {int(now)})")


def _check_common(cert: object, *, cert_type: int, rule: int, trusted_cas: Iterable[PublicKey],
                  now: float | None, skew: int, revoked_keys: Collection[object],
                  ca_signature_algorithms: Collection[str]) -> Certificate:
    if not isinstance(cert, Certificate):
        raise CertificateError("not a certificate")
    _check_revoked(cert, revoked_keys)
    _check_trusted_ca(cert, trusted_cas)
    _check_signature(cert, ca_signature_algorithms)
    if cert.cert_type != cert_type:
        wanted = "user" if cert_type == CERT_TYPE_USER else "host"
        raise _refuse(cert, rule, f"not a {wanted} certificate")
    _check_validity(cert, rule, now, skew)
    if not cert.principals:
        # OpenSSH >= 10.3: an empty list is never "valid for anyone" (CVE-2024-7594).
        raise _refuse(cert, rule, "the principal list is empty")
    return cert


# ------------------------------------------------------------------------ user options


def _option_string(cert: Certificate, name: str, data: bytes) -> str:
    """A known string option's data: exactly one string, no NUL, UTF-8 (C13)."""
    try:
        r = Reader(data)
        value = r.utf8()
        r.finish()
    except ProtocolError:
        raise _refuse(cert, 13, f"critical option {name!r} is corrupt") from None
    if "\0" in value:
        raise _refuse(cert, 13, f"critical option {name!r} contains a NUL byte")
    return value


def parse_cidr_list(text: str) -> tuple[IPNetwork, ...]:
    """A ``source-address`` list: comma-separated addresses or CIDR networks.

    Raises ValueError on an empty entry, a stray character, host bits set beyond the
    mask (as OpenSSH's "inconsistent mask length") or an unparsable address.
    """
    networks = []
    for entry in text.split(","):
        if not entry or not set(entry) <= _CIDR_CHARS:
            raise ValueError(f"invalid source-address entry {entry!r}")
        networks.append(ipaddress.ip_network(entry, strict=True))
    return tuple(networks)


def _peer_address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(value)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers this way
    return address


def _check_source_address(cert: Certificate, networks: tuple[IPNetwork, ...],
                          peer: str | None) -> None:
    """C14: the peer must be inside one of the networks; unknown peer -> refuse."""
    if peer is None:
        raise _refuse(cert, 14, "source-address is set but the peer address is unknown")
    try:
        address = _peer_address(peer)
    except ValueError:
        raise _refuse(cert, 14, f"peer address {peer!r} is not an IP address") from None
    if not any(address.version == net.version and address in net for net in networks):
        raise _refuse(cert, 14, f"source-address does not allow {address}")


def _critical_options(cert: Certificate) -> tuple[str | None, tuple[IPNetwork, ...] | None]:
    """C13: every critical option understood and well formed, else refuse."""
    force_command: str | None = None
    networks: tuple[IPNetwork, ...] | None = None
    for name, data in cert.critical_options.items():
        if name == OPT_FORCE_COMMAND:
            force_command = _option_string(cert, name, data)
        elif name == OPT_SOURCE_ADDRESS:
            try:
                networks = parse_cidr_list(_option_string(cert, name, data))
            except ValueError:
                raise _refuse(cert, 13, "source-address is not a valid CIDR list") from None
        elif name == OPT_VERIFY_REQUIRED:
            # Only FIDO (sk-*) keys can prove user verification and we support none,
            # so this option can never be satisfied: refuse rather than ignore it.
            raise _refuse(cert, 13, "verify-required cannot be enforced for this key type")
        else:
            raise _refuse(cert, 13, f"unknown critical option {name!r}")
    return force_command, networks


def _check_extensions(cert: Certificate) -> None:
    """C13: a known flag extension carrying data is corrupt; unknown ones are ignored."""
    for name, data in cert.extensions.items():
        if name in _FLAG_EXTENSIONS and data:
            raise _refuse(cert, 13, f"extension {name!r} is corrupt (unexpected data)")


def validate_user_certificate(
    cert: Certificate, *, principal: str, trusted_cas: Iterable[PublicKey],
    now: float | None = None, skew: int = 0, source_address: str | None = None,
    revoked_keys: Collection[bytes] = (),
    ca_signature_algorithms: Collection[str] = DEFAULT_CA_SIGNATURE_ALGORITHMS,
) -> CertPermissions:
    """Decide whether ``cert`` lets its holder log in as ``principal``.

    ``source_address`` is the peer's IP address; a certificate restricted by
    ``source-address`` is refused when it is not given. ``revoked_keys`` holds blobs
    of revoked keys (certified keys or CAs). The user-auth signature itself is checked
    separately with :meth:`Certificate.verify` (C15). Raises CertificateError.
    """
    cert = _check_common(cert, cert_type=CERT_TYPE_USER, rule=12, trusted_cas=trusted_cas,
                         now=now, skew=skew, revoked_keys=revoked_keys,
                         ca_signature_algorithms=ca_signature_algorithms)
    if principal not in cert.principals:  # exact match; no wildcards for users
        raise _refuse(cert, 12, f"principal {principal!r} is not listed")
    force_command, networks = _critical_options(cert)
    _check_extensions(cert)
    if networks is not None:
        _check_source_address(cert, networks, source_address)
    ext = cert.extensions
    return CertPermissions(
        force_command=force_command, source_address=networks,
        permit_pty=EXT_PERMIT_PTY in ext,
        permit_port_forwarding=EXT_PERMIT_PORT_FORWARDING in ext,
        permit_agent_forwarding=EXT_PERMIT_AGENT_FORWARDING in ext,
        permit_x11_forwarding=EXT_PERMIT_X11_FORWARDING in ext,
        permit_user_rc=EXT_PERMIT_USER_RC in ext,
        extensions=dict(ext), key_id=cert.key_id, serial=cert.serial)


def validate_host_certificate(
    cert: Certificate, *, hostname: str, trusted_cas: Iterable[PublicKey],
    now: float | None = None, skew: int = 0, revoked_keys: Collection[bytes] = (),
    ca_signature_algorithms: Collection[str] = DEFAULT_CA_SIGNATURE_ALGORITHMS,
) -> None:
    """C17: accept ``cert`` as the host key of ``hostname`` or raise CertificateError.

    Principals may be patterns with ``*`` and ``?``; matching ignores case, as host
    names do. Host certificates may carry no critical options.
    """
    cert = _check_common(cert, cert_type=CERT_TYPE_HOST, rule=17, trusted_cas=trusted_cas,
                         now=now, skew=skew, revoked_keys=revoked_keys,
                         ca_signature_algorithms=ca_signature_algorithms)
    if cert.critical_options:
        raise _refuse(cert, 17, "host certificates may not carry critical options")
    name = hostname.lower()
    if not any(match_pattern(name, p.lower()) for p in cert.principals):
        raise _refuse(cert, 17, f"host name {hostname!r} matches no principal")


# ---------------------------------------------------------------------------- issuing


def _option_data(name: str, value: bytes | str) -> bytes:
    """bytes are the raw data field; '' is an empty flag; other text becomes a string."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return encode_string(value) if value else b""
    raise TypeError(f"value of {name!r} must be bytes or str")


def _check_known_option(name: str, data: bytes, critical: bool) -> None:
    """Refuse to issue a certificate our own validator would call corrupt."""
    if critical and name in _STRING_OPTIONS:
        r = Reader(data)
        try:
            value = r.utf8()
            r.finish()
        except ProtocolError:
            raise ValueError(f"critical option {name!r} must hold one string") from None
        if name == OPT_SOURCE_ADDRESS:
            parse_cidr_list(value)
    elif (name in _FLAG_OPTIONS if critical else name in _FLAG_EXTENSIONS) and data:
        raise ValueError(f"{name!r} is a flag and takes no data")


def _encode_options(options: Mapping[str, bytes | str], critical: bool) -> bytes:
    """Sorted (string name, string data) pairs (PROTOCOL.certkeys)."""
    w = Writer()
    for name in sorted(options, key=lambda n: n.encode("utf-8")):
        if not isinstance(name, str) or not name or "\0" in name:
            raise ValueError(f"invalid option name {name!r}")
        data = _option_data(name, options[name])
        _check_known_option(name, data, critical)
        w.string(name).string(data)
    return w.getvalue()


def _check_principals(principals: Sequence[str]) -> tuple[str, ...]:
    if isinstance(principals, (str, bytes)):
        raise TypeError("principals must be a sequence of names, not one string")
    result = tuple(principals)
    if not result:
        raise ValueError("refusing to issue a certificate with no principals")
    if len(result) > MAX_PRINCIPALS:
        raise ValueError(f"at most {MAX_PRINCIPALS} principals")
    for p in result:
        if not isinstance(p, str) or not p or "\0" in p:
            raise ValueError(f"invalid principal {p!r}")
    return result


def _check_sign_args(public_key: PublicKey, cert_type: int, key_id: str,
                     valid_after: int, valid_before: int, serial: int,
                     critical_options: Mapping[str, bytes | str]) -> None:
    if not isinstance(public_key, PublicKey):
        raise TypeError("can only certify a plain public key")
    if cert_type not in (CERT_TYPE_USER, CERT_TYPE_HOST):
        raise ValueError("cert_type must be CERT_TYPE_USER or CERT_TYPE_HOST")
    if cert_type == CERT_TYPE_HOST and critical_options:
        raise ValueError("host certificates cannot carry critical options")
    if "\0" in key_id:
        raise ValueError("key id contains a NUL byte")
    for value in (valid_after, valid_before, serial):
        if not 0 <= value <= _UINT64_MAX:
            raise ValueError("validity times and serial must fit in uint64")
    if valid_after >= valid_before:
        raise ValueError("valid_after must be before valid_before")


def sign_certificate(
    ca: PrivateKey, public_key: PublicKey, *, cert_type: int, key_id: str,
    principals: Sequence[str], valid_after: int, valid_before: int,
    critical_options: Mapping[str, bytes | str] = _EMPTY,
    extensions: Mapping[str, bytes | str] = _EMPTY, serial: int = 0,
    nonce: bytes | None = None, signature_algorithm: str | None = None,
) -> Certificate:
    """Issue an OpenSSH certificate for ``public_key`` signed by ``ca``.

    Option and extension values: ``bytes`` are the raw data field (as found in
    :attr:`Certificate.critical_options`), ``''`` is an empty flag, other ``str`` is
    wrapped as an SSH string (``force-command``, ``source-address``). Names are
    written sorted. ``signature_algorithm`` defaults to the CA's best (rsa-sha2-512 for
    RSA); ``ssh-rsa`` is refused. Raises ValueError / TypeError on bad arguments.
    """
    _check_sign_args(public_key, cert_type, key_id, valid_after, valid_before, serial,
                     critical_options)
    names = _check_principals(principals)
    key_fields = Reader(public_key.blob)
    key_fields.string()
    body = (Writer()
            .string(public_key.key_type + CERT_SUFFIX)
            .string(os.urandom(32) if nonce is None else nonce)
            .raw(key_fields.rest())
            .uint64(serial).uint32(cert_type).string(key_id)
            .string(b"".join(encode_string(p) for p in names))
            .uint64(valid_after).uint64(valid_before)
            .string(_encode_options(critical_options, critical=True))
            .string(_encode_options(extensions, critical=False))
            .string(b"")  # reserved
            .string(ca.public_key.blob)
            .getvalue())
    signature = ca.sign(body, signature_algorithm)
    cert = parse_public_blob(body + encode_string(signature))
    if not isinstance(cert, Certificate):  # pragma: no cover - we wrote a cert type
        raise ValueError("internal error: issued blob is not a certificate")
    return cert
