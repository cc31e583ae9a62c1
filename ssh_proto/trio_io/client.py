"""The client: :func:`connect` and :class:`SSHClientConnection`.

``connect`` opens a TCP stream (or takes one), runs the handshake with the host-key policy
(known_hosts by default, with ``@cert-authority`` support; ``known_hosts=None`` disables
checking), authenticates, and yields a connection whose tasks live in a nursery that the
``async with`` block owns. What authentication tries, in which order and with which
signature algorithm, is :class:`ssh_proto.auth_plan.AuthPlan`'s decision (sans-IO); this
module carries it out: it signs (an agent's signature is awaited), asks the
keyboard-interactive handler, and feeds the plan the server's answers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
from typing import AsyncIterator, Awaitable, Callable, Iterable, Protocol, Sequence

import trio

from .. import events as ev
from .. import messages as m
from ..auth_plan import AuthPlan, GiveUp, TryKbdInt, TryPassword, TryPublicKey, kbdint_answers
from ..connection import Connection, ConnectionOptions
from ..errors import AgentError, AuthError
from ..keys import Certificate, PrivateKey, PublicKey, load_identity
from ..known_hosts import KnownHosts
from ..state import Role
from .channel import SSHChannel
from .connection import SSHConnection
from .session import RunResult, SSHProcess

log = logging.getLogger("ssh_proto.client")

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
_DEFAULT = object()

#: ``kbdint_handler(name, instruction, prompts) -> answers``; prompts are (text, echo) pairs.
KbdIntHandler = Callable[[str, str, Sequence[tuple[str, bool]]], Awaitable[Sequence[str]]]


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """A key that can sign, with the certificate to present for it (if any)."""

    public: PublicKey | Certificate
    sign: Callable[[bytes, str], bytes | Awaitable[bytes]]   # (data, signature algorithm) -> signature blob

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The signature algorithms this identity can sign with, best first."""
        return self.public.signature_algorithms


class Agent(Protocol):
    """What :func:`connect` needs of its ``agent``: the keys to try, and serving a forwarded
    agent channel (:class:`~ssh_proto.trio_io.agent.AgentClient` and
    :class:`~ssh_proto.trio_io.agent.InProcessAgent` are two). An agent that also has
    ``bind_session`` is bound to each session before it signs."""

    async def identities_for_auth(self) -> list[Identity]: ...

    async def serve_channel(self, channel: SSHChannel) -> None: ...


def identities_from(client_keys: Iterable) -> list[Identity]:
    """Turn ``client_keys`` items (paths, PrivateKey, (PrivateKey, Certificate)) into identities.

    A path loads the key and its ``PATH-cert.pub`` when present (as OpenSSH does); a
    certified key is offered with its certificate first, then as a plain key.
    """
    out: list[Identity] = []
    for item in client_keys:
        if isinstance(item, (str, os.PathLike)):
            key, cert = load_identity(os.path.expanduser(os.fspath(item)))
        elif isinstance(item, PrivateKey):
            key, cert = item, None
        else:
            key, cert = item
        if cert is not None:
            out.append(Identity(cert, key.sign))
        out.append(Identity(key.public_key, key.sign))
    return out


def host_key_policy(known_hosts, host: str, port: int):
    """Build the transport's verify_host_key callable (single accept path, rule T16)."""
    if known_hosts is None:
        return lambda key: None
    if callable(known_hosts) and not isinstance(known_hosts, KnownHosts):
        return known_hosts
    if isinstance(known_hosts, KnownHosts):
        kh = known_hosts
    else:
        kh = KnownHosts.load(os.path.expanduser(os.fspath(known_hosts)))

    def verify(key) -> None:
        kh.check(host, port, key)

    return verify


MAX_BANNERS = 8            # USERAUTH_BANNERs kept for an AuthError (a server may send any number)
MAX_BANNER_TEXT = 2000

class SSHClientConnection(SSHConnection):
    """An authenticated client connection."""

    def __init__(self, stream: trio.abc.Stream, core: Connection):
        super().__init__(stream, core)
        self.on_event = self._on_event
        self._remote_forwards: dict[tuple[str, int], tuple[str, int]] = {}  # server's (address, port) -> our destination
        self.agent: Agent | None = None  # an agent to serve on auth-agent@openssh.com channels (forwarding)
        self.auth_banners: list[str] = []  # USERAUTH_BANNER texts, kept (bounded) for AuthError
        self._agent_forwarding_requested = False
        self._accepted_types: dict[str, Callable[[SSHChannel, bytes], Awaitable[None]]] = {}

    def accept_channels(self, channel_type: str, handler: Callable[[SSHChannel, bytes], Awaitable[None]]) -> None:
        """Accept the channels of ``channel_type`` (an application's own type, such as a reverse
        tunnel's) that the server opens: ``await handler(channel, open_data)`` runs in the
        connection's nursery, and the channel is closed when it returns. Asking for a type is what
        lets it in: every other server-opened channel stays refused (docs/security.md T21).

        >>> conn.accept_channels("jumpgate-node@jumpgate", serve_one)      # doctest: +SKIP
        """
        self._accepted_types[channel_type] = handler

    # ---- sessions ---------------------------------------------------------------------
    async def open_session(self, command: str | bytes | None = None, *, subsystem: str | None = None,
                           pty: bool = False, term: str = "xterm", cols: int = 80, rows: int = 24,
                           env: dict[str, str] | None = None, agent_forwarding: bool = False) -> SSHProcess:
        """Open a session running ``command`` (or a shell, or ``subsystem``)."""
        proc = await self.open_channel("session", channel_factory=SSHProcess)
        try:
            for name, value in (env or {}).items():
                await proc.set_env(name, value)
            if agent_forwarding and self.agent is not None:
                if await proc.request_agent_forwarding():
                    self._agent_forwarding_requested = True
            if pty:
                await proc.request_pty(term, cols, rows)
            if subsystem is not None:
                await proc.subsystem(subsystem)
            elif command is None:
                await proc.shell()
            else:
                await proc.exec(command)
        except BaseException:
            await proc.aclose()
            raise
        return proc

    async def run(self, command: str | bytes, *, input: bytes = b"", pty: bool = False,
                  env: dict[str, str] | None = None, term: str = "xterm") -> RunResult:
        """Run ``command``; returns its exit status, stdout and stderr."""
        proc = await self.open_session(command, pty=pty, env=env, term=term)
        return await proc.communicate(input)

    # ---- TCP/IP forwarding (RFC 4254 §7) -------------------------------------------------
    async def open_direct_tcpip(self, host: str, port: int, orig_host: str = "127.0.0.1",
                                orig_port: int = 0) -> SSHChannel:
        """A channel connected by the server to host:port."""
        data = m.DirectTcpip(host, port, orig_host, orig_port).encode()
        return await self.open_channel("direct-tcpip", data)

    async def forward_local_port(self, listen_host: str, listen_port: int, dest_host: str, dest_port: int,
                                 *, on_open_failed=None, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen locally; relay each accepted connection to dest through the server (ssh -L).

        Runs until cancelled; ``await nursery.start(conn.forward_local_port, ...)`` returns
        the bound port. When the server refuses a connection's channel, the local connection
        is closed and ``on_open_failed(dest_host, dest_port, bound_port, ChannelOpenError)``
        is called (default: an INFO log line), so that the refusal is not silent.
        """
        from .forwarding import serve_local_forward
        await serve_local_forward(self, listen_host, listen_port, dest_host, dest_port,
                                  on_open_failed=on_open_failed, task_status=task_status)

    async def forward_remote_port(self, listen_host: str, listen_port: int, dest_host: str, dest_port: int) -> int:
        """Ask the server to listen; relay its connections to dest from here (ssh -R). Returns the port."""
        from .forwarding import request_remote_forward
        return await request_remote_forward(self, listen_host, listen_port, dest_host, dest_port)

    async def cancel_remote_forward(self, listen_host: str, listen_port: int) -> None:
        """Stop the server's listener that :meth:`forward_remote_port` opened (``cancel-tcpip-forward``)."""
        self._remote_forwards.pop((listen_host, listen_port), None)
        await self.global_request("cancel-tcpip-forward", m.TcpipForward(listen_host, listen_port).encode())

    async def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ChannelOpenRequest):
            await self._on_channel_open(event)
        elif isinstance(event, ev.GlobalRequestReceived):
            # hostkeys-00@openssh.com and others: no reply expected or failure
            if event.want_reply:
                self.core.reply_global_request(event.token, False)
                self._kick()

    async def _on_channel_open(self, event: ev.ChannelOpenRequest) -> None:
        from .forwarding import accept_agent_channel, accept_forwarded_tcpip
        if event.channel_type == "forwarded-tcpip":
            await accept_forwarded_tcpip(self, event)
        elif event.channel_type == "auth-agent@openssh.com" and self._agent_forwarding_requested and self.agent:
            await accept_agent_channel(self, event, self.agent)
        elif event.channel_type in self._accepted_types:
            channel = SSHChannel(self, event.channel_id, event.channel_type)
            self.register_channel(channel)
            self.core.accept_channel(event.channel_id)
            self.nursery.start_soon(_run_accepted, self._accepted_types[event.channel_type], channel, event.data)
        else:
            # rule T21: refuse what we never asked for (x11, agent without request, ...)
            self.core.reject_channel(event.channel_id, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "not requested")
        self._kick()


async def _run_accepted(handler: Callable[[SSHChannel, bytes], Awaitable[None]], channel: SSHChannel,
                        data: bytes) -> None:
    try:
        await handler(channel, data)
    except Exception:
        log.exception("handler of a %s channel failed", channel.channel_type)
    finally:
        await channel.aclose()


async def _authenticate(conn: SSHClientConnection, identities: list[Identity], password: str | None,
                        kbdint_handler: KbdIntHandler | None) -> None:
    """Carry out what :class:`~ssh_proto.auth_plan.AuthPlan` decides, until success or AuthError."""
    core = conn.core
    plan = AuthPlan([ident.public for ident in identities], password=password is not None,
                    kbdint_handler=kbdint_handler is not None)
    last: ev.AuthResult | None = None
    attempt = plan.next(None)
    while not isinstance(attempt, GiveUp):
        if isinstance(attempt, TryPublicKey):
            ident = identities[attempt.index]
            signature = await _sign(ident, core.auth_publickey_data(ident.public, attempt.algorithm), attempt.algorithm)
            if signature is None:  # the agent refused this key: the next one, on the same answer
                attempt = _next_attempt(plan, last, core)
                continue
            core.auth_publickey(ident.public, attempt.algorithm, signature)
        elif isinstance(attempt, TryPassword):
            # The plan was told password=(password is not None), and tries it only then.
            assert password is not None
            core.auth_password(password)
        elif isinstance(attempt, TryKbdInt):
            core.auth_kbdint()
        else:
            core.auth_none()
        last = await _auth_answer(conn, kbdint_handler, password)
        if last.success:
            return
        attempt = _next_attempt(plan, last, core)
    raise AuthError(f"authentication failed (server offers: {', '.join(attempt.methods) or 'nothing'})",
                    banners=tuple(conn.auth_banners))


def _next_attempt(plan: AuthPlan, last: ev.AuthResult | None, core: Connection):
    if last is None:
        return plan.next(None)
    return plan.next(last.methods, partial=last.partial, server_sig_algs=core.peer_extensions.get("server-sig-algs"))


async def _sign(ident: Identity, data: bytes, algorithm: str) -> bytes | None:
    """Sign here, so that an agent's asynchronous sign can be awaited; None if it refuses."""
    try:
        signature = ident.sign(data, algorithm.removesuffix("-cert-v01@openssh.com"))
        if inspect.isawaitable(signature):
            signature = await signature
    except AgentError:
        return None
    return signature


async def _auth_answer(conn: SSHClientConnection, kbdint_handler: KbdIntHandler | None,
                       password: str | None) -> ev.AuthResult:
    """The server's answer to our request, keyboard-interactive rounds answered on the way."""
    while True:
        event = await _next_auth_event(conn)
        if isinstance(event, ev.AuthResult):
            return event
        if not isinstance(event, ev.AuthInfoRequest):
            raise AuthError("unexpected authentication reply")
        conn.core.auth_respond(await _kbdint_answers(event, kbdint_handler, password))


async def _next_auth_event(conn: SSHClientConnection) -> ev.Event:
    await conn.flush()
    while True:
        try:
            event = await conn.auth_events.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise conn._lost_error() from None
        if isinstance(event, ev.AuthBanner):
            if len(conn.auth_banners) < MAX_BANNERS:
                conn.auth_banners.append(event.message[:MAX_BANNER_TEXT])
        elif not isinstance(event, ev.ServiceAccepted):
            return event


async def _kbdint_answers(req: ev.AuthInfoRequest, handler: KbdIntHandler | None, password: str | None) -> Sequence[str]:
    if handler is None or not req.prompts:
        return kbdint_answers(req.prompts, password)
    answers = list(await handler(req.name, req.instruction, req.prompts))
    if len(answers) != len(req.prompts):
        raise AuthError("keyboard-interactive handler returned the wrong number of answers")
    return answers


@contextlib.asynccontextmanager
async def connect(host: str, port: int = 22, *, username: str | None = None, client_keys: Iterable = (),
                  known_hosts=_DEFAULT, agent: Agent | None = None, password: str | None = None,
                  kbdint_handler: KbdIntHandler | None = None, options: ConnectionOptions = ConnectionOptions(),
                  stream: trio.abc.Stream | None = None, connect_timeout: float = 30.0,
                  host_key_alias: str | None = None) -> AsyncIterator[SSHClientConnection]:
    """Connect, verify the server, authenticate; yields an :class:`SSHClientConnection`.

    ``known_hosts`` is a path (default ``~/.ssh/known_hosts``), a :class:`KnownHosts`, a
    callable ``verify(key)`` that raises to reject, or None to disable host checking.
    ``agent`` (an :class:`Agent`, such as :class:`~ssh_proto.trio_io.agent.AgentClient`) gives
    the keys tried after ``client_keys``; it is also what a forwarded agent channel serves.
    """
    if username is None:
        username = os.environ.get("USER") or os.environ.get("LOGNAME") or "root"
    identities = identities_from(client_keys)
    if agent is not None:
        identities += await agent.identities_for_auth()
    if known_hosts is _DEFAULT:
        known_hosts = DEFAULT_KNOWN_HOSTS
    verify = host_key_policy(known_hosts, host_key_alias or host, port)
    with trio.fail_after(connect_timeout):
        if stream is None:
            stream = await trio.open_tcp_stream(host, port)
    core = Connection(Role.CLIENT, options, verify_host_key=verify, username=username)
    conn = SSHClientConnection(stream, core)
    conn.agent = agent
    # Errors are raised outside the nursery so callers catch AuthError, HostKeyNotVerifiable,
    # ... themselves rather than an ExceptionGroup around them.
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        await conn.start_tasks(nursery)
        try:
            with trio.fail_after(connect_timeout):
                await conn.wait_handshake()
                if agent is not None:
                    await _bind_agent_session(agent, conn)
                await _authenticate(conn, identities, password, kbdint_handler)
            yield conn
        except Exception as exc:
            error = exc
        finally:
            await conn.aclose()
    if error is not None:
        raise error


async def _bind_agent_session(agent: Agent, conn: SSHClientConnection) -> None:
    """Bind the agent to this session before it signs for us (session-bind@openssh.com),
    so an agent that enforces bindings can refuse signatures for other hosts. Agents
    that do not know the extension refuse it; OpenSSH carries on then, and so do we."""
    core = conn.core
    bind = getattr(agent, "bind_session", None)
    if bind is None or core.session_signature is None:
        return
    try:
        await bind(core.host_key, conn.session_id, core.session_signature, is_forwarding=False)
    except AgentError:
        pass
