"""The web application: routes and handlers, from one parsed request to one answer. No I/O.

Routes (the JSON API is what ``jumpgate signup``/``login`` speak; ``/web/`` is the browser UI)::

    GET  /v1/ping              {cluster, version, cert_ttl: {default, min, max}}
    GET  /v1/invite/<token>    {user, cluster, otp_uri, expires}
    POST /v1/signup            {token, password, otp_code} -> {ok: true}
    POST /v1/login             {user, password, otp_code, public_key, ttl}
                               -> {cert, logins, expires, host_ca, user_ca, cluster, proxy_ssh}
    GET  /web/invite/<token>   HTML: sign up (password, the TOTP QR code as SVG, a code)
    GET  /web/login, /web/nodes, /   HTML pages (/ goes to /web/nodes)
    GET  /web/static/<name>    the web_static package's files
    POST /web/api/login        {user, password, otp_code} -> {user, logins, expires} + cookie
    POST /web/api/logout       -> {ok: true}, the cookie cleared
    GET  /web/api/me           {user, logins, roles, expires}
    GET  /web/ws/nodes         WebSocket: the node list as JSON, again at every change
    GET  /web/terminal?node=N&login=L   HTML: a terminal (xterm.js)
    GET  /web/ws/terminal?node=N&login=L[&cols=C&rows=R]
                               WebSocket: a pty session on node N as L (:mod:`.terminal`)

Every business rule lives in the *service* (an ``AuthService`` in process, an ``ApiClient`` pool
to the auth service in production: same method names); this module checks the shape of
requests, maps ``AuthServiceError`` codes to status codes, and holds the browser's rules:
sessions (:mod:`.sessions`), the Origin check of every state-changing browser request and of
every WebSocket (CSRF, docs/security.md W4), the pages' headers (W6).

:meth:`WebApp.handle` never raises: failures become ``{"error": {"code", "message"}}`` (or an
error page). The credential endpoints pass a token bucket per client first (Teleport's defaults:
20 requests a minute on average, bursts of 40; W1); pages, static files and requests of a
logged-in session do not (a page load is several requests).

Request bodies and paths hold passwords, TOTP codes and invite secrets: they are never logged;
the log names the route instead.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import secrets
from urllib.parse import parse_qs
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
import trio_websocket

from ssh_proto.errors import KeyFormatError
from ssh_proto.keys import Certificate, PrivateKey, PublicKey, parse_public_line

from appliance.accounting import accounting_key
from appliance.addresses import WEB_PORT, AddressError, parse_endpoint
from appliance.api.client import ApiError
from appliance.auth.accounts import USER_CERT_TTL, USER_CERT_TTL_MAX, USER_CERT_TTL_MIN
from appliance.auth.ca import generation_of
from appliance.auth.service import AuthServiceError

from . import pages
from .limits import RateLimiter, WebLimits
from .nodes import NodeFeed
from .sessions import COOKIE_NAME, BrowserSession, SessionStore
from .static import StaticFile, load_static
from .terminal import MAX_SIZE, Resize, Terminals

__all__ = ["HTTPError", "WebApp", "WebRequest", "WebResponse", "WebUpgrade", "json_response"]

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
_WS_CLOSE_SESSION_ENDED = 4401  # private range (RFC 6455 §7.4.2): the page goes to the login


def _version() -> str:
    from appliance import __version__  # the package root; kept lazy to avoid import cycles
    return __version__


# ------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class WebRequest:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    client_ip: str
    client_port: int = 0             # the browser's; the web terminal's relay line names it


@dataclass(frozen=True, slots=True)
class WebResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    route: str = "-"                 # for the log line: never the path, which may hold a token


@dataclass(frozen=True, slots=True)
class WebUpgrade:
    """The answer that takes the connection over: the transport runs the WebSocket handshake
    and then ``run(websocket)`` (a :class:`trio_websocket.WebSocketConnection`)."""

    route: str
    run: Callable[[Any], Awaitable[None]]


class HTTPError(Exception):
    """A request that gets an error response; ``message`` is shown to the client."""

    def __init__(self, status: int, code: str, message: str,
                 headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


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


def json_response(status: int, value: Any, route: str,
                  headers: tuple[tuple[str, str], ...] = ()) -> WebResponse:
    body = json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return WebResponse(status, body, "application/json", headers, route)


def _html(body: bytes, route: str, status: int = 200) -> WebResponse:
    return WebResponse(status, body, "text/html; charset=utf-8", pages.PAGE_HEADERS, route)


def _host_header(request: WebRequest) -> str | None:
    """The Host header if it is a plain host[:port] (it is echoed into pages and origins)."""
    host = request.headers.get("host", "")
    try:
        parse_endpoint(host, WEB_PORT)
    except AddressError:
        return None
    return host


def cookie_value(request: WebRequest, name: str = COOKIE_NAME) -> str | None:
    """The value of cookie ``name`` in the request's Cookie header (RFC 6265 §5.4), if any."""
    for item in request.headers.get("cookie", "").split(";"):
        key, sep, value = item.strip().partition("=")
        if sep and key == name:
            return value.strip()
    return None


def _session_cookie(token: str, max_age: int) -> tuple[str, str]:
    # Secure + HttpOnly + SameSite=Strict; __Host- pins Path=/ and no Domain (W2).
    return ("set-cookie", f"{COOKIE_NAME}={token}; Path=/; Max-Age={max_age}; Secure; HttpOnly; "
                          "SameSite=Strict")


# ------------------------------------------------------------------------ the app


Handler = Callable[[WebRequest, dict[str, str]], Awaitable["WebResponse | WebUpgrade"]]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    name: str
    handler: Handler
    limited: bool = False       # behind the per-client token bucket (credential endpoints)


class WebApp:
    """Routes and handlers over a service object; :meth:`handle` never raises.

    ``service`` has the ``AuthService`` methods ``get_invite``, ``complete_signup``, ``login``,
    ``cluster_info`` and ``list_nodes``, called with keyword arguments (as ``ApiClient``
    needs); their ``AuthServiceError``/``ApiError`` (code, message) becomes an error response
    with the status in :data:`STATUS_BY_CODE`; 5xx codes are logged and shown as a generic 503.
    ``sessions`` holds the browser sessions, ``nodes`` the node list the UI shows.
    """

    def __init__(self, service: Any, *, proxy_ssh_addr: str, public_addr: str | None = None,
                 limits: WebLimits = WebLimits(),
                 clock: Callable[[], float] = trio.current_time,
                 sessions: SessionStore | None = None, nodes: NodeFeed | None = None,
                 static: Mapping[str, StaticFile] | None = None, terminals: Terminals | None = None) -> None:
        self._service = service
        self._proxy_ssh_addr = proxy_ssh_addr
        self._public_addr = public_addr
        self._limits = limits
        self._limiter = RateLimiter(limits.rate_per_minute, limits.rate_burst,
                                    limits.max_tracked_clients, clock)
        self.sessions = sessions if sessions is not None else SessionStore()
        self.nodes = nodes if nodes is not None else NodeFeed(service)
        self._static = static if static is not None else load_static()
        self.terminals = terminals   # None: a web role without a proxy in its process
        r = re.compile
        self._routes: tuple[_Route, ...] = (
            # /v1/ping (what a login checks before it asks for secrets) reveals nothing and costs
            # nothing: it does not draw on the bucket (W1)
            _Route("GET", r(r"/v1/ping"), "ping", self._ping),
            _Route("GET", r(r"/v1/invite/" + _TOKEN), "invite", self._invite_json, True),
            _Route("GET", r(r"/web/invite/" + _TOKEN), "invite-page", self._invite_page, True),
            _Route("POST", r(r"/v1/signup"), "signup", self._signup, True),
            _Route("POST", r(r"/v1/login"), "login", self._login, True),
            _Route("GET", r(r"/"), "root", self._root),
            _Route("GET", r(r"/web/?"), "root", self._root),
            _Route("GET", r(r"/web/login"), "login-page", self._login_page),
            _Route("GET", r(r"/web/nodes"), "nodes-page", self._nodes_page),
            _Route("GET", r(r"/web/static/(?P<name>[A-Za-z0-9_./-]{1,200})"), "static", self._static_file),
            _Route("POST", r(r"/web/api/login"), "web-login", self._web_login, True),
            _Route("POST", r(r"/web/api/logout"), "web-logout", self._web_logout),
            _Route("GET", r(r"/web/api/me"), "web-me", self._web_me),
            _Route("GET", r(r"/web/ws/nodes"), "ws-nodes", self._ws_nodes),
            _Route("GET", r(r"/web/terminal"), "terminal-page", self._terminal_page),
            _Route("GET", r(r"/web/ws/terminal"), "ws-terminal", self._ws_terminal),
        )

    async def handle(self, request: WebRequest) -> WebResponse | WebUpgrade:
        route = "-"
        try:
            found, params = self._match(request)
            route = found.name
            if found.limited:
                wait = self._limiter.retry_after(accounting_key(request.client_ip))
                if wait:
                    raise HTTPError(429, "rate_limited", "too many requests; slow down",
                                    (("retry-after", str(math.ceil(wait))),))
            with trio.fail_after(self._limits.service_timeout):
                answer = await found.handler(request, params)
            return dataclasses.replace(answer, route=route)
        except HTTPError as exc:
            return self._error(route, exc.status, exc.code, exc.message, exc.headers)
        except SERVICE_ERRORS as exc:
            return self._service_error(route, exc.code, exc.message)
        except trio.TooSlowError:
            return self._error(route, 503, "unavailable", "the auth service did not answer")
        except Exception:  # the one place where a bug becomes a 500 instead of a dead task
            log.exception("web %s: internal error", route)
            return self._error(route, 500, "internal", "internal error")

    def _match(self, request: WebRequest) -> tuple[_Route, dict[str, str]]:
        path = request.path.split("?", 1)[0]
        allowed = []
        for route in self._routes:
            found = route.pattern.fullmatch(path)
            if found and route.method == request.method:
                return route, found.groupdict()
            if found:
                allowed.append(route.method)
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
        if route.endswith("-page"):
            title = "Invite not valid" if route == "invite-page" and status in (404, 410) else "Request failed"
            return WebResponse(status, pages.error_page(title, message),
                               "text/html; charset=utf-8", headers + pages.PAGE_HEADERS, route)
        return json_response(status, {"error": {"code": code, "message": message}}, route, headers)

    # -- the browser's rules -----------------------------------------------------------

    def _origins(self, request: WebRequest) -> set[str]:
        """The origins of this service: the one the request was sent to, the public one."""
        origins = {f"https://{host}" for host in (_host_header(request), self._public_addr) if host}
        return {o[:-4] if o.endswith(":443") else o for o in origins}

    def _check_origin(self, request: WebRequest, *, required: bool) -> None:
        """CSRF (W4): a browser names the page's origin on every POST and WebSocket; refuse
        another, and (``required``) a request that names none."""
        origin = request.headers.get("origin")
        if origin is None and not required:
            return
        if origin is None or origin not in self._origins(request):
            raise HTTPError(403, "permission_denied", "cross-origin request refused")

    def _session(self, request: WebRequest) -> BrowserSession:
        session = self.sessions.get(cookie_value(request))
        if session is None:
            raise HTTPError(401, "access_denied", "not logged in, or the session has ended")
        return session

    # -- the JSON API of the command-line client -----------------------------------------

    async def _cluster(self) -> str:
        return str(_plain(await self._service.cluster_info())["cluster"])

    async def _ping(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        limits = {"default": USER_CERT_TTL, "min": USER_CERT_TTL_MIN, "max": USER_CERT_TTL_MAX}
        return json_response(200, {"cluster": await self._cluster(), "version": _version(),
                                   "cert_ttl": limits}, "ping")

    async def _invite(self, token: str, client_ip: str) -> dict[str, Any]:
        invite = _plain(await self._service.get_invite(token=token, client_ip=client_ip))
        if "cluster" not in invite:
            invite["cluster"] = await self._cluster()
        return {k: invite[k] for k in ("user", "cluster", "otp_uri", "expires")}

    async def _invite_json(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        return json_response(200, await self._invite(params["token"], request.client_ip), "invite")

    async def _signup(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        self._check_origin(request, required=False)
        body = _fields(_json_body(request), {"token": str, "password": str, "otp_code": str})
        await self._service.complete_signup(token=body["token"], password=body["password"],
                                            otp_code=body["otp_code"], client_ip=request.client_ip)
        return json_response(200, {"ok": True}, "signup")

    async def _login(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        self._check_origin(request, required=False)
        body = _fields(_json_body(request),
                       {"user": str, "password": str, "otp_code": str, "public_key": str},
                       {"ttl": int})
        blob = _public_key_blob(body["public_key"])
        result = _plain(await self._service.login(
            user=body["user"], password=body["password"], otp_code=body["otp_code"],
            public_key_blob=blob, ttl_seconds=body["ttl"], client_ip=request.client_ip))
        result["proxy_ssh"] = self._proxy_ssh_addr
        return json_response(200, result, "login")

    # -- pages ----------------------------------------------------------------------------

    async def _invite_page(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        invite = await self._invite(params["token"], request.client_ip)
        web_addr = self._public_addr or _host_header(request) or f"HOST:{WEB_PORT}"
        page = pages.invite_page(
            user=invite["user"], cluster=invite["cluster"], expires=invite["expires"],
            otp_uri=invite["otp_uri"],
            signup_command=f"jumpgate signup --proxy {web_addr} {params['token']}",
            login_command=f"jumpgate login --proxy {web_addr} --user {invite['user']}")
        return _html(page, "invite-page")

    async def _root(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        return WebResponse(303, b"", "text/plain", (("location", "/web/nodes"),))

    async def _login_page(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        return _html(pages.login_page(await self._cluster()), "login-page")

    async def _nodes_page(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        if self.sessions.get(cookie_value(request)) is None:
            return WebResponse(303, b"", "text/plain", (("location", "/web/login"),))
        return _html(pages.nodes_page(await self._cluster()), "nodes-page")

    async def _terminal_page(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        if self.sessions.get(cookie_value(request)) is None:
            return WebResponse(303, b"", "text/plain", (("location", "/web/login"),))
        nonce = secrets.token_urlsafe(18)
        return WebResponse(200, pages.terminal_page(await self._cluster(), nonce), "text/html; charset=utf-8",
                           pages.terminal_headers(nonce), "terminal-page")

    async def _static_file(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        found = self._static.get(params["name"])
        if found is None:
            raise HTTPError(404, "not_found", "no such file")
        return WebResponse(200, found.body, found.content_type, pages.PAGE_HEADERS)

    # -- browser sessions ---------------------------------------------------------------

    async def _web_login(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        """Password + code -> a new session. The check is the auth service's ``login`` (its
        lockout, refusals and audit); the certificate it signs is for a key made here, for
        this session, in memory only (W3)."""
        self._check_origin(request, required=True)
        body = _fields(_json_body(request), {"user": str, "password": str, "otp_code": str})
        key = PrivateKey.generate("ssh-ed25519")
        result = _plain(await self._service.login(
            user=body["user"], password=body["password"], otp_code=body["otp_code"],
            public_key_blob=key.public_key.blob, ttl_seconds=int(self.sessions.lifetime),
            client_ip=request.client_ip))
        cert, _ = parse_public_line(str(result["cert"]))
        if not isinstance(cert, Certificate):
            raise HTTPError(502, "protocol_error", "the auth service returned no certificate")
        # Whatever cookie came with the request is ignored: the id is new (no fixation, W3).
        token, session = self.sessions.create(
            user=str(result["user"]), logins=tuple(result["logins"]), roles=tuple(result.get("roles", ())),
            generation=generation_of(cert), cert_expires=float(result["expires"]), key=key,
            cert=str(result["cert"]))
        max_age = max(1, int(session.expires - session.created))
        return json_response(200, self._me(session), "web-login", (_session_cookie(token, max_age),))

    async def _web_logout(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        self._check_origin(request, required=True)
        self.sessions.end(cookie_value(request))
        return json_response(200, {"ok": True}, "web-logout", (_session_cookie("", 0),))

    def _me(self, session: BrowserSession) -> dict[str, Any]:
        return {"user": session.user, "logins": list(session.logins), "roles": list(session.roles),
                "expires": session.expires, "idle_timeout": self.sessions.idle}

    async def _web_me(self, request: WebRequest, params: dict[str, str]) -> WebResponse:
        return json_response(200, self._me(self._session(request)), "web-me")

    # -- WebSockets -------------------------------------------------------------------------

    def _check_websocket(self, request: WebRequest) -> BrowserSession:
        """Origin (W4), session, and a well-formed RFC 6455 §4.2.1 opening request."""
        self._check_origin(request, required=True)
        session = self._session(request)
        headers = request.headers
        if (headers.get("upgrade", "").lower() != "websocket"
                or headers.get("sec-websocket-version") != "13" or not headers.get("sec-websocket-key")):
            raise HTTPError(400, "bad_request", "this address takes a WebSocket (version 13) only")
        return session

    async def _ws_nodes(self, request: WebRequest, params: dict[str, str]) -> WebUpgrade:
        session = self._check_websocket(request)

        async def run(ws: Any) -> None:
            await self._push_nodes(ws, session)
        return WebUpgrade("ws-nodes", run)

    async def _push_nodes(self, ws: Any, session: BrowserSession) -> None:
        """Send the node list now and at every change, until the socket or the session ends
        (logout, revocation, or its idle or absolute end: the socket is not activity)."""
        sent = [0]
        with self.nodes.watching():
            while (left := self.sessions.alive(session)) > 0:
                with trio.move_on_after(left) as scope:
                    release = session.hold(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(_discard_incoming, ws, nursery.cancel_scope)
                            await self._send_nodes(ws, sent)
                    finally:
                        release()
                if not scope.cancelled_caught:
                    return  # the browser closed the socket
        await ws.aclose(_WS_CLOSE_SESSION_ENDED, "session ended")

    async def _send_nodes(self, ws: Any, sent: list[int]) -> None:
        while True:
            sent[0], nodes = await self.nodes.wait_newer(sent[0])
            await ws.send_message(json.dumps({"type": "nodes", "nodes": nodes}, separators=(",", ":")))


    async def _ws_terminal(self, request: WebRequest, params: dict[str, str]) -> WebUpgrade:
        """A terminal on a node (W11): Origin and session as every WebSocket (W4), then the
        login must be one of the session certificate's, before the upgrade."""
        session = self._check_websocket(request)
        query = _query(request)
        node, login = query.get("node", ""), query.get("login", "")
        if not _NODE_TARGET.fullmatch(node):
            raise HTTPError(400, "bad_request", "name the node: ?node=NAME&login=LOGIN")
        if login not in session.logins:
            raise HTTPError(403, "permission_denied", f"login {login[:64]!r} is not one of your logins")
        if self.terminals is None:
            raise HTTPError(503, "unavailable", "this web service runs without a proxy: no terminals here")
        size = Resize(_int_in(query.get("cols"), 80), _int_in(query.get("rows"), 24))
        terminals = self.terminals

        async def run(ws: Any) -> None:
            await self._hold(session, terminals.run(ws, session, node=node, login=login,
                                                    client=(request.client_ip, request.client_port), size=size), ws)
        return WebUpgrade("ws-terminal", run)

    async def _hold(self, session: BrowserSession, work: Awaitable[None], ws: Any) -> None:
        """``work`` under the session: cancelled when it ends (logout, revocation, expiry), the
        socket then closed with 4401 (W3)."""
        with trio.CancelScope() as scope:
            release = session.hold(scope)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_deadline, session, scope)
                    await work
                    nursery.cancel_scope.cancel()
            finally:
                release()
        if scope.cancelled_caught:
            await ws.aclose(_WS_CLOSE_SESSION_ENDED, "session ended")

    async def _watch_deadline(self, session: BrowserSession, scope: trio.CancelScope) -> None:
        while (left := self.sessions.alive(session)) > 0:
            await trio.sleep(min(left, 60.0))
        scope.cancel()


_NODE_TARGET = re.compile(r"[A-Za-z0-9_.:\[\]-]{1,253}")


def _query(request: WebRequest) -> dict[str, str]:
    """The query string's first value of each name (bounded: the request head is)."""
    _, _, query = request.path.partition("?")
    try:
        return {k: v[0] for k, v in parse_qs(query, max_num_fields=16).items()}
    except ValueError:
        raise HTTPError(400, "bad_request", "too many query parameters") from None


def _int_in(text: str | None, default: int) -> int:
    return int(text) if text is not None and text.isdigit() and 1 <= int(text) <= MAX_SIZE else default


async def _discard_incoming(ws: Any, scope: trio.CancelScope) -> None:
    """The node list takes no messages; reading them is how a close is noticed."""
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed:
        pass  # the browser left the page (1001): the push ends with it, no traceback
    finally:
        scope.cancel()
