"""The diagnostics endpoint (issue 14 item 18, docs/security.md D1): /healthz, /readyz and
/metrics in the Prometheus text format, on our h11 stack under Trio, bounded — asked with a real
HTTP client (urllib in a worker thread) and the exposition checked by a strict parser."""
from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from functools import partial

import pytest
import trio

from appliance.diag import DiagLimits, Metrics, Readiness, serve_diag

_HELP = re.compile(r"# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)")
_TYPE = re.compile(r"# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)")
_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? '
                     r'(-?[0-9.e+-]+|NaN|[+-]Inf)')


def parse_exposition(text: str) -> dict[str, dict]:
    """Prometheus text format 0.0.4, strictly: every family has HELP then TYPE before its samples,
    each sample belongs to the last TYPE (a counter's with the ``_total`` name), no family twice,
    text ends with a newline. Returns {family: {"type", "help", "samples": {labels: value}}}."""
    assert text.endswith("\n")
    families: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if m := _HELP.fullmatch(line):
            assert m.group(1) not in families, f"family {m.group(1)} twice"
            current = families[m.group(1)] = {"help": m.group(2), "type": None, "samples": {}}
            name = m.group(1)
        elif m := _TYPE.fullmatch(line):
            assert current is not None and m.group(1) == name and current["type"] is None, line
            current["type"] = m.group(2)
        elif m := _SAMPLE.fullmatch(line):
            assert current is not None and current["type"] and m.group(1) == name, line
            current["samples"][m.group(2) or ""] = float(m.group(3))
        else:
            raise AssertionError(f"not exposition format: {line!r}")
    return families


async def _get(port: int, path: str, method: str = "GET", data: bytes | None = None) -> tuple[int, str, str]:
    def fetch():
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=data)
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, reply.headers.get("content-type", ""), reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("content-type", ""), exc.read().decode()
    return await trio.to_thread.run_sync(fetch)


@pytest.fixture
async def diag(nursery):
    metrics, readiness = Metrics(), Readiness()
    metrics.services = ["node", "proxy"]
    problems: list[str] = []

    async def check() -> str:
        return problems[0] if problems else ""

    readiness.add("storage", check)
    host, port = await nursery.start(partial(serve_diag, "127.0.0.1", 0, metrics, readiness,
                                             limits=DiagLimits(max_connections=4)))
    assert host == "127.0.0.1"
    return metrics, problems, port


async def test_d1_healthz_and_readyz_with_the_reason_when_not_ready(diag):
    metrics, problems, port = diag
    assert await _get(port, "/healthz") == (200, "text/plain", "ok\n")
    assert await _get(port, "/readyz") == (200, "text/plain", "ready\n")
    problems.append("database is locked")
    status, _, body = await _get(port, "/readyz")
    assert status == 503 and body == "not ready\nstorage: database is locked\n"
    assert (await _get(port, "/nope"))[0] == 404


async def test_d1_metrics_are_prometheus_text_with_help_and_type(diag):
    metrics, _, port = diag
    metrics.count("logins", "node", 3)
    metrics.observe_audit("proxy", {"event": "auth", "success": False})
    metrics.observe_audit("node", {"event": "session.start", "success": True})
    metrics.gauge("connections", lambda: {"node": 2})
    status, kind, body = await _get(port, "/metrics")
    assert status == 200 and kind.startswith("text/plain; version=0.0.4")
    families = parse_exposition(body)
    assert families["jumpgate_logins_total"]["type"] == "counter"
    assert families["jumpgate_logins_total"]["samples"] == {'{service="node"}': 3.0, '{service="proxy"}': 0.0}
    assert families["jumpgate_login_failures_total"]["samples"]['{service="proxy"}'] == 1.0
    assert families["jumpgate_sessions_total"]["samples"]['{service="node"}'] == 1.0
    assert families["jumpgate_connections"]["type"] == "gauge"
    assert families["jumpgate_connections"]["samples"]['{service="node"}'] == 2.0
    assert families["jumpgate_tunnels"]["samples"]['{service="node"}'] == 0.0
    assert {"jumpgate_heartbeats_total", "jumpgate_up"} <= set(families)


async def test_d1_requests_are_bounded_a_body_or_a_huge_head_is_refused(diag):
    _, _, port = diag
    assert (await _get(port, "/healthz", "POST", b"x" * 100))[0] in (405, 413)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
    assert reply.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), reply[:60]


async def test_d1_connections_beyond_the_limit_are_closed_unanswered(diag):
    _, _, port = diag
    idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]   # hold every slot
    await trio.sleep(0.2)
    extra = await trio.open_tcp_stream("127.0.0.1", port)
    await extra.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(10):
        assert await extra.receive_some(100) == b""
    for s in idle:
        await s.aclose()
    await trio.sleep(0.2)
    assert (await _get(port, "/healthz"))[0] == 200   # slots come back


def test_d1_the_diag_address_is_off_by_default_and_a_bare_port_is_loopback():
    from appliance.config import load_config
    assert load_config(None, data_dir="/tmp/x").diag_addr == ""
    assert load_config(None, data_dir="/tmp/x", diag_addr="3081").diag_addr == "127.0.0.1:3081"
    assert load_config(None, data_dir="/tmp/x", diag_addr="10.0.0.1:9100").diag_addr == "10.0.0.1:9100"
