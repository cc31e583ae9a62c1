"""A data dir as `jumpgate start` leaves it, and `jumpgate ctl` run on it in process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from _auth_helpers import CLUSTER
from appliance.auth.service import AuthService
from appliance.cli.main import main
from appliance.storage import SQLiteStorage


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A cluster's data dir as `jumpgate start` leaves it (the database and cluster.json)."""
    data = tmp_path / "data"

    async def make() -> None:
        storage = SQLiteStorage(data / "auth" / "jumpgate.db")
        await AuthService.create(storage, CLUSTER)
        await storage.aclose()

    trio.run(make)
    (data / "auth" / "cluster.json").write_text(json.dumps({"cluster": CLUSTER, "host": "127.0.0.1"}))
    return data


def ctl(data_dir: Path, capsys, *args: str) -> tuple[int, str, str]:
    """``jumpgate ctl --data-dir DATA ARGS...``: (exit status, stdout, stderr)."""
    status = main(["ctl", "--data-dir", str(data_dir), *args])
    out, err = capsys.readouterr()
    return status, out, err
