"""SSH message numbers and one small frozen class per message.

Each class mirrors its wire layout (the RFC section is above it). One generic codec,
driven by the ``_fields`` spec of each class, encodes and decodes them all and rejects
trailing bytes. Messages whose tail depends on a type name (USERAUTH_REQUEST by method,
CHANNEL_OPEN by channel type, CHANNEL_REQUEST and GLOBAL_REQUEST by request name) keep
that tail as raw ``data`` bytes; the layer that understands the name decodes it with the
body classes at the end of this module, through the same codec.

A message's fields are annotated with the wire types below, each a Python type a checker
sees (``U32`` is an ``int``, ``Text`` a ``str``) carrying its encoding as ``Annotated``
metadata: ``Byte``, ``Bool``, ``U32``, ``U64``, ``String`` (bytes), ``Text`` (UTF-8 str),
``Name`` (ASCII str), ``Names`` (name-list), ``Mpint``, ``Cookie`` (16 raw bytes), ``Rest``
(all remaining bytes), ``Texts`` (u32 count then that many UTF-8 strings).

>>> ChannelData(recipient=3, data=b"hi").encode()
b'^\\x00\\x00\\x00\\x03\\x00\\x00\\x00\\x02hi'
>>> ChannelData.decode(_) == ChannelData(3, b"hi")
True
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated, ClassVar, TypeVar, dataclass_transform

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

# The wire types of message fields (RFC 4251 §5): the Python type, and the codec's name for it.
Byte = Annotated[int, "byte"]
Bool = Annotated[bool, "bool"]
U32 = Annotated[int, "u32"]
U64 = Annotated[int, "u64"]
String = Annotated[bytes, "string"]
Text = Annotated[str, "text"]
Name = Annotated[str, "name"]
Names = Annotated[tuple[str, ...], "names"]
Mpint = Annotated[int, "mpint"]
Cookie = Annotated[bytes, "cookie"]
Rest = Annotated[bytes, "rest"]
Texts = Annotated[tuple[str, ...], "texts"]
# Annotations are strings here (``from __future__ import annotations``): read them by name.
_WIRE_TYPES = {alias: globals()[alias].__metadata__[0] for alias in
               ("Byte", "Bool", "U32", "U64", "String", "Text", "Name", "Names", "Mpint", "Cookie", "Rest", "Texts")}

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
        """The payload: the message number (if any), then each field in wire order."""
        parts = [bytes((self.number,))] if self.number is not None else []
        for name, kind in self._fields:
            parts.append(_write_field(kind, getattr(self, name)))
        return b"".join(parts)

    @classmethod
    def decode(cls: type[_M], payload: bytes) -> _M:
        """Parse ``payload`` (with the message number, if the class has one); trailing bytes
        and malformed fields raise ProtocolError."""
        r = Reader(payload)
        if cls.number is not None and r.byte() != cls.number:
            raise ProtocolError(f"expected message {cls.number}")
        values = [_read_field(r, kind) for _, kind in cls._fields]
        r.finish()
        return cls(*values)


_M = TypeVar("_M", bound=Message)


@dataclass_transform(frozen_default=True)
def message(number: int | None) -> Callable[[type[_M]], type[_M]]:
    """Class decorator: ``@message(94)`` over ``class ChannelData(Message)`` whose annotated
    fields (``recipient: U32``, ``data: String``) are its wire layout, in order."""

    def wrap(cls: type[_M]) -> type[_M]:
        annotations = cls.__dict__.get("__annotations__", {})
        spec = tuple((name, _WIRE_TYPES[annotation]) for name, annotation in annotations.items())
        new = record(cls, base=Message, names=tuple(name for name, _ in spec))
        new.number = number  # type: ignore[attr-defined]
        new._fields = spec  # type: ignore[attr-defined]
        return new

    return wrap


# --- RFC 4253 transport ----------------------------------------------------------------

@message(MSG_DISCONNECT)
class Disconnect(Message):
    """RFC 4253 §11.1."""

    reason: U32
    description: Text
    language: String


@message(MSG_IGNORE)
class Ignore(Message):
    """RFC 4253 §11.2."""

    data: String


@message(MSG_UNIMPLEMENTED)
class Unimplemented(Message):
    """RFC 4253 §11.4."""

    seq: U32


@message(MSG_DEBUG)
class Debug(Message):
    """RFC 4253 §11.3."""

    always_display: Bool
    text: Text
    language: String


@message(MSG_SERVICE_REQUEST)
class ServiceRequest(Message):
    """RFC 4253 §10."""

    service: Name


@message(MSG_SERVICE_ACCEPT)
class ServiceAccept(Message):
    """RFC 4253 §10."""

    service: Name


@message(MSG_KEXINIT)
class KexInit(Message):
    """RFC 4253 §7.1."""

    cookie: Cookie
    kex_algorithms: Names
    server_host_key_algorithms: Names
    encryption_client_to_server: Names
    encryption_server_to_client: Names
    mac_client_to_server: Names
    mac_server_to_client: Names
    compression_client_to_server: Names
    compression_server_to_client: Names
    languages_client_to_server: Names
    languages_server_to_client: Names
    first_kex_packet_follows: Bool
    reserved: U32


@message(MSG_NEWKEYS)
class NewKeys(Message):
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

@message(MSG_USERAUTH_REQUEST)
class UserauthRequest(Message):
    """RFC 4252 §5; ``data`` is decoded by method with the *Method bodies below."""

    username: Text
    service: Name
    method: Name
    data: Rest


@message(MSG_USERAUTH_FAILURE)
class UserauthFailure(Message):
    """RFC 4252 §5.1."""

    methods: Names
    partial_success: Bool


@message(MSG_USERAUTH_SUCCESS)
class UserauthSuccess(Message):
    """RFC 4252 §5.1."""


@message(MSG_USERAUTH_BANNER)
class UserauthBanner(Message):
    """RFC 4252 §5.4."""

    message: Text
    language: String


@message(MSG_USERAUTH_PK_OK)
class UserauthPkOk(Message):
    """RFC 4252 §7."""

    algorithm: Name
    key_blob: String


@message(MSG_USERAUTH_PK_OK)
class UserauthInfoRequest(Message):
    """RFC 4256 §3.2; ``prompts`` is decoded with :func:`decode_prompts`."""

    name: Text
    instruction: Text
    language: String
    prompts: Rest


@message(MSG_USERAUTH_INFO_RESPONSE)
class UserauthInfoResponse(Message):
    """RFC 4256 §3.4."""

    responses: Texts


@message(None)
class PublickeyMethod(Message):
    """RFC 4252 §7 body; ``signature`` is b'' or one SSH string holding the signature."""

    has_signature: Bool
    algorithm: Name
    key_blob: String
    signature: Rest


@message(None)
class PasswordMethod(Message):
    """RFC 4252 §8 body (password changes are refused, so new_password must be empty)."""

    change: Bool
    password: Text
    new_password: Rest


@message(None)
class KbdIntMethod(Message):
    """RFC 4256 §3.1 body."""

    language: String
    submethods: Text


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

@message(MSG_GLOBAL_REQUEST)
class GlobalRequest(Message):
    """RFC 4254 §4."""

    name: Name
    want_reply: Bool
    data: Rest


@message(MSG_REQUEST_SUCCESS)
class RequestSuccess(Message):
    """RFC 4254 §4."""

    data: Rest


@message(MSG_REQUEST_FAILURE)
class RequestFailure(Message):
    """RFC 4254 §4."""


@message(MSG_CHANNEL_OPEN)
class ChannelOpen(Message):
    """RFC 4254 §5.1."""

    channel_type: Name
    sender: U32
    window: U32
    max_packet: U32
    data: Rest


@message(MSG_CHANNEL_OPEN_CONFIRMATION)
class ChannelOpenConfirmation(Message):
    """RFC 4254 §5.1."""

    recipient: U32
    sender: U32
    window: U32
    max_packet: U32
    data: Rest


@message(MSG_CHANNEL_OPEN_FAILURE)
class ChannelOpenFailure(Message):
    """RFC 4254 §5.1."""

    recipient: U32
    reason: U32
    description: Text
    language: String


@message(MSG_CHANNEL_WINDOW_ADJUST)
class ChannelWindowAdjust(Message):
    """RFC 4254 §5.2."""

    recipient: U32
    increment: U32


@message(MSG_CHANNEL_DATA)
class ChannelData(Message):
    """RFC 4254 §5.2."""

    recipient: U32
    data: String


@message(MSG_CHANNEL_EXTENDED_DATA)
class ChannelExtendedData(Message):
    """RFC 4254 §5.2."""

    recipient: U32
    data_type: U32
    data: String


@message(MSG_CHANNEL_EOF)
class ChannelEof(Message):
    """RFC 4254 §5.3."""

    recipient: U32


@message(MSG_CHANNEL_CLOSE)
class ChannelClose(Message):
    """RFC 4254 §5.3."""

    recipient: U32


@message(MSG_CHANNEL_REQUEST)
class ChannelRequest(Message):
    """RFC 4254 §5.4."""

    recipient: U32
    request_type: Name
    want_reply: Bool
    data: Rest


@message(MSG_CHANNEL_SUCCESS)
class ChannelSuccess(Message):
    """RFC 4254 §5.4."""

    recipient: U32


@message(MSG_CHANNEL_FAILURE)
class ChannelFailure(Message):
    """RFC 4254 §5.4."""

    recipient: U32


# --- bodies of typed requests and channel opens (RFC 4254 §6, §7; OpenSSH PROTOCOL) ------

@message(None)
class PtyRequest(Message):
    """RFC 4254 §6.2 "pty-req"."""

    term: Text
    cols: U32
    rows: U32
    width: U32
    height: U32
    modes: String


@message(None)
class EnvRequest(Message):
    """RFC 4254 §6.4 "env"."""

    name: Text
    value: Text


@message(None)
class ExecRequest(Message):
    """RFC 4254 §6.5 "exec" (the command is bytes: it need not be UTF-8)."""

    command: String


@message(None)
class SubsystemRequest(Message):
    """RFC 4254 §6.5 "subsystem"."""

    name: Name


@message(None)
class WindowChange(Message):
    """RFC 4254 §6.7 "window-change"."""

    cols: U32
    rows: U32
    width: U32
    height: U32


@message(None)
class SignalRequest(Message):
    """RFC 4254 §6.9 "signal" (signal name without the SIG prefix)."""

    signal: Name


@message(None)
class ExitStatus(Message):
    """RFC 4254 §6.10 "exit-status"."""

    status: U32


@message(None)
class ExitSignal(Message):
    """RFC 4254 §6.10 "exit-signal"."""

    signal: Name
    core_dumped: Bool
    message: Text
    language: String


@message(None)
class BreakRequest(Message):
    """RFC 4335 "break"."""

    length_ms: U32


@message(None)
class DirectTcpip(Message):
    """RFC 4254 §7.2 "direct-tcpip" open body (also "forwarded-tcpip": host/port = connected address)."""

    host: Text
    port: U32
    originator: Text
    originator_port: U32


@message(None)
class TcpipForward(Message):
    """RFC 4254 §7.1 "tcpip-forward" / "cancel-tcpip-forward" body."""

    address: Text
    port: U32


@message(None)
class TcpipForwardReply(Message):
    """RFC 4254 §7.1 reply carrying the allocated port when port 0 was requested."""

    port: U32


@message(None)
class X11Open(Message):
    """RFC 4254 §6.3.2 "x11" open body (refused, but decoded for a clean failure)."""

    originator: Text
    originator_port: U32


@message(None)
class Empty(Message):
    """A request or open with no type-specific data."""
