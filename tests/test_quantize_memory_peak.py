"""`compress quantize` holds a model's weights a few times over, not seven to ten: the peak RSS a quantization adds,
measured in a child process (VmHWM after the imports, /proc/self/clear_refs), for a 48 MB Gemm classifier.

Before compress.quantize.lean (2026-12-07) this model took 8.1x its weights dynamic and 9.9x static (ORT's dynamic
quantizer deep-copied the model it held and read it back; bias correction held every layer's float64 weights twice
and a session from serialized bytes; shape inference copied the weights through C++); now about 5x both ways, of
which Python's own imports during the run are a part. The bound sits between the two."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.test_quantize_memory_lean import _gemms

BOUND = 7.0
"""Peak RSS growth allowed, in multiples of the model's weight bytes (old code: 8.1 dynamic, 9.9 static)."""

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc (Linux)")

CHILD = textwrap.dedent('''
    import sys

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    import numpy, onnx, onnxruntime  # noqa: F401 - imported before the baseline: their memory is not the run's
    from compress.cli import main

    before = status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:  # the high-water mark starts at the baseline
            f.write("5")
    except OSError:
        pass
    try:
        main(["quantize", *sys.argv[1:], "--quiet"], standalone_mode=False)
    except SystemExit as exc:
        assert not exc.code, exc.code
    print("GROWTH", status("VmHWM") - before)
''')


def _classifier(path: Path, calib: Path) -> int:
    """A 1024 -> 4096 -> 2048 -> 10 Gemm classifier (weights transposed, as torch exports Linear layers) at `path`,
    16 calibration rows at `calib`; returns its weight bytes."""
    sizes = ((4096, 1024), (2048, 4096), (10, 2048))
    _gemms(path, sizes)
    rng = np.random.default_rng(0)
    np.savez(calib, x=rng.standard_normal((16, 1024)).astype(np.float32))
    return sum(4 * (rows * cols + rows) for rows, cols in sizes)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_quantizing_holds_the_weights_a_few_times_not_seven(tmp_path: Path, mode: str):
    model, calib = tmp_path / "mlp.onnx", tmp_path / "calib.npz"
    weights = _classifier(model, calib)
    (tmp_path / "child.py").write_text(CHILD)
    args = ["--out", str(tmp_path / f"q-{mode}.onnx"), "--mode", mode, "--calibration", str(calib)]
    done = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(model), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    growth = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("GROWTH")))
    assert growth < BOUND * weights, (f"{mode}: quantizing grew the process by {growth / 2**20:.0f} MB, "
                                      f"{growth / weights:.1f}x the model's {weights / 2**20:.0f} MB of weights")
