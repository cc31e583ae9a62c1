"""SSH message numbers and one small frozen class per message.

Each class mirrors its wire layout (the RFC section is above it). One generic codec,
driven by the ``_fields`` spec of each class, encodes and decodes them all and rejects
trailing bytes. Messages whose tail depends on a type name (USERAUTH_REQUEST by method,
CHANNEL_OPEN by channel type, CHANNEL_REQUEST and GLOBAL_REQUEST by request name) keep
that tail as raw ``data`` bytes; the layer that understands the name decodes it with the
body classes at the end of this module, through the same codec.

Field types: ``byte``, ``bool``, ``u32``, ``u64``, ``string`` (bytes), ``text`` (UTF-8
str), ``name`` (ASCII str), ``names`` (name-list), ``mpint``, ``cookie`` (16 raw bytes),
``rest`` (all remaining bytes), ``texts`` (u32 count then that many UTF-8 strings).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from ._record import Record, record

from .errors import ProtocolError
from .wire import Reader, encode_bool, encode_mpint, encode_name_list, encode_string, encode_uint32, encode_uint64

# RFC 4250 §4.1 message numbers.
MSG_DISCONNECT = 1
MSG_IGNORE = 2
MSG_UNIMPLEMENTED = 3
MSG_DEBUG = 4
MSG_SERVICE_REQUEST = 5
MSG_SERVICE_ACCEPT = 6
MSG_EXT_INFO = 7
MSG_KEXINIT = 20
MSG_NEWKEYS = 21
MSG_KEX_INIT = 30  # KEXDH_INIT / KEX_ECDH_INIT / KEX_HYBRID_INIT
MSG_KEX_REPLY = 31
MSG_USERAUTH_REQUEST = 50
MSG_USERAUTH_FAILURE = 51
MSG_USERAUTH_SUCCESS = 52
MSG_USERAUTH_BANNER = 53
MSG_USERAUTH_PK_OK = 60  # also USERAUTH_INFO_REQUEST and PASSWD_CHANGEREQ, by method
MSG_USERAUTH_INFO_RESPONSE = 61
MSG_GLOBAL_REQUEST = 80
MSG_REQUEST_SUCCESS = 81
MSG_REQUEST_FAILURE = 82
MSG_CHANNEL_OPEN = 90
MSG_CHANNEL_OPEN_CONFIRMATION = 91
MSG_CHANNEL_OPEN_FAILURE = 92
MSG_CHANNEL_WINDOW_ADJUST = 93
MSG_CHANNEL_DATA = 94
MSG_CHANNEL_EXTENDED_DATA = 95
MSG_CHANNEL_EOF = 96
MSG_CHANNEL_CLOSE = 97
MSG_CHANNEL_REQUEST = 98
MSG_CHANNEL_SUCCESS = 99
MSG_CHANNEL_FAILURE = 100

# RFC 4254 §5.1 channel open failure reasons.
OPEN_ADMINISTRATIVELY_PROHIBITED = 1
OPEN_CONNECT_FAILED = 2
OPEN_UNKNOWN_CHANNEL_TYPE = 3
OPEN_RESOURCE_SHORTAGE = 4

EXTENDED_DATA_STDERR = 1

_MAX_TEXTS = 64  # keyboard-interactive responses; OpenSSH caps prompts at 100


def _read_field(r: Reader, kind: str):
    if kind == "u32":
        return r.uint32()
    if kind == "string":
        return r.string()
    if kind == "name":
        return r.ascii()
    if kind == "text":
        return r.utf8()
    if kind == "bool":
        return r.boolean()
    if kind == "names":
        return r.name_list()
    if kind == "rest":
        return r.rest()
    if kind == "byte":
        return r.byte()
    if kind == "u64":
        return r.uint64()
    if kind == "mpint":
        return r.mpint()
    if kind == "cookie":
        return r.raw(16)
    if kind == "texts":
        n = r.uint32()
        if n > _MAX_TEXTS:
            raise ProtocolError("too many strings in list")
        return tuple(r.utf8() for _ in range(n))
    raise AssertionError(kind)


def _write_field(kind: str, value) -> bytes:
    if kind == "u32":
        return encode_uint32(value)
    if kind in ("string", "name", "text"):
        return encode_string(value)
    if kind == "bool":
        return encode_bool(value)
    if kind == "names":
        return encode_name_list(value)
    if kind == "rest":
        return bytes(value)
    if kind == "byte":
        return bytes((value,))
    if kind == "u64":
        return encode_uint64(value)
    if kind == "mpint":
        return encode_mpint(value)
    if kind == "cookie":
        if len(value) != 16:
            raise ValueError("cookie must be 16 bytes")
        return bytes(value)
    if kind == "texts":
        return encode_uint32(len(value)) + b"".join(encode_string(v) for v in value)
    raise AssertionError(kind)


class Message(Record):
    """Base of every message and message body; subclasses set ``number`` and ``_fields``."""

    __slots__ = ()
    number: ClassVar[int | None] = None
    _fields: ClassVar[tuple[tuple[str, str], ...]] = ()

    def encode(self) -> bytes:
        parts = [bytes((self.number,))] if self.number is not None else []
        for name, kind in self._fields:
            parts.append(_write_field(kind, getattr(self, name)))
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes):
        r = Reader(payload)
        if cls.number is not None and r.byte() != cls.number:
            raise ProtocolError(f"expected message {cls.number}")
        values = [_read_field(r, kind) for _, kind in cls._fields]
        r.finish()
        return cls(*values)


def message(number: int | None, *fields: str):
    """Class decorator: ``@message(94, "recipient:u32", "data:string")``."""

    def wrap(cls):
        spec = tuple(tuple(f.split(":")) for f in fields)
        new = record(cls, base=Message, names=tuple(name for name, _ in spec))
        new.number = number
        new._fields = spec
        return new

    return wrap


# --- RFC 4253 transport ----------------------------------------------------------------

@message(MSG_DISCONNECT, "reason:u32", "description:text", "language:string")
class Disconnect:
    """RFC 4253 §11.1."""


@message(MSG_IGNORE, "data:string")
class Ignore:
    """RFC 4253 §11.2."""


@message(MSG_UNIMPLEMENTED, "seq:u32")
class Unimplemented:
    """RFC 4253 §11.4."""


@message(MSG_DEBUG, "always_display:bool", "text:text", "language:string")
class Debug:
    """RFC 4253 §11.3."""


@message(MSG_SERVICE_REQUEST, "service:name")
class ServiceRequest:
    """RFC 4253 §10."""


@message(MSG_SERVICE_ACCEPT, "service:name")
class ServiceAccept:
    """RFC 4253 §10."""


@message(MSG_KEXINIT, "cookie:cookie", "kex_algorithms:names", "server_host_key_algorithms:names",
         "encryption_client_to_server:names", "encryption_server_to_client:names",
         "mac_client_to_server:names", "mac_server_to_client:names",
         "compression_client_to_server:names", "compression_server_to_client:names",
         "languages_client_to_server:names", "languages_server_to_client:names",
         "first_kex_packet_follows:bool", "reserved:u32")
class KexInit:
    """RFC 4253 §7.1."""


@message(MSG_NEWKEYS)
class NewKeys:
    """RFC 4253 §7.3."""


@dataclasses.dataclass(frozen=True, slots=True)
class ExtInfo:
    """RFC 8308 §2.3: SSH_MSG_EXT_INFO, a list of (name, value) extensions."""

    extensions: tuple[tuple[str, bytes], ...]
    number: ClassVar[int] = MSG_EXT_INFO

    def encode(self) -> bytes:
        out = [bytes((MSG_EXT_INFO,)), encode_uint32(len(self.extensions))]
        for name, value in self.extensions:
            out += [encode_string(name), encode_string(value)]
        return b"".join(out)

    @classmethod
    def decode(cls, payload: bytes) -> "ExtInfo":
        r = Reader(payload)
        if r.byte() != MSG_EXT_INFO:
            raise ProtocolError("expected EXT_INFO")
        n = r.uint32()
        if n > 64:
            raise ProtocolError("too many extensions in EXT_INFO")
        exts = tuple((r.ascii(256), r.string(65536)) for _ in range(n))
        r.finish()
        return cls(exts)


# --- RFC 4252 / 4256 user authentication --------------------------------------------------

@message(MSG_USERAUTH_REQUEST, "username:text", "service:name", "method:name", "data:rest")
class UserauthRequest:
    """RFC 4252 §5; ``data`` is decoded by method with the *Method bodies below."""


@message(MSG_USERAUTH_FAILURE, "methods:names", "partial_success:bool")
class UserauthFailure:
    """RFC 4252 §5.1."""


@message(MSG_USERAUTH_SUCCESS)
class UserauthSuccess:
    """RFC 4252 §5.1."""


@message(MSG_USERAUTH_BANNER, "message:text", "language:string")
class UserauthBanner:
    """RFC 4252 §5.4."""


@message(MSG_USERAUTH_PK_OK, "algorithm:name", "key_blob:string")
class UserauthPkOk:
    """RFC 4252 §7."""


@message(MSG_USERAUTH_PK_OK, "name:text", "instruction:text", "language:string", "prompts:rest")
class UserauthInfoRequest:
    """RFC 4256 §3.2; ``prompts`` is decoded with :func:`decode_prompts`."""


@message(MSG_USERAUTH_INFO_RESPONSE, "responses:texts")
class UserauthInfoResponse:
    """RFC 4256 §3.4."""


@message(None, "has_signature:bool", "algorithm:name", "key_blob:string", "signature:rest")
class PublickeyMethod:
    """RFC 4252 §7 body; ``signature`` is b'' or one SSH string holding the signature."""


@message(None, "change:bool", "password:text", "new_password:rest")
class PasswordMethod:
    """RFC 4252 §8 body (password changes are refused, so new_password must be empty)."""


@message(None, "language:string", "submethods:text")
class KbdIntMethod:
    """RFC 4256 §3.1 body."""


def decode_prompts(data: bytes) -> tuple[tuple[str, bool], ...]:
    r = Reader(data)
    n = r.uint32()
    if n > _MAX_TEXTS:
        raise ProtocolError("too many keyboard-interactive prompts")
    prompts = tuple((r.utf8(), r.boolean()) for _ in range(n))
    r.finish()
    return prompts


def encode_prompts(prompts) -> bytes:
    return encode_uint32(len(prompts)) + b"".join(encode_string(p) + encode_bool(e) for p, e in prompts)


# --- RFC 4254 connection protocol --------------------------------------------------------

@message(MSG_GLOBAL_REQUEST, "name:name", "want_reply:bool", "data:rest")
class GlobalRequest:
    """RFC 4254 §4."""


@message(MSG_REQUEST_SUCCESS, "data:rest")
class RequestSuccess:
    """RFC 4254 §4."""


@message(MSG_REQUEST_FAILURE)
class RequestFailure:
    """RFC 4254 §4."""


@message(MSG_CHANNEL_OPEN, "channel_type:name", "sender:u32", "window:u32", "max_packet:u32", "data:rest")
class ChannelOpen:
    """RFC 4254 §5.1."""


@message(MSG_CHANNEL_OPEN_CONFIRMATION, "recipient:u32", "sender:u32", "window:u32", "max_packet:u32", "data:rest")
class ChannelOpenConfirmation:
    """RFC 4254 §5.1."""


@message(MSG_CHANNEL_OPEN_FAILURE, "recipient:u32", "reason:u32", "description:text", "language:string")
class ChannelOpenFailure:
    """RFC 4254 §5.1."""


@message(MSG_CHANNEL_WINDOW_ADJUST, "recipient:u32", "increment:u32")
class ChannelWindowAdjust:
    """RFC 4254 §5.2."""


@message(MSG_CHANNEL_DATA, "recipient:u32", "data:string")
class ChannelData:
    """RFC 4254 §5.2."""


@message(MSG_CHANNEL_EXTENDED_DATA, "recipient:u32", "data_type:u32", "data:string")
class ChannelExtendedData:
    """RFC 4254 §5.2."""


@message(MSG_CHANNEL_EOF, "recipient:u32")
class ChannelEof:
    """RFC 4254 §5.3."""


@message(MSG_CHANNEL_CLOSE, "recipient:u32")
class ChannelClose:
    """RFC 4254 §5.3."""


@message(MSG_CHANNEL_REQUEST, "recipient:u32", "request_type:name", "want_reply:bool", "data:rest")
class ChannelRequest:
    """RFC 4254 §5.4."""


@message(MSG_CHANNEL_SUCCESS, "recipient:u32")
class ChannelSuccess:
    """RFC 4254 §5.4."""


@message(MSG_CHANNEL_FAILURE, "recipient:u32")
class ChannelFailure:
    """RFC 4254 §5.4."""


# --- bodies of typed requests and channel opens (RFC 4254 §6, §7; OpenSSH PROTOCOL) ------

@message(None, "term:text", "cols:u32", "rows:u32", "width:u32", "height:u32", "modes:string")
class PtyRequest:
    """RFC 4254 §6.2 "pty-req"."""


@message(None, "name:text", "value:text")
class EnvRequest:
    """RFC 4254 §6.4 "env"."""


@message(None, "command:string")
class ExecRequest:
    """RFC 4254 §6.5 "exec" (the command is bytes: it need not be UTF-8)."""


@message(None, "name:name")
class SubsystemRequest:
    """RFC 4254 §6.5 "subsystem"."""


@message(None, "cols:u32", "rows:u32", "width:u32", "height:u32")
class WindowChange:
    """RFC 4254 §6.7 "window-change"."""


@message(None, "signal:name")
class SignalRequest:
    """RFC 4254 §6.9 "signal" (signal name without the SIG prefix)."""


@message(None, "status:u32")
class ExitStatus:
    """RFC 4254 §6.10 "exit-status"."""


@message(None, "signal:name", "core_dumped:bool", "message:text", "language:string")
class ExitSignal:
    """RFC 4254 §6.10 "exit-signal"."""


@message(None, "length_ms:u32")
class BreakRequest:
    """RFC 4335 "break"."""


@message(None, "host:text", "port:u32", "originator:text", "originator_port:u32")
class DirectTcpip:
    """RFC 4254 §7.2 "direct-tcpip" open body (also "forwarded-tcpip": host/port = connected address)."""


@message(None, "address:text", "port:u32")
class TcpipForward:
    """RFC 4254 §7.1 "tcpip-forward" / "cancel-tcpip-forward" body."""


@message(None, "port:u32")
class TcpipForwardReply:
    """RFC 4254 §7.1 reply carrying the allocated port when port 0 was requested."""


@message(None, "originator:text", "originator_port:u32")
class X11Open:
    """RFC 4254 §6.3.2 "x11" open body (refused, but decoded for a clean failure)."""


@message(None)
class Empty:
    """A request or open with no type-specific data."""
