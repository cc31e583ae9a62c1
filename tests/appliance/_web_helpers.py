"""Helpers for the web role and signup/login tests: a real AuthService on SQLite in a
temporary directory, the real web server on a loopback port with a real TLS certificate,
a fake wall clock for TOTP steps, and a raw TLS client for malformed requests."""
from __future__ import annotations

import functools
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
import trio

from appliance.auth.passwords import PasswordHasher
from appliance.auth.service import AuthService
from appliance.limits import TunnelLimits
from appliance.storage.sqlite import SQLiteStorage
from appliance.web.server import WebEndpoint, WebLimits, serve_web
from appliance.web.tls import ensure_web_tls, invite_token

CLUSTER = "testcluster"
PROXY_SSH = "127.0.0.1:3023"
PASSWORD = "correct horse battery staple"
# These tests are about HTTP, not the cost of a hash: a cheaper scrypt than the product's
# 2**17 (tests/appliance/test_passwords.py checks those parameters).
FAST_HASHER = PasswordHasher(n=2**10)


@dataclass
class FakeClock:
    """Wall-clock time the test moves: each TOTP code needs a fresh 30 s step."""

    now: float = field(default_factory=lambda: float(int(time.time()) // 30 * 30 + 1))

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float = 30.0) -> float:
        self.now += seconds
        return self.now


@dataclass
class Cluster:
    service: AuthService
    web: WebEndpoint
    clock: FakeClock
    tmp: Path

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.web.port}"

    async def invite(self, name: str = "alice", logins: tuple[str, ...] = ("alice", "root"),
                     roles: tuple[str, ...] = ()) -> str:
        """A fresh invite token ``<secret>.<web pin>``, as ``ctl users add`` prints it."""
        created = await self.service.create_user(name, list(logins), list(roles))
        return invite_token(created.token, self.web.pin)

    def code(self, otp_uri: str) -> str:
        """The current TOTP code after moving the clock to the next step."""
        return pyotp.parse_uri(otp_uri).at(self.clock.step())


@asynccontextmanager
async def running_cluster(tmp: Path, limits: WebLimits = WebLimits(),
                          public_addr: str | None = None, **web_options) -> AsyncIterator[Cluster]:
    """The auth service and the web role; ``web_options`` go to ``serve_web`` (its session
    clock is the cluster's fake clock)."""
    clock = FakeClock()
    storage = SQLiteStorage(tmp / "auth.db", clock=clock)
    service = await AuthService.create(storage, CLUSTER, clock=clock, hasher=FAST_HASHER)
    tls = ensure_web_tls(tmp / "data", hostname="localhost")
    try:
        async with trio.open_nursery() as nursery:
            web = await nursery.start(functools.partial(
                serve_web, service, str(tls.cert_path), str(tls.key_path), "127.0.0.1", 0,
                proxy_ssh_addr=PROXY_SSH, public_addr=public_addr, limits=limits, clock=clock,
                **web_options))
            yield Cluster(service, web, clock, tmp)
            nursery.cancel_scope.cancel()
    finally:
        await storage.aclose()


async def signed_up(cluster: Cluster, name: str = "alice",
                    logins: tuple[str, ...] = ("alice", "root")) -> str:
    """Create ``name`` and complete its signup through the service; return its otp URI."""
    token = await cluster.invite(name, logins)
    info = await cluster.service.get_invite(token)
    await cluster.service.complete_signup(token, PASSWORD, cluster.code(info.otp_uri))
    return info.otp_uri


def _insecure_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def open_tls(port: int, alpn: list[str] | None = None) -> trio.SSLStream:
    """A TLS connection to the web port, offering the ALPN protocols ``alpn`` (None: no ALPN)."""
    context = _insecure_context()
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context,
                                                 https_compatible=True)
    await stream.do_handshake()
    return stream


async def raw_exchange(port: int, data: bytes, *, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send raw bytes over TLS, read until the server closes; (status, headers, body)."""
    with trio.fail_after(timeout):
        stream = await open_tls(port)
        try:
            await stream.send_all(data)
            received = bytearray()
            while chunk := await _receive(stream):
                received += chunk
        finally:
            await trio.aclose_forcefully(stream)
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


async def is_refused(port: int, *, timeout: float = 10) -> bool:
    """True when a connection gets no HTTP answer at all: closed at accept, in its TLS
    handshake, or right after it (the HTTP caps are counted once ALPN says HTTP)."""
    with trio.fail_after(timeout):
        try:
            stream = await open_tls(port)
        except (trio.BrokenResourceError, OSError):
            return True
        try:
            await stream.send_all(http_request("GET", "/v1/ping"))
            return await _receive(stream) == b""
        except (trio.BrokenResourceError, OSError):
            return True
        finally:
            await trio.aclose_forcefully(stream)


async def _receive(stream: trio.SSLStream) -> bytes:
    try:
        return await stream.receive_some(65536)
    except trio.BrokenResourceError:
        return b""


def echo_tunnel_handler(peers: list):
    """A tunnel handler for tests: "authenticated" at once, then echoes; records (peer, local)."""
    async def handler(stream: trio.abc.Stream, peer, local, *, task_status=trio.TASK_STATUS_IGNORED):
        peers.append((peer, local))
        task_status.started()
        try:
            while data := await stream.receive_some(4096):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass
    return handler


async def echoes(stream: trio.abc.Stream, data: bytes) -> bool:
    """Send ``data`` and read as much back: True when the echo matches."""
    await stream.send_all(data)
    received = b""
    while len(received) < len(data):
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        received += chunk
    return received == data


def http_request(method: str, path: str, body: bytes = b"", *,
                 content_type: str = "application/json", extra: str = "") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n")
    return head.encode("latin-1") + body
