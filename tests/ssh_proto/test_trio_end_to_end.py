"""Our client against our server over real loopback sockets, through the Trio layer."""
from __future__ import annotations

import errno
import socket

import pytest
import trio

import ssh_proto
from ssh_proto import messages as m
from ssh_proto.keys import PrivateKey
from ssh_proto.known_hosts import KnownHosts
from ssh_proto.trio_io.forwarding import open_listeners

HOST_KEY = PrivateKey.generate("ssh-ed25519")
USER_KEY = PrivateKey.generate("ssh-ed25519")
OTHER_KEY = PrivateKey.generate("ssh-ed25519")


class Server(ssh_proto.SSHServer):
    otp = None
    failures: list = []

    async def auth_publickey_acceptable(self, username, key):
        return key == USER_KEY.public_key

    async def auth_publickey(self, username, key):
        if key != USER_KEY.public_key:
            return False
        if self.otp:
            return ssh_proto.Partial(("keyboard-interactive",))
        return True

    async def auth_password(self, username, password):
        return password == "correct horse"

    async def auth_kbdint(self, username, submethods):
        return ssh_proto.Challenge("", "", (("Code: ", True),))

    async def auth_kbdint_response(self, username, responses):
        return self.otp is not None and tuple(responses) == (self.otp,)

    async def session(self, session):
        cmd = session.command
        if cmd == "cat":
            while data := await session.receive_some():
                await session.send_all(data)
            return 0
        if cmd == "stderr":
            await session.send_stderr(b"oops\n")
            return 42
        if cmd == "pty":
            await session.send_all(f"{session.pty.term} {session.pty.cols}x{session.pty.rows}".encode())
            return 0
        if cmd == "env":
            await session.send_all(repr(sorted(session.env.items())).encode())
            return 0
        if cmd == "boom":
            raise RuntimeError("handler bug")
        if cmd == "signal":
            got = trio.Event()
            session.on_signal = lambda name: got.set()
            await got.wait()
            await session.exit_with_signal("TERM")
            return None
        await session.send_all(b"?")
        return 1

    async def direct_tcpip(self, host, port, orig_host, orig_port):
        if host == "refused.example":
            raise ssh_proto.ChannelOpenError(m.OPEN_ADMINISTRATIVELY_PROHIBITED, f"no route to {host} here")
        return await trio.open_tcp_stream(host, port)

    async def channel_open(self, channel_type, data):
        if channel_type == "x-busy@example.com":
            raise ssh_proto.ChannelOpenError(m.OPEN_RESOURCE_SHORTAGE, "come back later")
        return None

    async def tcpip_forward(self, address, port):
        return True


@pytest.fixture
async def server(nursery):
    Server.otp = None
    listener = await nursery.start(lambda task_status: ssh_proto.serve(
        Server, "127.0.0.1", 0, host_keys=[(HOST_KEY, None)], task_status=task_status))
    return listener


def client(port, **kw):
    kw.setdefault("client_keys", [USER_KEY])
    kw.setdefault("known_hosts", None)
    return ssh_proto.connect("127.0.0.1", port, username="alice", **kw)


async def test_exec_stdin_stdout_exit_status(server):
    async with client(server.port) as conn:
        result = await conn.run("cat", input=b"x" * 300_000)
        assert result.exit_status == 0 and result.stdout == b"x" * 300_000
        result = await conn.run("stderr")
        assert (result.exit_status, result.stdout, result.stderr) == (42, b"", b"oops\n")


async def test_a_non_utf8_exec_command_is_refused_and_the_connection_stays(server):
    """messages.py: an exec command need not be UTF-8; refusing it is that request's business."""
    async with client(server.port) as conn:
        with pytest.raises(ssh_proto.ChannelError, match="exec request refused"):
            await conn.run(b"cat \xff\xfe")
        result = await conn.run("cat", input=b"still connected")
        assert (result.exit_status, result.stdout) == (0, b"still connected")


async def test_a_server_application_refuses_a_channel_with_its_own_reason_code(server):
    """Raising ChannelOpenError(reason, description) from direct_tcpip or channel_open reaches
    the client as that RFC 4254 §5.1 reason and those words."""
    async with client(server.port) as conn:
        with pytest.raises(ssh_proto.ChannelOpenError) as forward:
            await conn.open_direct_tcpip("refused.example", 80)
        with pytest.raises(ssh_proto.ChannelOpenError) as custom:
            await conn.open_channel("x-busy@example.com")
        with pytest.raises(ssh_proto.ChannelOpenError) as unknown:
            await conn.open_channel("x-unknown@example.com")
        assert (await conn.run("cat", input=b"on")).stdout == b"on"
    assert (forward.value.reason, forward.value.description) == (m.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                                                 "no route to refused.example here")
    assert (custom.value.reason, custom.value.description) == (m.OPEN_RESOURCE_SHORTAGE, "come back later")
    assert unknown.value.reason == m.OPEN_UNKNOWN_CHANNEL_TYPE


async def test_many_sessions_on_one_connection(server):
    async with client(server.port) as conn:
        async with trio.open_nursery() as n:
            results = []

            async def one(i):
                results.append(await conn.run("cat", input=str(i).encode()))

            for i in range(20):
                n.start_soon(one, i)
        assert sorted(int(r.stdout) for r in results) == list(range(20))


async def test_pty_and_env(server):
    async with client(server.port) as conn:
        assert (await conn.run("pty", pty=True, term="vt100")).stdout == b"vt100 80x24"
        result = await conn.run("env", env={"LANG": "C.UTF-8", "EVIL": "1"})
        assert result.stdout == repr([("LANG", "C.UTF-8")]).encode()  # EVIL refused


async def test_signal_gives_exit_signal(server):
    async with client(server.port) as conn:
        proc = await conn.open_session("signal")
        await proc.signal("TERM")
        assert await proc.wait() is None
        assert proc.exit_signal == "TERM"


async def test_handler_exception_ends_only_that_session(server):
    async with client(server.port) as conn:
        result = await conn.run("boom")
        assert result.exit_status == 255
        assert (await conn.run("cat", input=b"still fine")).stdout == b"still fine"


async def test_password_auth(server):
    async with client(server.port, client_keys=[], password="correct horse") as conn:
        assert (await conn.run("cat", input=b"pw")).stdout == b"pw"


async def test_wrong_password_is_auth_error(server):
    with pytest.raises(ssh_proto.AuthError):
        async with client(server.port, client_keys=[], password="wrong"):
            pass


async def test_unknown_key_is_auth_error(server):
    with pytest.raises(ssh_proto.AuthError):
        async with client(server.port, client_keys=[OTHER_KEY]):
            pass


async def test_partial_success_key_then_one_time_code(server):
    Server.otp = "123456"

    async def answer(name, instruction, prompts):
        return ["123456"]

    async with client(server.port, kbdint_handler=answer) as conn:
        assert (await conn.run("cat", input=b"2fa")).stdout == b"2fa"


async def test_partial_success_wrong_code_fails(server):
    Server.otp = "123456"

    async def answer(name, instruction, prompts):
        return ["000000"]

    with pytest.raises(ssh_proto.AuthError):
        async with client(server.port, kbdint_handler=answer):
            pass


async def test_host_key_not_in_known_hosts_is_rejected(server):
    kh = KnownHosts.parse(f"[127.0.0.1]:{server.port} {OTHER_KEY.public_key.to_line()}\n")
    with pytest.raises(ssh_proto.HostKeyNotVerifiable):
        async with client(server.port, known_hosts=kh):
            pass


async def test_host_key_in_known_hosts_is_accepted(server):
    kh = KnownHosts.parse(f"[127.0.0.1]:{server.port} {HOST_KEY.public_key.to_line()}\n")
    async with client(server.port, known_hosts=kh) as conn:
        assert (await conn.run("cat", input=b"k")).stdout == b"k"


async def _echo_server(nursery):
    async def echo(stream):
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)

    listeners = await nursery.start(lambda task_status: trio.serve_tcp(echo, 0, host="127.0.0.1", task_status=task_status))
    return listeners[0].socket.getsockname()[1]


async def test_direct_tcpip_and_local_forward(server, nursery):
    echo_port = await _echo_server(nursery)
    async with client(server.port) as conn:
        ch = await conn.open_direct_tcpip("127.0.0.1", echo_port)
        await ch.send_all(b"ping")
        assert await ch.receive_some() == b"ping"
        await ch.aclose()
        async with trio.open_nursery() as n:
            port = await n.start(conn.forward_local_port, "127.0.0.1", 0, "127.0.0.1", echo_port)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"via -L")
            assert await stream.receive_some() == b"via -L"
            await stream.aclose()
            n.cancel_scope.cancel()


async def test_remote_forward(server, nursery):
    echo_port = await _echo_server(nursery)
    async with client(server.port) as conn:
        port = await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", echo_port)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"via -R")
        assert await stream.receive_some() == b"via -R"
        await stream.aclose()


class _Resolver(trio.abc.HostnameResolver):
    """Names that resolve to the addresses a test chooses (a forward's listen host)."""

    def __init__(self, names: dict[str, list[str]]):
        self.names = names

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(port)))
                for ip in self.names[name]]

    async def getnameinfo(self, sockaddr, flags):  # pragma: no cover - not used here
        raise OSError("no reverse lookups here")


@pytest.fixture
async def resolver():
    names: dict[str, list[str]] = {}  # the resolver is a RunVar: set inside this test's run
    previous = trio.socket.set_custom_hostname_resolver(_Resolver(names))
    yield names
    trio.socket.set_custom_hostname_resolver(previous)


@pytest.fixture
async def taken_port():
    """A port something else already listens on at 127.0.0.1 (binding it there fails)."""
    holder = trio.socket.socket()
    await holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    yield holder.getsockname()[1]
    holder.close()


async def test_local_forward_skips_a_listen_address_it_cannot_bind(server, nursery, resolver, taken_port):
    """As OpenSSH: "localhost" resolving to ::1 on a host without IPv6 still forwards on 127.0.0.1."""
    resolver["fwd.test"] = ["127.0.0.1", "127.0.0.2"]   # the first cannot be bound on that port
    echo_port = await _echo_server(nursery)
    async with client(server.port) as conn:
        async with trio.open_nursery() as n:
            port = await n.start(conn.forward_local_port, "fwd.test", taken_port, "127.0.0.1", echo_port)
            stream = await trio.open_tcp_stream("127.0.0.2", port)
            await stream.send_all(b"one address")
            assert await stream.receive_some() == b"one address"
            await stream.aclose()
            n.cancel_scope.cancel()


async def test_forward_listeners_share_one_port_across_addresses(resolver):
    resolver["two.test"] = ["127.0.0.1", "127.0.0.2"]
    listeners = await open_listeners("two.test", 0)
    try:
        bound = [listener.socket.getsockname() for listener in listeners]
        assert [ip for ip, _ in bound] == ["127.0.0.1", "127.0.0.2"] and bound[0][1] == bound[1][1] != 0
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_forward_fails_when_no_listen_address_can_be_bound(resolver, taken_port):
    resolver["taken.test"] = ["127.0.0.1"]
    with pytest.raises(OSError) as info:
        await open_listeners("taken.test", taken_port)
    assert info.value.errno == errno.EADDRINUSE


async def test_unknown_channel_type_is_refused(server):
    async with client(server.port) as conn:
        with pytest.raises(ssh_proto.ChannelOpenError) as info:
            await conn.open_channel("x-unknown@example.com")
        assert info.value.reason == 3


async def test_abrupt_disconnect_leaves_server_serving(server):
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"SSH-2.0-test\r\n\x00\x00\x00")
    await stream.aclose()
    async with client(server.port) as conn:
        assert (await conn.run("cat", input=b"ok")).stdout == b"ok"


async def test_T14_login_grace_time_disconnects_idle_client(nursery):
    listener = await nursery.start(lambda task_status: ssh_proto.serve(
        Server, "127.0.0.1", 0, host_keys=[(HOST_KEY, None)], login_grace_time=0.5, task_status=task_status))
    stream = await trio.open_tcp_stream("127.0.0.1", listener.port)
    with trio.fail_after(5):
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    assert data.startswith(b"SSH-2.0-")


async def test_T14_max_startups_drops_excess_unauthenticated(nursery):
    listener = await nursery.start(lambda task_status: ssh_proto.serve(
        Server, "127.0.0.1", 0, host_keys=[(HOST_KEY, None)], max_startups=(2, 100, 2), task_status=task_status))
    held = [await trio.open_tcp_stream("127.0.0.1", listener.port) for _ in range(2)]
    for s in held:
        assert (await s.receive_some()).startswith(b"SSH-2.0-")
    extra = await trio.open_tcp_stream("127.0.0.1", listener.port)
    with trio.fail_after(5):
        assert await extra.receive_some() == b""  # dropped without a banner
    for s in held:
        await s.aclose()
