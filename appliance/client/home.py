"""Where the client's profile lives: ``$JUMPGATE_HOME``, else ``~/.jumpgate`` (standard library only).

:func:`home_dir` is a plain string so that the thin ``jumpgate ssh`` need not import pathlib.
"""
from __future__ import annotations

import os

__all__ = ["CERT_NAME", "ENV_HOME", "home_dir", "jumpgate_home"]

ENV_HOME = "JUMPGATE_HOME"
CERT_NAME = "key-cert.pub"


def home_dir() -> str:
    """``$JUMPGATE_HOME`` if set, else ``~/.jumpgate``."""
    return os.path.expanduser(os.environ.get(ENV_HOME) or "~/.jumpgate")


def jumpgate_home():
    """:func:`home_dir` as a :class:`pathlib.Path`."""
    from pathlib import Path
    return Path(home_dir())
