"""A library user's server that implements only ``auth_publickey``, against OpenSSH and asyncssh.

Both clients ask whether a key would do before signing with it. The ``SSHServer`` defaults
(docs/security.md T12a, T12b) must let them in without the application answering that query
itself, without calling its ``auth_publickey`` for the query (it may audit or keep state),
and without offering methods the application never implemented.
"""
from __future__ import annotations

import asyncio
import functools
import subprocess
from pathlib import Path

import asyncssh
import pytest
import trio

import ours
import ssh_proto
from openssh import KeyFactory, ssh_command
from ssh_proto.keys import PrivateKey

pytestmark = pytest.mark.interop

SSH_FAILED = 255
TIMEOUT = 30  # safety net; a login takes well under a second


class OnlyPublickey(ssh_proto.SSHServer):
    """What ssh_proto/README.md's server does: auth_publickey and session, nothing else."""

    authorized: set[bytes] = set()
    calls: list = []   # (username, key) for every auth_publickey call, in order

    async def auth_publickey(self, username, key):
        type(self).calls.append((username, key))
        return key.blob in self.authorized

    async def session(self, session):
        await session.send_all(f"you ran {session.command!r}\n".encode())
        return 0


async def _serve(nursery: trio.Nursery, authorized: set[bytes]) -> tuple[type[OnlyPublickey], int, str]:
    server = type("Server", (OnlyPublickey,), {"authorized": authorized, "calls": []})
    host_key = PrivateKey.generate("ssh-ed25519")
    listener = await nursery.start(functools.partial(
        ssh_proto.serve, server, ours.LOOPBACK, 0, host_keys=[(host_key, None)],
        profile=ssh_proto.ListenerProfile(penalties=None)))
    known_hosts = f"[{ours.LOOPBACK}]:{listener.port} {host_key.public_key.to_line()}\n"
    return server, listener.port, known_hosts


async def _openssh(port: int, known_hosts: str, identity, tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    path = tmp_path / "known_hosts"
    path.write_text(known_hosts)
    argv = ssh_command("echo hi", target=ours.endpoint(port, path), identity=identity, options=["-v", *options])
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False,
                                      stdin=subprocess.DEVNULL)


async def test_T12a_openssh_logs_in_where_only_auth_publickey_is_implemented(nursery, ssh_keys: KeyFactory,
                                                                            tmp_path: Path):
    identity = ssh_keys.user_key("ed25519")
    key = ours.public_key_of(identity.public_line)
    server, port, known_hosts = await _serve(nursery, {key.blob})
    done = await _openssh(port, known_hosts, identity, tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"you ran 'echo hi'\n"
    assert b"Server accepts key" in done.stderr            # OpenSSH queried first and got PK_OK
    assert server.calls == [(ours.USERNAME, key)]          # once: for the signed request, not the query


async def test_T12a_a_key_the_application_refuses_is_refused_after_it_signed(nursery, ssh_keys: KeyFactory,
                                                                          tmp_path: Path):
    identity = ssh_keys.user_key("ed25519")
    server, port, known_hosts = await _serve(nursery, set())
    done = await _openssh(port, known_hosts, identity, tmp_path)
    assert done.returncode == SSH_FAILED and b"Permission denied (publickey)" in done.stderr
    assert server.calls == [(ours.USERNAME, ours.public_key_of(identity.public_line))]


async def test_T12b_only_the_implemented_method_is_offered_to_openssh(nursery, ssh_keys: KeyFactory,
                                                                    tmp_path: Path):
    """A client that would rather type a password is told at once that only keys work."""
    identity = ssh_keys.user_key("ed25519")
    server, port, known_hosts = await _serve(nursery, set())
    done = await _openssh(port, known_hosts, identity, tmp_path,
                          "-o", "PreferredAuthentications=password,keyboard-interactive")
    assert done.returncode == SSH_FAILED
    assert b"Authentications that can continue: publickey\r\n" in done.stderr
    assert b"Permission denied (publickey)" in done.stderr
    assert server.calls == []


def _asyncssh_login(port: int, known_hosts: str, key: bytes) -> tuple[str, str]:
    """Blocking: asyncssh's client logs in with ``key`` and runs a command."""

    async def main():
        async with asyncssh.connect(ours.LOOPBACK, port, username=ours.USERNAME,
                                    client_keys=[asyncssh.import_private_key(key)],
                                    known_hosts=asyncssh.import_known_hosts(known_hosts),
                                    agent_path=None, config=[]) as conn:
            result = await conn.run("echo hi")
            return result.stdout, conn.get_extra_info("username")

    return asyncio.run(asyncio.wait_for(main(), TIMEOUT))


async def test_T12a_asyncssh_logs_in_where_only_auth_publickey_is_implemented(nursery):
    key = PrivateKey.generate("ssh-ed25519")
    server, port, known_hosts = await _serve(nursery, {key.public_key.blob})
    stdout, username = await trio.to_thread.run_sync(_asyncssh_login, port, known_hosts, key.to_openssh())
    assert stdout == "you ran 'echo hi'\n" and username == ours.USERNAME
    assert server.calls == [(ours.USERNAME, key.public_key)]  # once: the signed request, not the query
