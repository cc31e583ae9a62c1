"""Errors raised by ssh_proto.

Two kinds, kept apart as h11 keeps its RemoteProtocolError and LocalProtocolError:

* :class:`ProtocolError` (or a subclass): the *peer* broke the protocol. It carries the
  SSH_MSG_DISCONNECT reason code (RFC 4253 §11.1) the connection closes with; decoders
  raise nothing else on malformed input.
* :class:`LocalError`: *our* side used the API wrongly — sent on a channel that is not
  open, answered an authentication decision that is not pending, sent a message the
  table of :mod:`.state` does not allow us in the current phase, passed a window the
  protocol cannot carry. It is never a ProtocolError, so the I/O layer never answers it
  by disconnecting the peer with a "protocol error" that is ours; it is a bug in the
  caller, raised to the caller.

The key, certificate and cipher helpers (``keys``, ``certs``, ``ciphers``) raise
:class:`ValueError` for a bad argument, as the standard library does; they are not the
connection API.
"""
from __future__ import annotations

import enum


class DisconnectReason(enum.IntEnum):
    """SSH_MSG_DISCONNECT reason codes, RFC 4253 §11.1."""

    HOST_NOT_ALLOWED_TO_CONNECT = 1
    PROTOCOL_ERROR = 2
    KEY_EXCHANGE_FAILED = 3
    RESERVED = 4
    MAC_ERROR = 5
    COMPRESSION_ERROR = 6
    SERVICE_NOT_AVAILABLE = 7
    PROTOCOL_VERSION_NOT_SUPPORTED = 8
    HOST_KEY_NOT_VERIFIABLE = 9
    CONNECTION_LOST = 10
    BY_APPLICATION = 11
    TOO_MANY_CONNECTIONS = 12
    AUTH_CANCELLED_BY_USER = 13
    NO_MORE_AUTH_METHODS_AVAILABLE = 14
    ILLEGAL_USER_NAME = 15


class SSHError(Exception):
    """Base class of every error ssh_proto raises."""


class ProtocolError(SSHError):
    """The peer broke the protocol; the connection must be closed.

    ``reason`` is the disconnect reason code to send, ``description`` a short
    human-readable text (never containing secrets).
    """

    reason: DisconnectReason = DisconnectReason.PROTOCOL_ERROR

    def __init__(self, description: str, reason: DisconnectReason | None = None):
        super().__init__(description)
        self.description = description
        if reason is not None:
            self.reason = DisconnectReason(reason)


class LocalError(SSHError):
    """This side called the API wrongly (a bug in the caller, not the peer's doing).

    For example: sending data on a channel that is not open, replying to a request
    token that does not exist, ``accept()`` with no authentication decision pending, or
    sending a message number the table in :mod:`ssh_proto.state` does not allow us now
    (docs/security.md T11 applies to our own sends too). Never a :class:`ProtocolError`.
    """


class MACError(ProtocolError):
    """A packet failed its MAC or AEAD tag check."""

    reason = DisconnectReason.MAC_ERROR


class KeyExchangeError(ProtocolError):
    """Key exchange could not complete (no common algorithm, bad public value, ...)."""

    reason = DisconnectReason.KEY_EXCHANGE_FAILED


class HostKeyNotVerifiable(ProtocolError):
    """The server's host key (or certificate) is not trusted."""

    reason = DisconnectReason.HOST_KEY_NOT_VERIFIABLE


class LimitExceeded(ProtocolError):
    """A limit refused a connection or a login (docs/security.md § Limits); the description
    says which one, and is what the peer reads in the DISCONNECT."""

    reason = DisconnectReason.TOO_MANY_CONNECTIONS


class DisconnectError(SSHError):
    """The peer sent SSH_MSG_DISCONNECT, or the connection was lost."""

    def __init__(self, reason: int, description: str = ""):
        super().__init__(f"disconnected ({reason}): {description}")
        self.reason = reason
        self.description = description


class ConnectionLost(DisconnectError):
    """The byte stream ended or failed without a DISCONNECT message."""

    def __init__(self, description: str = "connection lost"):
        super().__init__(DisconnectReason.CONNECTION_LOST, description)


class AuthError(SSHError):
    """User authentication failed (client side): no offered method was accepted.

    ``banners`` are the USERAUTH_BANNER texts (RFC 4252 §5.4) the server sent before giving
    up: often the reason, in words for the user (OpenSSH prints them on stderr).
    """

    def __init__(self, message: str = "", banners: tuple[str, ...] = ()):
        super().__init__(message)
        self.banners = tuple(banners)


class KeyFormatError(ProtocolError, ValueError):
    """A key, signature, certificate or key file could not be parsed.

    A subclass of :class:`ProtocolError` so that a malformed key blob received on the
    wire closes the connection like any other malformed field.
    """


class CertificateError(SSHError):
    """A certificate was rejected; ``str(err)`` says which rule it broke."""


class ChannelOpenError(SSHError):
    """A channel could not be opened (RFC 4254 §5.1): the peer refused it, or one of our own
    limits did (resource shortage, docs/security.md L4).

    ``reason`` is the RFC 4254 §5.1 reason code (``messages.OPEN_ADMINISTRATIVELY_PROHIBITED``,
    ``OPEN_CONNECT_FAILED``, ``OPEN_UNKNOWN_CHANNEL_TYPE``, ``OPEN_RESOURCE_SHORTAGE``) and
    ``description`` the peer's text. A server application refuses a channel with a reason
    of its choosing by raising it from ``SSHServer.direct_tcpip`` or ``channel_open``::

        raise ChannelOpenError(OPEN_ADMINISTRATIVELY_PROHIBITED, "unknown node 'db9'")
    """

    def __init__(self, reason: int, description: str = ""):
        super().__init__(f"channel open failed ({reason}): {description}")
        self.reason = reason
        self.description = description


class ChannelError(SSHError):
    """A channel operation failed (closed channel, refused request, ...)."""


class AgentError(SSHError):
    """An SSH agent refused a request (FAILURE), or could not be reached or used."""
