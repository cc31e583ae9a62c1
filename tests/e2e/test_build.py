"""Building the pyz as a newcomer does: ``make demo`` rebuilds only what changed, works without a
package index once it has built once, and a failed build says why and keeps the working pyz.

Each build writes to a temporary ``OUT`` (the suite's own ``dist/jumpgate.pyz`` is left to the
e2e harness); "no package index" is pip with an unreachable index and no configuration files.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "build_pyz.sh"
WHEELS = REPO / "build" / "_wheels"
OFFLINE = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_CONFIG_FILE": os.devnull,
           "PIP_FIND_LINKS": ""}
BUILD_TIMEOUT = 600  # a build takes ~15 s here


def build(out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(BUILD)], cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                          env={**os.environ, "PY": sys.executable, "OUT": str(out), **env})


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A pyz built the normal way (with the index if the wheel cache lacks something)."""
    out = tmp_path_factory.mktemp("pyz") / "jumpgate.pyz"
    done = build(out)
    assert done.returncode == 0, done.stderr
    return out


def test_rebuild_without_a_package_index_works_from_the_wheel_cache(built: Path, tmp_path: Path):
    out = tmp_path / "jumpgate.pyz"
    done = build(out, **OFFLINE)
    assert done.returncode == 0, done.stderr
    version = subprocess.run([sys.executable, str(out), "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("jumpgate ")


def test_failed_build_says_why_and_leaves_the_old_pyz(built: Path, tmp_path: Path):
    out = tmp_path / "jumpgate.pyz"
    out.write_bytes(built.read_bytes())
    before = digest(out)
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    done = build(out, JUMPGATE_WHEELS=str(empty), **OFFLINE)
    assert done.returncode != 0
    assert "no package index reachable" in done.stderr and "left as it was" in done.stderr, done.stderr
    assert "No matching distribution" in done.stderr  # pip's own reason, quoted
    assert digest(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".jumpgate.pyz")] == []  # no debris


def test_make_rebuilds_the_pyz_only_when_a_source_changed(jg):
    # ``jg`` built dist/jumpgate.pyz if any source was newer: make must now agree it is up to date
    def planned(*touched: str) -> str:
        argv = ["make", "-n", "dist/jumpgate.pyz", *[f"-W{path}" for path in touched]]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60).stdout

    assert "build_pyz.sh" not in planned(), "nothing changed, yet make would rebuild"
    for source in ("web_static/README.md", "ssh_proto/wire.py", "appliance/cli/main.py", "pyproject.toml"):
        assert "build_pyz.sh" in planned(source), source
    assert "build_pyz.sh" not in planned("tests/conftest.py", "README.md")


def test_the_pyz_carries_the_web_uis_files_as_package_data(built: Path):
    """appliance/web/static.py reads web_static with importlib.resources: the wheel, and so the
    pyz, must carry it (tests/e2e/test_web_ui.py then loads the pages from the running pyz)."""
    import zipfile
    names = set(zipfile.ZipFile(built).namelist())
    for name in ("__init__.py", "app.css", "common.js", "login.js", "nodes.js", "signup.js"):
        assert f"site-packages/web_static/{name}" in names, name
