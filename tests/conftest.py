"""Shared fixtures: a tiny pipeline (seconds, not minutes) on a slice of the built-in digits data; which execution
providers this machine has, so provider tests expect what onnxruntime here can do (CPU-only or with CUDA)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


def available_providers() -> list[str]:
    """onnxruntime.get_available_providers() of this machine's onnxruntime build."""
    import onnxruntime

    return onnxruntime.get_available_providers()


def has_cuda() -> bool:
    return "CUDAExecutionProvider" in available_providers()


def absent_provider() -> tuple[str, str]:
    """(short name, ORT name) of a provider onnxruntime here lacks: what 'unavailable' tests ask for.

    CUDA where it is absent (the usual CI box); else a mobile provider no desktop/server build ships.
    """
    from compress.bench.providers import PROVIDERS

    available = available_providers()
    short = next(s for s in ("cuda", "nnapi", "coreml", "qnn") if PROVIDERS[s] not in available)
    return short, PROVIDERS[short]


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest run gets a base temp folder of its own (unless --basetemp names one): two runs at once never
    share, or clean up, each other's folders. It is removed when the run passes and kept when it fails (unless empty)."""
    import tempfile

    if not config.option.basetemp:
        config.option.basetemp = tempfile.mkdtemp(prefix="compress-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import shutil

    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own and (exitstatus == 0 or not any(Path(own).iterdir())):  # an empty one (no test ran) is kept for nothing
        shutil.rmtree(own, ignore_errors=True)


_OWN_BASETEMP = pytest.StashKey[str]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` need the CUDA execution provider, tests marked `qnn` onnxruntime-qnn (the QNN EP plugin
    with its HTP simulator), tests marked `openvino` the OpenVINO EP (onnxruntime-openvino): each is skipped, with
    the reason, where this machine lacks it."""
    import importlib.util

    missing = {}
    if not has_cuda():
        missing["cuda"] = f"CUDAExecutionProvider not available here ({', '.join(available_providers())})"
    if importlib.util.find_spec("onnxruntime_qnn") is None:
        missing["qnn"] = "onnxruntime-qnn is not installed (pip install onnxruntime-qnn)"
    if "OpenVINOExecutionProvider" not in available_providers():
        missing["openvino"] = ("OpenVINOExecutionProvider not available here (a venv with onnxruntime-openvino in "
                               "place of onnxruntime: make install ORT=onnxruntime-openvino)")
    for item in items:
        for marker, reason in missing.items():
            if item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))

TINY_ZOO = '''
import torch.nn as nn


def tiny_teacher(input_shape=(1, 8, 8), num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, num_classes))


def tiny_student(input_shape=(1, 8, 8), num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))


def not_a_module(input_shape=(1, 8, 8), num_classes=10):
    return "oops"


def wrong_classes(input_shape=(1, 8, 8), num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
'''

TINY_TOML = '''
[pipeline]
name = "tiny"
output_dir = "runs/tiny"
seed = 0

[data]
source = "npz:tiny.npz"
val_fraction = 0.25
batch_size = 32

[teacher]
model = "zoo:tiny_teacher"

[teacher.train]
epochs = 10
lr = 2e-2

[student]
model = "zoo:tiny_student"

[distill]
epochs = 10
lr = 2e-2
control = true

[benchmark]
providers = ["cpu", "cuda"]
batch_sizes = [1, 8]
threads = [1]
warmup_runs = 2
min_runs = 10
min_seconds = 0.0
repetitions = 1
'''


def write_tiny(folder: Path) -> Path:
    """tiny.npz (400 digits), zoo.py (tiny models) and pipeline.toml written in `folder`; returns the folder."""
    import numpy as np

    src = Path(__file__).resolve().parents[1] / "compress" / "data" / "digits.npz"
    with np.load(src) as z:
        x = z["x"][:400].astype(np.float32)[:, None] / 16.0
        y = z["y"][:400]
    np.savez(folder / "tiny.npz", x=x, y=y)
    (folder / "zoo.py").write_text(TINY_ZOO)
    (folder / "pipeline.toml").write_text(textwrap.dedent(TINY_TOML))
    return folder


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """A folder with tiny.npz (400 digits), zoo.py (tiny models) and pipeline.toml; returns the folder."""
    return write_tiny(tmp_path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny pipeline as written (tiny_dir's folder), run once by the CLI from nothing: (its folder, the CLI
    result). Tests only read that folder; one that runs again, or runs more stages, takes a copy (ran_dir)."""
    from click.testing import CliRunner

    from compress.cli import main

    folder = write_tiny(tmp_path_factory.mktemp("tiny-run"))
    return folder, CliRunner().invoke(main, ["run", str(folder / "pipeline.toml"), "--quiet"])


@pytest.fixture
def ran_dir(tiny_run, tmp_path: Path) -> Path:
    """A copy of tiny_run's folder (pipeline.toml, tiny.npz, zoo.py, and runs/tiny with every stage done and cached),
    the test's own to change and run again: tiny_dir after the run a test would otherwise begin with."""
    folder, first = tiny_run
    assert first.exit_code == 0, first.output
    return copy_folder(folder, tmp_path)


def copy_folder(src: Path, dst: Path, *, only: tuple[str, ...] = ()) -> Path:
    """Copy the folder a module- or session-scoped fixture ran in into `dst` (a test's tmp_path), run folders and
    stage cache included, so the test may change it and run again while other tests read the original unchanged.
    With `only`, just those paths under `src` (e.g. the stage folders a test takes from the cache). Returns `dst`."""
    import shutil

    if not only:
        shutil.copytree(src, dst, dirs_exist_ok=True)
    for rel in only:
        shutil.copytree(src / rel, dst / rel, dirs_exist_ok=True)
    return dst


def write_toml(folder: Path, text: str, name: str = "pipeline.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path
