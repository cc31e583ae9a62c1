"""Shared helpers for the auth-role tests: a fake clock, a service on in-memory SQLite,
and a signed-up user whose TOTP codes the test can compute.

Imported as ``from _auth_helpers import ...`` (tests/appliance is on sys.path; there is
no package __init__ on purpose, so ``appliance`` keeps naming the product package).
"""
from __future__ import annotations

import threading
import urllib.parse
from dataclasses import dataclass

from appliance.auth import totp
from appliance.auth.passwords import PasswordHasher
from appliance.auth.service import AuthService
from appliance.storage import SQLiteStorage
from ssh_proto.keys import PrivateKey

START = 1_700_000_010.0  # 10 s into a TOTP step
PASSWORD = "correct horse battery staple"
CLUSTER = "acme"  # not a public suffix: "prod" is one (docs/security.md J9)
# Real scrypt at a lower cost keeps the many logins of these tests fast; the product's
# parameters are tested in test_passwords.py (verification reads them from the hash).
FAST_HASHER = PasswordHasher(n=2**10)


class FakeClock:
    """A callable clock the tests move by hand (no sleeping)."""

    def __init__(self, now: float = START):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def next_step(self) -> None:
        """Move to 1 s into the next TOTP time step, so a fresh code is valid."""
        self.now = (totp.counter_at(self.now) + 1) * totp.PERIOD + 1


@dataclass
class Env:
    service: AuthService
    storage: SQLiteStorage
    clock: FakeClock

    def code(self, secret: str, offset: float = 0.0) -> str:
        return totp.code_at(secret, self.clock.now + offset)


async def make_env(path: str = ":memory:", clock: FakeClock | None = None,
                   cluster: str = CLUSTER) -> Env:
    clock = clock or FakeClock()
    storage = SQLiteStorage(path, clock=clock)
    service = await AuthService.create(storage, cluster, clock=clock, hasher=FAST_HASHER)
    return Env(service, storage, clock)


def otp_secret(uri: str) -> str:
    """The base32 seed inside an otpauth:// URI (what the signup page shows)."""
    return urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]


async def signup(env: Env, name: str = "alice", logins: tuple[str, ...] = ("alice", "root"),
                 roles: tuple[str, ...] = (), password: str = PASSWORD) -> str:
    """Create, invite and sign up a user; return its TOTP seed. The clock ends in a
    fresh time step, so ``env.code(seed)`` is immediately usable for a login."""
    invite = await env.service.create_user(name, list(logins), list(roles))
    info = await env.service.get_invite(invite.token)
    seed = otp_secret(info.otp_uri)
    await env.service.complete_signup(invite.token, password, env.code(seed))
    env.clock.next_step()
    return seed


def new_key() -> PrivateKey:
    return PrivateKey.generate("ssh-ed25519")


class ScryptPeak:
    """``passwords._scrypt`` replaced by a spy that counts the hashes running at once (its
    ``peak``). Two hashes must meet on a barrier before either runs, so a test with two slots
    sees them overlap for certain, and a third joining them would raise the peak to 3."""

    def __init__(self, monkeypatch, passwords_module, *, together: int = 2) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self.peak = 0
        self._barrier = threading.Barrier(together, timeout=30)
        self._real = passwords_module._scrypt
        monkeypatch.setattr(passwords_module, "_scrypt", self._scrypt)

    def _scrypt(self, *args):
        with self._lock:
            self._running += 1
            self.peak = max(self.peak, self._running)
        try:
            self._barrier.wait()
            return self._real(*args)
        finally:
            with self._lock:
                self._running -= 1
