"""End to end: removing a user ends what they have open, from another process (docs/security.md R2).

The built pyz as processes: the all-in-one appliance, a user logged in with ``jumpgate ssh``
holding a session open on the node through the proxy, and the admin running ``jumpgate ctl
users rm`` — another process writing the auth role's database. The session ends within the
issue's 10 s and the user's certificate no longer gets in anywhere.
"""
from __future__ import annotations

import subprocess
import time

import pytest

import openssh
from _cluster import Client, Cluster

REVOCATION_DEADLINE = 10.0  # the promise (the push stream takes ~0.5 s)


@pytest.mark.parametrize("mux", ["in-process", "session-daemon"])
def test_ctl_users_rm_ends_a_live_jumpgate_ssh_session_within_10s(cluster: Cluster, new_client,
                                                                  os_user: openssh.ThrowawayUser, mux: str) -> None:
    name = f"mallory{'1' if mux == 'in-process' else '2'}"
    mallory: Client = new_client().enrol(name, [os_user.name])
    argv = mallory.jg.argv("ssh", f"{os_user.name}@{cluster.node_name}", "echo started; exec sleep 600")
    env = {"JUMPGATE_MUX": "0"} if mux == "in-process" else {}
    session = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=mallory.jg.env(mallory.home, env))
    try:
        assert session.stdout.readline() == b"started\n"
        cluster.ctl("users", "rm", name)
        removed = time.monotonic()
        status = session.wait(timeout=REVOCATION_DEADLINE)
        took = time.monotonic() - removed
        stderr = session.stderr.read().decode(errors="replace")
    finally:
        session.kill()
        session.wait()
    assert status != 0 and "was revoked" in stderr, stderr
    assert took < REVOCATION_DEADLINE
    again = mallory.run("ssh", f"{os_user.name}@{cluster.node_name}", "true")
    assert again.returncode != 0
