"""Issue 15: ``jumpgate ssh env=prod uptime`` runs the command on every matching node.

``jumpgate`` runs as a subprocess against a real proxy and several real NodeServers in the
test's nursery (each with its own host certificate, all running sessions as one throw-away
OS account); the rules are in :mod:`appliance.client.fanout` and :mod:`appliance.cli.fanout`.
"""
from __future__ import annotations

import pytest

from _proxy_helpers import CLUSTER, LOOPBACK, NODE, host_identity, jumpgate, proxy_fixtures
from appliance.cli.fanout import summary
from appliance.client.fanout import NodeResult, parse_selector
from appliance.inventory import LabelError
from appliance.node.server import NodeIdentity, serve_node

login, cluster, profile = proxy_fixtures("fanout")


async def _add_node(nursery, cluster, name: str, **labels: str) -> None:
    key, cert = host_identity(cluster.host_ca, "node", name)
    identity = NodeIdentity(key, cert, (cluster.user_ca.public_key,), CLUSTER, name, host_cas=(cluster.host_ca.public_key,))
    node = await nursery.start(lambda task_status: serve_node(lambda: identity, LOOPBACK, 0, audit=cluster.audit,
                                                              task_status=task_status))
    cluster.register(name, f"{LOOPBACK}:{node.port}", **labels)


@pytest.fixture
async def fleet(nursery, cluster):
    """node1 (env=test), and web1, web2, db1 (env=prod), each a real node server."""
    for name, role in (("web2", "web"), ("db1", "db"), ("web1", "web")):
        await _add_node(nursery, cluster, name, env="prod", role=role)
    return cluster


def _lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


async def test_the_command_runs_on_every_match_each_line_prefixed_and_stdout_and_stderr_apart(fleet, profile, login):
    done = await jumpgate(profile, "ssh", f"{login.name}@env=prod", "echo one; echo two; echo oops >&2")
    assert done.returncode == 0, done.stderr
    out, err = _lines(done.stdout), _lines(done.stderr)
    for name in ("db1", "web1", "web2"):
        assert [line for line in out if line.startswith(f"{name}: ")] == [f"{name}: one", f"{name}: two"]
        assert f"{name}: oops" in err
    assert len(out) == 6 and len(err) == 3                  # node1 (env=test) is not selected


async def test_several_selectors_are_anded_and_l_gives_the_login(fleet, profile, login):
    done = await jumpgate(profile, "ssh", "-l", login.name, "env=prod,role=web", "echo hi")
    assert done.returncode == 0, done.stderr
    assert sorted(_lines(done.stdout)) == ["web1: hi", "web2: hi"]


async def test_a_line_written_in_pieces_is_never_broken_into_by_another_node(fleet, profile, login):
    done = await jumpgate(profile, "ssh", f"{login.name}@env=prod",
                          "for i in 1 2 3; do printf 'aaaa'; sleep 0.02; printf 'bbbb\\n'; done; printf tail")
    assert done.returncode == 0, done.stderr
    assert sorted(_lines(done.stdout)) == sorted([f"{n}: aaaabbbb" for n in ("db1", "web1", "web2")] * 3
                                                 + [f"{n}: tail" for n in ("db1", "web1", "web2")])


async def test_failures_give_a_non_zero_status_and_a_summary(fleet, profile, login):
    done = await jumpgate(profile, "ssh", f"{login.name}@env=prod", "test $(id -u) = 0")   # runs, fails everywhere
    assert done.returncode == 1 and _lines(done.stderr)[0] == "jumpgate: 3 of 3 nodes failed:"
    fleet.register("web3", f"{LOOPBACK}:1", env="prod", role="web")        # registered, but nothing listens
    done = await jumpgate(profile, "ssh", f"{login.name}@role=web", "echo ran; exit 3")
    assert done.returncode == 255, done.stderr                          # a node could not be reached
    assert sorted(_lines(done.stdout)) == ["web1: ran", "web2: ran"]
    err = _lines(done.stderr)
    assert err[0] == "jumpgate: 3 of 3 nodes failed:"
    assert err[1:3] == ["  web1: exit status 3", "  web2: exit status 3"]
    assert err[3] == "  web3: cannot reach node 'web3': node 'web3' at 127.0.0.1:1 is unreachable: Connection refused"


async def test_offline_nodes_are_left_out_as_ls_leaves_them(fleet, profile, login):
    fleet.nodes[-1]["offline"] = True                                  # web1, added last
    done = await jumpgate(profile, "ssh", f"{login.name}@role=web", "echo hi")
    assert done.returncode == 0 and _lines(done.stdout) == ["web2: hi"]


async def test_max_parallel_bounds_how_many_nodes_run_at_once(fleet, profile, login):
    """A lock directory in the shared home: mkdir fails if another node holds it."""
    command = "mkdir ~/lock && sleep 0.1 && rmdir ~/lock"
    done = await jumpgate(profile, "ssh", "--max-parallel", "1", f"{login.name}@env=prod", command)
    assert done.returncode == 0, done.stderr
    done = await jumpgate(profile, "ssh", "--max-parallel", "0", f"{login.name}@env=prod", "true")
    assert done.returncode == 255 and b"--max-parallel" in done.stderr


async def test_without_a_command_a_shell_opens_only_on_a_single_match(fleet, profile, login):
    done = await jumpgate(profile, "ssh", f"{login.name}@role=db", input=b"echo in-shell; exit 4\n")
    assert done.returncode == 4 and done.stdout == b"in-shell\n", done.stderr
    done = await jumpgate(profile, "ssh", f"{login.name}@role=web")
    assert done.returncode == 255
    assert done.stderr == (b"jumpgate: role=web matches 2 nodes (web1, web2): name one for a shell, "
                           b"or give a command to run on all of them\n")
    done = await jumpgate(profile, "ssh", f"{login.name}@role=none", "true")
    assert done.returncode == 255 and b"no node matches role=none" in done.stderr


async def test_single_node_flags_are_refused_with_a_command_on_a_selector(fleet, profile, login):
    done = await jumpgate(profile, "ssh", "-t", f"{login.name}@env=prod", "true")
    assert done.returncode == 255 and b"-t need one node" in done.stderr and done.stderr.count(b"\n") == 1


def test_a_selector_takes_a_login_before_its_first_equals_sign():
    assert parse_selector("env=prod") == (None, {"env": "prod"})
    assert parse_selector("root@env=prod,role=db") == ("root", {"env": "prod", "role": "db"})
    assert parse_selector("owner=ops@example.com") == (None, {"owner": "ops@example.com"})
    with pytest.raises(LabelError):
        parse_selector("env=a,env=b")


def test_the_summary_and_status_say_which_nodes_failed_and_how():
    assert summary([NodeResult("a", 0), NodeResult("b", 0)]) == (0, "")
    assert summary([NodeResult("a", 0), NodeResult("b", 2)]) == (1, "jumpgate: 1 of 2 nodes failed:\n  b: exit status 2\n")
    status, report = summary([NodeResult("a", 2), NodeResult("b", error="killed by signal KILL")])
    assert status == 255 and report.endswith("  b: killed by signal KILL\n")
