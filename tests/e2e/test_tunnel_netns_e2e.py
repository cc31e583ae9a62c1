"""End to end, as root: a tunnelled node in a network namespace that can reach the proxy only.

The namespace (made here, removed at the end) has one veth end, ``10.213.N.2/32``, and a single
route: to ``10.213.N.1``, the host's end, where a relay forwards to the proxy's tunnel port.
There is no default route, and the namespace's loopback is its own — the auth API, the proxy's
SSH port and the web port (all on the host's 127.0.0.1) are out of its reach, which the test
checks from inside before the node starts. The node joins, heartbeats and is reached by
``jumpgate ssh``, OpenSSH ``ssh -J`` and ``scp`` all the same.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import openssh
from _cluster import LOOPBACK, Client, Cluster, Daemon, Jumpgate, run_openssh, start_daemon
from test_tunnel_e2e import SCP, SSH, Relay, _rows, alice, listening_ports, openssh_opts, wait_until  # noqa: F401

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 to make a network namespace")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Namespace:
    def __init__(self) -> None:
        n = os.getpid() % 250 + 1
        self.name, self.host_if, self.ns_if = f"jgt{os.getpid()}", f"jgh{os.getpid()}", f"jgn{os.getpid()}"
        self.host_addr, self.ns_addr = f"10.213.{n}.1", f"10.213.{n}.2"
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_addr}/32", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("route", "add", f"{self.ns_addr}/32", "dev", self.host_if)
            inside = ["netns", "exec", self.name, "ip"]
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "addr", "add", f"{self.ns_addr}/32", "dev", self.ns_if)
            _ip(*inside, "link", "set", self.ns_if, "up")
            _ip(*inside, "route", "add", f"{self.host_addr}/32", "dev", self.ns_if)  # the only route
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)

    def can_connect(self, host: str, port: int) -> bool:
        code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=3).close()"
        done = subprocess.run(["ip", "netns", "exec", self.name, sys.executable, "-c", code],
                              capture_output=True, timeout=20)
        return done.returncode == 0


class InNamespace(Jumpgate):
    def __init__(self, jg: Jumpgate, namespace: str):
        super().__init__(jg.pyz)
        self.namespace = namespace

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *super().argv(*args)]


@pytest.fixture(scope="module")
def netns() -> Iterator[Namespace]:
    ns = Namespace()
    yield ns
    ns.remove()


@pytest.fixture(scope="module")
def nsnode(jg: Jumpgate, cluster: Cluster, alice: Client, netns: Namespace,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    relay = Relay((LOOPBACK, cluster.ports["tunnel"]), host=netns.host_addr)
    workdir = tmp_path_factory.mktemp("nsnode")
    args = ["--roles", "node", "--tunnel-addr", f"{netns.host_addr}:{relay.port}", "--token",
            cluster.node_token(addr=None), "--nodename", "nsnode1", "--data-dir", str(workdir / "data")]
    daemon, _ = start_daemon(InNamespace(jg, netns.name), workdir / "nsnode.log", args, [])
    try:
        wait_until(lambda: "nsnode1" in _rows(alice.run("ls").check().stdout), "nsnode1 in jumpgate ls", 15)
        yield daemon
    finally:
        daemon.stop()
        relay.close()


def test_n1_the_namespace_reaches_the_tunnel_relay_and_nothing_else(cluster: Cluster, netns: Namespace) -> None:
    for service in ("auth", "proxy", "web", "tunnel"):
        assert not netns.can_connect(LOOPBACK, cluster.ports[service]), service
        assert not netns.can_connect(netns.host_addr, cluster.ports[service]), service
    assert not netns.can_connect("10.213.250.250", 22)


def test_n1_a_node_in_a_namespace_that_reaches_only_the_proxy_is_reached_by_ssh_ssh_J_and_scp(
        alice: Client, cluster: Cluster, nsnode: Daemon, os_user: openssh.ThrowawayUser,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    assert nsnode.process is not None and listening_ports(nsnode.process.pid) == []
    assert _rows(alice.run("ls").check().stdout)["nsnode1"][1] == "tunnel"
    result = alice.run("ssh", f"{os_user.name}@nsnode1", "id -un; exit 5")
    assert result.returncode == 5, result.stderr
    assert result.stdout == f"{os_user.name}\n"
    config = tmp_path_factory.mktemp("nscfg") / "config"
    config.write_text(alice.run("config").check().stdout)
    jump = f"alice@{LOOPBACK}:{cluster.ports['proxy']}"
    done = run_openssh([SSH, *openssh_opts(config), "-J", jump, f"{os_user.name}@nsnode1", "id -un"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{os_user.name}\n"
    work = tmp_path_factory.mktemp("nsscp")
    work.chmod(0o755)
    (work / "up.txt").write_text("into the namespace\n")
    (work / "up.txt").chmod(0o644)
    remote = f"/tmp/jg-netns-{os.getpid()}.txt"
    done = run_openssh([SCP, *openssh_opts(config), str(work / "up.txt"), f"{os_user.name}@nsnode1.{cluster.name}:{remote}"])
    assert done.returncode == 0, done.stderr
    done = run_openssh([SCP, *openssh_opts(config), f"{os_user.name}@nsnode1.{cluster.name}:{remote}", str(work / "back.txt")])
    assert done.returncode == 0, done.stderr
    assert Path(work / "back.txt").read_text() == "into the namespace\n"
