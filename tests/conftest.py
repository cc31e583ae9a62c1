"""Root of the test tree: the markers every directory may use, the Hypothesis profiles, and
``sock_dir``.

Other fixtures live beside the tests that use them (``tests/interop/conftest.py`` for OpenSSH).

Hypothesis: with ``CI=true`` the ``ci`` profile is loaded (random examples, no example
database, every failure printed with its reproduction blob). Every run draws one seed for all
Hypothesis tests, shared by the xdist workers through ``JUMPGATE_HYPOTHESIS_SEED`` and shown in
the report header, so a failure seen in CI is replayed locally with ``--hypothesis-seed=N``.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, core, settings

SEED_VARIABLE = "JUMPGATE_HYPOTHESIS_SEED"

settings.register_profile(
    "ci", deadline=None, database=None, derandomize=False, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "interop: runs the real OpenSSH binaries (ssh, sshd, sftp, ssh-keygen)")
    core.global_force_seed = _run_seed(config)


def _run_seed(config: pytest.Config) -> int:
    """The seed of this run: ``--hypothesis-seed`` if given, else the controller's draw, which
    the workers (started after this hook) inherit from the environment."""
    given = config.getoption("hypothesis_seed", None)
    if given is not None:
        seed = int(given)
    else:
        seed = int(os.environ.get(SEED_VARIABLE) or secrets.randbelow(2**32))
    os.environ[SEED_VARIABLE] = str(seed)
    return seed


def pytest_report_header(config: pytest.Config) -> str:
    seed = os.environ[SEED_VARIABLE]
    return (f"hypothesis seed {seed} (profile {settings.get_current_profile_name()!r}): "
            f"reproduce with --hypothesis-seed={seed}")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short private directory for the Unix sockets a test creates: sun_path holds 107 bytes,
    and ``tmp_path`` under a long $TMPDIR may leave too few."""
    path = Path(tempfile.mkdtemp(prefix="jg", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    # the header is hidden by -q (as `make test` runs): say it again at the end
    terminalreporter.write_line(pytest_report_header(config))
