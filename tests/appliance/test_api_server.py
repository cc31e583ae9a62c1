"""The auth API end to end over loopback SSH: serve_auth + serve_api_channel + ApiClient,
with a real AuthService on in-memory SQLite.

Rules checked (appliance notes "Trust and identities", api/server.py's rules 1-5): who
gets in at SSH auth (host certificates from the host CA named <role>:<user>, admin user
certificates, nothing else; refusals audited), what each role may call (allow-table,
self-only calls, server-set parameters; denials audited), how the client verifies the
server (host CA and the auth: key id, no TOFU), and that malformed or vanishing peers
never disturb the server.
"""
from __future__ import annotations

import contextlib
import functools

import struct

import msgpack
import pytest
import trio

import ssh_proto
from appliance.api.client import ApiClient, ApiError
from appliance.api.protocol import MAX_FRAME, SUBSYSTEM, Request, encode_request
from appliance.auth import totp
from appliance.auth.passwords import PasswordHasher
from appliance.auth.server import AuthSSHServer, serve_auth
from ssh_proto.errors import AuthError, ChannelOpenError, HostKeyNotVerifiable
from ssh_proto.keys import PrivateKey
from ssh_proto.known_hosts import KnownHosts

from _api_helpers import PASSWORD, OffsetClock, make_service, otp_secret, rogue_host_cert, rogue_user_cert, running_auth


async def refused_logins(env) -> list:
    return [e for e in await env.audit("auth") if not e.success]


# ------------------------------------------------------------------ admin

async def test_admin_certificate_can_create_users_and_tokens():
    async with running_auth() as env:
        async with env.connect(await env.admin_identity("root")) as api:
            invite = await api.create_user(name="alice", logins=["alice", "root"])
            token = await api.call("create_token", kind="node", ttl_seconds=600)
            users = await api.list_users()
            tokens = await api.list_tokens()
        assert invite["user"] == "alice" and invite["token"]
        assert token["token"].endswith("." + env.pin.removeprefix("sha256:"))
        assert {u["name"] for u in users} == {"root", "alice"}
        assert [t["id"] for t in tokens] == [token["id"]]
        created = await env.audit("user.create")
        assert created[0].fields["actor"] == "user:root"  # the server names the actor


async def test_the_server_names_the_actor_whatever_the_client_sends():
    async with running_auth() as env:
        async with env.connect(await env.admin_identity("root")) as api:
            await api.create_user(name="bob", logins=["bob"], actor="user:someone-else")
            await api.delete_user(name="bob", actor="")
        assert [e.fields["actor"] for e in await env.audit("user.delete")] == ["user:root"]
        assert [e.fields["actor"] for e in await env.audit("user.create") if e.user == "bob"] == ["user:root"]


async def test_unknown_method_and_wrong_parameters_are_errors_not_disconnects():
    async with running_auth() as env:
        async with env.connect(await env.admin_identity()) as api:
            with pytest.raises(ApiError) as unknown:
                await api.call("storage")
            with pytest.raises(ApiError) as bad:
                await api.create_user(nom="x")
            with pytest.raises(ApiError) as service_error:
                await api.delete_user(name="nobody")
            assert await api.cluster_info()  # the channel still works
        assert unknown.value.code == "unknown_method"
        assert bad.value.code == "bad_request"
        assert service_error.value.code == "not_found"


async def test_frames_near_the_size_limit_cross_the_ssh_channel():
    async with running_auth() as env:
        async with env.connect(await env.admin_identity()) as api:
            with pytest.raises(ApiError) as err:
                await api.get_user(name="x" * (MAX_FRAME - 100))
            assert err.value.code == "bad_request"
            assert (await api.cluster_info())["cluster"] == "acme"


async def test_admin_client_can_verify_the_server_with_a_known_hosts_cert_authority_line():
    async with running_auth() as env:
        known_hosts = KnownHosts.parse((await env.service.cluster_info()).host_ca + "\n")
        async with ApiClient.connect(env.addr, identity=await env.admin_identity(), known_hosts=known_hosts) as api:
            assert (await api.cluster_info())["host_ca_pin"] == env.pin


# ------------------------------------------------------------------ nodes and proxies

async def test_node_certificate_can_heartbeat_itself_but_not_create_users_and_is_audited():
    async with running_auth() as env:
        async with env.connect(await env.joined_identity("db1")) as api:
            await api.heartbeat(addr="127.0.0.1:3022", labels={"env": "dev"})
            with pytest.raises(ApiError) as err:
                await api.create_user(name="mallory", logins=["root"])
            assert err.value.code == "permission_denied"
            info = await api.cluster_info()
        assert info["cluster"] == "acme"
        assert (await env.service.get_node("db1")).labels == {"env": "dev"}
        assert "mallory" not in {u.name for u in await env.service.list_users()}
        denied = await refused_logins(env)
        assert [(e.user, e.fields["method"], e.fields["caller"]) for e in denied] == [("db1", "create_user", "node")]


async def test_node_may_heartbeat_and_renew_only_for_itself():
    async with running_auth() as env:
        await env.joined_identity("db2")
        identity = await env.joined_identity("db1")
        async with env.connect(identity) as api:
            with pytest.raises(ApiError) as beat:
                await api.heartbeat(name="db2", addr="127.0.0.1:1")
            with pytest.raises(ApiError) as renew:
                await api.renew_host_cert(name="db2", host_public_key_blob=identity[0].public_key.blob)
            renewed = await api.renew_host_cert(host_public_key_blob=identity[0].public_key.blob)
        assert beat.value.code == renew.value.code == "permission_denied"
        assert renewed["host_cert"].split()[0] == "ssh-ed25519-cert-v01@openssh.com"


async def test_node_audit_events_are_attributed_to_the_node():
    async with running_auth() as env:
        async with env.connect(await env.joined_identity("db1")) as api:
            await api.emit_audit(event={"event": "session.start", "user": "alice", "fields": {"login": "root"}})
            await api.emit_audit(event={"event": "session.end", "user": "alice"}, emitter="node:other")
            with pytest.raises(ApiError) as forged:
                await api.emit_audit(event={"event": "user.login", "user": "alice"})   # not a node's event
        assert forged.value.code == "bad_request"
        events = await env.audit("session.start") + await env.audit("session.end")
        assert [e.fields["emitter"] for e in events] == ["node:db1", "node:db1"]


async def test_proxy_serves_the_web_role_but_cannot_administer():
    async with running_auth() as env:
        invite = await env.service.create_user("carol", ["carol"])
        await env.joined_identity("db1")
        async with env.connect(await env.joined_identity("gw", kind="proxy")) as api:
            info = await api.get_invite(token=invite.token)
            nodes = await api.list_nodes(labels={"env": "test"})
            with pytest.raises(ApiError) as err:
                await api.create_token(kind="node")
        assert info["user"] == "carol"
        assert [n["name"] for n in nodes] == ["db1"]
        assert err.value.code == "permission_denied"


async def test_removed_node_is_refused_at_ssh_auth_before_its_certificate_expires():
    async with running_auth() as env:
        identity = await env.joined_identity("db1")
        await env.service.remove_node("db1")
        with pytest.raises(AuthError):
            async with env.connect(identity):
                pass
        assert "not a registered node" in (await refused_logins(env))[0].fields["reason"]


async def test_node_certificate_must_name_the_ssh_user():
    async with running_auth() as env:
        identity = await env.joined_identity("db1")
        await env.joined_identity("db2")
        with pytest.raises(AuthError):
            async with env.connect(identity, username="db2"):
                pass


# ------------------------------------------------------------------ refused at SSH auth

async def test_user_certificate_without_admin_role_is_refused_and_audited():
    async with running_auth() as env:
        identity = await env.user_identity("dave")
        with pytest.raises(AuthError):
            async with env.connect(identity):
                pass
        reasons = [e.fields["reason"] for e in await refused_logins(env) if e.user == "dave"]
        assert any("admin role" in r for r in reasons)


async def test_rule10_user_certificate_from_another_ca_is_refused_at_ssh_auth():
    async with running_auth() as env:
        await env.admin_identity("root")  # the user exists and is an admin
        with pytest.raises(AuthError):
            async with env.connect(rogue_user_cert("root")):
                pass
        assert any("rule 10" in e.fields["reason"] for e in await refused_logins(env))


async def test_rule17_host_certificate_from_another_ca_is_refused_at_ssh_auth():
    async with running_auth() as env:
        await env.joined_identity("db1")
        with pytest.raises(AuthError):
            async with env.connect(rogue_host_cert("db1")):
                pass


async def test_demoted_admin_certificate_is_refused():
    async with running_auth() as env:
        identity = await env.admin_identity("root")
        await env.service.delete_user("root")
        with pytest.raises(AuthError):
            async with env.connect(identity):
                pass


async def test_plain_key_and_unknown_password_user_are_refused():
    async with running_auth() as env:
        host, port = "127.0.0.1", env.port
        with pytest.raises(AuthError):
            async with ssh_proto.connect(host, port, username="root", client_keys=[PrivateKey.generate()],
                                         known_hosts=None):
                pass
        with pytest.raises(AuthError):
            async with ssh_proto.connect(host, port, username="root", password="hunter2", known_hosts=None):
                pass
        methods = sorted(e.fields["method"] for e in await refused_logins(env))
        assert methods == ["password", "publickey"]


async def test_join_password_with_unknown_token_is_refused_at_ssh_auth():
    async with running_auth() as env:
        with pytest.raises(AuthError):
            async with ApiClient.connect_join(env.addr, "A" * 22, env.pin):
                pass
        assert (await refused_logins(env))[0].fields["reason"] == "join token refused (not_found)"


async def test_joining_caller_may_only_join():
    async with running_auth() as env:
        secret = (await env.token()).split(".")[0]
        async with ApiClient.connect_join(env.addr, secret, env.pin) as api:
            with pytest.raises(ApiError) as err:
                await api.list_nodes()
        assert err.value.code == "permission_denied"


# ------------------------------------------------------------------ channel policy

async def test_no_shell_exec_or_port_forwarding_only_the_api_subsystem():
    async with running_auth() as env:
        key, cert = await env.admin_identity()
        async with ssh_proto.connect("127.0.0.1", env.port, username="root", client_keys=[(key, cert)],
                                     known_hosts=None) as conn:
            result = await conn.run("id")
            assert result.exit_status == 1 and b"jumpgate-api" in result.stderr
            with pytest.raises(ChannelOpenError):
                await conn.open_direct_tcpip("127.0.0.1", env.port)
            with pytest.raises(ssh_proto.ChannelError):
                await conn.open_session("id", pty=True)


# ------------------------------------------------------------------ client verifies the server

async def test_client_refuses_a_server_from_another_host_ca_no_tofu():
    async with running_auth() as env:
        other = await make_service()
        with pytest.raises(HostKeyNotVerifiable):
            async with env.connect(await env.admin_identity(), host_ca_key=other.ca.host_ca_public):
                pass


async def test_client_refuses_a_node_posing_as_the_auth_server():
    """A node holds a host certificate from the same CA: without the auth: key id check it
    could impersonate the auth server to other nodes."""
    service = await make_service()
    key = PrivateKey.generate()
    result = await service.join((await service.create_token("node")).token, "node", "evil", key.public_key.blob,
                                ["127.0.0.1"])
    from _api_helpers import parse_cert
    node_cert = parse_cert(result.host_cert)
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(lambda task_status: ssh_proto.serve(
            lambda: AuthSSHServer(service, service.ca), "127.0.0.1", 0, host_keys=[(key, node_cert)],
            task_status=task_status))
        with pytest.raises(HostKeyNotVerifiable, match="not an auth server"):
            async with ApiClient.connect(("127.0.0.1", listener.port), identity=(key, node_cert),
                                         host_ca_key=service.ca.host_ca_public):
                pass
        nursery.cancel_scope.cancel()


async def test_serve_auth_refuses_a_non_auth_host_certificate():
    service = await make_service()
    key, cert = rogue_host_cert("x", kind="node")
    with pytest.raises(ValueError):
        await serve_auth(service, service.ca, (key, cert), "127.0.0.1", 0)


# ------------------------------------------------------------------ robustness

async def _raw_api_channel(env, identity):
    """An SSH connection with a bare API channel (to send what ApiClient never would)."""
    key, cert = identity
    return ssh_proto.connect("127.0.0.1", env.port, username=cert.key_id.split(":")[1], client_keys=[(key, cert)],
                             known_hosts=None)


async def _read_all(proc) -> bytes:
    with trio.fail_after(10):
        return await proc.read_all()


async def test_oversized_frame_gets_a_protocol_error_and_the_server_keeps_serving():
    async with running_auth() as env:
        identity = await env.admin_identity()
        async with await _raw_api_channel(env, identity) as conn:
            proc = await conn.open_session(subsystem=SUBSYSTEM)
            await proc.send_all(struct.pack(">I", MAX_FRAME + 1) + b"\x00" * 100)
            data = await _read_all(proc)
        reply = msgpack.unpackb(data[4:])
        assert reply["ok"] is False and reply["error"]["code"] == "protocol_error" and reply["id"] == 0
        async with env.connect(identity) as api:
            assert (await api.cluster_info())["cluster"] == "acme"


async def test_garbage_msgpack_ends_the_channel_with_a_protocol_error():
    async with running_auth() as env:
        async with await _raw_api_channel(env, await env.admin_identity()) as conn:
            proc = await conn.open_session(subsystem=SUBSYSTEM)
            await proc.send_all(b"\x00\x00\x00\x02\xc1\xc1")
            data = await _read_all(proc)
        assert msgpack.unpackb(data[4:])["error"]["code"] == "protocol_error"


async def test_abrupt_disconnect_mid_frame_leaves_the_server_serving():
    async with running_auth() as env:
        identity = await env.admin_identity()
        stream = await trio.open_tcp_stream("127.0.0.1", env.port)
        async with ssh_proto.connect("127.0.0.1", env.port, username="root", client_keys=[identity],
                                     known_hosts=None, stream=stream) as conn:
            proc = await conn.open_session(subsystem=SUBSYSTEM)
            await proc.send_all(encode_request(Request(1, "list_users", {}))[:7])  # half a frame
            await stream.aclose()   # the TCP connection vanishes, no SSH goodbye
            with pytest.raises(trio.BrokenResourceError):
                await proc.read_all()
        async with env.connect(identity) as api:
            assert {u["name"] for u in await api.list_users()} == {"root"}


class GatedHasher:
    """A real (cheap) hasher whose password checks start, say so (``checking``), and go on only
    when the test opens the gate: a call held mid-hash, as long as the test needs."""

    def __init__(self) -> None:
        self.inner = PasswordHasher(n=2**10)
        self.checking = trio.Event()
        self.gate = trio.Event()

    @contextlib.asynccontextmanager
    async def slot(self):
        async with self.inner.slot() as slot:
            yield self._Slot(self, slot)

    async def hash(self, password: str) -> str:
        return await self.inner.hash(password)

    class _Slot:
        def __init__(self, hasher: GatedHasher, slot) -> None:
            self.hasher, self.slot = hasher, slot

        async def check(self, password, encoded):
            self.hasher.checking.set()
            await self.hasher.gate.wait()
            return await self.slot.check(password, encoded)


async def test_abrupt_disconnect_mid_call_lets_the_call_finish_and_the_server_keep_serving():
    """A login whose password hash is still being computed when the proxy vanishes: the
    call runs to its end (shielded: no half-done state) and nobody else notices."""
    clock = OffsetClock()
    hasher = GatedHasher()
    service = await make_service(clock, hasher=hasher)
    finished = trio.Event()
    real_login = service.login

    @functools.wraps(real_login)   # the dispatcher binds its parameters by this signature
    async def login(*args, **kwargs):
        try:
            return await real_login(*args, **kwargs)
        finally:
            finished.set()
    service.login = login
    async with running_auth(service=service, clock=clock) as env:
        invite = await service.create_user("alice", ["alice"])
        seed = otp_secret((await service.get_invite(invite.token)).otp_uri)
        await service.complete_signup(invite.token, PASSWORD, totp.code_at(seed, clock()))
        clock.advance(totp.PERIOD)  # a fresh code for the login
        login = {"user": "alice", "password": PASSWORD, "otp_code": totp.code_at(seed, clock()),
                 "public_key_blob": PrivateKey.generate().public_key.blob}
        proxy = await env.joined_identity("gw", kind="proxy")
        stream = await trio.open_tcp_stream("127.0.0.1", env.port)
        async with ssh_proto.connect("127.0.0.1", env.port, username="gw", client_keys=[proxy],
                                     known_hosts=None, stream=stream) as conn:
            proc = await conn.open_session(subsystem=SUBSYSTEM)
            await proc.send_all(encode_request(Request(1, "login", login)))
            with trio.fail_after(10):
                await hasher.checking.wait()     # the login is mid-hash
            await stream.aclose()
            with pytest.raises(trio.BrokenResourceError):
                await proc.read_all()
        assert not [e for e in await env.audit("user.login") if e.success]
        hasher.gate.set()                        # the hash ends after its caller went away
        with trio.fail_after(10):
            await finished.wait()
        assert [e.user for e in await env.audit("cert.create") if e.fields.get("kind") == "user"] == ["alice"]
        async with env.connect(await env.admin_identity()) as api:
            assert (await api.get_user(name="alice"))["status"] == "active"


async def test_cancelled_call_does_not_desynchronise_the_client():
    async with running_auth() as env:
        async with env.connect(await env.admin_identity()) as api:
            with trio.move_on_after(0):
                await api.list_users()
            assert (await api.cluster_info())["cluster"] == "acme"
            assert (await api.cluster_info())["host_ca_pin"] == env.pin

