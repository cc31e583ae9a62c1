"""What travels on a reverse tunnel: its channel types, their open data and its timers.

A reverse tunnel is one SSH connection that a node (the SSH *client*) dials to a proxy (the
SSH *server*), both authenticated by host certificates of the cluster's host CA
(docs/security.md N1). Everything between the two then runs as channels on that connection,
so a node behind a firewall costs one outbound connection whatever it does:

==========================  =============  ==================================================
channel type                opened by      carries
==========================  =============  ==================================================
``jumpgate-node@jumpgate``  the proxy      one user connection to the node's SSH server,
                                           relay line first (:mod:`appliance.relay`); the
                                           open data is the relay address the line names
``jumpgate-api@jumpgate``   the node       one SSH connection to the auth API (join,
                                           heartbeat, audit, push stream), end to end: the
                                           proxy forwards the bytes and reads none of them
==========================  =============  ==================================================

Both sides send ``keepalive@openssh.com`` global requests (the reply, success or not, is the
proof of life): a path that silently stops forwarding is noticed within
``KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`` seconds by the node and a little later by the
proxy, then the node redials.

>>> decode_relay(encode_relay(("10.0.0.1", 3024)))
('10.0.0.1', 3024)
"""
from __future__ import annotations

from ssh_proto.errors import ProtocolError
from ssh_proto.wire import Reader, encode_string, encode_uint32

__all__ = ["API_CHANNEL", "JOIN_USER", "KEEPALIVE", "KEEPALIVE_INTERVAL", "KEEPALIVE_TIMEOUT", "NODE_CHANNEL",
           "PROXY_KEEPALIVE_INTERVAL", "decode_relay", "encode_relay"]

NODE_CHANNEL = "jumpgate-node@jumpgate"
API_CHANNEL = "jumpgate-api@jumpgate"
KEEPALIVE = "keepalive@openssh.com"
#: The SSH user of a node that joins through the tunnel (it has no certificate yet).
JOIN_USER = "-join"

KEEPALIVE_INTERVAL = 5.0         # node: a keepalive every 5 s ...
KEEPALIVE_TIMEOUT = 10.0         # ... answered within 10 s, or the tunnel is dead (at most 15 s)
PROXY_KEEPALIVE_INTERVAL = 10.0  # proxy: every 10 s, the same timeout (at most 20 s)


def encode_relay(address: tuple[str, int]) -> bytes:
    return encode_string(str(address[0])) + encode_uint32(int(address[1]))


def decode_relay(data: bytes) -> tuple[str, int]:
    """The relay address of a node channel's open data; ProtocolError if malformed."""
    r = Reader(data)
    host, port = r.string(256).decode("ascii", "replace"), r.uint32()
    r.finish()
    if port > 65535:
        raise ProtocolError("relay port out of range")
    return host, port
