"""How a node reaches the proxy for its tunnel (appliance/tunnel/transport.py, http_proxy.py):
TLS with ALPN to the real web listener, a real HTTP CONNECT proxy written here (one that
relays, one that refuses), HTTPS_PROXY and NO_PROXY from the environment, and the probe that
tells the auth port from the web port, against the real auth and web listeners. Loopback only."""
from __future__ import annotations

import base64
import functools
from dataclasses import dataclass, field

import pytest
import trio

import ssh_proto
from appliance.api.client import JOIN_USER, verify_auth_server
from appliance.api.protocol import SUBSYSTEM
from appliance.membership import parse_token
from appliance.tunnel.http_proxy import (MAX_RESPONSE_HEAD, HTTPProxy, ProxyError, bypasses_proxy,
                                         parse_proxy_url, proxy_for)
from appliance.tunnel.transport import (ProxyError as ReexportedProxyError, TransportError, open_probed,
                                        probe_auth_server, tcp_connector, tls_connector)

from _api_helpers import running_auth
from _web_helpers import echo_tunnel_handler, echoes, running_cluster

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy",
                   "ALL_PROXY", "all_proxy")


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- an HTTP CONNECT proxy


@dataclass
class ConnectProxy:
    """A small HTTP proxy: logs each CONNECT (target, headers), then relays bytes, or answers
    ``answer`` and closes; with ``credentials`` ("user:password") it asks for them (407)."""

    answer: bytes | None = None
    credentials: str | None = None
    silent: bool = False
    endless_head: bool = False
    port: int = 0
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(trio.serve_listeners, self._handle, listeners))
            task_status.started(self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            head = await _read_head(stream)
            if head is None:
                return
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ")
            headers = {name.strip().lower(): value.strip()
                       for name, _, value in (line.partition(":") for line in lines)}
            self.requests.append((method, target, headers))
            await self._answer(stream, target, headers)

    async def _answer(self, stream: trio.SocketStream, target: str, headers: dict[str, str]) -> None:
        if self.silent:
            await trio.sleep_forever()
        if self.endless_head:
            await stream.send_all(b"HTTP/1.1 200 Connection established\r\n")
            while True:
                await stream.send_all(b"X-Padding: " + b"a" * 1000 + b"\r\n")
        if self.answer is not None:
            await stream.send_all(self.answer)
            return
        if self.credentials is not None:
            expected = "Basic " + base64.b64encode(self.credentials.encode()).decode()
            if headers.get("proxy-authorization") != expected:
                await stream.send_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                      b"Proxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n")
                return
        host, _, port = target.rpartition(":")
        upstream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        async with upstream:
            await stream.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_copy, stream, upstream, nursery.cancel_scope)
                nursery.start_soon(_copy, upstream, stream, nursery.cancel_scope)


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    head = b""
    while b"\r\n\r\n" not in head:
        data = await stream.receive_some(1024)
        if not data or len(head) > 65536:
            return None
        head += data
    return head.partition(b"\r\n\r\n")[0]


async def _copy(source: trio.abc.Stream, sink: trio.abc.Stream, scope: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


@pytest.fixture
async def web(tmp_path):
    """The real web listener with a test tunnel handler (an echo)."""
    peers: list = []
    async with running_cluster(tmp_path, tunnel_handler=echo_tunnel_handler(peers)) as cluster:
        cluster.tunnel_peers = peers
        yield cluster


async def start_proxy(nursery: trio.Nursery, **kwargs) -> ConnectProxy:
    return await nursery.start(ConnectProxy(**kwargs).run)


# ---------------------------------------------------------------- connectors, direct


async def test_tls_connector_negotiates_the_tunnel_alpn_with_the_web_listener(web):
    with trio.fail_after(10):
        stream = await tls_connector("127.0.0.1", web.web.port)()
        assert stream.selected_alpn_protocol() == "jumpgate-tunnel"
        assert await echoes(stream, b"SSH-2.0-node\r\n")
        await stream.aclose()
    assert len(web.tunnel_peers) == 1


async def test_W4_the_tls_connector_needs_no_pin_of_the_web_certificate(web):
    """The web certificate is self-signed and the node was given no pin: it connects all the
    same, because the inner SSH authenticates the proxy (docs/security.md W10)."""
    with trio.fail_after(10):
        stream = await tls_connector("localhost", web.web.port)()
        await stream.aclose()


async def test_tls_connector_to_a_web_listener_without_tunnels_says_so(tmp_path):
    async with running_cluster(tmp_path) as cluster:
        with trio.fail_after(10), pytest.raises(TransportError, match="does not accept tunnels"):
            await tls_connector("127.0.0.1", cluster.web.port)()


async def test_tls_connector_to_an_ssh_port_is_a_clear_tls_error():
    async with running_auth() as env:
        with trio.fail_after(10), pytest.raises(TransportError, match="TLS handshake failed"):
            await tls_connector("127.0.0.1", env.port)()


async def test_tcp_connector_to_a_closed_port_is_a_clear_error():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with trio.fail_after(10), pytest.raises(TransportError, match=f"cannot reach 127.0.0.1:{port}"):
        await tcp_connector("127.0.0.1", port)()


async def test_tcp_connector_reaches_a_plain_tcp_tunnel_port():
    async def serve(stream):
        await stream.send_all(b"SSH-2.0-tunnel\r\n")
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        with trio.fail_after(10):
            stream = await tcp_connector("127.0.0.1", port)()
            assert await stream.receive_some(100) == b"SSH-2.0-tunnel\r\n"
            await stream.aclose()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- through an HTTP proxy


async def test_W3_https_proxy_from_the_environment_carries_the_tunnel_by_connect(web, monkeypatch):
    async with trio.open_nursery() as nursery:
        proxy = await start_proxy(nursery)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with trio.fail_after(10):
            stream = await tls_connector("127.0.0.1", web.web.port)()
            assert stream.selected_alpn_protocol() == "jumpgate-tunnel"
            assert await echoes(stream, b"through the proxy")
            await stream.aclose()
        nursery.cancel_scope.cancel()
    [(method, target, headers)] = proxy.requests
    assert (method, target, headers["host"]) == ("CONNECT", f"127.0.0.1:{web.web.port}",
                                                 f"127.0.0.1:{web.web.port}")
    assert "proxy-authorization" not in headers
    assert len(web.tunnel_peers) == 1


async def test_W3_basic_credentials_in_the_proxy_url_are_sent_to_the_proxy(web, monkeypatch):
    async with trio.open_nursery() as nursery:
        proxy = await start_proxy(nursery, credentials="alice:s@cret")
        monkeypatch.setenv("https_proxy", f"http://alice:s%40cret@127.0.0.1:{proxy.port}")
        with trio.fail_after(10):
            stream = await tls_connector("127.0.0.1", web.web.port)()
            assert await echoes(stream, b"authenticated")
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert proxy.requests[0][2]["proxy-authorization"] == "Basic " + base64.b64encode(b"alice:s@cret").decode()


async def test_W3_a_407_is_a_clear_error_asking_for_credentials(web, monkeypatch):
    async with trio.open_nursery() as nursery:
        proxy = await start_proxy(nursery, credentials="alice:right")
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with trio.fail_after(10), pytest.raises(ProxyError, match="asks for credentials") as refused:
            await tls_connector("127.0.0.1", web.web.port)()
        assert refused.value.status == 407 and "HTTPS_PROXY=http://USER:PASSWORD@HOST:PORT" in str(refused.value)
        monkeypatch.setenv("HTTPS_PROXY", f"http://alice:wrong-secret@127.0.0.1:{proxy.port}")
        with trio.fail_after(10), pytest.raises(ProxyError, match="refused the credentials") as refused:
            await tls_connector("127.0.0.1", web.web.port)()
        assert "wrong-secret" not in str(refused.value)   # the password is never in a message
        nursery.cancel_scope.cancel()
    assert web.tunnel_peers == []


async def test_W3_a_403_says_the_proxy_forbids_the_target(web, monkeypatch):
    async with trio.open_nursery() as nursery:
        proxy = await start_proxy(nursery, answer=b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with trio.fail_after(10), pytest.raises(ProxyError, match="forbids CONNECT to 127.0.0.1:") as refused:
            await tls_connector("127.0.0.1", web.web.port)()
        assert refused.value.status == 403 and isinstance(refused.value, ReexportedProxyError)
        nursery.cancel_scope.cancel()


async def test_W3_a_proxy_that_never_answers_is_a_timeout(web, monkeypatch):
    async with trio.open_nursery() as nursery:
        proxy = await start_proxy(nursery, silent=True)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with trio.fail_after(10), pytest.raises(ProxyError, match="did not answer CONNECT .* within 0.5s"):
            await tls_connector("127.0.0.1", web.web.port, timeout=0.5)()
        nursery.cancel_scope.cancel()


async def test_W3_the_proxy_answer_head_is_bounded(web, monkeypatch):
    async with trio.open_nursery() as nursery:
        proxy = await start_proxy(nursery, endless_head=True)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with trio.fail_after(10), pytest.raises(ProxyError, match=f"answer head over {MAX_RESPONSE_HEAD} bytes"):
            await tls_connector("127.0.0.1", web.web.port)()
        nursery.cancel_scope.cancel()


async def test_W3_a_proxy_that_does_not_speak_http_is_a_clear_error(web, monkeypatch):
    async with trio.open_nursery() as nursery:
        proxy = await start_proxy(nursery, answer=b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with trio.fail_after(10), pytest.raises(ProxyError, match="did not answer in HTTP"):
            await tls_connector("127.0.0.1", web.web.port)()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.0/8", "*", "localhost,127.0.0.1:{port}"])
async def test_W3_no_proxy_sends_the_tunnel_direct(web, monkeypatch, no_proxy):
    async with trio.open_nursery() as nursery:
        proxy = await start_proxy(nursery)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", no_proxy.format(port=web.web.port))
        with trio.fail_after(10):
            stream = await tls_connector("127.0.0.1", web.web.port)()
            assert await echoes(stream, b"direct")
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert proxy.requests == []


async def test_W3_no_proxy_for_other_hosts_or_ports_still_uses_the_proxy(web, monkeypatch):
    async with trio.open_nursery() as nursery:
        proxy = await start_proxy(nursery)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("no_proxy", "example.com,10.0.0.0/8,127.0.0.1:1")
        with trio.fail_after(10):
            stream = await tls_connector("127.0.0.1", web.web.port)()
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert len(proxy.requests) == 1


def test_W3_proxy_urls():
    assert parse_proxy_url("squid.corp") == HTTPProxy("squid.corp", 3128)
    assert parse_proxy_url("http://[::1]:8080/") == HTTPProxy("::1", 8080)
    assert parse_proxy_url("HTTP://bob@squid:1") == HTTPProxy("squid", 1, "bob", None)
    for bad, why in [("https://squid:3128", "only http:// proxies"), ("socks5://squid", "only http://"),
                     ("http://squid:99999", "not a proxy URL"), ("http://:8080", "names no host")]:
        with pytest.raises(ProxyError, match=why):
            parse_proxy_url(bad)
    secret = parse_proxy_url("http://alice:hunter2@squid:3128")
    assert "hunter2" not in str(secret) and "hunter2" not in repr(secret)


def test_W3_https_proxy_precedence_and_empty_values():
    both = {"https_proxy": "lower:1", "HTTPS_PROXY": "upper:2"}
    assert proxy_for("jump", 3080, both) == HTTPProxy("lower", 1)
    assert proxy_for("jump", 3080, {"https_proxy": "", "HTTPS_PROXY": "upper:2"}) == HTTPProxy("upper", 2)
    assert proxy_for("jump", 3080, {"HTTP_PROXY": "plain:3"}) is None   # HTTPS_PROXY only: it is TLS
    assert proxy_for("jump", 3080, {"HTTPS_PROXY": "p:1", "no_proxy": "JUMP"}) is None
    assert bypasses_proxy("jump.corp.", 3080, ".corp") and not bypasses_proxy("corp.evil", 3080, ".corp")
    assert bypasses_proxy("::1", 3080, "::1") and bypasses_proxy("[::1]", 3080, "[::1]:3080")
    assert not bypasses_proxy("jump", 3080, "jump:bad") and not bypasses_proxy("jump", 3080, " , ")


# ---------------------------------------------------------------- the probe


async def test_probe_tells_the_auth_port_it_speaks_ssh_and_the_connection_serves_the_join():
    """The auth port speaks first: "ssh"; the probed connection is the join's (no second
    connection, so no unauthenticated hang-up for the auth port's per-source penalties)."""
    async with running_auth() as env:
        with trio.fail_after(10):
            assert await probe_auth_server(env.addr) == "ssh"
            probed = await open_probed(env.addr)
            assert probed.kind == "ssh"
            secret, pin = parse_token(await env.token())
            async with ssh_proto.connect("127.0.0.1", env.port, username=JOIN_USER, password=secret,
                                         known_hosts=verify_auth_server("127.0.0.1", ca_pin=pin),
                                         stream=probed.stream) as conn:
                api = await conn.open_session(subsystem=SUBSYSTEM)   # authenticated: the API answers
                await api.aclose()


async def test_probe_tells_the_web_port_it_is_silent_and_tls_then_runs_on_the_same_connection(web):
    with trio.fail_after(10):
        start = trio.current_time()
        assert await probe_auth_server(f"127.0.0.1:{web.web.port}", silence=0.3) == "tls"
        assert trio.current_time() - start >= 0.3
        probed = await open_probed(f"127.0.0.1:{web.web.port}", silence=0.3)
        assert probed.kind == "tls"
        stream = await probed.start_tls()
        assert await echoes(stream, b"one connection")
        await stream.aclose()
    assert len(web.tunnel_peers) == 1


async def test_probe_goes_through_the_https_proxy_as_the_tunnel_does(web, monkeypatch):
    async with running_auth() as env, trio.open_nursery() as nursery:
        proxy = await start_proxy(nursery)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with trio.fail_after(10):
            assert await probe_auth_server(env.addr) == "ssh"
            assert await probe_auth_server(f"127.0.0.1:{web.web.port}", silence=0.3) == "tls"
        nursery.cancel_scope.cancel()
    assert [target for _, target, _ in proxy.requests] == [env.addr, f"127.0.0.1:{web.web.port}"]


async def test_probe_of_a_server_that_hangs_up_at_once_is_an_error():
    async def hang_up(stream):
        await stream.aclose()
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(functools.partial(trio.serve_tcp, hang_up, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        with trio.fail_after(10), pytest.raises(TransportError, match="closed the connection without a word"):
            await probe_auth_server(f"127.0.0.1:{port}")
        nursery.cancel_scope.cancel()


async def test_probe_default_port_is_the_auth_port(monkeypatch):
    seen = []

    async def fake_open(host, port, proxy, timeout):
        seen.append((host, port, proxy))
        raise TransportError("stop here")
    monkeypatch.setattr("appliance.tunnel.transport._open_tcp", fake_open)
    with pytest.raises(TransportError):
        await probe_auth_server("jump.example.com")
    assert seen == [("jump.example.com", 3025, None)]
