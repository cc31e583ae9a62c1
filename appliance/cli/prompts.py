"""Prompts for the interactive commands (signup, login).

On a terminal, ``prompt`` asks on the terminal itself (``getpass`` for secrets, which
turns echo off). Otherwise every call reads exactly one line from standard input, in the
order asked, so a flow can be scripted::

    printf '%s\\n' "$PASSWORD" "$CODE" | jumpgate login --proxy jump:3080 --user alice

The question goes to stderr (stdout stays clean for output); a secret is never echoed.
Secrets are never taken from argv, where other users can read them (ps, /proc).
"""
from __future__ import annotations

import getpass
import sys

from .errors import CliError

__all__ = ["prompt"]

MAX_ANSWER = 4096


def _read_line(text: str) -> str:
    sys.stderr.write(text)
    sys.stderr.flush()
    line = sys.stdin.readline(MAX_ANSWER + 1)
    if not line:
        raise CliError(f"no answer on standard input for {text.strip().rstrip(':')!r}")
    if len(line) > MAX_ANSWER:
        raise CliError("answer on standard input is too long")
    sys.stderr.write("\n")  # nothing was echoed: end the prompt's line ourselves
    return line.removesuffix("\n").removesuffix("\r")


def _ask_terminal(text: str, secret: bool) -> str:
    try:
        return getpass.getpass(text) if secret else input(text)
    except EOFError:
        raise CliError("no answer given") from None
    except KeyboardInterrupt:
        raise CliError("interrupted") from None


def prompt(text: str, *, secret: bool = False) -> str:
    """Ask ``text`` and return the answer without its line ending.

    Raises :class:`CliError` when standard input ends before an answer.
    """
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        return _ask_terminal(text, secret)
    if stdin is None:
        raise CliError(f"no standard input to answer {text.strip().rstrip(':')!r}")
    return _read_line(text)
