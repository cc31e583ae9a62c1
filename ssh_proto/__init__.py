"""ssh_proto: an SSH-2 implementation for Trio, on ``cryptography`` primitives.

A sans-IO protocol core (``transport``, ``auth``, ``channels``, ``connection``) and a thin
Trio layer (``trio_io``). See ``ssh_proto/README.md`` for a client and a server example.

Client::

    async with ssh_proto.connect("host", username="alice", client_keys=["~/.ssh/id_ed25519"]) as conn:
        result = await conn.run("uname -a")
        print(result.exit_status, result.stdout)
"""
from .connection import Connection, ConnectionOptions
from .errors import (AuthError, CertificateError, ChannelError, ChannelOpenError, ConnectionLost, DisconnectError,
                     DisconnectReason, HostKeyNotVerifiable, KeyExchangeError, KeyFormatError, MACError,
                     ProtocolError, SSHError)
from .keys import Certificate, PrivateKey, PublicKey, load_identity, load_private_key, parse_public_blob, parse_public_line
from .known_hosts import KnownHosts
from .state import Role
from .transport import Algorithms
from .trio_io import (Accept, Challenge, Identity, Partial, PtyInfo, RunResult, ServerSession, SessionPolicy,
                      SSHChannel, SSHClientConnection, SSHListener, SSHProcess, SSHServer, SSHServerConnection,
                      connect, policy_from_certificate, serve, serve_stream)
from .trio_io.agent import AgentClient, InProcessAgent

__all__ = [name for name in dir() if not name.startswith("_")]
