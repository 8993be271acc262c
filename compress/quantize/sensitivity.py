"""Which nodes of a quantized model hurt accuracy most: each tensor against its float twin (SQNR), worst first.

Used by the quantize stage's last remedy (keep the most sensitive nodes in float).
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

# A tensor that matches its float twin exactly has infinite SQNR; cap it so differences stay finite.
_SQNR_CAP_DB = 80.0


def feeds_reader(batches: list[dict[str, np.ndarray]]) -> Any:
    """A CalibrationDataReader over feed batches (also what qdq_loss_debug iterates)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(list(batches))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(list(batches))

        def __len__(self) -> int:
            return len(batches)

        def set_range(self, start_index: int, end_index: int) -> None:  # ORT's CalibStridedMinMax: one stride
            self._it = iter(list(batches[start_index:end_index]))

    return _Batches()


def rank_sensitive_nodes(float_path: Path, quant_path: Path, batches: list[dict[str, np.ndarray]],
                         op_types: set[str] | None) -> list[tuple[str, float]]:
    """Nodes of `float_path`, worst first, by how much quantization noise each adds (dB of SQNR lost).

    Every float tensor of both models is recorded on `batches` (qdq_loss_debug), each quantized tensor is compared with
    its float twin (SQNR), and a node's score is the SQNR of its inputs minus the SQNR of its output: the noise
    it adds itself rather than the noise it inherits. Tensors missing from the quantized model (fused away)
    inherit the SQNR of their producer's inputs. Only nodes with op types in `op_types` (all when None) rank.
    """
    import tempfile

    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        modify_model_output_intermediate_tensors,
    )

    from compress.onnx.skeleton import graph_of

    with tempfile.TemporaryDirectory() as tmp:
        acts = []
        for tag, path in (("float", float_path), ("quant", quant_path)):
            aug = Path(tmp) / f"{tag}.onnx"
            modify_model_output_intermediate_tensors(str(path), str(aug))
            acts.append(collect_activations(str(aug), feeds_reader(batches)))
    float_acts, quant_acts = acts
    graph = graph_of(float_path).graph
    sqnr: dict[str, float] = {}
    for name in set(float_acts) & set(quant_acts):
        a = [np.asarray(t, dtype=np.float32) for t in float_acts[name]]
        b = [np.asarray(t, dtype=np.float32) for t in quant_acts[name]]
        try:
            db = compute_signal_to_quantization_noice_ratio(a, b)
        except ValueError:  # ORT's log10 of 0: the noise is infinite (an fp16 tensor overflowed), the worst there is
            db = -_SQNR_CAP_DB
        sqnr[name] = min(_SQNR_CAP_DB, db) if np.isfinite(db) or db > 0 else -_SQNR_CAP_DB  # NaN: the worst too
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
    for name, db in mixed_ranges(graph, float_acts).items():
        score[name] = max(score.get(name, -math.inf), db)
    scores = [(n.name, score[n.name]) for n in graph.node
              if n.name in score and (op_types is None or n.op_type in op_types)]
    return sorted(scores, key=lambda s: s[1], reverse=True)


def mixed_ranges(graph: Any, acts: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Concat nodes that join inputs of very different ranges, with the dB the smallest one loses when they share
    the output's one scale (20 log10 of the range ratio). A YOLOv8 head joins boxes in pixels (0-320) and class
    scores (0-1): quantized together, every score became 0 or 1.27, and detections vanished, while the output's
    SQNR, dominated by the boxes, looked fine. Ratios under 4 (12 dB) are left to the SQNR ranking."""
    out: dict[str, float] = {}
    for node in graph.node:
        if node.op_type != "Concat":
            continue
        ranges = [max(float(np.max(np.abs(a))) for a in acts[t]) for t in node.input if t in acts]
        ranges = [r for r in ranges if r > 0]
        if len(ranges) >= 2 and max(ranges) / min(ranges) >= 4:
            out[node.name] = 20 * math.log10(max(ranges) / min(ranges))
    return out


def activation_bytes(model_path: Path, feed: dict[str, np.ndarray] | None = None) -> int:
    """Bytes of every float tensor the model computes for one sample (shape-inferred graph; a symbolic dimension
    counts as 1): what ORT's histogram calibrators and the sensitivity ranking hold per sample, since they keep every
    intermediate tensor of every calibration batch in memory before they summarise. 0 when shapes are unknown.
    With `feed` (a calibration batch), the graph is inferred at the feed's own shapes, so a free height and width
    count at their real size (a recogniser's width of 320 counted as 1 before), divided by the feed's rows."""
    return _bytes(model_path, feed)[0]


def run_bytes(model_path: Path, feed: dict[str, np.ndarray] | None = None) -> int:
    """Bytes of activations one ORT run of the model holds per sample: the most that are alive at once, walking the
    nodes in order (a tensor lives from its node to its last reader; graph outputs to the end), times ALIVE_MARGIN.
    Counted as activation_bytes counts. A model whose every tensor is an output (a calibrator's) comes to the sum
    times the margin: for those, rows_that_fit(every_tensor=True) takes the sum alone."""
    return _bytes(model_path, feed)[1]


ALIVE_MARGIN = 3
"""What ORT's arena grows per sample over the most bytes alive at once, with room to spare: measured from batch 1 to
8 (4 at 640 px), 2026-12-07: ResNet-50 at 224 px 12.7 MB a sample against 9.2 MB alive (1.4x; the sum of every tensor
says 101 MB); PP-OCRv4's detector at 640 px 116 against 42 (2.8x: its arena rounds, its convolutions unfold their
inputs; the sum says 663); its recogniser at 48x320 7.0 against 4.1 (1.7x); Magika 4.6 against 2.5 (1.8x)."""


def _bytes(model_path: Path, feed: dict[str, np.ndarray] | None) -> tuple[int, int]:
    """(activation_bytes, run_bytes), remembered per model file and feed shapes: shape inference of a ResNet-50
    takes a second, and one quantization asks several times."""
    stat = Path(model_path).stat()
    shapes = tuple((k, tuple(np.shape(v))) for k, v in (feed or {}).items())
    return _bytes_cached(str(Path(model_path).resolve()), stat.st_mtime_ns, stat.st_size, shapes)


@functools.lru_cache(maxsize=64)
def _bytes_cached(path: str, mtime: int, size: int, shapes: tuple) -> tuple[int, int]:
    shaped = {k: np.broadcast_to(np.float32(0), shape) for k, shape in shapes}  # shapes only, no memory
    return _activation_bytes(Path(path), shaped or None)


def _activation_bytes(model_path: Path, feed: dict[str, np.ndarray] | None = None) -> tuple[int, int]:
    """(sum, most alive at once x ALIVE_MARGIN) of the float tensors' bytes per sample of `feed` (activation_bytes,
    run_bytes)."""
    import onnx

    from compress.onnx.skeleton import graph_of

    model = graph_of(model_path)  # shapes only: inferring them on the weights copied them through C++ 3 times
    rows = 1
    if feed:
        rows = next((int(np.shape(v)[0]) for v in feed.values() if np.ndim(v)), 1)
        sized = _at_shapes(model, {k: np.shape(v) for k, v in feed.items()})
        model = sized if sized is not None else model
    graph = model.graph
    sizes: dict[str, int] = {}
    for value in [*graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) or not tensor.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tensor.shape.dim]
        width = 4 if tensor.elem_type == onnx.TensorProto.FLOAT else 2
        sizes[value.name] = int(np.prod(dims, dtype=np.int64)) * width
    return sum(sizes.values()) // max(rows, 1), ALIVE_MARGIN * _peak_alive(graph, sizes) // max(rows, 1)


def _peak_alive(graph: Any, sizes: dict[str, int]) -> int:
    """The most bytes of `sizes`' tensors alive at once as the nodes run in graph order (ONNX's order is a
    topological one): a node's outputs are made while its inputs still live; an input dies after its last reader;
    graph outputs live to the end. A subgraph's (If, Loop) own tensors are not counted; the outer ones it reads
    live until its node ran."""
    reads = [[*node.input, *_outer_reads(node)] for node in graph.node]  # a subgraph walked once
    last = {name: i for i, names in enumerate(reads) for name in names}
    ends = {o.name for o in graph.output}
    alive, peak = 0, 0
    for i, node in enumerate(graph.node):
        alive += sum(sizes.get(o, 0) for o in node.output if o)
        peak = max(peak, alive)
        dead = {n for n in reads[i] if last.get(n) == i and n not in ends}
        dead |= {o for o in node.output if o and o not in last and o not in ends}  # made and never read
        alive -= sum(sizes.get(n, 0) for n in dead)
    return peak


def _outer_reads(node: Any) -> list[str]:
    """Names a node's subgraphs read (every input of their nodes; their own tensors are not in `sizes`' counts of
    the outer graph, so naming them too costs nothing)."""
    out: list[str] = []
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in sub.node:
                out += list(inner.input)
                out += _outer_reads(inner)
    return out


def _at_shapes(model: Any, shapes: dict[str, tuple[int, ...]]) -> Any | None:
    """A copy of `model` (no weights loaded) with its inputs at `shapes` and every other shape re-inferred; None when
    ONNX's shape inference cannot run on it."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    for value in copy.graph.input:
        if value.name in shapes and value.type.HasField("tensor_type"):
            dims = value.type.tensor_type.shape.dim
            if len(dims) == len(shapes[value.name]):
                for d, size in zip(dims, shapes[value.name]):
                    d.Clear()
                    d.dim_value = int(size)
    try:
        return onnx.shape_inference.infer_shapes(copy)
    except Exception:  # inference errors of odd graphs: the symbolic count stands
        return None


def rows_that_fit(model_path: Path, one: dict[str, np.ndarray], most: int, cap: int | None = None, *,
                  every_tensor: bool = False) -> int:
    """Samples a run may take at once, at most `most`: fewer when one sample's activations (`one`: a one-sample
    feed, counted at its real shapes) are large, so a run holds at most FOLD_BYTES (or `cap`, when lower). ORT's
    arena keeps the whole run's activations: 32 detector images at 320 px held 1.6 GB. A plain run holds what is
    alive at once (run_bytes); a calibrator's run, whose every tensor is an output (`every_tensor`), all of them."""
    per_sample = (activation_bytes if every_tensor else run_bytes)(model_path, one)
    return max(1, min(most, int(min(cap or FOLD_BYTES, FOLD_BYTES) // per_sample))) if per_sample else most


def memory_cap(max_memory_mb: float | None = None) -> int | None:
    """The bytes calibration and the sensitivity ranking may hold: `max_memory_mb` when given, else half of the
    memory available now (None where the platform does not say)."""
    if max_memory_mb:
        return int(max_memory_mb * 2**20)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)
    except (ValueError, OSError, AttributeError):
        return None


def samples_that_fit(model_path: Path, wanted: int, *, copies: int = 2, cap: int | None = None,
                     share: float | None = None, feed: dict[str, np.ndarray] | None = None,
                     hard: int | None = None) -> tuple[int, str]:
    """How many of `wanted` samples a tool that keeps all activations (`copies` models' worth) can take within
    `cap` bytes (default: memory_cap()), at least 1 while it fits under `hard` (0: not one does); and a note for the
    summary when that is fewer than wanted.
    `share` (of the memory available now) is the older way to say the cap."""
    per_sample = activation_bytes(model_path, feed) * copies
    if share is not None:
        try:
            cap = int(share * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            cap = None
    elif cap is None:
        cap = memory_cap()
    if cap is None or per_sample <= 0 or per_sample * wanted <= cap:
        return wanted, ""
    fit = int(cap // per_sample)
    if fit < 1:  # one sample past the soft cap when the hard one holds it
        fit = min(1, int(hard // per_sample)) if hard else 1
    if fit >= wanted:
        return wanted, ""
    if fit < 1:
        return 0, (f"one sample's activations ({per_sample / 2**20:.0f} MB, every one kept) exceed the memory cap "
                   f"({hard / 2**30:.1f} GB; --max-memory)")
    return fit, (f"{fit} of {wanted} samples (every activation is kept: {per_sample / 2**20:.0f} MB a sample, "
                 f"cap {max(cap, min(hard or cap, fit * per_sample)) / 2**30:.1f} GB)")


FOLD_BYTES = 128 * 2**20
"""Calibration runs batches with at most this much of activations (or the cap, when lower), and histogram calibrators
read at most this much before folding it into histograms: ranges and histograms merge across batches, so holding
more only costs memory. A 12 MB YOLOv8n calibrating 32 images at 320 px peaked at 2.5 GB in one batch, 1.7 GB with
512 MB batches and 0.75 GB with 128 MB ones (2 images), with the same ranges and the same wall time."""

RANK_BYTES = 1024 * 2**20
"""The sensitivity ranking keeps every activation of both models for its samples: at most this much, or one sample
when that fits under the memory cap (none: the ranking is skipped, and says so). The old floor of 8 samples took a
4.7 MB text detector at 640x640 (2 GB a sample) to 18 GB, and the 10.8 MB PP-OCRv4 recogniser to 5.4 GB."""


def gate_checked(base: Path, quant: Path, candidates: list[str], score: Any, work: Path) -> list[tuple[str, float]]:
    """`candidates` ordered by the gate's own figure with each one alone in float (`score(path)` -> the figure, higher
    is better), best first: what the model needs, measured, where SQNR only says where noise is largest."""
    from compress.quantize.qdq import with_node_in_float

    out: list[tuple[str, float]] = []
    for i, name in enumerate(candidates):
        path = work / f"candidate-{i:02d}.onnx"
        if with_node_in_float(base, quant, name, path):
            out.append((name, float(score(path))))
            path.unlink()
    return sorted(out, key=lambda s: -s[1])


def feeding_outputs(graph: Any, op_types: set[str] | None) -> list[str]:
    """Nodes with weights (of `op_types`) whose result reaches a graph output through data movement only (a
    classifier's head, a detector's last convolutions): their rounding lands on the figures the gate reads."""
    movement = {"Relu", "Clip", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Softmax",
                "Sigmoid", "Concat", "Split", "Slice", "Cast"}
    producer = {o: n for n in graph.node for o in n.output}
    found: list[str] = []
    todo = [o.name for o in graph.output]
    seen: set[str] = set()
    while todo:
        tensor = todo.pop()
        node = producer.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in movement:
            todo += list(node.input)
        elif op_types is None or node.op_type in op_types:
            found.append(node.name)
    return found


# Ops that only move or select values: keeping one in float removes no rounding of its own.
_DATA_MOVEMENT_OPS: frozenset[str] = frozenset(
    {"Relu", "Clip", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split", "Pad", "Gather",
     "GatherElements", "MaxPool", "Resize", "TopK", "Where", "ArgMax"}
)


def quantizable_ops(settings: dict[str, Any]) -> set[str] | None:
    """Op types worth keeping in float: those the quantizer touches, less pure data movement (no arithmetic)."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    if settings.get("op_types"):
        ops = set(settings["op_types"])
    elif settings["mode"] == "dynamic":  # and Gemm, which ORT's dynamic quantizer turns into a MatMul it quantizes
        ops = set(IntegerOpsRegistry) | {"Gemm"}  # (compress.quantize.dynamic.with_gemm_matmuls keeps one in float)
    elif settings["mode"] == "static":  # quantize_static's default op list is the union of both registries
        ops = set(QDQRegistry) | set(QLinearOpsRegistry)
    else:
        return None
    return ops - _DATA_MOVEMENT_OPS
