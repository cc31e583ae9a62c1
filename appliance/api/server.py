"""The API dispatcher: requests on one ``jumpgate-api`` channel -> AuthService calls.

This module owns *who may call what*. It knows nothing of SSH authentication (that is
``appliance/auth/server.py``, which hands us an authenticated :class:`Caller`) and
nothing of business rules (that is :class:`~appliance.auth.service.AuthService`).

Rules, in the order they are applied to each request:

1. The method must be in :data:`ALLOWED` for the caller's kind (an explicit table;
   anything else is ``unknown_method`` or ``permission_denied``, and a denial is an
   audit event).
2. Parameters the server vouches for are never taken from the peer: ``actor`` (who
   asked, for the audit log), ``emitter`` (who reported an audit event), and for a
   ``join`` the ``token``, ``client_ip`` and ``session_id`` (what a re-join proof is
   bound to, docs/security.md J2), for a ``bot_join`` the ``token`` and ``client_ip``. The dispatcher fills them from the
   connection; a value the peer sent is replaced, never used (so a client that
   shares code with an in-process caller may leave ``actor`` in).
3. A node, proxy or bot acts on itself only: ``heartbeat``, ``renew_host_cert`` and
   ``renew_bot_cert`` take the caller's own name (``name`` may be left out; any other name is denied).
4. The call runs shielded from the peer going away (a join half done is worse than a
   reply nobody reads), bounded by :data:`REQUEST_TIMEOUT`.
5. :class:`AuthServiceError` becomes an error response with its code and message; any
   other exception is logged here and answered ``internal`` — never a traceback or a
   secret on the wire.

One request is handled at a time per channel; a client wanting parallelism opens more
channels. A protocol violation (bad frame, bad message) ends the channel.
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from ..auth.service import AuthService, AuthServiceError, to_wire
from .protocol import (E_BAD_REQUEST, E_INTERNAL, E_PERMISSION_DENIED, E_PROTOCOL, E_UNKNOWN_METHOD, ApiProtocolError,
                       ErrorResponse, FrameDecoder, FrameTooLarge, Request, Response, encode_error, encode_response)

__all__ = ["ALLOWED", "CALLER_KINDS", "Caller", "serve_api_channel"]

log = logging.getLogger("jumpgate.api")

RECEIVE_SIZE = 64 * 1024
#: Longest a single call may run (the password hash of a login is the slow one).
REQUEST_TIMEOUT = 60.0

#: Who may be on the other end of an API channel (how the peer authenticated, in
#: ``appliance/auth/server.py``). Not a user's roles: an ``admin`` caller is a user whose
#: certificate and record carry the ``admin`` user role.
CALLER_KINDS = ("admin", "node", "proxy", "joining", "user", "bot")

_READ_ONLY = frozenset({"cluster_info", "list_nodes", "get_node"})
#: Reading recordings: an admin sees every session, anyone else their own and those they joined
#: (the dispatcher fills ``viewer``: docs/security.md S5).
_SESSION_READS = frozenset({"list_sessions", "get_session", "read_recording_chunk", "search_sessions"})
#: What a node reports of its own sessions (the dispatcher fills ``node`` with the caller's name).
_SESSION_WRITES = frozenset({"session_started", "upload_recording_chunk", "finish_session"})
#: Which AuthService methods each kind of caller may call. Keep it explicit: a new service method
#: is reachable by nobody until it is added here.
ALLOWED: Mapping[str, frozenset[str]] = {
    # jumpgate ctl with an admin certificate
    "admin": _READ_ONLY | {
        "create_user", "list_users", "get_user", "delete_user", "reset_user", "unlock_user",
        "create_token", "list_tokens", "delete_token",
        "add_node", "update_node", "remove_node",
        "sign_user_cert", "sign_host_cert", "export_ca", "list_audit", "cluster_status",
        "create_bot", "add_bot_token", "list_bots", "delete_bot", "sign_bot_cert",
    } | _SESSION_READS,
    "node": frozenset({"heartbeat", "emit_audit", "cluster_info", "renew_host_cert"}) | _SESSION_WRITES,
    # the proxy's membership also serves the web service (signup and login pages)
    "proxy": _READ_ONLY | {"heartbeat", "emit_audit", "renew_host_cert",
                           "login", "get_invite", "complete_signup"},
    # a host with a join token, or a bot with its bot token (docs/security.md B3)
    "joining": frozenset({"join", "bot_join"}),
    # a user certificate without the admin role: the recordings of their own sessions
    "user": _SESSION_READS,
    # a bot's certificate (key id bot:<name>): renew itself (B3)
    "bot": frozenset({"renew_bot_cert", "cluster_info"}),
}

_ALL_METHODS = frozenset().union(*ALLOWED.values())
#: Parameters only the dispatcher may set (rule 2).
_SERVER_PARAMS = frozenset({"actor", "emitter", "viewer"})
_JOIN_SERVER_PARAMS = frozenset({"token", "client_ip", "session_id"})
#: What the connection fills in for each method that takes it (rule 2).
_CONNECTION_PARAMS = {"join": _JOIN_SERVER_PARAMS, "bot_join": frozenset({"token", "client_ip"}),
                      "renew_bot_cert": frozenset({"client_ip"})}
#: Methods a node, proxy or bot may only apply to itself (rule 3).
_SELF_ONLY = frozenset({"heartbeat", "renew_host_cert", "renew_bot_cert"})


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is on the other end of a channel, as SSH authentication established it.

    ``kind`` is one of :data:`CALLER_KINDS`; ``name`` the node/proxy name or the user name
    (``-join`` for a joining peer). ``join_token`` is the password a joining peer
    authenticated with; it is never printed. ``session_id`` is the SSH session identifier
    of the connection (a re-join proof signs it).
    """

    kind: str
    name: str
    client_ip: str = ""
    join_token: str = field(default="", repr=False, compare=False)
    session_id: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in CALLER_KINDS:
            raise ValueError(f"unknown caller kind {self.kind!r}")

    @property
    def actor(self) -> str:
        """How the audit log names this caller, e.g. ``user:alice`` or ``node:db1``."""
        prefix = "user" if self.kind in ("admin", "user") else self.kind
        return f"{prefix}:{self.name}"   # a bot's is bot:<name>


def _denied(message: str) -> AuthServiceError:
    return AuthServiceError(E_PERMISSION_DENIED, message)


def _bind_self(caller: Caller, method: str, params: dict[str, Any]) -> None:
    if caller.kind not in ("node", "proxy", "bot") or method not in _SELF_ONLY:
        return
    name = params.setdefault("name", caller.name)
    if name != caller.name:
        raise _denied(f"a {caller.kind} may call {method} for itself only")


def _server_params(caller: Caller, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Rules 2 and 3: the parameters actually passed to the service."""
    filled = _CONNECTION_PARAMS.get(method, frozenset())
    out = {k: v for k, v in params.items() if k not in _SERVER_PARAMS | filled}
    _bind_self(caller, method, out)
    connection = {"token": caller.join_token, "client_ip": caller.client_ip, "session_id": caller.session_id}
    out.update({name: connection[name] for name in filled})
    if method == "emit_audit":
        out["emitter"] = caller.actor
    if method in _SESSION_READS:
        out["viewer"] = "" if caller.kind == "admin" else caller.name
    if method in _SESSION_WRITES:
        out.pop("node", None)
        out["node"] = caller.name
    return out


def _bound_call(service: AuthService, method: str, params: dict[str, Any], caller: Caller):
    """The coroutine for ``service.method(**params)``; bad_request if they do not fit."""
    func = getattr(service, method)
    signature = inspect.signature(func)
    if "actor" in signature.parameters:
        params["actor"] = caller.actor
    try:
        signature.bind(**params)
    except TypeError:
        hidden = _SERVER_PARAMS | _CONNECTION_PARAMS.get(method, frozenset())
        expected = ", ".join(n for n in signature.parameters if n not in hidden)
        raise AuthServiceError(E_BAD_REQUEST, f"{method} takes parameters ({expected})") from None
    return func(**params)


async def _audit_denial(service: AuthService, caller: Caller, method: str) -> None:
    event = {"event": "auth", "user": caller.name, "success": False,
             "fields": {"reason": "permission denied", "method": method, "caller": caller.kind,
                        "client_ip": caller.client_ip}}
    try:
        await service.emit_audit(event, emitter="auth:api")
    except AuthServiceError as exc:  # the event is ours and well formed; log if not
        log.error("could not audit a denied API call: %s", exc)


async def _call(service: AuthService, caller: Caller, req: Request) -> Any:
    """Rules 1-4; returns the wire form of the result or raises AuthServiceError."""
    if req.method not in _ALL_METHODS:
        raise AuthServiceError(E_UNKNOWN_METHOD, f"no API method {req.method!r}")
    if req.method not in ALLOWED[caller.kind]:
        log.warning("denied %s to %s (%s)", req.method, caller.actor, caller.client_ip)
        await _audit_denial(service, caller, req.method)
        raise _denied(f"{req.method} is not allowed for a {caller.kind}")
    params = _server_params(caller, req.method, req.params)
    with trio.CancelScope(shield=True, deadline=trio.current_time() + REQUEST_TIMEOUT) as scope:
        result = await _bound_call(service, req.method, params, caller)
    if scope.cancelled_caught:
        raise AuthServiceError(E_INTERNAL, f"{req.method} timed out")
    return to_wire(result)


async def handle_request(service: AuthService, caller: Caller, req: Request) -> bytes:
    """One request -> the frame that answers it (never raises for a service failure)."""
    try:
        return encode_response(Response(req.id, await _call(service, caller, req)))
    except AuthServiceError as exc:
        return encode_error(ErrorResponse(req.id, exc.code, exc.message))
    except FrameTooLarge:
        return encode_error(ErrorResponse(req.id, E_INTERNAL, "the result is too large for one message"))
    except Exception:
        # A bug or an unexpected failure: the details go to our log, not to the peer.
        log.exception("API call %s from %s failed", req.method, caller.actor)
        return encode_error(ErrorResponse(req.id, E_INTERNAL, "internal error (see the auth server log)"))


async def _next_request(channel: trio.abc.ReceiveStream, decoder: FrameDecoder) -> Request | None:
    """The next request, or None at a clean end of stream."""
    while True:
        msg = decoder.next_message()
        if msg is not None:
            assert isinstance(msg, Request)  # the request decoder yields nothing else
            return msg
        data = await channel.receive_some(RECEIVE_SIZE)
        if not data:
            decoder.feed_eof()
            return None
        decoder.feed(data)


#: Calls after which the answer waits until the change is pushed to the proxies (``sync``
#: of :func:`serve_api_channel`): the inventory an admin changed is routed as it says.
SYNCED_METHODS = frozenset({"add_node", "update_node", "remove_node", "delete_user", "reset_user", "join"})


async def serve_api_channel(channel: trio.abc.Stream, identity: Caller, service: AuthService, *,
                            sync: Callable[[], Awaitable[object]] | None = None) -> None:
    """Serve requests from ``identity`` on ``channel`` until it ends.

    ``channel`` is the session channel on which the client requested the
    ``jumpgate-api`` subsystem. Returns when the peer closes the channel, breaks the
    protocol (after a last ``protocol_error`` response) or goes away. With ``sync`` (the
    change feed's :meth:`~appliance.auth.watch.ChangeFeed.sync`), a call in
    :data:`SYNCED_METHODS` is answered once its change has been pushed.
    """
    decoder = FrameDecoder.for_requests()
    try:
        while (req := await _next_request(channel, decoder)) is not None:
            reply = await handle_request(service, identity, req)
            if sync is not None and req.method in SYNCED_METHODS:
                await sync()
            try:
                await channel.send_all(reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.info("API channel of %s lost before the answer to %s", identity.actor, req.method)
                return
    except ApiProtocolError as exc:
        log.info("API protocol error from %s: %s", identity.actor, exc)
        await _send_protocol_error(channel, exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        # Between requests this is how a client that disconnects without closing the
        # channel first looks; inside one, the peer vanished mid-request.
        if decoder.pending:
            log.info("API channel of %s lost in the middle of a request", identity.actor)


async def _send_protocol_error(channel: trio.abc.Stream, exc: ApiProtocolError) -> None:
    """Tell the peer why we stop (id 0 answers no request), then let the channel close."""
    try:
        await channel.send_all(encode_error(ErrorResponse(0, E_PROTOCOL, exc.description)))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
