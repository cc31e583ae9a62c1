"""What a join may claim: the principals and the dial address of a joining node or proxy.

Pure rules (no storage, no I/O) that :meth:`AuthService.join
<appliance.auth.service.AuthService.join>` applies; docs/security.md "Joining the
cluster" states them with their tests:

* J3 — **principals**. A host certificate names the host's own names, ``NAME`` and
  ``NAME.CLUSTER``, and besides them only addresses someone vouches for: the addresses the
  admin bound into the join token (``ctl tokens add --addr``), and the source address the
  auth server saw for the join when no other registered node or proxy holds it (two hosts
  behind one NAT, or a node on the proxy's host, would otherwise each be certified for the
  other's address). What the joiner merely asks for is never granted: a requested address
  outside that set is dropped, and the join result says which.
* J4 — **the dial address**. ``addr`` (``host:port``, where the proxy connects for users)
  must name one of the granted addresses, so the proxy only dials where the CA vouches the
  node is; a node behind NAT needs the admin to approve the address the proxy reaches it
  at (or, later, the reverse tunnel). Heartbeats never change it.
* Addresses under ``.CLUSTER`` are node names (:func:`appliance.names.under_cluster`): a
  token or ``ctl auth sign --host`` may not hand one out as an "address".

>>> grant_addresses(("10.0.0.5",), "192.0.2.7", held_by_others=set())
('10.0.0.5', '192.0.2.7')
>>> grant_addresses(("10.0.0.5",), "192.0.2.7", held_by_others={"192.0.2.7"})
('10.0.0.5',)
>>> dial_host("[2001:db8::1]:3022"), dial_host("db1.example.com:22"), dial_host("")
('2001:db8::1', 'db1.example.com', '')
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from typing import Any

from ssh_proto.keys import PublicKey

from ..addresses import canonical_ip, host_of
from ..storage.base import NodeRecord, TokenRecord
from ..timestamps import format_time
from . import rejoin
from .ca import CAError, parse_plain_public_key

__all__ = ["JoinRefused", "check_dial_addr", "check_name_free_or_proven", "check_token_for", "dial_host",
           "grant_addresses"]


class JoinRefused(Exception):
    """A join breaks a rule: ``code`` is an AuthService error code, ``message`` says the fix."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def grant_addresses(approved: Iterable[str], source_ip: str, *, held_by_others: Set[str]) -> tuple[str, ...]:
    """J3: the extra principals of a joining host — the token's approved addresses, then the
    source address when it is an IP no other registered host holds."""
    granted = list(dict.fromkeys(approved))
    source = canonical_ip(source_ip)
    if source and source not in held_by_others and source not in granted:
        granted.append(source)
    return tuple(granted)


def dial_host(addr: str) -> str:
    """The host part of a checked ``host:port`` / ``[v6]:port`` address ("" for "")."""
    return host_of(addr) if addr else ""


def check_token_for(record: TokenRecord, kind: str, name: str) -> None:
    """The token is for this kind, and for this name if it binds one."""
    if record.kind != kind:
        raise JoinRefused("access_denied", f"this token is for joining a {record.kind}")
    if record.node_name and record.node_name != name:
        hint = f" (start it with --nodename {record.node_name})" if kind == "node" else ""
        raise JoinRefused("access_denied", f"this token is for joining as {record.node_name!r}, "
                          f"not {name!r}{hint}")


def check_name_free_or_proven(existing: NodeRecord | None, kind: str, name: str, key: PublicKey,
                               proof: Any, session_id: Any) -> None:
    """J2: a registered name is taken unless the joiner signed the re-join proof with the
    host key the name is registered with."""
    if existing is None:
        return
    if existing.kind != kind:
        raise JoinRefused("already_exists", f"{name!r} is already a {existing.kind}")
    registered = _registered_key(existing)
    if registered is not None and isinstance(session_id, bytes) and rejoin.verify_proof(
            registered, proof, session_id, kind, name, key.blob):
        return
    seen = format_time(existing.last_seen)
    held = f"host key {registered.fingerprint()}, " if registered is not None else ""
    raise JoinRefused("already_exists", (
        f"the name {name!r} is taken by a registered {kind} ({held}last seen {seen}) and this host "
        f"does not hold its key. Join under another name (--nodename), or, if this host replaces "
        f"it, free the name first: jumpgate ctl nodes rm {name}"))


def _registered_key(node: NodeRecord) -> PublicKey | None:
    try:
        return parse_plain_public_key(node.host_key) if node.host_key else None
    except CAError:
        return None


def check_dial_addr(addr: str, granted: Sequence[str], client_ip: str) -> None:
    """J4: the proxy dials a joined host only at an address its certificate names."""
    host = dial_host(addr)
    if not host or host in granted:
        return
    seen = f" (the auth server sees this host at {client_ip})" if client_ip else ""
    raise JoinRefused("access_denied", (
        f"the address {addr} this host advertises for the proxy to dial is neither approved by "
        f"the token nor the address it joins from{seen}: if the proxy reaches it at {host}, join "
        f"with a token made by: jumpgate ctl tokens add --addr {host} ..."))
