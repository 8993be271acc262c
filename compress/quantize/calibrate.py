"""Min-max calibration in one pass, shared by the attempts that use it.

Each static attempt used to run ONNX Runtime's calibrator again. The min-max family needs only each tensor's minimum
and maximum per calibration batch: this module collects those once per model and calibration set, for the tensors
ORT would calibrate (its own selection, on its own shape-inferred model) with ORT's own ReduceMin/ReduceMax, and
hands ORT the ranges through quantize_static's calibration cache (ORT >= 1.32). So 'mean_minmax' (the mean of the
batches' minima and maxima, as ORT's moving average over one pass) and 'minmax' (the extremes) both come from one
pass, and the quantized model is bit for bit the one ORT's calibrator gives (tested). A pass costs what ORT's does
(ResNet-50: 5.7 s for 64 samples against 5.2 s); the second min-max attempt then costs none. Where ORT has no
calibration cache, ORT calibrates as before. The histogram methods stay ORT's calibrators, but their ranges are
remembered too (`remembered_histograms`): a later attempt with the same method reads them from ORT's cache.
"""
from __future__ import annotations

import contextlib
import inspect
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("mean_minmax", "minmax")
"""Calibration methods this pass serves; the histogram methods (entropy, percentile) stay ORT's."""


def supported() -> bool:
    """Whether this onnxruntime's quantize_static takes a calibration cache."""
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def write_cache(base: Path, calib: list[dict[str, np.ndarray]], method: str, path: Path) -> Path | None:
    """The ranges of `method` over `calib` for the model at `base`, written where quantize_static's
    calibration_cache_path reads them; returns `path`, or None when there is nothing to calibrate or a tensor to
    calibrate is not float32 (ORT then calibrates as it would)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    from compress.onnx.graph import fixed_batch

    whole = bool(fixed_batch(base))  # a model fixed at its batch size runs no single samples
    batches = [[feed] if whole else _units(feed) for feed in calib]
    names, lows, highs, sizes = _sample_ranges(base, [unit for units in batches for unit in units])
    if not names:
        return None
    # per calibration batch, as ORT's calibrator sees them: a batch's minimum is its samples' smallest, exactly
    starts = np.cumsum([0, *(len(units) for units in batches[:-1])])
    lows, highs = np.minimum.reduceat(lows, starts, axis=0), np.maximum.reduceat(highs, starts, axis=0)
    # ORT's own arithmetic (MinMaxCalibrater.compute_data), tensor by tensor on (batches, 1) float32 arrays: a range
    # one float32 step off moves a scale by one step, and that alone flipped 2 of a ResNet-50's 300 gate images
    extremes = (np.nanmin, np.nanmax) if method == "minmax" else (_high_rank(lower=True), _high_rank(lower=False))
    data = {}
    for i, n in enumerate(names):
        lo, hi = (np.nanmean, np.nanmean) if method == "mean_minmax" and sizes[i] >= FEW_VALUES else extremes
        data[n] = (lo(lows[:, i:i + 1].copy(), axis=0), hi(highs[:, i:i + 1].copy(), axis=0))
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
    return path


FEW_VALUES = 10_000
"""'mean_minmax' ranges a tensor with fewer values a sample than this by a high rank of its per-sample maxima (and a
low one of the minima: the most extreme 5% of samples left out, _high_rank), not their mean. The mean of per-sample
maxima of n values sits near their (1 - 1/n) quantile: inside the 99.99th percentile below 10,000 values, so it clips
each sample's typical top values, not outliers (a 10-16-16-1 MLP regressor: cosine 0.922 at the first attempt,
0.991 now). The rank still leaves out the top 5% of samples, one wild calibration sample among 20 or more among
them, where the extremes ('minmax') would take it. Where ORT calibrates itself (an onnxruntime without calibration
caches, a tensor that is not float32: write_cache returns None) 'mean_minmax' is its plain mean."""


def _high_rank(*, lower: bool) -> Any:
    """The per-sample extreme that leaves out the most extreme 5% of samples (of n, the k-th largest maximum or
    smallest minimum, k = 1 + floor(n / 20): the extremes themselves under 20 samples, one left out at 20): an element
    of them, so a float32 range as measured. NaN (an empty tensor's) where no sample has a value."""
    def rank(a: np.ndarray, axis: int) -> np.ndarray:
        values = np.sort(a, axis=axis)  # NaN sorts last
        valid = np.sum(~np.isnan(a), axis=axis, keepdims=True)
        k = valid // 20
        at = k if lower else np.maximum(valid - 1 - k, 0)
        picked = np.take_along_axis(values, np.minimum(at, a.shape[axis] - 1), axis=axis)
        return np.where(valid > 0, picked, np.nan).astype(a.dtype).squeeze(axis)
    return rank


KEPT = 2
"""Models (and calibration sets) whose sample ranges stay remembered: the attempts of one quantize run share one."""
_remembered: OrderedDict[tuple, tuple[list[str] | None, np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()


def _sample_ranges(base: Path, units: list[dict[str, np.ndarray]]) -> tuple[list[str] | None, np.ndarray, np.ndarray,
                                                                           np.ndarray]:
    """(tensors, minima, maxima, values): each calibrated tensor's range in each sample of `units` (samples x
    tensors, float32) and its fewest values in a sample, remembered per model file and sample content, so the same
    samples in other batches hit."""
    key = (*_file_key(base), _fingerprint(units))
    if key in _remembered:
        _remembered.move_to_end(key)
        return _remembered[key]
    got = _measure(base, units)
    _remembered[key] = got
    while len(_remembered) > KEPT:
        _remembered.popitem(last=False)
    return got


def _file_key(base: Path) -> tuple:
    """The model file's path and identity: a model rewritten in place with the same size and time misses too."""
    stat = base.stat()
    return str(base.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns


def _units(feed: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """A batch as single samples when every input shares its first axis; else the batch as one unit."""
    sizes = {np.shape(v)[0] if np.ndim(v) else None for v in feed.values()}
    if len(sizes) != 1 or None in sizes or next(iter(sizes)) < 2:
        return [feed]
    return [{k: v[i:i + 1] for k, v in feed.items()} for i in range(next(iter(sizes)))]


def _fingerprint(units: list[dict[str, np.ndarray]]) -> tuple:
    """Per input: dtype, a sample's shape, the number of samples and a running checksum of their bytes in order:
    the same samples give the same key however they were batched."""
    out = []
    for name in sorted(units[0]) if units else []:
        check = 1
        for unit in units:
            check = zlib.adler32(np.ascontiguousarray(unit[name]).tobytes(), check)
        last = np.asarray(units[-1][name])
        out.append((name, str(last.dtype), last.shape, len(units), check))
    return tuple(out)


def _measure(base: Path, units: list[dict[str, np.ndarray]]) -> tuple[list[str] | None, np.ndarray, np.ndarray,
                                                                      np.ndarray]:
    """One ORT pass of the model with a ReduceMin, a ReduceMax and a Size on each tensor ORT would calibrate."""
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    model = load_model_with_shape_infer(base)  # what ORT's calibrator selects from (the shapes give the types)
    names = selected_tensors(model)
    if not names:
        return names, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros(0)
    handed = [model]  # reduced() drops the last reference before its session opens: one copy of the weights
    del model
    values = reduced(handed.pop(), names, ("ReduceMin", "ReduceMax", "Size"), units)
    ranges = values[:, :, :2].astype(np.float32)  # ORT's float32
    return names, ranges[:, :, 0].copy(), ranges[:, :, 1].copy(), np.min(values[:, :, 2], axis=0)


def reduced(model: Any, names: list[str], ops: tuple[str, ...], units: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Each tensor `names` of `model` (an onnx ModelProto, consumed: cleared once written for its session) reduced by
    each of `ops` (ReduceMin, ReduceMax, ReduceSumSquare: over the whole tensor; Size: its element count) in one
    ORT pass per unit of `units`, so no activation is held whole: [units, tensors, ops], float64 (each value as ORT
    gave it), NaN for a reduction of an empty tensor."""
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from compress.quantize.lean import release, weights_to_file

    flat = numpy_helper.from_array(np.asarray([-1], dtype=np.int64), "compress_reduced_flat")
    model.graph.initializer.append(flat)
    outputs = []
    for i, name in enumerate(names):
        for op in ops:
            kept, out = f"compress_reduced{i}_{op}_kept", f"compress_reduced{i}_{op}"
            # keepdims=1 then a reshape, as ORT's calibrator does: ORT cannot reduce a zero-size axis away
            model.graph.node.extend([helper.make_node(op, [name], [kept], **({} if op == "Size" else {"keepdims": 1})),
                                     helper.make_node("Reshape", [kept, flat.name], [out])])
            outputs.append(helper.make_tensor_value_info(
                out, onnx.TensorProto.INT64 if op == "Size" else onnx.TensorProto.FLOAT, None))
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # every optimisation but the layout ones: the NCHWc kernels round differently (a ResNet-50's ranges moved in
    # their last float32 bits, which flipped 2 of its 300 gate images); up to here the values are the unoptimised
    # model's, bit for bit
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory(prefix="compress-reduced-") as tmp:
        # from a file whose weights ORT maps in: a session from SerializeToString() held the proto, the bytes and
        # ORT's own copies at once
        path = weights_to_file(model, Path(tmp) / "reduced.onnx")
        model.Clear()
        del model  # the caller's last reference, when it handed it over (_measure): the proto's memory goes
        release()
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inputs = {i.name for i in session.get_inputs()}
        wanted = [o.name for o in outputs]
        got = [session.run(wanted, {k: v for k, v in unit.items() if k in inputs}) for unit in units]
        del session
    # a zero-size tensor reduces to nothing: NaN, which ORT's nan-aware arithmetic skips as it would
    first = [[r[j][0] if np.size(r[j]) else np.nan for j in range(len(wanted))] for r in got]
    return np.asarray(first, dtype=np.float64).reshape(len(units), len(names), len(ops))


def selected_tensors(model: Any, ops: "list[str] | None" = None) -> list[str] | None:
    """The tensors ORT's calibrator calibrates with quantize_static's default op types, or `ops` (its own
    select_tensors_to_calibrate), in a fixed order; None when one of them is float16."""
    from types import SimpleNamespace

    import onnx
    from onnxruntime.quantization.calibrate import CalibraterBase
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if ops is None:
        ops = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static hands its calibrator
    tensors, infos = CalibraterBase.select_tensors_to_calibrate(SimpleNamespace(op_types_to_calibrate=ops), model)
    if any(infos[t].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for t in tensors):
        return None
    return sorted(tensors)


HISTOGRAMS = ("entropy", "percentile")
"""Methods whose ranges ORT's histogram calibrators compute; remembered per run by `remembered_histograms`."""
_histograms: OrderedDict[tuple, str] = OrderedDict()


@contextlib.contextmanager
def remembered_histograms(base: Path, calib: list[dict[str, np.ndarray]], method: str, stride: int | None,
                          path: Path, op_types: list[str] | None = None):
    """A calibration cache path for quantize_static: ORT's own ranges of a histogram method, computed by its
    calibrator the first time and remembered (per model file, method, stride and batches), so a later attempt with
    the same method (other weights, nodes kept in float) reads them instead of calibrating again. The ranges do not
    depend on what an attempt excludes: ORT's calibrator collects every tensor of the op types it quantizes
    (`op_types`, all when None) in the model it is given, each tensor's histogram on its own, so an attempt that
    quantizes fewer op types reads the ranges of one that quantized them all."""
    key = (*_file_key(base), method, stride,
           tuple(next(iter(f.values())).shape[0] if f and np.ndim(next(iter(f.values()))) else 0 for f in calib),
           _fingerprint(calib))
    mine, every = (*key, tuple(op_types or ())), (*key, ())
    known = next((k for k in (mine, every) if k in _histograms), None)
    if known is not None:
        path.write_text(_histograms[known])
        _histograms.move_to_end(known)
    try:
        yield path
        if known is None and path.is_file():
            _histograms[mine] = path.read_text()
            while len(_histograms) > 2 * KEPT:
                _histograms.popitem(last=False)
    finally:
        path.unlink(missing_ok=True)
