"""The argument checks both halves of the auth service share, and the one error they raise.

Every value a caller sends (over the API, from the web service or from ``jumpgate ctl``) is
checked here before a rule looks at it; a value that fails is :class:`AuthServiceError`
``bad_request`` with a message safe to show (no secrets, and no hint whether a user or a
node exists). Names follow docs/security.md: user names and logins match
``[a-z_][a-z0-9_.-]{0,31}`` (T22: they end up in paths and principals); node names are one
lower-case DNS label (J1); addresses are IP addresses or DNS names
(:mod:`appliance.addresses`, :mod:`appliance.names`).
"""
from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from typing import Any

from ssh_proto.errors import KeyFormatError
from ssh_proto.keys import PublicKey, parse_public_line

from .. import addresses, inventory, names
from .ca import CAError, parse_plain_public_key

__all__ = ["ERROR_CODES", "AuthServiceError", "bad_request", "check_addr", "check_address",
           "check_dns_name", "check_labels", "check_list", "check_node_name", "check_ttl", "check_user_name",
           "is_user_name", "lookup_name", "new_secret", "parse_key", "secret_hash"]

ERROR_CODES = frozenset({"access_denied", "not_found", "expired", "already_used",
                         "already_exists", "bad_request", "weak_password"})

_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{16,64}")


class AuthServiceError(Exception):
    """A refused request: ``code`` is stable (see :data:`ERROR_CODES`), ``message`` is
    one line for the user."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def bad_request(message: str) -> AuthServiceError:
    return AuthServiceError("bad_request", message)


def is_user_name(name: Any) -> bool:
    """``[a-z_][a-z0-9_.-]{0,31}``: a user name or a login (T22)."""
    return isinstance(name, str) and _USER_NAME.fullmatch(name) is not None


def check_user_name(name: Any, what: str = "user name") -> str:
    """``[a-z_][a-z0-9_.-]{0,31}`` (also for logins): safe in paths and principals (T22)."""
    if not is_user_name(name):
        raise bad_request(f"invalid {what} {str(name)[:40]!r}: use a-z, 0-9, '_', '.', '-' "
                   "(at most 32, starting with a letter or '_')")
    return name


def check_node_name(name: Any, what: str = "node name") -> str:
    """One lower-case DNS label, upper case folded (J1: a dotted name such as
    ``github.com`` would put that host under the cluster's host CA)."""
    try:
        return names.check_node_name(name, what)
    except names.InvalidName as exc:
        raise bad_request(str(exc)) from None


def check_dns_name(name: Any, what: str = "name") -> str:
    """A lower-case DNS name (addresses, the cluster name), upper case folded."""
    try:
        return names.check_dns_name(name, what)
    except names.InvalidName as exc:
        raise bad_request(str(exc)) from None


def lookup_name(name: Any) -> str:
    """A name to look a registered host up by: a DNS name, so that a node registered
    before J1 under a dotted name can still be found, renewed and removed."""
    return check_dns_name(name, "node name")


def check_list(values: Any, check: Callable[[Any, str], str], what: str, limit: int) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise bad_request(f"{what}s must be a list")
    if len(values) > limit:
        raise bad_request(f"at most {limit} {what}s")
    return tuple(dict.fromkeys(check(v, what) for v in values))


def check_address(value: Any, what: str = "address") -> str:
    """An IP address or a DNS name (used as a host certificate principal)."""
    return addresses.canonical_ip(value) or check_dns_name(value, what)


def check_addr(addr: Any, *, required: bool) -> str:
    """``host:port`` / ``[v6]:port`` where the proxy dials a node ("" if not required), in
    its stored form (:func:`appliance.addresses.canonical_endpoint`)."""
    if addr in ("", None) and not required:
        return ""
    try:
        return addresses.canonical_endpoint(addr)
    except addresses.AddressError as exc:
        raise bad_request(str(exc)) from None


def check_labels(labels: Any) -> dict[str, str]:
    """A node's labels or a label filter, by the inventory's rules (:mod:`appliance.inventory`)."""
    try:
        return inventory.check_labels(labels)
    except inventory.LabelError as exc:
        raise bad_request(str(exc)) from None


def check_ttl(ttl: Any, default: float, low: float, high: float, what: str) -> float:
    if ttl is None:
        return default
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl != ttl:
        raise bad_request(f"{what} must be a number of seconds")
    if ttl < low:
        raise bad_request(f"{what} must be at least {int(low)} seconds")
    if ttl > high:
        raise bad_request(f"{what} must be at most {int(high)} seconds ({high / 3600:g} h)")
    return float(ttl)


def parse_key(key: Any) -> PublicKey:
    """A public key to certify: an SSH blob (bytes) or a ``.pub`` line (str)."""
    try:
        if isinstance(key, str):
            parsed, _ = parse_public_line(key.strip())
            if not isinstance(parsed, PublicKey):
                raise bad_request("a certificate cannot be certified; send the plain public key")
            return parsed
        if isinstance(key, (bytes, bytearray, memoryview)):
            return parse_plain_public_key(bytes(key))
    except (CAError, KeyFormatError) as exc:
        raise bad_request(f"invalid public key: {exc}") from None
    raise bad_request("the public key must be an SSH key blob or a .pub line")


def secret_hash(token: Any, what: str) -> str:
    """sha256 hex of the secret part of ``<secret>[.<pin>]`` (not_found if malformed)."""
    secret = token.split(".", 1)[0] if isinstance(token, str) else ""
    if not _SECRET.fullmatch(secret):
        raise AuthServiceError("not_found", f"{what} not found")
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def new_secret() -> tuple[str, str]:
    """16 random bytes, base64url (22 characters), and the sha256 hex we store.

    Never starting with "-": the secret is pasted as a command-line argument
    (`signup ... TOKEN`, `start --token TOKEN`), where argparse would take it for an option.
    """
    secret = secrets.token_urlsafe(16)
    while secret.startswith("-"):
        secret = secrets.token_urlsafe(16)
    return secret, hashlib.sha256(secret.encode("ascii")).hexdigest()
