"""Which nodes of a quantized model hurt accuracy most: each tensor against its float twin (SQNR), worst first.

Used by the quantize stage's last remedy (keep the most sensitive nodes in float).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

# A tensor that matches its float twin exactly has infinite SQNR; cap it so differences stay finite.
_SQNR_CAP_DB = 80.0


def calibration_reader(input_name: str, x: np.ndarray, batch: int) -> Any:
    """A CalibrationDataReader over `x` in batches (also what qdq_loss_debug iterates)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{input_name: x[i:i + batch]} for i in range(0, len(x), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return _Batches()


def rank_sensitive_nodes(float_path: Path, quant_path: Path, x: np.ndarray, input_name: str,
                         op_types: set[str] | None, *, batch: int = 32) -> list[tuple[str, float]]:
    """Nodes of `float_path`, worst first, by how much quantization noise each adds (dB of SQNR lost).

    Every float tensor of both models is recorded on `x` (qdq_loss_debug), each quantized tensor is compared with
    its float twin (SQNR), and a node's score is the SQNR of its inputs minus the SQNR of its output: the noise
    it adds itself rather than the noise it inherits. Tensors missing from the quantized model (fused away)
    inherit the SQNR of their producer's inputs. Only nodes with op types in `op_types` (all when None) rank.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory() as tmp:
        acts = []
        for tag, path in (("float", float_path), ("quant", quant_path)):
            aug = Path(tmp) / f"{tag}.onnx"
            modify_model_output_intermediate_tensors(str(path), str(aug))
            acts.append(collect_activations(str(aug), calibration_reader(input_name, x, batch)))
    float_acts, quant_acts = acts
    graph = onnx.load(str(float_path), load_external_data=False).graph
    sqnr: dict[str, float] = {}
    for name in set(float_acts) & set(quant_acts):
        a = [np.asarray(t, dtype=np.float32) for t in float_acts[name]]
        b = [np.asarray(t, dtype=np.float32) for t in quant_acts[name]]
        sqnr[name] = min(_SQNR_CAP_DB, compute_signal_to_quantization_noice_ratio(a, b))
    # A tensor the quantized model fused away (Conv -> Relu keeps only the Relu output) joins its producer and
    # consumer into one group that shares the blame, instead of pinning it all on the consumer.
    pending: dict[str, tuple[float, list[str]]] = {}
    score: dict[str, float] = {}
    for node in graph.node:  # ONNX graphs are topologically sorted, so inputs are seen before outputs
        in_db, group = _SQNR_CAP_DB, [node.name]
        for t in node.input:
            if t in pending:
                in_db = min(in_db, pending[t][0])
                group = pending[t][1] + group
            elif t:
                in_db = min(in_db, sqnr.get(t, _SQNR_CAP_DB))
        matched = [sqnr[t] for t in node.output if t in sqnr]
        if not matched:
            for t in node.output:
                pending[t] = (in_db, group)
            continue
        for name in group:
            score[name] = max(score.get(name, -math.inf), in_db - min(matched))
    scores = [(n.name, score[n.name]) for n in graph.node
              if n.name in score and (op_types is None or n.op_type in op_types)]
    return sorted(scores, key=lambda s: s[1], reverse=True)
