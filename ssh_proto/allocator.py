"""Opt-in tuning of glibc's allocator for bulk transfers.

With glibc's defaults, freed buffers of a few hundred KiB (our receive and packet
buffers) go back to the kernel and are page-faulted in again on the next allocation;
measured on the packet layer at 256 KiB this halved throughput. Raising the trim and
mmap thresholds keeps them in the heap. A process-wide setting, so a library must not
make it behind its user's back: applications (the jumpgate binary, benchmarks) call
:func:`tune_allocator` once at start. A no-op where glibc is not the allocator.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(trim_threshold: int = 64 << 20, mmap_threshold: int = 4 << 20) -> bool:
    """Keep freed buffers up to ``mmap_threshold`` in the heap; True if applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
