"""The browser terminal's door (docs/security.md W11-W13), over real HTTP over TLS on loopback:
the WebSocket is refused without a session, from another origin, and for a login the session's
certificate does not hold, before anything reaches a node; the control messages' rules."""
from __future__ import annotations

import pytest
import trio
import trio_websocket

from _web_helpers import running_cluster
from test_web_sessions import SAFETY, _logged_in, _origin, _ws_client_context
from appliance.web.sessions import COOKIE_NAME
from appliance.web.terminal import Resize, TerminalMessageError, parse_control


class RecordingTerminals:
    """Stands for :class:`~appliance.web.terminal.Terminals`: records who was let through."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, str, str]] = []

    async def run(self, ws, session, *, node, login, client, size) -> None:
        self.opened.append((session.user, node, login))
        await ws.send_message(f"hello {login}@{node} {size.cols}x{size.rows}")
        await trio.sleep_forever()


def _open(port: int, cookie: str | None, origin: str | None = "", query: str = "node=node1&login=alice"):
    headers = []
    if origin is not None:
        headers.append((b"origin", (origin or _origin(port)).encode()))
    if cookie is not None:
        headers.append((b"cookie", f"{COOKIE_NAME}={cookie}".encode()))
    return trio_websocket.open_websocket("127.0.0.1", port, f"/web/ws/terminal?{query}",
                                         use_ssl=_ws_client_context(), extra_headers=headers)


async def _refused(port: int, cookie: str | None, origin: str | None = "", query: str = "node=node1&login=alice") -> int:
    try:
        async with _open(port, cookie, origin, query):
            raise AssertionError(f"accepted: {origin!r} {query!r}")
    except trio_websocket.ConnectionRejected as exc:
        return exc.status_code


async def test_w11_terminal_websocket_without_session_from_another_origin_or_for_a_foreign_login_is_refused(tmp_path):
    terminals = RecordingTerminals()
    async with running_cluster(tmp_path, terminals=terminals) as cluster:
        cookie, _ = await _logged_in(cluster)   # alice, logins alice and root
        port = cluster.web.port
        assert await _refused(port, None) == 401
        assert await _refused(port, "B" * 43) == 401
        assert await _refused(port, cookie, "https://evil.example") == 403
        assert await _refused(port, cookie, None) == 403
        assert await _refused(port, cookie, query="node=node1&login=postgres") == 403
        assert await _refused(port, cookie, query="login=alice") == 400
        assert terminals.opened == []       # nothing reached a node
        async with _open(port, cookie, query="node=node1&login=root&cols=132&rows=43") as ws:
            with trio.fail_after(SAFETY):
                assert await ws.get_message() == "hello root@node1 132x43"
        assert terminals.opened == [("alice", "node1", "root")]


async def test_w11_a_query_with_a_second_login_is_judged_by_its_first(tmp_path):
    """parse_qs keeps every value; the route takes the first one and checks that one."""
    terminals = RecordingTerminals()
    async with running_cluster(tmp_path, terminals=terminals) as cluster:
        cookie, _ = await _logged_in(cluster)
        assert await _refused(cluster.web.port, cookie, query="node=node1&login=postgres&login=alice") == 403
        assert terminals.opened == []


async def test_w13_logout_closes_the_terminal_websocket(tmp_path):
    from test_web_sessions import _call
    terminals = RecordingTerminals()
    async with running_cluster(tmp_path, terminals=terminals) as cluster:
        cookie, _ = await _logged_in(cluster)
        async with _open(cluster.web.port, cookie) as ws:
            with trio.fail_after(SAFETY):
                await ws.get_message()
                assert (await _call(cluster.web.port, "POST", "/web/api/logout", {}, cookie=cookie))[0] == 200
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await ws.get_message()
        assert closed.value.reason.code == 4401


async def test_w11_without_a_proxy_in_process_the_terminal_is_unavailable(tmp_path):
    async with running_cluster(tmp_path) as cluster:
        cookie, _ = await _logged_in(cluster)
        assert await _refused(cluster.web.port, cookie) == 503


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"type": "input", "data": "x"}', '{"type": "resize", "cols": 80}',
    '{"type": "resize", "cols": 80, "rows": 24, "extra": 1}', '{"type": "resize", "cols": true, "rows": 24}',
    '{"type": "resize", "cols": 1001, "rows": 24}', '{"type": "resize", "cols": 80, "rows": -1}',
    '{"type": "resize", "cols": 8.5, "rows": 24}',
])
def test_w12_only_a_well_formed_bounded_resize_is_a_control_message(text):
    with pytest.raises(TerminalMessageError):
        parse_control(text)
    assert parse_control('{"type": "resize", "cols": 1000, "rows": 1}') == Resize(1000, 1)
