"""Run a provider's work on an untrusted graph in a child process, so a native abort inside the provider (QNN's
"Tensor name not found", an assertion in a plugin) ends the child, not compress: the parent reports one line naming
the provider, the signal and the last stage the child reached, and keeps what was written before.

The child writes each stage it starts to `<out_dir>/<name>.stage` (`mark`), and its result as JSON; the parent
reads them back. A CompressError in the child comes back as the same error (exit 2), any other exception as one
line too.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from compress.errors import CompressError

_STAGE_FILE = "{name}.stage"
_current: dict[str, Any] = {}  # the child's stage file, and when its first stage began


def mark(stage: str) -> None:
    """Record that the child is starting `stage`, and say so on stderr with the time it has run: a QNN target can
    take minutes on the simulator (a no-op outside an isolated run)."""
    import sys
    import time

    path = _current.get("stage")
    if path is not None:
        with open(path, "a") as f:
            f.write(stage + "\n")
        started = _current.setdefault("started", time.perf_counter())
        print(f"{path.stem}: {stage} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)


class ProviderCrashed(CompressError):
    """A provider's native code ended the child process (exit 1: a finding about the model or the provider)."""

    exit_code = 1


ORT_SEVERITY_ENV = "COMPRESS_ORT_LOG_SEVERITY"
"""The CLI's level for ONNX Runtime's warnings (compress.cli), which a spawned child sets too: a fresh interpreter
starts at ORT's default."""


def run_isolated(function: str, kwargs: dict[str, Any], *, out_dir: Path, name: str, provider: str) -> Any:
    """`function(**kwargs)` ('module:function') in a spawned child process; its JSON-able result. A child killed by a
    signal raises ProviderCrashed naming `provider`, the signal and the last stage marked."""
    import multiprocessing as mp

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage_file, result_file = out_dir / _STAGE_FILE.format(name=name), out_dir / f".{name}.result.json"
    stage_file.unlink(missing_ok=True)
    result_file.unlink(missing_ok=True)
    ctx = mp.get_context("spawn")  # a fresh interpreter: no provider state, no forked threads
    proc = ctx.Process(target=_child, args=(function, kwargs, str(stage_file), str(result_file)), daemon=True)
    proc.start()
    try:
        proc.join()
    except BaseException:  # Ctrl-C, SIGTERM: the child goes too
        proc.terminate()
        proc.join()
        raise
    stages = stage_file.read_text().splitlines() if stage_file.is_file() else []
    if proc.exitcode and proc.exitcode < 0:
        sig = signal.Signals(-proc.exitcode).name
        last = stages[-1] if stages else "start-up"
        raise ProviderCrashed(f"provider {provider}: the provider's native code ended the process with signal "
                              f"{-proc.exitcode} ({sig}) during '{last}'; what was measured before is in "
                              f"{out_dir}; this model cannot run there as it is (try fixed shapes, another opset, "
                              "or keep the failing op on the CPU)")
    if not result_file.is_file():
        raise ProviderCrashed(f"provider {provider}: the child process exited with code {proc.exitcode} before "
                              f"reporting (last stage: {stages[-1] if stages else 'start-up'})")
    done = json.loads(result_file.read_text())
    result_file.unlink()
    if "error" in done:
        err = (CompressError if done["kind"] == "compress" else ProviderCrashed)(done["error"])
        err.exit_code = done.get("exit_code", 2 if done["kind"] == "compress" else 1)
        raise err
    return done["result"]


def _child(function: str, kwargs: dict[str, Any], stage_file: str, result_file: str) -> None:
    import importlib

    from compress.errors import first_line

    _current["stage"] = Path(stage_file)
    level = os.environ.get(ORT_SEVERITY_ENV)
    if level:
        import onnxruntime

        onnxruntime.set_default_logger_severity(int(level))
    module, _, attr = function.partition(":")
    try:
        result = getattr(importlib.import_module(module), attr)(**kwargs)
        out = {"result": result}
    except CompressError as exc:
        out = {"error": str(exc), "kind": "compress", "exit_code": exc.exit_code}
    except Exception as exc:  # one line for the parent: a finding about the model, not a traceback
        out = {"error": f"{type(exc).__name__}: {first_line(exc)}", "kind": "other", "exit_code": 1}
    Path(result_file).write_text(json.dumps(out))
