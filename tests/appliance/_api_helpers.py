"""Helpers for the internal API tests: a real auth server on loopback.

``async with running_auth() as env:`` gives an :class:`AuthEnv`: a real
:class:`AuthService` on in-memory SQLite, its :func:`serve_auth` SSH server on
127.0.0.1 (port 0), and ways to mint the identities the tests connect with (admin user
certificates, node/proxy host certificates from a real join, certificates from a rogue
CA). The clock is real time plus an offset the test can move, shared by the service and
the SSH server's certificate checks.

Imported as ``from _api_helpers import ...`` (tests/appliance is on sys.path).
"""
from __future__ import annotations

import contextlib
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from appliance.api.client import ApiClient
from appliance.auth.passwords import PasswordHasher
from appliance.auth.server import serve_auth
from appliance.auth.service import AuthService
from appliance.storage import SQLiteStorage
from ssh_proto.certs import CERT_TYPE_HOST, CERT_TYPE_USER, DEFAULT_USER_EXTENSIONS, sign_certificate
from ssh_proto.keys import Certificate, PrivateKey, parse_public_line

CLUSTER = "acme"  # not a public suffix: "prod" is one (docs/security.md J9)
PASSWORD = "correct horse battery staple"
# Real scrypt at a low cost: these tests are about the API, not password hashing.
FAST_HASHER = PasswordHasher(n=2**10)
DAY = 86400.0


class OffsetClock:
    """Real time plus an offset the test moves (certificates need a plausible 'now')."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def parse_cert(line: str) -> Certificate:
    cert, _ = parse_public_line(line)
    assert isinstance(cert, Certificate)
    return cert


@dataclass
class AuthEnv:
    service: AuthService
    clock: OffsetClock
    port: int
    host_identity: tuple[PrivateKey, Certificate]
    listener: Any = None  # the ssh_proto.SSHListener (its ``admission``)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def host_ca(self):
        return self.service.ca.host_ca_public

    @property
    def pin(self) -> str:
        return self.service.ca.pin_for_host_ca()

    async def user_identity(self, name: str, roles: tuple[str, ...] = ()) -> tuple[PrivateKey, Certificate]:
        """A user (created if needed) and a user certificate issued by the cluster CA."""
        if name not in {u.name for u in await self.service.list_users()}:
            await self.service.create_user(name, [name], list(roles))
        key = PrivateKey.generate()
        result = await self.service.sign_user_cert(name, key.public_key.blob, 3600)
        return key, parse_cert(result.cert)

    async def admin_identity(self, name: str = "root") -> tuple[PrivateKey, Certificate]:
        return await self.user_identity(name, ("admin",))

    async def token(self, kind: str = "node", ttl: float = 1800, **binding) -> str:
        """A join token; ``binding`` is ``name=`` and ``addresses=`` (what ctl tokens add binds)."""
        return (await self.service.create_token(kind, ttl, **binding)).token

    async def joined_identity(self, name: str, kind: str = "node") -> tuple[PrivateKey, Certificate]:
        """A node/proxy joined through the service itself (the API join is test_join's), its
        loopback address approved by the token (J3, J4)."""
        key = PrivateKey.generate()
        token = await self.token(kind, addresses=["127.0.0.1"])
        result = await self.service.join(token, kind, name, key.public_key.blob,
                                         ["127.0.0.1"], {"env": "test"}, f"127.0.0.1:{3022}")
        return key, parse_cert(result.host_cert)

    def connect(self, identity: tuple[PrivateKey, Certificate], **kwargs):
        kwargs.setdefault("host_ca_key", self.host_ca)
        return ApiClient.connect(self.addr, identity=identity, **kwargs)

    async def audit(self, event: str | None = None) -> list:
        events = await self.service.list_audit(1000)
        return [e for e in events if event is None or e.event == event]


def rogue_user_cert(name: str, roles: str = "admin") -> tuple[PrivateKey, Certificate]:
    """A user certificate that looks right but is signed by a CA the cluster never made."""
    ca, key = PrivateKey.generate(), PrivateKey.generate()
    now = int(time.time())
    cert = sign_certificate(ca, key.public_key, cert_type=CERT_TYPE_USER, key_id=f"user:{name}",
                            principals=[name], valid_after=now - 60, valid_before=now + 3600,
                            extensions={**DEFAULT_USER_EXTENSIONS, "jumpgate-roles@jumpgate": roles})
    return key, cert


def rogue_host_cert(name: str, kind: str = "node", ca: PrivateKey | None = None,
                    principals: tuple[str, ...] = ()) -> tuple[PrivateKey, Certificate]:
    ca, key = ca or PrivateKey.generate(), PrivateKey.generate()
    now = int(time.time())
    cert = sign_certificate(ca, key.public_key, cert_type=CERT_TYPE_HOST, key_id=f"{kind}:{name}",
                            principals=[name, *principals], valid_after=now - 60, valid_before=now + 3600)
    return key, cert


async def make_service(clock: OffsetClock | None = None, hasher: PasswordHasher = FAST_HASHER) -> AuthService:
    clock = clock or OffsetClock()
    storage = SQLiteStorage(":memory:", clock=clock)
    return await AuthService.create(storage, CLUSTER, clock=clock, hasher=hasher)


def otp_secret(uri: str) -> str:
    """The base32 seed inside an otpauth:// URI (what the signup page shows)."""
    return urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]


def auth_host_identity(service: AuthService, name: str = "auth") -> tuple[PrivateKey, Certificate]:
    key = PrivateKey.generate()
    cert = service.ca.sign_host(key.public_key, "auth", name, [name, f"{name}.{CLUSTER}", "localhost", "127.0.0.1"],
                                30 * DAY, time.time())
    return key, cert


@contextlib.asynccontextmanager
async def running_auth(port: int = 0, service: AuthService | None = None,
                       clock: OffsetClock | None = None) -> AsyncIterator[AuthEnv]:
    """A live auth API on 127.0.0.1; the server stops at the end of the block.

    Pass ``service`` and its ``clock`` to serve an existing service again (a restart).
    """
    if service is None:
        clock = OffsetClock()
        service = await make_service(clock)
    assert clock is not None, "a service comes with its clock"
    host_identity = auth_host_identity(service)
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(partial(serve_auth, service, service.ca, host_identity, "127.0.0.1", port,
                                               clock=clock))
        try:
            yield AuthEnv(service, clock, listener.port, host_identity, listener)
        finally:
            nursery.cancel_scope.cancel()
