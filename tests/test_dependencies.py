"""Every dependency pyproject.toml declares is used: imported by the code or the tests, or
named below with the reason it is not (a declared dependency nothing uses is weight in every
install and a package to keep patched for nothing)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Declared, and used without an ``import`` of its own name in our code.
NOT_IMPORTED = {
    "bcrypt": "cryptography loads it for OpenSSH private keys encrypted with the bcrypt KDF",
    "trio-websocket": "the browser UI (a later issue) will serve its terminal over it",
    "pytest-trio": "a pytest plugin (trio_mode in pyproject.toml)",
    "pytest-xdist": "a pytest plugin (make test runs -n 2)",
    "pytest-timeout": "a pytest plugin (timeout in pyproject.toml)",
    "ssh-audit": "a command the interop tests run",
    "shiv": "the command build/build_pyz.sh runs",
    "mypy": "a command tests/test_typecheck.py runs (make typecheck)",
    "pdoc": "the command make docs runs",
    "playwright": "imported by the browser test through pytest.importorskip (tests/e2e/test_web_ui.py)",
    "asciinema": "a command the recording tests run (the real player reads our asciicast export)",
}


def _declared() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    return [re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower() for spec in specs]


def _imported() -> set[str]:
    found: set[str] = set()
    for folder in ("appliance", "ssh_proto", "tests", "build"):
        for path in (ROOT / folder).rglob("*.py"):
            if "_work" in path.parts or "lib" in path.parts or "bdist.linux-x86_64" in path.parts:
                continue
            found |= set(re.findall(r"^\s*(?:import|from)\s+([A-Za-z0-9_]+)", path.read_text(), re.M))
    return found


def test_every_declared_dependency_is_imported_or_says_why_not():
    imported = _imported()
    unused = [name for name in _declared()
              if name not in NOT_IMPORTED and name.replace("-", "_") not in imported]
    assert not unused, f"declared but imported by nothing: {unused}"


def test_the_reasons_above_are_for_declared_dependencies():
    assert set(NOT_IMPORTED) <= set(_declared())
