"""SSH agents over Trio: a client for a running agent, an in-process agent, and forwarding.

The protocol itself (messages, framing, the key store) is :mod:`ssh_proto.agent`; this
module moves its bytes:

* :class:`AgentClient` talks to an agent on a unix socket (``$SSH_AUTH_SOCK`` by default):
  OpenSSH's ssh-agent, or our own.
* :class:`InProcessAgent` is a :class:`~ssh_proto.agent.KeyStore` with the same interface,
  which can also listen on a private unix socket (:meth:`InProcessAgent.serve_unix`) for
  ``ssh-add`` and ``ssh``.
* Client side of forwarding (``auth-agent@openssh.com`` channels the server opens after
  ``open_session(agent_forwarding=True)``): ``serve_channel`` answers them. A forwarded
  agent is reachable by whoever controls the server (CVE-2023-38408 loaded code through
  one), so forwarded requests pass a filter: only listing keys, signing and session-bind
  (:data:`FORWARDABLE_REQUESTS`) reach the agent; anything else is answered FAILURE here.
* Server side of forwarding: :func:`forward_agent_to_unix_socket` listens on a private
  socket and relays each local client to the SSH client over its own channel; a node sets
  ``SSH_AUTH_SOCK`` to the returned path. A root server hands the socket to the login
  without ever following a path the login can change (:class:`_AgentSocketDirectory`).

Example::

    agent = InProcessAgent()
    await agent.add(PrivateKey.generate(), comment="alice")
    async with ssh_proto.connect(host, username="alice", agent=agent) as conn:
        proc = await conn.open_session("ssh-add -l", agent_forwarding=True)
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import secrets
import socket
import stat
import struct
from typing import TYPE_CHECKING, Awaitable, Callable

import trio

from .. import agent as proto
from ..errors import AgentError, ChannelOpenError, ProtocolError, SSHError
from ..keys import Certificate, PrivateKey, PublicKey
from .channel import SSHChannel
from .client import Identity
from .forwarding import relay

if TYPE_CHECKING:
    from .server import SSHServerConnection

__all__ = ["FORWARDABLE_REQUESTS", "AgentClient", "InProcessAgent", "forward_agent_to_unix_socket",
           "read_message", "serve_agent_forwarding"]

#: Request types a forwarded agent channel may carry: list keys, sign, extensions (session-bind).
FORWARDABLE_REQUESTS = frozenset({proto.SSH_AGENTC_REQUEST_IDENTITIES, proto.SSH_AGENTC_SIGN_REQUEST,
                                  proto.SSH_AGENTC_EXTENSION})
AGENT_CHANNEL = "auth-agent@openssh.com"
log = logging.getLogger("ssh_proto.agent")
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path on Linux, less the NUL
_FAILURE = proto.Failure().encode()


# ----------------------------------------------------------------------------- framing I/O


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes | None:
    parts: list[bytes | bytearray] = []
    while n:
        chunk = await stream.receive_some(n)
        if not chunk:
            if parts:
                raise ProtocolError("agent connection closed inside a message")
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


async def read_message(stream: trio.abc.ReceiveStream) -> bytes | None:
    """One agent message (without its length), or None at a clean end of stream.

    The length is checked (:func:`ssh_proto.agent.parse_frame_header`) before the body is read.
    """
    header = await _receive_exactly(stream, 4)
    if header is None:
        return None
    body = await _receive_exactly(stream, proto.parse_frame_header(header))
    if body is None:
        raise ProtocolError("agent connection closed inside a message")
    return body


Answer = Callable[[bytes], Awaitable[bytes]]


async def _serve_messages(stream: trio.abc.Stream, answer: Answer,
                          allowed: frozenset[int] | None = None) -> None:
    """Answer framed requests on ``stream`` until it ends; ``allowed`` filters request types."""
    try:
        while (message := await read_message(stream)) is not None:
            if allowed is not None and message[0] not in allowed:
                reply = _FAILURE
            else:
                reply = await answer(message)
            await stream.send_all(proto.frame(reply))
    except (ProtocolError, AgentError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("agent connection dropped: %s", exc)  # the peer loses it; the agent carries on
    finally:
        await trio.aclose_forcefully(stream)


# ------------------------------------------------------------------------ shared interface


class _Agent:
    """The operations both agents offer; subclasses implement ``_transact``."""

    async def _transact(self, request: bytes) -> bytes:
        raise NotImplementedError

    async def _request(self, request: proto.Request) -> proto.Response:
        return proto.decode_response(await self._transact(request.encode()))

    async def _expect_success(self, request: proto.Request, what: str) -> None:
        reply = await self._request(request)
        if not isinstance(reply, proto.Success):
            raise AgentError(f"agent refused to {what}")

    async def list_identities(self) -> list[tuple[PublicKey | Certificate, str]]:
        """(key or certificate, comment) pairs; key types we cannot use are left out."""
        reply = await self._request(proto.RequestIdentities())
        if not isinstance(reply, proto.IdentitiesAnswer):
            raise AgentError("agent refused to list its keys")
        return proto.identities_from_answer(reply)

    async def identities(self) -> list[PublicKey | Certificate]:
        """The keys and certificates the agent holds (``ssh-add -L`` without comments)."""
        return [key for key, _ in await self.list_identities()]

    async def sign(self, key: PublicKey | Certificate, data: bytes, algorithm: str | None = None) -> bytes:
        """Have the agent sign ``data`` with ``key``; returns the SSH signature blob.

        ``algorithm`` (plain or certificate name) picks rsa-sha2-256/512 for RSA keys and
        defaults to the key's best algorithm; never SHA-1. Raises :class:`AgentError` if
        the agent refuses, :class:`ProtocolError` if it signs with another algorithm.
        """
        if algorithm is None:
            algorithm = key.signature_algorithms[0]
        reply = await self._request(proto.SignRequest(key.blob, bytes(data),
                                                      proto.flags_for_algorithm(algorithm)))
        if not isinstance(reply, proto.SignResponse):
            raise AgentError(f"agent refused to sign with {key.fingerprint()}")
        proto.check_signature_algorithm(reply.signature, algorithm)
        return reply.signature

    async def add(self, private_key: PrivateKey, certificate: Certificate | None = None, comment: str = "",
                  *, lifetime: int | None = None) -> None:
        """Add a key (ADD_IDENTITY); with ``certificate``, the key is added as that certificate."""
        await self._expect_success(proto.AddIdentity(private_key, certificate, comment, lifetime),
                                   "add the key")

    async def remove(self, key: PublicKey | Certificate) -> None:
        await self._expect_success(proto.RemoveIdentity(key.blob), "remove the key")

    async def remove_all(self) -> None:
        await self._expect_success(proto.RemoveAllIdentities(), "remove all keys")

    async def bind_session(self, host_key: PublicKey | Certificate, session_id: bytes, signature: bytes,
                           *, is_forwarding: bool) -> None:
        """Send ``session-bind@openssh.com`` (PROTOCOL.agent §1) on this agent connection."""
        await self._expect_success(proto.SessionBind(host_key, session_id, signature, is_forwarding),
                                   "bind the session")

    async def identities_for_auth(self) -> list[Identity]:
        """The agent's keys as :class:`Identity` objects whose ``sign`` is asynchronous."""
        return [Identity(key, functools.partial(self.sign, key)) for key in await self.identities()]


# ------------------------------------------------------------------------------ AgentClient


class AgentClient(_Agent):
    """A connection to an agent listening on a unix socket (OpenSSH ssh-agent, or ours).

    The socket is connected on first use and kept, so session bindings made with
    :meth:`bind_session` apply to later requests; requests are serialised. Close it with
    :meth:`aclose` or ``async with``. ``forwardable`` are the request types
    :meth:`serve_channel` lets through from a forwarded channel.

    >>> async def keys():                                       # doctest: +SKIP
    ...     async with AgentClient() as agent:                  # $SSH_AUTH_SOCK
    ...         return await agent.identities()
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 forwardable: frozenset[int] = FORWARDABLE_REQUESTS):
        if path is None:
            path = os.environ.get("SSH_AUTH_SOCK")
            if not path:
                raise AgentError("no agent: SSH_AUTH_SOCK is not set")
        self.path = os.fspath(path)
        self.forwardable = forwardable
        self._stream: trio.SocketStream | None = None
        self._lock = trio.Lock()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection to the agent; idempotent."""
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def _connect(self) -> trio.SocketStream:
        try:
            return await trio.open_unix_socket(self.path)
        except OSError as exc:
            raise AgentError(f"cannot reach the agent at {self.path}: {exc.strerror or exc}") from None

    async def _transact(self, request: bytes) -> bytes:
        async with self._lock:
            if self._stream is None:
                self._stream = await self._connect()
            try:
                await self._stream.send_all(proto.frame(request))
                reply = await read_message(self._stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ProtocolError):
                await self.aclose()
                raise AgentError("the agent connection failed") from None
            if reply is None:
                await self.aclose()
                raise AgentError("the agent closed the connection")
            return reply

    async def serve_channel(self, channel: SSHChannel) -> None:
        """Answer a forwarded agent channel from this agent, on a connection of its own."""
        try:
            upstream = await self._connect()
        except AgentError:
            await channel.aclose()
            return
        async def answer(message: bytes) -> bytes:  # one request at a time: no lock needed
            await upstream.send_all(proto.frame(message))
            reply = await read_message(upstream)
            if reply is None:
                raise AgentError("the agent closed the connection")
            return reply

        try:
            await _serve_messages(channel, answer, self.forwardable)
        finally:
            await trio.aclose_forcefully(upstream)


# --------------------------------------------------------------------------- InProcessAgent


class InProcessAgent(_Agent):
    """An agent whose keys live in this process: a :class:`~ssh_proto.agent.KeyStore`.

    It has :class:`AgentClient`'s interface; each unix-socket client and each forwarded
    channel gets a connection state of its own (session bindings).

    >>> agent = InProcessAgent()                                # doctest: +SKIP
    >>> path = await nursery.start(agent.serve_unix, "/run/me/agent/sock")  # doctest: +SKIP
    """

    def __init__(self, store: proto.KeyStore | None = None, *,
                 forwardable: frozenset[int] = FORWARDABLE_REQUESTS):
        self.store = store if store is not None else proto.KeyStore()
        self.forwardable = forwardable
        self._own = proto.AgentConnection(self.store)

    async def _transact(self, request: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        return self._own.handle(request)

    async def serve_stream(self, stream: trio.abc.Stream, *, allowed: frozenset[int] | None = None) -> None:
        """Answer one client connection until it ends (``allowed`` filters request types)."""
        connection = proto.AgentConnection(self.store)

        async def answer(message: bytes) -> bytes:
            return connection.handle(message)

        await _serve_messages(stream, answer, allowed)

    async def serve_channel(self, channel: SSHChannel) -> None:
        """Answer a forwarded agent channel (filtered to :data:`FORWARDABLE_REQUESTS`)."""
        await self.serve_stream(channel, allowed=self.forwardable)

    async def serve_unix(self, path: str | os.PathLike[str], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``path`` (mode 0600, in a directory of mode 0700) until cancelled.

        A missing parent directory is created 0700; an existing one must be ours and
        closed to group and others. Connections from other users are dropped.
        ``task_status.started(path)``. The socket file is removed on exit.
        """
        path = os.fspath(path)
        _private_directory(os.path.dirname(os.path.abspath(path)), create=True)
        listener = await _listen_unix(path)
        try:
            task_status.started(path)
            await _accept_loop(listener, self.serve_stream, allowed_uids={0, os.geteuid()})
        finally:
            _quietly(os.unlink, path)


# --------------------------------------------------------------------------- unix sockets


def _private_directory(directory: str, *, create: bool) -> None:
    if create and not os.path.lexists(directory):
        os.mkdir(directory, 0o700)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise AgentError(f"{directory}: agent sockets need a directory owned by us with mode 0700")


async def _listen_unix(path: str) -> trio.SocketListener:
    """A listening socket at ``path``, mode 0600, in a directory only we may write to (the
    callers check that first, so the path cannot be redirected under us)."""
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise AgentError(f"agent socket path is too long for a unix socket: {path}")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        os.chmod(path, 0o600)  # the 0700 directory keeps others out meanwhile
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise AgentError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def _peer_uid(stream: trio.SocketStream) -> int | None:
    """The connecting process's uid (SO_PEERCRED), or None where the OS does not say."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    raw = stream.socket.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    return struct.unpack("3i", raw)[1]


async def _accept_loop(listener: trio.SocketListener, handler: Callable[[trio.SocketStream], Awaitable[None]],
                       *, allowed_uids: set[int], handler_nursery: trio.Nursery | None = None) -> None:
    async def checked(stream: trio.SocketStream) -> None:
        uid = _peer_uid(stream)
        if uid is not None and uid not in allowed_uids:
            await trio.aclose_forcefully(stream)  # like ssh-agent: only ourselves and root
            return
        await handler(stream)

    await trio.serve_listeners(checked, [listener], handler_nursery=handler_nursery)




# ---------------------------------------------------------------- server side of forwarding

AGENT_SOCKET_NAME = "agent.sock"


class _AgentSocketDirectory:
    """``DIRECTORY/agent-<random>/agent.sock`` for one forwarded agent, made safe for a root
    server that hands the socket to another account (docs/security.md F1).

    The directory belongs to the server for its whole life, so the account never has write
    permission in it and cannot rename or plant anything there; the account gets search
    permission through its group (mode 0710, group = ``owner``'s gid) and the socket itself
    (0600, owned by ``owner``). Every operation after the directory exists goes through its
    file descriptor (``dir_fd``, ``follow_symlinks=False``), and the directory is removed
    relative to its parent's descriptor: nothing the account can change is followed, at set
    up or at teardown.
    """

    def __init__(self, parent: str, owner: tuple[int, int] | None):
        self.owner = owner
        self._parent_fd: int | None = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # None once closed
        self._fd: int | None = None
        try:
            self.name = self._make_directory()
            self._fd = os.open(self.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                               dir_fd=self._parent_fd)
            st = os.fstat(self._fd)
            if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
                raise AgentError(f"{parent}/{self.name} is not a private directory of ours")
        except BaseException:
            self.remove()
            raise
        self.path = os.path.join(parent, self.name, AGENT_SOCKET_NAME)

    def _make_directory(self) -> str:
        for _ in range(16):
            name = f"agent-{secrets.token_hex(8)}"
            try:
                os.mkdir(name, 0o700, dir_fd=self._parent_fd)
                return name
            except FileExistsError:
                continue
        raise AgentError("cannot make a directory for the agent socket")

    async def listen(self) -> trio.SocketListener:
        """Bind the socket (the directory is still 0700: nobody else can reach it yet), hand
        it to ``owner``, then open the directory to ``owner``'s group for search only."""
        listener = await _listen_unix(self.path)
        try:
            self._hand_over()
        except OSError as exc:
            await listener.aclose()
            raise AgentError(f"cannot hand the agent socket to its owner: {exc.strerror or exc}") from None
        except BaseException:
            await listener.aclose()
            raise
        return listener

    def _hand_over(self) -> None:
        assert self._fd is not None
        st = os.stat(AGENT_SOCKET_NAME, dir_fd=self._fd, follow_symlinks=False)
        if not stat.S_ISSOCK(st.st_mode):  # only we can write here: this cannot happen, but never follow
            raise OSError(errno.EEXIST, "the agent socket was replaced")
        if self.owner is None:
            return
        uid, gid = self.owner
        os.chown(AGENT_SOCKET_NAME, uid, gid, dir_fd=self._fd, follow_symlinks=False)
        os.fchown(self._fd, os.geteuid(), gid)
        os.fchmod(self._fd, 0o710)

    def remove(self) -> None:
        """Unlink the socket and the directory, relative to their descriptors; never raises."""
        if self._fd is not None:
            _quietly(os.unlink, AGENT_SOCKET_NAME, dir_fd=self._fd)
            _quietly(os.close, self._fd)
            self._fd = None
            _quietly(os.rmdir, self.name, dir_fd=self._parent_fd)
        if self._parent_fd is not None:
            _quietly(os.close, self._parent_fd)
            self._parent_fd = None


def _quietly(operation: Callable[..., object], *args: object, **kwargs: object) -> None:
    try:
        operation(*args, **kwargs)
    except OSError:
        pass  # already gone: teardown carries on


async def serve_agent_forwarding(conn: "SSHServerConnection", directory: str | os.PathLike[str], *,
                                 owner: tuple[int, int] | None = None,
                                 task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on a fresh private socket under ``directory``; relay each local client to the
    SSH client over an ``auth-agent@openssh.com`` channel, until cancelled.

    ``await nursery.start(serve_agent_forwarding, conn, "/tmp")`` returns the socket path;
    cancelling the task (e.g. when the session ends) removes it. ``owner`` (uid, gid) hands
    the socket to the account that will use it; the directory stays ours (see
    :class:`_AgentSocketDirectory`). ``directory`` itself must be one the account cannot
    replace (``/tmp`` is fine: sticky). Raises :class:`AgentError` if the client did not ask
    for agent forwarding (rule T21: never open what was not asked for).
    """
    if not conn.agent_forwarding:
        raise AgentError("the client did not request agent forwarding")
    sockets = _AgentSocketDirectory(os.fspath(directory), owner)
    try:
        listener = await sockets.listen()
        allowed = {0, os.geteuid()} | ({owner[0]} if owner is not None else set())
        task_status.started(sockets.path)
        await _accept_loop(listener, functools.partial(_relay_to_client, conn), allowed_uids=allowed,
                           handler_nursery=conn.nursery)
    finally:
        sockets.remove()


async def forward_agent_to_unix_socket(conn: "SSHServerConnection", directory: str | os.PathLike[str], *,
                                       owner: tuple[int, int] | None = None) -> str:
    """:func:`serve_agent_forwarding` run by the connection itself: the socket lives (and is
    removed) with the SSH connection. Returns the path to put in ``SSH_AUTH_SOCK``."""
    return await conn.nursery.start(functools.partial(serve_agent_forwarding, conn, directory, owner=owner))


async def _relay_to_client(conn: "SSHServerConnection", stream: trio.SocketStream) -> None:
    try:
        channel = await conn.open_channel(AGENT_CHANNEL)
    except (ChannelOpenError, SSHError):
        await trio.aclose_forcefully(stream)
        return
    await relay(channel, stream)
