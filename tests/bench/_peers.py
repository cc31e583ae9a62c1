"""The peers bench_ssh.py measures: servers, client drivers, and the registry of pairs.

A *pair* is one client talking to one server, registered with :func:`register_pair`;
bench_ssh.py runs every registered pair and prints one row for each:

    register_pair("ssh→jumpgate", jumpgate_server, bulk=openssh_bulk, latency=openssh_latency)

``jumpgate_server(ctx)`` returns (the server's pid, the endpoint the client drivers take);
the server is started once (``ctx.service``) and its CPU is measured around each run.

A bulk pair moves ``case.nbytes`` through ONE exec channel of an already authenticated
connection.  The command (:attr:`BulkCase.command`) first prints READY on stderr, then runs
``cat > /dev/null`` (upload) or ``head -c N /dev/zero`` (download); a test server
interprets these commands (and ``true``) in-process, a real one runs them in its shell.
The clock starts when READY arrives and stops when the channel has closed, so connection
and session setup are not counted; data the client sends before READY is bounded by the
server's initial window (2 MiB for sshd and asyncssh, under 1% of the default 256 MiB).
A latency pair times ``n`` sequential connect + kex + ed25519 user auth + exec ``true`` +
close.

Every pair pins the same algorithms (curve25519-sha256, ssh-ed25519 host key, no
compression, the case's cipher) so rows differ only by implementation.

``python _peers.py asyncssh-server ...`` is the asyncssh server's process entry point.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from openssh import (  # noqa: E402  (tests/interop is not a package)
    KeyFactory,
    KeyPair,
    SshdHandle,
    SshEndpoint,
    SshTarget,
    ThrowawayUser,
    descendants,
    run_ssh,
    ssh_command,
    start_sshd,
)

KEX = "curve25519-sha256"
HOST_KEY_ALGORITHM = "ssh-ed25519"
CIPHERS = ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com")
DIRECTIONS = ("upload", "download")
CHUNK = bytes(256 * 1024)
READY = b"jgt-ready\n"  # on stderr: the remote command runs, the clock starts
_READY_PREFIX = "echo jgt-ready >&2; "
_BULK_COMMAND = re.compile(r"(echo jgt-ready >&2; )?(true|cat > /dev/null|head -c (\d+) /dev/zero)")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class BulkCase:
    cipher: str
    direction: str  # "upload": client -> server; "download": server -> client
    nbytes: int

    @property
    def command(self) -> str:
        """What the client execs: the READY line, then the transfer itself."""
        body = "cat > /dev/null" if self.direction == "upload" else f"head -c {self.nbytes} /dev/zero"
        return _READY_PREFIX + body


@dataclasses.dataclass(frozen=True, slots=True)
class BulkResult:
    seconds: float  # READY to channel close, see the module docstring
    server_cpu_seconds: float | None  # the server's CPU for the connection, None: unknown


@dataclasses.dataclass(frozen=True, slots=True)
class LatencyResult:
    seconds: list[float]
    server_cpu_seconds: float | None  # total server CPU over all the connections


BulkPair = Callable[["BenchContext", BulkCase], BulkResult]
LatencyPair = Callable[["BenchContext", int], LatencyResult]
BULK_PAIRS: dict[str, BulkPair] = {}
LATENCY_PAIRS: dict[str, LatencyPair] = {}
BASELINE = "asyncssh→asyncssh"


ServerOf = Callable[["BenchContext"], "tuple[int, object]"]  # ctx -> (server pid, endpoint)


def register_pair(name: str, server: ServerOf, *, bulk: Callable | None = None,
                  latency: Callable | None = None) -> None:
    """Register the client→server pair ``name``: ``bulk(endpoint, key, case)`` returns the
    seconds for one :class:`BulkCase`, ``latency(endpoint, key, n)`` the seconds of ``n``
    sequential connections. The caller measures the client's CPU (its own and reaped
    children's rusage); the server's is measured here with :class:`ServerCpu`."""
    if bulk is not None:
        def measure_bulk(ctx: BenchContext, case: BulkCase) -> BulkResult:
            pid, endpoint = server(ctx)
            with ServerCpu(pid) as cpu:
                seconds = bulk(endpoint, ctx.client_key, case)
            return BulkResult(seconds, cpu.seconds)
        BULK_PAIRS[name] = measure_bulk
    if latency is not None:
        def measure_latency(ctx: BenchContext, n: int) -> LatencyResult:
            pid, endpoint = server(ctx)
            with ServerCpu(pid) as cpu:
                samples = latency(endpoint, ctx.client_key, n)
            return LatencyResult(samples, cpu.seconds)
        LATENCY_PAIRS[name] = measure_latency


class BenchContext:
    """What pairs share: the throw-away user, keys, and servers started once on demand."""

    def __init__(self, workdir: Path, user: ThrowawayUser, keys: KeyFactory) -> None:
        self.workdir = workdir
        self.user = user
        self.keys = keys
        self.client_key = keys.user_key("ed25519")
        self._services: dict[str, Any] = {}
        self._stops: list[Callable[[], None]] = []

    def service(self, name: str, start: Callable[[BenchContext], T]) -> T:
        """``start(ctx)`` once per run; the result's ``stop()`` is called by :meth:`close`."""
        if name not in self._services:
            service = start(self)
            self._services[name] = service
            self._stops.append(service.stop)  # type: ignore[attr-defined]
        return self._services[name]

    def sshd(self) -> SshdHandle:
        return self.service("sshd", _start_bench_sshd)

    def asyncssh_server(self) -> AsyncsshServer:
        return self.service("asyncssh-server", start_asyncssh_server)

    def close(self) -> None:
        for stop in reversed(self._stops):
            stop()
        self._stops.clear()
        self._services.clear()


class ServerCpu:
    """CPU seconds a server process and its reaped children used inside the ``with`` block.

    sshd forks per connection; a child's CPU reaches the listener's cutime/cstime once it
    is reaped, so leaving the block waits (up to 5 s) until the server has no children.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seconds: float | None = None

    def __enter__(self) -> ServerCpu:
        self._start = _cpu_seconds(self.pid)
        return self

    def __exit__(self, *exc_info: object) -> None:
        deadline = time.monotonic() + 5
        while _has_children(self.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.seconds = _cpu_seconds(self.pid) - self._start


def _has_children(pid: int) -> bool:
    # The kernel's direct-children list is one cheap read (a full /proc scan would add its
    # own CPU to the client's measured cost); fall back to the scan where it is missing.
    try:
        return bool(Path(f"/proc/{pid}/task/{pid}/children").read_text().strip())
    except FileNotFoundError:
        return bool(descendants(pid))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- servers


def _start_bench_sshd(ctx: BenchContext) -> SshdHandle:
    # LogLevel ERROR: DEBUG3 logging would cost sshd CPU on the measured path.
    return start_sshd(ctx.workdir / "sshd", ctx.user, ctx.keys, host_key_kinds=("ed25519",),
                      log_level="ERROR")


@dataclasses.dataclass(slots=True)
class AsyncsshServer:
    """The asyncssh server of :func:`_serve_asyncssh`, in its own process."""

    process: subprocess.Popen[bytes]
    target: SshTarget

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the server exits at EOF on its stdin
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_asyncssh_server(ctx: BenchContext) -> AsyncsshServer:
    host_key = ctx.keys.host_key("ed25519")
    argv = [sys.executable, str(Path(__file__).resolve()), "asyncssh-server",
            "--host-key", str(host_key.private), "--authorized-key", str(ctx.client_key.public)]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError(f"asyncssh server failed to start: {line!r}")
    port = int(line)
    known_hosts = ctx.workdir / f"known_hosts_asyncssh_{port}"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.public_line}\n")
    return AsyncsshServer(process, SshTarget("127.0.0.1", port, ctx.user.name, known_hosts))


class _ServerBulkSession(asyncssh.SSHServerSession[bytes]):
    """Runs the bench's commands in-process: uploads discarded, downloads generated."""

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self._command: re.Match[str] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def exec_requested(self, command: str) -> bool:
        self._command = _BULK_COMMAND.fullmatch(command)
        return self._command is not None

    def session_started(self) -> None:
        assert self._command is not None
        ready, body, download = self._command.groups()
        if ready:
            self._chan.write(READY, asyncssh.EXTENDED_DATA_STDERR)
        if download is not None:
            # Keep a reference: the loop holds tasks only weakly.
            self._task = asyncio.get_running_loop().create_task(self._send(int(download)))
        elif body == "true":
            self._chan.exit(0)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        pass

    def eof_received(self) -> bool:
        assert self._command is not None
        if self._command.group(2) == "cat > /dev/null":
            self._chan.exit(0)
        return True

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def _send(self, remaining: int) -> None:
        while remaining > 0:
            await self._writable.wait()
            chunk = CHUNK if remaining >= len(CHUNK) else CHUNK[:remaining]
            self._chan.write(chunk)
            remaining -= len(chunk)
        self._chan.exit(0)


class _BenchServer(asyncssh.SSHServer):
    def session_requested(self) -> _ServerBulkSession:
        return _ServerBulkSession()


async def _serve_asyncssh(host_key: str, authorized_key: str) -> None:
    server = await asyncssh.listen(
        "127.0.0.1", 0, server_factory=_BenchServer, server_host_keys=[host_key],
        authorized_client_keys=authorized_key, encoding=None, compression_algs=["none"],
        encryption_algs=list(CIPHERS), kex_algs=[KEX],
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    stdin_closed = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), loop.call_soon_threadsafe(stdin_closed.set)),
                     daemon=True).start()
    await stdin_closed.wait()
    server.close()


# --------------------------------------------------------------------------- clients


def _asyncssh_options(target: SshEndpoint, identity: KeyPair, cipher: str) -> dict[str, Any]:
    return {
        "host": target.host, "port": target.port, "username": target.username,
        "client_keys": [asyncssh.read_private_key(str(identity.private))],
        "known_hosts": asyncssh.read_known_hosts(str(target.known_hosts)),
        "kex_algs": [KEX], "server_host_key_algs": [HOST_KEY_ALGORITHM],
        "encryption_algs": [cipher], "compression_algs": ["none"],
        "agent_path": None, "config": [], "preferred_auth": "publickey",
    }


class _ClientBulkSession(asyncssh.SSHClientSession[bytes]):
    def __init__(self, case: BulkCase) -> None:
        self.case = case
        self.received = 0
        self.started: float | None = None  # perf_counter() when READY arrived
        self._stderr = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._chan = chan

    def session_started(self) -> None:
        if self.case.direction == "upload":
            self._task = asyncio.get_running_loop().create_task(self._send())

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self._stderr += data
            if self.started is None and READY in self._stderr:
                self.started = time.perf_counter()
        else:
            self.received += len(data)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc) if exc else self.done.set_result(None)

    async def _send(self) -> None:
        remaining = self.case.nbytes
        while remaining > 0:
            await self._writable.wait()
            chunk = CHUNK if remaining >= len(CHUNK) else CHUNK[:remaining]
            self._chan.write(chunk)
            remaining -= len(chunk)
        self._chan.write_eof()


async def _asyncssh_bulk(target: SshEndpoint, identity: KeyPair, case: BulkCase) -> float:
    async with asyncssh.connect(**_asyncssh_options(target, identity, case.cipher)) as conn:
        chan, session = await conn.create_session(lambda: _ClientBulkSession(case), case.command,
                                                  encoding=None)
        await session.done
        end = time.perf_counter()
    if session.started is None:
        raise RuntimeError("the server never printed READY")
    if case.direction == "download" and session.received != case.nbytes:
        raise RuntimeError(f"asyncssh received {session.received} of {case.nbytes} bytes")
    if chan.get_exit_status() != 0:
        raise RuntimeError(f"remote command exited {chan.get_exit_status()}")
    return end - session.started


def asyncssh_bulk(target: SshEndpoint, identity: KeyPair, case: BulkCase) -> float:
    """Seconds asyncssh (client) takes to move ``case`` through one exec channel."""
    return asyncio.run(_asyncssh_bulk(target, identity, case))


async def _asyncssh_connect_loop(target: SshEndpoint, identity: KeyPair, n: int) -> list[float]:
    options = _asyncssh_options(target, identity, CIPHERS[0])
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        async with asyncssh.connect(**options) as conn:
            await conn.run("true", check=True)
        samples.append(time.perf_counter() - start)
    return samples


def asyncssh_latency(target: SshEndpoint, identity: KeyPair, n: int) -> list[float]:
    """Seconds for each of ``n`` sequential asyncssh connect+auth+exec true+close."""
    return asyncio.run(_asyncssh_connect_loop(target, identity, n))


def _openssh_options(cipher: str) -> list[str]:
    return ["-o", f"Ciphers={cipher}", "-o", f"KexAlgorithms={KEX}",
            "-o", f"HostKeyAlgorithms={HOST_KEY_ALGORITHM}", "-o", "Compression=no"]


def openssh_bulk(target: SshEndpoint, identity: KeyPair, case: BulkCase) -> float:
    """Seconds the real ssh takes to move ``case``, clocked from READY to ssh's exit.

    Like the asyncssh client, which makes and discards data in-process, ssh pays for no
    extra process: uploads read a sparse file of zeros, downloads go to /dev/null (the
    command exiting 0 proves ``head`` wrote every byte).
    """
    argv = ssh_command(case.command, target=target, identity=identity,
                       options=_openssh_options(case.cipher))
    with tempfile.TemporaryFile() as source, open(os.devnull, "wb") as sink:
        source.truncate(case.nbytes if case.direction == "upload" else 0)
        proc = subprocess.Popen(argv, stdin=source, stdout=sink, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        early = _read_until_ready(proc.stderr.fileno())
        start = time.perf_counter()
        status = proc.wait()
        elapsed = time.perf_counter() - start
        problem = (early + proc.stderr.read()).decode(errors="replace")
        proc.stderr.close()
    if status != 0:
        raise RuntimeError(f"ssh exited {status}: {problem}")
    return elapsed


def _read_until_ready(fd: int) -> bytes:
    """Read ``fd`` up to the READY line; return whatever followed it."""
    buffer = b""
    while READY not in buffer:
        data = os.read(fd, 65536)
        if not data:
            raise RuntimeError(f"ssh ended before the remote shell started: {buffer!r}")
        buffer += data
    return buffer.split(READY, 1)[1]


def openssh_latency(target: SshEndpoint, identity: KeyPair, n: int) -> list[float]:
    """Seconds for each of ``n`` runs of a new ``ssh ... true`` process."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        run_ssh("true", target=target, identity=identity, options=_openssh_options(CIPHERS[0]),
                check=True)
        samples.append(time.perf_counter() - start)
    return samples


# --------------------------------------------------------------------------- the pairs


def sshd(ctx: BenchContext) -> tuple[int, object]:
    server = ctx.sshd()
    return server.pid, server


def asyncssh_server(ctx: BenchContext) -> tuple[int, object]:
    server = ctx.asyncssh_server()
    return server.pid, server.target


# rows print in registration order (these first, then _jumpgate.py's)
register_pair("asyncssh→asyncssh", asyncssh_server, bulk=asyncssh_bulk, latency=asyncssh_latency)
register_pair("asyncssh→sshd", sshd, bulk=asyncssh_bulk, latency=asyncssh_latency)
register_pair("ssh→sshd", sshd, bulk=openssh_bulk, latency=openssh_latency)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["asyncssh-server"])
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--authorized-key", required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve_asyncssh(args.host_key, args.authorized_key))


if __name__ == "__main__":
    main(sys.argv[1:])
