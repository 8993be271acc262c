"""Edits of a QDQ model after ONNX Runtime's quantizer wrote it: graph outputs handed over in float, tensors with an
infinite range or named ones (compress.quantize.outliers) kept in float, Softmax output scales that ORT CPU's fused
kernel reads as written, one node put back in float (to score it as a candidate without requantizing)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.onnx.graph import readers, reroute


def float_outputs(model: Any) -> int:
    """Take the QuantizeLinear -> DequantizeLinear pair off every graph output of a QDQ model (a ModelProto, edited
    in place): the last layer then hands its float result to the caller instead of one rounded to 8 bits (a
    classifier's logits rounded to 1/255 of their range flip close calls), as NNCF places its quantizers. ORT runs
    that layer on its dequantized int8 weights. Returns how many outputs were freed."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers = readers(graph)
    outputs = {o.name for o in graph.output}
    freed, drop = 0, []
    for name in outputs:
        dq = producer.get(name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or len(consumers.get(q.output[0], [])) != 1:
            continue
        if not _bypass(graph, name, q.input[0], producer, outputs):
            continue
        drop += [q, dq]
        freed += 1
    for n in drop:
        graph.node.remove(n)
    return freed


def readable_scales(model: Any) -> int:
    """Scales that mean the same in every implementation: Softmax outputs pinned (pinned_softmax_scales), Add
    outputs off systematic ties (untied_add_scales). A ModelProto, edited in place; returns how many changed."""
    return pinned_softmax_scales(model) + untied_add_scales(model)


def pinned_softmax_scales(model: Any) -> int:
    """Make each 8-bit Softmax output scale one that ORT CPU's fused kernel reads as the graph says (a ModelProto,
    edited in place); returns how many were changed.

    ORT fuses DequantizeLinear -> Softmax -> QuantizeLinear into QLinearSoftmax, which requantizes with
    floor(1 / y_scale), not 1 / y_scale. ORT's quantizer gives a Softmax output the scale float32(1/255), whose
    reciprocal in float32 is 254.99998: the kernel multiplies by 254, so 3.6% of a MiniLM's attention probabilities
    came out one step (1/255) low. This ran nothing like the QDQ graph it was written as (or the fake quantization
    QAT trains): torch and ORT agreed on 96.5% of a classifier's sentences. The scale becomes the largest float32 whose
    reciprocal floors to round(1 / scale) (for 1/255: 0.00392156839, 6e-8 smaller), a new initializer read by the
    QuantizeLinear and its DequantizeLinear nodes; everything else computes as before."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    changed = 0
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        maker = producer.get(q.input[0])
        if maker is None or maker.op_type != "Softmax" or q.input[1] not in inits:
            continue
        zero = inits.get(q.input[2]) if len(q.input) > 2 and q.input[2] else None
        if zero is not None and numpy_helper.to_array(zero).dtype not in (np.uint8, np.int8):
            continue  # 16-bit: ORT has no fused kernel for it
        scale = numpy_helper.to_array(inits[q.input[1]])
        if scale.size != 1 or not float(scale) > 0:
            continue
        steps = np.float32(round(1.0 / float(scale)))
        pinned = np.float32(1.0) / steps
        while np.floor(np.float32(1.0) / pinned) < steps:
            pinned = np.nextafter(pinned, np.float32(0))
        if pinned == np.float32(scale.reshape(()).item()):
            continue
        _own_scale(graph, q, np.full(scale.shape, pinned, np.float32), "softmax_scale")
        changed += 1
    return changed


def untied_add_scales(model: Any) -> int:
    """Move each 8-bit Add output scale off exact rounding ties (a ModelProto, edited in place); returns how many.

    A GELU's 1 + erf(x) adds the constant 1 (scale 1/255) to erf's output (scale 2/255) into a sum of scale 2/255:
    every sum is then (code - zero) + 127.5 steps, exactly half-way between two codes, so which way it rounds is
    decided by each implementation's float error, not by the graph. ORT CPU's fused QLinearAdd (fused multiply-adds,
    then round half to even) and torch's fake quantization disagreed on half of those codes, and on 5 of a topics
    classifier's 874 sentences. Where both input scales are multiples of half the output scale and one an odd
    multiple (such ties are then systematic), the output scale grows by 1 part in 65,536, in an initializer of its
    own: every such sum then sits just under the half-way point, in any implementation."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}

    def scalar(name: str) -> float | None:
        value = numpy_helper.to_array(inits[name]) if name in inits else None
        return float(value.reshape(())) if value is not None and value.size == 1 else None

    changed = 0
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        add = producer.get(q.input[0])
        dqs = [producer.get(i) for i in add.input] if add is not None and add.op_type == "Add" else []
        if len(dqs) != 2 or any(d is None or d.op_type != "DequantizeLinear" for d in dqs):
            continue
        out, ins = scalar(q.input[1]), [scalar(d.input[1]) for d in dqs]
        if not out or None in ins:
            continue
        halves = [2 * s / out for s in ins]
        if not all(abs(h - round(h)) < 1e-4 for h in halves) or not any(round(h) % 2 for h in halves):
            continue
        _own_scale(graph, q, np.asarray(out * (1 + 2.0 ** -16), np.float32), "untied_scale")
        changed += 1
    return changed


def _own_scale(graph: Any, q: Any, value: Any, suffix: str) -> None:
    """Give QuantizeLinear `q` and the DequantizeLinear nodes reading its output the scale `value`, in an
    initializer of their own (ORT's quantizer shares one between equal scales: a mask constant's 1/255 too)."""
    from onnx import numpy_helper

    name = f"{q.output[0]}_{suffix}"
    graph.initializer.append(numpy_helper.from_array(value, name))
    for node in [q, *(n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])]:
        node.input[1] = name


def _bypass(graph: Any, dq_out: str, source: str, producer: dict[str, Any], outputs: set[str]) -> bool:
    """Readers of a DequantizeLinear's output `dq_out` read the float tensor `source` (what its QuantizeLinear read)
    instead. A graph output keeps its name: the float tensor takes it, for its other readers too. False, and nothing
    changed, when that cannot be done (the source is a graph input, an initializer or an output itself)."""
    if dq_out not in outputs:
        reroute(graph, dq_out, source)
        return True
    maker = producer.get(source)
    if maker is None or source in outputs:
        return False
    reroute(graph, source, dq_out)
    maker.output[list(maker.output).index(source)] = dq_out
    producer[dq_out] = maker
    for v in [v for v in graph.value_info if v.name == source]:
        graph.value_info.remove(v)  # the graph output declares it now
    return True


def with_node_in_float(base: Path, quant: Path, node_name: str, out: Path) -> bool:
    """A copy of the QDQ model `quant` at `out` with one node computing in float: each of its inputs read from
    before its QuantizeLinear -> DequantizeLinear pair (activations) or from `base`'s float initializer (weights, bias:
    a corrected bias goes back to its float value too). Nothing is recalibrated, so ranking a candidate costs one
    gate run, not one quantization. False when the node is not in both models."""
    import onnx

    qmodel, fmodel = onnx.load(str(quant)), onnx.load(str(base))
    fnode = next((n for n in fmodel.graph.node if n.name == node_name), None)
    node = next((n for n in qmodel.graph.node if n.name == node_name), None)
    if node is None or fnode is None or len(fnode.input) != len(node.input):
        return False
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    have = {i.name for i in qmodel.graph.initializer}
    finits = {i.name: i for i in fmodel.graph.initializer}
    for k, name in enumerate(node.input):
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[k] = q.input[0]
        elif fnode.input[k] in finits:  # under a name of its own: the quantized model names its DQ output so
            copy = onnx.TensorProto()
            copy.CopyFrom(finits[fnode.input[k]])
            copy.name = f"{fnode.input[k]}_float"
            if copy.name not in have:
                qmodel.graph.initializer.append(copy)
                have.add(copy.name)
            node.input[k] = copy.name
    onnx.save(qmodel, str(out))
    return True


def infinite_ranges_in_float(model: Any) -> list[str]:
    """Take off every QuantizeLinear -> DequantizeLinear pair whose scale is not finite (a ModelProto, edited in
    place): calibration saw -inf or inf there, as on a transformer's attention mask filled with -inf. ORT then
    divides by an infinite scale and dequantizes 0 x inf = NaN, which a masked softmax's NaN guard turns into zero
    attention everywhere. Those tensors stay float; returns their names."""
    import numpy as np
    from onnx import numpy_helper

    scales = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return _unquantize(model, lambda q: q.input[1] in scales and not np.isfinite(scales[q.input[1]]).all())


def tensors_in_float(model: Any, names: Any) -> list[str]:
    """Take off the QuantizeLinear -> DequantizeLinear pair of each tensor in `names` (a ModelProto, edited in place):
    those tensors stay float (compress.quantize.outliers); returns the names freed."""
    wanted = set(names)
    return _unquantize(model, lambda q: q.input[0] in wanted)


def _unquantize(model: Any, pick: Any) -> list[str]:
    """Take off each QuantizeLinear that `pick(node)` selects, with the DequantizeLinear nodes reading it, when
    nothing else reads its integers; their readers read the float tensor. Returns the float tensors' names."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    freed, drop = [], []
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        if not pick(q):
            continue
        dqs = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]]
        if len(dqs) != sum(q.output[0] in n.input for n in graph.node):
            continue  # something else reads the integers: leave it
        source = q.input[0]
        named = [dq for dq in dqs if dq.output[0] in outputs]  # a graph output: the float tensor takes its name
        if len(named) > 1 or (named and (producer.get(source) is None or source in outputs)):
            continue
        for dq in dqs:
            if dq not in named:
                _bypass(graph, dq.output[0], source, producer, outputs)
        for dq in named:  # last: the other readers already read the source, and follow it to its new name
            _bypass(graph, dq.output[0], source, producer, outputs)
        drop += [q, *dqs]
        freed.append(named[0].output[0] if named else source)
    for n in drop:
        graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for init in [i for n in drop for i in n.input[1:] if i not in read]:
        for proto in [t for t in graph.initializer if t.name == init]:
            graph.initializer.remove(proto)
    return freed
