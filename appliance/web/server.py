"""The web service: HTTPS (Trio + ``ssl`` + h11, no framework) on :3080.

Routes (the only unauthenticated endpoints of the cluster)::

    GET  /web/invite/<token>   HTML: who is invited and the `jumpgate signup` command
    GET  /v1/invite/<token>    {user, cluster, otp_uri, expires}
    POST /v1/signup            {token, password, otp_code} -> {ok: true}
    POST /v1/login             {user, password, otp_code, public_key, ttl}
                               -> {cert, logins, expires, host_ca, user_ca, cluster, proxy_ssh}
    GET  /v1/ping              {cluster, version, cert_ttl: {default, min, max}}
                               (``jumpgate login`` checks the address, the pin and --ttl
                               with it before it asks for a password)

Every business rule lives in the *service* (an ``AuthService`` in process, an ``ApiClient``
to the auth service in production: same method names). This module only speaks HTTP, checks
the shape of requests and maps ``AuthServiceError`` codes to status codes.

Theory of operation. :class:`WebApp` turns one parsed :class:`WebRequest` into one
:class:`WebResponse` and never raises: failures become ``{"error": {"code", "message"}}``.
:func:`serve_web` owns the sockets: it accepts TCP connections while fewer than
``max_handshakes`` (and ``max_handshakes_per_ip``) are in their TLS handshake, runs it
under a deadline, and then dispatches by the ALPN protocol negotiated (docs/security.md W2):
``jumpgate-tunnel`` goes to the registered tunnel handler, in the tunnel pool of
:mod:`appliance.web.tunnels` and never in the web caps; anything else (``http/1.1``, or no
ALPN) is HTTP, admitted while fewer than ``max_connections`` (and ``max_connections_per_ip``)
are open, and read with h11 (headers bounded by h11's
``max_incomplete_event_size``, bodies by ``max_body``, each request by a deadline:
RFC 9112 framing is h11's job). A token bucket per client (Teleport's defaults: 20
requests a minute on average, bursts of 40) answers 429 before the service is called.
The per-client caps and the token bucket count by the same key,
:func:`appliance.accounting.accounting_key` (an IPv6 client by its /64: docs/security.md W1).

Request bodies and paths hold passwords, TOTP codes and invite secrets: they are never
logged; the log names the route instead.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import re
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from ssh_proto.errors import KeyFormatError
from ssh_proto.keys import PublicKey, parse_public_line

from appliance.accounting import Slots, accounting_key
from appliance.addresses import WEB_PORT, AddressError, parse_endpoint
from appliance.api.client import ApiError
from appliance.auth.accounts import USER_CERT_TTL, USER_CERT_TTL_MAX, USER_CERT_TTL_MIN
from appliance.auth.service import AuthServiceError
from appliance.limits import TunnelLimits

from . import pages
from .tls import HTTP_ALPN, TUNNEL_ALPN, load_certificate, pin_of, server_ssl_context
from .tunnels import TunnelHandler, TunnelHandoff

__all__ = [
    "HTTPError",
    "RateLimiter",
    "WebApp",
    "WebEndpoint",
    "WebLimits",
    "WebRequest",
    "WebResponse",
    "serve_web",
]

log = logging.getLogger("jumpgate.web")

# Error codes of AuthService (auth.service.ERROR_CODES) and of ApiClient (api.protocol)
# -> HTTP status. Unknown codes are a server-side fault: 500.
STATUS_BY_CODE: Mapping[str, int] = {
    "bad_request": 400,
    "weak_password": 400,
    "access_denied": 401,
    "permission_denied": 403,
    "not_found": 404,
    "already_exists": 409,
    "expired": 410,
    "already_used": 410,
    "internal": 500,
    "unknown_method": 500,
    "protocol_error": 502,
    "unavailable": 503,
}
#: What the service raises: in process, and relayed from the auth service by ApiClient.
SERVICE_ERRORS = (AuthServiceError, ApiError)

_TOKEN = r"(?P<token>[A-Za-z0-9_-]{1,128}(?:\.[A-Za-z0-9_-]{1,64})?)"
_MAX_FIELD = 1024           # passwords, users, codes: far above any policy, far below max_body
_MAX_PUBLIC_KEY = 16 * 1024


def _version() -> str:
    from appliance import __version__  # the package root; kept lazy to avoid import cycles
    return __version__


# ------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class WebLimits:
    """Resource bounds of the web service (sizes in bytes, times in seconds)."""

    max_body: int = 64 * 1024
    max_header: int = 16 * 1024
    handshake_timeout: float = 10.0
    request_timeout: float = 30.0     # first byte of a request to its last byte, and the reply
    service_timeout: float = 30.0
    max_connections: int = 512        # HTTP connections (after the TLS handshake)
    max_connections_per_ip: int = 32
    # In the TLS handshake, before the ALPN protocol tells HTTP from a tunnel: a NAT address
    # in front of a fleet of nodes redialling at once must not meet the HTTP caps here.
    max_handshakes: int = 1024
    max_handshakes_per_ip: int = 256
    max_requests_per_connection: int = 100
    rate_per_minute: float = 20.0
    rate_burst: int = 40
    max_tracked_clients: int = 65536


@dataclass(frozen=True, slots=True)
class WebRequest:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    client_ip: str


@dataclass(frozen=True, slots=True)
class WebResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    route: str = "-"                 # for the log line: never the path, which may hold a token


@dataclass(frozen=True, slots=True)
class WebEndpoint:
    """What :func:`serve_web` hands to ``task_status.started``."""

    host: str
    port: int
    pin: str


class HTTPError(Exception):
    """A request that gets an error response; ``message`` is shown to the client."""

    def __init__(self, status: int, code: str, message: str,
                 headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


# ------------------------------------------------------------------- rate limiting


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


@dataclass(slots=True)
class RateLimiter:
    """Token buckets per client: ``burst`` requests at once, refilled at ``per_minute``.

    At most ``max_clients`` buckets are kept; the least recently used one is forgotten
    first (a forgotten client starts again with a full bucket, which only happens under
    a flood from more than ``max_clients`` addresses).

    >>> t = [0.0]; limiter = RateLimiter(60, 2, clock=lambda: t[0])
    >>> [limiter.retry_after("a") for _ in range(3)]
    [0.0, 0.0, 1.0]
    >>> t[0] = 1.0; limiter.retry_after("a")
    0.0
    """

    per_minute: float
    burst: int
    max_clients: int = 65536
    clock: Callable[[], float] = trio.current_time
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def retry_after(self, client: str) -> float:
        """Take one token for ``client``: 0.0 if allowed, else the seconds until allowed."""
        now, rate = self.clock(), self.per_minute / 60.0
        bucket = self._buckets.pop(client, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        self._buckets[client] = bucket
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate


# ------------------------------------------------------------------ request bodies


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_body(request: WebRequest) -> dict[str, Any]:
    """The body as a JSON object (RFC 8259), or a 415/400 HTTPError."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPError(415, "bad_request", "send the body as application/json")
    try:
        value = json.loads(request.body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HTTPError(400, "bad_request", "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise HTTPError(400, "bad_request", "the body must be a JSON object")
    return value


def _fields(body: dict[str, Any], required: Mapping[str, type],
            optional: Mapping[str, type] = {}) -> dict[str, Any]:
    """Check names and types of the body's fields; unknown fields are refused."""
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise HTTPError(400, "bad_request", f"unknown field {unknown[0][:40]!r}")
    missing = [name for name in required if body.get(name) is None]
    if missing:
        raise HTTPError(400, "bad_request", f"missing field {missing[0]!r}")
    out: dict[str, Any] = {}
    for name, kind in {**required, **optional}.items():
        value = body.get(name)
        if value is None:
            out[name] = None
            continue
        # bool is an int in Python, but not a number in a request.
        if not isinstance(value, kind) or isinstance(value, bool):
            raise HTTPError(400, "bad_request", f"field {name!r} must be a {kind.__name__}")
        limit = _MAX_PUBLIC_KEY if name == "public_key" else _MAX_FIELD
        if isinstance(value, str) and len(value) > limit:
            raise HTTPError(400, "bad_request", f"field {name!r} is too long")
        out[name] = value
    return out


def _public_key_blob(line: str) -> bytes:
    try:
        key, _ = parse_public_line(line)
    except KeyFormatError as exc:
        raise HTTPError(400, "bad_request", f"public_key: {exc}") from None
    if not isinstance(key, PublicKey):
        raise HTTPError(400, "bad_request", "public_key must be a plain key, not a certificate")
    return key.blob


def _plain(result: Any) -> dict[str, Any]:
    """A service result as a JSON-ready dict: AuthService results have ``to_wire()``,
    ApiClient results are already maps."""
    if hasattr(result, "to_wire"):
        result = result.to_wire()
    elif dataclasses.is_dataclass(result) and not isinstance(result, type):
        result = dataclasses.asdict(result)
    if isinstance(result, Mapping):
        return dict(result)
    raise TypeError(f"service returned {type(result).__name__}, expected a dict")


def _json(status: int, value: Any, route: str,
          headers: tuple[tuple[str, str], ...] = ()) -> WebResponse:
    body = json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return WebResponse(status, body, "application/json", headers, route)


# ------------------------------------------------------------------------ the app


Handler = Callable[[WebRequest, dict[str, str]], Awaitable[WebResponse]]


class WebApp:
    """Routes and handlers over a service object; :meth:`handle` never raises.

    ``service`` has the ``AuthService`` methods ``get_invite``, ``complete_signup``,
    ``login`` and ``cluster_info``, called with keyword arguments (as ``ApiClient``
    needs); their ``AuthServiceError``/``ApiError`` (code, message) becomes an error
    response with the status in :data:`STATUS_BY_CODE`; 5xx codes are logged and shown
    as a generic 503.
    """

    def __init__(self, service: Any, *, proxy_ssh_addr: str, public_addr: str | None = None,
                 limits: WebLimits = WebLimits(),
                 clock: Callable[[], float] = trio.current_time) -> None:
        self._service = service
        self._proxy_ssh_addr = proxy_ssh_addr
        self._public_addr = public_addr
        self._limits = limits
        self._limiter = RateLimiter(limits.rate_per_minute, limits.rate_burst,
                                    limits.max_tracked_clients, clock)
        self._routes: tuple[tuple[str, re.Pattern[str], str, Handler], ...] = (
            ("GET", re.compile(r"/v1/ping"), "ping", self._ping),
            ("GET", re.compile(r"/v1/invite/" + _TOKEN), "invite", self._invite_json),
            ("GET", re.compile(r"/web/invite/" + _TOKEN), "invite-page", self._invite_page),
            ("POST", re.compile(r"/v1/signup"), "signup", self._signup),
            ("POST", re.compile(r"/v1/login"), "login", self._login),
        )

    async def handle(self, request: WebRequest) -> WebResponse:
        route = "-"
        try:
            # /v1/ping (what a login checks before it asks for secrets) reveals nothing and
            # costs nothing: only the rest draws on the client's bucket (W1)
            ping = request.method == "GET" and request.path.split("?", 1)[0] == "/v1/ping"
            wait = 0.0 if ping else self._limiter.retry_after(accounting_key(request.client_ip))
            if wait:
                raise HTTPError(429, "rate_limited", "too many requests; slow down",
                                (("retry-after", str(math.ceil(wait))),))
            route, handler, params = self._match(request)
            with trio.fail_after(self._limits.service_timeout):
                response = await handler(request, params)
            return dataclasses.replace(response, route=route)
        except HTTPError as exc:
            return self._error(route, exc.status, exc.code, exc.message, exc.headers)
        except SERVICE_ERRORS as exc:
            return self._service_error(route, exc.code, exc.message)
        except trio.TooSlowError:
            return self._error(route, 503, "unavailable", "the auth service did not answer")
        except Exception:  # the one place where a bug becomes a 500 instead of a dead task
            log.exception("web %s: internal error", route)
            return self._error(route, 500, "internal", "internal error")

    def _match(self, request: WebRequest) -> tuple[str, Handler, dict[str, str]]:
        path = request.path.split("?", 1)[0]
        allowed = []
        for method, pattern, name, handler in self._routes:
            found = pattern.fullmatch(path)
            if found and method == request.method:
                return name, handler, found.groupdict()
            if found:
                allowed.append(method)
        if allowed:
            raise HTTPError(405, "method_not_allowed", "method not allowed",
                            (("allow", ", ".join(allowed)),))
        raise HTTPError(404, "not_found", "no such page")

    def _service_error(self, route: str, code: str, message: str) -> WebResponse:
        status = STATUS_BY_CODE.get(code, 500)
        if status >= 500:
            # The auth service's own failure: the operator needs it, the visitor does not.
            log.warning("web %s: auth service failed: %s: %s", route, code, message)
            code, message = "unavailable", "the auth service failed; try again later"
            status = 503
        return self._error(route, status, code, message)

    def _error(self, route: str, status: int, code: str, message: str,
               headers: tuple[tuple[str, str], ...] = ()) -> WebResponse:
        if route == "invite-page":
            title = "Invite not valid" if status in (404, 410) else "Request failed"
            return WebResponse(status, pages.error_page(title, message),
                               "text/html; charset=utf-8", headers + pages.PAGE_HEADERS, route)
        return _json(status, {"error": {"code": code, "message": message}}, route, headers)

    # -- handlers ----------------------------------------------------------------

    async def _cluster(self) -> str:
        return str(_plain(await self._service.cluster_info())["cluster"])

    async def _ping(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        limits = {"default": USER_CERT_TTL, "min": USER_CERT_TTL_MIN, "max": USER_CERT_TTL_MAX}
        return _json(200, {"cluster": await self._cluster(), "version": _version(), "cert_ttl": limits}, "ping")

    async def _invite(self, token: str, client_ip: str) -> dict[str, Any]:
        invite = _plain(await self._service.get_invite(token=token, client_ip=client_ip))
        if "cluster" not in invite:
            invite["cluster"] = await self._cluster()
        return {k: invite[k] for k in ("user", "cluster", "otp_uri", "expires")}

    async def _invite_json(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        return _json(200, await self._invite(params["token"], request.client_ip), "invite")

    async def _invite_page(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        invite = await self._invite(params["token"], request.client_ip)
        web_addr = self._public_addr or _host_header(request) or f"HOST:{WEB_PORT}"
        page = pages.invite_page(
            user=invite["user"], cluster=invite["cluster"], expires=invite["expires"],
            signup_command=f"jumpgate signup --proxy {web_addr} {params['token']}",
            login_command=f"jumpgate login --proxy {web_addr} --user {invite['user']}")
        return WebResponse(200, page, "text/html; charset=utf-8", pages.PAGE_HEADERS)

    async def _signup(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        body = _fields(_json_body(request), {"token": str, "password": str, "otp_code": str})
        await self._service.complete_signup(token=body["token"], password=body["password"],
                                            otp_code=body["otp_code"], client_ip=request.client_ip)
        return _json(200, {"ok": True}, "signup")

    async def _login(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        body = _fields(_json_body(request),
                       {"user": str, "password": str, "otp_code": str, "public_key": str},
                       {"ttl": int})
        blob = _public_key_blob(body["public_key"])
        result = _plain(await self._service.login(
            user=body["user"], password=body["password"], otp_code=body["otp_code"],
            public_key_blob=blob, ttl_seconds=body["ttl"], client_ip=request.client_ip))
        result["proxy_ssh"] = self._proxy_ssh_addr
        return _json(200, result, "login")


def _host_header(request: WebRequest) -> str | None:
    """The Host header if it is a plain host[:port] (it is echoed into the invite page)."""
    host = request.headers.get("host", "")
    try:
        parse_endpoint(host, WEB_PORT)
    except AddressError:
        return None
    return host


# --------------------------------------------------------------------- connections

_RECEIVE_SIZE = 16 * 1024
_CLOSE_GRACE = 2.0
_DRAIN_LIMIT = 1024 * 1024
_DRAIN_IDLE = 0.1
# accept() errors that mean "out of resources right now": wait, do not die (trio does the same).
_ACCEPT_RETRY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_COMMON_HEADERS = (
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("strict-transport-security", "max-age=31536000"),
)


class _RequestTooLarge(Exception):
    pass


class _HeadersTooLarge(Exception):
    pass


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))


def _header_map(request: h11.Request) -> dict[str, str]:
    # h11 lower-cases names; a repeated header keeps its first value.
    headers: dict[str, str] = {}
    for name, value in request.headers:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


async def _read_request(conn: h11.Connection, stream: trio.abc.Stream, client_ip: str,
                        limits: WebLimits) -> WebRequest | None:
    """One request, or None when the client closed the connection between requests."""
    start = await _next_event(conn, stream)
    if isinstance(start, h11.ConnectionClosed):
        return None
    assert isinstance(start, h11.Request)
    # h11 bounds only what it buffers between reads; a head that arrived whole is not.
    if len(start.target) + sum(len(n) + len(v) + 4 for n, v in start.headers) > limits.max_header:
        raise _HeadersTooLarge
    max_body = limits.max_body
    headers = _header_map(start)
    declared = headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > max_body:  # h11 already refused bad values
        raise _RequestTooLarge
    body = bytearray()
    while not isinstance(event := await _next_event(conn, stream), h11.EndOfMessage):
        body += event.data  # chunked bodies carry no Content-Length: bound them here
        if len(body) > max_body:
            raise _RequestTooLarge
    return WebRequest(start.method.decode("ascii", "replace"),
                      start.target.decode("ascii", "replace"), headers, bytes(body), client_ip)


async def _send_response(conn: h11.Connection, stream: trio.abc.Stream,
                         response: WebResponse, *, close: bool) -> None:
    headers = [("content-type", response.content_type),
               ("content-length", str(len(response.body))),
               *_COMMON_HEADERS, *response.headers]
    if close:
        headers.append(("connection", "close"))
    await stream.send_all(conn.send(h11.Response(status_code=response.status, headers=headers)))
    await stream.send_all(conn.send(h11.Data(data=response.body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _drain(stream: trio.abc.Stream) -> None:
    """Read and drop what a refused client is still sending, for a short while.

    Closing a socket with unread input makes the kernel answer with a reset, which can
    destroy the error response before the client reads it (RFC 9112 §9.6 "lingering
    close"). Stop as soon as the client falls silent: it is then reading our answer.
    """
    received = 0
    with trio.move_on_after(_CLOSE_GRACE):
        while received < _DRAIN_LIMIT:
            with trio.move_on_after(_DRAIN_IDLE) as idle:
                data = await stream.receive_some(_RECEIVE_SIZE)
            if idle.cancelled_caught or not data:
                return
            received += len(data)


def _bare_error(status: int, message: str) -> WebResponse:
    code = {400: "bad_request", 408: "timeout", 413: "too_large", 431: "too_large"}[status]
    return _json(status, {"error": {"code": code, "message": message}}, "-")


class _Server:
    """Accepts connections, bounds them, runs the TLS handshake, and then h11 over TLS for
    each HTTP connection or the tunnel hand-off for each tunnel (by ALPN)."""

    def __init__(self, app: WebApp, ssl_context: ssl.SSLContext, limits: WebLimits,
                 tunnels: TunnelHandoff | None = None) -> None:
        self._app, self._ssl_context, self._limits = app, ssl_context, limits
        self._tunnels = tunnels
        # both count by accounting key (W1)
        self._handshakes = Slots(limits.max_handshakes, limits.max_handshakes_per_ip)
        self._http = Slots(limits.max_connections, limits.max_connections_per_ip)

    async def accept_loop(self, listener: trio.SocketListener,
                          nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                    raise
                log.warning("web: accept failed (%s); retrying", errno.errorcode[exc.errno])
                await trio.sleep(0.1)
                continue
            peer = _peer_address(stream)
            source = accounting_key(peer[0])
            if not self._handshakes.take(source):
                await trio.aclose_forcefully(stream)
                continue
            nursery.start_soon(self._connection, stream, peer, source)

    async def _connection(self, tcp: trio.SocketStream, peer: tuple[str, int], source: str) -> None:
        stream = trio.SSLStream(tcp, self._ssl_context, server_side=True,
                                https_compatible=True)
        try:
            try:
                with trio.fail_after(self._limits.handshake_timeout):
                    await stream.do_handshake()
            finally:
                self._handshakes.give_back(source)
            if self._tunnels is not None and stream.selected_alpn_protocol() == TUNNEL_ALPN:
                await self._tunnels.serve(stream, peer, _local_address(tcp))   # its own pool and deadline (W2)
            else:
                await self._http_connection(stream, peer[0], source)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the client went away or was too slow: nothing to answer, nobody to tell
        except Exception:
            # A bug met by one connection must not take the whole web service down with it.
            log.exception("web %s: connection failed", peer[0])
        finally:
            await trio.aclose_forcefully(stream)

    async def _http_connection(self, stream: trio.SSLStream, client_ip: str, source: str) -> None:
        if not self._http.take(source):
            return  # closed before a byte of HTTP is read, as at accept before there were two pools
        try:
            await self._serve_requests(stream, client_ip)
            with trio.move_on_after(_CLOSE_GRACE):
                await stream.aclose()
        finally:
            self._http.give_back(source)

    async def _serve_requests(self, stream: trio.SSLStream, client_ip: str) -> None:
        limits = self._limits
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header)
        for count in range(1, limits.max_requests_per_connection + 1):
            response, close = await self._one_exchange(conn, stream, client_ip)
            if response is None:
                return
            close = close or count == limits.max_requests_per_connection
            with trio.fail_after(limits.request_timeout):
                await _send_response(conn, stream, response, close=close)
            log.info("web %s %s %d", client_ip, response.route, response.status)
            if close or conn.our_state is h11.MUST_CLOSE:
                if conn.their_state in (h11.SEND_BODY, h11.ERROR):
                    await _drain(stream)
                return
            conn.start_next_cycle()

    async def _one_exchange(self, conn: h11.Connection, stream: trio.SSLStream,
                            client_ip: str) -> tuple[WebResponse | None, bool]:
        """Read a request and produce its response; (None, True) means just close."""
        try:
            with trio.fail_after(self._limits.request_timeout):
                request = await _read_request(conn, stream, client_ip, self._limits)
        except h11.RemoteProtocolError as exc:
            if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                return None, True
            if exc.error_status_hint == 431:
                return _bare_error(431, "the request headers are too large"), True
            return _bare_error(400, "malformed HTTP request"), True
        except _HeadersTooLarge:
            return _bare_error(431, "the request headers are too large"), True
        except _RequestTooLarge:
            return _bare_error(413, f"the body is over {self._limits.max_body} bytes"), True
        except trio.TooSlowError:
            if conn.our_state is not h11.SEND_RESPONSE:
                return None, True
            return _bare_error(408, "the request took too long"), True
        if request is None:
            return None, True
        return await self._app.handle(request), False


def _peer_ip(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "?"
    return address[0] if isinstance(address, tuple) else str(address)


def _local_address(stream: trio.SocketStream) -> tuple[str, int]:
    try:
        address = stream.socket.getsockname()
    except OSError:
        return ("?", 0)
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else (str(address), 0)


def _peer_address(stream: trio.SocketStream) -> tuple[str, int]:
    """(ip, port) of the client; the IP part as :func:`_peer_ip` (which tests may replace)."""
    try:
        address = stream.socket.getpeername()
    except OSError:
        address = None
    port = address[1] if isinstance(address, tuple) else 0
    return _peer_ip(stream), port


async def serve_web(service: Any, tls_cert_path: str, tls_key_path: str, host: str | None,
                    port: int, *, proxy_ssh_addr: str, public_addr: str | None = None,
                    limits: WebLimits = WebLimits(), listeners: Sequence[trio.SocketListener] | None = None,
                    tunnel_handler: TunnelHandler | None = None, tunnel_limits: TunnelLimits = TunnelLimits(),
                    task_status: trio.TaskStatus[WebEndpoint] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the web service until cancelled.

    ``service`` has the AuthService methods named in :class:`WebApp`. ``proxy_ssh_addr``
    ("host:3023") is returned by login; ``public_addr`` ("host:3080") is what the invite
    page tells users to pass to ``--proxy`` (default: the request's Host header). Port 0
    binds a free port; ``task_status.started`` gets a :class:`WebEndpoint`.

    With ``tunnel_handler`` (the tunnel server's ``serve_tunnel_stream``) the listener also
    offers ALPN ``jumpgate-tunnel`` and hands the connections that negotiate it to the
    handler, counted by ``tunnel_limits`` (see :mod:`appliance.web.tunnels`); without one it
    speaks HTTP/1.1 only.

    >>> async def main(service):                                          # doctest: +SKIP
    ...     async with trio.open_nursery() as nursery:
    ...         web = await nursery.start(functools.partial(
    ...             serve_web, service, "tls.crt", "tls.key", "0.0.0.0", 3080,
    ...             proxy_ssh_addr="jump.example.com:3023"))
    ...         print("web on", web.port, "pin", web.pin)
    """
    alpn = (HTTP_ALPN,) if tunnel_handler is None else (HTTP_ALPN, TUNNEL_ALPN)
    context = server_ssl_context(tls_cert_path, tls_key_path, alpn)
    pin = pin_of(load_certificate(tls_cert_path))
    app = WebApp(service, proxy_ssh_addr=proxy_ssh_addr, public_addr=public_addr, limits=limits)
    tunnels = None if tunnel_handler is None else TunnelHandoff(tunnel_handler, tunnel_limits)
    server = _Server(app, context, limits, tunnels)
    if listeners is None:  # else bound beforehand by a caller that had to know the port was free
        listeners = await trio.open_tcp_listeners(port, host=host or None)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(server.accept_loop, listener, nursery)
        bound = listeners[0].socket.getsockname()
        task_status.started(WebEndpoint(bound[0], bound[1], pin))
