"""Atomic writes go through a mkstemp file (mode 0600); the artifacts must still come out with the mode the umask
gives any new file (0644 under umask 022), whatever writer fills the temp file (safetensors, ONNX, JSON)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest


def _tiny():
    import torch.nn as nn

    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def _write_all(folder: Path) -> list[Path]:
    """The writers a pipeline uses for weights, pruned weights, ONNX and report.json; returns what they wrote."""
    import torch

    from compress.cache import write_json  # report.write_report writes report.json with it
    from compress.models import save_weights
    from compress.onnx.export import export_onnx
    from compress.prune.weights import save_pruned

    model = _tiny()
    save_weights(model, folder / "teacher" / "teacher.safetensors")
    save_pruned(model, folder / "prune" / "student-pruned.safetensors")
    export_onnx(model, torch.zeros(2, 1, 4, 4), folder / "export" / "student.onnx")
    write_json(folder / "report.json", {"schema": "compress.report/1", "models": []})
    return [folder / "teacher/teacher.safetensors", folder / "prune/student-pruned.safetensors",
            folder / "export/student.onnx", folder / "report.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomically_written_artifacts_get_the_mode_the_umask_gives(tmp_path: Path, umask: int, mode: int):
    # setup
    old = os.umask(umask)
    try:
        # execute: twice, so a replaced file is checked as well as a new one
        _write_all(tmp_path)
        written = _write_all(tmp_path)
    finally:
        os.umask(old)
    # assert
    modes = {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert modes == {p.relative_to(tmp_path).as_posix(): oct(mode) for p in written}
