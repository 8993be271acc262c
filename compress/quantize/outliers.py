"""Activations whose range a few channels set: a transformer's residual stream, where a handful of hidden channels run
to 100-200 while the rest stay near 1.

One per-tensor 8-bit scale then spans the outliers, and every other channel falls on a few codes. On the MiniLM
student, six such tensors (the FFN output MatMul, its bias Add and the residual Add of two layers, 70-137x their
median channel) cost static int8 most of its cosine drop: 0.065 of it, 0.007 with only those six left float.

Measured on calibration rows, before quantizing: for each float tensor of rank 3 (batch, positions, channels), the
largest |x| over the median channel's largest |x|. At OUTLIER_RATIO (64) the median channel spans under 4 of the 255
codes. Such tensors stay float on the ORT CPU graph (compress.quantize.qdq.tensors_in_float: ORT then runs their
MatMul as MatMulIntegerToFloat, int8 products with a float result, and their Adds in float) and take 16-bit codes
on the QNN graph, which must quantize everything. Convolution graphs (rank-4 activations) have none to check.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compress.quantize.config import OUTLIER_RATIO

log = logging.getLogger(__name__)

ROWS = 8
"""Calibration rows measured: the outlier channels are the same ones in every row."""


def outlier_activations(model_path: Path, calibration: Sequence[dict[str, np.ndarray]], ratio: float = OUTLIER_RATIO,
                        rows: int = ROWS) -> list[tuple[str, float]]:
    """(tensor, ratio) of each rank-3 float activation of the float model at `model_path` whose largest |x| is at
    least `ratio` times its median channel's, on the first `rows` calibration rows; largest ratio first."""
    import onnx
    import onnxruntime as ort

    from compress.onnx.skeleton import graph_of
    from compress.quantize.lean import release, weights_to_file
    from compress.quantize.prepare import is_large

    model_path = Path(model_path)
    if not calibration or is_large(model_path):
        return []
    candidates = _rank3_activations(graph_of(model_path))  # the weights are read only when there is one to check
    if not candidates:
        return []
    model = onnx.load(str(model_path))
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in candidates if name not in known)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as named
    options.log_severity_level = 3
    peaks: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="compress-outliers-") as tmp:
        path = weights_to_file(model, Path(tmp) / "outputs.onnx")  # the session maps the weights in
        del model  # its only other copy
        release()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        wanted = [n for n in names if n in candidates]
        for feed in _first_rows(calibration, rows):
            got = dict(zip(names, session.run(None, feed)))
            for name in wanted:
                value = got[name]
                if value.ndim != 3 or value.shape[-1] < 8 or value.dtype != np.float32:
                    continue
                peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
                peaks[name] = peak if name not in peaks else np.maximum(peaks[name], peak)
    found = []
    for name, peak in peaks.items():
        median = float(np.median(peak))
        if np.isfinite(peak).all() and median > 0 and float(peak.max()) / median >= ratio:
            found.append((name, round(float(peak.max()) / median, 1)))
    return sorted(found, key=lambda f: -f[1])


def for_search(base: Path, calibration: Sequence[dict[str, np.ndarray]] | None, cfg: Any
               ) -> tuple[list[tuple[str, float]], str]:
    """The quantize stage's check before its attempts: (outlier_activations of the pre-processed model, a clause
    for its note) under the [quantize] settings `cfg`; nothing unless static, or dynamic with its remedies on, with
    calibration rows. Static keeps those tensors in float in every attempt; dynamic's last remedy keeps the MatMul
    and Gemm layers that write them in float, where there are such (compress.quantize.dynamic), and says so itself."""
    dynamic = cfg.mode == "dynamic" and cfg.fallback  # nothing else reads them in a dynamic search
    if not (cfg.mode == "static" or dynamic) or not calibration or not cfg.outlier_ratio:
        return [], ""
    found = outlier_activations(base, calibration, cfg.outlier_ratio)
    if not found:
        return [], ""
    return found, f"; {'kept in float: ' if cfg.mode == 'static' else ''}{describe(found)}"


def _first_rows(calibration: Sequence[dict[str, np.ndarray]], rows: int) -> list[dict[str, np.ndarray]]:
    """The first `rows` calibration rows when every input has its rows on axis 0 (the same leading size); else the
    first batch whole (a recurrent state [2, N, 8] is cut on its own axis, which a cut on axis 0 would break)."""
    from compress.quantize.attempts import take_samples

    leading = {np.shape(v)[0] for v in calibration[0].values() if np.ndim(v)}
    return take_samples(list(calibration), rows) if len(leading) == 1 else [calibration[0]]


def _rank3_activations(model: Any) -> list[str]:
    """Outputs of arithmetic nodes that shape inference gives rank 3 (float or unknown type). A pre-processed model
    already carries every shape (quant_pre_process ran the inference): it is read as is, which saves 0.7 s of
    inference on a ResNet-50."""
    import onnx

    from compress.quantize.sensitivity import _DATA_MOVEMENT_OPS

    outputs = [o for n in model.graph.node if n.op_type not in _DATA_MOVEMENT_OPS and n.op_type not in
               ("QuantizeLinear", "DequantizeLinear") for o in n.output if o]
    graph = model.graph
    typed = {v.name for v in (*graph.value_info, *graph.output)}
    if not all(o in typed for o in outputs):
        try:
            graph = onnx.shape_inference.infer_shapes(model).graph
        except Exception as exc:  # a graph shape inference cannot read: nothing to check, say why
            log.info("quantize: outlier activations not checked: shape inference failed (%s)", exc)
            return []
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in graph.value_info
             if v.type.tensor_type.HasField("shape") and v.type.tensor_type.elem_type in (0, onnx.TensorProto.FLOAT)}
    return [o for o in outputs if ranks.get(o) == 3]


def describe(found: Sequence[tuple[str, float]]) -> str:
    """One clause for the summary: how many, and the worst."""
    if not found:
        return ""
    worst = ", ".join(f"{name} ({r:g}x)" for name, r in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return (f"{len(found)} activation{'s' if len(found) > 1 else ''} whose range a few channels set (largest |x| over "
            f"the median channel's): {worst}{more}")
