"""Quantization-aware distillation for the QNN target: the QDQ graph with ONNX Runtime's QNN settings (uint8 or
uint16 activations, symmetric weights, the whole graph quantized), post-training and then trained against the
teacher, both gated on the validation split; the better one is what the edge stage places on HTP.

Before training, the nodes the QNN QDQ graph leaves in float are named in one line: on HTP they would fail to
compile or fall back to the CPU, and no training changes that.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compress.onnx.graph import readers

log = logging.getLogger("compress")

SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Cast", "Constant",
                       "ConstantOfShape", "Range", "Equal", "Where", "Expand", "Slice", "Flatten", "Transpose",
                       "QuantizeLinear", "DequantizeLinear", "Identity"})
"""Ops that move or index values without arithmetic (or do shape arithmetic on integers): in float they cost HTP
nothing worth naming."""


def float_nodes(path: Path) -> list[tuple[str, str]]:
    """(name, op type) of each arithmetic node of a QDQ graph that reads a float activation not produced by a
    DequantizeLinear, or whose float output goes on without a QuantizeLinear: what stays in float on an NPU."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers = readers(graph)
    outputs = {o.name for o in graph.output}
    integer = _integer_tensors(model)
    found = []
    for n in graph.node:
        if n.op_type in SHAPE_OPS or (n.output and all(o in integer for o in n.output)):
            continue  # integer arithmetic (a dynamic batch's shape math: Mul of a Gather'd dimension) is not HTP's
        reads = [i for i in n.input if i and i not in inits and producer.get(i) is not None]
        unquantized_in = any(producer[i].op_type not in ("DequantizeLinear", *SHAPE_OPS) for i in reads)
        unquantized_out = any(o not in outputs and not any(c.op_type == "QuantizeLinear" for c in consumers.get(o, []))
                              and consumers.get(o) for o in n.output)
        if unquantized_in or unquantized_out:
            found.append((n.name, n.op_type))
    return found


def _integer_tensors(model) -> set[str]:
    """Names of the tensors shape inference types as integers or booleans (none where it cannot run). The model
    itself, with its opset imports: a 16-bit QNN graph below opset 21 quantizes with com.microsoft's Q/DQ."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - a graph inference cannot read: every node counted as before
        return set()
    typed = [*inferred.value_info, *inferred.output, *inferred.input]
    return {v.name for v in typed if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type
            and v.type.tensor_type.elem_type not in floats}


def qnn_ptq(source: Path, out: Path, calibration: Sequence[dict[str, np.ndarray]],
            cfg: Any) -> tuple[Path, dict[str, list], list[tuple[str, str]]]:
    """`source` quantized with ONNX Runtime's QNN settings (the file's `[export] qnn_activation_type` and
    `[quantize] outlier_ratio`) into out/ptq.qdq.onnx, after the float rewrites HTP needs (compress.edge.ranges):
    (its path, the rewrites, the nodes it leaves in float)."""
    from compress.edge.qnn import quantize_for_qnn
    from compress.edge.ranges import for_htp

    base, rewrites = for_htp(source, out, "float", dict(calibration[0]))
    path = quantize_for_qnn(base, out / "ptq.qdq.onnx", list(calibration),
                            activation_type=cfg.export.qnn_activation_type, outlier_ratio=cfg.quantize.outlier_ratio)
    return path, rewrites, float_nodes(path)


def float_warning(origin: str, left: list[tuple[str, str]]) -> str:
    """The one line for the nodes a QNN QDQ graph leaves in float."""
    names = ", ".join(f"{name} ({op})" for name, op in left[:8]) + (", ..." if len(left) > 8 else "")
    return (f"warning: {origin}: the QNN QDQ graph leaves {len(left)} node(s) in float, which HTP cannot run as "
            f"int8: {names}")


def sixteen_bit(path: Path) -> list[str]:
    """Tensors the QDQ graph at `path` quantizes to 16 bits (a QuantizeLinear with a uint16 or int16 zero point): in
    a uint8 QNN graph, the activations whose outlier channels took wider codes (compress.quantize.outliers), with the
    conversions and the outputs of the ops QNN's rules widen beside them."""
    import onnx

    from compress.onnx.skeleton import graph_of

    graph = graph_of(path).graph
    types = {i.name: i.data_type for i in graph.initializer}
    wide = (onnx.TensorProto.UINT16, onnx.TensorProto.INT16)
    return list(dict.fromkeys(n.input[0] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
                              and types.get(n.input[2]) in wide))


def qnn_qat(ctx: Any, calibration: Sequence[dict[str, np.ndarray]], gate: Any, float_score: float,
            origin: str) -> dict[str, Any]:
    """PTQ and QAT of the final model with QNN's settings into the stage folder, each gated against `float_score`
    (the float model's figure, which quantize() measured), read on ORT CPU with its W8A16 MatMuls computed as HTP
    does (EXACT_MATMULS; ORT's default re-quantizes their 16-bit inputs to 8 bits); returns {"used": "ptq" | "qat"
    (the one the edge stage places), "why", "ptq", "qat" (each with its "path"), "float_nodes", the float rewrites'
    entries (compress.edge.ranges.for_htp: "finite_mask" ...), "sixteen_bit" (the tensors a uint8 graph quantizes to
    16 bits: outlier channels and what QNN widens with them)}."""
    from compress.bench.providers import EXACT_MATMULS as HTP_ON_CPU  # W8A16 MatMuls computed as HTP does
    from compress.qat import train_qat
    from compress.qat.pick import pick_quantized
    from compress.quantize.attempts import verdict

    source = ctx.run_dir / ctx.final.onnx
    out = ctx.stage_dir / "qnn"
    out.mkdir(parents=True, exist_ok=True)
    activation = ctx.cfg.export.qnn_activation_type
    ptq_path, rewrites, left = qnn_ptq(source, out, calibration, ctx.cfg)
    if left:
        log.warning(float_warning(origin, left))

    def judged(name: str, path: Path, extra: dict[str, Any]) -> dict[str, Any]:
        score = ctx.figures_onnx(path, "val", config=HTP_ON_CPU)[gate.metric.name]
        drop = gate.drop(float_score, score)
        ok, reason = verdict(gate, drop)
        return {"name": name, "path": str(path), "score": score, "drop": drop, "accepted": ok, "reason": reason,
                **extra}

    ptq = judged("qnn-ptq", ptq_path, {})
    info = train_qat(ptq_path, out / "qat.qdq.onnx", ctx, origin)
    qat = judged("qnn-qat", out / "qat.qdq.onnx", {"qat": {k: v for k, v in info.items() if k != "path"}})
    chosen, note = pick_quantized(ptq if ptq["accepted"] else None, qat, gate)
    chosen = chosen or min((ptq, qat), key=lambda a: a["drop"])  # the NPU needs one: the smaller drop
    return {"used": chosen["name"].removeprefix("qnn-"), "why": note["why"], "activation_type": activation,
            "float_score": float_score, "ptq": _entry(ptq), "qat": _entry(qat), "float_nodes": left,
            **rewrites, "parity": info["parity"], "train_seconds": info["seconds"],
            "sixteen_bit": sixteen_bit(ptq_path) if activation != "uint16" else []}


def _entry(a: dict[str, Any]) -> dict[str, Any]:
    return {k: a[k] for k in ("name", "path", "score", "drop", "accepted", "reason")}
