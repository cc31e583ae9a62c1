"""ssh_proto passes mypy (pyproject.toml's [tool.mypy]; `make typecheck` runs the same), so the
annotations py.typed promises its users' checkers are ones a checker accepts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ssh_proto_passes_mypy():
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / ".mypy_cache")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
