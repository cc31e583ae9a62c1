"""The server: the :class:`SSHServer` interface an application implements, and listeners.

One :class:`SSHServer` instance serves one connection (``server_factory()`` makes it).
Its ``auth_*`` methods decide authentication — return ``True``/:class:`Accept` to let the
user in, :class:`Partial` to require another method as well (certificate *and then* a
one-time code), ``False`` to refuse, or a :class:`Challenge` for keyboard-interactive. The
methods offered are the ones it implements, and a key query's default answer is
side-effect free (see :class:`SSHServer`).
After authentication, ``session`` runs each shell/exec/subsystem, ``direct_tcpip`` and
``tcpip_forward`` decide port forwarding, and ``channel_open`` / ``global_request`` take
application-defined types. Anything not overridden is refused.

:func:`serve` accepts TCP connections in a nursery; :func:`serve_stream` runs one
connection over any Trio stream. Both enforce the pre-auth limits of rule T14/T15: a login
grace time (cancel scope, no signals) and per-user failure delays against timing probes
(T13). A listener admits connections by a :class:`~ssh_proto.limits.ListenerProfile`
(docs/security.md § Limits): startups per source and in total with OpenSSH's MaxStartups
early drop, per-source penalties, authenticated connections per user and in total (the
account is :attr:`Accept.account`, the SSH user name by default); the decisions are
:mod:`ssh_proto.limits`', the I/O (accept, close, evict, log) is here. A refused login gets
a DISCONNECT saying which limit; a connection refused at the door is closed unanswered.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import logging
import os
from typing import Callable, Sequence

import trio

from .. import events as ev
from .. import messages as m
from ..certs import CertPermissions
from ..connection import Connection, ConnectionOptions
from ..errors import ChannelOpenError, DisconnectReason, LimitExceeded, ProtocolError, SSHError
from ..keys import Certificate, PrivateKey, PublicKey
from ..limits import Admission, ListenerProfile, Outcome, Startup
from ..preamble import PreambleError
from ..state import Role
from .accept import accept_loop
from .channel import SSHChannel
from .connection import SSHConnection
from .preamble import PreambleStream, RelayPreamble
from ..session_rules import SessionPolicy
from .session import ServerSession

log = logging.getLogger("ssh_proto.server")

#: The server-side authentication events: each is one request the application decides.
AuthRequest = (ev.AuthNone | ev.AuthPublicKeyQuery | ev.AuthPublicKey | ev.AuthPassword | ev.AuthKbdInt
               | ev.AuthKbdIntResponse)

LOGIN_GRACE_TIME = 120.0
REFUSAL_LOG_INTERVAL = 10.0   # connections refused at the door: one line per source per this


@dataclasses.dataclass(frozen=True, slots=True)
class Accept:
    """Authentication complete; ``policy`` (e.g. from a certificate) limits the connection.

    ``account`` is whose connection this is for the listener's per-user limit (the SSH user
    name when None): a certificate's holder rather than the login it asked for, say.
    """

    policy: SessionPolicy | None = None
    account: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Partial:
    """This method passed but ``methods`` must still be satisfied (RFC 4252 partial success)."""

    methods: tuple[str, ...] | None = None
    policy: SessionPolicy | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Challenge:
    """A keyboard-interactive round: prompts are (text, echo) pairs."""

    name: str = ""
    instruction: str = ""
    prompts: tuple[tuple[str, bool], ...] = ()


def policy_from_certificate(perms: CertPermissions) -> SessionPolicy:
    """docs/security.md C14: what a validated user certificate permits."""
    return SessionPolicy(permit_pty=perms.permit_pty, permit_agent_forwarding=perms.permit_agent_forwarding,
                         permit_port_forwarding=perms.permit_port_forwarding,
                         permit_x11_forwarding=perms.permit_x11_forwarding, force_command=perms.force_command)


def merge_policies(a: SessionPolicy | None, b: SessionPolicy | None) -> SessionPolicy | None:
    """Most restrictive of two policies (None means no restriction)."""
    if a is None or b is None:
        return a or b
    if a.force_command is not None and b.force_command is not None and a.force_command != b.force_command:
        raise SSHError("conflicting forced commands")
    return SessionPolicy(a.permit_pty and b.permit_pty, a.permit_agent_forwarding and b.permit_agent_forwarding,
                         a.permit_port_forwarding and b.permit_port_forwarding,
                         a.permit_x11_forwarding and b.permit_x11_forwarding, a.force_command or b.force_command)


class SSHServer:
    """Base class for a server application; override what you support.

    **Which methods are offered.** Unless ``ConnectionOptions.auth_methods`` names them,
    the server offers exactly the methods this class implements (docs/security.md T12b):
    ``publickey`` when it overrides :meth:`auth_publickey`, ``password`` for
    :meth:`auth_password`, ``keyboard-interactive`` for :meth:`auth_kbdint`. A client is then
    never asked for a password that cannot succeed, and OpenSSH says at once
    ``Permission denied (publickey)``. (``none`` is never listed; :meth:`auth_none` decides it.)

    **Key queries.** Clients ask whether a key would do before they sign with it (OpenSSH
    and asyncssh both do). :meth:`auth_publickey_acceptable` answers such a query — with no
    signature yet, so it must not log anyone in, audit a login or change any state. Its
    default is side-effect free and optimistic (docs/security.md T12a): yes whenever
    :meth:`auth_publickey` is implemented, so the client signs and the real decision is
    :meth:`auth_publickey`'s, made once, on a key whose signature has been verified. A server
    that knows its keys answers the query exactly with a rule of its own that has no side
    effects, and keeps its side effects for :meth:`auth_publickey`::

        class KeyServer(ssh_proto.SSHServer):
            def __init__(self, authorized: dict[str, set[bytes]]):
                self.authorized = authorized

            def _allowed(self, username, key) -> bool:   # pure: safe for a query
                return key.blob in self.authorized.get(username, ())

            async def auth_publickey_acceptable(self, username, key):
                return self._allowed(username, key)       # PK_OK or FAILURE, nothing else

            async def auth_publickey(self, username, key):  # the key has signed
                if not self._allowed(username, key):
                    return False
                audit.info("login %s %s", username, key.fingerprint())
                return True

    An exact answer spares a client with many keys (or an agent that asks its user before
    each signature) the signatures that would fail anyway.
    """

    conn: "SSHServerConnection"
    #: Like sshd's GatewayPorts: False binds remote forwards to loopback whatever address
    #: the client asked for; True binds the requested address.
    gateway_ports: bool = False

    def connection_made(self, conn: "SSHServerConnection") -> None:
        """Called once with the connection this instance serves (kept as ``self.conn``)."""
        self.conn = conn

    def connection_lost(self, error: BaseException | None) -> None:
        """Called once when the connection ends; ``error`` is why, None for a clean close."""
        pass

    # authentication
    async def auth_none(self, username: str):
        """Accept ``username`` with no credentials? Default: no. Implementing it offers the method."""
        return False

    async def auth_publickey_acceptable(self, username: str, key: PublicKey | Certificate) -> bool:
        """Answer a key query (no signature yet): True sends PK_OK, False a failure.

        Must have no side effects (see the class docstring). Default: True exactly when
        this class implements :meth:`auth_publickey`, which then decides once the key has
        signed; the algorithm and key format were checked already (docs/security.md C7).
        """
        return implements(self, "auth_publickey")

    async def auth_publickey(self, username: str, key: PublicKey | Certificate):
        """``key`` signed the session (verified). Certificates need validating here.

        Called once per signed request, never for a query: the place for side effects
        (audit, per-connection state)."""
        return False

    async def auth_password(self, username: str, password: str):
        """Check a password: return True / Accept / Partial / False. Implementing it offers ``password``."""
        return False

    async def auth_kbdint(self, username: str, submethods: str):
        """Start keyboard-interactive: return a Challenge, or True / Partial / False. Implementing it
        offers the method."""
        return False

    async def auth_kbdint_response(self, username: str, responses: Sequence[str]):
        """Check the answers to the last Challenge: another Challenge, or True / Partial / False."""
        return False

    def auth_succeeded(self, username: str) -> None:
        """Called once when ``username`` has authenticated (for audit); the default does nothing."""
        pass

    # connection protocol
    async def session(self, session: ServerSession) -> int | None:
        """Run a shell, command or subsystem; return the exit status."""
        await session.send_stderr(b"no sessions on this server\r\n")
        return 1

    def session_allowed(self) -> bool:
        """May this connection open another session channel? Default: yes (limits still apply)."""
        return True

    async def direct_tcpip(self, host: str, port: int, orig_host: str, orig_port: int) -> trio.abc.Stream | None:
        """Return a connected stream to relay to (ssh -L), or refuse: None refuses with
        ADMINISTRATIVELY_PROHIBITED, an OSError with CONNECT_FAILED and its text, and
        ``raise ChannelOpenError(reason, description)`` with the RFC 4254 §5.1 reason and the
        words of your choosing, which the client receives as they are."""
        return None

    async def tcpip_forward(self, address: str, port: int) -> bool:
        """May the client have a remote forward on address:port? (ssh -R)"""
        return False

    async def channel_open(self, channel_type: str, data: bytes):
        """An application channel type: return ``async def handler(channel)``, None (refused
        as UNKNOWN_CHANNEL_TYPE), or raise ChannelOpenError(reason, description)."""
        return None

    async def global_request(self, name: str, data: bytes) -> bool | bytes:
        """Answer an application global request: False refuses, True or reply bytes accept."""
        return False


#: SSHServer method -> the user-auth method it implements (RFC 4252 §5 names).
AUTH_METHOD_HOOKS = (("auth_publickey", "publickey"), ("auth_password", "password"),
                     ("auth_kbdint", "keyboard-interactive"))


def implements(server: SSHServer, hook: str) -> bool:
    """Does ``server``'s class (or the instance itself) override ``SSHServer.<hook>``?"""
    own = getattr(type(server), hook, None)
    return hook in vars(server) or (own is not None and own is not getattr(SSHServer, hook))


def implemented_auth_methods(server: SSHServer) -> tuple[str, ...]:
    """The methods ``server`` can let a user in by (docs/security.md T12b), in offer order."""
    return tuple(method for hook, method in AUTH_METHOD_HOOKS if implements(server, hook))


def options_for(server: SSHServer, options: ConnectionOptions) -> ConnectionOptions:
    """``options`` with ``auth_methods`` filled in from ``server`` when they name none."""
    if options.auth_methods is not None:
        return options
    return dataclasses.replace(options, auth_methods=implemented_auth_methods(server))


class SSHServerConnection(SSHConnection):
    """A server-side connection, driving one :class:`SSHServer`."""

    def __init__(self, stream, core: Connection, server: SSHServer, *, delay_secret: bytes,
                 gate: "_Gate | None" = None):
        super().__init__(stream, core)
        self.server = server
        self._gate = gate
        self.on_event = self._on_event
        self.policy: SessionPolicy | None = None
        self.username: str | None = None
        self.authenticated = trio.Event()
        self._delay_secret = delay_secret
        self.agent_forwarding = False  # set when a session asked for it
        self.remote_forwards: dict[tuple[str, int], trio.CancelScope] = {}  # (address, port) -> its listener

    def send_banner(self, message: str) -> None:
        """Show ``message`` to the user (USERAUTH_BANNER, RFC 4252 §5.4): OpenSSH prints it
        on stderr. Only before authentication succeeds (a LocalError after)."""
        self.core.auth_banner(message)
        self._kick()

    def _input_seen(self) -> None:
        startup = self._gate.startup if self._gate is not None else None
        if startup is not None and startup.pending:
            startup.seen()  # L8: a login in progress is not what a full listener evicts

    async def _on_event(self, event: ev.Event) -> None:
        match event:
            case (ev.AuthNone() | ev.AuthPublicKeyQuery() | ev.AuthPublicKey() | ev.AuthPassword() | ev.AuthKbdInt()
                  | ev.AuthKbdIntResponse()):
                await self._on_auth_event(event)
            case ev.AuthSucceeded():
                await self._on_auth_succeeded(event)
            case ev.ChannelOpenRequest():
                await self._on_channel_open(event)
            case ev.GlobalRequestReceived():
                await self._on_global_request(event)

    # ---- authentication ------------------------------------------------------------------
    async def _decide(self, event: AuthRequest, outcome: object) -> None:
        core = self.core
        if isinstance(outcome, Challenge):
            core.auth_challenge(outcome.name, outcome.instruction, outcome.prompts)
            return
        if outcome is True or isinstance(outcome, Accept):
            self.policy = merge_policies(self.policy, getattr(outcome, "policy", None))
            if self._gate is not None:  # L2: LimitExceeded goes to the reader, a DISCONNECT
                self._gate.authenticated(getattr(outcome, "account", None) or event.username, self.peer_address)
            core.auth_accept()
            return
        if isinstance(outcome, Partial):
            self.policy = merge_policies(self.policy, outcome.policy)
            core.auth_partial(outcome.methods)
            return
        if not isinstance(event, ev.AuthNone):
            # like sshd: the "none" probe every client starts with is answered at once
            await self._failure_delay(event.username)
        core.auth_reject()

    async def _failure_delay(self, username: str) -> None:
        """T13: every failure takes at least a per-user constant time (5 ms + 0..4.2 ms)."""
        digest = hmac.new(self._delay_secret, username.encode(), hashlib.sha256).digest()
        target = 0.005 + int.from_bytes(digest[:4], "big") % 4200 / 1e6
        elapsed = trio.current_time() - self._request_started
        if elapsed < target:
            await trio.sleep(target - elapsed)

    async def _on_auth_event(self, event: AuthRequest) -> None:
        self._request_started = trio.current_time()
        try:
            await self._ask_application(event)
        except ProtocolError:
            raise  # MaxAuthTries reached (T12): the reader disconnects
        except Exception:
            # an application bug is a refusal, never an open door nor a dead connection
            log.exception("authentication handler failed")
            if self.core.auth_pending:
                await self._decide(event, False)

    async def _ask_application(self, event: AuthRequest) -> None:
        s = self.server
        if isinstance(event, ev.AuthNone):
            outcome = await s.auth_none(event.username)
        elif isinstance(event, ev.AuthPublicKeyQuery):
            ok = await s.auth_publickey_acceptable(event.username, event.key)
            if ok:
                self.core.auth_pk_ok()
                return
            outcome = False
        elif isinstance(event, ev.AuthPublicKey):
            outcome = await s.auth_publickey(event.username, event.key)
        elif isinstance(event, ev.AuthPassword):
            outcome = await s.auth_password(event.username, event.password)
        elif isinstance(event, ev.AuthKbdInt):
            outcome = await s.auth_kbdint(event.username, event.submethods)
        else:
            outcome = await s.auth_kbdint_response(event.username, event.responses)
        await self._decide(event, outcome)

    async def _on_auth_succeeded(self, event: ev.AuthSucceeded) -> None:
        self.username = event.username
        self.authenticated.set()
        self.server.auth_succeeded(event.username)

    # ---- channels ------------------------------------------------------------------------
    async def _on_channel_open(self, event: ev.ChannelOpenRequest) -> None:
        core = self.core
        t = event.channel_type
        try:
            if t == "session":
                self._open_session(event)
            elif t == "direct-tcpip":
                await self._open_direct_tcpip(event)
            else:
                try:
                    handler = await self.server.channel_open(t, event.data)
                except ChannelOpenError as exc:
                    core.reject_channel(event.channel_id, exc.reason, exc.description)
                    return
                if handler is None:
                    core.reject_channel(event.channel_id, m.OPEN_UNKNOWN_CHANNEL_TYPE, f"unknown channel type {t}")
                else:
                    channel = SSHChannel(self, event.channel_id, t)
                    self.register_channel(channel)
                    core.accept_channel(event.channel_id)
                    self.nursery.start_soon(_run_channel, handler, channel)
        finally:
            self._kick()

    def _open_session(self, event: ev.ChannelOpenRequest) -> None:
        m.Empty.decode(event.data)
        if not self.server.session_allowed():
            self.core.reject_channel(event.channel_id, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "sessions not allowed")
            return
        # The state table admits CHANNEL_OPEN only once USERAUTH_SUCCESS opened the connection
        # (T11), and that queued AuthSucceeded, dispatched before this event, set the name.
        assert self.username is not None
        session = ServerSession(self, event.channel_id, "session", policy=self.policy or SessionPolicy(),
                                username=self.username, start=self._start_session)
        self.register_channel(session)
        self.core.accept_channel(event.channel_id)

    async def _start_session(self, session: ServerSession) -> int | None:
        if session.agent_forwarding:
            self.agent_forwarding = True
        return await self.server.session(session)

    async def _open_direct_tcpip(self, event: ev.ChannelOpenRequest) -> None:
        from .forwarding import relay
        req = m.DirectTcpip.decode(event.data)
        core = self.core
        if self.policy is not None and not self.policy.permit_port_forwarding:
            core.reject_channel(event.channel_id, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "port forwarding not permitted")
            return
        try:
            stream = await self.server.direct_tcpip(req.host, req.port, req.originator, req.originator_port)
        except ChannelOpenError as exc:  # the application's own reason and words
            core.reject_channel(event.channel_id, exc.reason, exc.description)
            return
        except OSError as exc:
            core.reject_channel(event.channel_id, m.OPEN_CONNECT_FAILED, f"connect failed: {exc.strerror or exc}")
            return
        if stream is None:
            core.reject_channel(event.channel_id, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "forwarding refused")
            return
        try:
            channel = SSHChannel(self, event.channel_id, "direct-tcpip")
            self.register_channel(channel)
            core.accept_channel(event.channel_id)
            self.nursery.start_soon(relay, channel, stream)
        except BaseException:  # the connection went away meanwhile: the relay will not close it
            await trio.aclose_forcefully(stream)
            raise

    async def _on_global_request(self, event: ev.GlobalRequestReceived) -> None:
        from .forwarding import handle_tcpip_forward_request
        ok, data = False, b""
        if event.name in ("tcpip-forward", "cancel-tcpip-forward"):
            ok, data = await handle_tcpip_forward_request(self, event)
        elif event.name not in ("keepalive@openssh.com",):
            result = await self.server.global_request(event.name, event.data)
            ok, data = (True, result) if isinstance(result, bytes) else (bool(result), b"")
        if event.want_reply:
            self.core.reply_global_request(event.token, ok, data)
            self._kick()


async def _run_channel(handler, channel: SSHChannel) -> None:
    try:
        await handler(channel)
    except Exception:
        log.exception("channel handler for %s failed", channel.channel_type)
    finally:
        await channel.aclose()


class _RefusalLog:
    """One log line per source per REFUSAL_LOG_INTERVAL for connections refused at the door
    (or evicted); under a flood, the ones in between are counted into the next line (bounded
    table)."""

    def __init__(self, max_keys: int = 1024):
        self._seen: dict[object, list] = {}  # key -> [time logged, refusals since]
        self._max_keys = max_keys

    def log(self, address, reason: str, what: str = "refused a connection") -> None:
        key = (what, address[0] if address else None)
        now = trio.current_time()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < REFUSAL_LOG_INTERVAL:
            entry[1] += 1
            return
        more = f" (and {entry[1]} more since the last line)" if entry is not None and entry[1] else ""
        log.info("%s from %s: %s%s", what, _where(address), reason, more)
        if entry is None and len(self._seen) >= self._max_keys:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = [now, 0]


class _Gate:
    """One connection's passage through its listener's :class:`~ssh_proto.limits.Admission`.

    ``admit`` (at accept, or once a relay line is decided) takes a startup slot or raises
    LimitExceeded; eviction cancels ``wait_scope``, the wait for authentication;
    ``authenticated`` counts the login against the user and listener limits (rule L2);
    ``finish`` tells the source how the connection ended (rule L9).
    """

    def __init__(self, admission: Admission | None, refusals: _RefusalLog | None = None,
                 on_decided: Callable[[], object] | None = None):
        self.admission = admission
        self.startup: Startup | None = None
        self.wait_scope = trio.CancelScope()
        self.refusals = refusals or _RefusalLog()
        self._on_decided = on_decided

    def admit(self, address) -> None:
        if self._on_decided is not None:
            self._on_decided()
        if self.admission is None:
            return
        try:
            self.startup = self.admission.admit(address)
        except LimitExceeded as exc:
            self.refusals.log(address, exc.description)
            raise
        self.startup.on_evict = self.wait_scope.cancel

    @property
    def evicted(self) -> bool:
        return self.startup is not None and self.startup.evicted

    def authenticated(self, account: str, address) -> None:
        if self.startup is None:
            return
        try:
            self.startup.authenticated(account)
        except LimitExceeded as exc:
            log.info("refused the login of %s from %s: %s", account, _where(address), exc.description)
            raise

    def finish(self, outcome: Outcome) -> None:
        if self.startup is not None:
            self.startup.finish(outcome)


def _where(address) -> str:
    return f"{address[0]} port {address[1]}" if address else "an unknown peer"


def _outcome(conn: "SSHServerConnection", grace_exceeded: bool, crashed: bool) -> Outcome:
    """How a connection ended, for its source's penalty (rule L9)."""
    if conn.authenticated.is_set():
        return Outcome.AUTHENTICATED
    if crashed:
        return Outcome.CRASH
    if isinstance(conn.error, (LimitExceeded, PreambleError)):
        return Outcome.NOT_COUNTED   # refused by us; a relay line we did not believe (L11)
    if grace_exceeded:
        return Outcome.GRACE_EXCEEDED
    return Outcome.AUTHFAIL if conn.core.auth_requests else Outcome.NOAUTH


async def serve_stream(stream: trio.abc.Stream, server_factory: Callable[[], SSHServer], *,
                       host_keys: Sequence[tuple[PrivateKey, Certificate | None]],
                       options: ConnectionOptions = ConnectionOptions(), login_grace_time: float = LOGIN_GRACE_TIME,
                       on_authenticated: Callable[[], None] | None = None, delay_secret: bytes | None = None,
                       peer_address=None, local_address=None, preamble: RelayPreamble | None = None,
                       admission: Admission | None = None, _gate: _Gate | None = None) -> None:
    """Serve one SSH connection over ``stream`` until it closes.

    With ``preamble``, a relay's line in front of the client's version string is checked
    and its answer becomes ``conn.peer_address`` (see :mod:`ssh_proto.trio_io.preamble`).
    With ``admission`` (a listener's :class:`~ssh_proto.limits.Admission`), the connection
    is admitted by the address it is accounted to — the relay's word for it when there is
    a relay line — and its login and its end are accounted too.
    """
    gate = _gate if _gate is not None else _Gate(admission)
    server = server_factory()
    core = Connection(Role.SERVER, options_for(server, options), host_keys=tuple(host_keys))
    if preamble is not None:
        def relayed(address: tuple) -> None:
            conn.peer_address = address

        def decided(address: tuple | None) -> None:
            gate.admit(address if address is not None else peer_address)  # L11: the relayed client
        stream = PreambleStream(stream, preamble, peer_address, relayed, on_decided=decided)
    elif gate.startup is None and gate.admission is not None:
        gate.admit(peer_address)
    conn = SSHServerConnection(stream, core, server, delay_secret=delay_secret or os.urandom(32), gate=gate)
    conn.peer_address = peer_address
    conn.local_address = local_address
    server.connection_made(conn)
    grace_exceeded = crashed = False
    try:
        async with trio.open_nursery() as nursery:
            await conn.start_tasks(nursery)
            with trio.move_on_after(login_grace_time) as grace, gate.wait_scope:
                await _wait_auth_or_close(conn)
            grace_exceeded = grace.cancelled_caught
            if gate.evicted and not conn.closed.is_set():
                gate.refusals.log(conn.peer_address, "made room for a login from a less busy source",
                                  "closed an unauthenticated connection")
                await conn.aclose(DisconnectReason.TOO_MANY_CONNECTIONS,
                                  "too many unauthenticated connections from your address; try again later")
            elif grace_exceeded:
                log.info("login grace time exceeded for %s", _where(conn.peer_address))
                await conn.aclose(DisconnectReason.BY_APPLICATION, "login grace time exceeded")
            elif on_authenticated is not None and conn.authenticated.is_set():
                on_authenticated()
            await conn.closed.wait()
    except Exception:
        crashed = True
        raise
    finally:
        gate.finish(_outcome(conn, grace_exceeded, crashed))
        server.connection_lost(conn.error)


async def _wait_auth_or_close(conn: SSHServerConnection) -> None:
    async with trio.open_nursery() as n:
        async def watch(event):
            await event.wait()
            n.cancel_scope.cancel()
        n.start_soon(watch, conn.authenticated)
        n.start_soon(watch, conn.closed)


class SSHListener:
    """Accepts TCP connections and serves each in its own task (see :func:`serve`).

    Admission (docs/security.md § Limits) follows ``profile``, a
    :class:`~ssh_proto.limits.ListenerProfile`: startups per source and in total, penalties,
    authenticated connections per user and in total. A listener with ``preamble`` admits a
    connection once its relay line is decided, by the client the line vouches for (never by
    the relay's own address), and bounds the connections not yet decided by the profile's
    ``full`` startups, the oldest closed first. ``accept()`` failing for lack of resources
    (EMFILE, ENFILE, ENOBUFS, ENOMEM) is waited out, as ``trio.serve_listeners`` does: the
    listener keeps serving the connections it has and accepts again once it can (rule L1).
    """

    def __init__(self, server_factory, *, host_keys, options=ConnectionOptions(),
                 login_grace_time: float = LOGIN_GRACE_TIME, max_startups: tuple[int, int, int] | None = None,
                 preamble: RelayPreamble | None = None, profile: ListenerProfile = ListenerProfile()):
        """``host_keys``: (key, certificate-or-None) pairs, or a callable returning them,
        read at each new connection (so a renewed host certificate needs no restart).
        ``preamble``: accept a relay's line in front of the SSH stream (see
        :mod:`ssh_proto.trio_io.preamble`). ``profile``: the admission rules;
        ``max_startups``, when given, replaces the profile's."""
        self.server_factory = server_factory
        self.preamble = preamble
        self._host_keys = host_keys if callable(host_keys) else tuple(host_keys)
        self.options = options
        self.login_grace_time = login_grace_time
        if max_startups is not None:
            start, rate, full = max_startups  # any sequence of three, as ListenerProfile unpacks it
            profile = dataclasses.replace(profile, max_startups=(start, rate, full))
        self.profile = profile
        self.admission = Admission(profile)
        self._refusals = _RefusalLog()
        self._undecided: dict[int, trio.CancelScope] = {}  # preamble not read yet, oldest first
        self._delay_secret = os.urandom(32)
        self.listeners: list[trio.SocketListener] = []
        self.accept_failures = 0   # accept() calls that failed for lack of resources (L1)

    @property
    def port(self) -> int:
        """The port the first listening socket is bound to (useful after listening on port 0)."""
        return self.listeners[0].socket.getsockname()[1]

    @property
    def host_keys(self) -> tuple:
        """The ``(PrivateKey, Certificate | None)`` pairs served now (a callable's current answer)."""
        return tuple(self._host_keys()) if callable(self._host_keys) else self._host_keys

    async def serve(self, host: str | None, port: int, *, listeners: Sequence[trio.SocketListener] | None = None,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host``:``port`` (or serve ``listeners`` bound beforehand: a caller that must
        know the port is its own before it does something it cannot undo) until cancelled;
        ``nursery.start`` returns this listener."""
        self.listeners = list(listeners) if listeners is not None else await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as nursery:
            for listener in self.listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(self)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            await accept_loop(listener, functools.partial(self._admit, nursery=nursery),
                              on_failure=self._count_accept_failure)

    def _count_accept_failure(self) -> None:
        self.accept_failures += 1

    def _admit(self, stream: trio.SocketStream, *, nursery: trio.Nursery) -> None:
        try:
            peer, local = stream.socket.getpeername(), stream.socket.getsockname()
        except OSError:
            peer = local = None
        scope = trio.CancelScope()
        if self.preamble is None:
            gate = _Gate(self.admission, self._refusals)
            try:
                gate.admit(peer)
            except LimitExceeded:
                stream.socket.close()  # as sshd: no banner, no work
                return
        else:
            gate = _Gate(self.admission, self._refusals, on_decided=lambda: self._undecided.pop(id(scope), None))
            self._bound_undecided()
            self._undecided[id(scope)] = scope
        nursery.start_soon(self._handle, stream, peer, local, gate, scope)

    def _bound_undecided(self) -> None:
        """At most ``full`` connections whose relay line is not read yet: the oldest goes."""
        if len(self._undecided) >= self.profile.max_startups[2]:
            oldest = next(iter(self._undecided))
            self._undecided.pop(oldest).cancel()
            log.info("closed the oldest connection that had sent nothing yet: %d are waiting", len(self._undecided))

    async def _handle(self, stream: trio.SocketStream, peer, local, gate: _Gate, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await serve_stream(stream, self.server_factory, host_keys=self.host_keys, options=self.options,
                                   login_grace_time=self.login_grace_time, delay_secret=self._delay_secret,
                                   peer_address=peer, local_address=local, preamble=self.preamble, _gate=gate)
        except* SSHError as group:
            log.info("connection from %s ended: %s", _where(peer), group.exceptions[0])
        except* Exception:
            # one connection's failure must not take the listener down (except* also
            # catches a failure grouped with the cancellation of the connection's tasks)
            log.exception("connection from %s failed", _where(peer))
        finally:
            self._undecided.pop(id(scope), None)
            await trio.aclose_forcefully(stream)  # closed whatever happened (eviction included)


async def serve(server_factory: Callable[[], SSHServer], host: str | None = None, port: int = 22, *,
                host_keys: Sequence[tuple[PrivateKey, Certificate | None]], options: ConnectionOptions = ConnectionOptions(),
                login_grace_time: float = LOGIN_GRACE_TIME, max_startups: tuple[int, int, int] | None = None,
                profile: ListenerProfile = ListenerProfile(), preamble: RelayPreamble | None = None,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on host:port and serve SSH until cancelled.

    ``await nursery.start(serve, factory, "127.0.0.1", 0, host_keys=...)`` returns the
    :class:`SSHListener` (its ``port`` is the bound port).
    """
    listener = SSHListener(server_factory, host_keys=host_keys, options=options, login_grace_time=login_grace_time,
                           max_startups=max_startups, preamble=preamble, profile=profile)
    await listener.serve(host, port, task_status=task_status)
