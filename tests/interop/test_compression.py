"""Delayed compression (zlib@openssh.com, rule T18) across key re-exchanges, with OpenSSH.

OpenSSH starts a fresh zlib stream with every new set of keys once compression has
begun (packet.c ssh_set_newkeys); a peer that kept one stream across a re-exchange
would fail on the first compressed packet after it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio

import ours
import ssh_proto
from openssh import KeyFactory, ThrowawayUser, ssh_command, start_sshd

pytestmark = pytest.mark.interop

PAYLOAD = (b"compressible text " * 40_000) + os.urandom(300_000)


async def test_T18_our_client_zlib_with_rekeys_against_sshd(ssh_user: ThrowawayUser, ssh_keys: KeyFactory,
                                                          interop_dir: Path):
    workdir = Path(tempfile.mkdtemp(prefix="sshd_zlib_", dir=interop_dir))
    sshd = start_sshd(workdir, ssh_user, ssh_keys, authorized_keys=[ssh_keys.user_key()],
                      extra_config=["Compression yes"])
    try:
        options = ssh_proto.ConnectionOptions(rekey_bytes=128 * 1024, algorithms=ssh_proto.Algorithms(
            compression=("zlib@openssh.com",)))
        with trio.fail_after(60):
            async with ssh_proto.connect(sshd.host, sshd.port, username=sshd.username,
                                         client_keys=[str(ssh_keys.user_key().private)],
                                         known_hosts=str(sshd.known_hosts), options=options) as conn:
                result = await conn.run("cat", input=PAYLOAD)
                assert result.exit_status == 0 and result.stdout == PAYLOAD
                assert conn.negotiated.compression_cs == "zlib@openssh.com"
                assert conn.core.transport.kex_count >= 3
    finally:
        sshd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_T18_openssh_client_zlib_with_rekeys_against_our_server(nursery, ssh_keys: KeyFactory,
                                                                    tmp_path: Path):
    host_keys = ours.HostKeySet.generate(["ed25519"])
    key = ssh_keys.user_key()
    config = ours.ServerConfig(host_keys.pairs(certificates=False),
                               authorized_keys=frozenset({ours.public_key_of(key.public).blob}),
                               options=ssh_proto.ConnectionOptions(algorithms=ssh_proto.Algorithms(
                                   compression=("zlib@openssh.com", "none"))))
    listener = await ours.start_server(nursery, config)
    known_hosts, _ = host_keys.write_known_hosts(tmp_path, listener.port)
    argv = ssh_command("cat", target=ours.endpoint(listener.port, known_hosts), identity=key,
                       options=["-C", "-o", "RekeyLimit=128K", "-v"])
    with trio.fail_after(60):
        proc = await trio.run_process(argv, stdin=PAYLOAD, capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert proc.stdout == PAYLOAD
    assert b"compression: zlib@openssh.com" in proc.stderr
    assert proc.stderr.count(b"SSH2_MSG_NEWKEYS received") >= 3
