"""The cluster's recording setting, as a node applies it."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from .recorder import MIN_FREE_BYTES

__all__ = ["RECORDING_MODES", "RecordingSettings"]

#: ``recording = "node"`` (the node records every shell and exec: the default), ``"proxy"``
#: (the proxy records, for agentless nodes: not built yet, so such nodes record nothing) or
#: ``"off"``.
RECORDING_MODES = ("node", "proxy", "off")


@dataclasses.dataclass(frozen=True, slots=True)
class RecordingSettings:
    """Where and how a node records: ``root`` is its recordings directory (0700)."""

    root: Path
    mode: str = "node"
    record_input: bool = False
    min_free: int = MIN_FREE_BYTES
    #: Called when a chunk is sealed or a session ends (wakes the uploader).
    on_sealed: Callable[[], None] = lambda: None

    def __post_init__(self) -> None:
        if self.mode not in RECORDING_MODES:
            raise ValueError(f"recording must be one of {', '.join(RECORDING_MODES)}")
