"""Bias correction after static quantization: the mean shift each quantized layer adds to its output, measured on
calibration data and taken out of its bias (NNCF's fast bias correction is the reference).

Rounding weights to int8 and inputs to uint8 moves each output channel's mean a little: sum_k (Wq xq - W x). Those
shifts add up along the network. On benchmarks/bench_ptq_peers.py's ResNet-50 static int8 without correction lost 33
points of test accuracy, 1.2 with it (NNCF, which corrects biases the same way, 0.8). The correction is per layer
and isolated: each layer is fed the float model's own input, so what one layer corrects is its own error, not what
it inherits (correcting inherited error too would count it twice).

How: one run of the float model over the calibration batches, augmented with, for every Conv and Gemm whose weight
is quantized and which has a bias, a twin of the layer on the quantized model's weight and input quantization
(QuantizeLinear/DequantizeLinear with the quantized model's own scales) and the per-channel mean of the two outputs'
difference (ReduceMean, so the run keeps a vector per layer, never an activation). Padding, strides and groups are the
layer's own, since the twin is the same op with the same attributes. Each shift is then subtracted from the layer's
int32 (or float) bias in the quantized model. MatMul without a bias input is left alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TARGET_OPS = ("Conv", "Gemm")
MAX_SAMPLES = 128
"""Calibration samples the shifts are averaged over, at most: a mean per channel settles within a few dozen."""


def correct_biases(base: Path, qmodel: Any, calib: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Correct the biases of `qmodel` (a static QDQ model of `base`, a ModelProto edited in place) on calibration
    batches. Returns {"layers": corrected, "skipped": quantized layers without a bias (or a known rank), "samples":
    used}."""
    import onnx
    from onnx import helper, numpy_helper

    fmodel = onnx.load(str(base))
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    inits = {i.name: i for i in qmodel.graph.initializer}
    # by name: ORT's quantizer keeps the layer's name, but folds a following Relu into the output's range, so the
    # layer's output tensor is then the Relu's
    float_nodes = {n.name: n for n in fmodel.graph.node if n.name and n.op_type in TARGET_OPS}
    targets, skipped = [], 0
    added_nodes, added_inits, outputs = [], [], []
    for node in qmodel.graph.node:
        fnode = float_nodes.get(node.name)
        if node.op_type not in TARGET_OPS or fnode is None or fnode.op_type != node.op_type:
            continue
        w_dq = producer.get(node.input[1]) if len(node.input) > 1 else None
        if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in inits:
            continue  # weights kept in float: nothing rounded
        bias = _bias_of(node, producer, inits)
        if bias is None:
            skipped += 1
            continue
        rank = 2 if fnode.op_type == "Gemm" else _rank(fmodel, fnode)
        if rank is None:
            skipped += 1
            continue
        tag = f"compress_bc{len(targets)}"
        qdq = _activation_qdq(node, producer)
        copied = {}
        for name in [*w_dq.input, *qdq[1:]]:
            if name and name in inits and name not in copied:
                t = onnx.TensorProto()
                t.CopyFrom(inits[name])
                t.name = copied[name] = f"{tag}_{name}"
                added_inits.append(t)
        x = fnode.input[0]
        if qdq:
            _, scale, zp = qdq
            args = [copied[scale]] + ([copied[zp]] if zp else [])
            added_nodes += [helper.make_node("QuantizeLinear", [x, *args], [f"{tag}_xq"]),
                            helper.make_node("DequantizeLinear", [f"{tag}_xq", *args], [f"{tag}_x"])]
            x = f"{tag}_x"
        added_nodes.append(helper.make_node("DequantizeLinear", [copied.get(n, n) for n in w_dq.input], [f"{tag}_w"],
                                            **{a.name: helper.get_attribute_value(a) for a in w_dq.attribute}))
        attrs = {a.name: helper.get_attribute_value(a) for a in fnode.attribute if a.name != "beta"}
        added_nodes += [
            helper.make_node(fnode.op_type, [x, f"{tag}_w"], [f"{tag}_yq"], **attrs),
            helper.make_node(fnode.op_type, [fnode.input[0], fnode.input[1]], [f"{tag}_yf"], **attrs),
            helper.make_node("Sub", [f"{tag}_yq", f"{tag}_yf"], [f"{tag}_d"]),
            helper.make_node("ReduceMean", [f"{tag}_d", f"{tag}_axes"], [f"{tag}_shift"], keepdims=0)]
        keep = 1  # the channel axis of Conv's NCHW and Gemm's (N, M) output
        axes = [a for a in range(rank) if a != keep]
        added_inits.append(numpy_helper.from_array(np.asarray(axes, dtype=np.int64), f"{tag}_axes"))
        outputs.append(f"{tag}_shift")
        targets.append((node, bias))
    if not targets:
        return {"layers": 0, "skipped": skipped, "samples": 0}
    fmodel.graph.node.extend(added_nodes)
    fmodel.graph.initializer.extend(added_inits)
    del fmodel.graph.output[:]
    fmodel.graph.output.extend([helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs])
    _axes_as_the_opset_takes_them(fmodel, 18)
    shifts, samples = _mean_shifts(fmodel, calib, outputs)
    for (_, bias), shift in zip(targets, shifts):
        _subtract(bias, shift, inits)
    return {"layers": len(targets), "skipped": skipped, "samples": samples}


def _activation_qdq(node: Any, producer: dict[str, Any]) -> tuple[str, str, str] | tuple:
    """(quantized tensor, scale, zero point) of the QuantizeLinear -> DequantizeLinear pair on the node's first
    input in the quantized model, or () when that input is not quantized."""
    dq = producer.get(node.input[0])
    if dq is None or dq.op_type != "DequantizeLinear":
        return ()
    q = producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return ()
    return (q.input[0], q.input[1], q.input[2] if len(q.input) > 2 else "")


def _bias_of(node: Any, producer: dict[str, Any], inits: dict[str, Any]) -> tuple[str, str | None] | None:
    """(bias initializer, its DequantizeLinear scale initializer or None when the bias is float), or None."""
    if len(node.input) < 3 or not node.input[2]:
        return None
    name = node.input[2]
    if name in inits:
        return (name, None)
    dq = producer.get(name)
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits and dq.input[1] in inits:
        return (dq.input[0], dq.input[1])
    return None


def _subtract(bias: tuple[str, str | None], shift: np.ndarray, inits: dict[str, Any]) -> None:
    """Take `shift` out of the bias initializer (int32 through its scale, or float)."""
    from onnx import numpy_helper

    name, scale_name = bias
    tensor = inits[name]
    values = numpy_helper.to_array(tensor)
    if values.size != shift.size:
        return
    shift = shift.reshape(values.shape)
    if scale_name is None:
        new = (values - shift).astype(values.dtype)
    else:
        scale = numpy_helper.to_array(inits[scale_name]).astype(np.float64)
        steps = shift / (scale.reshape(values.shape) if scale.size == values.size else scale)
        info = np.iinfo(values.dtype)
        new = np.clip(np.round(values - steps), info.min, info.max).astype(values.dtype)
    tensor.CopyFrom(numpy_helper.from_array(new, name))


def _mean_shifts(model: Any, calib: list[dict[str, np.ndarray]], outputs: list[str]) -> tuple[list[np.ndarray], int]:
    """The augmented model's per-channel shifts, averaged over the calibration rows (up to MAX_SAMPLES)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()  # every optimisation: ORT runs each quantized twin as the int8 kernel it ships as
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    totals: list[np.ndarray] | None = None
    seen = 0
    for feed in calib:
        rows = next((int(np.shape(v)[0]) for v in feed.values() if np.ndim(v)), 1)
        got = session.run(outputs, {k: v for k, v in feed.items() if k in names})
        got = [np.asarray(g, dtype=np.float64) * rows for g in got]
        totals = got if totals is None else [t + g for t, g in zip(totals, got)]
        seen += rows
        if seen >= MAX_SAMPLES:
            break
    return [t / max(seen, 1) for t in (totals or [])], seen


def _rank(model: Any, node: Any) -> int | None:
    """The rank of a Conv's input: its weight's (N, C, spatial... as the weight is M, C/group, kernel...), from the
    float model's initializer, else from the inferred shapes (a graph ORT's pre-processing did not annotate)."""
    for init in model.graph.initializer:
        if init.name == node.input[1]:
            return len(init.dims)
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if value.name == node.input[0] and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return None


def _axes_as_the_opset_takes_them(model: Any, version: int) -> None:
    """ReduceMean takes its axes as an input from opset 18 on: below that, the added ReduceMean nodes take the
    attribute form instead (their axes initializers are then left unused)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < version:
            for node in model.graph.node:
                if node.op_type == "ReduceMean" and len(node.input) == 2 and node.input[1].endswith("_axes"):
                    axes = next(i for i in model.graph.initializer if i.name == node.input[1])
                    from onnx import helper, numpy_helper

                    node.attribute.append(helper.make_attribute("axes", numpy_helper.to_array(axes).tolist()))
                    del node.input[1]
