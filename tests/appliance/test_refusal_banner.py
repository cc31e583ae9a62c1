"""Plain OpenSSH with a certificate the node or proxy refuses is told why, at once.

Issue 14 item 2, docs/security.md C16 and T12b: the node and the proxy offer ``publickey``
only (the one method they implement), so ``ssh`` gives up as soon as its keys are refused
— no password prompt that could never succeed, no wait for the 120 s login grace time —
and the refusal comes with an SSH banner (shown by OpenSSH on stderr) in words the user can
act on. The banner says nothing about the host's accounts (T13).
"""
from __future__ import annotations

import time

import pytest
import trio

from _node_helpers import AuditLog, TestCluster, openssh_argv, run, start_node
from _proxy_helpers import USER, start_cluster, user_cert
import openssh  # tests/interop, on sys.path through _node_helpers
from appliance.login_hints import certificate_hint
from ssh_proto.certs import sign_certificate
from ssh_proto.keys import CERT_TYPE_USER, PrivateKey

pytestmark = pytest.mark.interop

LOGIN = "root"         # never reached: the certificate is refused before any account is looked at
SSH_FAILED = 255
#: A refused login takes well under a second; this bound only catches a prompt or the grace time.
AT_ONCE = 20.0


@pytest.fixture
async def node(nursery, tmp_path):
    cluster = TestCluster(tmp_path)
    listener = await start_node(nursery, cluster, AuditLog())
    return cluster, listener.port


async def _ssh(cluster: TestCluster, port: int, files, *options: str):
    argv = openssh_argv("ssh", ["true"], port=port, login=LOGIN, files=files, known_hosts=cluster.known_hosts(port),
                        options=["-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1", *options])
    started = trio.current_time()
    done = await run(argv, timeout=AT_ONCE)   # fails the test (TooSlowError) if ssh hangs or prompts
    return done, trio.current_time() - started


def _banner_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode(errors="replace").splitlines() if line.startswith("jumpgate: ")]


async def test_expired_certificate_is_refused_at_once_with_the_reason_on_stderr(node):
    cluster, port = node
    _, cert, files = cluster.client_files("expired", [LOGIN], lifetime=(-7200, -3600))
    done, elapsed = await _ssh(cluster, port, files)
    stderr = done.stderr.decode(errors="replace")
    expired_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cert.valid_before))
    assert done.returncode == SSH_FAILED
    assert f"jumpgate: your certificate expired at {expired_at}; run `jumpgate login`" in stderr
    assert "Permission denied (publickey)." in stderr      # only publickey was ever offered
    assert "password" not in stderr.lower() and elapsed < AT_ONCE


async def test_the_banner_names_the_first_fixable_problem_once(node):
    cluster, port = node
    _, _, foreign = cluster.client_files("foreign", [LOGIN], ca=PrivateKey.generate("ssh-ed25519"))
    _, _, other_login = cluster.client_files("other", ["someone_else"])
    done, _ = await _ssh(cluster, port, foreign)
    assert _banner_lines(done.stderr) == [
        "jumpgate: your certificate is not from this cluster's user CA; run `jumpgate login` for this cluster"]
    done, _ = await _ssh(cluster, port, other_login)
    assert _banner_lines(done.stderr) == [
        "jumpgate: your certificate does not allow the login 'root' (it allows: someone_else)"]


async def test_a_plain_key_is_told_that_only_certificates_work(node):
    cluster, port = node
    _, _, files = cluster.client_files("plain", [LOGIN])
    files.cert.unlink()   # the key alone
    done, _ = await _ssh(cluster, port, files, "-o", "CertificateFile=none")
    assert done.returncode == SSH_FAILED
    assert _banner_lines(done.stderr) == ["jumpgate: this server accepts Jumpgate certificates only; run `jumpgate login`"]


def test_hints_in_the_order_a_user_can_fix_them():
    cluster_ca, other_ca, key = (PrivateKey.generate("ssh-ed25519") for _ in range(3))

    def cert(ca, after, before, principals=("alice",)):
        return sign_certificate(ca, key.public_key, cert_type=CERT_TYPE_USER, key_id="user:alice",
                                principals=principals, valid_after=after, valid_before=before)

    trusted = [cluster_ca.public_key]
    now = 1_800_000_000
    assert "not from this cluster" in certificate_hint(cert(other_ca, 0, 1), trusted_cas=trusted, now=now)
    assert "expired at 2027-01-15 00:00 UTC" in certificate_hint(cert(cluster_ca, 0, now - 3600 * 8),
                                                                 trusted_cas=trusted, now=now)
    assert "not valid before" in certificate_hint(cert(cluster_ca, now + 60, now + 120), trusted_cas=trusted, now=now)
    assert "login 'bob'" in certificate_hint(cert(cluster_ca, 0, now + 60), trusted_cas=trusted, login="bob", now=now)
    assert certificate_hint(cert(cluster_ca, 0, now + 60), trusted_cas=trusted, login="alice", now=now) is None


async def test_the_proxy_tells_openssh_why_too(nursery, tmp_path):
    """``ssh -J alice@proxy`` with an expired certificate stops at the proxy, saying why."""
    cluster = await start_cluster(nursery, tmp_path, LOGIN)
    key = PrivateKey.generate("ssh-ed25519")
    cert = user_cert(cluster.user_ca, key, [LOGIN], lifetime=(-7200, -3600))
    identity, cert_path = tmp_path / "id", tmp_path / "id-cert.pub"
    identity.write_bytes(key.to_openssh())
    identity.chmod(0o600)
    cert_path.write_text(cert.to_line() + "\n")
    known_hosts = tmp_path / "known_hosts_proxy"
    known_hosts.write_text(f"@cert-authority [127.0.0.1]:{cluster.proxy_port} {cluster.host_ca.public_key.to_line()}\n")
    target = openssh.SshTarget("127.0.0.1", cluster.proxy_port, USER, known_hosts)
    argv = openssh.ssh_command("true", target=target, identity=identity, certificate=cert_path,
                               options=["-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1"])
    done = await run(argv, timeout=AT_ONCE)
    assert done.returncode == SSH_FAILED
    assert _banner_lines(done.stderr) == [f"jumpgate: your certificate expired at "
                                          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(cert.valid_before))}; "
                                          "run `jumpgate login`"]
    assert b"Permission denied (publickey)." in done.stderr
