"""Where the client's profile lives: ``$JUMPGATE_HOME``, else ``~/.jumpgate`` (standard library only)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_HOME", "jumpgate_home"]

ENV_HOME = "JUMPGATE_HOME"


def jumpgate_home() -> Path:
    """``$JUMPGATE_HOME`` if set, else ``~/.jumpgate``."""
    return Path(os.environ.get(ENV_HOME) or "~/.jumpgate").expanduser()
