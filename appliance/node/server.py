"""The node service's SSH server (port 3022): user certificates in, sessions as OS users out.

This module owns the node's policy, on top of ssh_proto's server (RFC 4252 user auth,
RFC 4254 connection protocol):

* Authentication: only an OpenSSH **user certificate** signed by one of the cluster's user
  CAs (:attr:`NodeIdentity.user_cas`), validated with
  :func:`ssh_proto.certs.validate_user_certificate` for principal = the requested login and
  source address = the peer (docs/security.md C5-C14). Plain keys, passwords and
  keyboard-interactive are refused and not offered; a refused certificate gets a banner
  saying why in words its holder can act on (:mod:`appliance.login_hints`), never a word
  about the host's accounts. The login must be an existing OS account; a node not
  running as root accepts only its own account. The certificate's permissions become the
  connection's :class:`ssh_proto.SessionPolicy` (docs/security.md C14: pty, port and agent forwarding,
  force-command).
* Sessions (shell, exec, sftp subsystem) run as the login through
  :mod:`appliance.node.process`; agent forwarding gets a private socket owned by the login.
* Port forwarding: ``direct-tcpip`` connects wherever the node can reach (sshd's default);
  ``tcpip-forward`` listens where asked, but never on a privileged port for a non-root login.
* The client's address: a connection relayed by the cluster's proxy starts with the
  proxy's signed line naming the client (:mod:`appliance.relay`); once verified, that
  address is the connection's peer for the certificate's source-address, SSH_CLIENT /
  SSH_CONNECTION and audit. A line that fails verification closes the connection.
* Revocation: with a :class:`~appliance.cluster_view.ClusterView` (fed by the auth server's
  push stream), a certificate of a deleted or reset user is refused, a relay line counts
  only from a registered proxy, and a live connection ends within seconds when its user's
  certificates are revoked or the proxy that relayed it is removed (docs/security.md R2, R3).
* Limits (:mod:`appliance.limits`, docs/security.md § Limits): the listener admits by
  ``NODE_PROFILE``, counting a relayed connection against the client the proxy vouches
  for, never against the proxy; at most 64 connections per cluster user and 1,024 in all;
  a connection has at most 10 sessions and 32 channels, counted when opened (sshd's
  MaxSessions), within a 32 MiB receive-window budget, and 16 remote forwards. Session
  processes get back the descriptor limit the node was started with (``session_nofile``).
* Audit: ``auth`` (accepted or refused certificate), ``session.start`` / ``session.end``,
  ``exec`` (a session that could not start), ``port`` and ``agent.forward`` events go to the
  ``audit`` callable as the maps :meth:`appliance.audit.AuditEvent.from_wire` accepts from a
  node (``{"event", "user", "success", "fields"}``); they never carry a secret.

The host key and certificate come from an identity provider read at every connection, so
a renewed host certificate is presented without restarting the listener.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import uuid
from typing import Awaitable, Callable, Collection, Protocol, Sequence

import trio

import ssh_proto
from ssh_proto.certs import validate_user_certificate
from ssh_proto.errors import AgentError, CertificateError
from ssh_proto.keys import Certificate, PrivateKey, PublicKey
from ssh_proto.limits import Admission
from ssh_proto.trio_io.agent import forward_agent_to_unix_socket

from .. import login_hints
from ..addresses import NODE_PORT
from ..auth.ca import generation_of, holder_of, roles_from_certificate
from ..cluster_view import ClusterView
from ..limits import NODE_OPTIONS, NODE_PROFILE
from ..relay import RELAY_PREFIX, RelayedPeer, RelayVerifier
from ..sessions import join
from ..sessions.hub import LiveSession, Party, SessionHub
from ..sessions.recorder import Recorder, RecordingFailed, RecordingUnavailable
from ..sessions.settings import RecordingSettings
from . import process as proc

log = logging.getLogger("jumpgate.node")

CONNECT_TIMEOUT = 10.0       # direct-tcpip connect to the target
AGENT_SOCKET_DIR = "/tmp"    # forwarded agent sockets: a private 0700 directory in here
AUDIT_TIMEOUT = 10.0         # the session.end event of a session cut short still gets this long
MAX_AUDIT_USER = 256         # appliance.audit's bound on an event's user
SFTP_SUBSYSTEM = "sftp"
JOIN_REQUEST_TIMEOUT = 10.0  # a joiner's request frame must arrive within this
INTERNAL_SFTP = "internal-sftp"  # force-command spelling sshd users know

AuditSink = Callable[[dict], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What a node needs to serve: its host key and certificate, and whom to trust."""

    host_key: PrivateKey
    host_cert: Certificate
    user_cas: tuple[PublicKey, ...]
    cluster: str
    name: str
    host_cas: tuple[PublicKey, ...] = ()  # whose proxies may vouch for a relayed client


def host_keys_of(identity: NodeIdentity) -> tuple[tuple[PrivateKey, Certificate | None], ...]:
    """The certificate first, then the plain key, so clients without the CA can still connect."""
    return ((identity.host_key, identity.host_cert), (identity.host_key, None))


def _user_of(key_id: str) -> str:
    """The cluster user a certificate was issued to ("user:<name>", a bot's "bot:<name>"), kept short."""
    return holder_of(key_id)[1][:MAX_AUDIT_USER]


@dataclasses.dataclass(frozen=True, slots=True)
class _Login:
    """An accepted login: the certificate's holder and the account it runs as."""

    user: str
    key_id: str
    serial: int
    account: proc.LoginAccount
    policy: ssh_proto.SessionPolicy
    generation: int = 0
    roles: tuple[str, ...] = ()


class NodeServer(ssh_proto.SSHServer):
    """One connection to the node (made by :func:`node_server_factory`)."""

    def __init__(self, identity: NodeIdentity, *, audit: AuditSink | None = None,
                 allow_users: Collection[str] | None = None, view: ClusterView | None = None,
                 session_nofile: int | None = None, hub: SessionHub | None = None,
                 recording: RecordingSettings | None = None):
        self.identity = identity
        self._hub = hub if hub is not None else SessionHub()
        self._recording = recording
        self._audit = audit
        self._view = view
        self._unregister: Callable[[], None] | None = None
        self._session_nofile = session_nofile
        self._allow_users = frozenset(allow_users) if allow_users is not None else None
        self._login: _Login | None = None
        self._refused: set[tuple[str, bytes]] = set()   # audit each refused (login, key) once
        self._hints: set[str] = set()                    # banners sent on this connection
        self._agent_sock: str | None = None
        self._agent_lock = trio.Lock()
        self.conn: ssh_proto.SSHServerConnection | None = None

    @property
    def endpoints(self) -> proc.Endpoints:
        """Both ends, read when needed: a proxy's relay line replaces the peer address after
        the connection is made (and before the client can authenticate)."""
        conn = self.conn
        if conn is None:
            return proc.Endpoints.from_addresses(None, None)
        return proc.Endpoints.from_addresses(conn.peer_address, _local_address(conn))

    # ---- authentication ------------------------------------------------------------------
    async def auth_publickey_acceptable(self, username: str, key) -> bool:
        return await self._check_key(username, key) is not None

    async def auth_publickey(self, username: str, key):
        login = await self._check_key(username, key)
        if login is None:
            return False
        self._login = login
        log.info("accepted certificate ID %r serial %d for %s from %s", login.key_id, login.serial,
                 username, self.endpoints.remote_ip)
        self._register_live(login)
        await self._emit("auth", serial=login.serial)
        return ssh_proto.Accept(login.policy, account=login.user)  # per-user limit: the cluster user

    def _register_live(self, login: _Login) -> None:
        """So that revoking the user, or removing the proxy that relayed us, ends this connection."""
        if self._view is None or self.conn is None:
            return
        peer = self.conn.peer_address
        self._unregister = self._view.live.add(self._close_revoked, user=login.user, generation=login.generation,
                                               proxy=peer.via if isinstance(peer, RelayedPeer) else None)

    def _close_revoked(self, reason: str) -> None:
        log.info("ending the connection of %s: %s", self._login.user if self._login else "?", reason)
        conn = self.conn
        try:
            conn.nursery.start_soon(conn.aclose, ssh_proto.DisconnectReason.BY_APPLICATION, reason)
        except RuntimeError:
            pass  # the connection is already going

    def connection_lost(self, error: BaseException | None) -> None:
        if self._unregister is not None:
            self._unregister()
            self._unregister = None

    async def _check_key(self, username: str, key) -> _Login | None:
        """The login ``key`` grants as ``username``, or None (refusal logged and audited)."""
        if not isinstance(key, Certificate):
            # Not audited: clients routinely offer their plain keys before the certificate.
            log.info("refused a plain key for %s from %s: a user certificate is required", username,
                     self.endpoints.remote_ip)
            self._hint(login_hints.PLAIN_KEY, unless_hinted=True)
            return None
        try:
            perms = validate_user_certificate(key, principal=username, trusted_cas=self.identity.user_cas,
                                              source_address=self.endpoints.remote_ip)
        except CertificateError as exc:
            self._hint(login_hints.certificate_hint(key, trusted_cas=self.identity.user_cas, login=username))
            await self._refuse(username, key, str(exc))
            return None
        user, generation = _user_of(perms.key_id), generation_of(key)
        if self._view is not None and self._view.revoked(user, generation):
            self._hint(login_hints.REVOKED)
            await self._refuse(username, key, f"the certificate was revoked ({user} was deleted or reset)")
            return None
        reason, account = await self._check_account(username)
        if account is None:
            await self._refuse(username, key, reason)
            return None
        return _Login(user, perms.key_id, perms.serial, account, ssh_proto.policy_from_certificate(perms),
                      generation, roles_from_certificate(key))

    def _hint(self, text: str | None, *, unless_hinted: bool = False) -> None:
        """Tell the user why, in a banner (appliance.login_hints; once per text and connection)."""
        conn = self.conn
        if text is None or text in self._hints or (unless_hinted and self._hints) or conn is None:
            return
        self._hints.add(text)
        if not conn.closed.is_set():
            conn.send_banner(text + "\r\n")

    async def _check_account(self, username: str) -> tuple[str, proc.LoginAccount | None]:
        if self._allow_users is not None and username not in self._allow_users:
            return f"login {username!r} is not allowed on this node", None
        if not proc.running_as_root():
            # Decided by name before any lookup, so the answer says nothing of which accounts exist (T13).
            own = proc.own_account_name()
            if username != own:
                self._hint(login_hints.not_root_hint(own, username))
                return f"the node does not run as root: only its own account may log in, not {username!r}", None
        try:
            account = await trio.to_thread.run_sync(proc.lookup_account, username)
        except KeyError:
            return f"no OS account {username!r} on this node", None
        return "", account

    async def _refuse(self, username: str, cert: Certificate, reason: str) -> None:
        """docs/security.md C16: say which certificate was refused and why (the reason names the rule)."""
        log.info("refused certificate ID %r serial %d for %s from %s: %s", cert.key_id, cert.serial, username,
                 self.endpoints.remote_ip, reason)
        seen = (username, cert.blob)  # a query and then the signed request: one event
        if seen in self._refused:
            return
        self._refused.add(seen)
        await self._emit("auth", success=False, user=_user_of(cert.key_id), login=username,
                         key_id=_bounded(cert.key_id), serial=cert.serial, reason=_bounded(reason))

    # ---- sessions ------------------------------------------------------------------------
    def session_allowed(self) -> bool:
        # how many: NODE_OPTIONS.max_sessions, counted by ssh_proto when a session is opened
        return self._login is not None

    async def session(self, session: ssh_proto.ServerSession) -> int | None:
        login = self._login
        if login is None:  # pragma: no cover - the library opens sessions only after auth
            return 255
        return await self._run_session(session, login)

    async def _run_session(self, session: ssh_proto.ServerSession, login: _Login) -> int | None:
        controls = _Controls(session)  # first: requests may follow the exec request at once
        if session.kind == "subsystem" and session.subsystem == join.SUBSYSTEM:
            return await self._join(session, login, controls)
        command = _session_command(session)
        if command is _UNSUPPORTED:
            await session.send_stderr(f"subsystem {session.subsystem!r} is not supported\r\n".encode())
            return 1
        try:
            spec, warning = await self._spawn_spec(session, login, command)
        except proc.SpawnError as exc:
            return await self._spawn_failed(session, exc)
        details = {"session_id": str(uuid.uuid4()), "kind": session.kind, "pty": session.pty is not None,
                   "command": _bounded(session.command) if session.kind != "subsystem" else None,
                   "subsystem": _bounded(session.subsystem)}
        try:
            recorder = await self._start_recording(session, login, details)
        except RecordingUnavailable as exc:
            return await self._recording_refused(session, details, exc)
        await self._emit("session.start", **details, recorded=recorder is not None)
        started = time.monotonic()
        status, signame = 255, None
        owner = Party(login.user, "owner", session)
        try:
            async with self._hub.open(details["session_id"], owner, recorder, login=login.account.name,
                                      pty=session.pty is not None) as live:
                try:
                    controls.attach(_PartyControls(live, owner))
                    if warning:
                        await live.send_stderr(warning.encode() + b"\r\n")
                    status, signame = await self._run_live(session, live, spec)
                finally:
                    live.finish(status, signame)  # joiners end with it
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(AUDIT_TIMEOUT):
                await self._end_recording(recorder, status, signame)
                await self._emit("session.end", **details, exit_status=status, exit_signal=signame,
                                 duration=round(time.monotonic() - started, 3))
        if signame is not None:
            await session.exit_with_signal(signame)
            return None
        return status

    def _records(self, session: ssh_proto.ServerSession) -> bool:
        """Every shell and exec is recorded (sftp is a file transfer, audited, not recorded)."""
        rec = self._recording
        return (rec is not None and rec.mode == "node" and session.kind in ("shell", "exec")
                and session.command != INTERNAL_SFTP)

    async def _start_recording(self, session: ssh_proto.ServerSession, login: _Login,
                               details: dict) -> Recorder | None:
        if not self._records(session):
            return None
        pty = session.pty
        header = {"session_id": details["session_id"], "user": login.user, "login": login.account.name,
                  "node": self.identity.name, "cluster": self.identity.cluster, "kind": session.kind,
                  "command": details["command"], "started": time.time(), "client_ip": self.endpoints.remote_ip,
                  "term": pty.term if pty else None, "cols": pty.cols if pty else 80, "rows": pty.rows if pty else 24,
                  "pty": pty is not None}
        rec = self._recording
        return await Recorder.create(rec.root, header, record_input=rec.record_input, on_sealed=rec.on_sealed,
                                     min_free=rec.min_free)

    async def _recording_refused(self, session: ssh_proto.ServerSession, details: dict,
                                 exc: RecordingUnavailable) -> int:
        """docs/security.md S4: a session that cannot be recorded is refused, and says why."""
        log.warning("refused a session of %s: it cannot be recorded: %s", session.username, exc)
        await self._emit("session.start", success=False, **details, reason=f"recording unavailable: {exc}")
        await session.send_stderr(f"jumpgate: session refused: {exc}; sessions on this node are recorded "
                                  f"and cannot run unrecorded\r\n".encode())
        return 255

    async def _run_live(self, session: ssh_proto.ServerSession, live: LiveSession,
                        spec: proc.SpawnSpec) -> tuple[int | None, str | None]:
        """The process relayed to the session, its parties served, its recording flushed."""
        outcome: tuple[int | None, str | None] = (255, None)
        try:
            async with trio.open_nursery() as nursery:
                if live.recorder is not None:
                    nursery.start_soon(live.recorder.run)
                nursery.start_soon(live.serve_party, live.owner)
                try:
                    running = await proc.SessionProcess.spawn(spec)
                except proc.SpawnError as exc:
                    outcome = (await self._spawn_failed(live, exc), None)
                else:
                    live.attach(running)
                    outcome = await running.relay(live)
                nursery.cancel_scope.cancel()
            return outcome
        except* RecordingFailed as group:
            reason = str(group.exceptions[0])
            log.error("ended session %s: its recording failed: %s", live.id, reason)
            with trio.CancelScope(shield=True), trio.move_on_after(AUDIT_TIMEOUT):
                await self._emit("session.end", success=True, session_id=live.id, reason=f"recording failed: {reason}")
                try:
                    await session.send_stderr(f"\r\njumpgate: session ended: {reason}; sessions on this node "
                                              f"are recorded and cannot run unrecorded\r\n".encode())
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        return 255, None

    async def _end_recording(self, recorder: Recorder | None, status: int | None, signame: str | None) -> None:
        if recorder is None:
            return
        try:
            await recorder.close({"exit_status": status, "exit_signal": signame})
        except RecordingFailed as exc:
            recorder.abandon()  # the uploader recovers what is on disk, marked interrupted
            log.error("the recording of a session could not be closed: %s", exc)

    async def _spawn_failed(self, session: ssh_proto.ServerSession | LiveSession, exc: proc.SpawnError) -> int:
        """A session whose process cannot start: one line on the client's stderr, status 255."""
        log.info("a session failed to start: %s", exc)
        await self._emit("exec", success=False, reason=_bounded(str(exc)))
        await session.send_stderr(f"jumpgate: {exc}\r\n".encode())
        return 255

    async def _spawn_spec(self, session: ssh_proto.ServerSession, login: _Login,
                          command: str | None) -> tuple[proc.SpawnSpec, str | None]:
        account = login.account
        auth_sock = await self._agent_socket(account) if session.agent_forwarding else None
        original = session.original_command if session.policy.force_command is not None else None
        env = proc.session_environment(account, self.endpoints, term=session.pty.term if session.pty else None,
                                       client_env=session.env, auth_sock=auth_sock, original_command=original)
        executable, argv = proc.session_argv(account, command)
        cwd, warning = proc.session_cwd(account)
        spec = proc.SpawnSpec(executable, argv, env, cwd, account, switch_user=proc.running_as_root(),
                              pty=session.pty, nofile=self._session_nofile)
        return spec, warning

    async def _agent_socket(self, account: proc.LoginAccount) -> str | None:
        """One forwarded-agent socket per connection (it lives and dies with it)."""
        async with self._agent_lock:
            if self._agent_sock is None:
                owner = (account.uid, account.gid) if proc.running_as_root() else None
                try:
                    self._agent_sock = await forward_agent_to_unix_socket(self.conn, AGENT_SOCKET_DIR, owner=owner)
                except (AgentError, OSError) as exc:
                    log.warning("agent forwarding for %s not set up: %s", account.name, exc)
                    return None
                await self._emit("agent.forward")
            return self._agent_sock

    # ---- joining a live session (jumpgate join; docs/security.md S6) -----------------------
    async def _join(self, session: ssh_proto.ServerSession, login: _Login, controls: _Controls) -> int | None:
        """Attach this channel to a live session as a party, until the session ends or it leaves."""
        try:
            request, rest = await _read_join_request(session)
        except join.JoinError as exc:
            return await self._join_refused(session, None, str(exc))
        live = self._hub.get(request.session_id)
        refusal = join.NOT_JOINABLE if live is None or live.ended.is_set() else join.join_refusal(
            joiner=login.user, joiner_login=login.account.name, joiner_roles=login.roles,
            permit_pty=login.policy.permit_pty, mode=request.mode, owner=live.owner.user,
            session_login=live.login, session_pty=live.pty)
        if refusal is not None:
            return await self._join_refused(session, request, refusal)
        party = Party(login.user, request.mode, session)
        controls.attach(_PartyControls(live, party))
        await live.admit(party)
        fields = {"session_id": live.id, "mode": party.mode, "owner": live.owner.user}
        await self._emit("session.join", **fields)
        log.info("%s joined session %s as %s", login.user, live.id, party.mode)
        try:
            await live.type(party, rest)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_after, live.serve_party(party), nursery.cancel_scope)
                nursery.start_soon(_cancel_after, live.ended.wait(), nursery.cancel_scope)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(AUDIT_TIMEOUT):
                live.leave(party)  # (serve_party has, unless it never ran)
                await self._emit("session.leave", **fields, ended=live.ended.is_set())
        if not live.ended.is_set():
            return 0  # the joiner left (its channel is closed: nobody reads this)
        status, signame = live.outcome
        if signame is not None:
            await session.exit_with_signal(signame)
            return None
        return status

    async def _join_refused(self, session: ssh_proto.ServerSession, request: join.JoinRequest | None,
                            reason: str) -> int:
        log.info("refused a join by %s: %s", self._login.user if self._login else "?", reason)
        await self._emit("session.join", success=False, reason=reason,
                         session_id=_bounded(request.session_id) if request else None,
                         mode=request.mode if request else None)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await session.send_stderr(f"jumpgate: cannot join: {reason}\r\n".encode())
        return 1

    # ---- port forwarding -------------------------------------------------------------------
    def _forwarding_permitted(self) -> bool:
        return self._login is not None and self._login.policy.permit_port_forwarding

    async def direct_tcpip(self, host: str, port: int, orig_host: str, orig_port: int) -> trio.abc.Stream | None:
        if not self._forwarding_permitted() or not host or not 0 < port < 65536:
            return None
        await self._emit("port", kind="direct-tcpip", target=f"{host}:{port}")
        with trio.move_on_after(CONNECT_TIMEOUT):
            return await trio.open_tcp_stream(host, port)
        raise TimeoutError(f"no answer from {host}:{port} within {CONNECT_TIMEOUT:g}s")

    async def tcpip_forward(self, address: str, port: int) -> bool:
        if not self._forwarding_permitted() or not 0 <= port < 65536:
            return False
        listen = f"{address}:{port}"
        if 0 < port < 1024 and self._login.account.uid != 0:
            # as sshd: only root may listen on a privileged port
            await self._emit("port", success=False, kind="tcpip-forward", listen=listen, reason="privileged port")
            return False
        await self._emit("port", kind="tcpip-forward", listen=listen)
        return True

    # ---- audit --------------------------------------------------------------------------------
    async def _emit(self, event: str, *, success: bool = True, user: str | None = None, **fields) -> None:
        """One event in the shape ``appliance.audit.AuditEvent.from_wire`` takes from a node:
        ``{"event", "user", "success", "fields"}`` (scalar fields, never a secret)."""
        if self._audit is None:
            return
        login = self._login
        context = {"node": self.identity.name, "cluster": self.identity.cluster,
                   "client_ip": self.endpoints.remote_ip, "client_port": self.endpoints.remote_port}
        if login is not None:
            context.update(login=login.account.name, key_id=_bounded(login.key_id),
                           identity=holder_of(login.key_id)[0] or "user")  # "bot" for an automation identity
        if user is None:
            user = login.user if login is not None else ""
        record = {"event": event, "user": user, "success": success, "fields": {**context, **fields}}
        try:
            await self._audit(record)
        except Exception:
            # A failing audit sink must not take the session down with it; it is logged loudly.
            log.exception("audit event %s could not be recorded", event)


class _Controls:
    """window-change, signal and break requests of a session (RFC 4254 §6.7, §6.9, RFC 4335).

    A client may send them as soon as its shell/exec request is answered, before the process
    exists: signals wait here, and the latest size is taken from the session's pty (which
    ssh_proto keeps current) when the process is attached.
    """

    MAX_PENDING_SIGNALS = 8

    def __init__(self, session: ssh_proto.ServerSession) -> None:
        self._session = session
        self._process: _Target | None = None
        self._signals: list[str] = []
        session.on_resize, session.on_signal, session.on_break = self.resize, self.signal, self.send_break

    def attach(self, process: _Target) -> None:
        self._process = process
        pty = self._session.pty
        if pty is not None:
            process.resize(pty.cols, pty.rows, pty.width, pty.height)
        for name in self._signals:
            process.signal(name)

    def resize(self, cols: int, rows: int) -> None:
        pty = self._session.pty
        if self._process is not None and pty is not None:
            self._process.resize(cols, rows, pty.width, pty.height)

    def signal(self, name: str) -> None:
        if self._process is not None:
            self._process.signal(name)
        elif name in proc.RFC_SIGNALS and len(self._signals) < self.MAX_PENDING_SIGNALS:
            self._signals.append(name)

    def send_break(self, length_ms: int) -> None:
        if self._process is not None:
            self._process.send_break(length_ms)


class _Target(Protocol):
    def resize(self, cols: int, rows: int, width: int = 0, height: int = 0) -> None: ...
    def signal(self, name: str) -> bool: ...
    def send_break(self, length_ms: int) -> None: ...


class _PartyControls:
    """A party's requests, sent to its session (which applies the owner's size, and signals
    and breaks of the parties who may type)."""

    def __init__(self, live: LiveSession, owner: Party) -> None:
        self._live, self._owner = live, owner

    def resize(self, cols: int, rows: int, width: int = 0, height: int = 0) -> None:
        self._live.resize(self._owner, cols, rows, width, height)

    def signal(self, name: str) -> bool:
        self._live.signal(self._owner, name)
        return True

    def send_break(self, length_ms: int) -> None:
        self._live.send_break(self._owner, length_ms)


async def _read_join_request(session: ssh_proto.ServerSession) -> tuple[join.JoinRequest, bytes]:
    """The join request frame off the channel, and the bytes that followed it (JoinError)."""
    parser = join.RequestParser()
    with trio.move_on_after(JOIN_REQUEST_TIMEOUT):
        while True:
            try:
                data = await session.receive_some(join.MAX_REQUEST)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                raise parser.eof()
            request = parser.feed(data)
            if request is not None:
                return request, parser.rest
    raise join.JoinError(f"no join request within {JOIN_REQUEST_TIMEOUT:g}s")


async def _cancel_after(awaitable, scope: trio.CancelScope) -> None:
    await awaitable
    scope.cancel()


_UNSUPPORTED = object()
AUDIT_TEXT_LIMIT = 1024  # a command or reason in an audit event (appliance.audit allows 4096)


def _bounded(text: str | None) -> str | None:
    if text is None or len(text) <= AUDIT_TEXT_LIMIT:
        return text
    return text[:AUDIT_TEXT_LIMIT - 1] + "…"


def _session_command(session: ssh_proto.ServerSession):
    """The shell command to run: None for an interactive login shell, or _UNSUPPORTED."""
    if session.kind == "subsystem":
        return proc.SFTP_SERVER if session.subsystem == SFTP_SUBSYSTEM else _UNSUPPORTED
    if session.kind == "exec" and session.command == INTERNAL_SFTP:
        return proc.SFTP_SERVER
    return session.command if session.kind == "exec" else None


def _local_address(conn: ssh_proto.SSHServerConnection) -> tuple | None:
    """Our end of the TCP connection (for SSH_CONNECTION)."""
    if conn.local_address is not None:
        return conn.local_address
    # ssh_proto's listener records only the peer's address; ask the socket itself.
    sock = getattr(getattr(conn, "_stream", None), "socket", None)
    try:
        return sock.getsockname() if sock is not None else None
    except OSError:
        return None


def _logged(check: Callable[[bytes, tuple | None], tuple]) -> Callable[[bytes, tuple | None], tuple]:
    def logged(line: bytes, peer: tuple | None) -> tuple:
        try:
            client = check(line, peer)
        except ssh_proto.PreambleError as exc:
            log.warning("refused a relayed connection from %s: %s", peer, exc.description)
            raise
        log.debug("connection from %s relays client %s", peer, client)
        return client
    return logged


def node_server_factory(identity_provider: Callable[[], NodeIdentity], *, audit: AuditSink | None = None,
                        allow_users: Collection[str] | None = None,
                        view: ClusterView | None = None,
                        session_nofile: int | None = None, hub: SessionHub | None = None,
                        recording: RecordingSettings | None = None) -> Callable[[], NodeServer]:
    """A per-connection factory for ``ssh_proto.serve``; the identity is read at each connection.

    ``allow_users``, when given, limits the logins accepted (on top of the certificate);
    ``view`` enforces revocation; ``session_nofile`` is the soft RLIMIT_NOFILE session
    processes get (rule L5); ``hub`` holds the node's live sessions and ``recording`` says
    where they are recorded (None: not recorded).
    """
    hub = hub if hub is not None else SessionHub()

    def factory() -> NodeServer:
        return NodeServer(identity_provider(), audit=audit, allow_users=allow_users, view=view,
                          session_nofile=session_nofile, hub=hub, recording=recording)
    return factory


def tunnelled_node(identity_provider: Callable[[], NodeIdentity], *, audit: AuditSink | None = None,
                   view: ClusterView | None = None, session_nofile: int | None = None,
                   hub: SessionHub | None = None, recording: RecordingSettings | None = None,
                   profile: ssh_proto.ListenerProfile = NODE_PROFILE,
                   options: ssh_proto.ConnectionOptions = NODE_OPTIONS):
    """The node service for a node that listens on no port (a reverse tunnel,
    :mod:`appliance.tunnel.agent`): ``await serve(stream, relay, proxy)`` serves one SSH
    connection the proxy opened on the tunnel, exactly as the listener would serve a TCP one —
    the same relay-line rules (the line must name ``relay``, the address the proxy says it
    relays from, and be signed by ``proxy``, the proxy the tunnel authenticated) and the same
    admission profile, counted over every tunnelled connection together."""
    factory = node_server_factory(identity_provider, audit=audit, view=view, session_nofile=session_nofile,
                                  hub=hub, recording=recording)
    verifier = RelayVerifier(lambda: identity_provider().name, lambda: identity_provider().host_cas,
                             proxy_registered=view.proxy_registered if view is not None else None)
    admission = Admission(profile)

    async def serve(stream: trio.abc.Stream, relay: tuple[str, int], proxy: str) -> None:
        def check(line: bytes, peer: tuple | None) -> tuple:
            client = verifier.check(line, peer)
            if client.via != proxy:
                raise ssh_proto.PreambleError(f"relay line signed by {client.via}, not by {proxy}, the tunnel's proxy")
            return client
        await ssh_proto.serve_stream(stream, factory, host_keys=host_keys_of(identity_provider()), options=options,
                                     peer_address=relay, preamble=ssh_proto.RelayPreamble(RELAY_PREFIX, _logged(check)),
                                     admission=admission)
    return serve


async def serve_node(identity_provider: Callable[[], NodeIdentity], host: str | None = "0.0.0.0",
                     port: int = NODE_PORT, *, audit: AuditSink | None = None,
                     allow_users: Collection[str] | None = None, view: ClusterView | None = None,
                     session_nofile: int | None = None,
                     hub: SessionHub | None = None, recording: RecordingSettings | None = None,
                     profile: ssh_proto.ListenerProfile = NODE_PROFILE,
                     options: ssh_proto.ConnectionOptions = NODE_OPTIONS,
                     listeners: Sequence[trio.SocketListener] | None = None,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the node service until cancelled (on ``listeners`` when bound beforehand).

    ``listener = await nursery.start(serve_node, identity_provider, "0.0.0.0", 3022)``;
    ``listener.port`` is the bound port (pass port 0 for any free one). ``view`` (kept current
    by an :class:`~appliance.api.pool.ApiPool`) enforces revocation; ``profile`` and
    ``options`` are the limits (:mod:`appliance.limits`).
    """
    factory = node_server_factory(identity_provider, audit=audit, allow_users=allow_users, view=view,
                                  session_nofile=session_nofile, hub=hub, recording=recording)
    verifier = RelayVerifier(lambda: identity_provider().name, lambda: identity_provider().host_cas,
                             proxy_registered=view.proxy_registered if view is not None else None)
    # the host keys are read at each connection: a renewed certificate applies at once
    listener = ssh_proto.SSHListener(factory, host_keys=lambda: host_keys_of(identity_provider()),
                                     preamble=ssh_proto.RelayPreamble(RELAY_PREFIX, _logged(verifier.check)),
                                     profile=profile, options=options)
    await listener.serve(host, port, listeners=listeners, task_status=task_status)
