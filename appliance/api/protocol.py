"""The internal API's wire format, sans-IO: length-prefixed msgpack frames.

This module owns the bytes that services exchange on the ``jumpgate-api`` and
``jumpgate-watch`` SSH subsystems (auth port 3025) and nothing else: no sockets, no SSH, no Trio. Like h11, bytes go in
(:meth:`FrameDecoder.feed`), small immutable messages come out
(:meth:`FrameDecoder.next_message`), and ``encode_*`` turn messages into bytes.

Framing (one rule, checked before anything is buffered)::

    frame    = uint32 length (big endian, 1..MAX_FRAME) || msgpack map of that length
    request  = {"v": 1, "id": uint32, "method": str, "params": map}
    response = {"v": 1, "id": uint32, "ok": true,  "result": any}
             | {"v": 1, "id": uint32, "ok": false, "error": {"code": str, "message": str}}
    push     = {"v": 1, "push": str, "data": map}     (``jumpgate-watch``: server to client only)

Theory of operation:

* The length is validated the moment its four bytes are known; an oversized frame is
  refused without buffering its body (a peer cannot make us allocate more than
  ``MAX_FRAME`` bytes of one message).
* A body is unpacked with strict limits (``raw=False`` so strings are UTF-8,
  ``strict_map_key=True``, no extension types, bounded container sizes) and then walked:
  only nil, bool, int, float, str, bytes, arrays and maps with string keys survive, at
  a bounded depth.
* Every message has exactly its fields: an unknown version, a missing or an unknown
  field is an :class:`ApiProtocolError`, which is the *only* exception the decoder
  raises. After one, the decoder stays broken (the peer is out of sync; close).

>>> frame = encode_request(Request(1, "cluster_info", {}))
>>> dec = FrameDecoder.for_requests()
>>> dec.feed(frame[:3]); dec.next_message() is None
True
>>> dec.feed(frame[3:]); dec.next_message()
Request(id=1, method='cluster_info', params={})
"""
from __future__ import annotations

import math
import re
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import msgpack

from ..errors import ChannelProtocolError

__all__ = [
    "MAX_FRAME", "VERSION", "SUBSYSTEM", "WATCH_SUBSYSTEM",
    "ApiProtocolError", "FrameTooLarge",
    "Request", "Response", "ErrorResponse", "Push", "Message",
    "encode_request", "encode_response", "encode_error", "encode_push",
    "parse_request", "parse_response", "parse_push", "FrameDecoder",
    "E_PERMISSION_DENIED", "E_UNKNOWN_METHOD", "E_BAD_REQUEST", "E_INTERNAL",
    "E_PROTOCOL", "E_UNAVAILABLE",
]

#: The SSH subsystem name the API runs on.
SUBSYSTEM = "jumpgate-api"
#: The subsystem on which the auth server pushes changes to proxies and nodes.
WATCH_SUBSYSTEM = "jumpgate-watch"
#: Protocol version carried in every message as "v".
VERSION = 1
#: Largest frame body, in bytes.
MAX_FRAME = 1 << 20
#: Deepest nesting of arrays/maps accepted inside a message.
MAX_DEPTH = 16
#: Largest array or map inside a message.
MAX_CONTAINER = 65536
MAX_METHOD_LEN = 64
MAX_CODE_LEN = 64
MAX_MESSAGE_LEN = 4096
_U32 = struct.Struct(">I")
_UINT32_MAX = 2**32 - 1
_METHOD = re.compile(r"[a-z][a-z0-9_]*")
_CODE = re.compile(r"[a-z][a-z0-9_.]*")

# Error codes produced by the API layer itself; the auth service adds its own
# (``already_used``, ``expired``, ``not_found``, ...) which travel unchanged.
E_PERMISSION_DENIED = "permission_denied"
E_UNKNOWN_METHOD = "unknown_method"
E_BAD_REQUEST = "bad_request"
E_INTERNAL = "internal"
E_PROTOCOL = "protocol_error"
E_UNAVAILABLE = "unavailable"


class ApiProtocolError(ChannelProtocolError):
    """A frame or message broke the API protocol (the stream must be closed, not the SSH
    connection: this is not an ssh_proto.ProtocolError)."""


class FrameTooLarge(ApiProtocolError):
    """A frame announced (or an encoder produced) more than MAX_FRAME bytes."""


@dataclass(frozen=True, slots=True)
class Request:
    """Call ``method`` with keyword ``params``; ``id`` pairs it with its response."""

    id: int
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Response:
    """The call ``id`` succeeded with ``result``."""

    id: int
    result: Any = None


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """The call ``id`` failed: ``code`` is machine-readable, ``message`` one human line."""

    id: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Push:
    """One message of the auth server's push stream (the ``jumpgate-watch`` subsystem):
    ``kind`` says what ``data`` describes (see :mod:`appliance.auth.watch`)."""

    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)


Message = Union[Request, Response, ErrorResponse, Push]


# ------------------------------------------------------------------------ value checks

def _check_value(value: Any, depth: int = 0) -> None:
    """Only plain msgpack data, string-keyed maps, bounded depth (both directions)."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return
    if isinstance(value, int):
        if not -2**63 <= value <= 2**64 - 1:
            raise ApiProtocolError("integer out of range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ApiProtocolError("non-finite number")
        return
    if depth >= MAX_DEPTH:
        raise ApiProtocolError("message nested too deeply")
    if isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ApiProtocolError("map keys must be strings")
            _check_value(item, depth + 1)
        return
    raise ApiProtocolError(f"unsupported value type {type(value).__name__}")


def _check_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT32_MAX:
        raise ApiProtocolError("message id must be a uint32")
    return value


def _check_text(value: Any, pattern: re.Pattern[str], max_len: int, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_len or not pattern.fullmatch(value):
        raise ApiProtocolError(f"invalid {what}")
    return value


def _check_fields(obj: Any, fields: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise ApiProtocolError("a message must be a map")
    version = obj.get("v")
    if type(version) is not int or version != VERSION:  # not True, not 1.0
        raise ApiProtocolError("unsupported API protocol version")
    if obj.keys() != fields:
        raise ApiProtocolError("unexpected or missing message fields")
    return obj


# ------------------------------------------------------------------------ parse (decode)

_REQUEST_FIELDS = frozenset({"v", "id", "method", "params"})
_RESULT_FIELDS = frozenset({"v", "id", "ok", "result"})
_ERROR_FIELDS = frozenset({"v", "id", "ok", "error"})


def parse_request(obj: Any) -> Request:
    """A decoded msgpack object -> :class:`Request`, or ApiProtocolError."""
    obj = _check_fields(obj, _REQUEST_FIELDS)
    params = obj["params"]
    if not isinstance(params, dict):
        raise ApiProtocolError("request params must be a map")
    _check_value(params)
    return Request(_check_id(obj["id"]), _check_text(obj["method"], _METHOD, MAX_METHOD_LEN, "method name"),
                   params)


def parse_response(obj: Any) -> Response | ErrorResponse:
    """A decoded msgpack object -> :class:`Response` / :class:`ErrorResponse`."""
    ok = obj.get("ok") if isinstance(obj, dict) else None
    if ok is True:
        obj = _check_fields(obj, _RESULT_FIELDS)
        _check_value(obj["result"])
        return Response(_check_id(obj["id"]), obj["result"])
    if ok is False:
        obj = _check_fields(obj, _ERROR_FIELDS)
        error = obj["error"]
        if not isinstance(error, dict) or error.keys() != {"code", "message"}:
            raise ApiProtocolError("error must be a map of code and message")
        message = error["message"]
        if not isinstance(message, str) or len(message) > MAX_MESSAGE_LEN:
            raise ApiProtocolError("invalid error message")
        return ErrorResponse(_check_id(obj["id"]), _check_text(error["code"], _CODE, MAX_CODE_LEN, "error code"),
                             message)
    _check_fields(obj, _RESULT_FIELDS)  # names the version / field problem
    raise ApiProtocolError("response 'ok' must be a boolean")


_PUSH_FIELDS = frozenset({"v", "push", "data"})


def parse_push(obj: Any) -> Push:
    """A decoded msgpack object -> :class:`Push`, or ApiProtocolError."""
    obj = _check_fields(obj, _PUSH_FIELDS)
    data = obj["data"]
    if not isinstance(data, dict):
        raise ApiProtocolError("push data must be a map")
    _check_value(data)
    return Push(_check_text(obj["push"], _CODE, MAX_CODE_LEN, "push kind"), data)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ApiProtocolError("msgpack extension types are not allowed")


def unpack_body(body: bytes) -> Any:
    """Unpack one frame body with strict limits; ApiProtocolError on anything wrong."""
    limit = min(len(body), MAX_FRAME)
    try:
        # The frame length already bounds the buffer (what an Unpacker's max_buffer_size
        # would do); the per-type limits stop a small frame declaring a huge container.
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True, timestamp=0,
                              ext_hook=_refuse_ext, max_str_len=limit, max_bin_len=limit,
                              max_array_len=min(limit, MAX_CONTAINER), max_map_len=min(limit, MAX_CONTAINER),
                              max_ext_len=0)
    except ApiProtocolError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException):
        raise ApiProtocolError("malformed msgpack frame") from None
    _check_value(obj)  # also refuses the Timestamp ext that msgpack decodes itself
    return obj


# ------------------------------------------------------------------------ encode

def _plain(value: Any, depth: int = 0) -> Any:
    """What callers naturally pass -> msgpack's types: tuples become arrays, any
    Mapping a map, bytearray/memoryview bytes (the decoder yields only these)."""
    if depth > MAX_DEPTH:
        raise ApiProtocolError("message nested too deeply")
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def _frame(obj: Mapping[str, Any]) -> bytes:
    obj = _plain(obj)
    _check_value(obj)
    try:
        body = msgpack.packb(obj, use_bin_type=True)
    except (ValueError, TypeError, OverflowError, msgpack.PackException):
        raise ApiProtocolError("value cannot be encoded") from None
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return _U32.pack(len(body)) + body


def encode_request(req: Request) -> bytes:
    """The frame for ``req`` (its fields are checked as the decoder would)."""
    _check_id(req.id)
    _check_text(req.method, _METHOD, MAX_METHOD_LEN, "method name")
    return _frame({"v": VERSION, "id": req.id, "method": req.method, "params": dict(req.params)})


def encode_response(resp: Response) -> bytes:
    """The frame for a successful call; FrameTooLarge when the result does not fit."""
    _check_id(resp.id)
    return _frame({"v": VERSION, "id": resp.id, "ok": True, "result": resp.result})


def encode_error(resp: ErrorResponse) -> bytes:
    """The frame for a failed call (the message is cut to MAX_MESSAGE_LEN)."""
    _check_id(resp.id)
    _check_text(resp.code, _CODE, MAX_CODE_LEN, "error code")
    error = {"code": resp.code, "message": resp.message[:MAX_MESSAGE_LEN]}
    return _frame({"v": VERSION, "id": resp.id, "ok": False, "error": error})


def encode_push(push: Push) -> bytes:
    """The frame for one pushed change."""
    _check_text(push.kind, _CODE, MAX_CODE_LEN, "push kind")
    return _frame({"v": VERSION, "push": push.kind, "data": dict(push.data)})


# ------------------------------------------------------------------------ decoder

class FrameDecoder:
    """Reassemble frames from a byte stream and parse them into messages.

    ``feed(data)`` as bytes arrive, then call ``next_message()`` until it returns None
    (it needs more data). ``feed_eof()`` at end of stream refuses a half frame. The
    first violation raises :class:`ApiProtocolError`, and so does every call after it.
    """

    def __init__(self, parse: Callable[[Any], Message], *, max_frame: int = MAX_FRAME):
        self._parse = parse
        self._max_frame = max_frame
        self._header = bytearray()
        self._body: bytearray | None = None   # None while the header is incomplete
        self._body_len = 0
        self._frames: deque[bytes] = deque()
        self._error: ApiProtocolError | None = None

    @classmethod
    def for_requests(cls) -> FrameDecoder:
        """The server's decoder."""
        return cls(parse_request)

    @classmethod
    def for_responses(cls) -> FrameDecoder:
        """The client's decoder."""
        return cls(parse_response)

    @classmethod
    def for_pushes(cls) -> FrameDecoder:
        """A watcher's decoder (the push stream)."""
        return cls(parse_push)

    def _fail(self, error: ApiProtocolError) -> ApiProtocolError:
        self._error = error
        self._header.clear()
        self._body = None
        self._frames.clear()
        return error

    def _check(self) -> None:
        if self._error is not None:
            raise ApiProtocolError(f"decoder unusable after an earlier error: {self._error}")

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take bytes from the stream; an oversized length is refused right here."""
        self._check()
        view = memoryview(data).cast("B")
        while view:
            if self._body is None:
                take = 4 - len(self._header)
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == 4:
                    self._start_body(_U32.unpack(self._header)[0])
            else:
                take = self._body_len - len(self._body)
                self._body += view[:take]
                view = view[take:]
            if self._body is not None and len(self._body) == self._body_len:
                self._frames.append(bytes(self._body))
                self._header.clear()
                self._body = None

    def _start_body(self, length: int) -> None:
        if length == 0:
            raise self._fail(ApiProtocolError("empty frame"))
        if length > self._max_frame:
            raise self._fail(FrameTooLarge(f"frame of {length} bytes exceeds the {self._max_frame}-byte limit"))
        self._body_len = length
        self._body = bytearray()

    def feed_eof(self) -> None:
        """The stream ended: fine between frames, a protocol error inside one."""
        self._check()
        if self._header or self._body is not None:
            raise self._fail(ApiProtocolError("stream ended inside a frame"))

    def next_message(self) -> Message | None:
        """The next complete message, or None when more bytes are needed."""
        self._check()
        if not self._frames:
            return None
        body = self._frames.popleft()
        try:
            return self._parse(unpack_body(body))
        except ApiProtocolError as exc:
            raise self._fail(exc) from None

    @property
    def pending(self) -> bool:
        """True while part of a frame (or an unread message) is buffered."""
        return bool(self._frames or self._header or self._body is not None)
