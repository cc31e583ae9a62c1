"""Browser sessions and the WebSocket hand-off of the web role, over real HTTP over TLS on
loopback (docs/security.md W2-W7): cookies, logout, idle expiry on a fake clock, fixation,
CSRF, the CLI's lockout, revocation by the push stream, and the live node list."""
from __future__ import annotations

import json
import ssl
from functools import partial

import pyotp
import trio
import trio_websocket
import wsproto
import wsproto.events

from _api_helpers import auth_host_identity
from _web_helpers import PASSWORD, Cluster, _insecure_context, open_tls, raw_exchange, running_cluster, signed_up
from appliance.api.client import ApiClient
from appliance.api.pool import ApiPool
from appliance.auth.server import serve_auth
from appliance.auth.watch import ChangeFeed
from appliance.cluster_view import ClusterView
from appliance.web.server import WebEndpoint, serve_web
from appliance.web.sessions import COOKIE_NAME
from appliance.web.tls import ensure_web_tls
from ssh_proto.keys import PrivateKey

SAFETY = 10.0  # every wait here is for an event expected in well under a second


def _origin(cluster: Cluster | int) -> str:
    port = cluster if isinstance(cluster, int) else cluster.web.port
    return f"https://127.0.0.1:{port}"


async def _call(port: int, method: str, path: str, body: dict | None = None, *, origin: str | None = "",
                cookie: str | None = None) -> tuple[int, dict, dict]:
    """One request (Host 127.0.0.1:PORT); ``origin=""`` sends this server's own origin."""
    data = json.dumps(body).encode() if body is not None else b""
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
            "Content-Type: application/json", f"Content-Length: {len(data)}"]
    if origin is not None:
        head.append(f"Origin: {origin or _origin(port)}")
    if cookie is not None:
        head.append(f"Cookie: {COOKIE_NAME}={cookie}")
    status, headers, raw = await raw_exchange(port, ("\r\n".join(head) + "\r\n\r\n").encode() + data)
    return status, headers, json.loads(raw) if raw.startswith(b"{") else {}


def _cookie_of(headers: dict) -> tuple[str, str]:
    """(value, attributes) of the session cookie a response set."""
    name_value, _, attributes = headers["set-cookie"].partition(";")
    name, _, value = name_value.partition("=")
    assert name == COOKIE_NAME
    return value, attributes


async def _web_login(cluster: Cluster, otp_uri: str, user: str = "alice", **options) -> tuple[int, dict, dict]:
    return await _call(cluster.web.port, "POST", "/web/api/login",
                       {"user": user, "password": PASSWORD, "otp_code": cluster.code(otp_uri)}, **options)


async def _logged_in(cluster: Cluster) -> tuple[str, str]:
    otp_uri = await signed_up(cluster)
    status, headers, _ = await _web_login(cluster, otp_uri)
    assert status == 200
    return _cookie_of(headers)[0], otp_uri


async def test_w2_login_sets_a_secure_httponly_samesite_strict_host_cookie_holding_only_a_random_id(tmp_path):
    async with running_cluster(tmp_path) as cluster:
        otp_uri = await signed_up(cluster)
        status, headers, body = await _web_login(cluster, otp_uri)
        assert status == 200 and body["user"] == "alice" and body["logins"] == ["alice", "root"]
        value, attributes = _cookie_of(headers)
        flags = {a.strip().split("=")[0].lower() for a in attributes.split(";")}
        assert {"secure", "httponly", "path", "max-age"} <= flags and "samesite=strict" in attributes.lower()
        assert "domain" not in flags
        assert len(value) == 43 and "alice" not in value  # 256 random bits, base64url; nothing else
        store = cluster.web.app.sessions
        assert value.encode() not in b"".join(store._sessions)  # stored as its SHA-256 only
        (session,) = store._sessions.values()
        assert session.key is not None and session.cert.startswith("ssh-ed25519-cert-v01@openssh.com ")
        status, _, me = await _call(cluster.web.port, "GET", "/web/api/me", cookie=value)
        assert status == 200 and me["user"] == "alice"


async def test_w3_a_stolen_cookie_is_refused_after_logout_and_the_sessions_key_is_dropped(tmp_path):
    async with running_cluster(tmp_path) as cluster:
        cookie, _ = await _logged_in(cluster)
        (session,) = cluster.web.app.sessions._sessions.values()
        status, headers, _ = await _call(cluster.web.port, "POST", "/web/api/logout", {}, cookie=cookie)
        assert status == 200 and _cookie_of(headers)[0] == "" and "Max-Age=0" in headers["set-cookie"]
        assert session.key is None and session.ended == "logged out"
        for method, path in (("GET", "/web/api/me"), ("POST", "/web/api/logout")):
            status, _, body = await _call(cluster.web.port, method, path, {} if method == "POST" else None,
                                          cookie=cookie)
            if method == "GET":
                assert status == 401 and body["error"]["code"] == "access_denied"
        status, headers, _ = await raw_exchange(cluster.web.port, (
            f"GET /web/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {COOKIE_NAME}={cookie}\r\n"
            "Connection: close\r\n\r\n").encode())
        assert status == 303 and headers["location"] == "/web/login"


async def test_w3_login_makes_a_new_id_whatever_cookie_it_came_with_no_fixation(tmp_path):
    async with running_cluster(tmp_path) as cluster:
        otp_uri = await signed_up(cluster)
        planted = "A" * 43  # the attacker's chosen id, set in the victim's browser beforehand
        status, headers, _ = await _web_login(cluster, otp_uri, cookie=planted)
        assert status == 200
        issued = _cookie_of(headers)[0]
        assert issued != planted
        assert (await _call(cluster.web.port, "GET", "/web/api/me", cookie=planted))[0] == 401
        # A second login (say, after the first cookie leaked) makes yet another id.
        status, headers, _ = await _web_login(cluster, otp_uri, cookie=issued)
        assert _cookie_of(headers)[0] not in (issued, planted)


async def test_w3_an_idle_session_expires_on_the_fake_clock_and_activity_keeps_it(tmp_path):
    async with running_cluster(tmp_path, idle_timeout=600, session_lifetime=3600) as cluster:
        cookie, _ = await _logged_in(cluster)
        for _ in range(3):  # activity within the idle time keeps it
            cluster.clock.step(590)
            assert (await _call(cluster.web.port, "GET", "/web/api/me", cookie=cookie))[0] == 200
        cluster.clock.step(601)
        assert (await _call(cluster.web.port, "GET", "/web/api/me", cookie=cookie))[0] == 401
        assert len(cluster.web.app.sessions) == 0


async def test_w3_a_busy_session_still_ends_at_its_lifetime(tmp_path):
    async with running_cluster(tmp_path, idle_timeout=600, session_lifetime=1800) as cluster:
        cookie, _ = await _logged_in(cluster)
        for _ in range(3):
            cluster.clock.step(590)
            assert (await _call(cluster.web.port, "GET", "/web/api/me", cookie=cookie))[0] == 200
        cluster.clock.step(60)  # 1830 s after the login: past the lifetime, though not idle
        assert (await _call(cluster.web.port, "GET", "/web/api/me", cookie=cookie))[0] == 401


async def test_w4_state_changing_requests_without_origin_or_from_another_origin_are_refused(tmp_path):
    async with running_cluster(tmp_path) as cluster:
        cookie, otp_uri = await _logged_in(cluster)
        for origin in (None, "https://evil.example", "null", f"http://127.0.0.1:{cluster.web.port}"):
            status, _, body = await _call(cluster.web.port, "POST", "/web/api/logout", {}, origin=origin,
                                          cookie=cookie)
            assert status == 403 and body["error"]["code"] == "permission_denied", origin
            status, headers, _ = await _web_login(cluster, otp_uri, origin=origin)
            assert status == 403 and "set-cookie" not in headers, origin
        # The command-line client's endpoints send no Origin; a foreign one is refused there too.
        status, _, _ = await _call(cluster.web.port, "POST", "/v1/signup",
                                   {"token": "x", "password": PASSWORD, "otp_code": "1"}, origin="https://evil.example")
        assert status == 403
        # The session survived every forged logout.
        assert (await _call(cluster.web.port, "GET", "/web/api/me", cookie=cookie))[0] == 200


async def test_w5_web_login_has_the_clis_lockout_and_audit(tmp_path):
    async with running_cluster(tmp_path) as cluster:
        otp_uri = await signed_up(cluster)
        for _ in range(5):
            status, _, body = await _call(cluster.web.port, "POST", "/web/api/login",
                                          {"user": "alice", "password": "wrong password!", "otp_code": "000000"})
            assert status == 401 and body["error"]["code"] == "access_denied"
        status, headers, body = await _web_login(cluster, otp_uri)  # the right password, now locked
        assert status == 401 and "set-cookie" not in headers
        user = await cluster.service.get_user("alice")
        assert user.status == "locked"
        events = await cluster.service.list_audit(types=["user.login", "user.locked"])
        reasons = [e.fields.get("reason") for e in events if e.event == "user.login" and not e.success]
        assert sorted(reasons) == ["locked"] + ["wrong password"] * 5
        assert [e.event for e in events].count("user.locked") == 1


# ------------------------------------------------------------------------- WebSockets


def _ws_client_context() -> ssl.SSLContext:
    return _insecure_context()


async def _open_nodes_ws(port: int, cookie: str | None, origin: str | None = ""):
    headers = []
    if origin is not None:
        headers.append((b"origin", (origin or _origin(port)).encode()))
    if cookie is not None:
        headers.append((b"cookie", f"{COOKIE_NAME}={cookie}".encode()))
    return trio_websocket.open_websocket("127.0.0.1", port, "/web/ws/nodes", use_ssl=_ws_client_context(),
                                         extra_headers=headers)


async def _next_nodes(ws) -> list[dict]:
    with trio.fail_after(SAFETY):
        message = json.loads(await ws.get_message())
    assert message["type"] == "nodes"
    return message["nodes"]


async def test_w7_node_list_websocket_sends_the_list_and_every_change(tmp_path):
    async with running_cluster(tmp_path, node_refresh=0.2) as cluster:
        cookie, _ = await _logged_in(cluster)
        await cluster.service.add_node("db1", "10.0.0.5:22", {"env": "prod"})
        async with await _open_nodes_ws(cluster.web.port, cookie) as ws:
            nodes = await _next_nodes(ws)
            assert [(n["name"], n["addr"], n["labels"], n["offline"]) for n in nodes] == [
                ("db1", "10.0.0.5:22", {"env": "prod"}, False)]
            await cluster.service.add_node("web1", "10.0.0.6:22", {"env": "dev"})
            assert [n["name"] for n in await _next_nodes(ws)] == ["db1", "web1"]
            await cluster.service.remove_node("db1")
            assert [n["name"] for n in await _next_nodes(ws)] == ["web1"]


async def test_w4_websocket_from_another_origin_without_origin_or_without_a_session_is_refused(tmp_path):
    async with running_cluster(tmp_path) as cluster:
        cookie, _ = await _logged_in(cluster)
        for origin, sent_cookie, status in (("https://evil.example", cookie, 403), (None, cookie, 403),
                                            ("", None, 401), ("", "B" * 43, 401)):
            try:
                async with await _open_nodes_ws(cluster.web.port, sent_cookie, origin):
                    raise AssertionError(f"accepted: origin {origin!r}")
            except trio_websocket.ConnectionRejected as exc:
                assert exc.status_code == status, origin


async def test_upgrade_after_a_pipelined_request_replays_exactly_the_bytes_of_its_own_request(tmp_path):
    """The seam: h11 read both requests in one go; trio-websocket gets the second one's bytes."""
    async with running_cluster(tmp_path, node_refresh=0.2) as cluster:
        cookie, _ = await _logged_in(cluster)
        client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        upgrade = client.send(wsproto.events.Request(
            host=f"127.0.0.1:{cluster.web.port}", target="/web/ws/nodes",
            extra_headers=[(b"origin", _origin(cluster).encode()),
                           (b"cookie", f"{COOKIE_NAME}={cookie}".encode())]))
        ping = f"GET /v1/ping HTTP/1.1\r\nHost: 127.0.0.1:{cluster.web.port}\r\n\r\n".encode()
        stream = await open_tls(cluster.web.port)
        with trio.fail_after(SAFETY):
            await stream.send_all(ping + upgrade)  # one write: h11 buffers the upgrade behind the ping
            received = bytearray()
            while b"HTTP/1.1 101" not in received:
                received += await stream.receive_some(65536)
            head, _, rest = bytes(received).partition(b"HTTP/1.1 101")
            assert head.startswith(b"HTTP/1.1 200") and b'"cluster"' in head
            client.receive_data(b"HTTP/1.1 101" + rest)
            events = list(client.events())
            while not any(isinstance(e, wsproto.events.TextMessage) for e in events):
                client.receive_data(await stream.receive_some(65536))
                events += list(client.events())
        assert isinstance(events[0], wsproto.events.AcceptConnection)
        text = next(e for e in events if isinstance(e, wsproto.events.TextMessage))
        assert json.loads(text.data) == {"type": "nodes", "nodes": []}
        await trio.aclose_forcefully(stream)


async def test_w3_logout_closes_the_sessions_websocket(tmp_path):
    async with running_cluster(tmp_path, node_refresh=0.2) as cluster:
        cookie, _ = await _logged_in(cluster)
        async with await _open_nodes_ws(cluster.web.port, cookie) as ws:
            await _next_nodes(ws)
            assert (await _call(cluster.web.port, "POST", "/web/api/logout", {}, cookie=cookie))[0] == 200
            with trio.fail_after(SAFETY):
                try:
                    await ws.get_message()
                    raise AssertionError("the socket outlived the session")
                except trio_websocket.ConnectionClosed as exc:
                    assert exc.reason.code == 4401


# ------------------------------------------------------------- revocation by the push stream


async def test_w3_deleting_or_resetting_a_user_ends_their_web_sessions_through_the_push_stream(tmp_path, nursery):
    """The web role as production runs it: its service is an API pool to the auth server,
    and its cluster view is fed by the push stream; the user is deleted at the auth server."""
    async with running_cluster(tmp_path) as cluster:
        service = cluster.service
        feed = ChangeFeed(service.storage, clock=cluster.clock)
        await nursery.start(feed.run)
        auth = await nursery.start(partial(serve_auth, service, service.ca, auth_host_identity(service),
                                           "127.0.0.1", 0, clock=cluster.clock, feed=feed))
        key = PrivateKey.generate("ssh-ed25519")
        token = (await service.create_token("proxy", 600, addresses=["127.0.0.1"])).token
        joined = await service.join(token, "proxy", "proxy1", key.public_key.blob, ["127.0.0.1"], {},
                                    "127.0.0.1:3023")
        from _api_helpers import parse_cert
        view = ClusterView()
        pool = ApiPool(partial(ApiClient.connect, f"127.0.0.1:{auth.port}",
                               identity=(key, parse_cert(joined.host_cert)), host_ca_key=service.ca.host_ca_public),
                       view=view)
        await nursery.start(pool.run)
        with trio.fail_after(SAFETY):
            await view.ready.wait()
        tls = ensure_web_tls(tmp_path / "web2", hostname="localhost")
        web: WebEndpoint = await nursery.start(partial(
            serve_web, pool, str(tls.cert_path), str(tls.key_path), "127.0.0.1", 0,
            proxy_ssh_addr="127.0.0.1:3023", view=view, clock=cluster.clock, node_refresh=0.2))
        alice_otp = await signed_up(cluster, "alice")
        bob_otp = await signed_up(cluster, "bob", ("bob",))

        async def login(user: str, otp_uri: str) -> str:
            code = pyotp.parse_uri(otp_uri).at(cluster.clock.step())
            status, headers, _ = await _call(web.port, "POST", "/web/api/login",
                                             {"user": user, "password": PASSWORD, "otp_code": code})
            assert status == 200
            return _cookie_of(headers)[0]

        alice, bob = await login("alice", alice_otp), await login("bob", bob_otp)
        async with await _open_nodes_ws(web.port, alice) as ws:
            await _next_nodes(ws)
            await service.delete_user("alice")
            with trio.fail_after(SAFETY):
                try:
                    while True:
                        await ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    assert exc.reason.code == 4401
        assert (await _call(web.port, "GET", "/web/api/me", cookie=alice))[0] == 401
        assert (await _call(web.port, "GET", "/web/api/me", cookie=bob))[0] == 200  # undisturbed
        await service.reset_user("bob")
        with trio.fail_after(SAFETY):
            await view.wait_for(lambda: len(web.app.sessions) == 0)
        assert (await _call(web.port, "GET", "/web/api/me", cookie=bob))[0] == 401
