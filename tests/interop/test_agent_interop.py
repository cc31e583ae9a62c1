"""The agent protocol against the real OpenSSH: ssh-agent, ssh-add and ssh -A.

- our :class:`AgentClient` against a real ``ssh-agent -D -a SOCK``: list, sign (every key
  kind, every RSA SHA-2 algorithm) and add (our ADD_IDENTITY encodings, parsed by OpenSSH);
- our :class:`InProcessAgent` on a unix socket against the real ``ssh-add``: ``-l``, ``-L``,
  ``KEYFILE`` (with its certificate), ``-t``, ``-c`` (refused), ``-d``, ``-D``;
- forwarding with our client and our server, the server running the real ``ssh-add -l``;
- the real ``ssh -A`` against our server: authentication through our agent under the strict
  session-bind policy (rule T21), then ``ssh-add -L`` through the forwarded agent.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import trio

import ssh_proto
from openssh import ALL_KEY_KINDS, KeyFactory, KeyPair
from ssh_proto import agent as proto
from ssh_proto.errors import AgentError
from ssh_proto.keys import Certificate, PrivateKey, PublicKey, load_private_key, load_public_file
from ssh_proto.trio_io.agent import AgentClient, InProcessAgent, forward_agent_to_unix_socket

pytestmark = pytest.mark.interop

SSH = "/usr/bin/ssh"
SSH_ADD = "/usr/bin/ssh-add"
SSH_AGENT = "/usr/bin/ssh-agent"


@pytest.fixture
def openssh_agent(sock_dir: Path):
    """A real ``ssh-agent -D`` on a private socket; stopped after the test."""
    path = sock_dir / "openssh-agent.sock"
    process = subprocess.Popen([SSH_AGENT, "-D", "-a", str(path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"ssh-agent did not start: {process.stderr.read().decode(errors='replace')}")
        time.sleep(0.02)
    yield str(path)
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _environment(sock: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_ASKPASS", "DISPLAY", "SSH_AUTH_SOCK")}
    env["SSH_AUTH_SOCK"] = sock
    return env


async def ssh_add(sock: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([SSH_ADD, *args], env=_environment(sock), stdin=b"",
                                  capture_stdout=True, capture_stderr=True, check=False)


def private_copy(key: KeyPair, directory: Path, certificate: Path | None = None) -> Path:
    """The key file copied where ssh-add will also find ``PATH-cert.pub`` (mode 0600)."""
    target = directory / key.private.name
    shutil.copyfile(key.private, target)
    target.chmod(0o600)
    shutil.copyfile(key.public, target.with_name(target.name + ".pub"))
    if certificate is not None:
        shutil.copyfile(certificate, target.with_name(target.name + "-cert.pub"))
    return target


def public_of(key: KeyPair) -> PublicKey:
    public, _ = load_public_file(key.public)
    assert isinstance(public, PublicKey)
    return public


def listed(output: bytes) -> list[str]:
    """The key lines of ``ssh-add -L``, without comments."""
    return [" ".join(line.split()[:2]) for line in output.decode().splitlines() if line.strip()]


# ---------------------------------------------------------- our client, OpenSSH's agent


async def test_agent_client_lists_and_signs_with_openssh_agent(openssh_agent: str, ssh_keys: KeyFactory):
    keys = [ssh_keys.user_key(kind) for kind in ALL_KEY_KINDS]
    for key in keys:
        done = await ssh_add(openssh_agent, str(key.private))
        assert done.returncode == 0, done.stderr
    async with AgentClient(openssh_agent) as agent:
        listed_keys = await agent.list_identities()
        assert [k for k, _ in listed_keys] == [public_of(key) for key in keys]
        assert [c for _, c in listed_keys] == [key.public.read_text().split()[2] for key in keys]
        for public, _ in listed_keys:
            for algorithm in public.signature_algorithms:
                signature = await agent.sign(public, b"to be signed", algorithm)
                assert public.verify(signature, b"to be signed", algorithms=[algorithm])


@pytest.mark.parametrize("kind", ALL_KEY_KINDS)
async def test_openssh_agent_accepts_keys_and_certificates_we_add(openssh_agent: str, ssh_keys: KeyFactory,
                                                                  kind: str):
    pair = ssh_keys.user_key(kind)
    key = load_private_key(pair.private)
    cert, _ = load_public_file(ssh_keys.sign_user_cert(pair, ["alice"], validity="-5m:+1h"))
    assert isinstance(cert, Certificate)
    async with AgentClient(openssh_agent) as agent:
        await agent.add(key, comment="plain")
        await agent.add(key, cert, comment="certified", lifetime=600)
        out = await ssh_add(openssh_agent, "-L")
        assert listed(out.stdout) == [key.public_key.to_line(), cert.to_line()]
        for identity in (key.public_key, cert):
            # a signature from OpenSSH's agent proves it parsed our private key encoding
            signature = await agent.sign(identity, b"check", identity.signature_algorithms[-1])
            assert identity.verify(signature, b"check")
        await agent.remove(key.public_key)
        assert await agent.identities() == [cert]
        await agent.remove_all()
        assert await agent.identities() == []


async def test_openssh_agent_refusal_raises_agent_error(openssh_agent: str):
    async with AgentClient(openssh_agent) as agent:
        with pytest.raises(AgentError):
            await agent.sign(PrivateKey.generate().public_key, b"data")


# ------------------------------------------------------------- OpenSSH's ssh-add, our agent


@pytest.fixture
async def our_agent(nursery, sock_dir: Path):
    agent = InProcessAgent()
    path = await nursery.start(agent.serve_unix, str(sock_dir / "ours" / "agent.sock"))
    return agent, path


async def test_ssh_add_lists_keys_of_our_agent(our_agent, ssh_keys: KeyFactory):
    agent, path = our_agent
    keys = {kind: load_private_key(ssh_keys.user_key(kind).private) for kind in ALL_KEY_KINDS}
    for kind, key in keys.items():
        await agent.add(key, comment=f"jgt {kind}")
    cert, _ = load_public_file(ssh_keys.sign_user_cert(ssh_keys.user_key("ed25519"), ["alice"]))
    await agent.add(keys["ed25519"], cert, comment="jgt cert")
    long_list = await ssh_add(path, "-l")
    assert long_list.returncode == 0, long_list.stderr
    lines = long_list.stdout.decode().splitlines()
    assert [line.split()[1] for line in lines] == [k.public_key.fingerprint() for k in keys.values()] + [
        cert.fingerprint()]
    assert [" ".join(line.split()[2:4]) for line in lines[:-1]] == [f"jgt {kind}" for kind in keys]
    assert listed((await ssh_add(path, "-L")).stdout) == [k.public_key.to_line() for k in keys.values()] + [
        cert.to_line()]


async def test_ssh_add_adds_key_files_to_our_agent(our_agent, ssh_keys: KeyFactory, sock_dir: Path):
    agent, path = our_agent
    added: list[PublicKey | Certificate] = []
    for kind in ALL_KEY_KINDS:
        pair = ssh_keys.user_key(kind)
        cert_path = ssh_keys.sign_user_cert(pair, ["alice"], validity="-5m:+1h")
        done = await ssh_add(path, str(private_copy(pair, sock_dir, cert_path)))
        assert done.returncode == 0, done.stderr
        cert, _ = load_public_file(cert_path)
        added += [public_of(pair), cert]  # ssh-add adds the key, then its certificate
    assert await agent.identities() == added
    for identity in added:
        signature = await agent.sign(identity, b"payload")
        assert identity.verify(signature, b"payload")


async def test_ssh_add_lifetime_remove_and_remove_all_with_our_agent(our_agent, ssh_keys: KeyFactory,
                                                                     sock_dir: Path):
    agent, path = our_agent
    ed, ec = ssh_keys.user_key("ed25519"), ssh_keys.user_key("ecdsa256")
    assert (await ssh_add(path, "-t", "600", str(private_copy(ed, sock_dir)))).returncode == 0
    assert (await ssh_add(path, str(private_copy(ec, sock_dir)))).returncode == 0
    assert await agent.identities() == [public_of(ed), public_of(ec)]
    assert (await ssh_add(path, "-d", str(sock_dir / ed.private.name))).returncode == 0
    assert await agent.identities() == [public_of(ec)]
    assert (await ssh_add(path, "-D")).returncode == 0
    empty = await ssh_add(path, "-l")
    assert empty.returncode == 1 and b"no identities" in empty.stdout


async def test_ssh_add_confirm_constraint_refused_by_our_agent(our_agent, ssh_keys: KeyFactory, sock_dir: Path):
    agent, path = our_agent
    done = await ssh_add(path, "-c", str(private_copy(ssh_keys.user_key("ed25519"), sock_dir)))
    assert done.returncode != 0
    assert await agent.identities() == []


# ---------------------------------------------------------------------- forwarding


HOST_KEY = PrivateKey.generate()


class ForwardingServer(ssh_proto.SSHServer):
    """Accepts ``allowed`` keys; each session runs ``ssh-add ARGS`` through the forwarded agent."""

    allowed: set[bytes] = set()

    async def auth_publickey_acceptable(self, username, key):
        return key.blob in self.allowed

    async def auth_publickey(self, username, key):
        return key.blob in self.allowed

    async def session(self, session):
        path = await forward_agent_to_unix_socket(session.conn, "/tmp")
        done = await ssh_add(path, *session.command.split())
        await session.send_all(done.stdout)
        await session.send_stderr(done.stderr)
        return done.returncode


@pytest.fixture
async def forwarding_server(nursery):
    ForwardingServer.allowed = set()
    return await nursery.start(functools.partial(ssh_proto.serve, ForwardingServer, "127.0.0.1", 0,
                                                 host_keys=[(HOST_KEY, None)]))


async def test_forwarded_agent_listed_by_openssh_ssh_add_on_our_server(forwarding_server):
    key = PrivateKey.generate("ecdsa-sha2-nistp384")
    agent = InProcessAgent()
    await agent.add(key, comment="alice@laptop")
    ForwardingServer.allowed = {key.public_key.blob}
    async with ssh_proto.connect("127.0.0.1", forwarding_server.port, username="alice", agent=agent,
                                 known_hosts=None) as conn:
        proc = await conn.open_session("-l", agent_forwarding=True)
        result = await proc.communicate()
    assert result.exit_status == 0, result.stderr
    assert result.stdout.decode().split()[1:3] == [key.public_key.fingerprint(), "alice@laptop"]


async def test_rule_t21_without_forwarding_request_server_cannot_reach_the_agent(forwarding_server):
    key = PrivateKey.generate()
    agent = InProcessAgent()
    await agent.add(key)
    ForwardingServer.allowed = {key.public_key.blob}
    async with ssh_proto.connect("127.0.0.1", forwarding_server.port, username="alice", agent=agent,
                                 known_hosts=None) as conn:
        result = await (await conn.open_session("-l")).communicate()
    assert result.exit_status != 0 and result.stdout == b""  # forward_agent_to_unix_socket refused


async def test_openssh_ssh_dash_a_to_our_server(forwarding_server, nursery, sock_dir: Path, ssh_keys: KeyFactory):
    pair = ssh_keys.user_key("ed25519")
    key = load_private_key(pair.private)
    signed_for: list[list[tuple[bytes, bool]]] = []

    def policy(identity, data, bindings):
        signed_for.append([(b.host_key.blob, b.is_forwarding) for b in bindings])
        return proto.require_bound_userauth(identity, data, bindings)

    agent = InProcessAgent(proto.KeyStore(sign_policy=policy))
    await agent.add(key, comment="alice@openssh")
    agent_path = await nursery.start(agent.serve_unix, str(sock_dir / "ours" / "agent.sock"))
    ForwardingServer.allowed = {key.public_key.blob}
    known_hosts = sock_dir / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{forwarding_server.port} {HOST_KEY.public_key.to_line()}\n")
    options = {"BatchMode": "yes", "StrictHostKeyChecking": "yes", "UserKnownHostsFile": str(known_hosts),
               "GlobalKnownHostsFile": "/dev/null", "UpdateHostKeys": "no", "IdentitiesOnly": "yes",
               "IdentityAgent": agent_path, "ForwardAgent": "yes", "ControlMaster": "no",
               "ControlPath": "none", "ConnectTimeout": "10"}
    argv = [SSH, "-F", "/dev/null", "-p", str(forwarding_server.port), "-l", "alice",
            "-i", str(pair.public)]  # only the public half: the signature must come from our agent
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    done = await trio.run_process([*argv, "--", "127.0.0.1", "-L"], capture_stdout=True, capture_stderr=True,
                                  check=False, env=_environment(agent_path))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert listed(done.stdout) == [key.public_key.to_line()]
    # OpenSSH bound our agent connection to our server before asking for the userauth
    # signature, and require_bound_userauth accepted it only because the binding verified
    assert signed_for == [[(HOST_KEY.public_key.blob, False)]]
