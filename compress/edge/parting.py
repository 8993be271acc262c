"""Where HTP parts from ORT CPU on the same QDQ graph: the first quantized activation whose values differ.

When the QNN target misses its budget while ORT CPU's reading of the same QDQ graph meets it, the loss is in how
HTP computes some node, not in the 8-bit codes. This runs both on one batch with every quantized activation (each
DequantizeLinear of an activation) as an extra graph output and names the first, in graph order, whose cosine to
the CPU's value falls under PARTED, or whose error relative to the CPU's value passes PARTED_ERROR (a cosine does
not see a wrong scale): Google's Magika parted at its LayerNorm's Reciprocal (cosine 0.57 there, 0.9999 before
it), which is how HTP's Reciprocal was found to misread inputs whose range ends under 1 (it read a seventh of the
value on a test graph: cosine 1.0, relative error 0.86).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PARTED = 0.99
"""Cosine between HTP's and ORT CPU's value of one activation under which the two have parted."""
PARTED_ERROR = 0.25
"""|HTP - CPU| / |CPU| (L2, over the batch) over which the two have parted."""


def where_htp_parts(qdq: Path, feeds: dict[str, np.ndarray], scratch: Path, *,
                    provider_options: dict[str, str] | None = None) -> dict[str, Any] | None:
    """{"tensor", "node", "op_type", "cosine", "error", "inputs_cosine", "checked"} for the first activation whose
    value on HTP parts from ORT CPU's (one batch of `feeds`), None when none does. The copy with the extra outputs
    is written to `scratch`."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from compress.bench.providers import EXACT_MATMULS
    from compress.edge.qnn import htp_session

    model = onnx.load(str(qdq))
    graph = model.graph
    consts = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    tensors = [n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in consts]
    outputs = {o.name for o in graph.output}
    graph.output.extend(helper.make_empty_tensor_value_info(t) for t in tensors if t not in outputs)
    onnx.save(model, str(scratch))
    options = ort.SessionOptions()
    for key, value in EXACT_MATMULS.items():
        options.add_session_config_entry(key, value)
    cpu = ort.InferenceSession(str(scratch), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in cpu.get_outputs()]
    on_cpu = dict(zip(names, cpu.run(None, feeds)))
    on_htp = dict(zip(names, htp_session(scratch, fallback=True, provider_options=provider_options).run(None, feeds)))
    figures = {t: _figures(on_cpu[t], on_htp[t]) for t in tensors}
    for tensor in tensors:
        cosine, error = figures[tensor]
        if cosine >= PARTED and error <= PARTED_ERROR:
            continue
        node = _computing(tensor, producer)
        return {"tensor": tensor, "node": node.name if node is not None else None,
                "op_type": node.op_type if node is not None else None, "cosine": cosine, "error": error,
                "inputs_cosine": min((figures[i][0] for i in (node.input if node is not None else []) if i in figures),
                                     default=None),  # the activations it read (weights are not among them)
                "checked": len(tensors)}
    return None


def _computing(tensor: str, producer: dict[str, Any]) -> Any:
    """The node that computed the activation a DequantizeLinear output dequantizes (DQ <- Q <- node)."""
    dq = producer.get(tensor)
    q = producer.get(dq.input[0]) if dq is not None else None
    return producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None


def _figures(cpu: np.ndarray, htp: np.ndarray) -> tuple[float, float]:
    """(cosine, error relative to the CPU's value) of one activation over the whole batch: the tensors task's own
    cosine and SQNR (compress.tasks.tensors), on the batch as one row."""
    from compress.tasks.tensors import Tensors, relative_error

    got = Tensors().metrics({"t": np.reshape(htp, (1, -1))}, None, {"t": np.reshape(cpu, (1, -1))})
    return got["cosine"], relative_error(got["sqnr_db"])
