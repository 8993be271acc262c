"""compress: a trained PyTorch teacher to a small, fast, measured ONNX model, from one TOML file.

The Python API mirrors the pipeline commands: `compress.run("pipeline.toml")`, `compress.validate("pipeline.toml")`,
`compress.search("pipeline.toml")`. The model commands (`compress quantize`, `bench`, `edge`, `compare`) are CLI only.
Heavy libraries (torch, onnx, onnxruntime) are imported only when work starts.
"""
from __future__ import annotations

__version__ = "0.1.0"

import os

from compress.errors import CompressError, GateFailed


def run(source, *, force: bool = False, progress: bool = True, nproc: int = 1, nnodes: int = 1, node_rank: int = 0,
        rdzv_endpoint: str | None = None) -> dict:
    """Run a pipeline: a TOML path, a dict shaped like the file, or a compress.config.PipelineConfig.

    Returns the report dict (also written as runs/<name>/report.json). `nproc` > 1 (or `nnodes` > 1) trains in
    torchrun workers with DDP, as `compress run --nproc` does.
    """
    from compress.dist.settings import DistSettings
    from compress.heap import limit_heap_growth_for_run
    from compress.runner import run_pipeline

    import numbers

    for name, value in (("nproc", nproc), ("nnodes", nnodes), ("node_rank", node_rank)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise CompressError(f"{name}: expected a whole number, got {type(value).__name__} {value!r:.40}")
    limit_heap_growth_for_run()  # the memory policy `compress run` has: freed heap pages given back between passes
    dist = DistSettings(nproc=int(nproc), nnodes=int(nnodes), node_rank=int(node_rank), rdzv_endpoint=rdzv_endpoint)
    return run_pipeline(source, force=force, progress=progress, dist=dist)


def validate(source):
    """Check a pipeline (path, dict or config) as `compress validate` does, without training, its [search] space
    included; return the config."""
    from compress.config import as_config, check_before_training, held

    cfg = as_config(source)
    with held():  # the space's checks read the data loaded here
        check_before_training(cfg, exports=True)
        if cfg.search is not None:
            from compress.study.space import check_search

            check_search(cfg, _raw(source, cfg), cfg.source_path)
    return cfg


def _raw(source, cfg) -> dict | None:
    """The pipeline as a dict, as the file has it: the space's choices are applied to it."""
    import tomllib
    from pathlib import Path

    if isinstance(source, dict):
        return source
    path = Path(str(cfg.source_path))
    return tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def search(source, *, storage: str | None = None, trials: int | None = None, max_minutes: float | None = None,
           progress: bool = True) -> dict:
    """Run, resume or join the study of a pipeline file's [search] section, as `compress search` does.

    Returns the search report (also runs/<name>/search/report.json); raises GateFailed when nothing met the
    constraints (the closest model is written as best-effort.toml).
    """
    from compress.heap import limit_heap_growth_for_run
    from compress.study import search as run_search

    if not isinstance(source, (str, os.PathLike)):  # run takes a dict; a study's trials are written from its file
        raise CompressError(f"search: expected the path of a pipeline .toml file with a [search] section, got "
                            f"{type(source).__name__}")
    limit_heap_growth_for_run()
    return run_search(source, storage=storage, trials=trials, max_minutes=max_minutes, progress=progress,
                      flags=False)


__all__ = ["CompressError", "GateFailed", "run", "search", "validate", "__version__"]
