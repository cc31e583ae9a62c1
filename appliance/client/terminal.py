"""The local terminal as ``jumpgate ssh`` sees it (standard library only).

Shared by the in-process session (``cli/remote.py``) and the thin client that hands its
terminal to the session daemon (``muxclient.py``), which must start without Trio:
raw mode for a remote pty, the window size, and the environment a session carries
(TERM, LANG and LC_*, as OpenSSH's default ``SendEnv``), and the blocking flags of
shared open files, which Trio's FdStream changes.
"""
from __future__ import annotations

import contextlib
import os
import termios
import tty
from collections.abc import Iterator, Mapping, Sequence

__all__ = ["blocking_restored", "raw_terminal", "session_env", "terminal_size", "term_name"]


@contextlib.contextmanager
def raw_terminal(fd: int, enabled: bool) -> Iterator[None]:
    """Raw mode (no echo, no line editing, no local signals) for a remote pty; restored on exit."""
    if not enabled:
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSADRAIN)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size() -> tuple[int, int]:
    """(columns, rows) of the first standard stream that is a terminal, else 80x24."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.columns, size.lines
    return 80, 24


def session_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a session passes on: LANG and LC_*."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k == "LANG" or k.startswith("LC_")}


def term_name(environ: Mapping[str, str] | None = None) -> str:
    return (os.environ if environ is None else environ).get("TERM", "xterm")


@contextlib.contextmanager
def blocking_restored(fds: Sequence[int]) -> Iterator[None]:
    """Record the blocking flag of each fd's open file and put it back on exit."""
    saved = {}
    for fd in fds:
        with contextlib.suppress(OSError):
            saved[fd] = os.get_blocking(fd)
    try:
        yield
    finally:
        for fd, blocking in saved.items():
            with contextlib.suppress(OSError):
                os.set_blocking(fd, blocking)
