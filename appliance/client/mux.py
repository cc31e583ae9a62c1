"""The session daemon's protocol: what ``jumpgate ssh`` and its resident daemon say to each other.

A ``jumpgate ssh`` process spends most of its life importing Trio and cryptography; the
SSH work itself takes a few milliseconds. So, as OpenSSH's ControlMaster does, the first
``jumpgate ssh`` of a login starts a per-user daemon (``muxd.py``) that holds the
authenticated proxy connection, and every ``jumpgate ssh`` after it is a thin client that
hands its stdin, stdout and stderr to the daemon over a Unix socket and waits for the exit
status. This module is that socket's protocol, sans I/O and standard library only (the
thin client must not import Trio).

Frames are a 4-byte big-endian length and a JSON object of at most :data:`MAX_FRAME`
bytes. The socket is ``mux.sock`` in the profile directory (mode 0700); the daemon also
checks that the peer runs as its own user (SO_PEERCRED).

client -> daemon::

    {"op": "session", "version": 1, "target": "[login@]node", "login": str|null,
     "port": int|null, "command": str|null, "pty": bool, "term": str, "cols": int,
     "rows": int, "env": {"LANG": ..., "LC_*": ...}, "agent": "/path/of/SSH_AUTH_SOCK"|null,
     "options": {"server_alive_interval": float, "server_alive_count_max": int,
                 "connect_timeout": float|null},           (-o, :mod:`.options`)
     "escape": int|null}                                   (the escape character, -e; null: none)
        with SCM_RIGHTS ancillary data: exactly three descriptors, stdin, stdout, stderr
    {"op": "resize", "cols": int, "rows": int}          during a session (SIGWINCH)
    {"op": "stop", "version": 1}                          finish running sessions, then exit
    {"op": "connect", "version": 1}                       (re)load the profile and connect to the
                                                          proxy now (``jumpgate login`` asks)

daemon -> client::

    {"event": "opened"}                                   the node runs the session
    {"event": "exit", "status": int, "signal": str|null}  it ended; the daemon has closed its
                                                          copies of the three descriptors
    {"event": "error", "message": str, "status": int}     one line for stderr, and the status
    {"event": "mismatch", "version": int}                 another protocol version: do it yourself
    {"event": "stopping"}
    {"event": "connected"} | {"event": "error", ...}      the answer to "connect"

Closing the client's end of the socket ends its session (the node's process gets a hangup).

>>> decoder = FrameDecoder()
>>> decoder.feed(encode_frame({"op": "resize", "cols": 80, "rows": 24}))
[{'op': 'resize', 'cols': 80, 'rows': 24}]
>>> parse_request({"op": "resize", "cols": 100, "rows": 40})
Resize(cols=100, rows=40)
"""
from __future__ import annotations

import json
import os
import struct

from .escape import DEFAULT_ESCAPE
from .options import ClientOptions, OptionError

__all__ = ["MAX_FRAME", "MUX_VERSION", "Connect", "FrameDecoder", "MuxProtocolError", "Resize", "SessionRequest",
           "Stop", "VersionMismatch", "encode_frame", "parse_request", "socket_path"]

MUX_VERSION = 2           # 2: options and escape (an older daemon answers "mismatch": in-process then)
MAX_FRAME = 64 * 1024
SOCKET_NAME = "mux.sock"
LOCK_NAME = "mux.lock"
LOG_NAME = "mux.log"
FD_COUNT = 3              # stdin, stdout, stderr
MAX_COMMAND = 32 * 1024   # OpenSSH's ssh refuses nothing shorter; the node's limit is its own
MAX_NAME = 1024           # target, login, TERM
MAX_PATH = 4096           # PATH_MAX: the agent socket
MAX_ENV = 64              # LANG and LC_* variables
MAX_SIZE = 10_000         # columns or rows
_SUN_PATH_MAX = 107       # sockaddr_un.sun_path (108) less the NUL
_HEADER = struct.Struct(">I")


class MuxProtocolError(Exception):
    """A frame or message broke the protocol; the connection is dropped."""


class VersionMismatch(MuxProtocolError):
    """The peer speaks another version of this protocol (a daemon left by an older build)."""


def socket_path(home: os.PathLike | str, dir_fd: int | None = None) -> str | None:
    """The address of the daemon's socket in the profile directory ``home``.

    A Unix socket address is limited to 107 bytes; for a longer profile path the address
    goes through ``/proc/self/fd`` and an open descriptor ``dir_fd`` of ``home`` (None is
    returned when that is needed and not given).
    """
    path = os.path.join(os.fspath(home), SOCKET_NAME)
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path
    return None if dir_fd is None else f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}"


def encode_frame(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise MuxProtocolError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Bytes in, JSON objects out; rejects oversized frames before buffering them."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise MuxProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
            if len(self._buffer) < _HEADER.size + length:
                break
            body = bytes(self._buffer[_HEADER.size:_HEADER.size + length])
            del self._buffer[:_HEADER.size + length]
            messages.append(_decode_body(body))
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame (a peer that hangs up mid-frame broke the protocol)."""
        return len(self._buffer)


def _decode_body(body: bytes) -> dict:
    try:
        message = json.loads(body.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):  # (nesting too deep for the parser)
        raise MuxProtocolError("a frame is not JSON") from None
    if not isinstance(message, dict):
        raise MuxProtocolError("a frame is not a JSON object")
    return message


# ------------------------------------------------------------------------------ requests

class SessionRequest:
    """``jumpgate ssh [-p PORT] [-l LOGIN] [-t|-T] [-A] TARGET [COMMAND]`` as the thin client resolved it.

    ``agent`` is the client's ``SSH_AUTH_SOCK`` (an absolute path) when it asked for agent
    forwarding: the daemon connects to that agent for the session's node connection.
    ``options`` are the ``-o`` settings, ``escape`` the escape character (None: none).
    """

    __slots__ = ("target", "login", "port", "command", "pty", "term", "cols", "rows", "env", "agent", "options",
                 "escape")

    def __init__(self, *, target: str, login: str | None, port: int | None, command: str | None, pty: bool,
                 term: str, cols: int, rows: int, env: dict[str, str], agent: str | None = None,
                 options: ClientOptions = ClientOptions(), escape: int | None = DEFAULT_ESCAPE):
        self.target, self.login, self.port, self.command, self.pty = target, login, port, command, pty
        self.term, self.cols, self.rows, self.env, self.agent = term, cols, rows, env, agent
        self.options, self.escape = options, escape

    def to_message(self) -> dict:
        fields = {k: getattr(self, k) for k in self.__slots__}
        fields["options"] = self.options.to_wire()
        return {"op": "session", "version": MUX_VERSION, **fields}


STOP_MESSAGE = {"op": "stop", "version": MUX_VERSION}
CONNECT_MESSAGE = {"op": "connect", "version": MUX_VERSION}


class Resize:
    __slots__ = ("cols", "rows")

    def __init__(self, cols: int, rows: int):
        self.cols, self.rows = cols, rows

    def __repr__(self) -> str:
        return f"Resize(cols={self.cols}, rows={self.rows})"


class Stop:
    __slots__ = ()


class Connect:
    __slots__ = ()


def parse_request(message: dict) -> SessionRequest | Resize | Stop | Connect:
    """Validate one client message; raises :class:`MuxProtocolError` for anything off the table."""
    op = message.get("op")
    if op == "resize":
        return Resize(_size(message, "cols"), _size(message, "rows"))
    if op not in ("session", "stop", "connect"):
        raise MuxProtocolError(f"unknown request {str(op)[:40]!r}")
    version = message.get("version")
    if type(version) is not int or version != MUX_VERSION:
        raise VersionMismatch(f"protocol version {str(message.get('version'))[:20]}, not {MUX_VERSION}")
    if op == "stop":
        return Stop()
    if op == "connect":
        return Connect()
    env = message.get("env")
    if not isinstance(env, dict) or len(env) > MAX_ENV:
        raise MuxProtocolError("env must be an object of at most 64 variables")
    for key, value in env.items():
        if not (key == "LANG" or key.startswith("LC_")) or not isinstance(value, str) or len(value) > MAX_NAME \
                or "\0" in key or "\0" in value or len(key) > MAX_NAME:
            raise MuxProtocolError("env carries only LANG and LC_* strings")
    port = message.get("port")
    if port is not None and (type(port) is not int or not 0 < port < 65536):
        raise MuxProtocolError("port must be 1-65535")
    if type(message.get("pty")) is not bool:
        raise MuxProtocolError("pty must be a boolean")
    agent = _text(message, "agent", MAX_PATH, True)
    if agent is not None and not agent.startswith("/"):
        raise MuxProtocolError("agent must be an absolute path")
    try:
        options = ClientOptions.from_wire(message.get("options"))
    except OptionError as exc:
        raise MuxProtocolError(str(exc)) from None
    escape = message.get("escape")
    if escape is not None and (type(escape) is not int or not 0 <= escape < 0x80):
        raise MuxProtocolError("escape must be an ASCII code or null")
    return SessionRequest(target=_text(message, "target", MAX_NAME), login=_text(message, "login", MAX_NAME, True),
                          port=port, command=_text(message, "command", MAX_COMMAND, True), pty=message["pty"],
                          term=_text(message, "term", MAX_NAME), cols=_size(message, "cols"),
                          rows=_size(message, "rows"), env=dict(env), agent=agent, options=options, escape=escape)


def _text(message: dict, key: str, limit: int, optional: bool = False) -> str | None:
    value = message.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit or "\0" in value:
        raise MuxProtocolError(f"{key} must be a non-empty string of at most {limit} characters")
    return value


def _size(message: dict, key: str) -> int:
    value = message.get(key)
    if type(value) is not int or not 0 <= value <= MAX_SIZE:
        raise MuxProtocolError(f"{key} must be an integer 0-{MAX_SIZE}")
    return value
