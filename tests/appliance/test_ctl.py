"""``jumpgate ctl`` as an admin types it, on the auth host (the local backend): one-line errors,
never a traceback (issue 14 item 4)."""
from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import pytest
import trio

from _ctl_helpers import ctl, data_dir  # noqa: F401  (data_dir is a fixture)
from appliance.storage import SQLiteStorage


def nodes(data_dir: Path, capsys) -> dict[str, list[str]]:
    status, out, _ = ctl(data_dir, capsys, "nodes", "ls")
    assert status == 0
    return {row.split()[0]: row.split()[1:] for row in out.splitlines()[1:]}


def test_nodes_add_with_a_malformed_label_is_one_line_not_a_traceback(data_dir, capsys):
    status, _, err = ctl(data_dir, capsys, "nodes", "add", "--name", "web1", "--addr", "10.0.0.7:22",
                         "--labels", "bad")
    assert status == 1 and "Traceback" not in err
    assert err.strip().splitlines() == ["jumpgate: --labels: bad label 'bad': expected key=value "
                                        "(several: key=value,key=value)"]
    assert "web1" not in nodes(data_dir, capsys)


def test_nodes_add_refuses_a_key_given_twice(data_dir, capsys):
    status, _, err = ctl(data_dir, capsys, "nodes", "add", "--name", "web1", "--addr", "10.0.0.7:22",
                         "--labels", "env=a,env=b")
    assert status == 1 and "given twice" in err and "web1" not in nodes(data_dir, capsys)


def test_re_adding_an_openssh_node_is_refused_and_keeps_its_labels_until_nodes_update(data_dir, capsys):
    assert ctl(data_dir, capsys, "nodes", "add", "--name", "web1", "--addr", "10.0.0.7:22",
               "--labels", "env=prod,team=web")[0] == 0
    status, _, err = ctl(data_dir, capsys, "nodes", "add", "--name", "web1", "--addr", "10.0.0.8:22")
    assert status == 1 and "ctl nodes update" in err
    assert nodes(data_dir, capsys)["web1"][:3] == ["10.0.0.7:22", "openssh", "env=prod,team=web"]
    status, out, _ = ctl(data_dir, capsys, "nodes", "update", "--name", "web1", "--addr", "10.0.0.8:22")
    assert status == 0 and "env=prod,team=web" in out
    assert ctl(data_dir, capsys, "nodes", "update", "--name", "web1", "--labels", "env=dev")[0] == 0
    assert nodes(data_dir, capsys)["web1"][:3] == ["10.0.0.8:22", "openssh", "env=dev"]
    status, _, err = ctl(data_dir, capsys, "nodes", "update", "--name", "web1")
    assert status == 1 and "--addr or --labels" in err


def test_nodes_add_with_a_bad_port_says_which(data_dir, capsys):
    status, _, err = ctl(data_dir, capsys, "nodes", "add", "--name", "web1", "--addr", "10.0.0.7:99999")
    assert status == 1 and "'10.0.0.7:99999'" in err and "1-65535" in err


def _set_user(data_dir: Path, **changes) -> None:
    """Change alice's stored record as a lockout (or a signup) would have left it."""
    async def change() -> None:
        storage = SQLiteStorage(data_dir / "auth" / "jumpgate.db")
        try:
            record = await storage.get_user("alice")
            await storage.put_user(dataclasses.replace(record, **changes))
        finally:
            await storage.aclose()
    trio.run(change)


def _stored_alice(data_dir: Path):
    async def get():
        storage = SQLiteStorage(data_dir / "auth" / "jumpgate.db")
        try:
            return await storage.get_user("alice")
        finally:
            await storage.aclose()
    return trio.run(get)


def test_users_unlock_lifts_the_lock_keeps_password_and_totp_and_is_audited(data_dir, capsys):
    status, _, err = ctl(data_dir, capsys, "--web-pin", "sha256:" + "A" * 43, "users", "add", "alice", "--logins", "alice")
    assert status == 0, err
    locked_until = time.time() + 1200
    _set_user(data_dir, password_hash="scrypt$stored", totp_secret="JBSWY3DPEHPK3PXP", failed_logins=0,
              locked_until=locked_until)
    status, out, _ = ctl(data_dir, capsys, "users", "ls")
    row = next(line for line in out.splitlines() if line.startswith("alice"))
    assert re.search(r"locked until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", row), row  # when the lock ends

    status, out, _ = ctl(data_dir, capsys, "users", "unlock", "alice")
    assert status == 0 and "unlocked (it was locked until" in out and "second factor unchanged" in out
    record = _stored_alice(data_dir)
    assert (record.locked_until, record.failed_logins) == (0, 0)
    assert (record.password_hash, record.totp_secret) == ("scrypt$stored", "JBSWY3DPEHPK3PXP")  # no re-enrolment
    assert ctl(data_dir, capsys, "users", "ls")[1].splitlines()[1].split()[-1] == "active"
    events = ctl(data_dir, capsys, "events")[1]
    assert re.search(r"user\.unlock .*user=alice", events) and "actor=ctl:" in events, events
    assert "scrypt$stored" not in events and "JBSWY3DPEHPK3PXP" not in events

    status, out, _ = ctl(data_dir, capsys, "users", "unlock", "alice")
    assert status == 0 and "was not locked" in out
    status, _, err = ctl(data_dir, capsys, "users", "unlock", "nobody")
    assert status != 0 and "no user 'nobody'" in err and "Traceback" not in err
