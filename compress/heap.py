"""Keep the C heap from growing with the data.

glibc serves blocks above its mmap threshold with mmap and gives them back on free, but it raises that threshold (up
to 32 MB) each time such a block is freed. After the first large activation tensor, torch's per-batch buffers of a
few MB come from the heap instead, and freed heap memory is mostly kept. Measured on 40,000 32x32 images: one
prediction pass at batch 512 left the process 650 MB larger; with a fixed threshold, 10 MB (docs/results.md).
Setting the threshold explicitly stops glibc from moving it. DataLoader workers are forked and inherit it; torchrun
workers call this themselves.

It is opt-in (`COMPRESS_LOW_MEMORY=1`): every buffer over 128 KB then costs an mmap and fresh zeroed pages, and
training a 3-layer MiniLM student took 30% more time per step (80-84 vs 112-119 steps in 45 s, alternated runs).
"""
from __future__ import annotations

import os
import sys

MMAP_THRESHOLD = 128 * 1024
"""glibc's initial (default) threshold, now fixed."""
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


def limit_heap_growth() -> bool:
    """Fix glibc's mmap threshold for this process; False where there is no glibc `mallopt` (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


def limit_heap_growth_if_asked() -> bool:
    """limit_heap_growth() when the environment sets COMPRESS_LOW_MEMORY=1 (the CLI and torchrun workers call this)."""
    return os.environ.get("COMPRESS_LOW_MEMORY") == "1" and limit_heap_growth()
