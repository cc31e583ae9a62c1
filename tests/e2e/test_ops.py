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
