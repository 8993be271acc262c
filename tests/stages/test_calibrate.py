"""compress.quantize.calibrate: the min-max family's ranges from one optimised pass, handed to ORT as its own
calibration cache: the same quantized model as ORT's calibrator gives, one pass for both methods."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .test_bias_correction import SETTINGS, _preprocessed


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method, batch", [("mean_minmax", 1), ("minmax", 1), ("minmax", 8)])
def test_one_pass_gives_the_model_orts_calibrator_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str,
                                                        batch: int):
    # setup: the conv net, pre-processed; 48 calibration samples, `batch` a batch (mean_minmax takes them one by one)
    from compress.quantize import attempts as qa
    from compress.quantize import calibrate

    base = _preprocessed(tmp_path)
    x = np.random.default_rng(4).standard_normal((48, 3, 16, 16)).astype(np.float32) * 2 + 0.3
    calib = qa.batched({"x": x}, batch)
    settings = {**SETTINGS, "calibration_method": method}
    assert calibrate.supported()
    monkeypatch.setattr(calibrate, "FEW_VALUES", 0)  # every tensor by ORT's moving average (the next test: the rest)
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
def test_mean_minmax_ranges_a_tensor_with_few_values_a_sample_by_its_high_sample_extremes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # the mean of per-sample maxima of a few hundred values clips each sample's top values: a small MLP's layers fell
    # to cosine 0.92 where minmax gave 0.99. Those tensors take the 95th percentile of the per-sample extremes: of
    # 16 samples, the extremes themselves (an outlier among 20 or more is left out: test_quantize's outlier test)
    from compress.quantize import attempts as qa
    from compress.quantize import calibrate

    base = _preprocessed(tmp_path)
    x = np.random.default_rng(6).standard_normal((16, 3, 16, 16)).astype(np.float32)
    names, _, _, values = calibrate._measure(base, qa.batched({"x": x}, 1))
    few = {n for n, v in zip(names, values) if v < 2000}
    assert few and len(few) < len(names)  # both kinds in this net
    monkeypatch.setattr(calibrate, "FEW_VALUES", 2000)
    # execute: mean_minmax with the rule, without it (every tensor by its mean), and minmax
    models = {}
    for name, method, few_values in (("rule", "mean_minmax", 2000), ("mean", "mean_minmax", 0), ("extremes", "minmax",
                                                                                                  2000)):
        monkeypatch.setattr(calibrate, "FEW_VALUES", few_values)
        qa.quantize_once(base, tmp_path / f"{name}.onnx", {**SETTINGS, "calibration_method": method},
                         qa.batched({"x": x}, 1))
        models[name] = _initializers(tmp_path / f"{name}.onnx")
    # assert: each activation scale is the extremes' where its tensor is small, the mean's elsewhere
    scales = [n for n in names if f"{n}_scale" in models["rule"]]
    assert {n for n in scales if n in few} and {n for n in scales if n not in few}
    for n in scales:
        expected = models["extremes" if n in few else "mean"][f"{n}_scale"]
        np.testing.assert_array_equal(models["rule"][f"{n}_scale"], expected, err_msg=n)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_both_methods_share_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # setup: mean_minmax's samples one a batch, minmax's eight a batch (as quantize_once cuts them), counted passes
    from compress.quantize import attempts as qa
    from compress.quantize import calibrate

    base = _preprocessed(tmp_path)
    x = np.random.default_rng(5).standard_normal((16, 3, 16, 16)).astype(np.float32)
    passes = []
    measure = calibrate._measure
    monkeypatch.setattr(calibrate, "_measure", lambda *a: passes.append(1) or measure(*a))
    monkeypatch.setattr(calibrate, "FEW_VALUES", 0)  # every tensor of this small net by its mean under mean_minmax
    # execute: an attempt of each method on the same samples
    qa.quantize_once(base, tmp_path / "a.onnx", {**SETTINGS, "calibration_method": "mean_minmax"},
                     qa.batched({"x": x}, 1))
    qa.quantize_once(base, tmp_path / "b.onnx", {**SETTINGS, "calibration_method": "minmax"}, qa.batched({"x": x}, 8))
    # assert: one pass, reused; the two models differ in their activation ranges
    assert len(passes) == 1
    a, b = _initializers(tmp_path / "a.onnx"), _initializers(tmp_path / "b.onnx")
    assert any(not np.array_equal(a[k], b[k]) for k in a if k.endswith("_scale"))


def test_a_model_with_nothing_to_calibrate_is_left_to_ort(tmp_path: Path):
    # setup: x -> Exp -> y, an op ORT does not quantize
    import onnx
    from onnx import TensorProto, helper

    from compress.quantize import calibrate

    graph = helper.make_graph([helper.make_node("Exp", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "exp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    # execute / assert: no cache written; ORT's own calibrator then finds nothing to quantize
    assert calibrate.write_cache(path, [{"x": np.ones((1, 4), np.float32)}], "minmax", tmp_path / "c") is None
    assert not (tmp_path / "c").exists()


def test_a_model_rewritten_in_place_is_measured_again(tmp_path: Path):
    # setup: a Relu model, its ranges remembered; then the same file name, size and time with other weights
    import os

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.quantize import calibrate

    def save(scale: float) -> None:
        w = numpy_helper.from_array(np.full((4, 4), scale, np.float32), "w")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))

    path = tmp_path / "m.onnx"
    feed = [{"x": np.ones((1, 4), np.float32)}]
    save(1.0)
    stat = path.stat()
    first = calibrate._sample_ranges(path, feed)[2].copy()
    save(3.0)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # execute
    second = calibrate._sample_ranges(path, feed)[2]
    # assert: the new weights' range (12 = 4 x 3), not the remembered one (4)
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert first.max() == 4.0 and second.max() == 12.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_a_histogram_method_calibrates_once_and_later_attempts_read_its_ranges(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch,
                                                                              method: str):
    # setup: the conv net, pre-processed; ORT's calibrators counted; the first conv's name (kept in float later)
    import importlib

    import onnx
    from onnxruntime.quantization import calibrate as ort_calibrate

    from compress.quantize import attempts as qa
    from compress.quantize import calibrate

    base = _preprocessed(tmp_path)
    x = np.random.default_rng(6).standard_normal((16, 3, 16, 16)).astype(np.float32)
    calib = qa.batched({"x": x}, 4)
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the module, not the function
    made = []
    create = ort_calibrate.create_calibrator
    monkeypatch.setattr(ort_quantize, "create_calibrator", lambda *a, **k: made.append(1) or create(*a, **k))
    settings = {**SETTINGS, "calibration_method": method}
    conv = next(n.name for n in onnx.load(str(base)).graph.node if n.op_type == "Conv")
    # execute: the method's attempt twice, then with a node kept in float, then on other samples
    qa.quantize_once(base, tmp_path / "a.onnx", settings, calib)
    qa.quantize_once(base, tmp_path / "b.onnx", settings, calib)
    qa.quantize_once(base, tmp_path / "c.onnx", {**settings, "nodes_to_exclude": [conv]}, calib)
    qa.quantize_once(base, tmp_path / "d.onnx", settings, qa.batched({"x": x[:8] * 3}, 4))
    weighted = {**settings, "op_types": list(qa.WEIGHTED)}
    qa.quantize_once(base, tmp_path / "e.onnx", weighted, calib)  # fewer op types: the first attempt's ranges
    with monkeypatch.context() as m:  # ORT's calibrator on those op types alone, nothing remembered
        m.setattr(calibrate, "supported", lambda: False)
        qa.quantize_once(base, tmp_path / "f.onnx", weighted, calib)
    # assert: ORT calibrated for the first, for the other samples and (unremembered) for f only; the remembered ranges
    # give the models ORT's calibrator gave, bit for bit; no cache file left behind
    assert len(made) == 3
    e, f = _initializers(tmp_path / "e.onnx"), _initializers(tmp_path / "f.onnx")
    assert sorted(e) == sorted(f) != sorted(_initializers(tmp_path / "a.onnx"))
    for name in e:
        np.testing.assert_array_equal(e[name], f[name], err_msg=name)
    a, b = _initializers(tmp_path / "a.onnx"), _initializers(tmp_path / "b.onnx")
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    d = _initializers(tmp_path / "d.onnx")
    assert any(not np.array_equal(a[k], d[k]) for k in a if k.endswith("_scale") and k in d)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_the_high_rank_leaves_out_one_wild_sample_from_20_samples_on():
    # numpy's 95th percentile ('higher') of 20 values is their maximum: one wild sample among 20 set the range
    from compress.quantize.calibrate import _high_rank

    for n, kept in ((19, 100.0), (20, 18.0), (64, 60.0)):
        highs = np.arange(n, dtype=np.float32)[:, None]
        highs[-1] = 100.0  # the wild one
        assert float(_high_rank(lower=False)(highs, axis=0)[0]) == kept, n
    lows = -np.arange(20, dtype=np.float32)[:, None]
    assert float(_high_rank(lower=True)(lows, axis=0)[0]) == -18.0
    assert np.isnan(_high_rank(lower=False)(np.full((4, 1), np.nan, np.float32), axis=0)[0])  # an empty tensor's
