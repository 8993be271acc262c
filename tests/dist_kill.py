"""Kill one torchrun worker of a `compress run --nproc N` from outside, at a chosen epoch (tests and benchmarks).

Nothing in compress knows about this: the worker is found in /proc by its command line (`compress.dist.worker
<job folder>`) and its RANK environment variable, and the moment comes from the job's log, where local rank 0 writes
one line per finished epoch ('student: 2/10 epoch, ...'). Linux only.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def worker_pids(stage_dir: Path) -> dict[int, int]:
    """{global rank: pid} of the live workers whose job folder is under `stage_dir`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if b"compress.dist.worker" not in cmd or not any(str(stage_dir).encode() in c for c in cmd):
                continue
            env = dict(v.split(b"=", 1) for v in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                       if b"=" in v)
        except OSError:
            continue
        found[int(env.get(b"RANK", b"-1"))] = int(entry)
    return found


def kill_rank_after(stage_dir: Path, desc: str, epoch: int, *, rank: int = 1, timeout: float = 300,
                    poll: float = 0.02) -> int:
    """Wait until the job `desc` under `stage_dir` logged `epoch` finished epochs, SIGKILL its `rank`; return pid."""
    deadline = time.monotonic() + timeout
    marker = f"{desc}: {epoch}/"
    while time.monotonic() < deadline:
        for log in stage_dir.glob("dist/*/torchrun.log"):
            try:
                if marker in log.read_text(errors="replace"):
                    pid = worker_pids(stage_dir).get(rank)
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                        return pid
            except OSError:
                pass
        time.sleep(poll)
    raise TimeoutError(f"no {marker!r} line with a live rank {rank} under {stage_dir} within {timeout} s")
