"""Large CPU buffers are kept for reuse instead of being handed back to the OS after every batch (glibc).

glibc serves an allocation above its mmap threshold (which adapts, up to 32 MB) with a fresh memory mapping
and unmaps it when it is freed, so every forward pass touches the pages of its large activations anew and
the kernel zeroes them first. Measured on this project's CPU (`python benchmarks/allocator.py`): Lite2's
features of 8 images at 288×720 took 653 ms with 245,873 page faults per pass, 390 ms with none once the
heap serves them (189 against 137 ms at 288²). `keep_freed_memory` does that for the whole process:
allocations below 256 MB come from the heap (a fixed ``M_MMAP_THRESHOLD``; a batch's largest activation
at 288×720 is about 53 MB for 8 images), and freed memory is kept unless more than 1 GiB lies free at the
heap's top (``M_TRIM_THRESHOLD``). Larger one-off arrays are still mapped and go back to the OS when
freed. The process keeps its high-water mark of batch-sized buffers instead of returning them between
batches: the default MTD training's peak RAM rose from 3.7 to 4.4 GB at 288² and from 7.9 to 8.7 GB at
288×720 (10.8 GB when no allocation was mapped at all, the first version of this setting;
docs/benchmarks.md).

The `glass` command calls it at start; a program that uses the library may call it too. It does nothing
where the C library is not glibc, where ``GLASS_KEEP_FREED_MEMORY=0`` is set, or where the user set glibc's
own ``MALLOC_MMAP_MAX_`` / ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (their choice stands).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 30
MMAP_THRESHOLD = 256 << 20  # above: a mapping of its own, returned when freed (one-off arrays)
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc to serve allocations below `MMAP_THRESHOLD` from the heap and to keep freed memory (once per
    process); returns whether the setting is in force."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("GLASS_KEEP_FREED_MEMORY", "1") == "0" or any(name in os.environ for name in _USER_SETTINGS):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trimmed = bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        _applied = trimmed and bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # no usable C library: nothing to tune
        _applied = False
    return _applied
