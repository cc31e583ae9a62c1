"""Audit events: their names, their codes, and the one record type every role emits.

Every security-relevant action of the cluster (a login, a failed login, a lockout, a
certificate issued, a node joining, a session starting or ending, ...) becomes one
:class:`AuditEvent`, stored by the auth role (``storage.append_audit``) and listed with
``jumpgate ctl audit``. The names and codes follow Teleport's audit log
(docs reference/audit-events) so that an operator who knows one knows the other.

Code scheme: ``"T" + AREA + NUMBER + SEVERITY``

* AREA/NUMBER — ``1xxx`` users and logins, ``2xxx`` sessions, ``30xx`` SSH activity
  inside a session (exec, port and agent forwarding, SSH auth at a node/proxy),
  ``32xx`` the node inventory, ``Cxxx`` certificates, ``CAxx`` certificate
  authorities, ``Jxxx`` join tokens.
* SEVERITY — ``I`` the action happened; ``W`` it was refused (bad credentials,
  policy, expired or reused token: someone should look if these pile up);
  ``E`` it was attempted and failed for another reason (e.g. a command that could
  not be started).

======================  ========  ========  =========================================
event                   success   refused   emitted by
======================  ========  ========  =========================================
user.login              T1000I    T1000W    auth (login with password + TOTP)
user.locked             T1001W              auth (5 failures in a row: 30 min lock)
user.create             T1002I              auth
user.reset              T1003I              auth (password + TOTP cleared, new invite)
user.delete             T1004I              auth
user.signup             T1005I    T1005W    auth (invite completed)
session.start           T2000I    T2000W    node / proxy
session.end             T2004I              node / proxy
exec                    T3002I    T3002E    node (a command; E = could not run)
port                    T3003I    T3003W    node / proxy (port forwarding)
sftp                    T3004I    T3004W    node
auth                    T3007I    T3007W    node / proxy (SSH user auth outcome)
agent.forward           T3013I    T3013W    node
node.join               T3200I    T3200W    auth (join token -> host certificate)
node.add                T3201I              auth (agentless OpenSSH node)
node.remove             T3202I              auth
cert.create             TC000I    TC000W    auth (user or host certificate)
ca.create               TCA01I              auth (first start)
token.create            TJ000I              auth
token.use               TJ001I              auth (a single-use token consumed)
token.delete            TJ002I              auth
======================  ========  ========  =========================================

Events emitted by nodes and proxies arrive over the auth API; only the names in
:data:`REMOTE_EVENTS` are accepted from them (a node cannot forge a login), and
:meth:`AuditEvent.from_wire` bounds every field so a peer cannot grow the log
without limit. Secrets (passwords, OTP codes or seeds, token secrets, private keys)
never go into an event.
"""
from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EVENT_CODES",
    "REMOTE_EVENTS",
    "AuditEvent",
    "AuditEventError",
    "code_for",
    "make_event",
]

#: event name -> (code on success, code when refused/failed or None)
EVENT_CODES: Mapping[str, tuple[str, str | None]] = types.MappingProxyType({
    "user.login": ("T1000I", "T1000W"),
    "user.locked": ("T1001W", None),
    "user.create": ("T1002I", None),
    "user.reset": ("T1003I", None),
    "user.delete": ("T1004I", None),
    "user.signup": ("T1005I", "T1005W"),
    "session.start": ("T2000I", "T2000W"),
    "session.end": ("T2004I", None),
    "exec": ("T3002I", "T3002E"),
    "port": ("T3003I", "T3003W"),
    "sftp": ("T3004I", "T3004W"),
    "auth": ("T3007I", "T3007W"),
    "agent.forward": ("T3013I", "T3013W"),
    "node.join": ("T3200I", "T3200W"),
    "node.add": ("T3201I", None),
    "node.remove": ("T3202I", None),
    "cert.create": ("TC000I", "TC000W"),
    "ca.create": ("TCA01I", None),
    "token.create": ("TJ000I", None),
    "token.use": ("TJ001I", None),
    "token.delete": ("TJ002I", None),
})

#: The events a node or proxy may report through ``AuthService.emit_audit``.
REMOTE_EVENTS = frozenset({"session.start", "session.end", "exec", "port", "sftp", "auth",
                           "agent.forward"})

# Bounds on an event received from a peer (and on our own, as a safety net).
MAX_FIELDS = 32
MAX_KEY_LEN = 64
MAX_STR_LEN = 4096
MAX_LIST_LEN = 64

_Scalar = str | int | float | bool | None


class AuditEventError(ValueError):
    """An event is malformed or names an unknown event (the message says which)."""


def code_for(event: str, success: bool = True) -> str:
    """The code of ``event``; a refusal of an event that has no refusal code is an error."""
    try:
        ok, refused = EVENT_CODES[event]
    except KeyError:
        raise AuditEventError(f"unknown audit event {event[:64]!r}") from None
    code = ok if success else refused
    if code is None:
        raise AuditEventError(f"audit event {event!r} has no failure code")
    return code


def _check_scalar(key: str, value: Any) -> _Scalar:
    if value is None or isinstance(value, (bool, int)):
        if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64:
            raise AuditEventError(f"audit field {key!r}: integer out of range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditEventError(f"audit field {key!r}: not a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STR_LEN:
            raise AuditEventError(f"audit field {key!r}: longer than {MAX_STR_LEN} characters")
        return value
    raise AuditEventError(f"audit field {key!r}: unsupported type {type(value).__name__}")


def _check_value(key: str, value: Any) -> _Scalar | tuple[_Scalar, ...]:
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_LIST_LEN:
            raise AuditEventError(f"audit field {key!r}: more than {MAX_LIST_LEN} items")
        return tuple(_check_scalar(key, item) for item in value)
    return _check_scalar(key, value)


def _check_fields(fields: Any) -> dict[str, Any]:
    """Bounded, msgpack-safe copy: str keys; scalars or short lists of scalars."""
    if not isinstance(fields, Mapping):
        raise AuditEventError("audit fields must be a map")
    if len(fields) > MAX_FIELDS:
        raise AuditEventError(f"more than {MAX_FIELDS} audit fields")
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LEN:
            raise AuditEventError("audit field names must be 1..64 character strings")
        out[key] = _check_value(key, value)
    return out


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit record. ``id`` is 0 until storage assigns it (increasing order).

    ``user`` is the Jumpgate user concerned (or the name tried, for a failed login);
    ``fields`` holds the rest (``client_ip``, ``login``, ``node``, ``reason``,
    ``serial``, ...): scalars or short lists, never secrets.
    """

    event: str
    code: str
    time: float
    user: str = ""
    success: bool = True
    fields: Mapping[str, Any] = field(default_factory=dict)
    id: int = 0

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-serialisable map (lists instead of tuples)."""
        return {
            "id": self.id, "event": self.event, "code": self.code, "time": self.time,
            "user": self.user, "success": self.success,
            "fields": {k: list(v) if isinstance(v, tuple) else v for k, v in self.fields.items()},
        }

    @classmethod
    def from_wire(cls, data: Any, *, time: float, allowed: frozenset[str] = REMOTE_EVENTS,
                  extra: Mapping[str, Any] | None = None) -> AuditEvent:
        """Validate an event map sent by a peer: ``{"event", "user"?, "success"?, "fields"?}``.

        The code and the time are ours (``time`` is the receiving clock), never the
        peer's; ``extra`` fields (e.g. ``{"emitter": "node:web1"}``) override the peer's.
        """
        if not isinstance(data, Mapping):
            raise AuditEventError("an audit event must be a map")
        name = data.get("event")
        if not isinstance(name, str) or name not in allowed:
            raise AuditEventError(f"audit event {str(name)[:64]!r} may not be emitted here")
        user = data.get("user", "")
        success = data.get("success", True)
        if not isinstance(user, str) or len(user) > MAX_KEY_LEN * 4:
            raise AuditEventError("audit user must be a short string")
        if not isinstance(success, bool):
            raise AuditEventError("audit success must be a boolean")
        fields = _check_fields(data.get("fields", {}))
        fields.update(_check_fields(extra or {}))
        return cls(name, code_for(name, success), float(time), user, success, fields)


def make_event(event: str, *, time: float, user: str = "", success: bool = True,
               **fields: Any) -> AuditEvent:
    """Build one of our own events, e.g. ``make_event("user.login", time=now, user="alice",
    client_ip="10.0.0.5")``. Unknown names and unbounded fields raise AuditEventError."""
    return AuditEvent(event, code_for(event, success), float(time), user[:MAX_STR_LEN], success,
                      _check_fields(fields))
