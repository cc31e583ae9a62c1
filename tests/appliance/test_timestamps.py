"""One way to write a moment for people (appliance/timestamps.py): UTC on the cluster's side,
the user's zone for their own certificate, the same shape everywhere."""
from __future__ import annotations

import os
import time

import pytest

from appliance.timestamps import format_time

NOW = 1_700_000_000


@pytest.fixture
def paris():
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Paris"
    time.tzset()
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_the_cluster_side_writes_utc_to_the_second():
    assert format_time(NOW) == "2023-11-14 22:13:20 UTC"
    assert format_time(NOW + 0.9) == "2023-11-14 22:13:20 UTC"


def test_the_users_own_certificate_is_in_their_zone_in_the_same_shape(paris):
    assert format_time(NOW, local=True) == "2023-11-14 23:13:20 CET"


def test_forever_and_negative_times_do_not_crash():
    assert format_time(2**64 - 1).startswith("6325-")
    assert format_time(-5) == "1970-01-01 00:00:00 UTC"


def test_every_printer_of_a_moment_uses_it(paris):
    from appliance.cli import account, ctl
    from appliance.client import ssh
    from appliance.web import pages
    assert ctl._when(NOW) == pages._when(NOW) == format_time(NOW)
    assert ctl._when(0) == "-"   # a node that never heartbeat
    assert account._when(NOW) == ssh._when(NOW) == format_time(NOW, local=True)
