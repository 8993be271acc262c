"""compress.heap: freed large buffers go back to the system, by trimming when a pass grows or with a fixed mmap
threshold (glibc only)."""
from __future__ import annotations

import subprocess
import sys

import pytest

import compress.heap as heap

# a 30 MB buffer freed (glibc then raises its threshold to 30 MB); twenty 20 MB buffers, all freed but the newest
SCRIPT = """
import sys
import numpy as np
import compress.heap as heap
if sys.argv[1] == "fixed":
    assert heap.limit_heap_growth()
if sys.argv[1] == "trim":
    assert heap.enable_trimming()
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
big = np.ones(30 << 20, dtype=np.uint8); del big
before = rss()
blocks = [np.ones(20 << 20, dtype=np.uint8) for _ in range(20)]
keep = blocks[-1]; del blocks
heap.release()  # a no-op unless trimming is on
print(rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs glibc")
def test_freed_buffers_are_given_back_by_trimming_or_a_fixed_threshold():
    grown = {how: int(subprocess.run([sys.executable, "-c", SCRIPT, how], capture_output=True, text=True,
                                     check=True).stdout) for how in ("glibc", "fixed", "trim")}
    assert grown["trim"] < 50  # only the one 20 MB buffer still held
    assert grown["fixed"] < 50
    assert grown["glibc"] > 200  # glibc's own behaviour, which compress.heap exists for


@pytest.mark.parametrize("low, fixed, want", [(None, None, "trim"), ("1", None, heap.LOW_MEMORY_THRESHOLD),
                                              ("0", None, "glibc"), (None, "8388608", heap.MMAP_THRESHOLD)])
def test_the_environment_picks_how_the_heap_is_kept(monkeypatch, low, fixed, want):
    # setup: record the calls instead of changing this process's allocator
    calls = []
    monkeypatch.setattr(heap, "limit_heap_growth", lambda value: calls.append(value) or True)
    monkeypatch.setattr(heap, "enable_trimming", lambda on=True: calls.append(f"trim {on}") or on)
    for key, value in (("COMPRESS_LOW_MEMORY", low), ("COMPRESS_MMAP_THRESHOLD", fixed)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    # execute
    applied = heap.limit_heap_growth_for_run()
    # assert: unset trims when a pass grows (no threshold), 1 the strictest threshold, 0 leaves glibc alone
    if want == "trim":
        assert (calls, applied) == (["trim True"], "trim")
    elif want == "glibc":
        assert (calls, applied) == (["trim False"], "glibc")
    else:
        assert (calls, applied) == (["trim False", want], f"threshold {want}")


def test_release_is_a_no_op_when_trimming_is_off():
    heap.enable_trimming(False)
    heap.release()
    assert heap._state["trim"] is None


WATCHED = """
import numpy as np
import compress.heap as heap
assert heap.enable_trimming()
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
big = np.ones(31 << 20, dtype=np.uint8); del big  # glibc raises its threshold: smaller blocks now come from the heap
growth = heap.Watch()
trims, kept = 0, []
for i in range(12):  # a pass: batches of growing buffers, all freed, and after each a small output kept
    blocks = [np.ones((8 + 2 * i) << 20, dtype=np.uint8) for _ in range(3)]
    del blocks
    kept.append(np.ones(64 << 10, dtype=np.uint8))
    trims += growth.check()
quiet = heap.Watch()
before = rss()
small = [np.ones(1 << 20, dtype=np.uint8) for _ in range(4)]; del small
print(trims, rss() - before, quiet.check())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs glibc")
def test_a_pass_that_grows_is_trimmed_and_a_quiet_one_is_left_alone():
    # execute: a pass whose freed buffers pile up, then a pass that stays within its allowance
    trims, grown, quiet = subprocess.run([sys.executable, "-c", WATCHED], capture_output=True, text=True,
                                         check=True).stdout.split()
    # assert: the growing pass was trimmed (not after every batch), the quiet one not at all
    assert 1 <= int(trims) < 12
    assert int(grown) < 32 and quiet == "False"


def test_training_steps_are_watched_from_their_working_set_on(monkeypatch):
    # setup: a fake RSS and a counting trim, so the rule is checked without touching this process's allocator
    rss = {"now": 100 << 20}
    trims = []
    monkeypatch.setattr(heap, "_rss", lambda: rss["now"])
    monkeypatch.setitem(heap._state, "trim", lambda pad: trims.append(pad) or 1)
    steps = heap.StepWatch(warm=2)
    # execute / assert: the first step allocates the working set (no watch yet); steps that stay within it never trim
    rss["now"] += 400 << 20
    steps.step()
    steps.step()  # the watch starts here, at the working set
    for _ in range(5):
        steps.step()
    assert trims == []
    rss["now"] += 40 << 20  # the heap fragments past the working set by more than GROWTH_BYTES
    steps.step()
    assert trims == [0]
