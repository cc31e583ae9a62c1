"""How Jumpgate writes a moment for people: one format, ``2026-12-02 10:00:00 UTC``.

What the cluster's side prints (``jumpgate ctl``, the logs, the invite page, a refused
join) is in UTC, so that admins in several time zones read the same line; what a user's
own commands print about their own certificate (``login``, ``status``, a connection refused
for an expired certificate) is in the local time zone, in the same shape, with the zone's
name. Machines read epoch seconds (``--format json``), never these strings.

>>> format_time(1_700_000_000)
'2023-11-14 22:13:20 UTC'
>>> format_time(2**64 - 1)        # a certificate valid "forever"
'6325-04-08 15:04:32 UTC'
"""
from __future__ import annotations

import time

__all__ = ["FORMAT", "format_time"]

FORMAT = "%Y-%m-%d %H:%M:%S"
#: Later moments are shown as this one (year 6325): OpenSSH's "forever" is 2**64 - 1.
LATEST = 2**37


def format_time(epoch: float, *, local: bool = False) -> str:
    """``epoch`` as ``YYYY-MM-DD HH:MM:SS ZONE``: UTC, or the local zone when ``local``."""
    moment = min(max(float(epoch), 0.0), float(LATEST))
    if local:
        return time.strftime(f"{FORMAT} %Z", time.localtime(moment))
    return time.strftime(FORMAT, time.gmtime(moment)) + " UTC"
