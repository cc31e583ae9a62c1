"""Jumpgate's client (``ssh_proto.connect``) against the real OpenSSH sshd.

One sshd serves the whole module (per xdist worker): every host key kind with a host
certificate from ssh-keygen's host CA, every user key kind authorized, ssh-keygen's user
CA trusted, ``AcceptEnv JGT_*``. Each algorithm case pins exactly one algorithm on our side
and checks what ``conn.negotiated`` says, so a fallback cannot pass unnoticed; what sshd
accepted is read back from its DEBUG3 log where our side cannot tell.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

import ours
import ssh_proto
from openssh import KEY_KINDS, KeyFactory, KeyPair, SshdHandle, ThrowawayUser, start_sshd
from ssh_proto.keys import load_private_key, load_public_file

pytestmark = pytest.mark.interop

# Debian's sshd 9.2 has no mlkem768x25519-sha256 (asyncssh covers it: test_asyncssh_mlkem.py).
KEX = ("curve25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256", "ecdh-sha2-nistp384",
       "ecdh-sha2-nistp521", "diffie-hellman-group16-sha512", "diffie-hellman-group14-sha256")
CIPHERS = ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
           "aes128-ctr", "aes192-ctr", "aes256-ctr")
CTR_CIPHERS = ("aes128-ctr", "aes192-ctr", "aes256-ctr")
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512",
        "hmac-sha1-etm@openssh.com", "hmac-sha1")
HOST_KEY_ALGORITHMS = ours.HOST_KEY_ALGORITHMS   # algorithm -> key kind
HOST_CERT_ALGORITHMS = ours.HOST_CERT_ALGORITHMS
TIMEOUT = 20


@pytest.fixture(scope="module")
def sshd(ssh_user: ThrowawayUser, ssh_keys: KeyFactory, interop_dir: Path) -> Iterator[SshdHandle]:
    workdir = Path(tempfile.mkdtemp(prefix="sshd_vs_client_", dir=interop_dir))
    handle = start_sshd(workdir, ssh_user, ssh_keys, host_certificates=True,
                        authorized_keys=[ssh_keys.user_key(kind) for kind in KEY_KINDS],
                        extra_config=["AcceptEnv JGT_*"])
    yield handle
    handle.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def connected(sshd: SshdHandle, ssh_keys: KeyFactory, *, key: KeyPair | None = None,
                    known_hosts: object = None,
                    **algorithms: tuple[str, ...]) -> AsyncIterator[ssh_proto.SSHClientConnection]:
    """Our client logged in to the module's sshd with ``key`` (default: the ed25519 user key)."""
    options = ssh_proto.ConnectionOptions(algorithms=ssh_proto.Algorithms(**algorithms))
    client_keys = [str((key or ssh_keys.user_key()).private)]
    with trio.fail_after(TIMEOUT):
        async with ssh_proto.connect(sshd.host, sshd.port, username=sshd.username, client_keys=client_keys,
                                     known_hosts=str(sshd.known_hosts) if known_hosts is None else known_hosts,
                                     options=options) as conn:
            yield conn


def identity_with_cert(key: KeyPair, cert: Path) -> tuple[ssh_proto.PrivateKey, ssh_proto.Certificate]:
    private = load_private_key(key.private)
    certificate, _ = load_public_file(cert)
    assert isinstance(certificate, ssh_proto.Certificate)
    return private, certificate


async def login_with(sshd: SshdHandle, identity: tuple[ssh_proto.PrivateKey, ssh_proto.Certificate]) -> bytes:
    with trio.fail_after(TIMEOUT):
        async with ssh_proto.connect(sshd.host, sshd.port, username=sshd.username, client_keys=[identity],
                                     known_hosts=str(sshd.known_hosts)) as conn:
            return (await conn.run("echo in")).stdout


# --------------------------------------------------------------------- algorithms


async def test_defaults_negotiate_strongest_common_algorithms(sshd: SshdHandle, ssh_keys: KeyFactory) -> None:
    async with connected(sshd, ssh_keys) as conn:
        result = await conn.run("echo ok")
        assert (result.exit_status, result.stdout) == (0, b"ok\n")
        assert conn.negotiated.kex == "curve25519-sha256"
        assert conn.negotiated.cipher_cs == "chacha20-poly1305@openssh.com"
        assert conn.peer_version.startswith("SSH-2.0-OpenSSH_")


async def test_rule_t1_strict_kex_negotiated_with_sshd(sshd: SshdHandle, ssh_keys: KeyFactory) -> None:
    seen = len(sshd.log_text())
    async with connected(sshd, ssh_keys) as conn:
        assert conn.core.transport.strict_kex
        await conn.run("true")
    assert "will use strict KEX ordering" in sshd.log_text()[seen:]


@pytest.mark.parametrize("kex", KEX)
async def test_every_kex_against_sshd(sshd: SshdHandle, ssh_keys: KeyFactory, kex: str) -> None:
    async with connected(sshd, ssh_keys, kex=(kex,)) as conn:
        assert conn.negotiated.kex == kex
        assert (await conn.run("echo ok")).stdout == b"ok\n"


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_every_cipher_against_sshd(sshd: SshdHandle, ssh_keys: KeyFactory, cipher: str) -> None:
    payload = os.urandom(300_000)  # many packets each way, past the initial window
    async with connected(sshd, ssh_keys, ciphers=(cipher,)) as conn:
        assert (conn.negotiated.cipher_cs, conn.negotiated.cipher_sc) == (cipher, cipher)
        result = await conn.run("cat", input=payload)
        assert result.exit_status == 0
        assert result.stdout == payload


@pytest.mark.parametrize("mac", MACS)
@pytest.mark.parametrize("cipher", CTR_CIPHERS)
async def test_every_mac_with_ctr_cipher_against_sshd(sshd: SshdHandle, ssh_keys: KeyFactory, cipher: str,
                                                      mac: str) -> None:
    payload = os.urandom(70_000)
    async with connected(sshd, ssh_keys, ciphers=(cipher,), macs=(mac,)) as conn:
        negotiated = conn.negotiated
        assert (negotiated.cipher_cs, negotiated.mac_cs, negotiated.cipher_sc, negotiated.mac_sc) == (cipher, mac) * 2
        assert (await conn.run("cat", input=payload)).stdout == payload


@pytest.mark.parametrize("algorithm", list(HOST_KEY_ALGORITHMS))
async def test_every_host_key_algorithm_verified_by_known_hosts(sshd: SshdHandle, ssh_keys: KeyFactory,
                                                                algorithm: str) -> None:
    async with connected(sshd, ssh_keys, host_keys=(algorithm,)) as conn:
        assert conn.negotiated.host_key == algorithm
        expected = ours.public_key_of(ssh_keys.host_key(HOST_KEY_ALGORITHMS[algorithm]).public_line)
        assert conn.core.transport.host_key == expected
        assert (await conn.run("echo ok")).stdout == b"ok\n"


@pytest.mark.parametrize("algorithm", list(HOST_CERT_ALGORITHMS))
async def test_rule17_host_certificate_verified_through_cert_authority(sshd: SshdHandle, ssh_keys: KeyFactory,
                                                                       algorithm: str) -> None:
    async with connected(sshd, ssh_keys, host_keys=(algorithm,), known_hosts=str(sshd.known_hosts_ca)) as conn:
        assert conn.negotiated.host_key == algorithm
        cert = conn.core.transport.host_key
        assert isinstance(cert, ssh_proto.Certificate)
        assert cert.signature_key == ours.public_key_of(ssh_keys.host_ca.public_line)


async def test_rule17_host_certificate_of_unknown_ca_is_not_verifiable(sshd: SshdHandle, ssh_keys: KeyFactory,
                                                                       tmp_path: Path) -> None:
    rogue = tmp_path / "known_hosts"
    rogue.write_text(f"@cert-authority {sshd.host_pattern()} {ssh_keys.ca_key('rogue').public_line}\n")
    with pytest.raises(ssh_proto.HostKeyNotVerifiable):
        async with connected(sshd, ssh_keys, host_keys=("ssh-ed25519-cert-v01@openssh.com",), known_hosts=str(rogue)):
            pytest.fail("logged in to a host whose certificate no trusted CA signed")


async def test_cert_authority_for_the_bare_host_vouches_for_its_other_ports_as_in_openssh(
        sshd: SshdHandle, ssh_keys: KeyFactory, tmp_path: Path) -> None:
    # OpenSSH looks a host CA up again without the port ("checking without port identifier"):
    # `@cert-authority 127.0.0.1 KEY` lets both clients in to [127.0.0.1]:PORT
    bare = tmp_path / "known_hosts"
    bare.write_text(f"@cert-authority {sshd.host} {ssh_keys.host_ca.public_line}\n")
    assert sshd.port != 22
    openssh = await trio.run_process(
        [*ssh_command_for(sshd, ssh_keys, bare), "-o", "HostKeyAlgorithms=ssh-ed25519-cert-v01@openssh.com",
         sshd.host, "echo in"], capture_stdout=True, capture_stderr=True, check=False)
    assert openssh.returncode == 0 and openssh.stdout == b"in\n", openssh.stderr
    async with connected(sshd, ssh_keys, host_keys=("ssh-ed25519-cert-v01@openssh.com",), known_hosts=str(bare)) as conn:
        assert (await conn.run("echo in")).stdout == b"in\n"


def ssh_command_for(sshd: SshdHandle, ssh_keys: KeyFactory, known_hosts: Path) -> list[str]:
    from openssh import SSH, client_options
    return [str(SSH), *client_options(sshd, identity=ssh_keys.user_key(), known_hosts=known_hosts)]


async def test_changed_host_key_is_not_verifiable(sshd: SshdHandle, ssh_keys: KeyFactory, tmp_path: Path) -> None:
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{sshd.host_pattern()} {ssh_proto.PrivateKey.generate().public_key.to_line()}\n")
    with pytest.raises(ssh_proto.HostKeyNotVerifiable, match="changed"):
        async with connected(sshd, ssh_keys, host_keys=("ssh-ed25519",), known_hosts=str(wrong)):
            pytest.fail("logged in to a host with a changed key")


# --------------------------------------------------------------------- user keys


@pytest.mark.parametrize("kind", KEY_KINDS)
async def test_every_user_key_type_accepted_by_sshd(sshd: SshdHandle, ssh_keys: KeyFactory, kind: str) -> None:
    seen = len(sshd.log_text())
    async with connected(sshd, ssh_keys, key=ssh_keys.user_key(kind)) as conn:
        assert (await conn.run("id -un")).stdout.decode().strip() == sshd.username
    fingerprint = ours.public_key_of(ssh_keys.user_key(kind).public_line).fingerprint()
    accepted = re.findall(rf"Accepted publickey for {sshd.username} from .*", sshd.log_text()[seen:])
    assert len(accepted) == 1 and accepted[0].endswith(fingerprint), accepted


@pytest.mark.parametrize("kind", KEY_KINDS)
async def test_user_certificate_from_ssh_keygen_accepted_by_sshd(sshd: SshdHandle, ssh_keys: KeyFactory,
                                                                 kind: str) -> None:
    key = ssh_keys.user_key(kind)
    cert_id = f"jgt-client-cert-{kind}-{os.getpid()}"
    cert = ssh_keys.sign_user_cert(key, [sshd.username], validity="-5m:+1h", identity=cert_id)
    assert await login_with(sshd, identity_with_cert(key, cert)) == b"in\n"
    # The certificate (first in our offer) is what sshd accepted, not the plain key.
    assert re.search(rf"Accepted publickey for {sshd.username} .* ID {cert_id} ", sshd.log_text())


@pytest.fixture
def stranger(ssh_keys: KeyFactory) -> KeyPair:
    """A key sshd does not list in authorized_keys: only a good certificate lets it in."""
    return ssh_keys.new_key("ed25519")


async def test_rule10_user_certificate_from_foreign_ca_refused(sshd: SshdHandle, ssh_keys: KeyFactory,
                                                               stranger: KeyPair) -> None:
    cert = ssh_keys.sign_user_cert(stranger, [sshd.username], ca=ssh_keys.ca_key("rogue"), validity="-5m:+1h")
    with pytest.raises(ssh_proto.AuthError):
        await login_with(sshd, identity_with_cert(stranger, cert))


async def test_rule12_expired_user_certificate_refused(sshd: SshdHandle, ssh_keys: KeyFactory,
                                                       stranger: KeyPair) -> None:
    cert = ssh_keys.sign_user_cert(stranger, [sshd.username], validity="-2h:-1h")
    with pytest.raises(ssh_proto.AuthError):
        await login_with(sshd, identity_with_cert(stranger, cert))


async def test_rule12_user_certificate_for_other_principal_refused(sshd: SshdHandle, ssh_keys: KeyFactory,
                                                                   stranger: KeyPair) -> None:
    cert = ssh_keys.sign_user_cert(stranger, ["mallory"], validity="-5m:+1h")
    with pytest.raises(ssh_proto.AuthError):
        await login_with(sshd, identity_with_cert(stranger, cert))


async def test_good_user_certificate_for_stranger_key_accepted(sshd: SshdHandle, ssh_keys: KeyFactory,
                                                               stranger: KeyPair) -> None:
    # The control case of the three refusals above: same key, a valid certificate.
    cert = ssh_keys.sign_user_cert(stranger, [sshd.username], validity="-5m:+1h")
    assert await login_with(sshd, identity_with_cert(stranger, cert)) == b"in\n"


# --------------------------------------------------------------------- sessions


async def test_exec_stdin_stdout_stderr_and_exit_status(sshd: SshdHandle, ssh_keys: KeyFactory) -> None:
    async with connected(sshd, ssh_keys) as conn:
        result = await conn.run("tr a-z A-Z; echo to-stderr >&2; exit 3", input=b"hello\n")
    assert (result.exit_status, result.stdout, result.stderr) == (3, b"HELLO\n", b"to-stderr\n")


async def test_pty_is_a_real_terminal(sshd: SshdHandle, ssh_keys: KeyFactory) -> None:
    async with connected(sshd, ssh_keys) as conn:
        result = await conn.run("tty", pty=True)
        assert result.exit_status == 0
        assert result.stdout.startswith(b"/dev/pts/")
        assert (await conn.run("tty")).stdout == b"not a tty\n"


async def test_pty_window_size_and_resize(sshd: SshdHandle, ssh_keys: KeyFactory) -> None:
    async with connected(sshd, ssh_keys) as conn:
        proc = await conn.open_session("stty size; read x; stty size", pty=True, cols=111, rows=37)
        seen = b""
        with trio.fail_after(TIMEOUT):
            while b"37 111" not in seen:
                seen += await proc.receive_some()
            await proc.resize(132, 50)
            await proc.send_all(b"go\r")  # the window-change request is ordered before it
            while b"50 132" not in seen:
                chunk = await proc.receive_some()
                assert chunk, seen
                seen += chunk
            assert await proc.wait() == 0


async def test_env_passed_to_sshd(sshd: SshdHandle, ssh_keys: KeyFactory) -> None:
    async with connected(sshd, ssh_keys) as conn:
        result = await conn.run('echo "$JGT_COLOUR"', env={"JGT_COLOUR": "teal"})
        assert result.stdout == b"teal\n"


async def test_signal_kills_remote_command(sshd: SshdHandle, ssh_keys: KeyFactory) -> None:
    async with connected(sshd, ssh_keys) as conn:
        proc = await conn.open_session("echo started; exec sleep 30")
        with trio.fail_after(TIMEOUT):
            assert await proc.receive_some() == b"started\n"
            await proc.signal("TERM")
            assert await proc.wait() is None
        assert proc.exit_signal == "TERM"


async def test_sftp_subsystem_answers_init(sshd: SshdHandle, ssh_keys: KeyFactory) -> None:
    # SSH_FXP_INIT version 3 -> SSH_FXP_VERSION (draft-ietf-secsh-filexfer-02 §4)
    async with connected(sshd, ssh_keys) as conn:
        proc = await conn.open_session(subsystem="sftp")
        await proc.send_all(b"\x00\x00\x00\x05\x01\x00\x00\x00\x03")
        with trio.fail_after(TIMEOUT):
            reply = await proc.receive_some()
        assert reply[4] == 2 and reply[5:9] == b"\x00\x00\x00\x03"
        await proc.aclose()


# --------------------------------------------------------------------- forwarding


async def test_local_forward_through_sshd(sshd: SshdHandle, ssh_keys: KeyFactory, nursery: trio.Nursery) -> None:
    echo_port = await ours.serve_echo(nursery)
    async with connected(sshd, ssh_keys) as conn:
        async with trio.open_nursery() as forwards:
            port = await forwards.start(conn.forward_local_port, "127.0.0.1", 0, "127.0.0.1", echo_port)
            for n in range(2):
                payload = os.urandom(100_000 + n)
                assert await _echo(port, payload) == payload
            forwards.cancel_scope.cancel()


async def test_direct_tcpip_channel_through_sshd(sshd: SshdHandle, ssh_keys: KeyFactory, nursery: trio.Nursery) -> None:
    echo_port = await ours.serve_echo(nursery)
    async with connected(sshd, ssh_keys) as conn:
        channel = await conn.open_direct_tcpip("127.0.0.1", echo_port)
        await channel.send_all(b"through sshd")
        await channel.send_eof()
        with trio.fail_after(TIMEOUT):
            assert await channel.read_all() == b"through sshd"


async def test_remote_forward_through_sshd(sshd: SshdHandle, ssh_keys: KeyFactory, nursery: trio.Nursery) -> None:
    echo_port = await ours.serve_echo(nursery)
    async with connected(sshd, ssh_keys) as conn:
        port = await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", echo_port)
        assert port > 0
        for n in range(2):
            payload = os.urandom(100_000 + n)
            assert await _echo(port, payload) == payload
        await conn.cancel_remote_forward("127.0.0.1", port)


async def _echo(port: int, payload: bytes) -> bytes:
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            received = bytearray()

            async def send() -> None:
                await stream.send_all(payload)
                await stream.send_eof()

            async with trio.open_nursery() as n:
                n.start_soon(send)
                while chunk := await stream.receive_some(65536):
                    received += chunk
            return bytes(received)
