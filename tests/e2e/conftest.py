"""Fixtures for the end-to-end suite: the built pyz, a throw-away OS login, one cluster per module.

- ``jg`` (session): :class:`_cluster.Jumpgate` on this worker's copy of ``dist/jumpgate.pyz``
  (built once under a file lock, see :func:`_cluster.build_pyz`; ``JUMPGATE_E2E_PYZ=FILE``
  tests that pyz instead).
- ``os_user`` (session): an OS account with ``/bin/sh`` (tests never log in as root: its
  bashrc runs pyenv), removed at the end with any process left running as it.
- ``keys`` (session): :class:`openssh.KeyFactory` (ssh-keygen keys, a rogue CA...).
- ``cluster`` (module): the all-in-one appliance on free loopback ports, ``--public-addr
  127.0.0.1``; stopped at the end of the module.
- ``new_client`` (function): ``new_client() -> Client`` with a fresh ``$JUMPGATE_HOME``.

When a test fails, the tail of the log of every daemon it used is added to the report.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))

import openssh  # noqa: E402  (tests/interop/openssh.py: throw-away users, sshd, KeyFactory)
from _cluster import Client, Cluster, Jumpgate, build_pyz  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def jg(tmp_path_factory: pytest.TempPathFactory) -> Jumpgate:
    return Jumpgate(build_pyz(tmp_path_factory.mktemp("pyz")))


@pytest.fixture(scope="session")
def os_user() -> Iterator[openssh.ThrowawayUser]:
    openssh.require_openssh()
    openssh.sweep_stale_users()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    user = openssh.create_throwaway_user(openssh.throwaway_user_name(f"e2e{worker}"))
    yield user
    openssh.remove_throwaway_user(user)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> openssh.KeyFactory:
    directory = tmp_path_factory.mktemp("keys")
    directory.chmod(0o755)
    return openssh.KeyFactory(directory / "k")


@pytest.fixture(scope="module")
def cluster(jg: Jumpgate, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(jg, tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


@pytest.fixture
def new_client(jg: Jumpgate, cluster: Cluster, tmp_path: Path) -> Callable[[], Client]:
    count = 0

    def make() -> Client:
        nonlocal count
        count += 1
        return Client(jg, tmp_path / f"home{count}", cluster)

    return make


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.failed and report.when in ("setup", "call"):
        # every fixture the test used, module ones included: cluster, node2, sshnode...
        for name, value in getattr(item, "funcargs", {}).items():
            if hasattr(value, "log_tail"):
                report.sections.append((f"log tail of {name}", value.log_tail()))
    return report
