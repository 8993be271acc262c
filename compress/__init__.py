"""compress: a trained PyTorch teacher to a small, fast, measured ONNX model, from one TOML file.

The Python API mirrors the CLI: `compress.run("pipeline.toml")`, `compress.validate("pipeline.toml")`.
Heavy libraries (torch, onnx, onnxruntime) are imported only when work starts.
"""
from __future__ import annotations

__version__ = "0.1.0"

from compress.errors import CompressError, GateFailed


def run(path, *, force: bool = False, progress: bool = True) -> dict:
    """Run a pipeline file; return the report dict (also written as runs/<name>/report.json)."""
    from compress.runner import run_pipeline

    return run_pipeline(path, force=force, progress=progress)


def validate(path):
    """Load and check a pipeline file (schema, files, importable models); return the typed config."""
    from compress.config import load_config

    return load_config(path, check_models=True)


__all__ = ["CompressError", "GateFailed", "run", "validate", "__version__"]
