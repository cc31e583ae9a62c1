"""Jumpgate's own SSH server (``jg_server.TestServer``) as a test peer, and what goes with it.

This module owns the plumbing the interop tests need to put *our* server in front of a
real client (OpenSSH ``ssh``/``sftp``/``scp``, asyncssh, ssh-audit, our own client):

- :class:`HostKeySet`: one host key of every kind (ed25519, ECDSA P-256/384/521, RSA 3072)
  made by :meth:`ssh_proto.keys.PrivateKey.generate`, each with a host certificate issued
  by :func:`ssh_proto.certs.sign_certificate` from a host CA of ours; it writes the
  ``known_hosts`` files (plain keys, or one ``@cert-authority`` line) that trust a server.
- :class:`ServerConfig` -> a :class:`jg_server.TestServer` subclass configured by it
  (the test server is configured through class attributes: one subclass per server);
  its ``connections`` list, when given, collects the server-side connections.
- :func:`start_server`: start a listener in a Trio nursery (inside a Trio test).
- :class:`ServerThread`: one Trio loop in a background thread hosting any number of
  listeners and echo servers, so that a *module*-scoped fixture can serve many sync tests
  that run the blocking OpenSSH clients.
- :func:`serve_echo`: a loopback TCP echo server (port-forwarding targets).
- :func:`interactive_ssh_command` / :func:`askpass_env`: ``ssh`` that may prompt, its
  prompts answered by an ``SSH_ASKPASS`` script (password, one-time code).
- :func:`scp_command`: the real ``scp`` against any :class:`openssh.SshEndpoint`.
- :class:`BackgroundProcess`: a client left running (``ssh -N -L/-R``) whose stderr is
  watched; :func:`free_port`, :func:`connect_when_listening`, :func:`echo_round_trip`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import trio

import ssh_proto
from jg_server import TestServer
from openssh import LOOPBACK, SshTarget, client_options, ssh_command
from ssh_proto.certs import sign_certificate
from ssh_proto.keys import CERT_TYPE_HOST, CERT_TYPE_USER, Certificate, PrivateKey, PublicKey, parse_public_line

SCP = Path("/usr/bin/scp")
USERNAME = "alice"
T = TypeVar("T")

# kind (as openssh.KEY_KINDS) -> (ssh_proto key type, RSA bits)
KEY_TYPES: dict[str, tuple[str, int | None]] = {
    "ed25519": ("ssh-ed25519", None),
    "ecdsa256": ("ecdsa-sha2-nistp256", None),
    "ecdsa384": ("ecdsa-sha2-nistp384", None),
    "ecdsa521": ("ecdsa-sha2-nistp521", None),
    "rsa3072": ("ssh-rsa", 3072),
}

# Every host key algorithm our server can serve, with the key kind that serves it.
HOST_KEY_ALGORITHMS: dict[str, str] = {
    "ssh-ed25519": "ed25519",
    "ecdsa-sha2-nistp256": "ecdsa256",
    "ecdsa-sha2-nistp384": "ecdsa384",
    "ecdsa-sha2-nistp521": "ecdsa521",
    "rsa-sha2-512": "rsa3072",
    "rsa-sha2-256": "rsa3072",
}
HOST_CERT_ALGORITHMS: dict[str, str] = {
    f"{alg}-cert-v01@openssh.com": kind for alg, kind in HOST_KEY_ALGORITHMS.items()
}


def generate_key(kind: str) -> PrivateKey:
    key_type, bits = KEY_TYPES[kind]
    return PrivateKey.generate(key_type, bits=bits)


def certify(ca: PrivateKey, key: PublicKey, principals: Sequence[str], *, host: bool = False,
            key_id: str = "jgt-ours", lifetime: tuple[int, int] = (-300, 3600),
            critical_options: dict[str, str] | None = None,
            extensions: dict[str, str] | None = None) -> Certificate:
    """A certificate by our own CA code; ``lifetime`` is (after, before) relative to now.

    User certificates get OpenSSH's default extensions (ssh-keygen's ``permit-*``) unless
    ``extensions`` is given.
    """
    now = int(time.time())
    if extensions is None:
        extensions = {} if host else {name: "" for name in (
            "permit-X11-forwarding", "permit-agent-forwarding", "permit-port-forwarding",
            "permit-pty", "permit-user-rc")}
    return sign_certificate(
        ca, key, cert_type=CERT_TYPE_HOST if host else CERT_TYPE_USER, key_id=key_id,
        principals=principals, valid_after=now + lifetime[0], valid_before=now + lifetime[1],
        critical_options=critical_options or {}, extensions=extensions,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class HostKeySet:
    """Host keys of every kind, their host certificates, and the host CA that signed them."""

    keys: dict[str, PrivateKey]
    certificates: dict[str, Certificate]
    ca: PrivateKey

    @classmethod
    def generate(cls, kinds: Iterable[str] = tuple(KEY_TYPES)) -> HostKeySet:
        ca = PrivateKey.generate("ssh-ed25519")
        keys = {kind: generate_key(kind) for kind in kinds}
        certs = {kind: certify(ca, key.public_key, [LOOPBACK, "localhost"], host=True,
                               key_id=f"jgt-host-{kind}")
                 for kind, key in keys.items()}
        return cls(keys, certs, ca)

    def pairs(self, *, certificates: bool = True) -> tuple[tuple[PrivateKey, Certificate | None], ...]:
        """What ``ssh_proto.serve(host_keys=...)`` takes: every plain key, then every cert.

        A ``(key, cert)`` pair offers only the certificate algorithm, so each key is also
        listed alone to keep its plain algorithms on offer (as sshd does).
        """
        plain = tuple((key, None) for key in self.keys.values())
        if not certificates:
            return plain
        return plain + tuple((self.keys[k], c) for k, c in self.certificates.items())

    def write_known_hosts(self, directory: Path, port: int) -> tuple[Path, Path]:
        """(plain known_hosts, @cert-authority known_hosts) trusting ``[127.0.0.1]:port``."""
        pattern = f"[{LOOPBACK}]:{port}"
        plain = directory / f"known_hosts_{port}"
        plain.write_text("".join(f"{pattern} {key.public_key.to_line()}\n" for key in self.keys.values()))
        ca = directory / f"known_hosts_ca_{port}"
        ca.write_text(f"@cert-authority {pattern} {self.ca.public_key.to_line()}\n")
        return plain, ca


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    """How one Jumpgate test server authenticates and what it offers."""

    host_keys: tuple[tuple[PrivateKey, Certificate | None], ...]
    authorized_keys: frozenset[bytes] = frozenset()
    user_cas: tuple[PublicKey, ...] = ()
    password: str | None = None
    otp: str | None = None
    options: ssh_proto.ConnectionOptions = ssh_proto.ConnectionOptions()
    #: when a list, every server-side connection is appended to it (tests read ``.error``)
    connections: list[ssh_proto.SSHServerConnection] | None = None

    def server_class(self) -> type[TestServer]:
        attrs: dict[str, object] = {"authorized_keys": set(self.authorized_keys), "user_cas": tuple(self.user_cas),
                                    "password": self.password, "otp": self.otp}
        record = self.connections
        if record is not None:
            def connection_made(server: TestServer, conn: ssh_proto.SSHServerConnection) -> None:
                TestServer.connection_made(server, conn)
                record.append(conn)
            attrs["connection_made"] = connection_made
        return type("ConfiguredTestServer", (TestServer,), attrs)


def public_key_of(line_or_path: str | Path) -> PublicKey:
    """Parse an OpenSSH public key line (or the first line of a ``.pub`` file)."""
    text = Path(line_or_path).read_text() if isinstance(line_or_path, Path) else line_or_path
    key, _comment = parse_public_line(text.strip().splitlines()[0])
    if not isinstance(key, PublicKey):
        raise TypeError("expected a plain public key")
    return key


async def start_server(nursery: trio.Nursery, config: ServerConfig) -> ssh_proto.SSHListener:
    """Start our server on a free loopback port in ``nursery``; returns the listener."""
    factory = config.server_class()
    return await nursery.start(_serve, factory, config)


async def _serve(factory: type[TestServer], config: ServerConfig, task_status=trio.TASK_STATUS_IGNORED) -> None:
    # Tests open many connections at once under xdist: never drop one for MaxStartups. And
    # they fail logins from 127.0.0.1 on purpose, dozens of times per module: no per-source
    # penalties (docs/security.md L9), or the next test's login would be refused.
    profile = ssh_proto.ListenerProfile(max_startups=(1000, 30, 1000), penalties=None)
    await ssh_proto.serve(factory, LOOPBACK, 0, host_keys=config.host_keys, options=config.options,
                          login_grace_time=30.0, profile=profile, task_status=task_status)


async def serve_echo(nursery: trio.Nursery) -> int:
    """A loopback TCP server echoing each connection's bytes back; returns its port."""

    async def echo(stream: trio.SocketStream) -> None:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    listeners = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host=LOOPBACK))
    return listeners[0].socket.getsockname()[1]


class ServerThread:
    """A Trio loop in a daemon thread that hosts listeners for blocking (sync) tests.

    >>> with ServerThread() as loop:                   # doctest: +SKIP
    ...     listener = loop.serve(config)          # ssh_proto.SSHListener, .port
    ...     echo_port = loop.echo()
    """

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jgt-server-loop", daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self.error: BaseException | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10) or self._token is None:
            raise RuntimeError(f"server loop did not start: {self.error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by stop() and by the tests that see it die
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, async_fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run ``async_fn(nursery, *args)`` in the loop (the loop's nursery comes first)."""
        return trio.from_thread.run(async_fn, self._nursery, *args, trio_token=self._token)

    def serve(self, config: ServerConfig) -> ssh_proto.SSHListener:
        return self.run(start_server, config)

    def echo(self) -> int:
        return self.run(serve_echo)

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join(10)
        if self.error is not None:
            raise RuntimeError("the server loop died") from self.error


def endpoint(port: int, known_hosts: Path, username: str = USERNAME) -> SshTarget:
    """An :class:`openssh.SshEndpoint` for our server on ``port``."""
    return SshTarget(LOOPBACK, port, username, known_hosts)


# ------------------------------------------------------------------ prompting clients

_ASKPASS_SCRIPT = """#!/bin/sh
# SSH_ASKPASS for the interop tests: logs each prompt, answers from the environment.
printf '%s\\n' "$1" >> "$JGT_ASKPASS_LOG"
case "$1" in
  *"Verification code"*) printf '%s\\n' "$JGT_OTP" ;;
  *assword*) printf '%s\\n' "$JGT_PASSWORD" ;;
  *) exit 1 ;;
esac
"""


def askpass_env(directory: Path, *, password: str = "", otp: str = "") -> tuple[dict[str, str], Path]:
    """(environment, prompt log): ssh asks the script, never a terminal, for every secret."""
    script = directory / "askpass.sh"
    script.write_text(_ASKPASS_SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = directory / "askpass.log"
    log.write_text("")
    env = {**os.environ, "SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force",
           "DISPLAY": os.environ.get("DISPLAY", ":0"), "JGT_ASKPASS_LOG": str(log),
           "JGT_PASSWORD": password, "JGT_OTP": otp}
    return env, log


def interactive_ssh_command(args: Sequence[str] | str, *, target: SshTarget, options: Sequence[str] = (),
                            **trust: object) -> list[str]:
    """``openssh.ssh_command`` with ``BatchMode=no`` so ssh may ask SSH_ASKPASS."""
    argv = ssh_command(args, target=target, options=options, **trust)  # type: ignore[arg-type]
    argv[argv.index("BatchMode=yes")] = "BatchMode=no"
    return argv


def scp_command(sources: Sequence[str], destination: str, *, target: SshTarget, options: Sequence[str] = (),
                identity: Path | None = None, certificate: Path | None = None) -> list[str]:
    """The real ``scp``; write remote paths as ``HOST:PATH`` (port and user come from ``target``)."""
    opts = client_options(target, identity=identity, certificate=certificate)
    return [str(SCP), "-q", "-B", *opts, *options, *sources, destination]


# ------------------------------------------------------------------ long-running clients


def free_port() -> int:
    """A loopback port free right now (for ``ssh -L PORT:...``: ssh binds it itself)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class BackgroundProcess:
    """A client left running (``ssh -N -L``/``-R``) whose stderr is read as it comes.

    >>> with BackgroundProcess(argv) as ssh:           # doctest: +SKIP
    ...     match = ssh.wait_for(r"Allocated port (\\d+)")
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, env=env)
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self._lines.append(raw.decode(errors="replace"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first stderr match of ``pattern``; AssertionError (with stderr) on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = re.search(pattern, "".join(self._lines))
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {pattern!r} from {self.process.args[0]}:\n{''.join(self._lines)}")
                self._changed.wait(min(remaining, 0.1))

    def exited(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)

    def __enter__(self) -> BackgroundProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def connect_when_listening(port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to loopback ``port``, retried until something listens there."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((LOOPBACK, port), timeout=timeout)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def echo_round_trip(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload``, half-close, return everything read until EOF."""
    with sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
