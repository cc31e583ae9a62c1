"""The session daemon: one per client home, for thin ``jumpgate ssh`` clients of its current profile.

It reads the profile through ``current`` (:mod:`.profiles`) at each session, and a switch of
profile (``jumpgate login``) stops it, so it never keeps serving the previous user.

:mod:`.muxclient` starts it (fork, lock, socket) and then calls :func:`serve_forever`.
:class:`MuxDaemon` accepts the thin clients on the profile's socket; for each session
request it reads the three descriptors the client passed, reloads the profile's
credentials (a new ``jumpgate login`` takes effect at once), opens a ``direct-tcpip``
channel to the node over the one authenticated proxy connection it keeps (``_ProxyLink``:
re-opened when it dies, retired when the certificate changes, probed with keepalives),
makes a fresh SSH connection to the node over it (the node authenticates and audits every
session as before), and relays the session to the client's descriptors
(:func:`.localio.relay`). The proxy hop is what the daemon saves; each node hop is new.

The daemon stops accepting (and removes its socket, so that a new one may start) when
asked to (``stop``: login, logout), when the certificate expires, or after
:data:`IDLE_TIMEOUT` without sessions; it exits once its running sessions have ended.
It logs one line per session to ``mux.log`` in the profile directory, never a secret.
"""
from __future__ import annotations

import array
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import trio

import ssh_proto
from ssh_proto.errors import ChannelError, SSHError

from ..addresses import NODE_PORT
from .localio import exit_status, relay
from .mux import (FD_COUNT, MUX_VERSION, Connect, FrameDecoder, MuxProtocolError, Resize, SessionRequest, Stop,
                  VersionMismatch, encode_frame, parse_request)
from .muxclient import Claim, peer_uid
from .profile import ClientPaths, Profile, ProfileError
from .escape import EscapeFilter
from .ssh import (CONNECT_TIMEOUT, ConnectError, Credentials, KeepAlive, connect_over, connect_proxy,
                  load_credentials, open_node_channel, resolve_target, session_lost_reason)

__all__ = ["IDLE_TIMEOUT", "MuxDaemon", "serve_forever"]

log = logging.getLogger("jumpgate.mux")

IDLE_TIMEOUT = 30 * 60.0      # ControlPersist-like: no session for this long and the daemon exits
KEEPALIVE_INTERVAL = 30.0     # probe an idle proxy connection (ServerAliveInterval)
KEEPALIVE_TIMEOUT = 15.0
REQUEST_TIMEOUT = 10.0        # a client that connects must say what it wants
BACKLOG_GRACE = 0.01          # stopping: how long the backlog may stay empty before the socket goes
EXIT_FAILURE = 255
_ANCILLARY = socket.CMSG_SPACE(FD_COUNT * array.array("i").itemsize)


def serve_forever(claim: Claim, *, idle_timeout: float = IDLE_TIMEOUT, warm_up: bool = True) -> int:
    """Run the daemon on ``claim`` (from :func:`.muxclient.claim_socket`) until it stops; 0."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    log.info("session daemon %d for %s", os.getpid(), claim.home)
    daemon = MuxDaemon(claim.home, idle_timeout=idle_timeout, warm_up=warm_up)
    try:
        trio.run(daemon.serve, trio.socket.from_stdlib_socket(claim.listener), claim.release)
    finally:
        claim.release()
    log.info("session daemon %d exits", os.getpid())
    return 0


class _ProxyLink:
    """One authenticated proxy connection, held open by a task of the daemon's nursery."""

    def __init__(self, creds: Credentials):
        self.creds = creds
        self.conn: ssh_proto.SSHClientConnection | None = None
        self.users = 0
        self._retired = False
        self._done = trio.Event()

    @property
    def usable(self) -> bool:
        return self.conn is not None and not self.conn.closed.is_set() and not self._retired

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Connect (failures raise to whoever started us), then hold the connection until done."""
        started = False
        try:
            async with connect_proxy(self.creds) as conn:
                self.conn = conn
                log.info("connected to the proxy %s:%d as %s", self.creds.proxy_host, self.creds.proxy_port,
                         self.creds.user)
                task_status.started()
                started = True
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keepalive, conn)
                    with trio.CancelScope() as scope:
                        nursery.start_soon(_cancel_when, conn.closed, scope)
                        await self._done.wait()
                    nursery.cancel_scope.cancel()
        except (SSHError, OSError) as exc:
            if not started:
                raise
            log.warning("the proxy connection ended: %s", exc)
        finally:
            self._retired = True

    async def _keepalive(self, conn: ssh_proto.SSHClientConnection) -> None:
        while True:
            await trio.sleep(KEEPALIVE_INTERVAL)
            with trio.move_on_after(KEEPALIVE_TIMEOUT) as probe:
                with contextlib.suppress(SSHError, trio.BrokenResourceError, trio.ClosedResourceError):
                    await conn.global_request("keepalive@openssh.com")
                    continue
            log.warning("the proxy connection %s; dropping it", "timed out" if probe.cancelled_caught else "broke")
            self._done.set()
            return

    def retire(self) -> None:
        """No new sessions; close once the running ones (and their node connections) end."""
        self._retired = True
        if self.users == 0:
            self._done.set()

    @contextlib.contextmanager
    def in_use(self):
        self.users += 1
        try:
            yield
        finally:
            self.users -= 1
            if self._retired and self.users == 0:
                self._done.set()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class MuxDaemon:
    """Serves thin clients on a listening socket; see the module docstring."""

    def __init__(self, home: Path, *, idle_timeout: float = IDLE_TIMEOUT, warm_up: bool = True):
        self.home = Path(home)
        self.idle_timeout = idle_timeout
        self.warm_up = warm_up   # False when ``jumpgate login`` starts us: it asks "connect" later
        self.active = 0          # sessions running
        self._clients = 0        # connections being served (sessions included)
        self._link: _ProxyLink | None = None
        self._link_lock = trio.Lock()
        self._last_activity = 0.0  # trio.current_time() once serving
        self._accepting: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._expires: float | None = None

    def stop(self) -> None:
        """Stop accepting; running sessions finish, then :meth:`serve` returns."""
        if self._accepting is not None:
            self._accepting.cancel()

    async def serve(self, listener, on_stop=lambda: None, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Accept clients on ``listener`` (a listening trio socket) until stopped, then drain.

        Stopping takes the connections already queued on the socket before letting it go
        (``on_stop``), and every client accepted is answered: a request never vanishes
        because it reached a daemon on its way out.
        """
        self._last_activity = trio.current_time()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            with trio.CancelScope() as self._accepting:
                if self.warm_up:
                    nursery.start_soon(self._warm_up)
                nursery.start_soon(self._timers)
                task_status.started()
                while True:
                    self._start_client(nursery, (await listener.accept())[0])
            while True:  # the backlog: clients that connected before we stopped
                with trio.move_on_after(BACKLOG_GRACE) as idle:
                    self._start_client(nursery, (await listener.accept())[0])
                if idle.cancelled_caught:
                    break
            on_stop()  # the socket goes now: a new daemon may start while we drain
            log.info("stopped accepting; %d session(s) to finish", self.active)
            while self._clients:
                await trio.sleep(0.05)
            if self._link is not None:
                self._link.retire()
            nursery.cancel_scope.cancel()

    def _start_client(self, nursery: trio.Nursery, sock) -> None:
        self._clients += 1
        nursery.start_soon(self._serve_client, sock)

    # ---- lifetime -----------------------------------------------------------------------
    async def _timers(self) -> None:
        """Idle timeout and certificate expiry: either stops the daemon."""
        while True:
            now = trio.current_time()
            if self.active == 0 and now - self._last_activity >= self.idle_timeout:
                log.info("idle for %.0f s", now - self._last_activity)
                break
            if self._expires is not None and time.time() >= self._expires:
                log.info("the certificate expired")
                break
            wait = self.idle_timeout - (now - self._last_activity) if self.active == 0 else self.idle_timeout
            if self._expires is not None:
                wait = min(wait, self._expires - time.time())
            await trio.sleep(max(0.05, min(wait, 60.0)))
        self.stop()

    async def _warm_up(self) -> None:
        """Connect to the proxy at once: the client that started us is waiting for a session."""
        with contextlib.suppress(ConnectError, ProfileError, SSHError, OSError, trio.TooSlowError):
            creds = self._credentials()
            if not creds.expired():  # else the session request gets (and reports) the proxy's refusal
                await self._proxy(creds)

    async def _connect_now(self, sock) -> None:
        """``connect`` (from ``jumpgate login``): the profile's current credentials, connected
        to the proxy now, so that the next session finds the proxy hop done."""
        try:
            await self._proxy(self._credentials())
        except (ConnectError, ProfileError, SSHError, OSError, trio.TooSlowError) as exc:
            await _send(sock, {"event": "error", "message": str(exc), "status": EXIT_FAILURE})
            return
        self._last_activity = trio.current_time()
        await _send(sock, {"event": "connected"})

    def _credentials(self) -> Credentials:
        creds = load_credentials(Profile.load(ClientPaths(self.home)))
        self._expires = float(creds.cert.valid_before)
        return creds

    # ---- the proxy link -------------------------------------------------------------------
    async def _proxy(self, creds: Credentials) -> _ProxyLink:
        """The usable link for ``creds``, opened (or re-opened) if needed."""
        async with self._link_lock:
            link = self._link
            if link is not None and link.usable and link.creds.cert == creds.cert and not creds.expired() and \
                    (link.creds.proxy_host, link.creds.proxy_port) == (creds.proxy_host, creds.proxy_port):
                return link  # (an expired certificate reconnects: the proxy refuses it, and audits that)
            if link is not None:
                link.retire()
            link = _ProxyLink(creds)
            await self._nursery.start(link.run)
            self._link = link
            return link

    async def _open_node_channel(self, creds: Credentials, node: str, port: int, timeout: float):
        """(link, channel) to the node; a dead proxy connection is replaced once."""
        for attempt in (1, 2):
            link = await self._proxy(creds)
            try:
                return link, await open_node_channel(link.conn, node, port, connect_timeout=timeout)
            except (SSHError, trio.BrokenResourceError, trio.ClosedResourceError):
                link.retire()
                if attempt == 2:
                    raise ConnectError("the proxy connection broke; try again") from None

    @contextlib.asynccontextmanager
    async def _node(self, creds: Credentials, node: str, login: str, port: int,
                    timeout: float = CONNECT_TIMEOUT) -> AsyncIterator[ssh_proto.SSHClientConnection]:
        link, channel = await self._open_node_channel(creds, node, port, timeout)
        with link.in_use():
            async with connect_over(channel, creds, node, login, port, connect_timeout=timeout) as conn:
                yield conn

    # ---- one client -----------------------------------------------------------------------
    async def _serve_client(self, sock) -> None:
        fds: list[int] = []
        with sock:
            try:
                if peer_uid(sock) != os.getuid():
                    log.warning("refused a client of another user")
                    return
                decoder = FrameDecoder()
                with trio.fail_after(REQUEST_TIMEOUT):
                    message = await _first_message(sock, decoder, fds)
                await self._dispatch(sock, decoder, message, fds)
            except (MuxProtocolError, trio.TooSlowError) as exc:
                log.warning("dropped a client: %s", str(exc) or "no request in time")
            except OSError as exc:
                log.warning("client connection failed: %s", exc.strerror or exc)
            except Exception:  # one client's failure must not end the others' sessions
                log.exception("a session failed")
                with contextlib.suppress(OSError):
                    await _send(sock, {"event": "error", "message": "the session daemon failed; see its log",
                                       "status": EXIT_FAILURE})
            finally:
                _close_all(fds)
                self._clients -= 1

    async def _dispatch(self, sock, decoder: FrameDecoder, message: dict, fds: list[int]) -> None:
        try:
            request = parse_request(message)
        except VersionMismatch:
            await _send(sock, {"event": "mismatch", "version": MUX_VERSION})
            return
        if isinstance(request, Stop):
            log.info("asked to stop")
            await _send(sock, {"event": "stopping"})
            self.stop()
            return
        if isinstance(request, Connect):
            await self._connect_now(sock)
            return
        if isinstance(request, Resize):
            raise MuxProtocolError("a resize before any session")
        if len(fds) != FD_COUNT:
            raise MuxProtocolError(f"a session request needs {FD_COUNT} descriptors, not {len(fds)}")
        self.active += 1
        try:
            await self._session(sock, decoder, request, fds)
        finally:
            self.active -= 1
            self._last_activity = trio.current_time()

    async def _session(self, sock, decoder: FrameDecoder, request: SessionRequest, fds: list[int]) -> None:
        try:
            creds = self._credentials()
            login, node = resolve_target(request.target, creds, request.login)
        except (ProfileError, ConnectError, ValueError) as exc:
            await _send(sock, {"event": "error", "message": str(exc), "status": 1})
            return
        try:
            status, signame = await self._run(sock, decoder, request, creds, login, node, fds)
        except ConnectError as exc:
            log.info("session to %s as %s failed: %s", node, login, exc)
            await _send(sock, {"event": "error", "message": str(exc), "status": EXIT_FAILURE})
            return
        except SSHError as exc:
            await _send(sock, {"event": "error", "message": f"connection lost: {exc}", "status": EXIT_FAILURE})
            return
        _close_all(fds)  # before "exit": a reader of the client's stdout must see EOF once it exits
        log.info("session to %s as %s ended: status %d%s", node, login, status, f" ({signame})" if signame else "")
        with contextlib.suppress(OSError):
            await _send(sock, {"event": "exit", "status": status, "signal": signame})

    async def _run(self, sock, decoder, request: SessionRequest, creds, login, node, fds):
        options = request.options
        async with self._node(creds, node, login, request.port or NODE_PORT,
                              options.connect_timeout or CONNECT_TIMEOUT) as conn:
            conn.agent = ssh_proto.AgentClient(request.agent) if request.agent else None
            try:
                try:
                    proc = await conn.open_session(request.command, pty=request.pty, term=request.term,
                                                   cols=request.cols or 80, rows=request.rows or 24, env=request.env,
                                                   agent_forwarding=conn.agent is not None)
                except ChannelError as exc:
                    raise ConnectError(f"the node refused the session: {exc}") from None
                log.info("session to %s as %s opened", node, login)
                await _send(sock, {"event": "opened"})
                keepalive = KeepAlive(conn, options.server_alive_interval, options.server_alive_count_max)
                # the escape is parsed here, where the terminal is read; ~. closes this session's node connection
                escapes = EscapeFilter(request.escape) if request.pty and request.escape is not None else None
                await relay(proc, fds, [partial(_control, sock, decoder, proc), keepalive.run], escapes=escapes,
                            disconnect=conn.aclose)
                if escapes is not None and escapes.disconnected:
                    raise ConnectError(f"Connection to {node} closed.")
                if keepalive.dead and proc.exit_status is None:
                    raise ConnectError(f"Timeout, node {node!r} not responding (ServerAliveInterval)")
                if proc.exit_status is None and proc.exit_signal is None:
                    reason = session_lost_reason(conn, getattr(conn, "carrier", None))
                    if reason:
                        raise ConnectError(f"the session ended: {reason}")
                return exit_status(proc)
            finally:
                if conn.agent is not None:
                    await conn.agent.aclose()


async def _control(sock, decoder: FrameDecoder, proc: ssh_proto.SSHProcess) -> None:
    """Window changes from the client; the client hanging up (or misbehaving) ends the session."""
    try:
        while data := await sock.recv(4096):
            for message in decoder.feed(data):
                request = parse_request(message)
                if not isinstance(request, Resize):
                    raise MuxProtocolError("only resize requests during a session")
                with contextlib.suppress(ChannelError, trio.BrokenResourceError):
                    await proc.resize(request.cols, request.rows)
    except (MuxProtocolError, OSError) as exc:
        log.warning("client broke the session protocol: %s", exc)
    await proc.aclose()  # the client is gone: hang up, as ssh's exit would


async def _first_message(sock, decoder: FrameDecoder, fds: list[int]) -> dict:
    """Read until one whole frame, collecting the descriptors passed with it."""
    while True:
        data, ancdata, flags, _ = await sock.recvmsg(65536, _ANCILLARY, socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[:len(payload) - len(payload) % received.itemsize])
                fds.extend(received)
        if flags & socket.MSG_CTRUNC:
            raise MuxProtocolError("too many descriptors")
        if not data:
            raise MuxProtocolError("the client hung up before its request")
        messages = decoder.feed(data)
        if messages:
            if len(messages) > 1:
                raise MuxProtocolError("a second request before the answer to the first")
            return messages[0]


async def _send(sock, message: dict) -> None:
    data = encode_frame(message)
    while data:
        data = data[await sock.send(data):]


def _close_all(fds: list[int]) -> None:
    while fds:
        with contextlib.suppress(OSError):
            os.close(fds.pop())

