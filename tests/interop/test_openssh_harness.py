"""The OpenSSH harness itself: the real ssh, sftp and ssh-audit against the sshd fixture.

If these fail, every interop test built on ``conftest.py`` and ``openssh.py`` is suspect.
"""
from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path

import asyncssh
import pytest
import trio

from openssh import (
    HOST_KEY_ALGORITHMS,
    KEY_KINDS,
    KeyFactory,
    SshdHandle,
    ThrowawayUser,
    run_sftp,
    run_ssh,
    run_ssh_audit,
    ssh_command,
)

pytestmark = pytest.mark.interop

POLICY = Path(__file__).with_name("ssh_audit_policy.txt")
SSH_FAILED = 255  # ssh's own exit status for connection, host key or auth failure
# OpenSSH-to-OpenSSH picks sntrup761x25519-sha512 by default, ~120 ms a connection on these
# machines; loops over many logins pin curve25519 to keep the file fast.
FAST_KEX = ["-o", "KexAlgorithms=curve25519-sha256"]


def _policy_list(field: str) -> list[str]:
    for line in POLICY.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == field:
            return [name.strip() for name in value.split(",")]
    raise LookupError(field)


def test_exec_runs_as_throwaway_user_with_sh_and_home(sshd: SshdHandle, ssh_keys: KeyFactory, ssh_user: ThrowawayUser) -> None:
    done = run_ssh('id -un; echo "$SHELL"; pwd', target=sshd, identity=ssh_keys.user_key())
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == [ssh_user.name, "/bin/sh", str(ssh_user.home)]
    assert "debug3:" in sshd.log_text()


def test_exec_exit_status_reaches_client(sshd: SshdHandle, ssh_keys: KeyFactory) -> None:
    done = run_ssh("exit 7", target=sshd, identity=ssh_keys.user_key())
    assert done.returncode == 7, done.stderr


def test_every_user_key_kind_authenticates(start_sshd, ssh_keys: KeyFactory) -> None:
    server = start_sshd(authorized_keys=[ssh_keys.user_key(kind) for kind in KEY_KINDS])
    for kind in KEY_KINDS:
        done = run_ssh("true", target=server, identity=ssh_keys.user_key(kind), options=FAST_KEX)
        assert done.returncode == 0, (kind, done.stderr)


def test_unauthorized_key_is_refused(sshd: SshdHandle, ssh_keys: KeyFactory) -> None:
    done = run_ssh("true", target=sshd, identity=ssh_keys.new_key())
    assert done.returncode == SSH_FAILED
    assert b"Permission denied" in done.stderr


def test_every_host_key_algorithm_matches_known_hosts(sshd: SshdHandle, ssh_keys: KeyFactory) -> None:
    for algorithm in [a for algs in HOST_KEY_ALGORITHMS.values() for a in algs]:
        done = run_ssh("true", target=sshd, identity=ssh_keys.user_key(),
                       options=[*FAST_KEX, "-o", f"HostKeyAlgorithms={algorithm}"])
        assert done.returncode == 0, (algorithm, done.stderr)


def test_user_certificate_from_fixture_ca_authenticates(start_sshd, ssh_keys: KeyFactory, ssh_user: ThrowawayUser) -> None:
    server = start_sshd(authorized_keys=())  # only TrustedUserCAKeys can let anyone in
    key = ssh_keys.user_key("ecdsa256")
    cert = ssh_keys.sign_user_cert(key, [ssh_user.name], validity="-5m:+1h", identity="harness-ok")
    done = run_ssh("true", target=server, identity=key, certificate=cert)
    assert done.returncode == 0, done.stderr
    assert "ID harness-ok" in server.log_text()

    wrong_principal = ssh_keys.sign_user_cert(key, ["someone-else"])
    assert run_ssh("true", target=server, identity=key, certificate=wrong_principal).returncode == SSH_FAILED
    assert run_ssh("true", target=server, identity=key).returncode == SSH_FAILED


def test_host_certificate_verified_through_cert_authority_line(start_sshd, ssh_keys: KeyFactory, tmp_path: Path) -> None:
    server = start_sshd(host_certificates=True)
    done = run_ssh("true", target=server, identity=ssh_keys.user_key(),
                   known_hosts=server.known_hosts_ca, options=["-v"])
    assert done.returncode == 0, done.stderr
    assert b"Server host certificate: ssh-ed25519-cert-v01@openssh.com" in done.stderr

    rogue = tmp_path / "known_hosts_rogue"
    rogue.write_text(f"@cert-authority {server.host_pattern()} {ssh_keys.ca_key('rogue').public_line}\n")
    done = run_ssh("true", target=server, identity=ssh_keys.user_key(), known_hosts=rogue)
    assert done.returncode == SSH_FAILED
    assert b"Host key verification failed" in done.stderr


def test_password_authentication_option_accepts_the_user_password(start_sshd, ssh_user: ThrowawayUser) -> None:
    # BatchMode keeps the real ssh from typing passwords; asyncssh is the client here.
    ssh_user.set_password("harness-Pw-1")
    server = start_sshd(password_authentication=True, authorized_keys=())

    async def login(password: str) -> int | None:
        async with asyncssh.connect(server.host, server.port, username=ssh_user.name,
                                    password=password, known_hosts=str(server.known_hosts),
                                    client_keys=None, agent_path=None, config=[]) as conn:
            return (await conn.run("exit 5")).exit_status

    assert asyncio.run(login("harness-Pw-1")) == 5
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(login("wrong"))


def test_sftp_batch_upload_lands_in_home(sshd: SshdHandle, ssh_keys: KeyFactory, ssh_user: ThrowawayUser, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    (tmp_path / "payload.bin").write_bytes(payload)
    destination = ssh_user.home / "harness-upload.bin"
    done = run_sftp(f"put {tmp_path / 'payload.bin'} {destination.name}\n",
                    target=sshd, identity=ssh_keys.user_key())
    try:
        assert done.returncode == 0, done.stderr
        assert destination.read_bytes() == payload
        assert destination.stat().st_uid == ssh_user.uid
    finally:
        destination.unlink(missing_ok=True)


async def test_runners_usable_from_trio(sshd: SshdHandle, ssh_keys: KeyFactory) -> None:
    in_thread = functools.partial(run_ssh, "echo thread", target=sshd, identity=ssh_keys.user_key())
    done = await trio.to_thread.run_sync(in_thread)
    assert done.stdout == b"thread\n", done.stderr
    argv = ssh_command("echo process", target=sshd, identity=ssh_keys.user_key())
    result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, stdin=b"")
    assert result.stdout == b"process\n"


def test_ssh_audit_policy_passes_compliant_sshd(start_sshd) -> None:
    # The policy's own lists, minus what OpenSSH 9.2 lacks (ML-KEM) and the two pseudo
    # algorithms sshd adds by itself: "allowed but absent" must pass.
    kex = [k for k in _policy_list("key exchanges")
           if k not in ("mlkem768x25519-sha256", "ext-info-s", "kex-strict-s-v00@openssh.com")]
    server = start_sshd(
        host_certificates=True, kex_algorithms=kex, host_key_algorithms=_policy_list("host keys"),
        ciphers=_policy_list("ciphers"), macs=_policy_list("macs"), log_level="ERROR",
    )
    code, output = run_ssh_audit(server.host, server.port, POLICY)
    assert code == 0, output
    assert "Passed" in output


def test_ssh_audit_policy_fails_sshd_defaults(start_sshd) -> None:
    # Debian's defaults offer sntrup761x25519-sha512, umac and SHA-1 MACs: not allowed.
    # One host key keeps ssh-audit's per-host-key probing short.
    server = start_sshd(host_key_kinds=("ed25519",), log_level="ERROR")
    code, output = run_ssh_audit(server.host, server.port, POLICY)
    assert code == 3, output
    assert "sntrup761x25519-sha512@openssh.com" in output
