"""ssh_proto: an SSH-2 implementation for Trio, on ``cryptography`` primitives.

A sans-IO protocol core (``transport``, ``auth``, ``channels``, ``connection``) and a thin
Trio layer (``trio_io``). See ``ssh_proto/README.md`` for a client and a server example.

Client::

    async with ssh_proto.connect("host", username="alice", client_keys=["~/.ssh/id_ed25519"]) as conn:
        result = await conn.run("uname -a")
        print(result.exit_status, result.stdout)

Public means the names in ``__all__`` (here and in each module); while ``__version__`` is
0.x a release may break them, with an entry in ``ssh_proto/CHANGELOG.md``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import (AgentError, AuthError, CertificateError, ChannelError, ChannelOpenError, ConnectionLost,
                     DisconnectError, DisconnectReason, HostKeyNotVerifiable, KeyExchangeError, KeyFormatError,
                     LimitExceeded, LocalError, MACError, ProtocolError, SSHError)

# The rest of the public API is imported on first use (PEP 562), so that a program that
# only connects as a client does not load the server, the agent and their classes.
_LAZY = {
    "Connection": ".connection", "ConnectionOptions": ".connection",
    "Certificate": ".keys", "PrivateKey": ".keys", "PublicKey": ".keys", "load_identity": ".keys",
    "load_private_key": ".keys", "parse_public_blob": ".keys", "parse_public_line": ".keys",
    "KnownHosts": ".known_hosts", "Role": ".state", "Algorithms": ".transport",
    "SSHChannel": ".trio_io.channel", "SSHConnection": ".trio_io.connection",
    "Identity": ".trio_io.client", "SSHClientConnection": ".trio_io.client", "connect": ".trio_io.client",
    "Accept": ".trio_io.server", "Challenge": ".trio_io.server", "Partial": ".trio_io.server",
    "SSHListener": ".trio_io.server", "SSHServer": ".trio_io.server", "SSHServerConnection": ".trio_io.server",
    "policy_from_certificate": ".trio_io.server", "serve": ".trio_io.server", "serve_stream": ".trio_io.server",
    "PtyInfo": ".session_rules", "RunResult": ".trio_io.session", "ServerSession": ".trio_io.session",
    "SessionPolicy": ".session_rules", "SSHProcess": ".trio_io.session",
    "AgentClient": ".trio_io.agent", "InProcessAgent": ".trio_io.agent",
    "RelayPreamble": ".trio_io.preamble", "PreambleError": ".preamble",
    "ListenerProfile": ".limits", "Penalties": ".limits",
    "CertificateAuthority": ".ca",
}

if TYPE_CHECKING:  # what __getattr__ loads, for type checkers and IDEs (a test keeps it equal to _LAZY)
    from .ca import CertificateAuthority
    from .connection import Connection, ConnectionOptions
    from .keys import (Certificate, PrivateKey, PublicKey, load_identity, load_private_key, parse_public_blob,
                       parse_public_line)
    from .known_hosts import KnownHosts
    from .limits import ListenerProfile, Penalties
    from .preamble import PreambleError
    from .session_rules import PtyInfo, SessionPolicy
    from .state import Role
    from .transport import Algorithms
    from .trio_io.agent import AgentClient, InProcessAgent
    from .trio_io.channel import SSHChannel
    from .trio_io.client import Identity, SSHClientConnection, connect
    from .trio_io.connection import SSHConnection
    from .trio_io.preamble import RelayPreamble
    from .trio_io.server import (Accept, Challenge, Partial, SSHListener, SSHServer, SSHServerConnection,
                                 policy_from_certificate, serve, serve_stream)
    from .trio_io.session import RunResult, ServerSession, SSHProcess

#: The library's version (the ``jumpgate`` distribution's).
__version__ = "0.1.0"

__all__ = sorted([*_LAZY, "__version__", "AgentError", "AuthError", "CertificateError", "ChannelError", "ChannelOpenError",
                  "ConnectionLost", "DisconnectError", "DisconnectReason", "HostKeyNotVerifiable",
                  "KeyExchangeError", "KeyFormatError", "LimitExceeded", "LocalError", "MACError", "ProtocolError",
                  "SSHError"])


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ssh_proto' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
