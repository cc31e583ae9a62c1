"""Joining a live session (``jumpgate join``), sans-IO: the request, who may join, the notices.

A joiner connects to the session's node as the session's login (through the proxy, as
``jumpgate ssh`` does), opens a session channel with the subsystem :data:`SUBSYSTEM` and
sends one request frame before anything else::

    frame = uint32 length (big endian, 1..MAX_REQUEST) || msgpack map
            {"v": 1, "session_id": str, "mode": "observer" | "peer"}

Everything after the frame is the joiner's typing (dropped by the node for an observer).
The node answers a refusal with one line on stderr and exit status 1; an accepted joiner
gets the current screen (the session's scrollback ring) and then the output as it comes,
until the session ends (then its exit status) or the joiner leaves.

Who may join (:func:`join_refusal`, docs/security.md S6): the joiner must have logged in to
the node as the session's login (so the certificate holds that login, as for ``ssh``) and
be an admin (the ``admin`` role in the certificate) or the session's owner (another
terminal of theirs); a peer of a session with a pty needs ``permit-pty``. A certificate
with a force-command never reaches the join (the node runs its command instead).

>>> data = encode_request("00000000-0000-0000-0000-000000000001", "peer")
>>> parser = RequestParser()
>>> parser.feed(data[:3]) is None                   # not whole yet: None (feed more)
True
>>> parser.feed(data[3:])
JoinRequest(session_id='00000000-0000-0000-0000-000000000001', mode='peer')
"""
from __future__ import annotations

import dataclasses
import struct

import msgpack

__all__ = ["JoinError", "JoinRequest", "MAX_REQUEST", "MODES", "NOT_JOINABLE", "RequestParser", "SUBSYSTEM", "VERSION",
           "encode_request", "join_notice", "join_refusal", "leave_notice"]

SUBSYSTEM = "jumpgate-join@jumpgate"
VERSION = 1
MODES = ("observer", "peer")
MAX_REQUEST = 1024
MAX_SESSION_ID = 64
_LENGTH = struct.Struct(">I")
#: What a stranger is told, whether or not the session exists (ids cannot be probed).
NOT_JOINABLE = "no such live session on this node (or it is not yours to join)"


class JoinError(Exception):
    """A malformed join request (``str()`` is the line the joiner is shown)."""


@dataclasses.dataclass(frozen=True, slots=True)
class JoinRequest:
    session_id: str
    mode: str


def encode_request(session_id: str, mode: str) -> bytes:
    """The frame a joiner sends first."""
    if mode not in MODES:
        raise JoinError(f"mode must be one of {', '.join(MODES)}")
    body = msgpack.packb({"v": VERSION, "session_id": session_id, "mode": mode}, use_bin_type=True)
    if len(body) > MAX_REQUEST:
        raise JoinError("the join request is too long")
    return _LENGTH.pack(len(body)) + body


def _decode(body: bytes) -> JoinRequest:
    try:
        item = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException):
        raise JoinError("undecodable join request") from None
    if not isinstance(item, dict) or item.get("v") != VERSION:
        raise JoinError(f"the join request must be a version-{VERSION} map")
    sid, mode = item.get("session_id"), item.get("mode")
    if not isinstance(sid, str) or not 0 < len(sid) <= MAX_SESSION_ID or not sid.isprintable():
        raise JoinError("the join request names no session")
    if mode not in MODES:
        raise JoinError(f"mode must be one of {', '.join(MODES)}")
    return JoinRequest(sid, mode)


class RequestParser:
    """Reads the request frame off the start of a channel; :attr:`rest` is what followed it."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.rest = b""

    def feed(self, data: bytes) -> JoinRequest | None:
        """The request once whole (None: more bytes needed). Raises :class:`JoinError`;
        EOF before the frame is whole is the caller's :meth:`eof`."""
        self._buf += data
        if len(self._buf) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buf)
        if not 0 < length <= MAX_REQUEST:
            raise JoinError("bad join request length")
        end = _LENGTH.size + length
        if len(self._buf) < end:
            return None
        request = _decode(bytes(self._buf[_LENGTH.size:end]))
        self.rest = bytes(self._buf[end:])
        return request

    @staticmethod
    def eof() -> JoinError:
        return JoinError("the join request ended early")


def join_refusal(*, joiner: str, joiner_login: str, joiner_roles: tuple[str, ...], permit_pty: bool,
                 mode: str, owner: str, session_login: str, session_pty: bool) -> str | None:
    """Why ``joiner`` may not join the session (docs/security.md S6), or None: they may."""
    if "admin" not in joiner_roles and joiner != owner:
        return NOT_JOINABLE
    if joiner_login != session_login:
        return f"the session runs as {session_login!r}: join it logged in as that login"
    if mode == "peer" and session_pty and not permit_pty:
        return "your certificate does not permit a pty: join as an observer"
    return None


def join_notice(user: str, mode: str) -> bytes:
    return f"\r\n[jumpgate: {_printable(user)} joined the session as {mode}]\r\n".encode()


def leave_notice(user: str, mode: str) -> bytes:
    return f"\r\n[jumpgate: {_printable(user)} ({mode}) left the session]\r\n".encode()


def _printable(text: str) -> str:
    """A user name as shown on terminals: no control characters (escape sequences)."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:64]
