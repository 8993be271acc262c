"""The runner: orders stages, caches each by content hash, owns the run directory, the lock and the report.

Stages are functions of (their config section, what earlier stages produced). The order, the sections each stage
reads and whether it runs all come from the registry (compress.stages.STAGES). A stage's cache key chains the key
of the stage before it, so changing one section re-runs that stage and every stage after it, and nothing before.
The chain also takes in the digests of every earlier stage's artifacts: a stage run again with the same config (its
folder deleted, a file damaged) re-runs every later stage too, so none reports on models that are no longer there.
Machines training together (nnodes > 1) chain the configs only: each holds its own run folder, and the nodes must
agree on every key.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from compress.cache import MANIFEST, digest, load_manifest, load_manifest_file, run_lock, save_manifest
from compress.context import StageContext
from compress.errors import CompressError, GateFailed
from compress.records import ModelRecord, RunState, StageResult
from compress.stages import STAGES, section_inputs, stage_names

log = logging.getLogger("compress")
STAGE_MARK = ".compress-stage"
"""Written into a stage's folder before it runs: a folder with neither it nor a manifest is the user's (never
cleared)."""

CACHE_VERSION = 6  # bump when a stage's outputs change meaning, so old caches are not trusted (4: one path for
# every task: teacher outputs in safetensors, metrics per model; 5: keys chain earlier stages' artifact digests;
# 6: a magnitude prune's control as sparse as the pruned model, tied weights kept tied by channel pruning)


def _data_key(cfg: Any) -> dict[str, Any]:
    """[data] as the stages' results depend on it: `workers` only moves reading to other processes, unless images
    are augmented (each worker draws its own random crops and flips) or the dataset is the user's own (python:,
    whose transforms may draw random numbers too)."""
    values = cfg.data.model_dump(mode="json")
    if not values.get("augment") and not str(values.get("source", "")).startswith("python:"):
        values.pop("workers", None)
    return values


def _why_failed(exc: BaseException) -> str:
    """A failed stage's `error` in report.json: the error's line; for an interrupt (which carries none), what
    stopped it and that a rerun resumes."""
    from compress.errors import Stopped

    if isinstance(exc, (KeyboardInterrupt, Stopped)):
        what = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else exc.name
        return f"interrupted ({what}); rerun to resume: finished stages are cached"
    return str(exc)


def run_pipeline(source: Any, *, force: bool = False, progress: bool = True, dist: Any = None,
                 store: Path | None = None) -> dict:
    """Run a pipeline (a TOML path, a dict shaped like the file, or a PipelineConfig); return the report.

    The report is also written to the run directory. Raises CompressError for bad input (exit 2) and GateFailed
    (exit 1) when a gate fails; the report is written in both cases once the stages that could run have run.
    `dist` (compress.dist.settings.DistSettings) sends training to torchrun workers; on a machine other than node 0
    only the training stages run (with the other machines) and the result is {} (node 0 writes the report).
    `store`: a folder of stage results shared by several run directories (a search's trials): a stage whose key is
    there is copied in (status "shared"), and one computed here is published there, under a lock, so two runs
    that need the same teacher train it once.
    """
    import torch

    from compress import __version__
    from compress.config import as_config, check_before_training
    from compress.report import build_report, write_report

    cfg = as_config(source)
    if dist is not None:
        dist.check(cfg)
    run_dir = cfg.run_dir
    with run_lock(run_dir):
        if cfg.pipeline.threads:
            torch.set_num_threads(cfg.pipeline.threads)
        data = check_before_training(cfg)  # a broken student or a missing provider fails now, not after training
        key = digest({"version": [__version__, CACHE_VERSION], "seed": cfg.pipeline.seed,
                      "data": [data.fingerprint, _data_key(cfg)]})
        models: dict[str, ModelRecord] = {}
        state = RunState()
        stages: list[dict] = []
        info: dict = {}
        failure: BaseException | None = None
        names = stage_names(cfg)
        if dist is not None and dist.follower:
            names = names[: max((i + 1 for i, n in enumerate(names) if STAGES[n].trains), default=0)]
        tried = dist is not None and dist.follower  # rank 0 tries the exports for every rank
        for name in names:
            key = digest([key, name, section_inputs(cfg, name)])
            if not tried and STAGES[name].trains and (force or load_manifest(run_dir / name, key, run_dir) is None):
                from compress.config import check_exports_once

                check_exports_once(cfg, data)  # an op the exporter refuses, found before this stage trains
                tried = True
            started = time.perf_counter()
            try:
                result, status = _run_shared(name, key, cfg, run_dir, models, state, data, force, progress, dist,
                                             store)
            except BaseException as exc:
                stages.append({"name": name, "status": "failed", "seconds": round(time.perf_counter() - started, 3),
                               "artifacts": [], "error": _why_failed(exc)})
                failure = _named(exc, cfg.source_path)
                break
            if dist is None or dist.nnodes == 1:
                key = digest([key, stage_artifacts(run_dir / name)])
            models.update({m.name: m for m in result.models})
            state = state.merged(result.state)
            if result.info:
                info[name] = dict(result.info)
            stages.append({"name": name, "status": status, "seconds": round(time.perf_counter() - started, 3),
                           "artifacts": list(result.artifacts)})
            log.info("%s: %s", name, status)
        if dist is not None and dist.follower:
            if failure is not None:
                raise failure
            return {}
        stages += [{"name": n, "status": "skipped", "seconds": 0.0, "artifacts": []} for n in names[len(stages):]]
        report = build_report(cfg, models, state, stages, info, data=data)
        write_report(run_dir, report)
    if failure is not None:
        raise failure
    if state.gate_failure:
        failed = GateFailed(f"{cfg.source_path}: {state.gate_failure} (report: {run_dir / 'report.json'})")
        failed.report = report  # the CLI prints the summary table before the error line
        raise failed
    return report


def _named(exc: BaseException, source: Path) -> BaseException:
    """A stage's bad-input error with the pipeline file in front when it does not start with it ('prune: the model
    must return a tensor' became 'p.toml: prune: ...'): every such line names the file to change."""
    from compress.errors import unwrap_worker

    text = unwrap_worker(str(exc))  # a DataLoader worker's error arrives wrapped: "Caught CompressError in ..."
    if type(exc) is not CompressError or text.startswith(str(source)):
        return exc
    named = CompressError(f"{source}: {text}").with_traceback(exc.__traceback__)  # -v shows where the stage raised
    named.__cause__, named.exit_code = exc.__cause__ or exc, exc.exit_code
    return named


def stage_artifacts(stage_dir: Path) -> dict[str, str]:
    """{artifact path: sha256} from the manifest of a stage that just finished (cached, shared or run)."""
    manifest = load_manifest_file(stage_dir)
    return dict(manifest.get("artifacts", {})) if manifest else {}


def _run_shared(name: str, key: str, cfg: Any, run_dir: Path, models: dict[str, ModelRecord], state: RunState,
                data: Any, force: bool, progress: bool, dist: Any, store: Path | None) -> tuple[StageResult, str]:
    """_run_stage, through the shared store when there is one."""
    if store is None or force:
        return _run_stage(name, key, cfg, run_dir, models, state, data, force, progress, dist)
    from compress.cache import fetch_shared, publish_shared, shared_entry

    with shared_entry(store, name, key) as entry:
        if load_manifest(run_dir / name, key, run_dir) is None:
            manifest = fetch_shared(entry, name, key, run_dir)
            if manifest is not None:
                return StageResult.from_json(manifest["result"]), "shared"
        result, status = _run_stage(name, key, cfg, run_dir, models, state, data, force, progress, dist)
        if status == "done":
            publish_shared(entry, name, run_dir)
        return result, status


def _a_run_folder(run_dir: Path) -> bool:
    """Whether `run_dir` shows an earlier compress run: its report, or a finished stage's manifest (a stage killed
    by a version before the stage mark left a folder with neither)."""
    return (run_dir / "report.json").exists() or any((d / MANIFEST).exists() for d in run_dir.iterdir() if d.is_dir())


def _run_stage(name: str, key: str, cfg: Any, run_dir: Path, models: dict[str, ModelRecord], state: RunState,
               data: Any, force: bool, progress: bool, dist: Any = None) -> tuple[StageResult, str]:
    """The stage's result from its cache when the key and every artifact match, else from running it."""
    stage_dir = run_dir / name
    manifest = None if force else load_manifest(stage_dir, key, run_dir)
    if manifest is not None:
        return StageResult.from_json(manifest["result"]), "cached"
    if stage_dir.exists():
        ours = (stage_dir / MANIFEST).exists() or (stage_dir / STAGE_MARK).exists() or _a_run_folder(run_dir)
        if not ours and any(stage_dir.iterdir()):
            raise CompressError(f"{stage_dir}: the {name} stage writes here, and nothing shows compress wrote this "
                                "folder (no manifest or stage mark in it, no report or finished stage beside it): it "
                                "is left as it is; delete it if an earlier run left it, or give [pipeline] output_dir "
                                "a folder of its own")
        shutil.rmtree(stage_dir)  # stale or partial: never mixed with new artifacts
    stage_dir.mkdir(parents=True)
    (stage_dir / STAGE_MARK).touch()  # a run killed in this stage leaves a folder the next run may clear
    started = time.perf_counter()
    ctx = StageContext(cfg=cfg, run_dir=run_dir, stage=name, models=dict(models), state=state, data=data,
                       progress=progress, dist=dist)
    result = STAGES[name].run(ctx)
    save_manifest(stage_dir, key, run_dir, list(result.artifacts), result.to_json(), time.perf_counter() - started)
    return result, "done"
