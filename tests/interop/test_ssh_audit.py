"""ssh-audit grades Jumpgate's server and client (docs/security.md T1, T2).

- Server: ``ssh-audit -P ssh_audit_policy.txt`` against our server with its default
  algorithms and a host key (and host certificate) of every kind must pass: the policy
  requires kex-strict-s (rule T1) and forbids CBC, SHA-1 MACs and kex, and ``ssh-rsa``.
- Client: ``ssh-audit -c`` listens, our client connects, and its KEXINIT is held against
  the same allow-lists turned into a *client* policy (kex-strict-c, ext-info-c).
Each has a control case (a SHA-1 MAC switched on) showing the policy really bites.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import ours
import ssh_proto
from openssh import run_ssh_audit
from ssh_proto.ciphers import DEFAULT_MACS

pytestmark = pytest.mark.interop

POLICY = Path(__file__).with_name("ssh_audit_policy.txt")
PASSED, FAILED = 0, 3  # ssh_audit/exitcodes.py: GOOD, FAILURE
WITH_SHA1 = ssh_proto.ConnectionOptions(algorithms=ssh_proto.Algorithms(macs=(*DEFAULT_MACS, "hmac-sha1")))


@pytest.fixture(scope="module")
def host_keys() -> ours.HostKeySet:
    return ours.HostKeySet.generate()


async def _audit_server(nursery: trio.Nursery, config: ours.ServerConfig) -> tuple[int, str]:
    listener = await ours.start_server(nursery, config)
    return await trio.to_thread.run_sync(run_ssh_audit, "127.0.0.1", listener.port, POLICY)


async def test_rule_t1_server_passes_ssh_audit_policy(nursery: trio.Nursery, host_keys: ours.HostKeySet) -> None:
    code, output = await _audit_server(nursery, ours.ServerConfig(host_keys.pairs()))
    assert code == PASSED, output
    assert "Passed" in output


async def test_server_with_sha1_mac_fails_ssh_audit_policy(nursery: trio.Nursery, host_keys: ours.HostKeySet) -> None:
    config = ours.ServerConfig(host_keys.pairs(certificates=False), options=WITH_SHA1)
    code, output = await _audit_server(nursery, config)
    assert code == FAILED, output
    assert "hmac-sha1" in output


#: A client still offers the finite-field DH groups (a server may have nothing newer); only a
#: server's default leaves them out (docs/security.md L10), so the client's allow-list has them.
CLIENT_ONLY_KEX = ", diffie-hellman-group16-sha512, diffie-hellman-group14-sha256"


def client_policy(directory: Path) -> Path:
    """The server policy's allow-lists as a client policy (the -c- pseudo-algorithms)."""
    lines = ["client policy = true"]
    for line in POLICY.read_text().splitlines():
        if not line.strip() or line.startswith("#") or line.startswith("host_key_sizes"):
            continue
        if line.startswith("name"):
            line = 'name = "Jumpgate client baseline"'
        if line.startswith("key exchanges"):
            line = line.replace(", ext-info-s", CLIENT_ONLY_KEX + ", ext-info-s")
        lines.append(line.replace("kex-strict-s-v00", "kex-strict-c-v00").replace("ext-info-s", "ext-info-c"))
    path = directory / "ssh_audit_client_policy.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _audit_client(policy: Path, options: ssh_proto.ConnectionOptions) -> tuple[int, str]:
    """Run ``ssh-audit -c`` and connect our client to it; (exit code, report)."""
    port = ours.free_port()
    argv = [sys.executable, "-m", "ssh_audit", "-n", "-c", "-p", str(port), "-t", "10", "-P", str(policy)]
    env = {**os.environ, "NO_COLOR": "1"}
    run = functools.partial(subprocess.run, argv, capture_output=True, timeout=30, env=env)
    done: list[subprocess.CompletedProcess[bytes]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _collect(done, run))
        with trio.fail_after(15):
            stream = await _connect_when_listening(port)
            # ssh-audit reads our KEXINIT, grades it and hangs up: the handshake cannot finish.
            with pytest.raises(ssh_proto.SSHError):
                async with ssh_proto.connect("127.0.0.1", port, username="audit", known_hosts=None,
                                             stream=stream, options=options):
                    pytest.fail("ssh-audit is no SSH server")
    result = done[0]
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


async def _collect(done: list, run) -> None:
    done.append(await trio.to_thread.run_sync(run))


async def _connect_when_listening(port: int) -> trio.SocketStream:
    while True:
        try:
            return await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.05)


async def test_rule_t1_client_passes_ssh_audit_client_policy(tmp_path: Path) -> None:
    code, output = await _audit_client(client_policy(tmp_path), ssh_proto.ConnectionOptions())
    assert code == PASSED, output
    assert "Passed" in output


async def test_client_with_sha1_mac_fails_ssh_audit_client_policy(tmp_path: Path) -> None:
    code, output = await _audit_client(client_policy(tmp_path), WITH_SHA1)
    assert code == FAILED, output
    assert "hmac-sha1" in output
