"""Root of the test tree: registers the markers every directory may use, nothing else.

Fixtures live beside the tests that use them (``tests/interop/conftest.py`` for OpenSSH).
"""
from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "interop: runs the real OpenSSH binaries (ssh, sshd, sftp, ssh-keygen)")
