"""``jumpgate ctl`` for operators, on the auth host (the local backend), as an admin types it:
tokens, ``status``, ``--format json``, the audit command and bots (issue 14 items 8, 13, 16, 17)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from _auth_helpers import CLUSTER
from _ctl_helpers import ctl, data_dir  # noqa: F401  (data_dir is a fixture)


def ctl_json(data_dir: Path, capsys, *args: str):
    status, out, err = ctl(data_dir, capsys, *args, "--format", "json")
    assert status == 0, err
    return json.loads(out)


def _printed_token(out: str) -> str:
    return re.search(r"--token (\S+)", out).group(1)


# --------------------------------------------------------------------------- tokens (item 13)

def test_tokens_rm_accepts_the_token_it_printed_and_never_echoes_it(data_dir, capsys):
    status, out, _ = ctl(data_dir, capsys, "tokens", "add", "--type", "node")
    token = _printed_token(out)
    (listed,) = ctl_json(data_dir, capsys, "tokens", "ls")
    status, out, err = ctl(data_dir, capsys, "tokens", "rm", token)
    assert status == 0, err
    assert out.strip() == f"token {listed['id']} removed"
    assert ctl_json(data_dir, capsys, "tokens", "ls") == []
    status, _, err = ctl(data_dir, capsys, "tokens", "rm", token)
    assert status == 1 and token.split(".")[0] not in err and "no token" in err
    events = ctl_json(data_dir, capsys, "audit", "--type", "token.delete")
    assert [e["fields"]["token_id"] for e in events] == [listed["id"]]
    assert token.split(".")[0] not in json.dumps(ctl_json(data_dir, capsys, "audit"))


def test_tokens_rm_accepts_the_id_from_tokens_ls(data_dir, capsys):
    ctl(data_dir, capsys, "tokens", "add", "--type", "proxy")
    (listed,) = ctl_json(data_dir, capsys, "tokens", "ls")
    status, out, _ = ctl(data_dir, capsys, "tokens", "rm", listed["id"])
    assert status == 0 and out.strip() == f"token {listed['id']} removed"
    status, _, err = ctl(data_dir, capsys, "tokens", "rm", listed["id"])
    assert status == 1 and f"no token '{listed['id']}'" in err


def test_the_printed_join_command_carries_the_labels_and_name_asked_for(data_dir, capsys):
    status, out, _ = ctl(data_dir, capsys, "tokens", "add", "--type", "node", "--name", "db1",
                         "--labels", "team=db,env=dev")
    assert status == 0
    line = next(l.strip() for l in out.splitlines() if l.strip().startswith("jumpgate start"))
    assert re.fullmatch(r"jumpgate start --services node --auth-server 127\.0\.0\.1:3025 --nodename db1 "
                        r"--labels env=dev,team=db --token \S+", line), line
    status, out, _ = ctl(data_dir, capsys, "tokens", "add", "--type", "node")
    assert "--labels" not in next(l for l in out.splitlines() if "jumpgate start" in l)
    assert "add --labels key=value" in out


def test_tokens_add_refuses_a_bad_label_before_making_a_token(data_dir, capsys):
    status, _, err = ctl(data_dir, capsys, "tokens", "add", "--type", "node", "--labels", "bad")
    assert status == 1 and err.startswith("jumpgate: --labels: bad label")
    assert ctl_json(data_dir, capsys, "tokens", "ls") == []


# --------------------------------------------------------------------------- status (item 8)

def test_ctl_status_shows_cluster_cas_pins_and_versions(data_dir, capsys):
    from appliance import __version__
    status, out, err = ctl(data_dir, capsys, "status")
    assert status == 0, err
    report = ctl_json(data_dir, capsys, "status")
    assert report["cluster"] == CLUSTER and report["version"] == __version__
    assert report["host_ca_pin"].startswith("sha256:") and report["user_ca_fingerprint"].startswith("SHA256:")
    assert f"Cluster:      {CLUSTER}" in out and report["host_ca_pin"] in out and report["host_ca_fingerprint"] in out
    # the pin a join token carries is the one status prints
    _, token_out, _ = ctl(data_dir, capsys, "tokens", "add", "--type", "node")
    assert _printed_token(token_out).split(".", 1)[1] == report["host_ca_pin"].removeprefix("sha256:")
    assert report["hosts"] == [] and "none joined" in out


def test_ctl_status_shows_the_web_pin_login_takes_and_probes_services(data_dir, capsys, tmp_path):
    from appliance.web.tls import ensure_web_tls
    tls = ensure_web_tls(data_dir, hostname="127.0.0.1", addresses=["127.0.0.1"])
    import socket
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        state = json.loads((data_dir / "auth" / "cluster.json").read_text())
        state.update(services=["auth", "web"], ports={"auth": port, "web": 1}, listen_addr="0.0.0.0")
        (data_dir / "auth" / "cluster.json").write_text(json.dumps(state))
        report = ctl_json(data_dir, capsys, "status")
    assert report["web_pin"] == tls.pin
    assert [(s["name"], s["state"]) for s in report["services"]] == [("auth", "up"), ("web", "down")]


# --------------------------------------------------------------------------- audit (item 17)

def test_ctl_audit_filters_by_type_family_user_and_since(data_dir, capsys):
    ctl(data_dir, capsys, "users", "add", "alice", "--logins", "alice")
    ctl(data_dir, capsys, "users", "add", "bob", "--logins", "bob")
    ctl(data_dir, capsys, "tokens", "add", "--type", "node")
    assert [e["user"] for e in ctl_json(data_dir, capsys, "audit", "--type", "user.create")] == ["alice", "bob"]
    assert {e["event"] for e in ctl_json(data_dir, capsys, "audit", "--type", "user.*,token.*")} == \
        {"user.create", "token.create"}
    assert [e["event"] for e in ctl_json(data_dir, capsys, "audit", "--user", "bob")] == ["user.create"]
    assert ctl_json(data_dir, capsys, "audit", "--since", "2099-01-01") == []
    assert len(ctl_json(data_dir, capsys, "audit", "--since", "1h")) >= 4   # ca.create x2, users, token
    status, _, err = ctl(data_dir, capsys, "audit", "--type", "user.logn")
    assert status == 1 and "unknown event type 'user.logn'" in err
    status, _, err = ctl(data_dir, capsys, "audit", "--since", "yesterday")
    assert status == 1 and "--since 'yesterday'" in err


def test_ctl_events_is_kept_as_an_alias_of_audit(data_dir, capsys):
    ctl(data_dir, capsys, "users", "add", "alice", "--logins", "alice")
    status, events_out, _ = ctl(data_dir, capsys, "events", "--limit", "5")
    status2, audit_out, _ = ctl(data_dir, capsys, "audit", "--limit", "5")
    assert status == status2 == 0 and events_out == audit_out and "user.create" in audit_out
    assert ctl_json(data_dir, capsys, "events", "--type", "user.create")[0]["user"] == "alice"


def test_every_ctl_listing_takes_format_json(data_dir, capsys):
    ctl(data_dir, capsys, "users", "add", "alice", "--logins", "alice,root", "--roles", "admin")
    ctl(data_dir, capsys, "nodes", "add", "--name", "web1", "--addr", "10.0.0.7:22", "--labels", "env=prod")
    ctl(data_dir, capsys, "tokens", "add", "--type", "node", "--name", "db1")
    (user,) = ctl_json(data_dir, capsys, "users", "ls")
    assert user["name"] == "alice" and user["logins"] == ["alice", "root"] and user["roles"] == ["admin"]
    (node,) = ctl_json(data_dir, capsys, "nodes", "ls")
    assert node["name"] == "web1" and node["labels"] == {"env": "prod"}
    (token,) = ctl_json(data_dir, capsys, "tokens", "ls")
    assert token["name"] == "db1" and "token" not in token and "token_hash" not in token
    assert isinstance(ctl_json(data_dir, capsys, "audit"), list)
    assert ctl_json(data_dir, capsys, "status")["cluster"] == CLUSTER
