"""Jumpgate's rows in bench_ssh.py: our server (own process) and our client driver.

Registered pairs: jumpgate→jumpgate, jumpgate→sshd, ssh→jumpgate, asyncssh→jumpgate (bulk)
and jumpgate→jumpgate, jumpgate→sshd (latency). The server interprets the bench commands
in-process, like the asyncssh server in _peers.py: uploads are discarded, downloads generated.

``python _jumpgate.py jumpgate-server --host-key K --authorized-key P`` is the server's entry.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import ssh_proto  # noqa: E402
from ssh_proto.allocator import tune_allocator  # noqa: E402
from ssh_proto.keys import load_private_key, load_public_file  # noqa: E402
from ssh_proto.known_hosts import KnownHosts  # noqa: E402

from _peers import (  # noqa: E402
    _BULK_COMMAND, CHUNK, HOST_KEY_ALGORITHM, KEX, READY, BenchContext, BulkCase, KeyPair,
    SshEndpoint, SshTarget, asyncssh_bulk, openssh_bulk, register_pair, sshd,
)


#: what the jumpgate binary does at start (JGT_BENCH_NO_MALLOC_TUNING=1 to compare without)
TUNE = not os.environ.get("JGT_BENCH_NO_MALLOC_TUNING")


class _BenchServer(ssh_proto.SSHServer):
    authorized: bytes = b""

    async def auth_publickey(self, username, key):
        return key.blob == self.authorized

    async def auth_publickey_acceptable(self, username, key):
        return key.blob == self.authorized

    async def session(self, session):
        match = _BULK_COMMAND.fullmatch(session.command or "")
        if match is None:
            return 127
        ready, body, download = match.groups()
        if ready:
            await session.send_stderr(READY)
        if download is not None:
            remaining = int(download)
            while remaining > 0:
                chunk = CHUNK if remaining >= len(CHUNK) else CHUNK[:remaining]
                await session.send_all(chunk)
                remaining -= len(chunk)
        elif body != "true":
            while await session.receive_some(1 << 20):
                pass
        return 0


async def _serve(host_key_path: str, authorized_key: str) -> None:
    host_key = load_private_key(host_key_path)
    _BenchServer.authorized = load_public_file(authorized_key)[0].blob
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(lambda task_status: ssh_proto.serve(
            _BenchServer, "127.0.0.1", 0, host_keys=[(host_key, None)], task_status=task_status))
        print(listener.port, flush=True)
        await trio.to_thread.run_sync(sys.stdin.buffer.read)  # exit at EOF on stdin
        nursery.cancel_scope.cancel()


class JumpgateServer:
    def __init__(self, process: subprocess.Popen, target: SshTarget):
        self.process, self.target = process, target

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_jumpgate_server(ctx: BenchContext) -> JumpgateServer:
    host_key = ctx.keys.host_key("ed25519")
    argv = [sys.executable, str(Path(__file__).resolve()), "jumpgate-server",
            "--host-key", str(host_key.private), "--authorized-key", str(ctx.client_key.public)]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError(f"jumpgate server failed to start: {line!r}")
    port = int(line)
    known_hosts = ctx.workdir / f"known_hosts_jumpgate_{port}"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.public_line}\n")
    return JumpgateServer(process, SshTarget("127.0.0.1", port, ctx.user.name, known_hosts))


def _options(cipher: str) -> ssh_proto.ConnectionOptions:
    return ssh_proto.ConnectionOptions(algorithms=ssh_proto.Algorithms(
        kex=(KEX,), host_keys=(HOST_KEY_ALGORITHM,), ciphers=(cipher,)))


def _connect(target: SshEndpoint, identity: KeyPair, cipher: str, loaded=None):
    """Like the asyncssh driver, keys and known_hosts can be read once for a loop."""
    key, known_hosts = loaded or _load(target, identity)
    return ssh_proto.connect(target.host, target.port, username=target.username,
                             client_keys=[key], known_hosts=known_hosts, options=_options(cipher))


def _load(target: SshEndpoint, identity: KeyPair):
    return load_private_key(str(identity.private)), KnownHosts.load(str(target.known_hosts))


async def _jumpgate_bulk(target: SshEndpoint, identity: KeyPair, case: BulkCase) -> float:
    async with _connect(target, identity, case.cipher) as conn:
        proc = await conn.open_session(case.command)
        stderr = b""
        while READY not in stderr:
            data = await proc.receive_stderr()
            if not data:
                raise RuntimeError("the server never printed READY")
            stderr += data
        start = time.perf_counter()
        received = 0
        if case.direction == "upload":
            remaining = case.nbytes
            while remaining > 0:
                chunk = CHUNK if remaining >= len(CHUNK) else CHUNK[:remaining]
                await proc.send_all(chunk)
                remaining -= len(chunk)
            await proc.send_eof()
        while data := await proc.receive_some(1 << 20):
            received += len(data)
        status = await proc.wait()
        end = time.perf_counter()
    if case.direction == "download" and received != case.nbytes:
        raise RuntimeError(f"jumpgate received {received} of {case.nbytes} bytes")
    if status != 0:
        raise RuntimeError(f"remote command exited {status}")
    return end - start


def jumpgate_bulk(target: SshEndpoint, identity: KeyPair, case: BulkCase) -> float:
    if TUNE:
        tune_allocator()
    return trio.run(_jumpgate_bulk, target, identity, case)


async def _jumpgate_latency(target: SshEndpoint, identity: KeyPair, n: int) -> list[float]:
    samples = []
    loaded = _load(target, identity)
    for _ in range(n):
        start = time.perf_counter()
        async with _connect(target, identity, "aes128-gcm@openssh.com", loaded) as conn:
            result = await conn.run("true")
            if result.exit_status != 0:
                raise RuntimeError("true failed")
        samples.append(time.perf_counter() - start)
    return samples


def jumpgate_latency(target: SshEndpoint, identity: KeyPair, n: int) -> list[float]:
    return trio.run(_jumpgate_latency, target, identity, n)


def _server(ctx: BenchContext) -> tuple[int, SshTarget]:
    server = ctx.service("jumpgate-server", start_jumpgate_server)
    return server.pid, server.target


register_pair("jumpgate→jumpgate", _server, bulk=jumpgate_bulk, latency=jumpgate_latency)
register_pair("jumpgate→sshd", sshd, bulk=jumpgate_bulk, latency=jumpgate_latency)
register_pair("ssh→jumpgate", _server, bulk=openssh_bulk)
register_pair("asyncssh→jumpgate", _server, bulk=asyncssh_bulk)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["jumpgate-server"])
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--authorized-key", required=True)
    args = parser.parse_args(argv)
    if TUNE:
        tune_allocator()
    trio.run(_serve, args.host_key, args.authorized_key)


if __name__ == "__main__":
    main(sys.argv[1:])
