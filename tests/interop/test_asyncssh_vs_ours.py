"""asyncssh, the test peer that has ML-KEM, against Jumpgate in both directions.

Debian's OpenSSH 9.2 has no ``mlkem768x25519-sha256`` (MEASURED.md), so asyncssh is the
independent implementation our hybrid post-quantum key exchange is checked against:

- asyncssh's client (in a worker thread with its own asyncio loop) -> our server;
- our client -> asyncssh's server (an asyncio loop in a background thread).

Each side pins ML-KEM and one AEAD cipher (chacha20-poly1305, AES-GCM), so a fallback to
another method cannot pass; strict kex (rule T1) is checked on our side of each pair.
"""
from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
import trio

import ours
import ssh_proto
from ssh_proto.keys import PrivateKey

pytestmark = pytest.mark.interop

KEX = "mlkem768x25519-sha256"
CIPHERS = ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
TIMEOUT = 20
PAYLOAD = os.urandom(200_000)  # several packets each way, past the initial windows


@pytest.fixture(scope="module")
def host_keys() -> ours.HostKeySet:
    return ours.HostKeySet.generate(["ed25519"])


@pytest.fixture(scope="module")
def client_key() -> PrivateKey:
    return PrivateKey.generate("ssh-ed25519")


# --------------------------------------------------------------------- asyncssh -> ours


def _asyncssh_run(port: int, known_hosts: str, client_key: bytes, cipher: str) -> asyncssh.SSHCompletedProcess:
    """Blocking: connect with asyncssh (kex and cipher pinned), run `cat` on PAYLOAD."""

    async def main() -> asyncssh.SSHCompletedProcess:
        async with asyncssh.connect(
            "127.0.0.1", port, username=ours.USERNAME, client_keys=[asyncssh.import_private_key(client_key)],
            known_hosts=asyncssh.import_known_hosts(known_hosts), kex_algs=[KEX], encryption_algs=[cipher],
            agent_path=None, config=[],
        ) as conn:
            return await conn.run("cat; echo to-stderr >&2; exit 5", input=PAYLOAD, encoding=None)

    return asyncio.run(asyncio.wait_for(main(), TIMEOUT))


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_mlkem_asyncssh_client_to_our_server(nursery: trio.Nursery, host_keys: ours.HostKeySet,
                                                   client_key: PrivateKey, cipher: str) -> None:
    connections: list[ssh_proto.SSHServerConnection] = []
    config = ours.ServerConfig(host_keys.pairs(certificates=False), connections=connections,
                               authorized_keys=frozenset({client_key.public_key.blob}))
    listener = await ours.start_server(nursery, config)
    known_hosts = f"[127.0.0.1]:{listener.port} {host_keys.keys['ed25519'].public_key.to_line()}\n"
    run = functools.partial(_asyncssh_run, listener.port, known_hosts, client_key.to_openssh(), cipher)

    result = await trio.to_thread.run_sync(run)

    assert (result.exit_status, result.stdout, result.stderr) == (5, PAYLOAD, b"to-stderr\n")
    negotiated = connections[0].negotiated
    assert (negotiated.kex, negotiated.cipher_cs, negotiated.cipher_sc) == (KEX, cipher, cipher)
    assert connections[0].core.transport.strict_kex


# --------------------------------------------------------------------- ours -> asyncssh


class AsyncsshServer:
    """asyncssh's server in an asyncio loop of its own thread; echoes stdin, exits 7."""

    def __init__(self, *, authorized: str, cipher: str) -> None:
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._authorized = authorized
        self.cipher = cipher
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="asyncssh-server", daemon=True)
        self._server: asyncssh.SSHAcceptor | None = None
        self.port = 0

    def __enter__(self) -> AsyncsshServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(TIMEOUT)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[self.host_key], kex_algs=[KEX], encryption_algs=[self.cipher],
            authorized_client_keys=asyncssh.import_authorized_keys(self._authorized),
            process_factory=self._echo, encoding=None, config=[],
        )

    @staticmethod
    async def _echo(process: asyncssh.SSHServerProcess) -> None:
        data = await process.stdin.read()
        process.stdout.write(data)
        process.stderr.write(f"ran {process.command}".encode())
        process.exit(7)

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key.export_public_key().decode().strip()}\n"

    def __exit__(self, *exc_info: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT)
        self._loop.close()


@pytest.fixture
def asyncssh_server(request: pytest.FixtureRequest, client_key: PrivateKey) -> Iterator[AsyncsshServer]:
    with AsyncsshServer(authorized=client_key.public_key.to_line() + "\n", cipher=request.param) as server:
        yield server


@pytest.mark.parametrize("asyncssh_server", CIPHERS, indirect=True)
async def test_mlkem_our_client_to_asyncssh_server(asyncssh_server: AsyncsshServer, client_key: PrivateKey,
                                                   tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(asyncssh_server.known_hosts_line())
    cipher = asyncssh_server.cipher
    options = ssh_proto.ConnectionOptions(algorithms=ssh_proto.Algorithms(kex=(KEX,), ciphers=(cipher,)))
    with trio.fail_after(TIMEOUT):
        async with ssh_proto.connect("127.0.0.1", asyncssh_server.port, username=ours.USERNAME,
                                     client_keys=[client_key], known_hosts=str(known_hosts), options=options) as conn:
            negotiated = conn.negotiated
            assert (negotiated.kex, negotiated.cipher_cs, negotiated.cipher_sc) == (KEX, cipher, cipher)
            assert conn.core.transport.strict_kex
            result = await conn.run("echo hello", input=PAYLOAD)
    assert (result.exit_status, result.stdout, result.stderr) == (7, PAYLOAD, b"ran echo hello")
