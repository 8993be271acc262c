"""Whether a quantization attempt did anything that computes in fewer bits, and why not when no attempt did."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compress.onnx.skeleton import graph_of
from compress.quantize.config import WEIGHTED

INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention",
               "QGemm", "DynamicQuantizeLSTM", "QEmbedLayerNormalization")
"""Ops that compute in integers (dynamic and QOperator graphs), besides every QLinear* op: a model holding one
was quantized."""


def is_reduced(path: Path, mode: str) -> bool:
    """Whether quantization did something that computes in fewer bits: fp16 weights for fp16; for int8, an integer
    op, or a Conv, ConvTranspose, MatMul or Gemm of a QDQ graph whose every input is dequantized (ORT runs it in
    int8). Q/DQ pairs around the other ops alone are not: with every such op kept in float (`--exclude Conv` on a
    CNN), ORT runs the model in float with extra conversions, slower than the float model."""
    import onnx

    graph = graph_of(path).graph
    if mode == "fp16":
        return any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    if any(n.op_type in INTEGER_OPS or n.op_type.startswith("QLinear") for n in graph.node):
        return True
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return any(n.op_type in WEIGHTED and all(i in dequantized for i in n.input[:2] if i) for n in graph.node)


def nothing_to_quantize(attempts: list[dict[str, Any]], model: Path, excluded: Sequence[str] = (),
                        base: Path | None = None) -> str | None:
    """Why no attempt quantized anything, when that is the case: every attempt failed (ORT's calibrator cannot load
    the graph it augments from onnx's IR 3 single-op test graphs), the model's work sits inside control-flow
    subgraphs (ONNX Runtime's quantizers work on the main graph; Silero VAD is 5 nodes around two Ifs), or else every
    node the quantizer could take was one it keeps in float. None when some attempt quantized, or none ran."""
    if not attempts or any(a.get("quantized") for a in attempts):
        return None
    if all(a.get("score") is None for a in attempts):
        first = attempts[0]["reason"].removeprefix("failed: ")
        return (f"no attempt could be built (all {len(attempts)} failed; the first: {first})" if len(attempts) > 1
                else f"no attempt could be built (it failed: {first})")
    from compress.onnx.control import CONTROL_FLOW, resolve_hint

    graph = graph_of(model).graph

    def count(g: Any, ops: tuple[str, ...] | None = None) -> int:  # nodes (of `ops`), subgraphs' included
        return sum((ops is None or n.op_type in ops) + sum(count(a.g, ops) if a.HasField("g") else 0
                                                             for a in n.attribute)
                   + sum(count(x, ops) for a in n.attribute for x in a.graphs) for n in g.node)

    total, top = count(graph), len(graph.node)
    flow = sorted({n.op_type for n in graph.node if n.op_type in CONTROL_FLOW})
    # the subgraphs hold most nodes, or a weighted op the main graph lacks (a MatMul in each branch of one If)
    if flow and (total > 2 * top or count(graph, WEIGHTED) > sum(n.op_type in WEIGHTED for n in graph.node)):
        return (f"{total - top} of the model's {total} nodes sit inside {'/'.join(flow)} subgraphs, which ONNX "
                f"Runtime's quantizer does not enter ({resolve_hint(graph)})")
    nodes = graph.node if base is None else graph_of(base).graph.node  # `excluded` names the pre-processed graph's
    weighted = [n.name for n in nodes if n.op_type in WEIGHTED]
    kept = sorted({n.op_type for n in nodes if n.op_type in WEIGHTED and n.name in set(excluded)})
    if weighted and kept and set(weighted) <= set(excluded):
        return (f"every node that would compute in int8 ({len(weighted)} {'/'.join(kept)}) is kept in float by "
                "--exclude ([quantize] exclude)")
    return ("the quantizer found no node it quantizes (MatMul, Conv, Gemm and the like with constant weights) in "
            f"the main graph's {top} nodes")
