"""The proxy service's SSH server (port 3023): the one door through which users reach nodes.

This module owns the proxy's policy on top of ssh_proto's server (RFC 4252 user auth,
RFC 4254 connection protocol). The proxy runs no sessions; it authenticates users and
relays ``direct-tcpip`` channels (RFC 4254 §7.2) to *registered* nodes only:

* **Authentication**: only an OpenSSH user certificate signed by one of the cluster's user
  CAs, validated with :func:`ssh_proto.certs.validate_user_certificate` (docs/security.md
  C5-C14, source-address against the peer). The SSH username at the proxy may be
  one of the certificate's principals (its logins: ``ssh -J root@proxy``) *or* the cluster
  user named by its key id ``user:<name>`` (``ssh -J alice@proxy``, what ``jumpgate ssh``
  sends). Which OS account is used on the node is decided later, by the node, from the
  username of the inner connection; the proxy only needs to know who is knocking.
  Plain keys, passwords and keyboard-interactive are refused and only ``publickey`` is
  offered; a refused certificate gets a banner saying why (:mod:`appliance.login_hints`).
* **Forwarding**: ``direct-tcpip`` to a node name, ``name.CLUSTER`` or a registered node
  address (rules in :mod:`appliance.proxy.routing`, which names the node by cluster and
  name); the node is reached through the ``dial(key, node)`` seam of
  :mod:`appliance.proxy.dialing` — its registered address, or its tunnel — never an address
  the client chose (the steps are :class:`~appliance.proxy.gate.NodeGate`'s, which the web terminal shares). A refusal is a
  :class:`ssh_proto.ChannelOpenError`, whose RFC 4254 §5.1 reason and words reach the client
  as they are: an unknown target is ADMINISTRATIVELY_PROHIBITED ("unknown node ..."), a
  node that cannot be reached (or a directory that cannot be asked) CONNECT_FAILED. A
  certificate without ``permit-port-forwarding``
  may still jump: reaching a node through the proxy is not port forwarding for the user,
  and the node enforces the certificate's permissions on what happens there.
  To a Jumpgate node (kind ``node``, not an agentless OpenSSH one) the proxy first sends its
  signed line naming the client's address (:mod:`appliance.relay`), so the node sees
  whom it serves; its relay address is the dialer's (the proxy's end as the node sees it).
  ``tcpip-forward`` (``ssh -R`` at the proxy) and agent forwarding are refused.
* **Sessions**: no shell or exec (a one-line hint is sent on stderr, exit status 1); the
  ``jumpgate-nodes`` subsystem answers one node-list request (``jumpgate ls``), read-only,
  for any authenticated user.
* **Revocation**: with a :class:`~appliance.cluster_view.ClusterView` (the auth server's push
  stream), a certificate of a deleted or reset user is refused, and live connections of a
  revoked user — and streams to a node that was removed — are cut within seconds
  (docs/security.md R2, R4).
* **Audit**: ``auth`` (accepted or refused) and ``port`` (each forward, or its refusal)
  events, as maps ``{"event", "user", "success", "fields"}`` — the shape
  :meth:`appliance.audit.AuditEvent.from_wire` accepts — go to the ``audit`` coroutine.
* **Limits** (:mod:`appliance.limits`, docs/security.md § Limits): the listener admits by
  ``PROXY_PROFILE`` (per-source startups, rate and penalties; at most 64 connections per
  cluster user, whatever login they name, and 2,048 in all); a connection has at most 64
  channels, opened or not, within a 16 MiB receive-window budget.

The host key and certificate are read from an identity provider at every connection, so
a renewed host certificate is served without restarting the listener.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from typing import Any

import trio

import ssh_proto
from ssh_proto.certs import CertPermissions, validate_user_certificate
from ssh_proto.errors import CertificateError
from ssh_proto.keys import Certificate, PrivateKey, PublicKey

from ..addresses import PROXY_PORT
from ..api.protocol import E_INTERNAL, ApiProtocolError, FrameDecoder, parse_request
from .. import login_hints
from ..auth.ca import generation_of, holder_of
from ..cluster_view import ClusterView
from ..limits import PROXY_OPTIONS, PROXY_PROFILE
from . import routing
from .dialing import Dialer, ProxyDialer
from .gate import Caller, NodeGate, NodeRefused

__all__ = ["PROXY_PORT", "ProxyIdentity", "ProxyServer", "proxy_server_factory", "serve_proxy"]

log = logging.getLogger("jumpgate.proxy")

LIST_REQUEST_TIMEOUT = 30.0     # a jumpgate-nodes client must send its request within this
MAX_LIST_REQUEST = 64 * 1024
NO_SHELL_HINT = (b"jumpgate proxy: there is no shell here. Reach a node with `jumpgate ssh [login@]NODE`, "
                 b"or with OpenSSH: `ssh -J USER@PROXY:3023 LOGIN@NODE` (see `jumpgate config`).\r\n")

#: What an authenticated proxy connection may do: jump (direct-tcpip), nothing else.
#: A pty is allowed only so that an interactive `ssh proxy` shows the hint cleanly.
PROXY_POLICY = ssh_proto.SessionPolicy(permit_pty=True, permit_agent_forwarding=False,
                                       permit_port_forwarding=True, permit_x11_forwarding=False)

Resolve = Callable[[str, int], Awaitable["routing.Route | None"]]
ListNodes = Callable[[Mapping[str, str]], Awaitable[Sequence[Mapping[str, Any]]]]
AuditSink = Callable[[dict], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ProxyIdentity:
    """The proxy's host key and its host certificate (key id ``proxy:<name>``)."""

    host_key: PrivateKey
    host_cert: Certificate | None


@dataclass(frozen=True, slots=True)
class _ProxyConfig:
    user_cas: tuple[PublicKey, ...]
    cluster: str
    resolve: Resolve
    list_nodes: ListNodes
    audit: AuditSink | None
    identity: Callable[[], ProxyIdentity] | None = None  # signs relay lines to nodes
    view: ClusterView | None = None                       # revocation (the push stream)
    dialer: Dialer = dataclasses.field(default_factory=ProxyDialer)  # how a node is reached

    @property
    def gate(self) -> NodeGate:
        """The door to nodes (:mod:`appliance.proxy.gate`), shared with the web terminal."""
        return NodeGate(self.resolve, self.dialer, cluster=self.cluster, identity=self.identity, view=self.view,
                        audit=self.audit)


def _user_of(cert: Certificate) -> str | None:
    """The cluster user of a certificate whose key id is ``user:<name>`` (a bot's: ``bot:<name>``)."""
    identity, name = holder_of(cert.key_id)
    return name if identity else None


class ProxyServer(ssh_proto.SSHServer):
    """One client connection to the proxy (made by :func:`proxy_server_factory`)."""

    def __init__(self, config: _ProxyConfig):
        self.config = config
        self.user: str | None = None      # the cluster user, once authenticated
        self.login: str = ""              # the SSH username given at the proxy
        self.peer_address: tuple | None = None  # (ip, port) of the client
        self._refused: set[tuple[str, bytes]] = set()
        self._hints: set[str] = set()     # banners sent on this connection
        self._generation = 0
        self._unregister: Callable[[], None] | None = None
        self._gate = config.gate

    def connection_made(self, conn: ssh_proto.SSHServerConnection) -> None:
        super().connection_made(conn)
        peer = conn.peer_address
        self.peer_address = (str(peer[0]), int(peer[1])) if peer else None

    @property
    def peer_ip(self) -> str | None:
        return self.peer_address[0] if self.peer_address else None

    # ---- authentication ------------------------------------------------------------------
    async def auth_publickey_acceptable(self, username: str, key) -> bool:
        return await self._check_key(username, key) is not None

    async def auth_publickey(self, username: str, key):
        perms = await self._check_key(username, key)
        if perms is None:
            return False
        self.user, self.login = _user_of(key) or username, username
        log.info("proxy: accepted certificate ID %r serial %d as %s from %s", perms.key_id, perms.serial,
                 username, self.peer_ip)
        view = self.config.view
        if view is not None:
            self._generation = generation_of(key)
            self._unregister = view.live.add(self._close_later(self.conn), user=self.user,
                                             generation=self._generation)
        await self._emit("auth", True, key_id=perms.key_id, serial=str(perms.serial),
                         identity=holder_of(perms.key_id)[0] or "user")
        return ssh_proto.Accept(PROXY_POLICY, account=self.user)  # per-user limit: the cluster user

    def _close_later(self, conn: ssh_proto.SSHServerConnection) -> Callable[[str], None]:
        def close(reason: str) -> None:
            log.info("proxy: ending the connection of %s: %s", self.user, reason)
            try:
                conn.nursery.start_soon(conn.aclose, ssh_proto.DisconnectReason.BY_APPLICATION, reason)
            except RuntimeError:
                pass  # already going
        return close

    def connection_lost(self, error: BaseException | None) -> None:
        if self._unregister is not None:
            self._unregister()
            self._unregister = None

    async def _check_key(self, username: str, key) -> CertPermissions | None:
        """The certificate's permissions when ``key`` admits ``username`` here, else None."""
        if not isinstance(key, Certificate):
            self._hint(login_hints.PLAIN_KEY, unless_hinted=True)
            return await self._refuse(username, key, "a user certificate is required at the proxy")
        # Validate against the username when it is a login, else against any listed
        # login: the certificate's own rules (CA, validity, type, source) must hold anyway.
        principal = username if username in key.principals else (key.principals[0] if key.principals else username)
        try:
            perms = validate_user_certificate(key, principal=principal, trusted_cas=self.config.user_cas,
                                              source_address=self.peer_ip)
        except CertificateError as exc:
            self._hint(login_hints.certificate_hint(key, trusted_cas=self.config.user_cas))
            return await self._refuse(username, key, str(exc))
        if username not in key.principals and username != _user_of(key):
            self._hint(login_hints.proxy_name_hint(username, key))
            return await self._refuse(username, key, f"{username!r} is neither a login of the certificate "
                                                     "nor its user")
        user = _user_of(key)
        if self.config.view is not None and user is not None and self.config.view.revoked(user, generation_of(key)):
            self._hint(login_hints.REVOKED)
            return await self._refuse(username, key, f"the certificate was revoked ({user} was deleted or reset)")
        return perms

    def _hint(self, text: str | None, *, unless_hinted: bool = False) -> None:
        """Tell the user why, in a banner (appliance.login_hints; once per text and connection)."""
        conn = getattr(self, "conn", None)
        if text is None or text in self._hints or (unless_hinted and self._hints) or conn is None:
            return
        self._hints.add(text)
        if not conn.closed.is_set():
            conn.send_banner(text + "\r\n")

    async def _refuse(self, username: str, key, reason: str) -> None:
        log.info("proxy: refused %s as %s from %s: %s", getattr(key, "key_id", "key"), username, self.peer_ip,
                 reason)
        seen = (username, getattr(key, "blob", b""))
        if seen not in self._refused:  # a client asks about the same key twice (query, then signature)
            self._refused.add(seen)
            user = _user_of(key) if isinstance(key, Certificate) else None
            await self._emit("auth", False, user=user or username, login=username,
                             key_id=getattr(key, "key_id", ""), reason=reason)
        return None

    # ---- forwarding to nodes -----------------------------------------------------------------
    async def direct_tcpip(self, host: str, port: int, orig_host: str, orig_port: int) -> trio.abc.Stream:
        """Through :class:`~appliance.proxy.gate.NodeGate`: its refusal's reason and words reach the client."""
        caller = Caller(self.user or "", self.login, self.peer_address, self._generation, "proxy",
                        f"{orig_host}:{orig_port}")
        try:
            return await self._gate.open(host, port, caller=caller, nursery=lambda: self.conn.nursery)
        except NodeRefused as exc:
            raise ssh_proto.ChannelOpenError(exc.reason, str(exc)) from None

    # ---- sessions: only the node list ------------------------------------------------------
    async def session(self, session: ssh_proto.ServerSession) -> int:
        if session.kind == "subsystem" and session.subsystem == routing.NODES_SUBSYSTEM:
            return await self._serve_node_list(session)
        await session.send_stderr(NO_SHELL_HINT)
        return 1

    async def _serve_node_list(self, session: ssh_proto.ServerSession) -> int:
        try:
            with trio.fail_after(LIST_REQUEST_TIMEOUT):
                request_id, labels = await _read_list_request(session)
        except (ApiProtocolError, trio.TooSlowError) as exc:
            await session.send_all(routing.encode_list_error(0, f"bad node list request: {exc}"))
            return 1
        try:
            nodes = await self.config.list_nodes(labels)
            answer = routing.encode_list_response(request_id, nodes)
        except Exception as exc:  # the auth API failed or sent junk: the client gets one line
            log.warning("proxy: listing nodes failed: %r", exc)
            await session.send_all(routing.encode_list_error(request_id, "the node list is unavailable", E_INTERNAL))
            return 1
        await session.send_all(answer)
        return 0

    # ---- audit ----------------------------------------------------------------------------------
    async def _emit(self, event: str, success: bool, *, user: str | None = None, **fields: Any) -> None:
        if self.config.audit is None:
            return
        record = {"event": event, "user": user or self.user or "", "success": success,
                  "fields": {"service": "proxy", "cluster": self.config.cluster, "client_ip": self.peer_ip or "",
                             "login": self.login, **fields}}
        try:
            await self.config.audit(record)
        except Exception:
            # A failing audit sink must not break the connection; it is logged loudly.
            log.exception("proxy: audit event %s could not be recorded", event)


async def _read_list_request(session: ssh_proto.ServerSession) -> tuple[int, dict[str, str]]:
    decoder = FrameDecoder(parse_request, max_frame=MAX_LIST_REQUEST)
    while True:
        data = await session.receive_some(16384)
        if not data:
            decoder.feed_eof()
            raise routing.NodeListError("no request before EOF")
        decoder.feed(data)
        request = routing.decode_list_request(decoder)
        if request is not None:
            return request


def proxy_server_factory(user_cas: Sequence[PublicKey], routes: routing.Routes, *, audit: AuditSink | None = None,
                         identity: Callable[[], ProxyIdentity] | None = None,
                         view: ClusterView | None = None, dialer: Dialer | None = None) -> Callable[[], ProxyServer]:
    """A per-connection factory for ``ssh_proto.serve`` / ``serve_stream``; ``identity``
    (the proxy's host key and certificate) signs the relay lines sent to nodes; ``view``
    enforces revocation; ``dialer`` reaches nodes (:class:`~appliance.proxy.dialing.ProxyDialer`)."""
    config = _ProxyConfig(tuple(user_cas), routes.local.cluster, routes.resolve, routes.list_nodes, audit, identity,
                          view, dialer if dialer is not None else ProxyDialer())
    return lambda: ProxyServer(config)


def _host_keys(identity: ProxyIdentity) -> tuple[tuple[PrivateKey, Certificate | None], ...]:
    """The certificate first; the plain key too, so `ssh-keyscan` and the like still connect."""
    if identity.host_cert is None:
        return ((identity.host_key, None),)
    return ((identity.host_key, identity.host_cert), (identity.host_key, None))


async def serve_proxy(identity: ProxyIdentity | Callable[[], ProxyIdentity], user_cas: Sequence[PublicKey],
                      routes: routing.Routes, host: str | None = "0.0.0.0", port: int = PROXY_PORT, *,
                      audit: AuditSink | None = None, view: ClusterView | None = None, dialer: Dialer | None = None,
                      profile: ssh_proto.ListenerProfile = PROXY_PROFILE,
                      options: ssh_proto.ConnectionOptions = PROXY_OPTIONS,
                      listeners: Sequence[trio.SocketListener] | None = None,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the proxy service until cancelled.

    ``identity`` is a :class:`ProxyIdentity` or a callable returning the current one.
    ``routes`` (:class:`~appliance.proxy.routing.Routes`) maps a requested target to a node
    of a cluster and lists nodes; ``dialer`` reaches the node (default: a
    :class:`~appliance.proxy.dialing.ProxyDialer` with an empty tunnel registry)::

        directory = NodeDirectory(lambda: api.list_nodes(labels={}), cluster="prod", view=view)
        listener = await nursery.start(serve_proxy, identity, [user_ca], Routes(directory), "0.0.0.0", 3023)

    ``listener.port`` is the bound port (pass 0 for any free one). ``profile`` and
    ``options`` are the limits (:mod:`appliance.limits`).
    """
    provider = identity if callable(identity) else (lambda: identity)
    factory = proxy_server_factory(user_cas, routes, audit=audit, identity=provider, view=view, dialer=dialer)
    # the host keys are read at each connection: a renewed certificate applies at once
    listener = ssh_proto.SSHListener(factory, host_keys=lambda: _host_keys(provider()), profile=profile,
                                     options=options)
    await listener.serve(host, port, listeners=listeners, task_status=task_status)
