"""A failed torchrun job as one line: which rank, why, where the log is. Exit 1 (a worker died), or the worker's own
CompressError with its exit code (bad input found inside a worker reads as it does in one process)."""
from __future__ import annotations

import json
from pathlib import Path

from compress.dist.job import ERROR_PREFIX, FAILURES, LOG
from compress.errors import PEER_LOST, CompressError, WorkerFailed, shorten


def failure_error(job_dir: Path, code: int, *, desc: str, world_size: int) -> CompressError:
    """The error to raise for a failed job (torchrun's exit `code`), from what the workers and torchrun left."""
    for path in sorted(job_dir.glob(f"{ERROR_PREFIX}*.json")):
        try:
            own = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        err = CompressError(own["message"])
        err.exit_code = int(own.get("exit_code", 2))
        return err
    log = job_dir / LOG
    tail = f"; log: {log}; run the same command again to resume from the stages that finished"
    try:
        failures = json.loads((job_dir / FAILURES).read_text())["failures"]
    except (OSError, ValueError, KeyError):
        failures = []
    if not failures:
        return WorkerFailed(f"{desc}: torchrun exited with code {code} before any worker reported "
                            f"({shorten(_last_line(log), 200)}){tail}")
    root = pick_root_cause(failures)
    return WorkerFailed(f"{desc}: rank {root['rank']} of {world_size} (local rank {root['local_rank']}, pid "
                        f"{root['pid']}) {reason(root)}; torchrun stopped the other ranks and nothing was kept{tail}")




def pick_root_cause(failures: list[dict]) -> dict:
    """The failure that started it. torchrun stops the other ranks with SIGTERM, and a rank whose peer died raises
    'Connection closed by peer'; both are consequences. Among the rest, a rank killed by a signal comes first
    (it could not write an error file), then the earliest exception; if all look like consequences, the earliest."""
    def consequence(f: dict) -> bool:
        return f.get("signal") == "SIGTERM" or any(m in str(f.get("message", "")) for m in PEER_LOST)

    causes = [f for f in failures if not consequence(f)] or failures
    return min(causes, key=lambda f: (f.get("exitcode", 0) >= 0, f.get("timestamp", 0), f["rank"]))


def reason(failure: dict) -> str:
    """'was killed by signal 9 (SIGKILL)', 'raised RuntimeError: ...', 'exited with code 3'."""
    code = failure.get("exitcode", 0)
    if code < 0:
        return f"was killed by signal {-code} ({failure.get('signal') or 'unknown'})"
    message = " ".join(str(failure.get("message") or "").split())
    if message and not message.startswith("To enable traceback"):
        return f"raised {shorten(message, 200)}"
    return f"exited with code {code}"


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"
