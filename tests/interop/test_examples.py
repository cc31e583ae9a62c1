"""ssh_proto/README.md's examples (ssh_proto/examples/), run as a library user runs them,
against the real peers: the client against Debian's sshd, the servers against OpenSSH's ssh
and asyncssh, and the CA's certificates through ssh-keygen -L and an sshd + ssh pair that
trust nothing but the two CAs."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

import ours
from openssh import SSH_KEYGEN, KeyFactory, SshdHandle, run_ssh

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30


def _example(name: str, *args: str | os.PathLike[str] | int) -> list[str]:
    return [sys.executable, "-m", f"ssh_proto.examples.{name}", *map(str, args)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _run_example(name: str, *args: str | os.PathLike[str] | int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_example(name, *args), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def test_client_example_runs_against_openssh_sshd(sshd: SshdHandle, ssh_keys: KeyFactory):
    key = ssh_keys.user_key("ed25519")
    done = _run_example("client", sshd.host, sshd.port, sshd.username, key.private, sshd.known_hosts)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("0 Linux ")                   # conn.run("uname -a")
    assert "b'hello\\n' 0" in lines                          # the streamed cat, and its exit status
    assert lines[-1].startswith("forwarded: SSH-2.0-OpenSSH")  # ssh -L to the server's own sshd


class _ServerExample:
    """An example server as a process: its port and host key come from its first line."""

    def __init__(self, name: str, authorized_keys: Path, directory: Path):
        self.process = subprocess.Popen(_example(name, authorized_keys, 0), cwd=ROOT, env=_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        stdin=subprocess.DEVNULL)
        assert self.process.stdout is not None
        first = self.process.stdout.readline().split()
        assert first[:2] == ["listening", "on"], (first, self.process.stderr.read() if not first else "")
        self.port = int(first[2])
        self.known_hosts_line = f"[{ours.LOOPBACK}]:{self.port} {first[3]} {first[4]}"
        self.known_hosts = directory / "known_hosts"
        self.known_hosts.write_text(self.known_hosts_line + "\n")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(params=["server", "limits"])
def example_server(request, ssh_keys: KeyFactory, tmp_path: Path) -> Iterator[_ServerExample]:
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(ssh_keys.user_key("ed25519").public_line + "\n")
    server = _ServerExample(request.param, authorized, tmp_path)
    yield server
    server.stop()


def test_server_example_lets_openssh_ssh_in_with_an_authorized_key(example_server, ssh_keys: KeyFactory):
    target = ours.endpoint(example_server.port, example_server.known_hosts)
    done = run_ssh("echo hi", target=target, identity=ssh_keys.user_key("ed25519"), timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"you ran 'echo hi'\n"
    refused = run_ssh("echo hi", target=target, identity=ssh_keys.new_key(), timeout=TIMEOUT)
    assert refused.returncode == 255 and b"Permission denied (publickey)" in refused.stderr


def test_server_example_lets_asyncssh_in_with_an_authorized_key(example_server, ssh_keys: KeyFactory):
    async def main() -> str:
        async with asyncssh.connect(ours.LOOPBACK, example_server.port, username="alice",
                                    client_keys=[str(ssh_keys.user_key("ed25519").private)],
                                    known_hosts=asyncssh.import_known_hosts(example_server.known_hosts_line),
                                    agent_path=None, config=[]) as conn:
            return (await conn.run("echo hi")).stdout

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == "you ran 'echo hi'\n"


# ---------------------------------------------------------------------------- the CA example

@pytest.fixture
def ca_files(tmp_path: Path, ssh_keys: KeyFactory, ssh_user) -> tuple[Path, object]:
    """Run examples/ca.py: certify a fresh user key for the test account, and the host key."""
    user_key = ssh_keys.new_key()
    done = _run_example("ca", tmp_path, user_key.public, ssh_user.name, ssh_keys.host_key("ed25519").public,
                        ours.LOOPBACK)
    assert done.returncode == 0, done.stderr
    return tmp_path, user_key


def _keygen_list(path: Path) -> str:
    return subprocess.run([str(SSH_KEYGEN), "-L", "-f", str(path)], capture_output=True, text=True,
                          check=True).stdout


def test_ca_example_certificates_read_by_ssh_keygen(ca_files, ssh_user):
    out, _ = ca_files
    user = _keygen_list(out / "user-cert.pub")
    assert "user certificate" in user and f'Key ID: "{ssh_user.name}@example"' in user
    assert f"Principals: \n                {ssh_user.name}\n" in user
    assert "source-address 127.0.0.1/32,::1/128" in user
    assert "Extensions: \n                permit-pty\n" in user      # only the pty: no forwarding
    host = _keygen_list(out / "host-cert.pub")
    assert "host certificate" in host and "Principals: \n                127.0.0.1\n" in host
    assert "Critical Options: (none)" in host


def test_ca_example_user_and_host_certificates_accepted_by_openssh(ca_files, start_sshd):
    out, user_key = ca_files
    sshd = start_sshd(authorized_keys=(), trust_user_ca=False, host_key_kinds=("ed25519",),
                      extra_config=[f"TrustedUserCAKeys {out / 'user_ca.pub'}",
                                    f"HostCertificate {out / 'host-cert.pub'}"])
    done = run_ssh("echo certified", target=sshd, identity=user_key, certificate=out / "user-cert.pub",
                   known_hosts=out / "known_hosts", options=["-v"], timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"certified\n"
    assert b"Server host certificate: ssh-ed25519-cert-v01@openssh.com" in done.stderr
    assert "Accepted publickey" in sshd.log_text() and "ED25519-CERT" in sshd.log_text()
    # without its certificate the same key is nobody's
    bare = run_ssh("true", target=sshd, identity=user_key, known_hosts=out / "known_hosts", timeout=TIMEOUT)
    assert bare.returncode == 255
