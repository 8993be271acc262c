"""Keep the C heap from growing with the data, without slowing training down.

glibc serves blocks above its mmap threshold with mmap and gives them back on free. But each time such a block is
freed, glibc raises the threshold to that block's size, up to 32 MB. After one large prediction batch, every buffer
below 32 MB comes from the heap. The heap then fragments around the small outputs a pass keeps, and the freed memory
stays with the process. Measured: a prediction pass over 40,000 32x32 images at batch 512 left the process 650 MB
larger in a pipeline, and 340 MB larger with a bare cnn-small loop (docs/results.md).

What compress does by default: it leaves glibc's threshold alone (training buffers stay on the heap and are reused,
the fastest) and watches the passes that grow: a prediction pass (`predict`: the teacher's output cache, validation)
or an ONNX Runtime pass over a split (export parity, the gates, the benchmark's figures) checks the process's RSS
after each batch, and once it has grown by GROWTH_BYTES since the pass began, gives the heap's free pages back with
`malloc_trim(0)`, which also returns free pages in the middle of the heap (madvise): fragmentation no longer holds
memory. A pass that does not grow trims nothing, so the training buffers it finds free stay mapped for the next epoch
(trimming them at every epoch's end made a MobileNet-style student's 20-step epochs 4-10% slower, re-faulting them).
Training steps are watched the same way from their second step on (`StepWatch`, once the working set is allocated):
steps reuse their buffers, so only a heap that fragments past the working set is trimmed (one 50k-image run grew
90 MB in its distill epoch without it).

The alternatives, measured (docs/results.md, `benchmarks/bench_train.py heap` and `bench_data.py memory`):
- a fixed 8 MB threshold (the default until 2026-12-05, `COMPRESS_MMAP_THRESHOLD=8388608`): flat memory, but every
  activation above 8 MB is mapped and zeroed afresh each step: a MobileNet-style student trained 1.75x slower per
  step, cnn-large width 16 25-30% slower;
- 128 KB (`COMPRESS_LOW_MEMORY=1`, the strictest): 2.0-2.3x slower training on the image CNNs;
- glibc's own behaviour (`COMPRESS_LOW_MEMORY=0`: nothing set, nothing trimmed): the same speed as the default,
  memory that grows with the data (2.66x at 50k images in one loaded run);
- jemalloc preloaded (LD_PRELOAD; Debian's libjemalloc2): flat memory, but cnn-large trained 1.3-1.6x slower.
  tcmalloc could not be installed where this was measured. With either preloaded, `malloc_trim` is not the
  allocator's and `release()` does nothing.

The CLI and each torchrun worker call `limit_heap_growth_for_run()`; DataLoader workers are forked and inherit it.
"""
from __future__ import annotations

import os
import sys
from typing import Any

MMAP_THRESHOLD = 8 * 1024 * 1024
"""The fixed threshold that was the default before trimming (kept for comparison: COMPRESS_MMAP_THRESHOLD)."""
LOW_MEMORY_THRESHOLD = 128 * 1024
"""glibc's initial threshold, fixed (COMPRESS_LOW_MEMORY=1)."""
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
_state: dict[str, Any] = {"trim": None, "trims": 0}  # the bound malloc_trim while trimming is on; trims so far


def _libc() -> Any:
    """This process's C library where it is glibc on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist in glibc only
    except (OSError, AttributeError):
        return None
    return libc


def limit_heap_growth(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process; False where there is no glibc `mallopt` (macOS, musl, Windows)."""
    import ctypes

    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1


def enable_trimming(on: bool = True) -> bool:
    """Turn trimming on (`release()` then calls glibc's `malloc_trim(0)`) or off; False where there is no glibc."""
    import ctypes

    libc = _libc() if on else None
    if libc is not None:
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    _state["trim"] = libc.malloc_trim if libc is not None else None
    return libc is not None


GROWTH_BYTES = 32 * 2**20
"""How much a pass may grow the process before its free heap pages are given back."""


def release() -> None:
    """Give the heap's free pages back to the system now, where trimming is on."""
    trim = _state["trim"]
    if trim is not None:
        trim(0)
        _state["trims"] += 1


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Watch:
    """A pass's growth (compress.train.predict, compress.onnx.run.outputs_on, the quantize gate): `check()` after
    each batch gives the free heap pages back once the process has grown by GROWTH_BYTES since the watch began (a
    no-op where trimming is off)."""

    def __init__(self) -> None:
        self.start = _rss() if _state["trim"] is not None else 0

    def check(self) -> bool:
        """True when it trimmed. What a trim cannot give back (the pass's own outputs) becomes the new start, so a
        pass that keeps what it computes does not trim after every batch."""
        if _state["trim"] is None or _rss() <= self.start + GROWTH_BYTES:
            return False
        release()
        self.start = max(self.start, _rss())
        return True


def limit_heap_growth_for_run() -> str:
    """Apply what the environment asks for and say what it was: COMPRESS_LOW_MEMORY=1 the strictest fixed threshold
    (128 KB), =0 glibc's own behaviour (nothing set, nothing trimmed), COMPRESS_MMAP_THRESHOLD=<bytes> a fixed
    threshold, unset the default (glibc's threshold, free pages given back when a pass grows)."""
    asked, fixed = os.environ.get("COMPRESS_LOW_MEMORY", ""), os.environ.get("COMPRESS_MMAP_THRESHOLD", "")
    if asked == "0":
        enable_trimming(False)
        return "glibc"
    if asked == "1" or fixed:
        threshold = LOW_MEMORY_THRESHOLD if asked == "1" else int(fixed)
        enable_trimming(False)
        return f"threshold {threshold}" if limit_heap_growth(threshold) else "glibc"
    return "trim" if enable_trimming(True) else "none"


class StepWatch:
    """The training loop's watch: steps reuse their buffers, so it starts once the working set is allocated (after
    `warm` steps) and trims only a heap that grows past it (fragmentation), never the buffers the next step needs."""

    def __init__(self, warm: int = 2) -> None:
        self.warm, self.steps, self.growth = warm, 0, None

    def step(self) -> None:
        self.steps += 1
        if self.growth is None and self.steps >= self.warm:
            self.growth = Watch()
        elif self.growth is not None:
            self.growth.check()
