"""The server: the :class:`SSHServer` interface an application implements, and listeners.

One :class:`SSHServer` instance serves one connection (``server_factory()`` makes it).
Its ``auth_*`` methods decide authentication — return ``True``/:class:`Accept` to let the
user in, :class:`Partial` to require another method as well (certificate *and then* a
one-time code), ``False`` to refuse, or a :class:`Challenge` for keyboard-interactive.
After authentication, ``session`` runs each shell/exec/subsystem, ``direct_tcpip`` and
``tcpip_forward`` decide port forwarding, and ``channel_open`` / ``global_request`` take
application-defined types. Anything not overridden is refused.

:func:`serve` accepts TCP connections in a nursery; :func:`serve_stream` runs one
connection over any Trio stream. Both enforce the pre-auth limits of rule T14/T15: a login
grace time (cancel scope, no signals), a cap on unauthenticated connections with random
early drop (OpenSSH MaxStartups), and per-user failure delays against timing probes (T13).
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import random
from typing import Callable, Sequence

import trio

from .. import events as ev
from .. import messages as m
from ..certs import CertPermissions
from ..connection import Connection, ConnectionOptions
from ..errors import DisconnectReason, ProtocolError, SSHError
from ..keys import Certificate, PrivateKey, PublicKey
from ..state import Role
from .channel import SSHChannel
from .connection import SSHConnection
from .preamble import PreambleStream, RelayPreamble
from .session import ServerSession, SessionPolicy

log = logging.getLogger("ssh_proto.server")

LOGIN_GRACE_TIME = 120.0


@dataclasses.dataclass(frozen=True, slots=True)
class Accept:
    """Authentication complete; ``policy`` (e.g. from a certificate) limits the connection."""

    policy: SessionPolicy | None = None


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
    """Checklist rule 14: what a validated user certificate permits."""
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
    """Base class for a server application; override what you support."""

    conn: "SSHServerConnection"
    #: Like sshd's GatewayPorts: False binds remote forwards to loopback whatever address
    #: the client asked for; True binds the requested address.
    gateway_ports: bool = False

    def connection_made(self, conn: "SSHServerConnection") -> None:
        self.conn = conn

    def connection_lost(self, error: BaseException | None) -> None:
        pass

    # authentication
    async def auth_none(self, username: str):
        return False

    async def auth_publickey_acceptable(self, username: str, key: PublicKey | Certificate) -> bool:
        """Answer a key query (no signature yet). Default: the full check with a dry run."""
        return False

    async def auth_publickey(self, username: str, key: PublicKey | Certificate):
        """``key`` signed the session (verified). Certificates need validating here."""
        return False

    async def auth_password(self, username: str, password: str):
        return False

    async def auth_kbdint(self, username: str, submethods: str):
        return False

    async def auth_kbdint_response(self, username: str, responses: Sequence[str]):
        return False

    def auth_succeeded(self, username: str) -> None:
        pass

    # connection protocol
    async def session(self, session: ServerSession) -> int | None:
        """Run a shell, command or subsystem; return the exit status."""
        await session.send_stderr(b"no sessions on this server\r\n")
        return 1

    def session_allowed(self) -> bool:
        return True

    async def direct_tcpip(self, host: str, port: int, orig_host: str, orig_port: int) -> trio.abc.Stream | None:
        """Return a connected stream to relay to, or None to refuse (ssh -L)."""
        return None

    async def tcpip_forward(self, address: str, port: int) -> bool:
        """May the client have a remote forward on address:port? (ssh -R)"""
        return False

    async def channel_open(self, channel_type: str, data: bytes):
        """An application channel type: return ``async def handler(channel)`` or None."""
        return None

    async def global_request(self, name: str, data: bytes) -> bool | bytes:
        return False


class SSHServerConnection(SSHConnection):
    """A server-side connection, driving one :class:`SSHServer`."""

    def __init__(self, stream, core: Connection, server: SSHServer, *, delay_secret: bytes):
        super().__init__(stream, core)
        self.server = server
        self.on_event = self._on_event
        self.policy: SessionPolicy | None = None
        self.username: str | None = None
        self.authenticated = trio.Event()
        self._delay_secret = delay_secret
        self.agent_forwarding = False  # set when a session asked for it
        self.remote_forwards: dict[tuple[str, int], object] = {}

    async def _on_event(self, event: ev.Event) -> None:
        handler = _SERVER_EVENTS.get(type(event))
        if handler is not None:
            await handler(self, event)

    # ---- authentication ------------------------------------------------------------------
    async def _decide(self, event, outcome) -> None:
        auth = self.core.server_auth
        if isinstance(outcome, Challenge):
            auth.challenge(outcome.name, outcome.instruction, outcome.prompts)
            return
        if outcome is True or isinstance(outcome, Accept):
            self.policy = merge_policies(self.policy, getattr(outcome, "policy", None))
            self.core.auth_accept()
            return
        if isinstance(outcome, Partial):
            self.policy = merge_policies(self.policy, outcome.policy)
            auth.partial(outcome.methods)
            return
        if not isinstance(event, ev.AuthNone):
            # like sshd: the "none" probe every client starts with is answered at once
            await self._failure_delay(event.username)
        auth.reject()

    async def _failure_delay(self, username: str) -> None:
        """T13: every failure takes at least a per-user constant time (5 ms + 0..4.2 ms)."""
        digest = hmac.new(self._delay_secret, username.encode(), hashlib.sha256).digest()
        target = 0.005 + int.from_bytes(digest[:4], "big") % 4200 / 1e6
        elapsed = trio.current_time() - self._request_started
        if elapsed < target:
            await trio.sleep(target - elapsed)

    async def _on_auth_event(self, event) -> None:
        self._request_started = trio.current_time()
        try:
            await self._ask_application(event)
        except ProtocolError:
            raise  # MaxAuthTries reached (T12): the reader disconnects
        except Exception:
            # an application bug is a refusal, never an open door nor a dead connection
            log.exception("authentication handler failed")
            if self.core.server_auth._pending is not None:
                await self._decide(event, False)

    async def _ask_application(self, event) -> None:
        s = self.server
        if isinstance(event, ev.AuthNone):
            outcome = await s.auth_none(event.username)
        elif isinstance(event, ev.AuthPublicKeyQuery):
            ok = await s.auth_publickey_acceptable(event.username, event.key)
            if ok:
                self.core.server_auth.pk_ok()
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
        channels = self.core.channels
        t = event.channel_type
        try:
            if t == "session":
                self._open_session(event)
            elif t == "direct-tcpip":
                await self._open_direct_tcpip(event)
            else:
                handler = await self.server.channel_open(t, event.data)
                if handler is None:
                    channels.reject(event.channel_id, m.OPEN_UNKNOWN_CHANNEL_TYPE, f"unknown channel type {t}")
                else:
                    channel = SSHChannel(self, event.channel_id, t)
                    self.register_channel(channel)
                    channels.accept(event.channel_id)
                    self.nursery.start_soon(_run_channel, handler, channel)
        finally:
            self._kick()

    def _open_session(self, event: ev.ChannelOpenRequest) -> None:
        m.Empty.decode(event.data)
        if not self.server.session_allowed():
            self.core.channels.reject(event.channel_id, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "sessions not allowed")
            return
        session = ServerSession(self, event.channel_id, "session", policy=self.policy or SessionPolicy(),
                                username=self.username, start=self._start_session)
        self.register_channel(session)
        self.core.channels.accept(event.channel_id)

    async def _start_session(self, session: ServerSession):
        if session.agent_forwarding:
            self.agent_forwarding = True
        return await self.server.session(session)

    async def _open_direct_tcpip(self, event: ev.ChannelOpenRequest) -> None:
        from .forwarding import relay
        req = m.DirectTcpip.decode(event.data)
        channels = self.core.channels
        if self.policy is not None and not self.policy.permit_port_forwarding:
            channels.reject(event.channel_id, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "port forwarding not permitted")
            return
        try:
            stream = await self.server.direct_tcpip(req.host, req.port, req.originator, req.originator_port)
        except OSError as exc:
            channels.reject(event.channel_id, m.OPEN_CONNECT_FAILED, f"connect failed: {exc.strerror or exc}")
            return
        if stream is None:
            channels.reject(event.channel_id, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "forwarding refused")
            return
        channel = SSHChannel(self, event.channel_id, "direct-tcpip")
        self.register_channel(channel)
        channels.accept(event.channel_id)
        self.nursery.start_soon(relay, channel, stream)

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


_SERVER_EVENTS: dict[type, Callable] = {
    ev.AuthNone: SSHServerConnection._on_auth_event,
    ev.AuthPublicKeyQuery: SSHServerConnection._on_auth_event,
    ev.AuthPublicKey: SSHServerConnection._on_auth_event,
    ev.AuthPassword: SSHServerConnection._on_auth_event,
    ev.AuthKbdInt: SSHServerConnection._on_auth_event,
    ev.AuthKbdIntResponse: SSHServerConnection._on_auth_event,
    ev.AuthSucceeded: SSHServerConnection._on_auth_succeeded,
    ev.ChannelOpenRequest: SSHServerConnection._on_channel_open,
    ev.GlobalRequestReceived: SSHServerConnection._on_global_request,
}


@dataclasses.dataclass(slots=True)
class StartupLimiter:
    """OpenSSH MaxStartups start:rate:full — random early drop of unauthenticated connections."""

    start: int = 10
    rate: int = 30
    full: int = 100
    current: int = 0
    rng: random.Random = dataclasses.field(default_factory=random.SystemRandom)

    def admit(self) -> bool:
        if self.current >= self.full:
            return False
        if self.current >= self.start:
            p = self.rate + (100 - self.rate) * (self.current - self.start) / max(1, self.full - self.start)
            if self.rng.random() * 100 < p:
                return False
        self.current += 1
        return True

    def release(self) -> None:
        self.current -= 1


async def serve_stream(stream: trio.abc.Stream, server_factory: Callable[[], SSHServer], *,
                       host_keys: Sequence[tuple[PrivateKey, Certificate | None]],
                       options: ConnectionOptions = ConnectionOptions(), login_grace_time: float = LOGIN_GRACE_TIME,
                       on_authenticated: Callable[[], None] | None = None, delay_secret: bytes | None = None,
                       peer_address=None, local_address=None, preamble: RelayPreamble | None = None) -> None:
    """Serve one SSH connection over ``stream`` until it closes.

    With ``preamble``, a relay's line in front of the client's version string is checked
    and its answer becomes ``conn.peer_address`` (see :mod:`ssh_proto.trio_io.preamble`).
    """
    server = server_factory()
    core = Connection(Role.SERVER, options, host_keys=tuple(host_keys))
    if preamble is not None:
        def relayed(address: tuple) -> None:
            conn.peer_address = address
        stream = PreambleStream(stream, preamble, peer_address, relayed)
    conn = SSHServerConnection(stream, core, server, delay_secret=delay_secret or os.urandom(32))
    conn.peer_address = peer_address
    conn.local_address = local_address
    server.connection_made(conn)
    try:
        async with trio.open_nursery() as nursery:
            await conn.start_tasks(nursery)
            with trio.move_on_after(login_grace_time) as grace:
                await _wait_auth_or_close(conn)
            if grace.cancelled_caught:
                log.info("login grace time exceeded for %s", peer_address)
                await conn.aclose(DisconnectReason.BY_APPLICATION, "login grace time exceeded")
            elif on_authenticated is not None and conn.authenticated.is_set():
                on_authenticated()
            await conn.closed.wait()
    finally:
        server.connection_lost(conn.error)


async def _wait_auth_or_close(conn: SSHServerConnection) -> None:
    async with trio.open_nursery() as n:
        async def watch(event):
            await event.wait()
            n.cancel_scope.cancel()
        n.start_soon(watch, conn.authenticated)
        n.start_soon(watch, conn.closed)


class SSHListener:
    """Accepts TCP connections and serves each in its own task (see :func:`serve`)."""

    def __init__(self, server_factory, *, host_keys, options=ConnectionOptions(),
                 login_grace_time: float = LOGIN_GRACE_TIME, max_startups: tuple[int, int, int] = (10, 30, 100),
                 preamble: RelayPreamble | None = None):
        """``host_keys``: (key, certificate-or-None) pairs, or a callable returning them,
        read at each new connection (so a renewed host certificate needs no restart).
        ``preamble``: accept a relay's line in front of the SSH stream (see
        :mod:`ssh_proto.trio_io.preamble`)."""
        self.server_factory = server_factory
        self.preamble = preamble
        self._host_keys = host_keys if callable(host_keys) else tuple(host_keys)
        self.options = options
        self.login_grace_time = login_grace_time
        self.limiter = StartupLimiter(*max_startups)
        self._delay_secret = os.urandom(32)
        self.listeners: list[trio.SocketListener] = []

    @property
    def port(self) -> int:
        return self.listeners[0].socket.getsockname()[1]

    @property
    def host_keys(self) -> tuple:
        return tuple(self._host_keys()) if callable(self._host_keys) else self._host_keys

    async def serve(self, host: str | None, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as nursery:
            for listener in self.listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(self)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                if not self.limiter.admit():
                    log.info("dropping connection: too many unauthenticated connections")
                    await trio.aclose_forcefully(stream)
                    continue
                nursery.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.limiter.release()

        try:
            peer, local = stream.socket.getpeername(), stream.socket.getsockname()
        except OSError:
            peer = local = None
        try:
            await serve_stream(stream, self.server_factory, host_keys=self.host_keys, options=self.options,
                               login_grace_time=self.login_grace_time, on_authenticated=release,
                               delay_secret=self._delay_secret, peer_address=peer, local_address=local,
                               preamble=self.preamble)
        except* SSHError as group:
            log.info("connection from %s ended: %s", peer, group.exceptions[0])
        except* Exception:
            # one connection's failure must not take the listener down (except* also
            # catches a failure grouped with the cancellation of the connection's tasks)
            log.exception("connection from %s failed", peer)
        finally:
            release()


async def serve(server_factory: Callable[[], SSHServer], host: str | None = None, port: int = 22, *,
                host_keys: Sequence[tuple[PrivateKey, Certificate | None]], options: ConnectionOptions = ConnectionOptions(),
                login_grace_time: float = LOGIN_GRACE_TIME, max_startups: tuple[int, int, int] = (10, 30, 100),
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on host:port and serve SSH until cancelled.

    ``await nursery.start(serve, factory, "127.0.0.1", 0, host_keys=...)`` returns the
    :class:`SSHListener` (its ``port`` is the bound port).
    """
    listener = SSHListener(server_factory, host_keys=host_keys, options=options,
                           login_grace_time=login_grace_time, max_startups=max_startups)
    await listener.serve(host, port, task_status=task_status)
