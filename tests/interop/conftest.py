"""Fixtures running the real OpenSSH beside the code under test.

- ``ssh_user`` (session): a throw-away account with ``/bin/sh`` and a temp home, one per
  xdist worker; tests never log in as root (root's bashrc runs pyenv: ~100 ms a session).
- ``ssh_keys`` (session): :class:`openssh.KeyFactory`, keys and certificates by ssh-keygen.
- ``start_sshd`` (test): ``start_sshd(**options) -> SshdHandle``, options as for
  :func:`openssh.start_sshd`; every sshd it starts is stopped after the test, and when the
  test fails the tail of each sshd's DEBUG3 log is added to the report.
- ``sshd`` (test): one sshd with the defaults (the ed25519 user key authorized).

Helpers for test modules are in ``openssh.py`` (``from openssh import run_ssh``: this
directory is on sys.path under pytest's default import mode).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import openssh

_HANDLES = pytest.StashKey[list[openssh.SshdHandle]]()


@pytest.fixture(scope="session")
def interop_dir() -> Iterator[Path]:
    """A session directory every account can traverse (sshd reads authorized_keys as the user)."""
    path = Path(tempfile.mkdtemp(prefix="jgt_interop_"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ssh_user() -> Iterator[openssh.ThrowawayUser]:
    openssh.sweep_stale_users()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    user = openssh.create_throwaway_user(openssh.throwaway_user_name(worker))
    yield user
    openssh.remove_throwaway_user(user)


@pytest.fixture(scope="session")
def ssh_keys(interop_dir: Path) -> openssh.KeyFactory:
    _require_openssh()
    return openssh.KeyFactory(interop_dir / "keys")


@pytest.fixture
def start_sshd(
    request: pytest.FixtureRequest,
    ssh_user: openssh.ThrowawayUser,
    ssh_keys: openssh.KeyFactory,
    interop_dir: Path,
) -> Iterator[Callable[..., openssh.SshdHandle]]:
    _require_openssh()
    handles = request.node.stash.setdefault(_HANDLES, [])
    count = 0

    def start(**options: object) -> openssh.SshdHandle:
        nonlocal count
        count += 1
        workdir = Path(tempfile.mkdtemp(prefix=f"sshd{count}_", dir=interop_dir))
        handle = openssh.start_sshd(workdir, ssh_user, ssh_keys, **options)  # type: ignore[arg-type]
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()
    for handle in handles:
        shutil.rmtree(handle.workdir, ignore_errors=True)


@pytest.fixture
def sshd(start_sshd: Callable[..., openssh.SshdHandle]) -> openssh.SshdHandle:
    return start_sshd()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.failed and report.when in ("setup", "call"):
        for handle in item.stash.get(_HANDLES, []):
            report.sections.append((f"sshd on port {handle.port}: log tail", handle.log_tail()))
    return report


def _require_openssh() -> None:
    # A missing OpenSSH is a broken test machine, not a reason to skip: fail loudly.
    try:
        openssh.require_openssh()
    except openssh.OpensshMissing as exc:
        pytest.fail(str(exc), pytrace=False)
