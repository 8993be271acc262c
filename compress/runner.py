"""The runner: orders stages, caches each by content hash, owns the run directory, the lock and the report.

Stages are functions of (their config section, what earlier stages produced). A stage's cache key chains the key
of the stage before it, so changing one section re-runs that stage and every stage after it, and nothing before.
"""
from __future__ import annotations

import importlib
import logging
import shutil
import time
from pathlib import Path

from compress.cache import digest, file_sha256, load_manifest, run_lock, save_manifest
from compress.context import StageContext, StageResult
from compress.errors import GateFailed

log = logging.getLogger("compress")

# Every stage, in pipeline order: name -> the module holding its `run(ctx) -> StageResult`.
STAGES = {
    "teacher": "compress.stages.teacher",
    "distill": "compress.stages.distill",
    "prune": "compress.stages.prune",
    "export": "compress.stages.export",
    "quantize": "compress.stages.quantize",
    "benchmark": "compress.stages.benchmark",
    "edge": "compress.stages.edge",
}

CACHE_VERSION = 1  # bump when a stage's outputs change meaning, so old caches are not trusted


def _section_inputs(cfg, name: str) -> dict:
    """What a stage's result depends on, besides earlier stages: its own section(s) and input files."""
    dump = {
        "teacher": lambda: {"teacher": cfg.teacher.model_dump(mode="json"), "code": _code_digest(cfg, cfg.teacher.model),
                            "checkpoint_sha256": file_sha256(cfg.resolve(cfg.teacher.checkpoint))
                            if cfg.teacher.checkpoint else None},
        "distill": lambda: {"student": cfg.student.model_dump(mode="json"), "code": _code_digest(cfg, cfg.student.model),
                            "distill": cfg.distill.model_dump(mode="json")},
        "prune": lambda: cfg.prune.model_dump(mode="json"),
        "export": lambda: cfg.export.model_dump(mode="json", exclude={"ort_format", "fixed_batch"}),
        # the pick between float and quantized is timed on the benchmark's providers and batch sizes
        "quantize": lambda: {"quantize": cfg.quantize.model_dump(mode="json"),
                             "benchmark": cfg.benchmark.model_dump(mode="json", include={"providers", "batch_sizes",
                                                                                          "threads"})},
        "benchmark": lambda: cfg.benchmark.model_dump(mode="json"),
        "edge": lambda: cfg.export.model_dump(mode="json"),
    }
    return dump[name]()


def _code_digest(cfg, spec: str) -> str | None:
    """sha256 of a user's `module:factory` file beside the TOML, so editing the model code re-runs its stage."""
    if spec.startswith(("builtin:", "hf:")):
        return None
    path = cfg.base_dir / (spec.partition(":")[0].replace(".", "/") + ".py")
    return file_sha256(path) if path.is_file() else None


def run_pipeline(path: str | Path, *, force: bool = False, progress: bool = True) -> dict:
    """Run the pipeline file at `path`; return the report (also written to the run directory).

    Raises CompressError for bad input (exit 2) and GateFailed (exit 1) when a gate fails; the report is written
    in both cases once the stages that could run have run.
    """
    import torch

    from compress.config import load_config
    from compress.data import load_data
    from compress.report import build_report, write_report

    cfg = load_config(path)
    run_dir = cfg.run_dir
    with run_lock(run_dir):
        if cfg.pipeline.threads:
            torch.set_num_threads(cfg.pipeline.threads)
        data = load_data(cfg.data, seed=cfg.pipeline.seed, base_dir=cfg.base_dir,
                         origin=f"{cfg.source_path}: data.source")
        from compress import __version__
        from compress.models import check_models

        check_models(cfg, data, load_checkpoint=False)  # a broken student fails now, not after the teacher trains

        key = digest({"version": [__version__, CACHE_VERSION], "seed": cfg.pipeline.seed,
                      "data": [data.fingerprint, cfg.data.model_dump(mode="json")]})
        models: dict[str, dict] = {}
        state: dict = {}
        stages: list[dict] = []
        info: dict = {}
        failure: BaseException | None = None
        for name in stage_names(cfg):
            key = digest([key, name, _section_inputs(cfg, name)])
            stage_dir = run_dir / name
            started = time.perf_counter()
            manifest = None if force else load_manifest(stage_dir, key, run_dir)
            if manifest is not None:
                result, status = StageResult.from_json(manifest["result"]), "cached"
            else:
                if stage_dir.exists():
                    shutil.rmtree(stage_dir)  # stale or partial: never mixed with new artifacts
                ctx = StageContext(cfg=cfg, run_dir=run_dir, stage=name, models=models, state=state, data=data,
                                   progress=progress)
                try:
                    result = importlib.import_module(STAGES[name]).run(ctx)
                except BaseException as exc:
                    stages.append({"name": name, "status": "failed", "seconds": time.perf_counter() - started,
                                   "artifacts": [], "error": str(exc)})
                    failure = exc
                    break
                save_manifest(stage_dir, key, run_dir, result.artifacts, result.to_json(),
                              time.perf_counter() - started)
                status = "done"
            for model_name, record in result.models.items():
                models[model_name] = {**models.get(model_name, {}), **record}
            state.update(result.state)
            if result.info:
                info[name] = result.info
            stages.append({"name": name, "status": status, "seconds": round(time.perf_counter() - started, 3),
                           "artifacts": result.artifacts})
            log.info("%s: %s", name, status)
        for name in stage_names(cfg)[len(stages):]:
            stages.append({"name": name, "status": "skipped", "seconds": 0.0, "artifacts": []})
        report = build_report(cfg, models, state, stages, info)
        write_report(run_dir, report)
    if failure is not None:
        raise failure
    if state.get("gate_failure"):
        raise GateFailed(f"{cfg.source_path}: {state['gate_failure']} (report: {run_dir / 'report.json'})")
    return report


def stage_names(cfg) -> list[str]:
    names = cfg.stage_names()
    if cfg.export.ort_format:
        names.append("edge")
    return names
