"""Bias correction after static quantization: the mean shift each quantized layer adds to its output, measured on
calibration data and taken out of its bias (NNCF's fast bias correction is the reference).

Rounding weights to int8 and inputs to uint8 moves each output channel's mean a little: sum_k (Wq xq - W x). Those
shifts add up along the network. On benchmarks/bench_ptq_peers.py's ResNet-50 static int8 without correction lost 33
points of test accuracy, 1.2 with it (NNCF, which corrects biases the same way, 0.8). The correction is per layer
and isolated: each layer is fed the float model's own input, so what one layer corrects is its own error, not what
it inherits (correcting inherited error too would count it twice).

How: a layer is linear, so the mean of its output over samples and positions is its weights applied to the mean of
what each kernel tap reads (plus its bias). One run of the float model over the calibration batches, augmented, for
every Conv and Gemm whose weight is quantized and which has a bias, with those tap means of the layer's float input
and of that input through the quantized model's own QuantizeLinear/DequantizeLinear (bias.py's _window_means: one
MatMul per spatial axis, never a copy of the layer or an activation kept). Then, in float64, the quantized layer's
mean output (dequantized int8 weights on the quantized tap means) minus the float layer's (float weights on the float
tap means) is each channel's shift, exact to the bias's rounding step, and is subtracted from the layer's int32 (or
float) bias in the quantized model. MatMul without a bias input is left alone.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TARGET_OPS = ("Conv", "Gemm")
MAX_SAMPLES = 128
"""Calibration samples the shifts are averaged over, at most: a mean per channel settles within a few dozen."""


def correct_biases(base: Path, qmodel: Any, calib: list[dict[str, np.ndarray]] | None) -> dict[str, Any]:
    """Correct the biases of `qmodel` (a static QDQ model of `base`, a ModelProto edited in place) on calibration
    batches, as given: calibration by per-sample ranges hands them in single rows, and 4 rows a run were no faster
    on a ResNet-50 (4.4 s for 64 samples either way) while they held 540 MB more (the window means). Returns
    {"layers": corrected, "skipped": quantized layers without a bias (or a float weight, or implicit padding),
    "samples": used, "note": what was done, for the summary}; nothing is done without calibration batches.

    Memory: one copy of the float weights at a time. The augmented float model goes to a scratch file with its
    weights beside it (the session maps them in; the proto is dropped first), and each layer's shift reads its
    float weight back from there, one layer at a time (AlexNet's float64 weights of every layer, float and
    dequantized, held at once with the proto and ORT's copy from serialized bytes: 2.1 GB for 244 MB of weights)."""
    if not calib:
        return {"layers": 0, "skipped": 0, "samples": 0, "note": ""}
    import tempfile

    with tempfile.TemporaryDirectory(prefix="compress-bias-") as tmp:
        augmented, layers, outputs, skipped = _augmented(base, qmodel, Path(tmp))
        if not layers:
            return {"layers": 0, "skipped": skipped, "samples": 0, "note": ""}
        from compress.onnx.graph import batch_axes_of
        from compress.onnx.skeleton import graph_of

        axes = batch_axes_of(graph_of(base).graph)  # a state [2, N, 64] listed first: its batch is axis 1
        means, samples = _mean_shifts(augmented, calib, outputs, axes)
        inits = {i.name: i for i in qmodel.graph.initializer}
        at = 0
        for node, bias, attrs, weight, w_dq, count in layers:
            seen = means[at:at + count]
            at += count
            shift = _shift(node.op_type, attrs, lambda: _float_weight(weight, Path(tmp)),
                           lambda: _dequantized(w_dq, inits), seen[0], seen[-1])
            _subtract(bias, shift, inits)
    n = len(layers)
    return {"layers": n, "skipped": skipped, "samples": samples,
            "note": f"biases of {n} layer{'s' * (n != 1)} corrected on {samples} samples" if n else ""}


def _augmented(base: Path, qmodel: Any, folder: Path) -> tuple[Path, list[tuple], list[str], int]:
    """(the float model at `base` with the window-mean outputs of every layer to correct, written into `folder`
    with its weights beside it; per layer (quantized node, bias, attributes, float weight: a TensorProto whose data
    is in the file, weight DequantizeLinear node, outputs); every output's name; layers skipped). The float model's
    proto is dropped on return: nothing here refers to it."""
    import onnx
    from onnx import helper

    from compress.quantize.lean import release, weights_to_file

    fmodel = onnx.load(str(base))
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    inits = {i.name: i for i in qmodel.graph.initializer}
    float_inits = {i.name: i for i in fmodel.graph.initializer}
    # by name: ORT's quantizer keeps the layer's name, but folds a following Relu into the output's range, so the
    # layer's output tensor is then the Relu's
    float_nodes = {n.name: n for n in fmodel.graph.node if n.name and n.op_type in TARGET_OPS}
    layers, skipped, added_nodes, added_inits, outputs = [], 0, [], [], []
    for node in qmodel.graph.node:
        fnode = float_nodes.get(node.name)
        if node.op_type not in TARGET_OPS or fnode is None or fnode.op_type != node.op_type:
            continue
        w_dq = producer.get(node.input[1]) if len(node.input) > 1 else None
        if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in inits:
            continue  # weights kept in float: nothing rounded
        bias = _bias_of(node, producer, inits)
        attrs = {a.name: helper.get_attribute_value(a) for a in fnode.attribute}
        if attrs.get("auto_pad") in (b"VALID", "VALID"):  # no padding: the explicit form of the same thing
            attrs.pop("auto_pad")
        if bias is None or fnode.input[1] not in float_inits or attrs.get("auto_pad", b"NOTSET") not in (
                b"NOTSET", "NOTSET"):
            skipped += 1
            continue
        tag = f"compress_bc{len(layers)}"
        x, qdq = fnode.input[0], _activation_qdq(node, producer)
        inputs = [x]
        if qdq:  # the input as the quantized layer reads it: through the quantized model's own Q/DQ
            _, scale, zp = qdq
            args = []
            for name in (n for n in (scale, zp) if n):
                t = onnx.TensorProto()
                t.CopyFrom(inits[name])
                t.name = f"{tag}_{name}"
                added_inits.append(t)
                args.append(t.name)
            added_nodes += [helper.make_node("QuantizeLinear", [x, *args], [f"{tag}_xq"]),
                            helper.make_node("DequantizeLinear", [f"{tag}_xq", *args], [f"{tag}_x"])]
            inputs.append(f"{tag}_x")
        weight = float_inits[fnode.input[1]]
        nodes, inits_, means = _window_means(tag, fnode, attrs, tuple(weight.dims), inputs)
        added_nodes += nodes
        added_inits += inits_
        outputs += means
        layers.append((node, bias, attrs, weight.name, w_dq, len(means)))
    if not layers:
        return folder / "none.onnx", [], [], skipped
    fmodel.graph.node.extend(added_nodes)
    fmodel.graph.initializer.extend(added_inits)
    del fmodel.graph.output[:]
    fmodel.graph.output.extend([helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs])
    _axes_as_the_opset_takes_them(fmodel, 18)
    path = weights_to_file(fmodel, folder / "bias.onnx")  # the proto keeps each weight's place in the file
    wanted = {name for _, _, _, name, _, _ in layers}
    kept = {i.name: _copied(i) for i in fmodel.graph.initializer if i.name in wanted}
    layers = [(node, bias, attrs, kept[name], w_dq, count) for node, bias, attrs, name, w_dq, count in layers]
    del fmodel, float_inits, float_nodes, fnode, weight
    release()
    return path, layers, outputs, skipped


def _copied(tensor: Any) -> Any:
    """A TensorProto of its own with `tensor`'s fields (its data, when `weights_to_file` left it in the proto)."""
    import onnx

    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    return copy


def _float_weight(tensor: Any, folder: Path) -> np.ndarray:
    """A layer's float weight in float64, read from the scratch file `weights_to_file` wrote into `folder`."""
    from compress.quantize.lean import weight_from_file

    return weight_from_file(tensor, folder).astype(np.float64)


def _window_means(tag: str, fnode: Any, attrs: dict[str, Any], shape: tuple[int, ...],
                  inputs: list[str]) -> tuple[list[Any], list[Any], list[str]]:
    """Nodes (and their initializers) that output, for each of `inputs` (the float input, then the quantized one),
    the mean of what each weight tap of the layer reads: a layer is linear, so its mean output is its weights
    applied to these means, and the shift needs no second copy of the layer.

    Gemm: the mean input row. Conv: for each input channel and kernel tap, the mean over samples and output
    positions of the (zero-padded) input that tap reads. Per spatial axis, which input positions a tap reads is a 0/1
    matrix (input position x tap: position + pad - tap x dilation is a multiple of the stride below output size x
    stride), built at run time from the input's and output's shapes (dynamic sizes work); the input times these
    matrices, one axis after another, then its batch mean, gives (channels, taps of the last axis, ..., of the
    first): one pass over the activation, never a copy per tap."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, values: Any, dtype: Any = np.int64) -> str:
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), f"{tag}_{name}"))
        return f"{tag}_{name}"

    def node(op: str, ins: list[str], out: str, **kw: Any) -> str:
        nodes.append(helper.make_node(op, ins, [f"{tag}_{out}"], **kw))
        return f"{tag}_{out}"

    nodes: list[Any] = []
    inits: list[Any] = []
    if fnode.op_type == "Gemm":
        axes = const("axes", [1 if attrs.get("transA", 0) else 0])
        return nodes, inits, [node("ReduceMean", [x, axes], f"m{i}", keepdims=0) for i, x in enumerate(inputs)]
    kernel = shape[2:]  # the weight's
    spatial = len(kernel)
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    x_shape, y_shape = node("Shape", [inputs[0]], "xs"), node("Shape", [fnode.output[0]], "ys")
    zero, one = const("zero", 0), const("one", 1)
    picks = []  # per spatial axis, last first: (input positions, taps) / output positions
    for a in reversed(range(spatial)):
        at, after = const(f"at{a}", [2 + a]), const(f"after{a}", [3 + a])
        size_in = node("Squeeze", [node("Slice", [x_shape, at, after], f"in{a}")], f"ins{a}")
        size_out = node("Slice", [y_shape, at, after], f"out{a}")
        where = node("Unsqueeze", [node("Range", [zero, size_in, one], f"range{a}"), const(f"ax{a}", [1])],
                     f"pos{a}")
        t = node("Sub", [node("Add", [where, const(f"pad{a}", pads[a])], f"padded{a}"),
                         const(f"taps{a}", [[k * dilations[a] for k in range(kernel[a])]])], f"t{a}")
        stride = const(f"stride{a}", strides[a])
        ok = node("And", [node("Equal", [node("Mod", [t, stride], f"mod{a}"), zero], f"on{a}"),
                          node("And", [node("GreaterOrEqual", [t, zero], f"ge{a}"),
                                       node("Less", [t, node("Mul", [size_out, stride], f"span{a}")], f"lt{a}")],
                               f"in_range{a}")], f"ok{a}")
        picks.append(node("Div", [node("Cast", [ok], f"okf{a}", to=TensorProto.FLOAT),
                                  node("Cast", [size_out], f"outf{a}", to=TensorProto.FLOAT)], f"pick{a}"))
    outs = []
    for i, x in enumerate(inputs):
        m, rank = x, 2 + spatial
        for n, pick in enumerate(picks):  # contract the last spatial axis left, then move the next one last
            m = node("MatMul", [m, pick], f"mm{i}_{n}")
            if n + 1 < spatial:
                axis = spatial - n  # the next spatial axis, now just before the tap axes collected so far
                m = node("Transpose", [m], f"tr{i}_{n}", perm=[d for d in range(rank) if d != axis] + [axis])
        outs.append(node("ReduceMean", [m, const(f"batch{i}_axes", [0])], f"m{i}", keepdims=0))  # (C, taps...)
    return nodes, inits, outs


def _shift(op: str, attrs: dict[str, Any], weight: Callable[[], np.ndarray], wq: Callable[[], np.ndarray],
           mean_float: np.ndarray, mean_quant: np.ndarray) -> np.ndarray:
    """Per output channel: the quantized layer's mean output minus the float layer's, from the window means. The
    float weight and the dequantized one (float64, `weight()` and `wq()` make them) are made one after the other,
    each dropped once applied."""
    if op == "Gemm":
        def out(w: np.ndarray, m: np.ndarray) -> np.ndarray:
            return float(attrs.get("alpha", 1.0)) * (m @ (w.T if attrs.get("transB", 0) else w))
    else:
        groups = int(attrs.get("group", 1))

        def out(w: np.ndarray, taps: np.ndarray) -> np.ndarray:  # taps: (input channels, last axis' taps, ...)
            m, cg = w.shape[0], w.shape[1]
            taps = taps.transpose(0, *range(taps.ndim - 1, 0, -1)).reshape(groups, cg, -1)
            return np.einsum("gmck,gck->gm", w.reshape(groups, m // groups, cg, -1), taps).reshape(m)
    floating = out(weight(), mean_float)
    return out(wq(), mean_quant) - floating


def _dequantized(w_dq: Any, inits: dict[str, Any]) -> np.ndarray:
    """The weight the quantized layer computes with: (q - zero point) x scale, per channel along the DQ's axis."""
    from onnx import helper, numpy_helper

    q = numpy_helper.to_array(inits[w_dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float64)
    zp = (numpy_helper.to_array(inits[w_dq.input[2]]).astype(np.float64)
          if len(w_dq.input) > 2 and w_dq.input[2] in inits else np.zeros_like(scale))
    if scale.size > 1:
        axis = next((helper.get_attribute_value(a) for a in w_dq.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    if np.broadcast_shapes(q.shape, zp.shape, scale.shape) != q.shape:
        return (q - zp) * scale
    q -= zp  # in place: the same (q - zp) * scale, one float64 copy of the weight instead of three
    q *= scale
    return q


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


def _mean_shifts(path: Path, calib: list[dict[str, np.ndarray]], outputs: list[str],
                 axes: dict[str, int | None] | None = None) -> tuple[list[np.ndarray], int]:
    """The outputs of the augmented model at `path` (per-layer means), averaged over the calibration rows (up to
    MAX_SAMPLES), each batch's rows counted on its batch axes (`axes`)."""
    import onnxruntime as ort

    from compress.bench.inputs import batch_of

    opts = ort.SessionOptions()  # every optimisation: only means leave the run, so rounding is the float model's
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    totals: list[np.ndarray] | None = None
    seen = 0
    for feed in calib:
        rows = batch_of(feed, axes)
        got = session.run(outputs, {k: v for k, v in feed.items() if k in names})
        got = [np.asarray(g, dtype=np.float64) * rows for g in got]
        totals = got if totals is None else [t + g for t, g in zip(totals, got)]
        seen += rows
        if seen >= MAX_SAMPLES:
            break
    return [t / max(seen, 1) for t in (totals or [])], seen


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
