"""The timed loop of one repetition: model blocks alternating with reference-workload blocks (see harness.py)."""
from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from compress.bench.harness import BenchSettings


def timed_loop(
    run: Callable[[], Any], settings: BenchSettings, ref_run: Callable[[], Any] | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Time `run` until min_runs and min_seconds are both met; nanoseconds per call.

    With `ref_run`, model blocks of block_seconds alternate with reference blocks of reference_block_seconds,
    so both see the same machine speed. Returns (model samples, reference samples, block ends): block i holds
    model samples [ends[i-1, 0], ends[i, 0]) and the reference samples timed right after it (None, None without).
    """
    perf = time.perf_counter_ns
    samples: list[int] = []
    ref_samples: list[int] = []
    append = samples.append
    ref_append = ref_samples.append
    ends: list[tuple[int, int]] = []  # (model samples so far, reference samples so far) at each block's end
    block_ns = int(settings.block_seconds * 1e9) if ref_run is not None else 1 << 62
    ref_block_ns = int(settings.reference_block_seconds * 1e9)
    start = perf()
    model_ns = 0  # model time only: min_seconds counts the model, not the reference
    min_ns = int(settings.min_seconds * 1e9)
    hard_stop = start + int(settings.max_seconds * 1e9)
    min_runs = settings.min_runs
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call is noise, not model time
    try:
        n = 0
        done = False
        while not done:
            block_start = perf()
            block_end = block_start + block_ns
            while True:
                t0 = perf()
                run()
                t1 = perf()
                append(t1 - t0)
                n += 1
                if (n >= min_runs and model_ns + (t1 - block_start) >= min_ns) or (t1 >= hard_stop and n >= 5):
                    done = True
                    break
                if t1 >= block_end:
                    break
            model_ns += perf() - block_start
            if ref_run is not None:
                ref_end = perf() + ref_block_ns
                while True:
                    t0 = perf()
                    ref_run()
                    t1 = perf()
                    ref_append(t1 - t0)
                    if t1 >= ref_end:
                        break
                ends.append((len(samples), len(ref_samples)))
    finally:
        if gc_was_enabled:
            gc.enable()
    model = np.asarray(samples, dtype=np.float64)
    if ref_run is None:
        return model, None, None
    return model, np.asarray(ref_samples, dtype=np.float64), np.asarray(ends, dtype=np.int64).reshape(-1, 2)
