"""ApiClient: call the auth API over SSH (``jumpgate-api`` subsystem on port 3025).

This module owns the client side of the internal API: reaching the auth server with an
identity, verifying that it *is* the auth server, and turning calls into request frames
and response frames into results or :class:`ApiError`.

Verifying the server (never trust on first use):

* ``host_ca_key=`` (the cluster host CA public key) or ``known_hosts=`` (an
  ``@cert-authority`` file or :class:`~ssh_proto.known_hosts.KnownHosts`): the server
  must present a host certificate from that CA, valid for the host name dialled
  (docs/security.md C17).
* ``ca_pin=`` (``sha256:…`` of the host CA public key blob, as in join tokens): the
  CA is taken from the certificate the server presents and must match the pin.

With the CA or the pin, the certificate's key id must also be ``auth:<name>``: nodes
and proxies hold host certificates from the same CA, and none of them may pose as the
auth server.

>>> async with ApiClient.connect("auth.example.com:3025", identity=(key, cert),
...                              host_ca_key=host_ca) as api:         # doctest: +SKIP
...     nodes = await api.list_nodes(labels={"env": "prod"})          # doctest: +SKIP

Errors: a refused call raises :class:`ApiError` with the server's code (the
AuthService codes such as ``already_used``, plus ``permission_denied``,
``unknown_method``, ``bad_request``, ``internal``); a lost or broken channel raises
``ApiError("unavailable" | "protocol_error", ...)``. Connecting raises ssh_proto's
errors (``HostKeyNotVerifiable``, ``AuthError``, ``ConnectionLost``) or ``OSError``.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

import ssh_proto
from ssh_proto.certs import validate_host_certificate
from ssh_proto.errors import CertificateError, HostKeyNotVerifiable, SSHError
from ssh_proto.keys import CERT_TYPE_HOST, Certificate, PrivateKey, PublicKey
from ssh_proto.known_hosts import KnownHosts

from ..addresses import AUTH_PORT, parse_endpoint, parse_host, parse_port
from ..auth.ca import pin_matches
from .protocol import (E_PROTOCOL, E_UNAVAILABLE, SUBSYSTEM, WATCH_SUBSYSTEM, ApiProtocolError, ErrorResponse,
                       FrameDecoder, Push, Request, Response, encode_request)

__all__ = ["ApiClient", "ApiError", "JOIN_USER", "parse_addr", "verify_auth_server"]

RECEIVE_SIZE = 64 * 1024
DEFAULT_PORT = AUTH_PORT
JOIN_USER = "-join"
_MAX_ID = 2**32 - 1


class ApiError(Exception):
    """A call failed: ``code`` is machine-readable, ``message`` one line for a person."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ApiError({self.code!r}, {self.message!r})"


def parse_addr(addr: str | tuple[str, int], default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` (:func:`appliance.addresses.parse_endpoint`) or a
    (host, port) tuple -> (host, port); ValueError (AddressError) if malformed."""
    if isinstance(addr, tuple):
        host, port = addr
        return parse_host(host), parse_port(port)
    return parse_endpoint(addr, default_port, "auth server address")


def _auth_certificate(key: PublicKey | Certificate) -> Certificate:
    if not isinstance(key, Certificate) or key.cert_type != CERT_TYPE_HOST:
        raise HostKeyNotVerifiable("the auth server did not present a host certificate")
    if not key.key_id.startswith("auth:"):
        raise HostKeyNotVerifiable(f"host certificate {key.key_id[:64]!r} is not an auth server's")
    return key


def verify_auth_server(hostname: str, *, host_ca_key: PublicKey | None = None,
                       ca_pin: str | None = None) -> Callable[[PublicKey | Certificate], None]:
    """A host key check for ssh_proto.connect: returns only for a genuine auth server.

    Exactly one of ``host_ca_key`` or ``ca_pin`` is given; one accepting path (T16).
    """
    if (host_ca_key is None) == (ca_pin is None):
        raise ValueError("give exactly one of host_ca_key or ca_pin")

    def verify(key: PublicKey | Certificate) -> None:
        cert = _auth_certificate(key)
        if ca_pin is not None and not pin_matches(ca_pin, cert.signature_key.blob):
            raise HostKeyNotVerifiable(f"the auth server's host CA {cert.signature_key.fingerprint()} "
                                       "does not match the pin in the token")
        trusted = host_ca_key if host_ca_key is not None else cert.signature_key
        try:
            validate_host_certificate(cert, hostname=hostname, trusted_cas=[trusted])
        except CertificateError as exc:
            raise HostKeyNotVerifiable(f"auth server certificate refused: {exc}") from None

    return verify


def _host_check(host: str, port: int, known_hosts: Any, host_ca_key: PublicKey | None,
                ca_pin: str | None) -> Callable[[PublicKey | Certificate], None]:
    if known_hosts is not None:
        if host_ca_key is not None or ca_pin is not None:
            raise ValueError("give one of known_hosts, host_ca_key or ca_pin")
        kh = known_hosts if isinstance(known_hosts, KnownHosts) else KnownHosts.load(known_hosts)

        def verify(key: PublicKey | Certificate) -> None:
            kh.check(host, port, _auth_certificate(key))

        return verify
    return verify_auth_server(host, host_ca_key=host_ca_key, ca_pin=ca_pin)


class CallsByName:
    """``api.list_nodes(labels=...)`` is ``api.call("list_nodes", labels=...)``; the class
    mixing this in defines ``call``."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        async def method(**params: Any) -> Any:
            return await self.call(name, **params)

        method.__name__ = name
        return method


class ApiClient(CallsByName):
    """An open API channel. Use :meth:`connect` / :meth:`connect_join`, then
    ``await api.call("method", **params)`` or ``await api.method(**params)``.

    Calls are answered in order, one at a time (concurrent callers queue). A call
    cancelled while waiting leaves the channel usable: its late answer is skipped.
    """

    def __init__(self, stream: trio.abc.Stream, connection: ssh_proto.SSHClientConnection | None = None):
        self._stream = stream
        #: The SSH connection the channel runs on (for :meth:`watch`), when known.
        self.connection = connection
        #: The SSH session identifier of the connection (what a re-join proof signs).
        self.session_id = bytes(connection.session_id or b"") if connection is not None else b""
        self._decoder = FrameDecoder.for_responses()
        self._lock = trio.Lock()
        self._last_id = 0
        self._broken: str | None = None

    # ---- connecting -----------------------------------------------------------------------
    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, addr: str | tuple[str, int], *, identity: tuple[PrivateKey, Certificate],
                      username: str | None = None, known_hosts: Any = None, host_ca_key: PublicKey | None = None,
                      ca_pin: str | None = None, connect_timeout: float = 30.0,
                      stream: trio.abc.Stream | None = None) -> AsyncIterator[ApiClient]:
        """Connect with a certificate: a node/proxy host certificate or an admin user one.

        ``username`` defaults to the name in the certificate's key id (``node:db1`` ->
        ``db1``, ``user:alice`` -> ``alice``), which is what the server expects. With
        ``stream`` (a reverse tunnel's API channel, :mod:`appliance.tunnel`) the SSH connection
        runs over it instead of a TCP connection to ``addr``, whose host is still the name the
        server's certificate must name (``auth`` through a tunnel).
        """
        key, cert = identity
        host, port = parse_addr(addr)
        verify = _host_check(host, port, known_hosts, host_ca_key, ca_pin)
        username = username or cert.key_id.partition(":")[2]
        async with ssh_proto.connect(host, port, username=username, client_keys=[(key, cert)], known_hosts=verify,
                                     connect_timeout=connect_timeout, stream=stream) as conn:
            async with cls._open(conn) as api:
                yield api

    @classmethod
    @contextlib.asynccontextmanager
    async def connect_join(cls, addr: str | tuple[str, int], token_secret: str, ca_pin: str, *,
                           connect_timeout: float = 30.0,
                           stream: trio.abc.Stream | None = None) -> AsyncIterator[ApiClient]:
        """Connect to join: password = the token's secret, server verified by the CA pin
        (over ``stream`` when given, as :meth:`connect`)."""
        host, port = parse_addr(addr)
        verify = verify_auth_server(host, ca_pin=ca_pin)
        async with ssh_proto.connect(host, port, username=JOIN_USER, password=token_secret, known_hosts=verify,
                                     connect_timeout=connect_timeout, stream=stream) as conn:
            async with cls._open(conn) as api:
                yield api

    @classmethod
    @contextlib.asynccontextmanager
    async def _open(cls, conn: ssh_proto.SSHClientConnection) -> AsyncIterator[ApiClient]:
        process = await conn.open_session(subsystem=SUBSYSTEM)
        try:
            yield cls(process, conn)
        finally:
            with trio.CancelScope(shield=True):
                with contextlib.suppress(SSHError, trio.BrokenResourceError, trio.ClosedResourceError):
                    await process.send_eof()
                await process.aclose()

    # ---- the push stream ------------------------------------------------------------------
    async def watch(self, on_push: Callable[[Push], None]) -> None:
        """Follow the auth server's push stream (a channel of its own on this connection),
        calling ``on_push`` for each push in order; returns when the server ends the stream,
        raises ApiError when it breaks."""
        if self.connection is None:
            raise ApiError(E_UNAVAILABLE, "no SSH connection to watch on")
        try:
            process = await self.connection.open_session(subsystem=WATCH_SUBSYSTEM)
        except (SSHError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ApiError(E_UNAVAILABLE, f"the push stream could not be opened: {exc}") from None
        decoder = FrameDecoder.for_pushes()
        try:
            while True:
                while (push := decoder.next_message()) is not None:
                    assert isinstance(push, Push)  # the push decoder yields nothing else
                    on_push(push)
                data = await process.receive_some(RECEIVE_SIZE)
                if not data:
                    decoder.feed_eof()
                    return
                decoder.feed(data)
        except ApiProtocolError as exc:
            raise ApiError(E_PROTOCOL, f"push stream: {exc.description}") from None
        except (SSHError, trio.BrokenResourceError, trio.ClosedResourceError):
            raise ApiError(E_UNAVAILABLE, "the push stream was lost") from None
        finally:
            with trio.CancelScope(shield=True):
                await process.aclose()

    # ---- calling --------------------------------------------------------------------------
    async def call(self, method: str, /, **params: Any) -> Any:
        """Call ``method`` with keyword ``params``; its result, or raise ApiError."""
        async with self._lock:
            if self._broken is not None:
                raise ApiError(E_UNAVAILABLE, self._broken)
            if self._last_id >= _MAX_ID:
                raise ApiError(E_UNAVAILABLE, "request ids exhausted; reconnect")
            self._last_id += 1
            request_id = self._last_id
            frame = encode_request(Request(request_id, method, params))
            await self._send(frame)
            reply = await self._receive(request_id)
        if isinstance(reply, ErrorResponse):
            raise ApiError(reply.code, reply.message)
        return reply.result

    def _break(self, reason: str) -> ApiError:
        self._broken = reason
        return ApiError(E_UNAVAILABLE, reason)

    async def _send(self, frame: bytes) -> None:
        try:
            await self._stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, SSHError):
            raise self._break("the connection to the auth server was lost") from None
        except BaseException:
            # Cancelled half way through a frame: the stream is out of step for good.
            self._broken = "an earlier call was interrupted while sending"
            raise

    async def _receive(self, request_id: int) -> Response | ErrorResponse:
        try:
            while True:
                reply = await self._next_reply()
                if reply.id == 0 and isinstance(reply, ErrorResponse):
                    self._broken = reply.message
                    raise ApiError(reply.code, reply.message)
                if reply.id == request_id:
                    return reply
                if reply.id > request_id:
                    raise ApiProtocolError("answer to a request not sent yet")
                # an answer to an earlier call that was cancelled while waiting: skip it
        except ApiProtocolError as exc:
            self._broken = f"protocol error: {exc.description}"
            raise ApiError(E_PROTOCOL, self._broken) from None

    async def _next_reply(self) -> Response | ErrorResponse:
        while True:
            reply = self._decoder.next_message()
            if reply is not None:
                assert not isinstance(reply, Request)  # the response decoder yields none
                return reply
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, SSHError):
                raise self._break("the connection to the auth server was lost") from None
            if not data:
                self._decoder.feed_eof()
                raise self._break("the auth server closed the API channel")
            self._decoder.feed(data)
