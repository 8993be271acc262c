"""The dynamic int8 remedy of a static search (compress.quantize.attempts.remedy_plan): on a graph whose weights are
all MatMul or Gemm (a transformer, an MLP), after the static remedies, ONNX Runtime's dynamic int8, then the same
with the layers that write the outlier check's activations (compress.quantize.outliers) in float."""
from __future__ import annotations

from typing import Any, Sequence

from compress.quantize.config import WEIGHTED

OUTLIER_LAYERS_WHY = "the activations a few channels dominate (the outlier check's) kept in float"
"""all-MiniLM-L6-v2 (seq 64, 2026-12-07): dynamic int8 read a real-token cosine drop of 0.0108 (budget 0.01); with the
three FFN output MatMuls whose outputs reach 98-244x their median channel in float, 0.0072-0.0073 (pooled 0.9952), at
1.87-1.90x fp32's speed (pure dynamic 2.34x; paired, batch 1)."""


def outlier_layers(graph: Any, tensors: Sequence[str]) -> list[str]:
    """The MatMul and Gemm nodes of `graph` with a weight initializer that write one of `tensors`, by name."""
    weights = {i.name for i in graph.initializer}
    wanted = set(tensors)
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.name and len(n.input) > 1
            and n.input[1] in weights and wanted.intersection(n.output)]


DYNAMIC_WHY = ("remedy: dynamic int8 (each activation quantized from its own range as the model runs): the usual "
               "int8 of transformers on a CPU, where one calibrated range per tensor loses; CPU only, an NPU runs "
               "static int8")
"""Why the dynamic attempt is tried. all-MiniLM-L6-v2 (seq 64, 2026-12-07): static int8 after every remedy read a
pooled-embedding cosine of 0.956-0.982 to fp32; dynamic per-channel 0.993, 2.34x faster than fp32 (paired)."""


def matmuls_only(graph: Any) -> bool:
    """Whether every weighted op of `graph` (a GraphProto) is a MatMul or Gemm, and there is one: where ONNX
    Runtime's dynamic int8 computes every weight in 8 bits (its dynamic Conv is slower than float on CPUs)."""
    ops = {n.op_type for n in graph.node if n.op_type in WEIGHTED}
    return bool(ops) and ops <= {"MatMul", "Gemm"}


def dynamic_remedy_runs(mode: str, cfg: Any, graph: Any, *, npu: bool = False) -> bool:
    """Whether a search of `mode` under the [quantize] settings `cfg` ends with the dynamic int8 remedy: a static
    search (not QAT) with its remedies and this one on, for no NPU target (`npu`: HTP runs static int8 only), on a
    `graph` whose weights are all MatMul or Gemm. The quantize search and a study's untrained timing both ask."""
    return mode == "static" and cfg.fallback and cfg.dynamic_remedy and not npu and matmuls_only(graph)


def with_gemm_matmuls(graph: Any, names: list[str] | None) -> list[str] | None:
    """`names` with NAME_MatMul beside each Gemm's NAME: ONNX Runtime's dynamic quantizer turns a Gemm into a MatMul
    of that name (and an Add) before it reads nodes_to_exclude, so a Gemm kept in float by its own name was quantized
    all the same (and the summary said it was kept)."""
    if not names:
        return names
    gemms = {n.name for n in graph.node if n.op_type == "Gemm" and n.name}
    return [*names, *(f"{n}_MatMul" for n in names if n in gemms)]
