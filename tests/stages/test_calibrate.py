"""compress.quantize.calibrate: the min-max family's ranges from one optimised pass, handed to ORT as its own
calibration cache: the same quantized model as ORT's calibrator gives, one pass for both methods."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .test_bias_correction import SETTINGS, _model


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method", ["mean_minmax", "minmax"])
def test_one_pass_gives_the_model_orts_calibrator_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str):
    # setup: the conv net, pre-processed; 48 calibration samples, one a batch (as mean_minmax takes them)
    from compress.quantize import attempts as qa
    from compress.quantize import calibrate
    from compress.quantize import prepare as prep

    base = tmp_path / "base.onnx"
    prep.preprocess(_model(tmp_path), base, "static")
    x = np.random.default_rng(4).standard_normal((48, 3, 16, 16)).astype(np.float32) * 2 + 0.3
    calib = qa.batched({"x": x}, 1)
    settings = {**SETTINGS, "calibration_method": method}
    assert calibrate.supported()
    # execute: ORT's own calibrator, then this pass
    with monkeypatch.context() as m:
        m.setattr(calibrate, "supported", lambda: False)
        qa.quantize_once(base, tmp_path / "ort.onnx", settings, calib)
    qa.quantize_once(base, tmp_path / "ours.onnx", settings, calib)
    # assert: the same initializers, bit for bit (weights, scales, zero points), and no cache file left behind
    theirs, ours = _initializers(tmp_path / "ort.onnx"), _initializers(tmp_path / "ours.onnx")
    assert sorted(theirs) == sorted(ours)
    scales = [k for k in ours if k.endswith("_scale")]
    assert len(scales) > 5
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_both_methods_share_one_pass(tmp_path: Path):
    # setup
    from compress.quantize import attempts as qa
    from compress.quantize import calibrate
    from compress.quantize import prepare as prep

    base = tmp_path / "base.onnx"
    prep.preprocess(_model(tmp_path), base, "static")
    calib = qa.batched({"x": np.random.default_rng(5).standard_normal((16, 3, 16, 16)).astype(np.float32)}, 1)
    calibrate._batch_ranges.cache_clear()
    # execute: an attempt of each method on the same calibration set (a copy of it, as each attempt makes)
    qa.quantize_once(base, tmp_path / "a.onnx", {**SETTINGS, "calibration_method": "mean_minmax"}, calib)
    qa.quantize_once(base, tmp_path / "b.onnx", {**SETTINGS, "calibration_method": "minmax"},
                     [{k: v.copy() for k, v in f.items()} for f in calib])
    # assert: one pass, reused; the two models differ in their activation ranges
    info = calibrate._batch_ranges.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    a, b = _initializers(tmp_path / "a.onnx"), _initializers(tmp_path / "b.onnx")
    assert any(not np.array_equal(a[k], b[k]) for k in a if k.endswith("_scale"))
