"""Accepting TCP connections without dying of a full descriptor table (docs/security.md L1).

:func:`accept_loop` is what every listener of ssh_proto runs — the SSH listener and the
listening end of port forwards. ``accept()`` failing with EMFILE, ENFILE, ENOBUFS or ENOMEM
means "out of resources right now" (the same list as ``trio.serve_listeners``): the loop
waits :data:`ACCEPT_RETRY` seconds and tries again, so the connections the process already
has keep being served, and it accepts again once a descriptor is free. It logs one warning
when that starts, one every :data:`ACCEPT_LOG_INTERVAL` seconds while it lasts (the retries
between are counted, not logged: a peer must not be able to fill the log), and one when
accepting works again. Any other error from ``accept()`` ends the loop.
"""
from __future__ import annotations

import errno
import logging
import os
from typing import Callable

import trio

__all__ = ["ACCEPT_CAPACITY_ERRNOS", "ACCEPT_LOG_INTERVAL", "ACCEPT_RETRY", "accept_loop"]

log = logging.getLogger("ssh_proto.server")

#: accept(2) errors that mean "out of resources right now" (trio.serve_listeners' list)
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY = 0.1            # seconds between accept() attempts while they fail so
ACCEPT_LOG_INTERVAL = 10.0    # one log line per this long while they do


async def accept_loop(listener: trio.SocketListener, on_stream: Callable[[trio.SocketStream], None],
                      *, on_failure: Callable[[], None] | None = None) -> None:
    """Accept on ``listener`` forever, handing each stream to ``on_stream`` (synchronous: it
    starts a task or closes the stream); ``on_failure`` is told of each failed accept."""
    where = _where(listener)
    failures = 0
    logged_at: float | None = None
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            failures += 1
            if on_failure is not None:
                on_failure()
            now = trio.current_time()
            if logged_at is None or now - logged_at >= ACCEPT_LOG_INTERVAL:
                log.warning("accept on %s failed: %s (%s); serving the open connections and retrying every %gs",
                            where, os.strerror(exc.errno), errno.errorcode[exc.errno], ACCEPT_RETRY)
                logged_at = now
            await trio.sleep(ACCEPT_RETRY)
            continue
        if logged_at is not None:
            log.warning("accept on %s works again (%d attempts failed)", where, failures)
            failures, logged_at = 0, None
        on_stream(stream)


def _where(listener: trio.SocketListener) -> str:
    try:
        address = listener.socket.getsockname()
    except OSError:
        return "a listener"
    return f"{address[0]} port {address[1]}"
