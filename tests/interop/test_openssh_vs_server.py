"""The real OpenSSH clients (ssh, sftp, scp) against Jumpgate's server (``jg_server.TestServer``).

One background Trio loop per module hosts every listener (``ours.ServerThread``): the main
server (plain keys authorized), a certificate-only server (user CAs of ssh-keygen and of
our own ``sign_certificate``), a password server and a certificate + one-time-code server.
Each test runs the blocking OpenSSH client against one of them and checks what ``ssh -v``
reports it negotiated, so a silent fallback to another algorithm cannot pass.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ours
from openssh import KEY_KINDS, KeyFactory, KeyPair, run_sftp, run_ssh, ssh_command
import ssh_proto
from ssh_proto.kex import DEFAULT_KEX
from ssh_proto.keys import PrivateKey, write_public_file

pytestmark = pytest.mark.interop

SSH_FAILED = 255
# ssh 9.2 has no ML-KEM and we have no sntrup761: every other kex both sides know.
KEX = ("curve25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256", "ecdh-sha2-nistp384",
       "ecdh-sha2-nistp521", "diffie-hellman-group16-sha512", "diffie-hellman-group14-sha256")
CIPHERS = ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
           "aes128-ctr", "aes192-ctr", "aes256-ctr")
CTR_CIPHERS = ("aes128-ctr", "aes192-ctr", "aes256-ctr")
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512")
DH_KEX = ("diffie-hellman-group16-sha512", "diffie-hellman-group14-sha256")
NON_ETM_MACS = ("hmac-sha2-256", "hmac-sha2-512")
#: The matrix servers list every algorithm explicitly: the DH groups and the non-EtM MACs
#: are off by default (docs/security.md T2a, L10) but must still interoperate when enabled.
EVERY_ALGORITHM = ssh_proto.ConnectionOptions(algorithms=ssh_proto.Algorithms(
    kex=DEFAULT_KEX, macs=MACS))
PASSWORD = "correct horse battery staple"
OTP = "492817"


@dataclasses.dataclass(frozen=True)
class World:
    """Our servers in one background loop, and how OpenSSH reaches and trusts them."""

    loop: ours.ServerThread
    workdir: Path
    host_keys: ours.HostKeySet
    user_ca: PrivateKey          # our own user CA (certificates made by sign_certificate)
    main: ours.SshTarget         # plain user keys authorized; known_hosts lists plain host keys
    defaults: ours.SshTarget     # the same with the default algorithms (main lists every one)
    main_ca_known_hosts: Path    # the same server trusted through @cert-authority only
    cert_only: ours.SshTarget    # no authorized keys: only certificates get in
    password: ours.SshTarget
    otp: ours.SshTarget          # certificate, then keyboard-interactive one-time code
    echo_port: int


@pytest.fixture(scope="module")
def world(ssh_keys: KeyFactory, interop_dir: Path) -> Iterator[World]:
    workdir = interop_dir / f"jg_vs_openssh_{os.getpid()}"
    workdir.mkdir()
    host_keys = ours.HostKeySet.generate()
    user_ca = PrivateKey.generate("ssh-ed25519")
    cas = (ours.public_key_of(ssh_keys.user_ca.public_line), user_ca.public_key)
    plain_keys = frozenset(ours.public_key_of(ssh_keys.user_key(k).public_line).blob for k in KEY_KINDS)
    base = ours.ServerConfig(host_keys.pairs(), options=EVERY_ALGORITHM)
    with ours.ServerThread() as loop:

        def serve(config: ours.ServerConfig) -> tuple[ours.SshTarget, Path]:
            port = loop.serve(config).port
            plain, ca = host_keys.write_known_hosts(workdir, port)
            return ours.endpoint(port, plain), ca

        main, main_ca = serve(dataclasses.replace(base, authorized_keys=plain_keys))
        defaults = serve(ours.ServerConfig(host_keys.pairs(), authorized_keys=plain_keys))[0]
        yield World(
            loop=loop, workdir=workdir, host_keys=host_keys, user_ca=user_ca,
            main=main, defaults=defaults, main_ca_known_hosts=main_ca,
            cert_only=serve(dataclasses.replace(base, user_cas=cas))[0],
            password=serve(dataclasses.replace(base, password=PASSWORD))[0],
            otp=serve(dataclasses.replace(base, user_cas=cas, otp=OTP))[0],
            echo_port=loop.echo(),
        )


def _ssh(world: World, command: str = "echo ok", *, target: ours.SshTarget | None = None,
         options: list[str] | tuple[str, ...] = (), key: KeyPair | None = None, ssh_keys: KeyFactory,
         **trust: object) -> subprocess.CompletedProcess[bytes]:
    identity = key or ssh_keys.user_key("ed25519")
    return run_ssh(command, target=target or world.main, identity=identity, options=["-v", *options],
                   **trust)  # type: ignore[arg-type]


def _negotiated(stderr: bytes, what: str) -> list[str]:
    """Values of ``debug1: kex: <what>: VALUE`` lines in ssh -v output."""
    return re.findall(rf"debug1: kex: {re.escape(what)}: (\S+)", stderr.decode(errors="replace"))


def _our_cert(world: World, key: KeyPair, tmp_path: Path, **how: object) -> Path:
    """Certify ssh-keygen's ``key`` with our own CA; returns the -cert.pub path."""
    how.setdefault("key_id", "jgt-ours-user")
    public = ours.public_key_of(key.public_line)
    cert = ours.certify(world.user_ca, public, [ours.USERNAME], **how)  # type: ignore[arg-type]
    path = tmp_path / f"{key.private.name}-ours-cert.pub"
    write_public_file(path, cert)
    return path


# --------------------------------------------------------------------- algorithms


@pytest.mark.parametrize("kex", KEX)
def test_every_kex_negotiated_with_openssh(world: World, ssh_keys: KeyFactory, kex: str) -> None:
    done = _ssh(world, options=["-o", f"KexAlgorithms={kex}"], ssh_keys=ssh_keys)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"ok\n"
    assert _negotiated(done.stderr, "algorithm") == [kex]


@pytest.mark.parametrize("kex", DH_KEX)
def test_L10_server_does_not_offer_finite_field_dh_by_default(world: World, ssh_keys: KeyFactory, kex: str) -> None:
    done = _ssh(world, target=world.defaults, options=["-o", f"KexAlgorithms={kex}"], ssh_keys=ssh_keys)
    assert done.returncode == SSH_FAILED
    assert b"no matching key exchange method found" in done.stderr


@pytest.mark.parametrize("mac", NON_ETM_MACS)
def test_T2a_server_offers_only_etm_macs_by_default(world: World, ssh_keys: KeyFactory, mac: str) -> None:
    done = _ssh(world, "cat", target=world.defaults, options=["-o", "Ciphers=aes128-ctr", "-o", f"MACs={mac}"],
                ssh_keys=ssh_keys)
    assert done.returncode == SSH_FAILED
    assert b"no matching MAC found" in done.stderr


def test_default_algorithms_still_log_in(world: World, ssh_keys: KeyFactory) -> None:
    done = _ssh(world, target=world.defaults, options=["-o", "Ciphers=aes128-ctr"], ssh_keys=ssh_keys)
    assert done.returncode == 0, done.stderr.decode()
    assert re.findall(r"cipher: \S+ MAC: (\S+)", done.stderr.decode()) == ["hmac-sha2-256-etm@openssh.com"] * 2


def test_rule_t1_strict_kex_negotiated_with_openssh(world: World, ssh_keys: KeyFactory) -> None:
    done = _ssh(world, options=["-vv"], ssh_keys=ssh_keys)  # with _ssh's -v: debug3
    assert done.returncode == 0, done.stderr.decode()
    err = done.stderr.decode()
    assert re.search(r"peer server KEXINIT proposal\r?\ndebug2: KEX algorithms: \S*kex-strict-s-v00@openssh.com", err)
    assert "will use strict KEX ordering" in err


@pytest.mark.parametrize("cipher", CIPHERS)
def test_every_cipher_with_openssh(world: World, ssh_keys: KeyFactory, cipher: str) -> None:
    done = _ssh(world, "head -c 300000 /dev/zero | wc -c", options=["-o", f"Ciphers={cipher}"], ssh_keys=ssh_keys)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.strip() == b"300000"
    assert _negotiated(done.stderr, "server->client cipher") == [cipher]
    assert _negotiated(done.stderr, "client->server cipher") == [cipher]


@pytest.mark.parametrize("mac", MACS)
@pytest.mark.parametrize("cipher", CTR_CIPHERS)
def test_every_mac_with_ctr_cipher_with_openssh(world: World, ssh_keys: KeyFactory, cipher: str, mac: str) -> None:
    done = _ssh(world, "cat", options=["-o", f"Ciphers={cipher}", "-o", f"MACs={mac}"], ssh_keys=ssh_keys)
    assert done.returncode == 0, done.stderr.decode()
    assert re.findall(r"cipher: (\S+) MAC: (\S+)", done.stderr.decode()) == [(cipher, mac)] * 2


@pytest.mark.parametrize("algorithm", list(ours.HOST_KEY_ALGORITHMS))
def test_every_host_key_algorithm_matches_known_hosts(world: World, ssh_keys: KeyFactory, algorithm: str) -> None:
    done = _ssh(world, options=["-o", f"HostKeyAlgorithms={algorithm}"], ssh_keys=ssh_keys)
    assert done.returncode == 0, done.stderr.decode()
    assert _negotiated(done.stderr, "host key algorithm") == [algorithm]


@pytest.mark.parametrize("algorithm", list(ours.HOST_CERT_ALGORITHMS))
def test_rule17_host_certificate_of_our_ca_verified_by_openssh(world: World, ssh_keys: KeyFactory,
                                                               algorithm: str) -> None:
    done = _ssh(world, options=["-o", f"HostKeyAlgorithms={algorithm}"], ssh_keys=ssh_keys,
                known_hosts=world.main_ca_known_hosts)
    assert done.returncode == 0, done.stderr.decode()
    assert _negotiated(done.stderr, "host key algorithm") == [algorithm]
    err = done.stderr.decode()
    assert f'ID "jgt-host-{ours.HOST_CERT_ALGORITHMS[algorithm]}"' in err  # the cert we issued
    assert re.search(r"is known and matches the \S+-CERT host certificate", err)


def test_rule17_host_certificate_of_unknown_ca_refused_by_openssh(world: World, ssh_keys: KeyFactory,
                                                                  tmp_path: Path) -> None:
    rogue = tmp_path / "known_hosts_rogue"
    rogue.write_text(f"@cert-authority [{world.main.host}]:{world.main.port} "
                     f"{ssh_keys.ca_key('rogue').public_line}\n")
    done = _ssh(world, options=["-o", "HostKeyAlgorithms=ssh-ed25519-cert-v01@openssh.com"],
                ssh_keys=ssh_keys, known_hosts=rogue)
    assert done.returncode == SSH_FAILED
    assert b"Host key verification failed" in done.stderr
    assert done.stdout == b""


# --------------------------------------------------------------------- user keys


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_every_user_key_type_authenticates(world: World, ssh_keys: KeyFactory, kind: str) -> None:
    key = ssh_keys.user_key(kind)
    done = _ssh(world, key=key, ssh_keys=ssh_keys)
    assert done.returncode == 0, done.stderr.decode()
    assert b"Authenticated to" in done.stderr and b'using "publickey"' in done.stderr


def test_unknown_user_key_refused(world: World, ssh_keys: KeyFactory) -> None:
    done = _ssh(world, target=world.cert_only, ssh_keys=ssh_keys)
    assert done.returncode == SSH_FAILED
    assert b"Permission denied (publickey" in done.stderr


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_user_certificate_from_ssh_keygen_authenticates(world: World, ssh_keys: KeyFactory, kind: str) -> None:
    key = ssh_keys.user_key(kind)
    cert = ssh_keys.sign_user_cert(key, [ours.USERNAME], validity="-5m:+1h")
    done = _ssh(world, target=world.cert_only, key=key, certificate=cert, ssh_keys=ssh_keys)
    assert done.returncode == 0, done.stderr.decode()
    assert b"-CERT" in done.stderr.split(b"Server accepts key:")[1].split(b"\n")[0]


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_user_certificate_from_our_ca_authenticates(world: World, ssh_keys: KeyFactory, tmp_path: Path,
                                                    kind: str) -> None:
    key = ssh_keys.user_key(kind)
    done = _ssh(world, target=world.cert_only, key=key, certificate=_our_cert(world, key, tmp_path),
                ssh_keys=ssh_keys)
    assert done.returncode == 0, done.stderr.decode()
    assert b"-CERT" in done.stderr.split(b"Server accepts key:")[1].split(b"\n")[0]


# --------------------------------------------------------------------- sessions


def test_exec_stdin_stdout_stderr_and_exit_status(world: World, ssh_keys: KeyFactory) -> None:
    done = run_ssh("tr a-z A-Z; echo to-stderr >&2; exit 42", target=world.main, input=b"hello\n",
                   identity=ssh_keys.user_key())
    assert done.returncode == 42
    assert done.stdout == b"HELLO\n"
    assert done.stderr == b"to-stderr\n"


def test_non_utf8_exec_command_is_refused_and_the_connection_stays(world: World, ssh_keys: KeyFactory) -> None:
    """OpenSSH sends the command's bytes as they are (RFC 4254 §6.5: a string, not text). We
    refuse that exec request (CHANNEL_FAILURE) and nothing more: over one master connection
    (ControlMaster), the next command runs, and the server saw one connection, still up."""
    identity, command = ssh_keys.user_key(), os.fsdecode(b"echo \xff\xfe")
    alone = run_ssh(command, target=world.main, identity=identity)
    assert alone.returncode == SSH_FAILED and b"exec request failed on channel 0" in alone.stderr, alone.stderr
    connections: list[ssh_proto.SSHServerConnection] = []
    config = ours.ServerConfig(world.host_keys.pairs(), authorized_keys=frozenset(
        {ours.public_key_of(identity.public_line).blob}), connections=connections)
    port = world.loop.serve(config).port
    target = ours.endpoint(port, world.host_keys.write_known_hosts(world.workdir, port)[0])
    mux = ["-S", str(Path(tempfile.mkdtemp(prefix="jgt-cm-", dir="/tmp")) / "m")]  # sun_path is short
    # -f: the master goes to the background once authenticated, so it is ready when this returns
    master = run_ssh([], target=target, identity=identity, options=["-M", "-f", "-N", *mux])
    assert master.returncode == 0, master.stderr.decode()
    try:
        bad = run_ssh(command, target=target, identity=identity, options=mux)
        good = run_ssh("echo still connected", target=target, identity=identity, options=mux)
        assert bad.returncode == SSH_FAILED and bad.stdout == b""
        assert (good.returncode, good.stdout) == (0, b"still connected\n"), good.stderr
        assert len(connections) == 1 and not connections[0].closed.is_set() and connections[0].error is None
    finally:
        run_ssh([], target=target, identity=identity, options=[*mux, "-O", "exit"])


def test_exit_status_of_killed_command_is_signal(world: World, ssh_keys: KeyFactory) -> None:
    # exit-signal (RFC 4254 §6.10): ssh reports a remote death by signal as exit status 255
    # and names the signal.
    done = run_ssh("kill -TERM $$", target=world.main, identity=ssh_keys.user_key(), options=["-v"])
    assert done.returncode == SSH_FAILED
    assert b"exit-signal" in done.stderr


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _read_until(stream, needle: bytes, deadline: float, seen: bytearray) -> None:
    while needle not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {needle!r}; got {bytes(seen)!r}")
        ready, _, _ = select.select([stream], [], [], 0.1)
        if ready:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"EOF before {needle!r}; got {bytes(seen)!r}")
            seen += chunk


def test_tt_pty_has_window_size_and_follows_window_change(world: World, ssh_keys: KeyFactory) -> None:
    # ssh runs with a terminal of ours as stdin: it sends its size in pty-req and a
    # window-change when SIGWINCH tells it the size changed. The remote shell prints the size
    # when its own SIGWINCH says the window-change reached the pty (wait returns for a trap).
    script = "trap 'stty size; kill $!; exit 0' WINCH; tty; stty size; echo ready; sleep 60 & wait"
    argv = ssh_command(script, target=world.main, identity=ssh_keys.user_key(), options=["-tt"])
    master, slave = pty.openpty()
    _set_winsize(slave, 37, 111)
    proc = subprocess.Popen(argv, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    try:
        seen = bytearray()
        deadline = time.monotonic() + 15
        _read_until(proc.stdout, b"ready", deadline, seen)
        _set_winsize(master, 50, 132)
        proc.send_signal(signal.SIGWINCH)
        _read_until(proc.stdout, b"50 132", deadline, seen)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    lines = bytes(seen).replace(b"\r", b"").split(b"\n")
    assert lines[0].startswith(b"/dev/pts/"), lines
    assert lines[1] == b"37 111"


def test_sftp_batch_put_and_get(world: World, ssh_keys: KeyFactory, tmp_path: Path) -> None:
    payload = os.urandom(400_000)
    (tmp_path / "up.bin").write_bytes(payload)
    remote = tmp_path / "remote.bin"
    batch = f"put {tmp_path / 'up.bin'} {remote}\nget {remote} {tmp_path / 'down.bin'}\nls -l {remote}\n"
    done = run_sftp(batch, target=world.main, identity=ssh_keys.user_key())
    assert done.returncode == 0, done.stderr.decode()
    assert remote.read_bytes() == payload
    assert (tmp_path / "down.bin").read_bytes() == payload


@pytest.mark.parametrize("protocol", ["sftp", "scp-legacy"])
def test_scp_upload_and_download(world: World, ssh_keys: KeyFactory, tmp_path: Path, protocol: str) -> None:
    # OpenSSH 9's scp speaks sftp by default; -O runs the old protocol (`scp -t`/`-f` exec).
    payload = os.urandom(250_000)
    (tmp_path / "up.bin").write_bytes(payload)
    remote = tmp_path / "remote.bin"
    options = ["-O"] if protocol == "scp-legacy" else []
    identity = ssh_keys.user_key().private
    up = subprocess.run(ours.scp_command([str(tmp_path / "up.bin")], f"{world.main.host}:{remote}",
                                         target=world.main, options=options, identity=identity),
                        capture_output=True, timeout=30)
    assert up.returncode == 0, up.stderr.decode()
    assert remote.read_bytes() == payload
    down = subprocess.run(ours.scp_command([f"{world.main.host}:{remote}"], str(tmp_path / "down.bin"),
                                           target=world.main, options=options, identity=identity),
                          capture_output=True, timeout=30)
    assert down.returncode == 0, down.stderr.decode()
    assert (tmp_path / "down.bin").read_bytes() == payload


# --------------------------------------------------------------------- forwarding


def _forwarding_ssh(world: World, key: KeyPair, spec: list[str], *, certificate: Path | None = None,
                    target: ours.SshTarget | None = None) -> ours.BackgroundProcess:
    argv = ssh_command([], target=target or world.main, identity=key, certificate=certificate,
                       options=["-N", "-o", "ExitOnForwardFailure=yes", *spec])
    return ours.BackgroundProcess(argv)


def test_local_forward_minus_L(world: World, ssh_keys: KeyFactory) -> None:
    port = ours.free_port()
    with _forwarding_ssh(world, ssh_keys.user_key(), ["-L", f"{port}:127.0.0.1:{world.echo_port}"]):
        for n in range(2):  # two connections through the same forward
            payload = os.urandom(100_000 + n)
            assert ours.echo_round_trip(ours.connect_when_listening(port), payload) == payload


def test_remote_forward_minus_R(world: World, ssh_keys: KeyFactory) -> None:
    with _forwarding_ssh(world, ssh_keys.user_key(), ["-R", f"0:127.0.0.1:{world.echo_port}"]) as ssh:
        port = int(ssh.wait_for(r"Allocated port (\d+) for remote forward").group(1))
        payload = os.urandom(100_000)
        assert ours.echo_round_trip(ours.connect_when_listening(port), payload) == payload


# --------------------------------------------------------------------- password and OTP


def test_password_authentication_through_askpass(world: World, tmp_path: Path) -> None:
    env, prompts = ours.askpass_env(tmp_path, password=PASSWORD)
    argv = ours.interactive_ssh_command("echo in", target=world.password,
                                        options=["-o", "PreferredAuthentications=password"])
    done = subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"in\n"
    assert "password:" in prompts.read_text()


def test_wrong_password_refused(world: World, tmp_path: Path) -> None:
    env, _ = ours.askpass_env(tmp_path, password="not it")
    argv = ours.interactive_ssh_command("echo in", target=world.password, options=[
        "-o", "PreferredAuthentications=password", "-o", "NumberOfPasswordPrompts=1"])
    done = subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    assert done.returncode == SSH_FAILED
    assert done.stdout == b""
    assert b"Permission denied" in done.stderr


@pytest.mark.parametrize("otp, ok", [(OTP, True), ("000000", False)], ids=["right-code", "wrong-code"])
def test_certificate_then_otp_partial_success(world: World, ssh_keys: KeyFactory, tmp_path: Path,
                                              otp: str, ok: bool) -> None:
    key = ssh_keys.user_key("ecdsa256")
    cert = ssh_keys.sign_user_cert(key, [ours.USERNAME], validity="-5m:+1h")
    env, prompts = ours.askpass_env(tmp_path, otp=otp)
    argv = ours.interactive_ssh_command("echo in", target=world.otp, identity=key, certificate=cert, options=[
        "-v", "-o", "PreferredAuthentications=publickey,keyboard-interactive",
        "-o", "NumberOfPasswordPrompts=1"])
    done = subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    assert b'Authenticated using "publickey" with partial success' in done.stderr, done.stderr.decode()
    assert "Verification code" in prompts.read_text()
    if ok:
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout == b"in\n"
        assert b'using "keyboard-interactive"' in done.stderr
    else:
        assert done.returncode == SSH_FAILED
        assert done.stdout == b""


# --------------------------------------------------------------------- refused certificates


def test_rule12_certificate_for_another_principal_refused(world: World, ssh_keys: KeyFactory) -> None:
    key = ssh_keys.user_key()
    cert = ssh_keys.sign_user_cert(key, ["mallory"], validity="-5m:+1h")
    done = _ssh(world, target=world.cert_only, key=key, certificate=cert, ssh_keys=ssh_keys)
    assert done.returncode == SSH_FAILED
    assert b"Permission denied" in done.stderr


def test_rule12_expired_certificate_refused(world: World, ssh_keys: KeyFactory) -> None:
    key = ssh_keys.user_key()
    cert = ssh_keys.sign_user_cert(key, [ours.USERNAME], validity="-2h:-1h")
    done = _ssh(world, target=world.cert_only, key=key, certificate=cert, ssh_keys=ssh_keys)
    assert done.returncode == SSH_FAILED
    assert b"Permission denied" in done.stderr


def test_rule10_certificate_from_untrusted_ca_refused(world: World, ssh_keys: KeyFactory) -> None:
    key = ssh_keys.user_key()
    cert = ssh_keys.sign_user_cert(key, [ours.USERNAME], ca=ssh_keys.ca_key("rogue"), validity="-5m:+1h")
    done = _ssh(world, target=world.cert_only, key=key, certificate=cert, ssh_keys=ssh_keys)
    assert done.returncode == SSH_FAILED
    assert b"Permission denied" in done.stderr


@pytest.mark.parametrize("issuer", ["ssh-keygen", "ours"])
def test_rule14_force_command_replaces_requested_command(world: World, ssh_keys: KeyFactory, tmp_path: Path,
                                                         issuer: str) -> None:
    key = ssh_keys.user_key()
    if issuer == "ours":
        cert = _our_cert(world, key, tmp_path, critical_options={"force-command": "echo forced"})
    else:
        cert = ssh_keys.sign_user_cert(key, [ours.USERNAME], validity="-5m:+1h", options=["force-command=echo forced"])
    done = run_ssh("echo requested", target=world.cert_only, identity=key, certificate=cert)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"forced\n"
    # subsystems are replaced too: sftp gets "forced\n" instead of an sftp server
    sftp = run_sftp("ls /\n", target=world.cert_only, identity=key, certificate=cert)
    assert sftp.returncode != 0


def test_rule14_no_pty_certificate_gets_no_pty(world: World, ssh_keys: KeyFactory) -> None:
    key = ssh_keys.user_key()
    cert = ssh_keys.sign_user_cert(key, [ours.USERNAME], validity="-5m:+1h", options=["no-pty"])
    done = run_ssh("tty", target=world.cert_only, identity=key, certificate=cert, options=["-tt"])
    assert b"PTY allocation request failed" in done.stderr, done.stderr.decode()
    # ssh treats a refused pty it was told to get (-tt) as fatal and closes the session
    assert done.returncode == SSH_FAILED
    assert b"/dev/pts" not in done.stdout
    # without -tt the same certificate runs commands normally
    done = run_ssh("tty", target=world.cert_only, identity=key, certificate=cert)
    assert done.returncode == 1 and done.stdout == b"not a tty\n"


def test_rule14_no_port_forwarding_certificate_refuses_minus_L(world: World, ssh_keys: KeyFactory) -> None:
    key = ssh_keys.user_key()
    cert = ssh_keys.sign_user_cert(key, [ours.USERNAME], validity="-5m:+1h", options=["no-port-forwarding"])
    port = ours.free_port()
    with _forwarding_ssh(world, key, ["-L", f"{port}:127.0.0.1:{world.echo_port}"], certificate=cert,
                         target=world.cert_only) as ssh:
        # ssh listens; the server refuses the direct-tcpip channel of each connection
        try:
            echoed = ours.echo_round_trip(ours.connect_when_listening(port), b"never echoed")
        except OSError:  # ssh may reset or shut the connection before we half-close it
            echoed = b""
        assert echoed == b""
        ssh.wait_for(r"open failed: administratively prohibited")


def test_rule14_no_port_forwarding_certificate_refuses_minus_R(world: World, ssh_keys: KeyFactory) -> None:
    key = ssh_keys.user_key()
    cert = ssh_keys.sign_user_cert(key, [ours.USERNAME], validity="-5m:+1h", options=["no-port-forwarding"])
    with _forwarding_ssh(world, key, ["-R", f"0:127.0.0.1:{world.echo_port}"], certificate=cert,
                         target=world.cert_only) as ssh:
        ssh.wait_for(r"remote port forwarding failed")
        assert ssh.exited(10) == SSH_FAILED
