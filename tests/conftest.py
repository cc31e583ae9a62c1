"""Root of the test tree: the markers every directory may use, and ``sock_dir``.

Other fixtures live beside the tests that use them (``tests/interop/conftest.py`` for OpenSSH).
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "interop: runs the real OpenSSH binaries (ssh, sshd, sftp, ssh-keygen)")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short private directory for the Unix sockets a test creates: sun_path holds 107 bytes,
    and ``tmp_path`` under a long $TMPDIR may leave too few."""
    path = Path(tempfile.mkdtemp(prefix="jg", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
