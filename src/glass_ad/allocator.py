"""Large CPU buffers are kept for reuse instead of being handed back to the OS after every batch (glibc).

glibc serves an allocation above its mmap threshold (which adapts, up to 32 MB) with a fresh memory mapping
and unmaps it when it is freed, so every forward pass touches the pages of its large activations anew and
the kernel zeroes them first. Measured on this project's CPU (`python benchmarks/allocator.py`): Lite2's
features of 8 images at 288×720 took 653 ms with 245,873 page faults per pass, 390 ms with none once the
heap serves them (189 against 137 ms at 288²). `keep_freed_memory` does that for the whole process: no mappings for single
allocations (``M_MMAP_MAX = 0``) and freed memory kept unless more than 1 GiB lies free at the heap's top
(``M_TRIM_THRESHOLD``). The process keeps its high-water mark instead of returning memory between
batches, and large one-off arrays stay in the heap too: on MTD the training's peak RAM rose by 0.6 GB at
288² and by 2.9 GB at 288×720 (docs/benchmarks.md).

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
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc to serve large allocations from the heap and keep freed memory (once per process);
    returns whether the setting is in force."""
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
        _applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(libc.mallopt(_M_MMAP_MAX, 0))
    except (OSError, AttributeError):  # no usable C library: nothing to tune
        _applied = False
    return _applied
