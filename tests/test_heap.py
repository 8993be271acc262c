"""compress.heap: with the mmap threshold fixed, freed large buffers go back to the system (glibc only)."""
from __future__ import annotations

import subprocess
import sys

import pytest

import compress.heap as heap

# a 30 MB buffer freed (glibc then raises its threshold to 30 MB); twenty 20 MB buffers, all freed but the newest
SCRIPT = """
import sys
import numpy as np
if sys.argv[1] == "fixed":
    from compress.heap import limit_heap_growth
    assert limit_heap_growth()
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
big = np.ones(30 << 20, dtype=np.uint8); del big
before = rss()
blocks = [np.ones(20 << 20, dtype=np.uint8) for _ in range(20)]
keep = blocks[-1]; del blocks
print(rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs glibc")
def test_freed_buffers_are_given_back_with_the_default_threshold():
    grown = {how: int(subprocess.run([sys.executable, "-c", SCRIPT, how], capture_output=True, text=True,
                                     check=True).stdout) for how in ("default", "fixed")}
    assert grown["fixed"] < 50  # only the one 20 MB buffer still held
    assert grown["default"] > 200  # glibc's own behaviour, which compress.heap exists for


@pytest.mark.parametrize("env, threshold", [(None, heap.MMAP_THRESHOLD), ("1", heap.LOW_MEMORY_THRESHOLD), ("0", None)])
def test_the_environment_picks_the_threshold(monkeypatch, env, threshold):
    # setup: record the call instead of changing this process's allocator
    calls = []
    monkeypatch.setattr(heap, "limit_heap_growth", lambda value: calls.append(value) or True)
    if env is None:
        monkeypatch.delenv("COMPRESS_LOW_MEMORY", raising=False)
    else:
        monkeypatch.setenv("COMPRESS_LOW_MEMORY", env)
    # execute
    applied = heap.limit_heap_growth_for_run()
    # assert: unset is the 8 MB default, 1 the strictest, 0 leaves glibc alone
    assert calls == ([] if threshold is None else [threshold])
    assert applied is (threshold is not None)
