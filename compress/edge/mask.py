"""An attention mask an NPU can quantize: the -inf a transformer export adds to masked attention scores becomes a
finite constant just large enough to mask.

Hugging Face exports build the additive mask as Where(mask, 0, -inf) (or the dtype's lowest value) and add it to
the scores before Softmax. A fully quantized graph, which is all QNN's HTP runs, cannot hold that: an infinite range
dequantizes 0 x inf = NaN, and a range down to -3.4e38 rounds every real score to one level; left in float, the Add
and Softmax make HTP fail to finalize the graph. Here each such constant becomes -(range of the scores it is added
to + MARGIN), measured on calibration inputs: a masked position then sits at least MARGIN below every unmasked one,
so its softmax weight is below e^-MARGIN, and the Add's range is about twice the scores', not infinite. Where the
mask is the padding mask alone, the exporter's boolean chain becomes arithmetic HTP runs, and the NaN guard after
Softmax (an identity once no fill is infinite) goes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MARGIN = 12.0
"""How far below the lowest unmasked score a masked one lands: softmax weight < e^-12 ~ 6e-6 each."""
HUGE = 1e30
"""A constant at or below -HUGE is a mask fill (-inf, float32's lowest)."""


def finite_attention_mask(src: Path, dst: Path, feeds: dict[str, np.ndarray],
                          axes: dict[str, int | None] | None = None) -> list[dict[str, Any]]:
    """Write `src` with finite mask fills to `dst` (calibrated on `feeds`, {input name: rows}, each input's rows on
    its batch axis, `axes`); returns one entry per rewritten constant ({"constant", "scores", "fill"}), [] (and no
    file) when the model has none."""
    import onnx
    from onnx import numpy_helper

    from compress.quantize.attempts import batched

    model = onnx.load(str(src))
    graph = model.graph
    consts: dict[str, tuple[Any, np.ndarray]] = {i.name: (i, numpy_helper.to_array(i)) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = (n.attribute[0].t, numpy_helper.to_array(n.attribute[0].t))
    fills: dict[str, list[str]] = {}  # mask-fill constant -> the score tensors its Where output is added to
    replaces: dict[str, list[str]] = {}  # mask-fill constant -> the scores a Where fills in place (masked_fill)
    for where in (n for n in graph.node if n.op_type == "Where"):
        hit = [i for i in where.input[1:] if i in consts and np.issubdtype(consts[i][1].dtype, np.floating)
               and (consts[i][1] <= -HUGE).any()]
        if not hit:
            continue
        other = [i for i in where.input[1:] if i not in consts]
        if other:  # Where(mask, -inf, scores): the fill replaces the masked scores
            replaces.setdefault(hit[0], []).append(other[0])
            continue
        for add in (n for n in graph.node if n.op_type == "Add" and where.output[0] in n.input):
            other = [i for i in add.input if i != where.output[0]]
            if other:
                fills.setdefault(hit[0], []).append(other[0])
    if not fills and not replaces:
        return []
    samples = batched(feeds, 1, axes)[:64]  # a fixed batch of 1
    ranges = _ranges(model, sorted({s for scores in [*fills.values(), *replaces.values()] for s in scores}), samples)
    done = []
    for name, scores in [*fills.items(), *replaces.items()]:
        proto, value = consts[name]
        if name in fills:  # added: a masked score lands MARGIN below the lowest unmasked one whatever it was
            fill = -(max(ranges[s][1] - ranges[s][0] for s in scores) + MARGIN)
        else:  # in place: MARGIN below the lowest score
            fill = min(ranges[s][0] for s in scores) - MARGIN
        value = np.where(value <= -HUGE, np.asarray(fill, value.dtype), value)
        proto.CopyFrom(numpy_helper.from_array(value.astype(consts[name][1].dtype), proto.name))
        done.append({"constant": name, "scores": scores, "fill": float(fill)})
    _arithmetic_masks(model, samples[0], {d["constant"]: d for d in done})
    _no_nan_guards(model.graph)
    onnx.save(model, str(dst))
    return done


def _no_nan_guards(graph: Any) -> None:
    """Where(IsNaN(x), c, x) -> x: the guard against a fully masked row's NaN softmax, an identity once every mask
    fill is finite (HTP has no IsNaN)."""
    from compress.onnx.graph import reroute

    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    for where in [n for n in graph.node if n.op_type == "Where"]:
        test = producer.get(where.input[0])
        if test is None or test.op_type != "IsNaN" or test.input[0] != where.input[2]:
            continue
        if where.output[0] not in outputs:  # a graph output keeps its name: that guard stays
            reroute(graph, where.output[0], where.input[2])
    _drop_unused(graph)


def _arithmetic_masks(model: Any, feed: dict[str, np.ndarray], fills: dict[str, dict[str, Any]]) -> None:
    """Where the mask is the padding mask alone, rebuild it as (1 - float(attention_mask)) x fill, unsqueezed to
    the rank of the exporter's mask (batch, 1, ..., seq): Cast, Sub, Mul and Unsqueeze, which HTP runs, in place of
    the exporter's Gather/And/Where chain on booleans, which it does not. Each rewrite is kept only when it gives
    the same values on `feed` (one sample); the chain left unused is removed."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    if "attention_mask" not in {i.name for i in graph.input}:
        return
    for k, where in enumerate([n for n in graph.node if n.op_type == "Where"]):
        fill = next((fills[i] for i in where.input[1:] if i in fills), None)
        if fill is None or not any(n.op_type == "Add" and where.output[0] in n.input for n in graph.node):
            continue
        (old,) = _values(model, [where.output[0]], feed)
        if old.ndim < 2:
            continue
        out, p = f"{where.output[0]}_arithmetic", f"compress_mask{k}"
        bias = out if old.ndim == 2 else f"{p}_bias"
        nodes = [helper.make_node("Cast", ["attention_mask"], [f"{p}_f"], to=TensorProto.FLOAT, name=f"{p}_cast"),
                 helper.make_node("Sub", [f"{p}_one", f"{p}_f"], [f"{p}_inv"], name=f"{p}_sub"),
                 helper.make_node("Mul", [f"{p}_inv", f"{p}_fill"], [bias], name=f"{p}_mul")]
        inits = [helper.make_tensor(f"{p}_one", TensorProto.FLOAT, [], [1.0]),
                 helper.make_tensor(f"{p}_fill", TensorProto.FLOAT, [], [fill["fill"]])]
        if old.ndim > 2:
            axes = list(range(1, old.ndim - 1))
            nodes.append(helper.make_node("Unsqueeze", [bias, f"{p}_axes"], [out], name=f"{p}_unsqueeze"))
            inits.append(helper.make_tensor(f"{p}_axes", TensorProto.INT64, [len(axes)], axes))
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        trial.graph.node.extend(nodes)
        trial.graph.initializer.extend(inits)
        (new,) = _values(trial, [out], feed)
        if new.ndim != old.ndim or not np.array_equal(*np.broadcast_arrays(old, new)):
            continue
        at = list(graph.node).index(where)  # before the Where, so the graph stays in topological order
        ordered = [*graph.node[:at], *nodes, *graph.node[at:]]
        del graph.node[:]
        graph.node.extend(ordered)
        graph.initializer.extend(inits)
        for n in graph.node:
            if n.op_type == "Add" and where.output[0] in n.input:
                n.input[list(n.input).index(where.output[0])] = out
    _drop_unused(graph)


def _values(model: Any, tensors: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(tensors, {k: v for k, v in feed.items() if k in names})


def _drop_unused(graph: Any) -> None:
    """Remove nodes none of whose outputs is read or a graph output, until none is left; then unread
    initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)


def _ranges(model: Any, tensors: list[str], samples: list[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """(min, max) of each of `tensors` over `samples` (feeds of one sample each)."""
    import copy

    import onnx
    import onnxruntime as ort

    probe = copy.deepcopy(model)
    have = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in have:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    names = [o.name for o in probe.graph.output]
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    lo = {t: np.inf for t in tensors}
    hi = {t: -np.inf for t in tensors}
    for sample in samples:
        out = dict(zip(names, session.run(names, sample)))
        for t in tensors:
            lo[t], hi[t] = min(lo[t], float(out[t].min())), max(hi[t], float(out[t].max()))
    return {t: (lo[t], hi[t]) for t in tensors}
