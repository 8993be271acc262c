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
    cosines = {t: _cosine(on_cpu[t], on_htp[t]) for t in tensors}
    errors = {t: _error(on_cpu[t], on_htp[t]) for t in tensors}
    for tensor in tensors:
        if cosines[tensor] >= PARTED and errors[tensor] <= PARTED_ERROR:
            continue
        node = _computing(tensor, producer)
        inputs = [_dequantized(i, producer) for i in (node.input if node is not None else [])]
        return {"tensor": tensor, "node": node.name if node is not None else None,
                "op_type": node.op_type if node is not None else None, "cosine": cosines[tensor],
                "error": errors[tensor],
                "inputs_cosine": min((cosines[i] for i in inputs if i in cosines), default=None),
                "checked": len(tensors)}
    return None


def _computing(tensor: str, producer: dict[str, Any]) -> Any:
    """The node that computed the activation a DequantizeLinear output dequantizes (DQ <- Q <- node)."""
    dq = producer.get(tensor)
    q = producer.get(dq.input[0]) if dq is not None else None
    return producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None


def _dequantized(name: str, producer: dict[str, Any]) -> str:
    return name if (producer.get(name) is not None and producer[name].op_type == "DequantizeLinear") else ""


def _error(cpu: np.ndarray, htp: np.ndarray) -> float:
    cpu, htp = np.asarray(cpu, np.float64).ravel(), np.asarray(htp, np.float64).ravel()
    norm = np.linalg.norm(cpu)
    return float(np.linalg.norm(htp - cpu) / norm) if norm > 0 else float(np.linalg.norm(htp) > 0)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else float(np.array_equal(a, b))
