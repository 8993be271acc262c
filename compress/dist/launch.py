"""The parent's side of a distributed training run: a job folder, torchrun as a subprocess, the weights back.

`Launch.call(function, model, data, *args, **kwargs)` does in torchrun workers what `function(model, data, *args,
**kwargs)` does here: the model's current weights, tensors and config sections go into the job folder, each worker
rebuilds the model and the data and calls the same function inside a process group, rank 0 writes the trained
weights and the function's (JSON) result, and the parent loads them into `model` in place. A failed worker ends the
call with one line naming the rank and the reason (compress.dist.failure); nothing is loaded, nothing committed.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.dist.job import FAILURES, JOB, LOG, RESULT_JSON, RESULT_WEIGHTS, encode, save_tensors
from compress.dist.settings import DistSettings

log = logging.getLogger("compress")



@dataclass(frozen=True)
class Launch:
    """What a worker needs besides the call's arguments: the pipeline, how to rebuild the model, where to work."""

    settings: DistSettings
    cfg: Any
    """The PipelineConfig (workers load the same data from it)."""
    fingerprint: str
    """The data's fingerprint here; a worker that loads different data stops instead of training on it."""
    workdir: Path
    """The stage's folder; each call gets a numbered job folder under workdir/dist/."""
    record: Any
    """The model's record (ModelRecord.to_json()): workers rebuild it with compress.families.rebuild, then load the
    weights it has when the call is made (pruned shapes and pruning masks included)."""
    origin: str
    teacher: Any = None
    """The run's teacher record plus "weights" (its file), for a distillation that runs it on each batch."""

    def call(self, function: str, model: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
        """Run `function(model, data, *args, **kwargs)` in torchrun workers; `model` ends with rank 0's weights."""
        from safetensors.torch import load_file

        from compress.cache import write_json

        job_dir = _new_job_dir(self.workdir / "dist", kwargs.get("desc") or function)
        tensors: dict[str, Any] = {}
        job = {"function": function, "config": self.cfg.model_dump(mode="json", exclude_unset=True),
               "source_path": str(self.cfg.source_path), "fingerprint": self.fingerprint,
               "record": self.record, "origin": self.origin, "teacher": self.teacher,
               "args": [encode(a, f"arg{i}", tensors) for i, a in enumerate(args)],
               "kwargs": {k: encode(v, k, tensors) for k, v in kwargs.items()}}
        save_tensors(job_dir / "init.safetensors", {k: v.detach().cpu().contiguous().clone()
                                                     for k, v in model.state_dict().items()})
        if tensors:
            save_tensors(job_dir / "tensors.safetensors", tensors)
        write_json(job_dir / JOB, job)
        self._torchrun(job_dir, kwargs.get("desc") or function, progress=bool(kwargs.get("progress")))
        model.load_state_dict(load_file(str(job_dir / RESULT_WEIGHTS)))
        result = json.loads((job_dir / RESULT_JSON).read_text())["result"]
        for path in job_dir.glob("*.safetensors"):  # the weights now live in `model`; the log stays
            path.unlink()
        return result

    def _torchrun(self, job_dir: Path, desc: str, *, progress: bool) -> None:
        from compress.dist.failure import failure_error

        rdzv_id = f"{self.cfg.pipeline.name}-{job_dir.parent.parent.name}-{job_dir.name}"
        cmd = [sys.executable, "-m", "compress.dist.torchrun", str(job_dir / FAILURES),
               *self.settings.torchrun_args(rdzv_id), "-m", "compress.dist.worker", str(job_dir)]
        started = time.perf_counter()
        log.info("%s: training on %d processes (%d per machine, %d machines), log: %s", desc,
                 self.settings.world_size, self.settings.nproc, self.settings.nnodes, job_dir / LOG)
        with open(job_dir / LOG, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_worker_env(self.settings),
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            try:
                code = _wait(proc, job_dir / LOG, desc, self.settings.world_size, progress)
            except BaseException:  # Ctrl-C: torchrun stops its workers on SIGTERM
                proc.terminate()
                proc.wait()
                raise
        if code != 0 or not (job_dir / RESULT_WEIGHTS).is_file():
            where = f"{self.cfg.source_path}: {self.workdir.name} ({desc})"
            raise failure_error(job_dir, code, desc=where, world_size=self.settings.world_size)
        log.info("%s: %d processes done in %.1f s", desc, self.settings.world_size, time.perf_counter() - started)


def _wait(proc: subprocess.Popen, log_path: Path, desc: str, world_size: int, progress: bool) -> int:
    """torchrun's exit code; meanwhile rank 0's per-epoch lines in the log move a progress bar here."""
    from compress.progress import progress as progress_bar

    # made now, so its clock is the job's; each of rank 0's epoch lines moves it once, with its loss and metric
    bar = progress_bar(desc=f"{desc} ({world_size} processes)", unit="epoch") if progress else None
    done = 0
    pattern = re.compile(rf"^{re.escape(desc)}: \d+/(\d+) epoch(?:, (.*?))? \([\d.]+ s\)$", re.M)
    while True:
        code = proc.poll()
        if bar is not None:
            try:
                found = pattern.findall(log_path.read_text(errors="replace"))
            except OSError:
                found = []
            for total, figures in found[done:]:
                bar.total = int(total)
                bar.set_postfix_str(figures or "")
                bar.update(1)
            done = max(done, len(found))
        if code is not None:
            if bar is not None and hasattr(bar, "close"):
                bar.close()
            return code
        time.sleep(0.5)


def _new_job_dir(root: Path, desc: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", desc).strip("-") or "job"
    n = len([p for p in root.iterdir() if p.is_dir()])
    path = root / f"{n + 1:02d}-{slug}"
    path.mkdir()
    return path


def _worker_env(settings: DistSettings) -> dict[str, str]:
    """The workers import this compress (not another install) and share this machine's cores."""
    import compress

    env = dict(os.environ)
    root = str(Path(compress.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("OMP_NUM_THREADS", str(settings.threads_per_process()))
    return env


def _die_with_parent() -> None:
    """Linux: torchrun gets SIGTERM (and stops its workers) if this process dies, even by SIGKILL."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
