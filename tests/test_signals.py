"""SIGTERM (CI cancellations, `kill`) and SIGHUP (a closed terminal) clean up as Ctrl-C does: one line, exit
128 + the signal, no scratch folder left, the run lock released. Each case signals a real subprocess mid-work."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .bench.test_harness import mlp
from .test_bad_inputs import EXTRA_ZOO, leftovers, set_key

pytestmark = pytest.mark.e2e

SIGNALS = [signal.SIGTERM, signal.SIGHUP]


def _signal_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 120) -> tuple[int, str]:
    """Send `sig` once `ready()` holds; return (exit code, stderr)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the process never reached the point to signal"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_during_a_pipeline_stage_releases_the_run(tiny_dir: Path, sig: int):
    # setup: a teacher that trains slowly and says when it has started
    (tiny_dir / "extra.py").write_text(EXTRA_ZOO)
    set_key(tiny_dir, "teacher", "model", '"extra:sleepy_teacher"')
    proc = subprocess.Popen([sys.executable, "-m", "compress", "run", "pipeline.toml", "--quiet"], cwd=tiny_dir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # execute
    code, err = _signal_when(proc, lambda: (tiny_dir / "started").exists(), sig)
    # assert: one line, 128 + signal, nothing half-written, and the lock is free for the next run at once
    name = signal.Signals(sig).name
    assert code == 128 + sig, err
    assert err.strip().splitlines() == [f"error: stopped by {name}; scratch files were removed and the run "
                                        "directory released; run the same command again to resume from the stages "
                                        "that finished"]
    assert leftovers(tiny_dir) == []
    import json  # the report says what stopped the stage (its error was "")

    teacher = json.loads((tiny_dir / "runs" / "tiny" / "report.json").read_text())["stages"][0]
    assert teacher["status"] == "failed" and teacher["error"] == (f"interrupted ({name}); rerun to resume: finished "
                                                                  "stages are cached")
    from compress.cache import run_lock

    with run_lock(tiny_dir / "runs" / "tiny"):
        pass


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_during_compress_quantize_removes_its_scratch_folder(tmp_path: Path, sig: int):
    # setup: a model whose static quantization takes seconds (remedies and all), and a strict budget
    model = mlp(tmp_path / "m.onnx", layers=24, width=256)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32))
    out = tmp_path / "q" / "m-int8.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "compress", "quantize", str(model), "--out", str(out),
                             "--calibration", str(tmp_path / "calib.npz"), "--max-cosine-drop", "0", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def attempting() -> bool:  # the scratch folder holds a first attempt: quantization is under way
        return any(p.name.startswith(".m-int8-") and any(p.glob("attempt-*.onnx"))
                   for p in out.parent.glob(".*")) if out.parent.is_dir() else False

    # execute
    code, err = _signal_when(proc, attempting, sig)
    # assert
    assert code == 128 + sig, err
    assert f"error: stopped by {signal.Signals(sig).name}" in err and "Traceback" not in err
    # the folder made for --out goes too: scratch attempts, a half-written model and the empty folder itself
    assert not out.parent.exists(), sorted(p.name for p in out.parent.iterdir())
    assert not list(Path(os.getcwd()).glob("sym_shape_infer_temp.onnx"))


@pytest.mark.parametrize("command", ["run", "quantize"])
def test_an_interrupted_command_promises_a_resume_only_where_there_is_a_cache(tmp_path, monkeypatch, command):
    # compress edge / quantize / bench keep nothing between runs: "resume from the stages that finished" was false
    from click.testing import CliRunner

    import compress.config
    from compress.bench import providers
    from compress.cli import main

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compress.config, "load_config", stop)
    monkeypatch.setattr(providers, "check_model_file", stop)
    args = ["run", str(tmp_path / "p.toml")] if command == "run" else ["quantize", str(tmp_path / "m.onnx"), "--out",
                                                                       str(tmp_path / "q.onnx")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130
    expected = ("interrupted; run the same command again to resume from the stages that finished" if command == "run"
                else "interrupted; nothing was kept; run the same command again to start over")
    assert result.output.strip().splitlines()[-1] == f"error: {expected}", result.output
