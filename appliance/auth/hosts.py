"""Hosts: join tokens, joining, heartbeats, the node inventory and host certificates
(the second half of AuthService).

Rules enforced here:

* Join tokens: TTL default 30 min; single use, consumed by a successful join; only
  ``sha256`` of the secret is stored; a token may bind the name it joins as and the
  addresses an admin approved for its certificate.
* Joining (docs/security.md "Joining the cluster"): a taken name is refused unless the
  joiner proves the registered host key (:mod:`.rejoin`) or an admin removed the node
  first (J2); the certificate names ``NAME``, ``NAME.CLUSTER`` and only the addresses the
  token approved or the source address the auth server saw (J3, :mod:`.joining`); the
  proxy dials an address among those, set at the join and never by a heartbeat (J4).
* Host certificates: 30 days, renewed by the holder of the key it joined with; ``ctl auth
  sign --host`` certifies agentless OpenSSH nodes under a name no joined host holds.
* Node names are one lower-case DNS label (J1); the inventory record is
  :class:`appliance.inventory.NodeRecord`.
* Every token, join, certificate and inventory change is an audit event.
* Liveness (:mod:`appliance.inventory`): a joined node that missed 3 heartbeats is listed as
  ``offline`` (``mark_offline`` says so at once), and is back at its next heartbeat.
"""
from __future__ import annotations

import dataclasses
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ssh_proto.keys import Certificate, PublicKey

from .. import inventory, names
from ..addresses import parse_endpoint
from ..inventory import HEARTBEAT_INTERVAL, is_offline, labels_match
from ..storage.base import NodeRecord, Storage, TokenRecord
from . import joining
from .audit_log import AuditLog
from .ca import CAError, ClusterCA
from .checks import (AuthServiceError, bad_request, check_addr, check_address, check_labels, check_list,
                     check_node_name, check_ttl, lookup_name, new_secret, parse_key, secret_hash)
from .results import CertResult, CreatedToken, HeartbeatResult, JoinResult, TokenInfo, cert_result

__all__ = ["HOST_CERT_TTL", "HOST_CERT_TTL_MAX", "TOKEN_KINDS", "TOKEN_TTL", "TOKEN_TTL_MAX", "Hosts"]

log = logging.getLogger("jumpgate.auth")

HOST_CERT_TTL = 30 * 86400
HOST_CERT_TTL_MAX = 365 * 86400
HOST_CERT_TTL_MIN = 60  # as short as a user certificate may be
TOKEN_TTL = 30 * 60
TOKEN_TTL_MAX = 24 * 3600
TOKEN_KINDS = ("node", "proxy")
TOKEN_KEEP_SECONDS = 86400  # used/expired tokens stay listed (as such) this long
MAX_ADDRESSES = 16

_TOKEN_ID = re.compile(r"[0-9a-f]{1,64}")


class Hosts:
    """The hosts half of :class:`~appliance.auth.service.AuthService` (see the module rules)."""

    def __init__(self, storage: Storage, ca: ClusterCA, audit_log: AuditLog, *, clock: Callable[[], float],
                 heartbeat_interval: float = HEARTBEAT_INTERVAL):
        self.storage = storage
        self.ca = ca
        self.cluster = ca.cluster
        self.audit_log = audit_log
        self._clock = clock
        self.heartbeat_interval = heartbeat_interval
        # Nodes known to be gone before their heartbeats stop (mark_offline). Not stored: after
        # a restart of the auth service the missed heartbeats tell the same within 3 intervals.
        self._gone: set[str] = set()

    # -- join tokens -----------------------------------------------------------------
    async def create_token(self, kind: str, ttl_seconds: float | None = TOKEN_TTL, *,
                           name: str = "", addresses: Sequence[str] = (),
                           actor: str = "") -> CreatedToken:
        """A single-use join token ``<secret>.<host CA pin>`` for a node or a proxy.

        ``name`` binds the name it joins as (one DNS label, J1); ``addresses`` are the
        addresses the admin approves for its host certificate and dial address (J3, J4).
        A token for a registered name re-joins that host only (J2).
        """
        if kind not in TOKEN_KINDS:
            raise bad_request("the token type must be 'node' or 'proxy'")
        ttl = check_ttl(ttl_seconds, TOKEN_TTL, 60, TOKEN_TTL_MAX, "the token TTL")
        name = check_node_name(name) if name else ""
        approved = self._approved_addresses(addresses, "address")
        now = self._clock()
        await self.storage.purge_tokens(now - TOKEN_KEEP_SECONDS)
        secret, token_hash = new_secret()
        record = TokenRecord(secrets.token_hex(8), token_hash, kind, now, now + ttl,
                             node_name=name, addresses=approved)
        await self.storage.put_token(record)
        await self.audit_log.record("token.create", kind=kind, token_id=record.id, expires=record.expires,
                          node=name, addresses=approved, actor=actor)
        pin = self.ca.pin_for_host_ca().removeprefix("sha256:")
        return CreatedToken(record.id, kind, f"{secret}.{pin}", record.expires, name, approved)

    def _approved_addresses(self, values: Any, what: str) -> tuple[str, ...]:
        """Addresses an admin vouches for: IPs or DNS names, none under ``.CLUSTER`` (those
        are node names, given with the name only)."""
        approved = check_list(values, check_address, what, MAX_ADDRESSES)
        for address in approved:
            if names.under_cluster(address, self.cluster):
                raise bad_request(f"{address!r} is a name under the cluster's domain .{self.cluster}: "
                           "nodes get NAME and NAME.CLUSTER from their name, not as an address")
        return approved

    def _token_info(self, t: TokenRecord, now: float) -> TokenInfo:
        status = "used" if t.used is not None else "expired" if t.expires <= now else "active"
        return TokenInfo(t.id, t.kind, t.created, t.expires, status, t.used_by, t.node_name,
                         tuple(t.addresses))

    async def list_tokens(self) -> list[TokenInfo]:
        now = self._clock()
        await self.storage.purge_tokens(now - TOKEN_KEEP_SECONDS)
        return [self._token_info(t, now) for t in await self.storage.list_tokens()]

    async def delete_token(self, token_id: str, *, actor: str = "") -> str:
        """Remove a token named by its id (``ctl tokens ls``) or by the token itself, as
        ``ctl tokens add`` printed it. A token value is looked up by its secret's digest and
        never repeated in the error or the audit event (only its id is). Returns the id."""
        value = token_id if isinstance(token_id, str) else ""
        removed = ""
        if _TOKEN_ID.fullmatch(value) and await self.storage.delete_token(value):
            removed = value
        else:
            record = await self._token_by_value(value)
            if record is not None and await self.storage.delete_token(record.id):
                removed = record.id
        if not removed:
            shown = f" {value!r}" if _TOKEN_ID.fullmatch(value) else ""
            raise AuthServiceError("not_found", f"no token{shown} (give its ID from `ctl tokens ls` "
                                   "or the token as it was printed)")
        await self.audit_log.record("token.delete", token_id=removed, actor=actor)
        return removed

    async def _token_by_value(self, value: Any) -> TokenRecord | None:
        try:
            return await self.storage.get_token(secret_hash(value, "join token"))
        except AuthServiceError:
            return None

    async def validate_token(self, token: str, kind: str | None = None) -> TokenInfo:
        """Check a join token without using it (the API's ``-join`` password auth)."""
        record = await self._find_token(token)
        if kind is not None and record.kind != kind:
            raise AuthServiceError("access_denied", f"this token is for joining a {record.kind}")
        return self._token_info(record, self._clock())

    async def _find_token(self, token: Any) -> TokenRecord:
        record = await self.storage.get_token(secret_hash(token, "join token"))
        if record is None:
            raise AuthServiceError("not_found", "join token not found")
        if record.used is not None:
            raise AuthServiceError("already_used", "this join token was already used")
        if record.expires <= self._clock():
            raise AuthServiceError("expired", "this join token has expired")
        return record

    # -- joining and staying joined --------------------------------------------------
    async def join(self, token: str, kind: str, name: str, host_public_key_blob: Any,
                   addresses: Sequence[str] = (), labels: Mapping[str, str] | None = None,
                   addr: str = "", client_ip: str = "", proof: bytes = b"",
                   session_id: bytes = b"") -> JoinResult:
        """Use a join token: host certificate for the node/proxy, and register it.

        The API fills ``token``, ``client_ip`` and ``session_id`` from the connection.
        A taken name needs ``proof`` (:func:`.rejoin.sign_proof` with the registered key,
        J2); the certificate's principals are name, name.CLUSTER and the granted addresses
        (J3, requested ones outside them are listed in ``dropped``); ``addr`` must be at a
        granted address (J4). Nothing is consumed or changed by a refused join.
        """
        if kind not in TOKEN_KINDS:
            raise bad_request("the kind must be 'node' or 'proxy'")
        name = check_node_name(name)
        key = parse_key(host_public_key_blob)
        requested = check_list(addresses, check_address, "address", MAX_ADDRESSES)
        labels, addr = check_labels(labels), check_addr(addr, required=False)
        client_ip = str(client_ip)[:64]
        try:
            record = await self._find_token(token)
            existing, granted = await self._check_join(record, kind, name, key, addr, client_ip,
                                                       proof, session_id)
            if not await self.storage.consume_token(record.token_hash, self._clock(),
                                                    f"{kind}:{name}"):
                raise AuthServiceError("already_used", "this join token was already used")
        except AuthServiceError as exc:
            await self.audit_log.record("node.join", success=False, node=name, kind=kind,
                              reason=exc.code, detail=exc.message[:300], client_ip=client_ip)
            raise
        await self.audit_log.record("token.use", token_id=record.id, kind=kind, node=name)
        return await self._register_joined(kind, name, key, granted, labels, addr, existing,
                                           requested, client_ip)

    async def _check_join(self, record: TokenRecord, kind: str, name: str, key: PublicKey, addr: str,
                          client_ip: str, proof: Any, session_id: Any,
                          ) -> tuple[NodeRecord | None, tuple[str, ...]]:
        """J2..J4 (:mod:`.joining`): (the registered record if a proven re-join, granted addresses)."""
        try:
            joining.check_token_for(record, kind, name)
            existing = await self.storage.get_node(name)
            joining.check_name_free_or_proven(existing, kind, name, key, proof, session_id)
            held = {a for n in await self.storage.list_nodes() if n.name != name for a in n.addresses}
            granted = joining.grant_addresses(record.addresses, client_ip, held_by_others=held)
            joining.check_dial_addr(addr, granted, client_ip)
        except joining.JoinRefused as exc:
            raise AuthServiceError(exc.code, exc.message) from None
        return existing, granted

    async def _register_joined(self, kind: str, name: str, key: PublicKey, granted: tuple[str, ...],
                               labels: dict[str, str], addr: str, existing: NodeRecord | None,
                               requested: tuple[str, ...], client_ip: str) -> JoinResult:
        cert = self._sign_host(key, kind, name, granted, HOST_CERT_TTL)
        now = self._clock()
        await self.storage.put_node(NodeRecord(
            name, kind, addr, labels, now, False, granted, key.blob,
            existing.created if existing is not None else now))
        dropped = tuple(a for a in requested if a not in granted and a not in cert.principals)
        await self.audit_log.record("node.join", node=name, kind=kind, client_ip=client_ip, addr=addr,
                          rejoin=existing is not None, dropped=dropped)
        await self.audit_log.record("cert.create", kind="host", key_id=cert.key_id, serial=cert.serial,
                          principals=cert.principals, valid_before=cert.valid_before)
        return self._join_result(name, kind, cert, addr, dropped)

    def _join_result(self, name: str, kind: str, cert: Certificate, addr: str,
                     dropped: tuple[str, ...] = ()) -> JoinResult:
        return JoinResult(name, kind, cert.to_line(), float(cert.valid_before),
                          self.ca.user_ca_line(), self.ca.host_ca_known_hosts_line(), self.cluster,
                          addr, dropped)

    async def renew_host_cert(self, name: str, host_public_key_blob: Any) -> JoinResult:
        """A fresh host certificate for a joined node/proxy, for the key it joined with and
        the principals it was granted then (a node joined before J1..J4 keeps its own)."""
        name = lookup_name(name)
        key = parse_key(host_public_key_blob)
        node = await self.storage.get_node(name)
        if node is None or node.kind not in TOKEN_KINDS:
            raise AuthServiceError("not_found", f"no joined node {name!r}")
        if node.host_key is None or not hmac.compare_digest(node.host_key, key.blob):
            raise AuthServiceError("access_denied", "this is not the host key the node joined with")
        if not names.is_node_name(name):
            log.warning("renewing %s %r, registered before node names were one DNS label: clients "
                        "leave it out of ssh_config; re-join it under a one-label name", node.kind, name)
        cert = self._sign_host(key, node.kind, name, node.addresses, HOST_CERT_TTL)
        await self.audit_log.record("cert.create", kind="host", key_id=cert.key_id, serial=cert.serial,
                          principals=cert.principals, valid_before=cert.valid_before, renew=True)
        return self._join_result(name, node.kind, cert, node.addr)

    async def heartbeat(self, name: str, addr: str = "", labels: Mapping[str, str] | None = None,
                        tunnel: bool = False, tunnel_addr: str = "") -> HeartbeatResult:
        """A joined node/proxy is alive, with these labels (``tunnel``: reachable by tunnel).

        ``addr`` is what the node believes its address is; it is never stored (J4): the
        proxy keeps dialling the address registered at the join, returned here so that the
        node can say when the two differ (re-join to move it). ``tunnel_addr`` is a proxy's
        tunnel port (``HOST:3024``), stored and pushed: tunnelled nodes dial every proxy's
        (N6). Its host must be one the proxy's join registered (its address or a certified
        one), so a proxy can point nodes only at itself.
        """
        name = lookup_name(name)
        check_addr(addr, required=False)
        check_addr(tunnel_addr, required=False)
        labels = check_labels(labels)
        node = await self.storage.get_node(name)
        if node is not None and tunnel_addr:
            _check_tunnel_addr(node, tunnel_addr)
        if node is None or not await self.storage.heartbeat_node(name, labels, bool(tunnel),
                                                                  self._clock(), tunnel_addr):
            raise AuthServiceError("not_found", f"no node {name!r}: join again with a new token")
        self._gone.discard(node.name)
        return HeartbeatResult(node.addr)

    def mark_offline(self, name: str) -> None:
        """``name`` is gone now (its reverse tunnel dropped), not three heartbeats from now:
        listed as offline until its next heartbeat. For the tunnel server to call."""
        self._gone.add(lookup_name(name))

    async def mark_node_offline(self, name: str) -> None:
        """The API form of :meth:`mark_offline`, which only a proxy may call (its tunnel to
        ``name`` ended: docs/security.md N5). An unknown name is refused, nothing else changes."""
        node = await self.storage.get_node(lookup_name(name))
        if node is None or node.kind != "node":
            raise AuthServiceError("not_found", f"no node {name!r}")
        self.mark_offline(node.name)
        log.info("node %s is offline: its tunnel ended", node.name)

    def _liveness(self, node: NodeRecord, now: float) -> NodeRecord:
        offline = node.name in self._gone or is_offline(node, now, self.heartbeat_interval)
        return dataclasses.replace(node, offline=True) if offline else node

    # -- the inventory ---------------------------------------------------------------
    async def add_node(self, name: str, addr: str, labels: Mapping[str, str] | None = None, *,
                       actor: str = "") -> NodeRecord:
        """Register an agentless OpenSSH node reachable at ``addr``. A registered name is
        refused: adding again would silently replace its address and labels
        (:meth:`update_node` changes what it is told to)."""
        name = check_node_name(name)
        addr, labels = check_addr(addr, required=True), check_labels(labels)
        existing = await self.storage.get_node(name)
        if existing is not None:
            how = ("change it with `jumpgate ctl nodes update`" if existing.kind == "openssh"
                   else "remove it first to reuse the name")
            raise AuthServiceError("already_exists", f"{name!r} is already registered as a {existing.kind} "
                                   f"at {existing.shown_addr}: {how}")
        now = self._clock()
        node = NodeRecord(name, "openssh", addr, labels, now, False, (), None, now)
        await self.storage.put_node(node)
        await self.audit_log.record("node.add", node=name, addr=addr, actor=actor)
        return node

    async def update_node(self, name: str, addr: str | None = None, labels: Mapping[str, str] | None = None, *,
                          actor: str = "") -> NodeRecord:
        """Change an agentless OpenSSH node's address, its labels (replaced as a whole), or
        both; what is not given stays. A joined node's address comes from its join (J4) and
        its labels from its heartbeats, so it is not changed here."""
        node = await self.storage.get_node(lookup_name(name))
        if node is None:
            raise AuthServiceError("not_found", f"no node {name!r}")
        if node.kind != "openssh":
            raise bad_request(f"{node.name!r} is a joined {node.kind}: its address comes from its join "
                              "and its labels from its own configuration")
        if addr is None and labels is None:
            raise bad_request("nothing to change: give an address or labels")
        changed = dataclasses.replace(
            node, addr=check_addr(addr, required=True) if addr is not None else node.addr,
            labels=check_labels(labels) if labels is not None else node.labels)
        await self.storage.put_node(changed)
        await self.audit_log.record("node.update", node=node.name, addr=changed.addr,
                                    labels=inventory.format_labels(changed.labels), actor=actor)
        return changed

    async def get_node(self, name: str) -> NodeRecord:
        node = await self.storage.get_node(lookup_name(name))
        if node is None:
            raise AuthServiceError("not_found", f"no node {name!r}")
        return node

    async def list_nodes(self, labels: Mapping[str, str] | None = None,
                         include_proxies: bool = False) -> list[NodeRecord]:
        """Nodes (and proxies if asked) carrying every ``labels`` key=value."""
        wanted = check_labels(labels)
        now = self._clock()
        return [self._liveness(n, now) for n in await self.storage.list_nodes()
                if (include_proxies or n.kind != "proxy") and labels_match(n.labels, wanted)]

    async def remove_node(self, name: str, *, actor: str = "") -> None:
        if not await self.storage.delete_node(lookup_name(name)):
            raise AuthServiceError("not_found", f"no node {name!r}")
        await self.audit_log.record("node.remove", node=name, actor=actor)

    # -- host certificates -----------------------------------------------------------
    async def sign_host_cert(self, name: str, public_key_blob: Any,
                             principals: Sequence[str] = (), ttl: float | None = None, *,
                             actor: str = "") -> CertResult:
        """``ctl auth sign --host``: a ``node:<name>`` certificate for an agentless OpenSSH node.

        ``name`` is one DNS label (J1) not taken by a joined node or proxy (J2: a
        certificate for that name would let its holder pose as it); ``principals`` are
        addresses the admin vouches for (J3), besides name and name.CLUSTER.
        """
        name = check_node_name(name)
        extra = self._approved_addresses(principals, "principal")
        ttl = check_ttl(ttl, HOST_CERT_TTL, HOST_CERT_TTL_MIN, HOST_CERT_TTL_MAX,
                         "the certificate TTL")
        key = parse_key(public_key_blob)
        existing = await self.storage.get_node(name)
        if existing is not None and existing.kind in TOKEN_KINDS:
            raise AuthServiceError("already_exists", f"{name!r} is a joined {existing.kind}; its "
                                   "certificate comes from its join (remove it first to reuse the name)")
        cert = self._sign_host(key, "node", name, extra, ttl)
        await self.audit_log.record("cert.create", kind="host", key_id=cert.key_id, serial=cert.serial,
                          principals=cert.principals, valid_before=cert.valid_before, actor=actor)
        return cert_result(cert)

    async def sign_auth_cert(self, public_key_blob: Any, principals: Sequence[str]) -> CertResult:
        """The auth service's own ``auth:auth`` certificate (``start``; no API caller may ask:
        it is what nodes and clients verify the auth server by)."""
        extra = check_list(principals, check_address, "principal", MAX_ADDRESSES)
        cert = self._sign_host(parse_key(public_key_blob), "auth", "auth", extra, HOST_CERT_TTL)
        await self.audit_log.record("cert.create", kind="host", key_id=cert.key_id, serial=cert.serial,
                          principals=cert.principals, valid_before=cert.valid_before)
        return cert_result(cert)

    def _sign_host(self, key: PublicKey, kind: str, name: str, addresses: Sequence[str],
                   ttl: float) -> Certificate:
        principals = (name, names.qualified(name, self.cluster), *addresses)
        try:
            return self.ca.sign_host(key, kind, name, principals, ttl, self._clock())
        except CAError as exc:
            raise bad_request(f"cannot issue a host certificate for {name!r}: {exc}") from None


def _check_tunnel_addr(node: NodeRecord, tunnel_addr: str) -> None:
    """A proxy's tunnel address names a host of its own registration (N6)."""
    if node.kind != "proxy":
        raise bad_request("only a proxy has a tunnel address")
    host = parse_endpoint(tunnel_addr)[0]
    own = set(node.addresses) | ({node.endpoint[0]} if node.endpoint else set())
    if host not in own:
        raise bad_request(f"tunnel address {tunnel_addr[:64]!r} is not on a host this proxy joined with "
                          f"({', '.join(sorted(own)) or 'none'})")
