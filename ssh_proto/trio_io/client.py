"""The client: :func:`connect` and :class:`SSHClientConnection`.

``connect`` opens a TCP stream (or takes one), runs the handshake with the host-key policy
(known_hosts by default, with ``@cert-authority`` support; ``known_hosts=None`` disables
checking), authenticates, and yields a connection whose tasks live in a nursery that the
``async with`` block owns. Authentication tries, in order: public keys (certificate first
when a key has one; agent keys too), then keyboard-interactive and password when the
caller gave a password or a prompt handler. Partial success moves on to the methods the
server still asks for (e.g. certificate, then a one-time code).
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
from typing import AsyncIterator, Awaitable, Callable, Iterable, Sequence

import trio

from .. import events as ev
from .. import messages as m
from ..connection import Connection, ConnectionOptions
from ..auth import SERVICE_CONNECTION, signed_data
from ..errors import AgentError, AuthError
from ..keys import Certificate, PrivateKey, PublicKey, load_identity
from ..known_hosts import KnownHosts
from ..state import Role
from .channel import SSHChannel
from .connection import SSHConnection
from .session import RunResult, SSHProcess

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
_DEFAULT = object()

#: ``kbdint_handler(name, instruction, prompts) -> answers``; prompts are (text, echo) pairs.
KbdIntHandler = Callable[[str, str, Sequence[tuple[str, bool]]], Awaitable[Sequence[str]]]


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """A key that can sign, with the certificate to present for it (if any)."""

    public: PublicKey | Certificate
    sign: Callable[[bytes, str], bytes]   # (data, signature algorithm) -> signature blob; may be async-wrapped

    @property
    def algorithms(self) -> tuple[str, ...]:
        return self.public.signature_algorithms


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


class SSHClientConnection(SSHConnection):
    """An authenticated client connection."""

    def __init__(self, stream, core):
        super().__init__(stream, core)
        self.on_event = self._on_event
        self._remote_forwards: dict[tuple[str, int], Callable] = {}
        self.agent = None  # an agent to serve on auth-agent@openssh.com channels (forwarding)
        self._agent_forwarding_requested = False

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
                                 *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen locally; relay each accepted connection to dest through the server (ssh -L).

        Runs until cancelled; ``await nursery.start(conn.forward_local_port, ...)`` returns
        the bound port.
        """
        from .forwarding import serve_local_forward
        await serve_local_forward(self, listen_host, listen_port, dest_host, dest_port, task_status=task_status)

    async def forward_remote_port(self, listen_host: str, listen_port: int, dest_host: str, dest_port: int) -> int:
        """Ask the server to listen; relay its connections to dest from here (ssh -R). Returns the port."""
        from .forwarding import request_remote_forward
        return await request_remote_forward(self, listen_host, listen_port, dest_host, dest_port)

    async def cancel_remote_forward(self, listen_host: str, listen_port: int) -> None:
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
        channels = self.core.channels
        if event.channel_type == "forwarded-tcpip":
            await accept_forwarded_tcpip(self, event)
        elif event.channel_type == "auth-agent@openssh.com" and self._agent_forwarding_requested and self.agent:
            await accept_agent_channel(self, event)
        else:
            # rule T21: refuse what we never asked for (x11, agent without request, ...)
            channels.reject(event.channel_id, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "not requested")
        self._kick()


async def _authenticate(conn: SSHClientConnection, identities: list[Identity], password: str | None,
                        kbdint_handler: KbdIntHandler | None) -> None:
    auth = conn.core.client_auth
    events = conn.auth_events

    async def answer() -> ev.Event:
        await conn.flush()
        while True:
            try:
                event = await events.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise conn._lost_error() from None
            if not isinstance(event, (ev.AuthBanner, ev.ServiceAccepted)):
                return event

    if identities or password is not None or kbdint_handler is not None:
        # Start with what we have instead of a "none" probe: the first failure tells us
        # the server's methods anyway, and the connection is one round trip faster.
        result: ev.Event = ev.AuthResult(False, ("publickey", "keyboard-interactive", "password"))
    else:
        auth.request_none()
        result = await answer()
    tried_password = tried_kbdint = False
    pending = list(identities)
    while not result.success:
        methods = set(result.methods)
        if "publickey" in methods and pending:
            ident = pending.pop(0)
            alg = ident.algorithms[0]
            server_algs = conn.core.transport.peer_ext_info.get("server-sig-algs")
            if server_algs is not None and ident.public.key_type in ("ssh-rsa", "ssh-rsa-cert-v01@openssh.com"):
                offered = server_algs.decode().split(",")
                for a in ident.algorithms:
                    if a.removesuffix("-cert-v01@openssh.com") in offered:
                        alg = a
                        break
            # Sign here, so that an agent's asynchronous sign can be awaited (then hand over the blob).
            data = signed_data(conn.session_id, auth.username, SERVICE_CONNECTION, alg, ident.public.blob)
            try:
                signature = ident.sign(data, alg.removesuffix("-cert-v01@openssh.com"))
                if inspect.isawaitable(signature):
                    signature = await signature
            except AgentError:
                continue  # the agent refused this key: try the next one
            auth.request_publickey(ident.public, alg, lambda _data, _alg, blob=signature: blob)
        elif "password" in methods and password is not None and not tried_password and kbdint_handler is None:
            tried_password = True
            auth.request_password(password)
        elif "keyboard-interactive" in methods and not tried_kbdint and (kbdint_handler or password is not None):
            tried_kbdint = True
            auth.request_kbdint()
            result = await answer()
            while isinstance(result, ev.AuthInfoRequest):
                answers = await _kbdint_answers(result, kbdint_handler, password)
                auth.respond(tuple(answers))
                result = await answer()
            if not result.success and result.partial:
                tried_kbdint = False  # a later round may ask again
            continue
        elif "password" in methods and password is not None and not tried_password:
            tried_password = True
            auth.request_password(password)
        else:
            raise AuthError(f"authentication failed (server offers: {', '.join(result.methods) or 'nothing'})")
        result = await answer()
        if not isinstance(result, ev.AuthResult):
            raise AuthError("unexpected authentication reply")


async def _kbdint_answers(req: ev.AuthInfoRequest, handler: KbdIntHandler | None, password: str | None) -> Sequence[str]:
    if not req.prompts:
        return ()
    if handler is not None:
        answers = list(await handler(req.name, req.instruction, req.prompts))
        if len(answers) != len(req.prompts):
            raise AuthError("keyboard-interactive handler returned the wrong number of answers")
        return answers
    if len(req.prompts) == 1 and password is not None and "password" in req.prompts[0][0].lower():
        return [password]
    # A prompt we cannot answer: send empty answers so the server fails this round
    # and the next method can be tried.
    return [""] * len(req.prompts)


@contextlib.asynccontextmanager
async def connect(host: str, port: int = 22, *, username: str | None = None, client_keys: Iterable = (),
                  known_hosts=_DEFAULT, agent=None, password: str | None = None,
                  kbdint_handler: KbdIntHandler | None = None, options: ConnectionOptions = ConnectionOptions(),
                  stream: trio.abc.Stream | None = None, connect_timeout: float = 30.0,
                  host_key_alias: str | None = None) -> AsyncIterator[SSHClientConnection]:
    """Connect, verify the server, authenticate; yields an :class:`SSHClientConnection`.

    ``known_hosts`` is a path (default ``~/.ssh/known_hosts``), a :class:`KnownHosts`, a
    callable ``verify(key)`` that raises to reject, or None to disable host checking.
    ``agent`` is an :class:`~ssh_proto.agent.AgentClient` (or anything with ``identities()``
    and ``sign()``) whose keys are tried after ``client_keys``; it is also what a forwarded
    agent channel serves.
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


async def _bind_agent_session(agent, conn: SSHClientConnection) -> None:
    """Bind the agent to this session before it signs for us (session-bind@openssh.com),
    so an agent that enforces bindings can refuse signatures for other hosts. Agents
    that do not know the extension refuse it; OpenSSH carries on then, and so do we."""
    transport = conn.core.transport
    bind = getattr(agent, "bind_session", None)
    if bind is None or transport.session_signature is None:
        return
    try:
        await bind(transport.host_key, conn.session_id, transport.session_signature, is_forwarding=False)
    except AgentError:
        pass
