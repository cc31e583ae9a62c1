"""Events the sans-IO :class:`~ssh_proto.connection.Connection` hands to the I/O layer.

Small frozen classes; the I/O layer (``trio_io``) turns them into awaitable results, stream
data and calls into the application.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, dataclass_transform

from ._record import Record, record

if TYPE_CHECKING:
    from .keys import Certificate, PublicKey


class Event(Record):
    """Base of every event: a frozen record whose fields are its class's annotations."""

    __slots__ = ()


_E = TypeVar("_E", bound=Event)


@dataclass_transform(frozen_default=True)
def _dc(cls: type[_E]) -> type[_E]:
    return record(cls, base=Event)


@dataclass_transform(frozen_default=True)
def _secret(*hidden: str) -> Callable[[type[_E]], type[_E]]:
    """Like _dc, with fields kept out of repr (passwords, keyboard-interactive answers)."""
    def wrap(cls: type[_E]) -> type[_E]:
        annotations = cls.__dict__.get("__annotations__", {})
        return record(cls, base=Event, names=tuple(annotations), hidden=frozenset(hidden))
    return wrap


# --- transport ------------------------------------------------------------------------------
@_dc
class HandshakeComplete(Event):
    """The first key exchange finished; the peer's host key (client side) is verified."""


@_dc
class ServiceAccepted(Event):
    """Client: the server accepted ssh-userauth; authentication may start."""


# --- user authentication, server side (the application decides) ---------------------------
@_dc
class AuthNone(Event):
    username: str


@_dc
class AuthPublicKeyQuery(Event):
    """Would this key be accepted? (no signature yet; answer with pk_ok or reject)."""

    username: str
    key: PublicKey | Certificate
    algorithm: str


@_dc
class AuthPublicKey(Event):
    """The client proved possession of ``key`` (signature already verified)."""

    username: str
    key: PublicKey | Certificate
    algorithm: str


@_secret("password")
class AuthPassword(Event):
    username: str
    password: str


@_dc
class AuthKbdInt(Event):
    username: str
    submethods: str


@_secret("responses")
class AuthKbdIntResponse(Event):
    username: str
    responses: tuple[str, ...]


@_dc
class AuthSucceeded(Event):
    """Server: the user is authenticated; the connection protocol starts."""

    username: str


# --- user authentication, client side -------------------------------------------------------
@_dc
class AuthBanner(Event):
    message: str


@_dc
class AuthResult(Event):
    """Client: the server's answer to the last request."""

    success: bool
    methods: tuple[str, ...] = ()
    partial: bool = False


@_dc
class AuthPkOk(Event):
    algorithm: str
    key_blob: bytes


@_dc
class AuthInfoRequest(Event):
    name: str
    instruction: str
    prompts: tuple[tuple[str, bool], ...]


# --- connection protocol --------------------------------------------------------------------
@_dc
class GlobalRequestReceived(Event):
    name: str
    want_reply: bool
    data: bytes
    token: int = -1  # pass to Connection.reply_global_request when want_reply


@_dc
class GlobalRequestReplied(Event):
    success: bool
    data: bytes


@_dc
class ChannelOpenRequest(Event):
    channel_id: int
    channel_type: str
    data: bytes


@_dc
class ChannelOpenRefused(Event):
    """A CHANNEL_OPEN the limits refused (docs/security.md L4): the failure is already sent."""

    channel_type: str
    description: str


@_dc
class ChannelOpenConfirmed(Event):
    channel_id: int
    data: bytes


@_dc
class ChannelOpenFailed(Event):
    channel_id: int
    reason: int  # RFC 4254 §5.1 reason code
    description: str


@_dc
class ChannelDataReceived(Event):
    channel_id: int
    data: bytes
    data_type: int = 0  # 0 = normal data, 1 = stderr (EXTENDED_DATA_STDERR)


@_dc
class ChannelEofReceived(Event):
    channel_id: int


@_dc
class ChannelCloseReceived(Event):
    """The peer closed the channel; our CLOSE has been (or is now) sent and the id is free."""

    channel_id: int


@_dc
class ChannelRequestReceived(Event):
    channel_id: int
    request_type: str
    want_reply: bool
    data: bytes
    token: int  # pass to Connection.reply_channel_request when want_reply


@_dc
class ChannelRequestReplied(Event):
    channel_id: int
    success: bool


@_dc
class ChannelWindowAdjusted(Event):
    """More send window is available on this channel."""

    channel_id: int


@_dc
class Disconnected(Event):
    """The peer sent DISCONNECT or the stream ended."""

    reason: int
    description: str
