"""User authentication (RFC 4252, RFC 4256) as sans-IO state machines.

:class:`ServerAuth` decodes USERAUTH_REQUESTs, verifies publickey signatures itself, and
turns every decision into an event for the application, which answers with
:meth:`ServerAuth.accept`, :meth:`~ServerAuth.reject`, :meth:`~ServerAuth.pk_ok` or
:meth:`~ServerAuth.challenge`. It fixes the user name and service at the first request
(rule T12), counts failures up to ``max_attempts``, never hands the application a key that
did not sign (CVE-2024-45337), and checks that the announced algorithm matches the key
(docs/security.md C7). A refused ``none`` request counts as a failure unless it is the
connection's first request, as in OpenSSH (the probe every client starts with is free, a
stream of them is not: docs/security.md L6).

:class:`ClientAuth` encodes requests and decodes the replies that may answer them; a reply
with no request outstanding, or of the wrong kind for it, is a protocol error.

Both hold the exchange's :class:`~ssh_proto.state.AuthStep`; which message may come in
which step is the table in :mod:`.state` (``AUTH_ALLOWED``), for both ends and for what
we send as much as for what we receive.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from . import events as ev
from . import messages as m
from .errors import DisconnectReason, KeyFormatError, LocalError, ProtocolError
from .keys import Certificate, PublicKey, algorithm_matches_key, parse_public_blob
from .state import AuthStep, Role, auth_step_for_request, check_auth
from .wire import Reader, encode_bool, encode_string

SERVICE_USERAUTH = "ssh-userauth"
SERVICE_CONNECTION = "ssh-connection"
MAX_AUTH_ATTEMPTS = 6  # OpenSSH MaxAuthTries
MAX_USERNAME = 256

#: Public-key algorithms a server accepts for user authentication by default.
DEFAULT_PUBKEY_ALGORITHMS = (
    "ssh-ed25519-cert-v01@openssh.com", "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com", "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com",
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "rsa-sha2-512", "rsa-sha2-256",
)


def signed_data(session_id: bytes, username: str, service: str, algorithm: str, key_blob: bytes) -> bytes:
    """The bytes a publickey USERAUTH_REQUEST signature covers (RFC 4252 §7)."""
    return b"".join((encode_string(session_id), bytes((m.MSG_USERAUTH_REQUEST,)), encode_string(username),
                     encode_string(service), encode_string("publickey"), encode_bool(True),
                     encode_string(algorithm), encode_string(key_blob)))


def _plain_algorithm(alg: str) -> str:
    return alg.removesuffix("-cert-v01@openssh.com")


@dataclasses.dataclass(frozen=True, slots=True)
class _Pending:
    """The request the application is deciding: its method, and the key it named."""

    method: str              # "none", "publickey", "password" or "keyboard-interactive"
    algorithm: str = ""
    key: PublicKey | Certificate | None = None


class ServerAuth:
    """Server side of ssh-userauth. ``send`` queues an outgoing payload.

    ``step`` (:class:`~ssh_proto.state.AuthStep`) is where the exchange stands; which
    message the client may send in it, and which answer the application may give, is
    :data:`ssh_proto.state.AUTH_ALLOWED`'s to say. An answer off that table (accepting a
    query, a challenge with nothing pending) is a :class:`~ssh_proto.errors.LocalError`.
    """

    def __init__(self, send: Callable[[bytes], None], session_id: bytes, *,
                 methods: tuple[str, ...] = ("publickey", "password", "keyboard-interactive"),
                 max_attempts: int = MAX_AUTH_ATTEMPTS,
                 pubkey_algorithms: tuple[str, ...] = DEFAULT_PUBKEY_ALGORITHMS,
                 banner: str | None = None):
        self._send = send
        self._session_id = session_id
        self.methods = methods
        self.max_attempts = max_attempts
        self.pubkey_algorithms = pubkey_algorithms
        self.username: str | None = None
        self.service: str | None = None
        self.failures = 0
        self.requests = 0                    # USERAUTH_REQUESTs received
        self.completed: list[str] = []       # methods that gave partial success, in order
        self.used_keys: set[bytes] = set()   # keys that already gave partial success (docs/security.md C9)
        self.authenticated = False
        self.step = AuthStep.IDLE
        self._pending: _Pending | None = None
        self._prompts = 0                    # prompts of the challenge that is out
        self._banner = banner

    @property
    def decision_pending(self) -> bool:
        """Is the application to answer a request now (accept, reject, partial, pk_ok, challenge)?"""
        return self._pending is not None

    # ---- incoming ---------------------------------------------------------------------
    def receive(self, payload: bytes) -> ev.Event | None:
        after = check_auth(self.step, Role.CLIENT, payload[0], local=False)
        if payload[0] == m.MSG_USERAUTH_INFO_RESPONSE:
            return self._on_info_response(payload, after)
        req = m.UserauthRequest.decode(payload)
        self.requests += 1
        if self.step is AuthStep.CHALLENGE:
            # RFC 4256 §3.3: a new request abandons the challenge (OpenSSH does the same).
            # It counts as a failure, so challenges cannot be restarted without bound.
            self._count_failure()
        self._fix_user(req)
        self._send_banner_once()
        self.step = auth_step_for_request(req.method, req.method == "publickey" and _has_signature(req))
        return self._dispatch_method(req)

    def _dispatch_method(self, req: m.UserauthRequest) -> ev.Event | None:
        if req.method == "none":
            m.Empty.decode(req.data)
            self._pending = _Pending("none")
            return ev.AuthNone(req.username)
        if req.method not in self.methods:
            self._fail()
            return None
        if req.method == "publickey":
            return self._on_publickey(req)
        if req.method == "password":
            password = m.PasswordMethod.decode(req.data)
            if password.change:
                self._fail()  # password change is not supported
                return None
            self._pending = _Pending("password")
            return ev.AuthPassword(req.username, password.password)
        kbdint = m.KbdIntMethod.decode(req.data)  # the only other method offerable
        self._pending = _Pending("keyboard-interactive")
        return ev.AuthKbdInt(req.username, kbdint.submethods)

    def _send_banner_once(self) -> None:
        if self._banner is not None:
            self.send_banner(self._banner)
            self._banner = None

    def send_banner(self, message: str) -> None:
        """USERAUTH_BANNER (RFC 4252 §5.4): text the client shows its user, before success."""
        check_auth(self.step, Role.SERVER, m.MSG_USERAUTH_BANNER, local=True)
        self._send(m.UserauthBanner(message, b"").encode())

    def _fix_user(self, req: m.UserauthRequest) -> None:
        if len(req.username.encode()) > MAX_USERNAME or "\0" in req.username:
            raise ProtocolError("invalid user name", DisconnectReason.ILLEGAL_USER_NAME)
        if req.service != SERVICE_CONNECTION:
            raise ProtocolError(f"unknown service {req.service!r}", DisconnectReason.SERVICE_NOT_AVAILABLE)
        if self.username is None:
            self.username, self.service = req.username, req.service
        elif (req.username, req.service) != (self.username, self.service):
            raise ProtocolError("change of username or service not allowed")

    def _on_publickey(self, req: m.UserauthRequest) -> ev.Event | None:
        body = m.PublickeyMethod.decode(req.data)
        try:
            key = parse_public_blob(body.key_blob)
        except KeyFormatError:
            # An unsupported or too-weak key (ssh-dss, sk-*, RSA < 2048) is a failed attempt,
            # not a reason to drop the connection, as in OpenSSH.
            self._fail()
            return None
        alg = body.algorithm
        if alg not in self.pubkey_algorithms or not algorithm_matches_key(alg, key) or body.key_blob in self.used_keys:
            self._fail()
            return None
        if not body.has_signature:
            if body.signature:
                raise ProtocolError("trailing bytes after publickey query")
            self._pending = _Pending("publickey", alg, key)
            return ev.AuthPublicKeyQuery(req.username, key, alg)
        r = Reader(body.signature)
        signature = r.string()
        r.finish()
        data = signed_data(self._session_id, req.username, req.service, alg, body.key_blob)
        if not key.verify(signature, data, algorithms=(_plain_algorithm(alg),)):
            self._fail()
            return None
        self._pending = _Pending("publickey", alg, key)
        return ev.AuthPublicKey(req.username, key, alg)

    def _on_info_response(self, payload: bytes, after: AuthStep) -> ev.Event:
        msg = m.UserauthInfoResponse.decode(payload)
        if len(msg.responses) != self._prompts:
            raise ProtocolError("wrong number of keyboard-interactive responses")
        self.step = after
        self._pending = _Pending("keyboard-interactive")
        return ev.AuthKbdIntResponse(self.username or "", msg.responses)

    # ---- the application's answers -------------------------------------------------------
    def _answer(self, payload: bytes) -> _Pending:
        """Send the answer to the pending request, if the table allows it in this step."""
        if self._pending is None:
            raise LocalError("no authentication decision is pending")
        self.step = check_auth(self.step, Role.SERVER, payload[0], local=True)
        pending, self._pending = self._pending, None
        self._send(payload)
        return pending

    def accept(self) -> None:
        """Authentication is complete: send USERAUTH_SUCCESS (never for a query: answer it with pk_ok())."""
        self._answer(m.UserauthSuccess().encode())
        self.authenticated = True

    def partial(self, methods: tuple[str, ...] | None = None) -> None:
        """This method succeeded but more are required (RFC 4252 partial success)."""
        if self._pending is not None and (self._pending.method == "none" or self.step is AuthStep.QUERY):
            raise LocalError("only a completed method can give partial success")
        if methods is not None:
            self.methods = methods
        p = self._answer(m.UserauthFailure(self.methods, True).encode())
        if p.method == "publickey" and p.key is not None:  # a publickey request always names its key
            self.used_keys.add(p.key.blob)
        self.completed.append(p.method)

    def reject(self) -> None:
        p = self._answer(m.UserauthFailure(self.methods, False).encode())
        if p.method != "none" or self.requests > 1:
            self._count_failure()

    def pk_ok(self) -> None:
        p = self._pending
        algorithm, blob = (p.algorithm, p.key.blob) if p is not None and p.key is not None else ("", b"")
        self._answer(m.UserauthPkOk(algorithm, blob).encode())

    def challenge(self, name: str, instruction: str, prompts: tuple[tuple[str, bool], ...]) -> None:
        """Send a keyboard-interactive INFO_REQUEST; the answer arrives as AuthKbdIntResponse."""
        self._answer(m.UserauthInfoRequest(name, instruction, b"", m.encode_prompts(prompts)).encode())
        self._prompts = len(prompts)

    def _fail(self, counted: bool = True) -> None:
        """Refuse the request being received, at once (no application decision)."""
        self.step = check_auth(self.step, Role.SERVER, m.MSG_USERAUTH_FAILURE, local=True)
        self._send(m.UserauthFailure(self.methods, False).encode())
        if counted:
            self._count_failure()

    def _count_failure(self) -> None:
        self.failures += 1
        if self.failures >= self.max_attempts:
            raise ProtocolError("too many authentication failures", DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE)


def _has_signature(req: m.UserauthRequest) -> bool:
    """The has-signature boolean of a publickey request (its first byte; RFC 4252 §7)."""
    return req.data[:1] not in (b"", b"\x00")


class ClientAuth:
    """Client side of ssh-userauth: one request outstanding at a time.

    ``step`` is where the exchange stands; a request while one is outstanding, or a
    response with no prompt out, is a :class:`~ssh_proto.errors.LocalError`, and a reply
    the step does not allow (PK_OK to a password, SUCCESS to a query) a ProtocolError —
    both by :data:`ssh_proto.state.AUTH_ALLOWED`.
    """

    def __init__(self, send: Callable[[bytes], None], session_id: bytes, username: str):
        self._send = send
        self._session_id = session_id
        self.username = username
        self.step = AuthStep.IDLE
        self.authenticated = False

    def _request(self, method: str, data: bytes, step: AuthStep) -> None:
        check_auth(self.step, Role.CLIENT, m.MSG_USERAUTH_REQUEST, local=True)
        self._send(m.UserauthRequest(self.username, SERVICE_CONNECTION, method, data).encode())
        self.step = step

    def request_none(self) -> None:
        self._request("none", b"", AuthStep.REQUEST)

    def query_publickey(self, key: PublicKey | Certificate, algorithm: str) -> None:
        self._request("publickey", m.PublickeyMethod(False, algorithm, key.blob, b"").encode(), AuthStep.QUERY)

    def signed_data(self, key: PublicKey | Certificate, algorithm: str) -> bytes:
        """What a publickey request for ``key`` under ``algorithm`` must sign (RFC 4252 §7)."""
        return signed_data(self._session_id, self.username, SERVICE_CONNECTION, algorithm, key.blob)

    def request_publickey(self, key: PublicKey | Certificate, algorithm: str,
                          sign: Callable[[bytes, str], bytes] | bytes) -> None:
        """Send the signed request. ``sign(data, signature_algorithm)`` returns an SSH
        signature blob (a key's ``sign``); or pass the blob itself, made over
        :meth:`signed_data` (by an agent, asynchronously, say)."""
        signature = sign if isinstance(sign, bytes) else sign(self.signed_data(key, algorithm), _plain_algorithm(algorithm))
        body = m.PublickeyMethod(True, algorithm, key.blob, encode_string(signature)).encode()
        self._request("publickey", body, AuthStep.REQUEST)

    def request_password(self, password: str) -> None:
        self._request("password", m.PasswordMethod(False, password, b"").encode(), AuthStep.REQUEST)

    def request_kbdint(self, submethods: str = "") -> None:
        self._request("keyboard-interactive", m.KbdIntMethod(b"", submethods).encode(), AuthStep.KBDINT)

    def respond(self, responses: tuple[str, ...]) -> None:
        self.step = check_auth(self.step, Role.CLIENT, m.MSG_USERAUTH_INFO_RESPONSE, local=True)
        self._send(m.UserauthInfoResponse(tuple(responses)).encode())

    def receive(self, payload: bytes) -> ev.Event:
        t = payload[0]
        before, self.step = self.step, check_auth(self.step, Role.SERVER, t, local=False)
        if t == m.MSG_USERAUTH_BANNER:
            return ev.AuthBanner(m.UserauthBanner.decode(payload).message)
        if t == m.MSG_USERAUTH_SUCCESS:
            m.UserauthSuccess.decode(payload)
            self.authenticated = True
            return ev.AuthResult(True)
        if t == m.MSG_USERAUTH_FAILURE:
            failure = m.UserauthFailure.decode(payload)
            return ev.AuthResult(False, failure.methods, failure.partial_success)
        if before is AuthStep.QUERY:
            pk_ok = m.UserauthPkOk.decode(payload)
            return ev.AuthPkOk(pk_ok.algorithm, pk_ok.key_blob)
        info = m.UserauthInfoRequest.decode(payload)  # 60 after keyboard-interactive
        return ev.AuthInfoRequest(info.name, info.instruction, m.decode_prompts(info.prompts))
