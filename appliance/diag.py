"""The diagnostics endpoint (``start --diag-addr 127.0.0.1:3081``), as Teleport's diag port.

Plain HTTP/1.1 on our own h11 under Trio, three read-only routes (docs/security.md D1):

* ``GET /healthz`` — ``200 ok``: the process is alive and its event loop answers.
* ``GET /readyz``  — ``200 ready``, or ``503`` with the reasons, one a line: storage reachable
  (the auth service's database answers a query within :data:`CHECK_TIMEOUT`), the CA loaded
  (or, without auth, the membership the node or proxy joined with), every service's listener up.
* ``GET /metrics`` — the Prometheus text exposition format (version 0.0.4): ``# HELP`` and
  ``# TYPE`` lines, then samples.

No global registry: one :class:`Metrics` per process, owned by ``start`` and handed to what
feeds it (the audit sinks count logins, failures and sessions; heartbeat loops count beats;
listeners are read when scraped). Bounds as the web service's (:class:`DiagLimits`): a request
head of 8 KiB, no body, 10 s per request, one request per connection, 32 connections at once
(the next is closed unanswered). Off by default; it names no user, node or secret, but says how
busy the cluster is, so it listens on loopback unless an address is given.

>>> metrics = Metrics()
>>> metrics.services = ["node"]  # the services this process runs (one sample each)
>>> metrics.count("logins", "node")
>>> "jumpgate_logins_total{service=\\"node\\"} 1" in metrics.exposition()
True
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import h11
import trio

__all__ = ["DiagLimits", "Metrics", "Readiness", "serve_diag"]

log = logging.getLogger("jumpgate.diag")

CHECK_TIMEOUT = 2.0
_RECEIVE = 8192

#: name -> (type, help); counters are exposed with the ``_total`` suffix.
_COUNTERS: Mapping[str, str] = {
    "logins": "SSH logins accepted (certificate authentications at a node or the proxy).",
    "login_failures": "SSH logins refused at a node or the proxy.",
    "sessions": "Sessions started (shell, exec, subsystem) at a node or through the proxy.",
    "heartbeats": "Heartbeats a node or proxy had answered by the auth service.",
}
_GAUGES: Mapping[str, str] = {
    "connections": "SSH connections open now (being authenticated or authenticated), per listener.",
    "tunnels": "Reverse tunnels connected (none yet: a later issue).",
    "up": "1 while the service runs.",
}


@dataclasses.dataclass(frozen=True, slots=True)
class DiagLimits:
    max_header: int = 8 * 1024
    request_timeout: float = 10.0
    max_connections: int = 32


class Metrics:
    """Counters and gauges of one process, by service; :meth:`exposition` renders them."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], int] = {}
        self._gauges: dict[str, Callable[[], Mapping[str, float]]] = {}
        self.services: list[str] = []

    def count(self, name: str, service: str, by: int = 1) -> None:
        if name not in _COUNTERS:
            raise KeyError(name)
        self._counters[(name, service)] = self._counters.get((name, service), 0) + by

    def gauge(self, name: str, read: Callable[[], Mapping[str, float]]) -> None:
        """``read()`` -> ``{service: value}`` at each scrape."""
        if name not in _GAUGES:
            raise KeyError(name)
        self._gauges[name] = read

    def observe_audit(self, service: str, event: Mapping[str, Any]) -> None:
        """Count what a node's or proxy's audit event says happened."""
        kind, success = event.get("event"), event.get("success", True)
        if kind == "auth":
            self.count("logins" if success else "login_failures", service)
        elif kind == "session.start" and success:
            self.count("sessions", service)

    def exposition(self) -> str:
        lines: list[str] = []
        for name, doc in _COUNTERS.items():
            lines += [f"# HELP jumpgate_{name}_total {doc}", f"# TYPE jumpgate_{name}_total counter"]
            for service in self.services:
                lines.append(f'jumpgate_{name}_total{{service="{service}"}} {self._counters.get((name, service), 0)}')
        for name, doc in _GAUGES.items():
            lines += [f"# HELP jumpgate_{name} {doc}", f"# TYPE jumpgate_{name} gauge"]
            values = dict(self._gauges[name]()) if name in self._gauges else {}
            for service in self.services:
                lines.append(f'jumpgate_{name}{{service="{service}"}} {_number(values.get(service, 0))}')
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Readiness:
    """What ``/readyz`` checks: named async checks returning a problem ("" when fine)."""

    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], Awaitable[str]]] = {}

    def add(self, name: str, check: Callable[[], Awaitable[str]]) -> None:
        self._checks[name] = check

    async def problems(self) -> list[str]:
        found = []
        for name, check in self._checks.items():
            with trio.move_on_after(CHECK_TIMEOUT) as scope:
                try:
                    problem = await check()
                except Exception as exc:  # a check that fails is a reason, not a crash
                    problem = f"{type(exc).__name__}: {exc}"[:200]
            if scope.cancelled_caught:
                problem = f"no answer within {CHECK_TIMEOUT:g}s"
            if problem:
                found.append(f"{name}: {problem}")
        return found


async def _route(method: bytes, target: bytes, metrics: Metrics, readiness: Readiness) -> tuple[int, str, bytes]:
    if method not in (b"GET", b"HEAD"):
        return 405, "text/plain", b"only GET\n"
    path = target.split(b"?", 1)[0]
    if path == b"/healthz":
        return 200, "text/plain", b"ok\n"
    if path == b"/readyz":
        problems = await readiness.problems()
        if problems:
            return 503, "text/plain", ("not ready\n" + "\n".join(problems) + "\n").encode()
        return 200, "text/plain", b"ready\n"
    if path == b"/metrics":
        return 200, "text/plain; version=0.0.4; charset=utf-8", metrics.exposition().encode()
    return 404, "text/plain", b"not found: /healthz, /readyz, /metrics\n"


async def _exchange(stream: trio.SocketStream, metrics: Metrics, readiness: Readiness, limits: DiagLimits) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header)
    status, body, kind = 400, b"bad request\n", "text/plain"
    with trio.move_on_after(limits.request_timeout):
        try:
            event = conn.next_event()
            while event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(_RECEIVE))
                event = conn.next_event()
            if isinstance(event, h11.Request):
                if len(event.target) + sum(len(n) + len(v) for n, v in event.headers) > limits.max_header:
                    status, body = 431, b"request head too large\n"
                elif any(n == b"content-length" and v != b"0" for n, v in event.headers) or \
                        any(n == b"transfer-encoding" for n, _ in event.headers):
                    status, body = 413, b"no request body here\n"
                else:
                    status, kind, body = await _route(event.method, event.target, metrics, readiness)
            elif isinstance(event, h11.ConnectionClosed):
                return
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint or 400
            body = b"malformed request\n"
        headers = [("content-type", kind), ("content-length", str(len(body))), ("connection", "close"),
                   ("cache-control", "no-store")]
        try:
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            return  # the request was not a request we can answer (h11 refuses): just close
    await _linger(stream)


async def _linger(stream: trio.SocketStream) -> None:
    """Drop what the client still sends for a moment before closing: closing with unread
    input resets the connection and can destroy the answer (RFC 9112 §9.6)."""
    with trio.move_on_after(0.5):
        await stream.send_eof()
        received = 0
        while received < 64 * 1024 and (data := await stream.receive_some(_RECEIVE)):
            received += len(data)


async def serve_diag(host: str, port: int, metrics: Metrics, readiness: Readiness, *,
                     limits: DiagLimits = DiagLimits(), listeners: list[trio.SocketListener] | None = None,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``/healthz``, ``/readyz`` and ``/metrics`` until cancelled; ``nursery.start``
    returns the bound (host, port)."""
    listeners = listeners if listeners is not None else await trio.open_tcp_listeners(port, host=host)
    open_now = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal open_now
        try:
            await _exchange(stream, metrics, readiness, limits)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            open_now -= 1
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        async def accept(listener: trio.SocketListener) -> None:
            nonlocal open_now
            async with listener:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError:
                        await trio.sleep(0.1)   # out of descriptors: wait, as the other listeners do (L1)
                        continue
                    if open_now >= limits.max_connections:
                        await trio.aclose_forcefully(stream)
                        continue
                    open_now += 1
                    nursery.start_soon(handle, stream)

        for listener in listeners:
            nursery.start_soon(accept, listener)
        task_status.started(listeners[0].socket.getsockname()[:2])
