"""Browser sessions: server-side, short-lived, revocable; the cookie holds only a random id.

A person logs in to the web UI with the same call as ``jumpgate login``: the auth service's
``login`` (password + TOTP, its lockout, its one-answer refusals and its audit:
docs/security.md A2-A6), for a key pair the web role makes for this browser session and keeps
in memory only. What comes back is a short-lived user certificate; the session is that key,
that certificate, and the facts the UI needs (user, logins, roles, the certificate's
generation). The browser gets a cookie with a random 256-bit id and nothing else; the store
keeps the SHA-256 of the id, so a copy of the store's memory does not hold a usable cookie.

Rules (docs/security.md W2-W6):

* a session ends at logout, after ``idle`` seconds without a request, at ``lifetime`` seconds
  or when its certificate expires (whichever is first), and when the push stream says its
  user was deleted or reset (the certificate's generation is older than the user's): each
  session is registered in :class:`~appliance.cluster_view.LiveSessions` with its generation,
  as an SSH connection is;
* ids are made here only: a login always makes a new one, whatever cookie it came with (no
  fixation); an unknown id is never adopted;
* a session's WebSockets run under cancel scopes the session holds: ending the session cancels
  them.

The clock is the wall clock (certificates expire in wall time) and is injectable.

>>> t = [1000.0]
>>> store = SessionStore(idle=60, lifetime=3600, clock=lambda: t[0])
>>> token, session = store.create(user="alice", logins=("alice",), roles=(), generation=1,
...                               cert_expires=5000.0, key=None, cert="")
>>> store.get(token).user
'alice'
>>> t[0] += 61; store.get(token) is None
True
"""
from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

__all__ = ["BrowserSession", "SessionStore", "IDLE_TIMEOUT", "SESSION_LIFETIME", "COOKIE_NAME"]

#: Teleport's web UI signs out after idle time too; 30 min is OWASP's upper bound for
#: low-risk applications, and this one opens root shells: 15 min.
IDLE_TIMEOUT = 15 * 60
#: At most one working day; the certificate is issued for this long.
SESSION_LIFETIME = 8 * 3600
MAX_SESSIONS = 10_000
#: ``__Host-``: the browser takes it only with Secure, Path=/ and no Domain (RFC 6265bis §4.1.3.2).
COOKIE_NAME = "__Host-jumpgate-session"
_ID_BYTES = 32


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


@dataclass(eq=False, slots=True)
class BrowserSession:
    """One logged-in browser: who, until when, and its in-memory key and certificate."""

    user: str
    logins: tuple[str, ...]
    roles: tuple[str, ...]
    generation: int
    created: float
    expires: float                 # absolute: lifetime or the certificate's end, the earlier
    key: Any                       # ssh_proto PrivateKey; never written anywhere
    cert: str                      # the OpenSSH certificate line
    last_seen: float = 0.0
    digest: bytes = b""            # SHA-256 of the id: the store's key
    ended: str | None = None       # why it ended, once it has
    _scopes: set[trio.CancelScope] = field(default_factory=set)
    _unregister: Callable[[], None] | None = None

    def deadline(self, idle: float) -> float:
        """Wall time at which this session ends unless a request comes first."""
        return min(self.expires, self.last_seen + idle)

    def hold(self, scope: trio.CancelScope) -> Callable[[], None]:
        """Cancel ``scope`` when the session ends; returns the function that lets it go."""
        self._scopes.add(scope)
        if self.ended:
            scope.cancel()
        return lambda: self._scopes.discard(scope)


class SessionStore:
    """The web role's sessions, by the SHA-256 of their id. See the module docstring."""

    def __init__(self, *, idle: float = IDLE_TIMEOUT, lifetime: float = SESSION_LIFETIME,
                 max_sessions: int = MAX_SESSIONS, clock: Callable[[], float] = time.time,
                 live: Any = None) -> None:
        self.idle, self.lifetime, self.max_sessions = idle, lifetime, max_sessions
        self._clock = clock
        self._live = live           # LiveSessions of the cluster view, when there is one
        self._sessions: dict[bytes, BrowserSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, *, user: str, logins: tuple[str, ...], roles: tuple[str, ...], generation: int,
               cert_expires: float, key: Any, cert: str) -> tuple[str, BrowserSession]:
        """A new session and its cookie value (the only time the id exists in clear)."""
        now = self._clock()
        self._sweep(now)
        token = base64.urlsafe_b64encode(secrets.token_bytes(_ID_BYTES)).rstrip(b"=").decode("ascii")
        digest = _digest(token)
        session = BrowserSession(user, logins, roles, generation, now,
                                 min(now + self.lifetime, cert_expires), key, cert, last_seen=now,
                                 digest=digest)
        self._sessions[digest] = session
        if self._live is not None:
            session._unregister = self._live.add(lambda reason: self._end(digest, reason),
                                                 user=user, generation=generation)
        return token, session

    def get(self, token: str | None, *, touch: bool = True) -> BrowserSession | None:
        """The live session of a cookie value, or None; a hit counts as activity."""
        if not token:
            return None
        digest = _digest(token)
        session = self._sessions.get(digest)
        if session is None:
            return None
        now = self._clock()
        if now >= session.deadline(self.idle):
            self._end(digest, "expired")
            return None
        if touch:
            session.last_seen = now
        return session

    def alive(self, session: BrowserSession) -> float:
        """Seconds ``session`` has left (it is ended here when none): for a WebSocket, which
        holds the session without being activity."""
        left = session.deadline(self.idle) - self._clock()
        if session.ended is None and left <= 0:
            self._end(session.digest, "expired")
        return 0.0 if session.ended else left

    def end(self, token: str | None, reason: str = "logged out") -> bool:
        """End the session of a cookie value (logout); whether there was one."""
        return bool(token) and self._end(_digest(token), reason)  # type: ignore[arg-type]

    def _end(self, digest: bytes, reason: str) -> bool:
        session = self._sessions.pop(digest, None)
        if session is None:
            return False
        session.ended = reason
        session.key = None          # the key dies with the session
        if session._unregister is not None:
            session._unregister()
        for scope in tuple(session._scopes):
            scope.cancel()
        return True

    def _sweep(self, now: float) -> None:
        """Forget expired sessions; past ``max_sessions``, the oldest go first."""
        for digest, session in tuple(self._sessions.items()):
            if now >= session.deadline(self.idle):
                self._end(digest, "expired")
        while len(self._sessions) >= self.max_sessions:
            self._end(next(iter(self._sessions)), "too many sessions")
