"""The base of the errors of Jumpgate's own protocols, carried inside SSH channels.

The internal API's frames (:mod:`appliance.api.protocol`), the proxy's node list
(:mod:`appliance.proxy.routing`) and the scp records ``jumpgate scp`` reads
(:mod:`appliance.client.ssh`) are protocols of their own, one per channel. A peer breaking
one raises a :class:`ChannelProtocolError`. It is deliberately *not* an
:class:`ssh_proto.ProtocolError` (nor any :class:`ssh_proto.SSHError`): the SSH connection
did nothing wrong, so such an error ends that stream or command, and is never mistaken for
an SSH failure by code that catches those (a lost connection, a DISCONNECT to send).
"""
from __future__ import annotations

__all__ = ["ChannelProtocolError"]


class ChannelProtocolError(Exception):
    """A peer broke a protocol carried in an SSH channel; ``description`` says how, in one line."""

    def __init__(self, description: str):
        super().__init__(description)
        self.description = description
