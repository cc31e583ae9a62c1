"""SSHServer's defaults: the methods offered, and the answer to a key query (no sockets).

docs/security.md T12b: unless ConnectionOptions names the methods, a server offers those its
SSHServer implements. T12a: a key query's default answer has no side effects — yes exactly
when auth_publickey is implemented (the real OpenSSH and asyncssh clients:
tests/interop/test_server_auth_defaults.py).
"""
from __future__ import annotations

import ssh_proto
from pairs import C, S, make_pair, user_key
from ssh_proto import events as ev
from ssh_proto.connection import ConnectionOptions
from ssh_proto.trio_io.server import implemented_auth_methods, options_for


class Nothing(ssh_proto.SSHServer):
    pass


class Keys(ssh_proto.SSHServer):
    async def auth_publickey(self, username, key):
        return True


class Everything(Keys):
    async def auth_password(self, username, password):
        return False

    async def auth_kbdint(self, username, submethods):
        return False


class OnlyTheQuery(ssh_proto.SSHServer):
    async def auth_publickey_acceptable(self, username, key):
        return True   # answering queries lets nobody in: not a method on its own


def test_T12b_offered_methods_are_the_implemented_ones():
    assert implemented_auth_methods(Nothing()) == ()
    assert implemented_auth_methods(Keys()) == ("publickey",)
    assert implemented_auth_methods(Everything()) == ("publickey", "password", "keyboard-interactive")
    assert implemented_auth_methods(OnlyTheQuery()) == ()


def test_T12b_an_instance_attribute_counts_as_an_implementation():
    server = Nothing()
    server.auth_password = lambda username, password: True
    assert implemented_auth_methods(server) == ("password",)


def test_T12b_connection_options_naming_methods_win():
    named = ConnectionOptions(auth_methods=("password",))
    assert options_for(Keys(), named) is named
    assert options_for(Keys(), ConnectionOptions()).auth_methods == ("publickey",)


def test_T12b_the_offer_is_what_the_client_is_told():
    """The server's USERAUTH_FAILURE lists the offered methods only."""
    pair = make_pair(server_options=options_for(Keys(), ConnectionOptions()))
    pair.pump()
    pair.client.auth_password("no such method here")
    pair.pump()
    (failure,) = pair.take(C, ev.AuthResult)
    assert failure.methods == ("publickey",) and not pair.take(S, ev.AuthPassword)


async def test_T12a_the_default_answer_to_a_query_is_yes_only_with_auth_publickey():
    key = user_key().public_key
    assert await Keys().auth_publickey_acceptable("alice", key) is True
    assert await Everything().auth_publickey_acceptable("alice", key) is True
    assert await Nothing().auth_publickey_acceptable("alice", key) is False
