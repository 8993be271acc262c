"""Keep the C heap from growing with the data.

glibc serves blocks above its mmap threshold with mmap and gives them back on free. But each time such a block is
freed, glibc raises the threshold to that block's size, up to 32 MB. After one large prediction batch, every buffer
below 32 MB comes from the heap. The heap then fragments around the small outputs a pass keeps, and the freed memory
stays with the process. Measured: a prediction pass over 40,000 32x32 images at batch 512 left the process 650 MB
larger in a pipeline, and 340 MB larger with a bare cnn-small loop (docs/results.md).

Fixing the threshold stops glibc from moving it. Its value is a trade, and fragmentation makes it a noisy one:
- 8 MB, the default. Most training buffers stay on the heap and are reused, while prediction batches get their own
  mappings. `compress run` on 50,000 images peaked at 1.05-1.07x the main RSS of a 5,000-image run, in two runs.
  glibc's default gave 2.66x under load, but stayed flat in an idle run: its growth is intermittent. In bare
  training loops, against glibc's default, cnn-small width 8 and a MiniLM student (bf16) ran at the same speed;
  cnn-large width 16 ran 25-30% slower, because its 8 MB training buffers are now mapped.
- 128 KB (`COMPRESS_LOW_MEMORY=1`, the strictest). Nearly every activation then costs an mmap and fresh zeroed
  pages: training on the image CNNs is 2.0-2.3x slower.
- glibc's own behaviour (`COMPRESS_LOW_MEMORY=0`): the fastest training, and memory that grows with the data.
Other values were worse. With 12 MB the 50k run peaked at 2.24x, and with 16 MB at 1.31x. The same loop can also
grow by 0 MB in one process and by 377 MB in the next (docs/results.md).

The CLI and each torchrun worker call `limit_heap_growth_for_run()`; DataLoader workers are forked and inherit it.
"""
from __future__ import annotations

import os
import sys

MMAP_THRESHOLD = 8 * 1024 * 1024
"""The default fixed threshold: ordinary training buffers stay on the heap, large prediction batches are mapped."""
LOW_MEMORY_THRESHOLD = 128 * 1024
"""glibc's initial threshold, fixed (COMPRESS_LOW_MEMORY=1)."""
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


def limit_heap_growth(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process; False where there is no glibc `mallopt` (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, threshold) == 1


def limit_heap_growth_for_run() -> bool:
    """The threshold the environment asks for: COMPRESS_LOW_MEMORY=1 the strictest (128 KB), =0 glibc's own dynamic
    one (nothing is set), unset the default (8 MB)."""
    asked = os.environ.get("COMPRESS_LOW_MEMORY", "")
    if asked == "0":
        return False
    return limit_heap_growth(LOW_MEMORY_THRESHOLD if asked == "1" else MMAP_THRESHOLD)
