"""Plumbing for the proxy and client tests: a proxy and a node in the test's nursery.

- :class:`ProxyCluster`: a test cluster's user CA and host CA; host identities for a proxy
  and a node (principals ``name``, ``name.CLUSTER``, ``127.0.0.1``) issued with
  :func:`ssh_proto.certs.sign_certificate`; the node registry the proxy's
  :class:`~appliance.proxy.routing.NodeDirectory` reads; the audit events of both roles.
- :func:`start_cluster`: the real :func:`appliance.node.serve_node` and
  :func:`appliance.proxy.serve_proxy` on free loopback ports, sessions running as a
  throw-away OS account (made by ``tests/interop/openssh.py``).
- :meth:`ProxyCluster.write_profile`: a client profile (``JUMPGATE_HOME``) holding a key,
  a user certificate and the ``@cert-authority`` known_hosts for the proxy and ``*.CLUSTER``,
  as ``jumpgate login`` writes it.
- :func:`jumpgate`: the ``jumpgate`` CLI as a subprocess with that profile.
- :func:`serve_agent`: an in-process SSH agent holding one fresh key, on a unix socket.

tests/appliance has no conftest.py: :func:`proxy_fixtures` builds the three fixtures the
proxy and client test modules share, and each module binds them (``login, cluster, profile =
proxy_fixtures("prefix")``).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import pytest
import trio

from _node_helpers import LOOPBACK, AuditLog, make_user, remove_user, run  # noqa: F401  (re-exported)
from appliance.client.muxclient import stop_daemon
from appliance.client.profile import ClientPaths, Profile
from appliance.client.ssh import Credentials, load_credentials
from appliance.client.trust import known_hosts_patterns
from appliance.node.server import NodeIdentity, serve_node
from appliance.proxy.routing import NodeDirectory, Routes
from appliance.proxy.server import ProxyIdentity, serve_proxy
from ssh_proto.certs import DEFAULT_USER_EXTENSIONS, sign_certificate
from ssh_proto.keys import CERT_TYPE_HOST, CERT_TYPE_USER, Certificate, PrivateKey
from ssh_proto.trio_io.agent import InProcessAgent

CLUSTER = "testcl"
NODE = "node1"
PROXY = "proxy1"
USER = "alice"
REPO = Path(__file__).resolve().parents[2]


def host_identity(host_ca: PrivateKey, role: str, name: str, extra: Sequence[str] = (LOOPBACK,)):
    """(host key, host certificate) with principals name, name.CLUSTER and ``extra``."""
    key = PrivateKey.generate("ssh-ed25519")
    now = int(time.time())
    cert = sign_certificate(host_ca, key.public_key, cert_type=CERT_TYPE_HOST, key_id=f"{role}:{name}",
                            principals=[name, f"{name}.{CLUSTER}", *extra], valid_after=now - 60,
                            valid_before=now + 3600)
    return key, cert


def user_cert(user_ca: PrivateKey, key: PrivateKey, logins: Sequence[str], *, user: str = USER,
              lifetime: tuple[int, int] = (-60, 3600),
              extensions: Mapping[str, bytes | str] = DEFAULT_USER_EXTENSIONS,
              critical_options: Mapping[str, str] | None = None) -> Certificate:
    """A user certificate as the cluster CA issues it: key id ``user:<user>``, principals = logins."""
    now = int(time.time())
    return sign_certificate(user_ca, key.public_key, cert_type=CERT_TYPE_USER, key_id=f"user:{user}",
                            principals=list(logins), valid_after=now + lifetime[0], valid_before=now + lifetime[1],
                            extensions=extensions, critical_options=critical_options or {}, serial=now)


@dataclasses.dataclass
class ProxyCluster:
    """A running proxy and node; ``nodes`` is the registry (edit it to add nodes)."""

    directory: Path
    login: str
    user_ca: PrivateKey
    host_ca: PrivateKey
    audit: AuditLog
    nodes: list[dict]
    proxy_port: int = 0
    node_port: int = 0
    node_listener: object = None   # the ssh_proto.SSHListener objects (their admission state)
    proxy_listener: object = None
    #: Where the proxy's directory reads the inventory instead of ``nodes`` (e.g. a real auth
    #: service's ``list_nodes``, as NodeRecords).
    source: Callable[[], Awaitable[Sequence[object]]] | None = None

    def trusted_for(self) -> list[str]:
        """The known_hosts patterns ``jumpgate login`` writes for this cluster (J6)."""
        return known_hosts_patterns(CLUSTER, [(LOOPBACK, self.proxy_port)], ())

    async def fetch_nodes(self) -> list[dict]:
        if self.source is not None:
            return [n.to_wire() for n in await self.source()]
        return [dict(n) for n in self.nodes]

    def register(self, name: str, addr: str, kind: str = "node", *, tunnel: bool = False, **labels: str) -> None:
        self.nodes.append({"name": name, "addr": addr, "labels": labels, "kind": kind, "last_seen": time.time(),
                           "tunnel": tunnel})

    def write_profile(self, name: str = "profile", *, logins: Sequence[str] | None = None,
                      ca: PrivateKey | None = None, **how) -> Profile:
        """A client home with a fresh key and certificate (``how`` as for :func:`user_cert`)."""
        paths = ClientPaths(self.directory / name)
        key = PrivateKey.generate("ssh-ed25519")
        logins = [self.login] if logins is None else list(logins)
        cert = user_cert(ca or self.user_ca, key, logins, **how)
        paths.write_credentials(key, cert, self.host_ca.public_key, trusted_for=self.trusted_for())
        profile = Profile(proxy=f"{LOOPBACK}:3080", user=USER, cluster=CLUSTER,
                          proxy_ssh=f"{LOOPBACK}:{self.proxy_port}", expires=float(cert.valid_before),
                          logins=tuple(logins), paths=paths)
        profile.save()
        return profile

    def credentials(self, profile: Profile) -> Credentials:
        return load_credentials(profile)

    def events(self, name: str, *, success: bool = True, service: str | None = None) -> list[dict]:
        """The fields (with "user") of ``name`` events; ``service="proxy"`` keeps the proxy's."""
        found = self.audit.of(name, success=success)
        return [e for e in found if service is None or e.get("service") == service]


async def start_cluster(nursery: trio.Nursery, directory: Path, login: str, **node_options) -> ProxyCluster:
    """A node and a proxy on free loopback ports; the node registered as ``node1``
    (``node_options``: more keyword arguments of ``serve_node``)."""
    cluster = ProxyCluster(directory, login, PrivateKey.generate("ssh-ed25519"), PrivateKey.generate("ssh-ed25519"),
                           AuditLog(), [])
    node_key, node_cert = host_identity(cluster.host_ca, "node", NODE)
    node_identity = NodeIdentity(node_key, node_cert, (cluster.user_ca.public_key,), CLUSTER, NODE,
                                 host_cas=(cluster.host_ca.public_key,))
    node = await nursery.start(lambda task_status: serve_node(lambda: node_identity, LOOPBACK, 0,
                                                              audit=cluster.audit, task_status=task_status,
                                                              **node_options))
    cluster.node_port, cluster.node_listener = node.port, node
    cluster.register(NODE, f"{LOOPBACK}:{node.port}", env="test")
    directory_ = NodeDirectory(cluster.fetch_nodes, cluster=CLUSTER, ttl=0.0, min_refresh=0.0)
    proxy_identity = ProxyIdentity(*host_identity(cluster.host_ca, "proxy", PROXY, (LOOPBACK, "localhost")))
    proxy = await nursery.start(lambda task_status: serve_proxy(
        proxy_identity, [cluster.user_ca.public_key], Routes(directory_), LOOPBACK, 0, audit=cluster.audit, task_status=task_status))
    cluster.proxy_port, cluster.proxy_listener = proxy.port, proxy
    return cluster


async def jumpgate(profile: Profile, *args: str, input: bytes | None = None, env: Mapping[str, str] = {},
                   timeout: float = 30.0) -> subprocess.CompletedProcess:
    """``jumpgate ARGS`` as a subprocess using ``profile`` (JUMPGATE_HOME); ``env`` adds variables."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "JUMPGATE_HOME": str(profile.paths.home), "PYTHONPATH": path, **env}
    argv = [sys.executable, "-m", "appliance.cli.main", *args]
    with trio.fail_after(timeout):
        return await trio.run_process(argv, stdin=input if input is not None else subprocess.DEVNULL,
                                      capture_stdout=True, capture_stderr=True, check=False, env=env, cwd=REPO)


async def serve_agent(nursery: trio.Nursery, directory: Path) -> tuple[Path, PrivateKey]:
    """An agent holding one fresh ed25519 key, served on ``directory/agent.sock``: (socket, key)."""
    agent = InProcessAgent()
    key = PrivateKey.generate("ssh-ed25519")
    await agent.add(key, comment="forwarded-key")
    sock = directory / "agent.sock"
    await nursery.start(agent.serve_unix, str(sock))
    return sock, key


def proxy_fixtures(user_prefix: str):
    """(login, cluster, profile): a throw-away OS account for the module, a node and proxy in
    the test's nursery (:func:`start_cluster`), and a fresh client profile whose session
    daemon, if a test's ``jumpgate ssh`` started one, is stopped at teardown."""
    @pytest.fixture(scope="module")
    def login():
        user = make_user(user_prefix)
        yield user
        remove_user(user)

    @pytest.fixture
    async def cluster(nursery, tmp_path, login):
        return await start_cluster(nursery, tmp_path, login.name)

    @pytest.fixture
    def profile(cluster):
        profile = cluster.write_profile()
        yield profile
        stop_daemon(profile.paths.home)

    return login, cluster, profile
