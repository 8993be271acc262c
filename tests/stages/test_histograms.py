"""compress.quantize.histograms: ORT's histogram calibration counted faster, to the same histograms and ranges."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .test_bias_correction import SETTINGS, _preprocessed


def _rounds(seed: int) -> list[dict[str, list[np.ndarray]]]:
    """Five collect calls of two batches each: a widening tensor, a shrinking one, one that starts at zero, a constant
    one. The widening one's extremes are +-128 x its gain, so the first bins are 1/16 (percentile) and 1/8 (entropy)
    wide and exact, and a third of its values are on the 1/16 grid: many sit on bin edges."""
    rng = np.random.default_rng(seed)
    rounds = []
    for step, gain in enumerate((1.0, 2.5, 0.5, 4.0, 1.0)):
        def batch(scale: float) -> np.ndarray:
            a = (rng.standard_normal(30_000) * rng.exponential(1, 30_000) * 40 * scale).astype(np.float32)
            a[::3] = np.round(a[::3] * 16) / 16
            a = np.clip(a, -128 * scale, 128 * scale)
            a[:3] = 128 * scale, -128 * scale, 0
            return a.reshape(3, 100, 100)
        rounds.append({"widening": [batch(gain), batch(gain)], "shrinking": [batch(1 / (step + 1))] * 2,
                       "from_zero": [batch(0.0 if step < 2 else gain)] * 2,
                       "constant": [np.full((2, 8), 0.25, np.float32)] * 2})
    return rounds


@pytest.mark.parametrize("method, symmetric", [("percentile", True), ("percentile", False), ("entropy", False)])
def test_the_collector_keeps_the_histograms_orts_keeps(monkeypatch: pytest.MonkeyPatch, method: str, symmetric: bool):
    # setup: ORT's collector and ours, each array counted in several slices on the thread pool
    from onnxruntime.quantization.calibrate import HistogramCollector

    from compress.quantize import histograms

    monkeypatch.setattr(histograms, "PART", 4_000)
    bins = 512 if method == "entropy" else 2048  # entropy's threshold search grows with the bins: 34 s at 2048
    theirs = HistogramCollector(method, symmetric, bins, 128, 99.99, "same")
    ours = histograms._collector_class()(method, symmetric, bins, 128, 99.99, "same")
    # execute: the same five collect calls on both
    for data in _rounds(3):
        theirs.collect(data)
        ours.collect(data)
    # assert: every histogram, edge, extreme and threshold the same, of the same type; so are the ranges
    assert sorted(ours.histogram_dict) == sorted(theirs.histogram_dict)
    for tensor, kept in theirs.histogram_dict.items():
        assert len(ours.histogram_dict[tensor]) == len(kept)
        for a, b in zip(ours.histogram_dict[tensor], kept):
            assert np.asarray(a).dtype == np.asarray(b).dtype, tensor
            np.testing.assert_array_equal(a, b, err_msg=tensor)
    assert len(theirs.histogram_dict["widening"][0]) > bins  # the bins grew: the merge and extension paths ran
    mine, ort = ours.compute_collection_result(), theirs.compute_collection_result()
    for tensor in ort:
        np.testing.assert_array_equal(np.asarray(mine[tensor][:2], dtype=np.float64),
                                      np.asarray(ort[tensor][:2], dtype=np.float64), err_msg=tensor)


@pytest.mark.parametrize("method, symmetric", [("percentile", True), ("percentile", False), ("entropy", False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_batches_of_different_shapes_are_counted_as_orts_collector_counts_their_values(
        method: str, symmetric: bool, dtype: type):
    # setup: 200 samples in batches of 32, the last one of 8 (numpy cannot stack them: ORT's collector raised
    # "inhomogeneous shape"), in two collect calls, the second one wider (float32, counted by compress) or narrower
    # (float16, counted by ORT, whose merge of a wider float16 range asks numpy for too many bins); ORT's collector
    # given the same values flat
    from onnxruntime.quantization.calibrate import HistogramCollector

    from compress.quantize import histograms

    rng = np.random.default_rng(5)
    calls = [[(rng.standard_normal((rows, 4, 5)) * gain).astype(dtype) for rows in (32,) * 6 + (8,)]
             for gain in ((1.0, 3.0) if dtype == np.float32 else (1.0, 0.5))]
    theirs = HistogramCollector(method, symmetric, 512, 128, 99.99, "same")
    ours = histograms._collector_class()(method, symmetric, 512, 128, 99.99, "same")
    flattening = histograms._flattening_class()(method, symmetric, 512, 128, 99.99, "same")
    # execute
    for batches in calls:
        theirs.collect({"t": np.concatenate([b.reshape(-1) for b in batches])})
        ours.collect({"t": batches})
        flattening.collect({"t": batches})
    # assert: every histogram, edge, extreme and threshold the same
    for collector in (ours, flattening):
        for a, b in zip(collector.histogram_dict["t"], theirs.histogram_dict["t"], strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_a_histogram_attempt_counts_with_the_collector_and_writes_orts_model(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          method: str):
    # setup: the conv net, pre-processed; our collector's calls counted
    import onnx
    from onnxruntime.quantization import calibrate as ort_calibrate

    from compress.quantize import attempts as qa
    from compress.quantize import calibrate, histograms

    base = _preprocessed(tmp_path)
    x = np.random.default_rng(8).standard_normal((16, 3, 16, 16)).astype(np.float32)
    calib = qa.batched({"x": x}, 4)
    settings = {**SETTINGS, "calibration_method": method}
    made = histograms._collector_class
    used = []

    def counted() -> type:
        cls = made()
        collect = cls.collect
        cls.collect = lambda self, data: used.append(len(data)) or collect(self, data)
        return cls

    monkeypatch.setattr(histograms, "_collector_class", counted)
    # execute: the attempt as compress makes it, then ORT's own calibrator (nothing remembered, nothing swapped)
    qa.quantize_once(base, tmp_path / "ours.onnx", settings, calib)
    with monkeypatch.context() as m:
        m.setattr(calibrate, "supported", lambda: False)
        m.setattr(histograms, "faster", lambda: __import__("contextlib").nullcontext())
        qa.quantize_once(base, tmp_path / "ort.onnx", settings, calib)
    # assert: our collector counted the tensors, ORT's class is back in place, and the models are the same bytes
    assert used and min(used) > 3  # every calibrated tensor, in each collect call
    assert ort_calibrate.HistogramCollector.__module__ == "onnxruntime.quantization.calibrate"
    assert onnx.load(str(tmp_path / "ours.onnx")) == onnx.load(str(tmp_path / "ort.onnx"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_explicit_edges_are_counted_as_np_histogram_counts_them(monkeypatch: pytest.MonkeyPatch, dtype: type):
    # setup: near-uniform edges, jittered so the arithmetic guess is often a bin off, with a run of equal edges; values
    # on every edge, a float32 step either side of it, out of range, NaN and the data a collector sees
    from compress.quantize import histograms

    monkeypatch.setattr(histograms, "PART", 3_000)
    rng = np.random.default_rng(11)
    edges = np.sort(np.linspace(0.5, 9.0, 700) + rng.uniform(-0.02, 0.02, 700)).astype(dtype)
    edges[300:303] = edges[300]
    on = edges.astype(np.float32)
    x = np.concatenate([on, np.nextafter(on, np.float32(np.inf)), np.nextafter(on, np.float32(-np.inf)),
                        np.float32([0.0, 0.4999, 9.5, np.nan, -1.0]),
                        np.abs(rng.standard_normal(20_000) * 4).astype(np.float32)])
    rng.shuffle(x)
    # execute
    ours = histograms.explicit([x[:9_000], x[9_000:]], edges)
    # assert: every bin as numpy counts it (sorted search, the last bin closed)
    np.testing.assert_array_equal(ours, np.histogram(x, bins=edges)[0])


def test_a_range_too_narrow_for_the_bins_is_counted_around_the_value_where_orts_collector_raises():
    # setup: |x| of about 1e9 that varies by one float32 step over the sample (so 2048 bins cannot fit between)
    from onnxruntime.quantization.calibrate import HistogramCollector

    from compress.quantize import histograms

    a = np.full((2, 512), 1e9, np.float32)
    a[0, 0] = np.nextafter(np.float32(1e9), np.float32(2e9))
    constant = np.full((2, 512), -3e9, np.float32)  # numpy's widening of a one-value range by 0.5 is lost there
    theirs = HistogramCollector("percentile", True, 2048, 128, 99.99, "same")
    ours = histograms._collector_class()("percentile", True, 2048, 128, 99.99, "same")
    # execute / assert: ORT's raises; ours keeps every value in 2048 bins around it, and yields a finite range
    with pytest.raises(ValueError, match="Too many bins"):
        theirs.collect({"t": [a]})
    ours.collect({"t": [a], "c": [constant]})
    assert ours.histogram_dict["c"][0].sum() == constant.size
    hist, edges = ours.histogram_dict["t"][:2]
    assert hist.sum() == a.size and len(hist) == 2048
    assert edges[0] < 1e9 < edges[-1] and edges[-1] - edges[0] >= 1.0
    ours.collect({"t": [a]})  # the next call counts against those edges
    assert ours.histogram_dict["t"][0].sum() == 2 * a.size
    ours.collect({"t": [a * 4]})  # a wider batch extends the bins by their first width: a few thousand, not millions
    assert ours.histogram_dict["t"][0].sum() == 3 * a.size and len(ours.histogram_dict["t"][0]) < 20_000
    low, high = ours.compute_collection_result()["t"][:2]
    assert np.isfinite(float(low)) and np.isfinite(float(high)) and float(high) >= 1e9 - 1
