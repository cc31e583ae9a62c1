"""The internal API between Jumpgate roles: msgpack frames on an SSH subsystem.

Nodes, proxies and ``jumpgate ctl`` call the auth role's
:class:`~appliance.auth.service.AuthService` over SSH (port 3025, subsystem
``jumpgate-api``), authenticated by host and user certificates.

* :mod:`.protocol` — the sans-IO wire format (frames, messages, decoder).
* :mod:`.client` — :class:`ApiClient`, the caller's side.
* :mod:`.server` — :func:`serve_api_channel`, the allow-table per role and dispatch.

>>> async with ApiClient.connect("auth:3025", identity=(key, cert), host_ca_key=ca) as api:  # doctest: +SKIP
...     await api.heartbeat(addr="10.0.0.5:3022", labels={"env": "dev"})
"""
from .client import ApiClient, ApiError, parse_addr, verify_auth_server
from .protocol import (MAX_FRAME, SUBSYSTEM, VERSION, ApiProtocolError, ErrorResponse, FrameDecoder, FrameTooLarge,
                       Request, Response)
from .server import ALLOWED, Caller, serve_api_channel

__all__ = ["ALLOWED", "MAX_FRAME", "SUBSYSTEM", "VERSION", "ApiClient", "ApiError", "ApiProtocolError", "Caller",
           "ErrorResponse", "FrameDecoder", "FrameTooLarge", "Request", "Response", "parse_addr",
           "serve_api_channel", "verify_auth_server"]
