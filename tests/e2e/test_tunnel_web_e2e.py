"""End to end: a node behind an HTTPS-only firewall, ``--auth-server PROXY:3080`` (issue 15).

The node process is given the web port of the all-in-one cluster as its auth server and an
``HTTPS_PROXY`` naming :class:`ConnectProxy`, an HTTP CONNECT proxy in this process that logs
every target: the probe finds the web port silent (TLS), the node joins and holds its tunnel
through the proxy with ALPN ``jumpgate-tunnel``, listens on no port (the kernel's tables say
so) and ``jumpgate ssh`` reaches it (docs/security.md W8-W10)."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

import openssh
from _cluster import LOOPBACK, Client, Cluster, Daemon, Jumpgate, start_daemon
from test_tunnel_e2e import _rows, listening_ports, wait_until


class ConnectProxy:
    """A threaded HTTP proxy: answers CONNECT with 200 and relays; ``targets`` logs each."""

    def __init__(self) -> None:
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.targets: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = client.recv(4096)
                if not data:
                    return
                head += data
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
            self.targets.append(target)
            host, _, port = target.rpartition(":")
            with socket.create_connection((host.strip("[]"), int(port)), timeout=10) as upstream:
                upstream.settimeout(None)
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
                _pump(client, upstream)

    def close(self) -> None:
        self.listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    for sock in (source, sink):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@pytest.fixture(scope="module")
def alice(jg: Jumpgate, cluster: Cluster, os_user: openssh.ThrowawayUser,
          tmp_path_factory: pytest.TempPathFactory) -> Client:
    return Client(jg, tmp_path_factory.mktemp("alice") / "jumpgate", cluster).enrol("alice", [os_user.name])


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    p = ConnectProxy()
    yield p
    p.close()


def test_W2_a_node_given_the_web_port_as_auth_server_tunnels_through_https_proxy(
        jg: Jumpgate, cluster: Cluster, alice: Client, os_user, proxy: ConnectProxy, monkeypatch,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    for name in ("https_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://{LOOPBACK}:{proxy.port}")
    workdir = tmp_path_factory.mktemp("wnode")
    web = f"{LOOPBACK}:{cluster.ports['web']}"
    args = ["--roles", "node", "--auth-server", web, "--token", cluster.node_token(addr=None),
            "--nodename", "wnode1", "--data-dir", str(workdir / "data")]
    daemon: Daemon
    daemon, _ = start_daemon(jg, workdir / "wnode.log", args, [])
    try:
        wait_until(lambda: "wnode1" in _rows(alice.run("ls").check().stdout), "wnode1 in jumpgate ls", 30)
        assert daemon.process is not None and listening_ports(daemon.process.pid) == []
        assert _rows(alice.run("ls").check().stdout)["wnode1"][1] == "tunnel"
        assert alice.run("ssh", f"{os_user.name}@wnode1", "echo up", timeout=60).stdout == "up\n"
    finally:
        daemon.stop()
    # the probe's connection (which carries the join's tunnel: no connection of its own, L9) and
    # the node's own tunnel: every one through the proxy, to the web port
    assert len(proxy.targets) >= 2 and set(proxy.targets) == {web}
