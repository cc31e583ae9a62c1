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
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from . import events as ev
from . import messages as m
from .errors import DisconnectReason, KeyFormatError, ProtocolError
from .keys import Certificate, PublicKey, algorithm_matches_key, parse_public_blob
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


@dataclasses.dataclass(slots=True)
class _Pending:
    method: str
    algorithm: str = ""
    key: object = None


class ServerAuth:
    """Server side of ssh-userauth. ``send`` queues an outgoing payload."""

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
        self._pending: _Pending | None = None
        self._banner = banner

    # ---- incoming ---------------------------------------------------------------------
    def receive(self, payload: bytes) -> ev.Event | None:
        if payload[0] == m.MSG_USERAUTH_INFO_RESPONSE:
            return self._on_info_response(payload)
        req = m.UserauthRequest.decode(payload)
        self.requests += 1
        if self._pending is not None:
            if self._pending.method != "keyboard-interactive-challenge":
                raise ProtocolError("authentication request while another is being decided")
            # RFC 4256 §3.3: a new request abandons the challenge (OpenSSH does the same).
            # It counts as a failure, so challenges cannot be restarted without bound.
            self._pending = None
            self._count_failure()
        self._fix_user(req)
        if self._banner is not None:
            self._send(m.UserauthBanner(self._banner, b"").encode())
            self._banner = None
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
            body = m.PasswordMethod.decode(req.data)
            if body.change:
                self._fail()  # password change is not supported
                return None
            self._pending = _Pending("password")
            return ev.AuthPassword(req.username, body.password)
        if req.method == "keyboard-interactive":
            body = m.KbdIntMethod.decode(req.data)
            self._pending = _Pending("keyboard-interactive")
            return ev.AuthKbdInt(req.username, body.submethods)
        self._fail()
        return None

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
            self._pending = _Pending("publickey-query", alg, key)
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

    def _on_info_response(self, payload: bytes) -> ev.Event:
        if self._pending is None or self._pending.method != "keyboard-interactive-challenge":
            raise ProtocolError("unexpected USERAUTH_INFO_RESPONSE")
        msg = m.UserauthInfoResponse.decode(payload)
        if len(msg.responses) != self._pending.key:
            raise ProtocolError("wrong number of keyboard-interactive responses")
        self._pending = _Pending("keyboard-interactive")
        return ev.AuthKbdIntResponse(self.username, msg.responses)

    # ---- the application's answers -------------------------------------------------------
    def _take(self, *methods: str) -> _Pending:
        p = self._pending
        if p is None or (methods and p.method not in methods):
            raise RuntimeError("no authentication decision is pending")
        self._pending = None
        return p

    def accept(self) -> None:
        """Authentication is complete: send USERAUTH_SUCCESS."""
        p = self._take()
        if p.method == "publickey-query":
            raise RuntimeError("a query cannot be accepted; answer with pk_ok()")
        self._send(m.UserauthSuccess().encode())
        self.authenticated = True

    def partial(self, methods: tuple[str, ...] | None = None) -> None:
        """This method succeeded but more are required (RFC 4252 §5.1 partial success)."""
        p = self._take("publickey", "password", "keyboard-interactive")
        if p.method == "publickey":
            self.used_keys.add(p.key.blob)
        self.completed.append(p.method)
        if methods is not None:
            self.methods = methods
        self._send(m.UserauthFailure(self.methods, True).encode())

    def reject(self) -> None:
        p = self._take()
        self._fail(counted=p.method != "none" or self.requests > 1)

    def pk_ok(self) -> None:
        p = self._take("publickey-query")
        self._send(m.UserauthPkOk(p.algorithm, p.key.blob).encode())

    def challenge(self, name: str, instruction: str, prompts: tuple[tuple[str, bool], ...]) -> None:
        """Send a keyboard-interactive INFO_REQUEST; the answer arrives as AuthKbdIntResponse."""
        self._take("keyboard-interactive")
        self._send(m.UserauthInfoRequest(name, instruction, b"", m.encode_prompts(prompts)).encode())
        self._pending = _Pending("keyboard-interactive-challenge", key=len(prompts))

    def _fail(self, counted: bool = True) -> None:
        if counted:
            self._count_failure()
        self._send(m.UserauthFailure(self.methods, False).encode())

    def _count_failure(self) -> None:
        self.failures += 1
        if self.failures >= self.max_attempts:
            raise ProtocolError("too many authentication failures", DisconnectReason.NO_MORE_AUTH_METHODS_AVAILABLE)


class ClientAuth:
    """Client side of ssh-userauth: one request outstanding at a time."""

    def __init__(self, send: Callable[[bytes], None], session_id: bytes, username: str):
        self._send = send
        self._session_id = session_id
        self.username = username
        self._pending: str | None = None
        self.authenticated = False

    def _request(self, method: str, data: bytes) -> None:
        if self._pending is not None:
            raise RuntimeError("an authentication request is already outstanding")
        self._send(m.UserauthRequest(self.username, SERVICE_CONNECTION, method, data).encode())
        self._pending = method

    def request_none(self) -> None:
        self._request("none", b"")

    def query_publickey(self, key: PublicKey | Certificate, algorithm: str) -> None:
        self._request("publickey", m.PublickeyMethod(False, algorithm, key.blob, b"").encode())
        self._pending = "publickey-query"

    def request_publickey(self, key: PublicKey | Certificate, algorithm: str, sign: Callable[[bytes, str], bytes]) -> None:
        """``sign(data, signature_algorithm)`` returns an SSH signature blob (a key or an agent)."""
        data = signed_data(self._session_id, self.username, SERVICE_CONNECTION, algorithm, key.blob)
        signature = sign(data, _plain_algorithm(algorithm))
        self._request("publickey", m.PublickeyMethod(True, algorithm, key.blob, encode_string(signature)).encode())

    def request_password(self, password: str) -> None:
        self._request("password", m.PasswordMethod(False, password, b"").encode())

    def request_kbdint(self, submethods: str = "") -> None:
        self._request("keyboard-interactive", m.KbdIntMethod(b"", submethods).encode())

    def respond(self, responses: tuple[str, ...]) -> None:
        if self._pending != "keyboard-interactive-info":
            raise RuntimeError("no keyboard-interactive prompt is outstanding")
        self._send(m.UserauthInfoResponse(tuple(responses)).encode())
        self._pending = "keyboard-interactive"

    def receive(self, payload: bytes) -> ev.Event:
        t = payload[0]
        if t == m.MSG_USERAUTH_BANNER:
            msg = m.UserauthBanner.decode(payload)
            return ev.AuthBanner(msg.message)
        pending, self._pending = self._pending, None
        if pending is None or pending == "keyboard-interactive-info":
            raise ProtocolError(f"unexpected authentication message {t}")
        if t == m.MSG_USERAUTH_SUCCESS:
            m.UserauthSuccess.decode(payload)
            self.authenticated = True
            return ev.AuthResult(True)
        if t == m.MSG_USERAUTH_FAILURE:
            msg = m.UserauthFailure.decode(payload)
            return ev.AuthResult(False, msg.methods, msg.partial_success)
        if t == m.MSG_USERAUTH_PK_OK and pending == "publickey-query":
            msg = m.UserauthPkOk.decode(payload)
            return ev.AuthPkOk(msg.algorithm, msg.key_blob)
        if t == m.MSG_USERAUTH_PK_OK and pending == "keyboard-interactive":
            msg = m.UserauthInfoRequest.decode(payload)
            self._pending = "keyboard-interactive-info"
            return ev.AuthInfoRequest(msg.name, msg.instruction, m.decode_prompts(msg.prompts))
        raise ProtocolError(f"unexpected authentication message {t}")
