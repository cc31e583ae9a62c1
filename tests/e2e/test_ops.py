"""End to end: what an operator does around the cluster (issue 14 items 8, 13, 16, 17, 18):
join tokens, ``ctl status``, bots, the audit command and the diagnostics port, with the built
pyz as separate processes."""
from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import time
from pathlib import Path

from _cluster import LOOPBACK, Cluster, Jumpgate, free_ports, start_daemon


def _node_args(cluster: Cluster, token: str, name: str, data_dir: Path, port: int) -> list[str]:
    return ["--roles", "node", "--auth-server", cluster.auth, "--token", token, "--nodename", name,
            "--public-addr", LOOPBACK, "--listen-addr", LOOPBACK, "--data-dir", str(data_dir),
            "--node-port", str(port)]


def _token_rows(cluster: Cluster) -> dict[str, dict]:
    return {t["id"]: t for t in json.loads(cluster.ctl("tokens", "ls", "--format", "json").stdout)}


def test_j10_a_node_whose_port_is_taken_fails_before_spending_its_token(jg: Jumpgate, cluster: Cluster,
                                                                        tmp_path: Path) -> None:
    """Before: the node joined (token used), then could not listen. Now it binds first: one
    clear line, nothing joined, and the same token joins once the port is free."""
    token = cluster.node_token(name="busy1")
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        failed = jg.run("start", *_node_args(cluster, token, "busy1", tmp_path / "data", port), timeout=60)
    assert failed.returncode != 0
    assert len(failed.error_lines) == 1, failed.stderr
    assert f"{LOOPBACK}:{port}" in failed.stderr and "token is still unused" in failed.stderr, failed.stderr
    assert token.split(".")[0] not in failed.stderr
    assert "busy1" not in cluster.ctl("nodes", "ls").stdout
    node, _ = start_daemon(jg, tmp_path / "node.log", _node_args(cluster, token, "busy1", tmp_path / "data",
                                                                  free_ports(1)[0]), ["node"])
    try:
        assert "busy1" in cluster.ctl("nodes", "ls").stdout
    finally:
        node.stop()


def test_tokens_rm_takes_the_printed_token_or_its_id(cluster: Cluster) -> None:
    out = cluster.ctl("tokens", "add", "--type", "node", "--labels", "env=dev,team=db").stdout
    start_line = re.search(r"jumpgate start .*", out).group(0)
    assert "--labels env=dev,team=db" in start_line
    token = re.search(r"--token (\S+)", start_line).group(1)
    before = set(_token_rows(cluster))
    removed = cluster.ctl("tokens", "rm", token)
    assert token not in removed.stdout and token.split(".")[0] not in removed.stdout
    (token_id,) = before - set(_token_rows(cluster))
    assert removed.stdout.strip() == f"token {token_id} removed"
    other = cluster.node_token()
    other_id = next(i for i in set(_token_rows(cluster)) - before)
    assert cluster.ctl("tokens", "rm", other_id).stdout.strip() == f"token {other_id} removed"
    again = cluster.ctl("tokens", "rm", other, check=False)
    assert again.returncode == 1 and other.split(".")[0] not in again.stderr, again.stderr


class _Lines:
    """The stdout lines of a running process, read with a deadline (select on the pipe)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.buffer = b""

    def next(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no line within {timeout}s; so far {self.buffer!r}")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the process ended: {self.proc.wait()} {self.proc.stderr.read()!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


def test_u5_ctl_audit_follow_prints_each_new_event_as_it_is_recorded(jg: Jumpgate, cluster: Cluster) -> None:
    argv = jg.argv("ctl", "--data-dir", str(cluster.data_dir), "audit", "--follow", "--format", "json",
                   "--type", "token.create", "--limit", "1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=jg.env())
    try:
        lines = _Lines(proc)
        backlog = json.loads(lines.next())
        assert backlog["event"] == "token.create"
        cluster.ctl("users", "add", "followed", "--logins", "followed")      # not a token.create: skipped
        cluster.ctl("tokens", "add", "--type", "proxy", "--name", "followme")
        new = json.loads(lines.next())
        assert new["event"] == "token.create" and new["fields"]["node"] == "followme" and new["id"] > backlog["id"]
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


SSH = "/usr/bin/ssh"


def _openssh_via_proxy(key: Path, cert: Path, known_hosts: Path, proxy_port: int, user: str) -> list[str]:
    common = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentityAgent=none", "-o", "IdentitiesOnly=yes",
              "-i", str(key), "-o", f"CertificateFile={cert}", "-o", f"UserKnownHostsFile={known_hosts}",
              "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes"]
    hop = " ".join([SSH, *common, "-p", str(proxy_port), "-W", "%h:%p", f"{user}@{LOOPBACK}"])
    return [SSH, *common, "-o", f"ProxyCommand={hop}"]


def test_b3_a_bot_gets_a_certificate_with_its_token_uses_it_renews_it_and_is_cut_by_bots_rm(
        jg: Jumpgate, cluster: Cluster, os_user, tmp_path: Path) -> None:
    from _cluster import run_openssh
    added = cluster.ctl("bots", "add", "ci", "--logins", os_user.name).stdout
    token = re.search(r"jumpgate bot start .*--token (\S+)", added).group(1)
    out = tmp_path / "bot"
    first = jg.run("bot", "start", "--auth-server", cluster.auth, "--token", token, "--out", str(out),
                   "--oneshot", "--ttl", "10m")
    assert first.returncode == 0, first.stderr
    assert token.split(".")[0] not in first.stderr + first.stdout
    assert oct((out / "key").stat().st_mode & 0o777) == "0o600" and oct(out.stat().st_mode & 0o777) == "0o700"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(cluster.ctl("auth", "export", "--type", "host").stdout)
    argv = _openssh_via_proxy(out / "key", out / "key-cert.pub", known_hosts, cluster.ports["proxy"], "ci")
    done = run_openssh([*argv, f"{os_user.name}@node1", "id -un"])
    assert done.returncode == 0 and done.stdout == f"{os_user.name}\n", done.stderr
    before = (out / "key-cert.pub").read_text()
    renewed = jg.run("bot", "start", "--auth-server", cluster.auth, "--out", str(out), "--oneshot")   # no token
    assert renewed.returncode == 0, renewed.stderr
    assert (out / "key-cert.pub").read_text() != before
    assert cluster.ctl("bots", "ls").stdout.split("\n")[1].split()[0] == "ci"
    events = json.loads(cluster.ctl("audit", "--user", "ci", "--format", "json").stdout)
    assert {e["event"] for e in events} >= {"bot.create", "bot.join", "cert.create"}
    assert all(e["fields"].get("identity") == "bot" for e in events if e["event"] in ("bot.join", "cert.create"))
    cluster.ctl("bots", "rm", "ci")
    refused = jg.run("bot", "start", "--auth-server", cluster.auth, "--out", str(out), "--oneshot")
    assert refused.returncode != 0 and len(refused.error_lines) == 1, refused.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:   # the proxy and node hear of the removal within a poll
        done = run_openssh([*argv, f"{os_user.name}@node1", "true"])
        if done.returncode != 0:
            break
        time.sleep(0.5)
    assert done.returncode != 0


def test_b1_the_readme_automation_example_works_as_written(cluster: Cluster, os_user, tmp_path: Path) -> None:
    """README step 7: `ctl bots add ci --logins deploy` then `ctl auth sign --bot ci --pubkey ci.pub --ttl 1h`."""
    from ssh_proto.keys import PrivateKey
    key = PrivateKey.generate("ssh-ed25519")
    pub = tmp_path / "ci.pub"
    pub.write_text(key.public_key.to_line("ci") + "\n")
    cluster.ctl("bots", "add", "ci2", "--logins", "deploy")
    signed = cluster.ctl("auth", "sign", "--bot", "ci2", "--pubkey", str(pub), "--ttl", "1h")
    assert signed.stdout.startswith("ssh-ed25519-cert-v01@openssh.com ")
    user = cluster.ctl("auth", "sign", "--user", "ci2", "--pubkey", str(pub), check=False)
    assert user.returncode == 1 and "--bot ci2" in user.stderr


def test_d1_start_diag_addr_serves_healthz_readyz_and_metrics(jg: Jumpgate, cluster: Cluster, tmp_path: Path) -> None:
    import sys
    import urllib.error
    import urllib.request
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "appliance"))
    from test_diag import parse_exposition
    diag_port, node_port = free_ports(2)
    args = [*_node_args(cluster, cluster.node_token(name="diag1"), "diag1", tmp_path / "data", node_port),
            "--diag-addr", str(diag_port)]
    node, _ = start_daemon(jg, tmp_path / "node.log", args, ["node"])
    try:
        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{diag_port}{path}", timeout=10) as reply:
                    return reply.status, reply.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
        assert get("/healthz") == (200, "ok\n")
        assert get("/readyz") == (200, "ready\n")
        families = parse_exposition(get("/metrics")[1])
        assert families["jumpgate_heartbeats_total"]["samples"]['{service="node"}'] >= 1
        assert families["jumpgate_up"]["samples"]['{service="node"}'] == 1
        assert families["jumpgate_tunnels"]["samples"]['{service="node"}'] == 0
    finally:
        node.stop()
