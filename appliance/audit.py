"""Audit events: their names, their codes, and the one record type every service emits.

Every security-relevant action of the cluster (a login, a failed login, a lockout, a
certificate issued, a node joining, a session starting or ending, ...) becomes one
:class:`AuditEvent`, stored by the auth service (``storage.append_audit``) and listed with
``jumpgate ctl audit``. The names and codes follow Teleport's audit log
(docs reference/audit-events) so that an operator who knows one knows the other.

Code scheme: ``"T" + AREA + NUMBER + SEVERITY``

* AREA/NUMBER — ``1xxx`` users and logins, ``2xxx`` sessions, ``30xx`` SSH activity
  inside a session (exec, port and agent forwarding, SSH auth at a node/proxy),
  ``32xx`` the node inventory, ``Cxxx`` certificates, ``CAxx`` certificate
  authorities, ``Jxxx`` join tokens, ``Axxx`` the audit log itself.
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
bot.create              T1006I              auth (an automation identity)
bot.delete              T1007I              auth
bot.join                T1008I    T1008W    auth (a bot token exchanged for a certificate)
user.unlock             T1009I              auth (an admin lifted a lockout; password + TOTP kept)
session.start           T2000I    T2000W    node / proxy
session.join            T2001I    T2001W    node (jumpgate join: a party attached, or refused)
session.leave           T2003I              node (a party that joined left)
session.end             T2004I              node / proxy
exec                    T3002I    T3002E    node (a command; E = could not run)
port                    T3003I    T3003W    node / proxy (port forwarding)
sftp                    T3004I    T3004W    node
auth                    T3007I    T3007W    node / proxy (SSH user auth outcome)
agent.forward           T3013I    T3013W    node
node.join               T3200I    T3200W    auth (join token -> host certificate)
node.add                T3201I              auth (agentless OpenSSH node)
node.remove             T3202I              auth
node.update             T3203I              auth (an agentless node's address or labels)
tunnel.connect          T3204I    T3204W    proxy (a node's reverse tunnel registered or refused)
cert.create             TC000I    TC000W    auth (user or host certificate)
ca.create               TCA01I              auth (first start)
token.create            TJ000I              auth
token.use               TJ001I              auth (a single-use token consumed)
token.delete            TJ002I              auth
audit.coalesced         TA000W              auth (N more refusals from one source, U2)
audit.prune             TA001I              auth (retention removed old events, U4)
======================  ========  ========  =========================================

Events emitted by nodes and proxies arrive over the auth API; only the names in
:data:`REMOTE_EVENTS` are accepted from them (a node cannot forge a login).

Bounds (docs/security.md U1). Every event, a peer's or our own, is bounded by cutting, never
by refusing: a value over its bound is cut to it (the last character an ellipsis) and named
in the event's ``truncated`` field, because refusing an oversized event would leave the
attempt that produced it unaudited. Non-printable characters are escaped, so a value cannot
forge a log line or drive a terminal. In a refused authentication (:data:`CLAIM_EVENTS`),
the user, login, key id and node name are what the client said, chosen by whoever
connected: they get the shorter bound :data:`MAX_CLAIM_LEN` and are named in the event's
``claimed`` field. Secrets (passwords, OTP codes or seeds, token secrets, private keys)
never go into an event.
"""
from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLAIM_EVENTS",
    "DEFAULT_REFUSALS_PER_SOURCE",
    "DEFAULT_RETENTION_DAYS",
    "CLAIM_FIELDS",
    "EVENT_CODES",
    "REMOTE_EVENTS",
    "AuditEvent",
    "AuditEventError",
    "code_for",
    "make_event",
    "printable",
]

#: event name -> (code on success, code when refused/failed or None)
EVENT_CODES: Mapping[str, tuple[str, str | None]] = types.MappingProxyType({
    "user.login": ("T1000I", "T1000W"),
    "user.locked": ("T1001W", None),
    "user.create": ("T1002I", None),
    "user.reset": ("T1003I", None),
    "user.delete": ("T1004I", None),
    "user.signup": ("T1005I", "T1005W"),
    "bot.create": ("T1006I", None),
    "bot.delete": ("T1007I", None),
    "bot.join": ("T1008I", "T1008W"),
    "user.unlock": ("T1009I", None),
    "session.start": ("T2000I", "T2000W"),
    "session.join": ("T2001I", "T2001W"),
    "session.leave": ("T2003I", None),
    "session.end": ("T2004I", None),
    "exec": ("T3002I", "T3002E"),
    "port": ("T3003I", "T3003W"),
    "sftp": ("T3004I", "T3004W"),
    "auth": ("T3007I", "T3007W"),
    "agent.forward": ("T3013I", "T3013W"),
    "node.join": ("T3200I", "T3200W"),
    "node.add": ("T3201I", None),
    "node.remove": ("T3202I", None),
    "node.update": ("T3203I", None),
    "tunnel.connect": ("T3204I", "T3204W"),
    "cert.create": ("TC000I", "TC000W"),
    "ca.create": ("TCA01I", None),
    "token.create": ("TJ000I", None),
    "token.use": ("TJ001I", None),
    "token.delete": ("TJ002I", None),
    "audit.coalesced": ("TA000W", None),
    "audit.prune": ("TA001I", None),
})

#: How long events are kept by default (``jumpgate start --audit-retention-days``, TOML
#: ``[audit] retention_days``; 0 keeps them for ever): PCI DSS v4.0 10.5.1 asks for 12 months.
DEFAULT_RETENTION_DAYS = 365
#: Refusals from one source written in full per minute (TOML ``[audit] refusals_per_source``);
#: the rest are counted in one ``audit.coalesced`` event (docs/security.md U2).
DEFAULT_REFUSALS_PER_SOURCE = 10

#: The events a node or proxy may report through ``AuthService.emit_audit``.
REMOTE_EVENTS = frozenset({"session.start", "session.join", "session.leave", "session.end", "exec", "port", "sftp", "auth",
                           "agent.forward", "tunnel.connect"})

# Bounds on every event (a peer's and our own). A value over its bound is cut, never refused:
# refusing an oversized event would leave the attempt that produced it unaudited.
MAX_FIELDS = 32
MAX_KEY_LEN = 64
MAX_STR_LEN = 4096
MAX_LIST_LEN = 64
MAX_USER_LEN = 256
#: What a refused authentication says about who is trying (a user name, a login, a key id, a
#: node name) is only a claim: no authentication backs it, and the client chose the text.
CLAIM_EVENTS = frozenset({"auth", "user.login", "node.join", "tunnel.connect"})
CLAIM_FIELDS = ("user", "login", "key_id", "node")
#: A summary of coalesced refusals lists a sample of the names they claimed.
_SUMMARY_CLAIMS = frozenset({"users"})
MAX_CLAIM_LEN = 256
#: The last character of a value that was cut.
ELLIPSIS = "\u2026"

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


def printable(text: str, limit: int = MAX_STR_LEN) -> tuple[str, bool]:
    """``text`` with its non-printable characters escaped (``\\n``, ``\\x1b``, ``\\u200b``) and
    cut to ``limit`` characters, the last one :data:`ELLIPSIS`; and whether it was cut.

    Escaping keeps a log line one line and keeps a claimed key id from driving the terminal
    of an admin reading ``jumpgate ctl events``. Only the first ``limit`` characters are
    looked at, so a megabyte of key id costs no more than 256 characters of it.

    >>> printable("evil\\x1b[2J", 64), printable("x" * 10, 4)
    (('evil\\\\x1b[2J', False), ('xxx\u2026', True))
    """
    head = text[:limit]
    if not head.isprintable():
        head = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in head)
    if len(head) > limit or len(text) > limit:
        return head[:limit - 1] + ELLIPSIS, True
    return head, False


def _check_scalar(key: str, value: Any, limit: int) -> tuple[_Scalar, bool]:
    if value is None or isinstance(value, (bool, int)):
        if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64:
            raise AuditEventError(f"audit field {key!r}: integer out of range")
        return value, False
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditEventError(f"audit field {key!r}: not a finite number")
        return value, False
    if isinstance(value, str):
        return printable(value, limit)
    raise AuditEventError(f"audit field {key!r}: unsupported type {type(value).__name__}")


def _check_value(key: str, value: Any, limit: int) -> tuple[_Scalar | tuple[_Scalar, ...], bool]:
    """A scalar or a list of scalars, and whether something was cut to fit."""
    if isinstance(value, (list, tuple)):
        items = [_check_scalar(key, item, limit) for item in value[:MAX_LIST_LEN]]
        cut = len(value) > MAX_LIST_LEN or any(c for _, c in items)
        return tuple(v for v, _ in items), cut
    return _check_scalar(key, value, limit)


def _check_fields(fields: Any, claims: frozenset[str] = frozenset()) -> tuple[dict[str, Any], list[str]]:
    """Bounded, msgpack-safe copy (str keys; scalars or short lists of scalars) and the names of
    the fields that were cut. Claims get the shorter bound :data:`MAX_CLAIM_LEN`."""
    if not isinstance(fields, Mapping):
        raise AuditEventError("audit fields must be a map")
    if len(fields) > MAX_FIELDS:
        raise AuditEventError(f"more than {MAX_FIELDS} audit fields")
    out: dict[str, Any] = {}
    cut: list[str] = []
    for key, value in fields.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LEN:
            raise AuditEventError("audit field names must be 1..64 character strings")
        limit = MAX_CLAIM_LEN if key in claims else MAX_STR_LEN
        out[key], was_cut = _check_value(key, value, limit)
        if was_cut:
            cut.append(key)
    return out, cut


def _claims(event: str, success: bool) -> frozenset[str]:
    """The fields of this event that hold claims (see :data:`CLAIM_EVENTS`)."""
    if event == "audit.coalesced":
        return _SUMMARY_CLAIMS
    return frozenset(CLAIM_FIELDS) if not success and event in CLAIM_EVENTS else frozenset()


def _bounded(event: str, success: bool, user: Any, fields: Mapping[str, Any],
             extra: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The user and the fields of an event, bounded (``extra`` overrides ``fields``).

    Two fields are ours to add, never a sender's: ``claimed`` names the fields (``user``
    included) that hold claims, ``truncated`` the ones that were cut to fit.
    """
    if not isinstance(user, str):
        raise AuditEventError("audit user must be a string")
    claims = _claims(event, success)
    out, cut = _check_fields(fields, claims)
    if extra:
        more, more_cut = _check_fields(extra)
        out.update(more)
        cut += more_cut
    for ours in ("claimed", "truncated"):
        out.pop(ours, None)
    user, user_cut = printable(user, MAX_CLAIM_LEN if "user" in claims else MAX_USER_LEN)
    values = {**out, "user": user}
    claimed = tuple(k for k in (*CLAIM_FIELDS, *_SUMMARY_CLAIMS)
                    if k in claims and values.get(k) not in (None, "", ()))
    truncated = ("user",) * user_cut + tuple(k for k in cut if k not in ("claimed", "truncated"))
    if claimed:
        out["claimed"] = claimed
    if truncated:
        out["truncated"] = truncated
    return user, out


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
        success = data.get("success", True)
        if not isinstance(success, bool):
            raise AuditEventError("audit success must be a boolean")
        code = code_for(name, success)
        user, fields = _bounded(name, success, data.get("user", ""), data.get("fields", {}), extra)
        return cls(name, code, float(time), user, success, fields)


def make_event(event: str, *, time: float, user: str = "", success: bool = True,
               **fields: Any) -> AuditEvent:
    """Build one of our own events, e.g. ``make_event("user.login", time=now, user="alice",
    client_ip="10.0.0.5")``. Unknown names raise AuditEventError; long values are cut."""
    code = code_for(event, success)
    user, bounded = _bounded(event, success, user, fields)
    return AuditEvent(event, code, float(time), user, success, bounded)
