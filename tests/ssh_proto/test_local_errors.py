"""Local misuse raises LocalError, never ProtocolError (as h11's LocalProtocolError).

A ProtocolError means the *peer* broke the protocol and ends the connection with a
DISCONNECT naming it; calling the API wrongly is our own bug, raised to the caller, and the
peer is not disconnected for it: after each misuse below the connection still works.
"""
from __future__ import annotations

import pytest

from pairs import S, authenticated_pair, handshaken_pair, make_pair
from ssh_proto.connection import Connection, ConnectionOptions
from ssh_proto.errors import LocalError, ProtocolError, SSHError
from ssh_proto.state import Role


def _still_works(pair) -> None:
    cid = pair.open_session()
    pair.client.send_data(cid, b"ok")
    pair.pump()
    assert pair.data_received(S, pair.server_id(cid)) == b"ok"
    assert pair.failed is None and not pair.client.closed and not pair.server.closed


def test_local_error_is_an_ssh_error_but_not_a_protocol_error():
    assert issubclass(LocalError, SSHError) and not issubclass(LocalError, ProtocolError)


def test_sending_on_a_channel_that_is_not_open_is_a_local_error():
    pair = authenticated_pair()
    cid = pair.open_session()
    pair.client.close_channel(cid)
    pair.pump()
    with pytest.raises(LocalError):
        pair.client.send_data(cid, b"too late")
    with pytest.raises(LocalError):
        pair.client.send_channel_request(cid, "exec", b"")
    with pytest.raises(LocalError):
        pair.client.send_data(12345, b"no such channel")
    _still_works(pair)


def test_answering_what_was_not_asked_is_a_local_error():
    pair = authenticated_pair()
    cid = pair.open_session()
    with pytest.raises(LocalError):
        pair.server.reply_channel_request(pair.server_id(cid), 999, True)
    with pytest.raises(LocalError):
        pair.server.reply_global_request(999, True)
    with pytest.raises(LocalError):
        pair.server.accept_channel(pair.server_id(cid))  # already open
    with pytest.raises(LocalError):
        pair.server.auth_accept()                         # nothing pending
    _still_works(pair)


def test_a_message_off_our_own_table_is_a_local_error_and_is_not_sent():
    pair = handshaken_pair()
    with pytest.raises(LocalError):
        pair.client.open_channel("session")  # before USERAUTH_SUCCESS (T11, our side)
    with pytest.raises(LocalError):
        pair.client.send_global_request("keepalive@openssh.com")
    assert pair.client.data_to_send() == b"" and len(pair.client.channels) == 0  # nothing sent, nothing held
    pair.authenticate()
    _still_works(pair)


def test_auth_requests_out_of_turn_are_local_errors():
    pair = handshaken_pair()
    pair.client.auth_password("wrong")
    with pytest.raises(LocalError):
        pair.client.auth_password("again")   # one outstanding at a time
    with pytest.raises(LocalError):
        pair.client.auth_respond(("x",))     # no prompt out
    with pytest.raises(LocalError):
        pair.client.auth_banner("a client sends no banners")


def test_bad_arguments_are_local_errors():
    with pytest.raises(LocalError):
        Connection(Role.CLIENT, ConnectionOptions(window=0), verify_host_key=lambda key: None)
    with pytest.raises(LocalError):
        Connection(Role.SERVER)                       # a server needs a host key
    with pytest.raises(LocalError):
        Connection(Role.CLIENT)                       # a client needs a host-key policy
    pair = make_pair()
    with pytest.raises(LocalError):
        pair.client.auth_password("before the handshake")
