"""compress.heap: with the mmap threshold fixed, freed multi-MB buffers go back to the system (glibc only)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from compress.heap import limit_heap_growth

# a 30 MB buffer freed (glibc then raises its threshold to 30 MB), twenty 8 MB buffers, all freed but the newest
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
blocks = [np.ones(8 << 20, dtype=np.uint8) for _ in range(20)]
keep = blocks[-1]; del blocks
print(rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not limit_heap_growth(), reason="needs glibc")
def test_freed_buffers_are_given_back_with_the_threshold_fixed():
    grown = {how: int(subprocess.run([sys.executable, "-c", SCRIPT, how], capture_output=True, text=True,
                                     check=True).stdout) for how in ("default", "fixed")}
    assert grown["fixed"] < 30  # only the one 8 MB buffer still held
    assert grown["default"] > 100  # glibc's own behaviour, which compress.heap exists for


def test_it_is_opt_in_because_it_slows_training(monkeypatch):
    from compress.heap import limit_heap_growth_if_asked

    monkeypatch.delenv("COMPRESS_LOW_MEMORY", raising=False)
    assert limit_heap_growth_if_asked() is False
    monkeypatch.setenv("COMPRESS_LOW_MEMORY", "1")
    assert limit_heap_growth_if_asked() is (sys.platform.startswith("linux") and limit_heap_growth())
