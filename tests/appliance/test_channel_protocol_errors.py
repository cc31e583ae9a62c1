"""Jumpgate's own protocols inside SSH channels fail with their own errors, not SSH's.

An API frame, a node list or an scp record that breaks its protocol ends that stream or
command; the SSH connection is not at fault. So their errors share a base of their own
(appliance/errors.py) and are no ssh_proto.ProtocolError — code that catches SSH errors (a
lost connection, a DISCONNECT to send) never takes them for one.
"""
from __future__ import annotations

import pytest

import ssh_proto
from appliance.api.protocol import ApiProtocolError, FrameDecoder, FrameTooLarge
from appliance.client.ssh import ScpProtocolError
from appliance.errors import ChannelProtocolError
from appliance.proxy.routing import NodeListError, decode_list_response


@pytest.mark.parametrize("cls", [ApiProtocolError, FrameTooLarge, NodeListError, ScpProtocolError])
def test_channel_protocol_errors_are_not_ssh_errors(cls):
    assert issubclass(cls, ChannelProtocolError)
    assert not issubclass(cls, ssh_proto.SSHError) and not issubclass(cls, ssh_proto.ProtocolError)
    assert cls("why").description == "why"


def test_a_malformed_api_frame_raises_an_api_protocol_error_not_an_ssh_one():
    decoder = FrameDecoder.for_responses()
    decoder.feed(b"\x00\x00\x00\x01\xc1")  # one byte msgpack never uses
    with pytest.raises(ApiProtocolError) as info:
        decoder.next_message()
    assert not isinstance(info.value, ssh_proto.SSHError)


def test_a_malformed_node_list_raises_node_list_error_not_an_ssh_one():
    with pytest.raises(NodeListError) as info:
        decode_list_response(b"")
    assert not isinstance(info.value, ssh_proto.SSHError)
