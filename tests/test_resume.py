"""Kill-and-resume: SIGKILL the tiny pipeline at five points, run it again, get the uninterrupted run's figures.

Each kill happens in a real subprocess (`python -c KILLER point n`) that wraps one function of the real pipeline so
the process kills itself with SIGKILL at a deterministic moment: mid teacher training, after distill's artifacts are
written but before its manifest, mid-write of an ONNX file, mid benchmark, mid-write of report.json. Nothing in the
package knows about these hooks. The second run must exit 0, reuse the stages that completed, leave no temp file, and
report the same accuracies, sizes and parities as a run that was never interrupted, with the artifacts of the stages
that finished before the kill byte-identical to what the killed process wrote.

Every run here, the uninterrupted one included, starts through the same `python -c KILLER` ("none" kills nothing),
so all of them import the same modules in the same order. Bit-identical weights from two separate trainings are not
something this test can ask of PyTorch: on one CI machine a teacher trained under `python -m compress` and one
trained under `python -c` differed in their last bits (same accuracy, same sizes), though not on this one.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .test_bad_inputs import EXTRA_ZOO, assert_one_line_error, invoke, leftovers, set_key

pytestmark = pytest.mark.e2e  # every case runs the tiny pipeline in subprocesses

KILLER = r'''
import os, signal, sys

point, count = sys.argv[1], int(sys.argv[2])
calls = [0]


def due() -> bool:
    calls[0] += 1
    return calls[0] >= count


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


import compress.bench.harness
import compress.runner
import compress.tasks.classification

if point == "teacher-training":  # the count-th training batch (fit calls kd_loss once per batch)
    real_loss = compress.tasks.classification.kd_loss

    def kd_loss(*args, **kwargs):
        if due():
            die()
        return real_loss(*args, **kwargs)

    compress.tasks.classification.kd_loss = kd_loss
elif point == "distill-before-manifest":  # student.safetensors and control.safetensors written, manifest not
    real_save = compress.runner.save_manifest

    def save_manifest(stage_dir, *args, **kwargs):
        if stage_dir.name == "distill":
            die()
        return real_save(stage_dir, *args, **kwargs)

    compress.runner.save_manifest = save_manifest
elif point in ("export-write", "report-write"):  # the temp file is complete, the rename has not happened
    target = {"export-write": "student.onnx", "report-write": "report.json"}[point]
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == target:
            die()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
elif point == "benchmark":  # the count-th timed repetition of the benchmark stage (models are timed interleaved)
    real_repetition = compress.bench.harness._Job.repetition

    def repetition(self, *args, **kwargs):
        if due():
            die()
        return real_repetition(self, *args, **kwargs)

    compress.bench.harness._Job.repetition = repetition
elif point != "none":
    raise SystemExit(f"unknown kill point {point}")

from compress.cli import main

main(["run", "pipeline.toml", "--quiet"], prog_name="compress")
'''

# point -> (call count, stages the resumed run must take from the cache)
KILL_POINTS = {
    "teacher-training": (25, []),
    "distill-before-manifest": (1, ["teacher"]),
    "export-write": (1, ["teacher", "distill"]),
    "benchmark": (2, ["teacher", "distill", "export"]),
    "report-write": (1, ["teacher", "distill", "export", "benchmark"]),
}

CACHED_STAGES = ("teacher", "distill", "export")  # stages with artifacts; each case names those it must reuse


def run_cli(folder: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, *args], cwd=folder, capture_output=True, text=True, timeout=timeout,
                          env=env)


def figures(run_dir: Path) -> dict:
    """What must not change when a run is resumed: per-model accuracy, size, parity; the final pick."""
    report = json.loads((run_dir / "report.json").read_text())
    models = {m["name"]: {k: m[k] for k in ("params", "bytes", "accuracy", "accuracy_torch", "parity", "path")}
              for m in report["models"]}
    return {"final": report["final"], "models": models}


def artifact_hashes(run_dir: Path, stages) -> dict[str, str]:
    """{artifact: sha256} from the manifests of `stages`, recomputed from the files themselves."""
    import hashlib

    hashes = {}
    for stage in stages:
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        for rel in manifest["artifacts"]:
            hashes[rel] = hashlib.sha256((run_dir / rel).read_bytes()).hexdigest()
    return hashes


def statuses(run_dir: Path) -> dict[str, str]:
    report = json.loads((run_dir / "report.json").read_text())
    return {s["name"]: s["status"] for s in report["stages"]}


def make_tiny(folder: Path) -> Path:
    """The conftest `tiny_dir` folder (shorter training), for a module-scoped fixture."""
    import textwrap

    import numpy as np

    from .conftest import TINY_TOML, TINY_ZOO

    src = Path(__file__).resolve().parents[1] / "compress" / "data" / "digits.npz"
    with np.load(src) as z:
        np.savez(folder / "tiny.npz", x=z["x"][:400].astype(np.float32)[:, None] / 16.0, y=z["y"][:400])
    (folder / "zoo.py").write_text(TINY_ZOO)
    (folder / "pipeline.toml").write_text(textwrap.dedent(TINY_TOML))
    # fewer epochs than the fixture: each case runs the pipeline about twice, in fresh processes
    set_key(folder, "teacher.train", "epochs", "4")
    set_key(folder, "distill", "epochs", "3")
    return folder


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The tiny pipeline run once without interruption, in its own process: (a pristine copy of its folder, figures)."""
    folder = make_tiny(tmp_path_factory.mktemp("baseline"))
    pristine = tmp_path_factory.mktemp("pristine")
    shutil.copytree(folder, pristine, dirs_exist_ok=True)
    done = run_cli(folder, "-c", KILLER, "none", "0")
    assert done.returncode == 0, done.stderr
    return pristine, figures(folder / "runs" / "tiny")


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_run_resumes_to_identical_figures(baseline: tuple[Path, dict], tmp_path: Path, point: str):
    # setup
    pristine, expected = baseline
    shutil.copytree(pristine, tmp_path, dirs_exist_ok=True)
    count, cached = KILL_POINTS[point]
    run_dir = tmp_path / "runs" / "tiny"
    # execute: killed at the point, then run again
    killed = run_cli(tmp_path, "-c", KILLER, point, str(count))
    assert killed.returncode == -signal.SIGKILL, f"the kill point was never reached: {killed.stderr}"
    for written in [run_dir / "report.json", *run_dir.glob("*/manifest.json")]:
        if written.exists():
            json.loads(written.read_text())  # whatever the kill left under a real name is whole
    assert not (point == "report-write" and (run_dir / "report.json").exists())
    finished = artifact_hashes(run_dir, cached)  # what the stages that finished before the kill wrote
    resumed = run_cli(tmp_path, "-c", KILLER, "none", "0")
    # assert
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.strip() == ""
    assert figures(run_dir) == expected
    assert artifact_hashes(run_dir, cached) == finished  # reused as they were, not written again
    got = statuses(run_dir)
    assert [s for s in CACHED_STAGES + ("benchmark",) if got[s] == "cached"] == cached, got
    assert leftovers(tmp_path) == []


def test_second_concurrent_run_is_refused(tiny_dir: Path):
    # setup: a first run that trains slowly and says when it has started (and so holds the lock)
    import time

    (tiny_dir / "extra.py").write_text(EXTRA_ZOO)
    set_key(tiny_dir, "teacher", "model", '"extra:sleepy_teacher"')
    first = subprocess.Popen([sys.executable, "-m", "compress", "run", "pipeline.toml", "--quiet"], cwd=tiny_dir,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (tiny_dir / "started").exists():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "first run never started training"
            time.sleep(0.05)
        # execute
        result = invoke(tiny_dir, "run", "pipeline.toml", "--quiet")
        # assert
        assert_one_line_error(result, tiny_dir, "runs/tiny", "another compress run is using this run directory",
                              "wait for it to finish")
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the lock dies with its holder: the next run may take it at once
    from compress.cache import run_lock

    with run_lock(tiny_dir / "runs" / "tiny"):
        pass


def test_a_folder_compress_did_not_write_is_never_cleared(tiny_dir: Path):
    # output_dir = "." and the user's own teacher/ folder beside the file: the teacher stage deleted it (a checkpoint
    # kept there was gone, and the error that followed blamed the user)
    from click.testing import CliRunner

    from compress.cli import main

    toml = tiny_dir / "pipeline.toml"
    toml.write_text(toml.read_text().replace('output_dir = "runs/tiny"', 'output_dir = "."'))
    (tiny_dir / "teacher").mkdir()
    (tiny_dir / "teacher" / "mine.safetensors").write_bytes(b"the user's")
    result = CliRunner().invoke(main, ["run", str(toml), "--quiet"])
    assert result.exit_code == 2
    assert result.output.strip().endswith(f"{tiny_dir / 'teacher'}: the teacher stage writes here, and nothing shows "
                                          "compress wrote this folder (no manifest or stage mark in it, no report or "
                                          "finished stage beside it): it is left as it is; delete it if an earlier "
                                          "run left it, or give [pipeline] output_dir a folder of its own")
    assert (tiny_dir / "teacher" / "mine.safetensors").read_bytes() == b"the user's"


def test_a_stage_folder_a_killed_run_of_an_older_version_left_is_cleared(ran_dir: Path):
    # no stage mark (versions before it wrote none), but a finished stage beside it: an earlier run's, cleared
    from click.testing import CliRunner

    from compress.cli import main

    tiny_dir = ran_dir  # the tiny pipeline run once already (tiny_run), in a copy of its folder
    toml = tiny_dir / "pipeline.toml"
    run = tiny_dir / "runs" / "tiny"
    (run / "distill" / "manifest.json").unlink()
    (run / "distill" / ".compress-stage").unlink()
    (run / "distill" / "student.safetensors.tmp").write_bytes(b"half written")
    result = CliRunner().invoke(main, ["run", str(toml), "--quiet"])
    assert result.exit_code == 0, result.output
    assert not (run / "distill" / "student.safetensors.tmp").exists()
