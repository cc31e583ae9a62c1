"""The Trio layer of ssh_proto: the only part of the library that does I/O."""
from .channel import SSHChannel
from .client import Identity, SSHClientConnection, connect
from .connection import SSHConnection
from .server import Accept, Challenge, Partial, SSHListener, SSHServer, SSHServerConnection, policy_from_certificate, serve, serve_stream
from .session import PtyInfo, RunResult, ServerSession, SessionPolicy, SSHProcess

__all__ = ["SSHChannel", "Identity", "SSHClientConnection", "connect", "SSHConnection", "Accept", "Challenge",
           "Partial", "SSHListener", "SSHServer", "SSHServerConnection", "policy_from_certificate", "serve",
           "serve_stream", "PtyInfo", "RunResult", "ServerSession", "SessionPolicy", "SSHProcess"]
