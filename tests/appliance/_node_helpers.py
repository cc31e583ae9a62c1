"""Shared plumbing for the node tests: a test cluster's keys, a node in a nursery, clients.

- :func:`make_user`: a throw-away OS account (``tests/interop/openssh.py`` makes it); as
  anyone but root it skips the test that asked, so only the tests that need an account (a
  node switching users) are skipped, never a whole module.
- :class:`TestCluster`: a user CA, a host CA, the node's host key and certificate, and
  user certificates issued by :func:`ssh_proto.certs.sign_certificate` (our own CA code),
  written to files the real OpenSSH client reads.
- :func:`start_node`: :func:`appliance.node.serve_node` on a free loopback port.
- :class:`AuditLog`: an audit sink that keeps the events.
- :func:`openssh_argv` / :func:`run`: the real ``ssh``, ``sftp`` and ``scp`` as subprocesses.

No fixtures here (tests/appliance has no conftest.py): test modules build theirs from these.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
import trio

_INTEROP = str(Path(__file__).resolve().parent.parent / "interop")
if _INTEROP not in sys.path:
    sys.path.insert(0, _INTEROP)

import openssh  # noqa: E402  (tests/interop: throw-away users, the real clients)

from appliance.audit import AuditEvent, AuditEventError  # noqa: E402
from appliance.node.server import NodeIdentity, serve_node  # noqa: E402
from ssh_proto.certs import DEFAULT_USER_EXTENSIONS, sign_certificate  # noqa: E402
from ssh_proto.keys import CERT_TYPE_HOST, CERT_TYPE_USER, Certificate, PrivateKey  # noqa: E402

LOOPBACK = "127.0.0.1"
SCP = "/usr/bin/scp"
SSH_ADD = "/usr/bin/ssh-add"


NEEDS_ROOT = "needs root: it creates an OS account for a node that switches users"


def make_user(tag: str) -> openssh.ThrowawayUser:
    """A fresh ``jgt_<tag>_<pid>`` account with /bin/sh and a 0700 home (remove it after);
    skips the asking test unless it runs as root."""
    if os.geteuid() != 0:
        pytest.skip(NEEDS_ROOT)
    openssh.sweep_stale_users()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return openssh.create_throwaway_user(openssh.throwaway_user_name(tag + worker.removeprefix("gw")))


def remove_user(user: openssh.ThrowawayUser) -> None:
    openssh.remove_throwaway_user(user)


@dataclasses.dataclass(frozen=True, slots=True)
class ClientFiles:
    """A client key and its certificate as OpenSSH files."""

    key: Path
    cert: Path


class TestCluster:
    """The CAs and the node identity of one test; issues user certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, node_name: str = "node1", cluster: str = "testcluster"):
        self.directory = directory
        self.user_ca = PrivateKey.generate("ssh-ed25519")
        self.host_ca = PrivateKey.generate("ssh-ed25519")
        host_key = PrivateKey.generate("ssh-ed25519")
        now = int(time.time())
        host_cert = sign_certificate(self.host_ca, host_key.public_key, cert_type=CERT_TYPE_HOST,
                                     key_id=f"node:{node_name}", principals=[node_name, LOOPBACK, "localhost"],
                                     valid_after=now - 60, valid_before=now + 3600)
        self.identity = NodeIdentity(host_key, host_cert, (self.user_ca.public_key,), cluster, node_name)
        self._serial = 0

    def user_cert(self, key: PrivateKey, principals: Sequence[str], *, user: str = "alice",
                  extensions: Mapping[str, bytes | str] = DEFAULT_USER_EXTENSIONS,
                  critical_options: Mapping[str, str] | None = None, lifetime: tuple[int, int] = (-60, 3600),
                  ca: PrivateKey | None = None) -> Certificate:
        """A user certificate with key id ``user:<user>``; ``lifetime`` relative to now."""
        self._serial += 1
        now = int(time.time())
        return sign_certificate(ca or self.user_ca, key.public_key, cert_type=CERT_TYPE_USER, key_id=f"user:{user}",
                                principals=list(principals), valid_after=now + lifetime[0],
                                valid_before=now + lifetime[1], critical_options=critical_options or {},
                                extensions=extensions, serial=self._serial)

    def client_files(self, name: str, principals: Sequence[str], **how) -> tuple[PrivateKey, Certificate, ClientFiles]:
        """A fresh key with a certificate (``how`` as for :meth:`user_cert`), written as files."""
        key = PrivateKey.generate("ssh-ed25519")
        cert = self.user_cert(key, principals, **how)
        path = self.directory / name
        path.write_bytes(key.to_openssh())
        path.chmod(0o600)
        cert_path = path.with_name(name + "-cert.pub")
        cert_path.write_text(cert.to_line() + "\n")
        return key, cert, ClientFiles(path, cert_path)

    def known_hosts(self, port: int) -> Path:
        """A known_hosts that trusts the node only through the host CA (no TOFU)."""
        path = self.directory / f"known_hosts_{port}"
        path.write_text(f"@cert-authority [{LOOPBACK}]:{port} {self.host_ca.public_key.to_line()}\n")
        return path

    def verify_host(self, key) -> None:
        """For ``ssh_proto.connect(known_hosts=...)``: the node's certificate, by the host CA."""
        from ssh_proto.certs import validate_host_certificate
        if not isinstance(key, Certificate):
            raise ValueError("the node must present its host certificate")
        validate_host_certificate(key, hostname=LOOPBACK, trusted_cas=[self.host_ca.public_key])


class AuditLog:
    """An audit sink that records every event, checked as the auth role will check it."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.rejected: list[tuple[dict, str]] = []  # events the auth service would refuse
        self.listeners: list[Callable[[], None]] = []   # called at each event (a test's wake-up)
        self._appended = trio.Event()

    async def __call__(self, event: dict) -> None:
        try:
            AuditEvent.from_wire(event, time=time.time())  # what the auth API accepts from a node
        except AuditEventError as exc:
            self.rejected.append((event, str(exc)))
            raise
        self.events.append(dict(event))
        self._appended.set()
        self._appended = trio.Event()
        for listener in self.listeners:
            listener()

    def of(self, name: str, *, success: bool = True) -> list[dict]:
        """The fields (with "user" added) of every ``name`` event with that outcome."""
        return [{"user": e["user"], **e["fields"]} for e in self.events
                if e["event"] == name and e["success"] is success]

    async def wait_for(self, name: str, *, success: bool = True) -> list[dict]:
        """:meth:`of` once it holds an event: woken by each event the node emits (the caller
        bounds the wait)."""
        while not (found := self.of(name, success=success)):
            await self._appended.wait()
        return found


async def start_node(nursery: trio.Nursery, cluster: TestCluster, audit: AuditLog | None = None, **options):
    """The node server on a free loopback port; returns the listener (``.port``)."""
    return await nursery.start(lambda task_status: serve_node(lambda: cluster.identity, LOOPBACK, 0, audit=audit,
                                                              task_status=task_status, **options))


def openssh_argv(program: str, args: Sequence[str], *, port: int, login: str, files: ClientFiles,
                 known_hosts: Path, options: Sequence[str] = (), agent: str | None = None) -> list[str]:
    """The real ``ssh`` / ``sftp`` / ``scp`` with no config but ours, BatchMode, strict host check.

    For ssh, ``args`` are the remote command; for sftp and scp they come after the options.
    """
    target = openssh.SshTarget(LOOPBACK, port, login, known_hosts)
    opts = openssh.client_options(target, identity=files.key, certificate=files.cert)
    if agent is not None:
        opts[opts.index("IdentityAgent=none")] = f"IdentityAgent={agent}"
    if program == "ssh":
        return [str(openssh.SSH), *opts, *options, LOOPBACK, *args]
    if program == "sftp":
        return [str(openssh.SFTP), *opts, *options, *args, LOOPBACK]
    return [SCP, "-q", "-B", *opts, *options, *args]


async def run(argv: Sequence[str], *, input: bytes | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run a client to completion (stdout and stderr captured)."""
    with trio.fail_after(timeout):
        return await trio.run_process(list(argv), stdin=input if input is not None else subprocess.DEVNULL,
                                      capture_stdout=True, capture_stderr=True, check=False)
