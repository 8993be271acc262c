"""Bringing a model up to date before quantization: old IR 3 weight inputs dropped, weights stored as Constant nodes
moved to initializers, the opset raised for static QDQ, ORT's pre-processing (shape inference and optimisation) run
where it cannot litter the working folder; the nodes a user keeps in float; large models written with external data;
and ONNX Runtime's log records kept out of the terminal while its quantization tools run."""
from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compress.errors import CompressError, first_line
from compress.onnx.graph import readers


QDQ_OPSET = 13
"""Static QDQ needs this opset: per-channel QuantizeLinear/DequantizeLinear (their `axis`) arrived in opset 13."""


def preprocess(src: Path, dst: Path, mode: str) -> str:
    """quant_pre_process (shape inference + ORT optimisation); fp16 only needs a plain copy. An old IR 3 graph
    first loses the inputs that are really its weights (or every attempt would ask for them as inputs), and a
    graph older than opset 13 is upgraded for static QDQ (per-channel scales need it; ORT writes an invalid model
    otherwise). Returns what was done, for the summary."""
    import onnx

    large = is_large(src)
    src, notes, model = _brought_up_to_date(src, dst.with_name(f"{dst.stem}.inputs.onnx"), mode, large)
    if large:
        notes.append("over 1 GB: weights kept as external data")
    if mode == "fp16":
        save(onnx.load(str(src)), dst, large=large) if large else shutil.copyfile(src, dst)
        return "; ".join(notes + ["copied (fp16 needs no pre-processing)"])
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from compress.onnx.skeleton import without_weights
    from compress.quantize.lean import release

    # inferred without the weights: onnx's inference copied the whole model through C++ three times, and no shape
    # depends on a float weight
    plain = _shapes_known(without_weights(model))  # then ORT's symbolic inference (and torch) adds nothing
    del model
    release()
    try:
        import tempfile

        # an incomplete symbolic shape inference saves a debugging copy into the working folder: keep it out
        source, target = str(Path(src).resolve()), str(Path(dst).resolve())  # before the working folder changes
        with tempfile.TemporaryDirectory(prefix="compress-prep-") as tmp, _working_folder(tmp):
            quant_pre_process(source, target, skip_symbolic_shape=plain, save_as_external_data=large,
                              all_tensors_to_one_file=True, external_data_location=f"{dst.name}.data")
        notes.append("quant_pre_process: shape inference + optimisation"
                     + (" (onnx's shape inference gave every tensor a shape)" if plain else ""))
        flat = _flat_gemm_biases_in(dst) if mode == "static" else 0
        if flat:
            notes.append(f"{flat} Gemm bias{'es' if flat != 1 else ''} of shape (1, N) stored as (N,) (ORT's "
                         "quantizer fails on them with per-channel weights)")
        return "; ".join(notes)
    except Exception as exc:  # symbolic shape inference gives up on some graphs; quantization still works
        save(onnx.load(str(src)), dst, large=large) if large else shutil.copyfile(src, dst)
        return "; ".join(notes + [f"quant_pre_process failed ({first_line(exc)}); quantized the model as is"])


def is_large(path: Path) -> bool:
    """Whether the model at `path` (with its external data) is too big to go through one serialized protobuf:
    ORT's quantizer and pre-processor then write external data too. Half the limit leaves room for what they add."""
    from compress.onnx.graph import PROTOBUF_LIMIT, model_bytes

    return model_bytes(path) > PROTOBUF_LIMIT // 2  # the graph parsed once a file


def save(model: Any, path: Path, *, large: bool) -> None:
    """onnx.save, with the weights in `<name>.data` beside the model when it is large."""
    import onnx

    if large:
        from compress.cache import usual_mode

        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}.data")
        usual_mode(path.with_name(f"{path.name}.data"))
    else:
        onnx.save(model, str(path))


@contextlib.contextmanager
def quiet_onnx_runtime() -> Iterator[None]:
    """Keep ONNX Runtime's Python log records out of the terminal for the block (a decorator too); compress's own
    pass as before. ORT's quantizer logs through the root logger ("Please consider pre-processing before
    quantization" twice an attempt, "Axis 1 is out-of-range for weight ..." on a PP-OCR recogniser), its other
    modules through loggers under "onnxruntime"; what matters of it reaches the attempts table as a failure. With no
    handler set up, ORT's `logging.warning` would also call basicConfig, and every later line of compress's would
    read "WARNING:compress...": Python's last-resort handler stands in on the root logger for the block."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("onnxruntime")
    package = os.path.dirname(spec.origin) + os.sep if spec and spec.origin else None
    root, theirs = logging.getLogger(), logging.getLogger("onnxruntime")

    def not_theirs(record: logging.LogRecord) -> bool:  # the root logger's records: logging.warning(...) calls
        return package is None or not record.pathname.startswith(package)

    stand_in = None if root.handlers else logging.lastResort or logging.NullHandler()
    level = theirs.level
    root.addFilter(not_theirs)
    if stand_in is not None:
        root.addHandler(stand_in)
    theirs.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        theirs.setLevel(level)
        if stand_in is not None:
            root.removeHandler(stand_in)
        root.removeFilter(not_theirs)


@contextlib.contextmanager
def _working_folder(path: str) -> Any:
    """Run the block with `path` as the working folder (contextlib.chdir, on Python 3.10 too)."""
    import os

    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _shapes_known(model: Any) -> bool:
    """Whether onnx's own shape inference gives every output of the main graph's nodes a type and a full shape
    (each dimension a number or a name), in a graph without subgraphs. ORT's symbolic shape inference is then not
    needed: it is for what onnx cannot infer (shapes computed at run time, as in transformers). It would import
    torch (onnxruntime.tools does, 2 s) and take another second on a ResNet-50, for the same quantized model."""
    import onnx

    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in model.graph.node
           for a in n.attribute):
        return False
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a graph onnx cannot infer is ORT's symbolic inference's to try
        return False
    typed = {v.name: v.type for v in (*inferred.graph.value_info, *inferred.graph.output)}

    def full(name: str) -> bool:
        t = typed.get(name)
        return (t is not None and t.HasField("tensor_type") and t.tensor_type.elem_type != 0
                and t.tensor_type.HasField("shape")
                and all(d.HasField("dim_value") or d.HasField("dim_param") for d in t.tensor_type.shape.dim))

    return all(full(o) for n in model.graph.node for o in n.output if o)


def _brought_up_to_date(src: Path, copy: Path, mode: str, large: bool) -> tuple[Path, list[str], Any]:
    """`src`, or `copy` written with the IR 3 weight inputs dropped and, for static QDQ, the opset raised to 13, and
    the graph as written. The graph is parsed once, without its external weights; they are read only when a copy
    must be written (a 2 GB model held in memory here would sit beside every later step)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from compress.onnx.graph import default_opset, upgraded, without_initializer_inputs
    from compress.onnx.skeleton import external_bytes_of

    model = onnx.load(str(src), load_external_data=False)
    notes: list[str] = []
    changed = without_initializer_inputs(model)
    if changed:
        notes.append("weights dropped from the graph inputs (IR 3)")
    moved = constants_to_initializers(model)
    if moved:
        changed = True
        notes.append(f"{moved} Constant node{'s' if moved != 1 else ''} holding weights moved to initializers (the "
                     "quantizer reads weights from initializers only; left as nodes they stay float)")
    if not large and external_bytes_of(model, src.parent):  # every tool after this reads one file: ORT's
        changed = True  # pre-processing and shutil copies keep a .data path that is not beside their output
        notes.append("weights read in from external data (under 1 GB: one file)")
    old_opset = default_opset(model)
    written = changed or (mode == "static" and old_opset < QDQ_OPSET)
    unnamed = sum(1 for n in model.graph.node if not n.name)
    named = name_nodes(model.graph) if unnamed and (written or not large) else 0  # a large model is not read
    if named:  # in and written again for names alone
        notes.append(f"{named} unnamed node{'s' if named != 1 else ''} named (ONNX Runtime keeps nodes in float by "
                     "name: --exclude and the exclusion remedy need one)")
    elif unnamed:
        notes.append(f"{unnamed} unnamed node{'s' if unnamed != 1 else ''} left unnamed (naming alone would write "
                     "this large model again): --exclude and the exclusion remedy cannot keep "
                     f"{'them' if unnamed != 1 else 'it'} in float; name the model's nodes to exclude them")
    if not (written or named):
        return src, notes, model
    load_external_data_for_model(model, str(src.parent))  # the converter and the copy need every weight
    newer = upgraded(model, QDQ_OPSET, origin=str(src), why="static QDQ") if mode == "static" else None
    if newer is not None:
        notes.append(f"opset {old_opset} upgraded to {QDQ_OPSET} (onnx version converter)")
    save(newer if newer is not None else model, copy, large=large)
    return copy, notes, newer if newer is not None else model


def name_nodes(graph: Any) -> int:
    """Give each unnamed node of the main graph a name of its own (`<op type>_<index>`); how many were named. ORT's
    quantizers keep nodes in float by name, and an empty name in their list matches every unnamed node."""
    taken = {n.name for n in graph.node if n.name}
    named = 0
    for i, node in enumerate(graph.node):
        if node.name:
            continue
        name, k = f"{node.op_type}_{i}", 0
        while name in taken:
            k += 1
            name = f"{node.op_type}_{i}_{k}"
        node.name = name
        taken.add(name)
        named += 1
    return named


def _flat_gemm_biases_in(path: Path) -> int:
    """flat_gemm_biases on the model at `path`, written back when it changed (its external weights stay where they
    are: only shapes change)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    flat = flat_gemm_biases(model)
    if flat:
        onnx.save(model, str(path))
    return flat


def flat_gemm_biases(model: Any) -> int:
    """Gemm biases stored as (1, N) made (N,), in place; returns how many. ORT's pre-processing fuses MatMul + Add
    into Gemm with the Add's bias as it was, often (1, N) (jax2tf exports: Google's Magika), and ORT's quantizer
    (1.32) indexes a Gemm's bias per output channel with per-channel weights: on (1, N) it fails ("The truth value
    of an array with more than one element is ambiguous"), and so did every per-channel attempt. Gemm broadcasts
    (N,) as it broadcasts (1, N)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    reading = readers(graph)
    flat = 0
    for node in graph.node:
        bias = inits.get(node.input[2]) if node.op_type == "Gemm" and len(node.input) > 2 else None
        if bias is None or len(bias.dims) != 2 or bias.dims[0] != 1 or len(reading[bias.name]) != 1:
            continue
        width = bias.dims[1]
        del bias.dims[:]
        bias.dims.append(width)
        for infos in (graph.value_info, graph.input):  # a stated (1, N) shape would now contradict the weight
            stale = [v for v in infos if v.name == bias.name]
            for v in stale:
                infos.remove(v)
        flat += 1
    return flat


CONSTANT_WEIGHT_ELEMENTS = 16
"""A float Constant node with at least this many elements is a weight (Paddle exports store them so); smaller ones
(shapes, scalars, epsilons) stay nodes."""


def constants_to_initializers(model: Any, *, every: bool = False) -> int:
    """Turn float Constant nodes of the main graph that hold weight-sized tensors (`every`: every Constant holding a
    tensor) into initializers, in place; return how many. Exporters such as Paddle's write weights as Constant nodes,
    which ORT's quantizer never reads: the "int8" model then keeps them in float, larger and slower than the fp32
    one. QNN's HTP reads any value a node computes as dynamic and takes no Constant node at all."""
    import onnx

    graph = model.graph
    keep, moved = [], 0
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                     None) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        size = int(np.prod(value.dims)) if value is not None and len(value.dims) else 0
        if value is None or not every and (value.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
                                           or size < CONSTANT_WEIGHT_ELEMENTS):
            keep.append(node)
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved


def check_exclude(model_path: Path, wanted: Sequence[str]) -> None:
    """Each `--exclude` / [quantize] exclude entry is a node name or an op type of the user's model (before any work:
    a typo costs one line, not a scored float model); one line naming the model and the entry otherwise."""
    from compress.onnx.skeleton import graph_of

    if not wanted:
        return
    nodes = graph_of(model_path).graph.node
    for entry in wanted:
        if not any(entry in (n.name, n.op_type) for n in nodes):
            ops = sorted({n.op_type for n in nodes})
            raise CompressError(f"{model_path}: [quantize] exclude (--exclude): {entry!r} is neither a node name nor "
                                f"an op type of this model (its op types: {', '.join(ops)})")


def excluded_nodes(model_path: Path, wanted: Sequence[str], source: Path | None = None) -> list[str]:
    """Node names for `--exclude` / [quantize] exclude (checked on the user's model by check_exclude) in the
    pre-processed model at `model_path`: each entry a node name (also after the pre-processing fused it with its
    neighbours) or an op type: every node of it in the user's model `source` (a MatMul the pre-processing fused
    with its Add into a Gemm is still one) and in the pre-processed one; a node folded away has nothing to keep."""
    from compress.onnx.skeleton import graph_of

    if not wanted:
        return []
    nodes = graph_of(model_path).graph.node
    given = graph_of(source).graph.node if source is not None else []
    names: list[str] = []
    for entry in wanted:  # ORT's pre-processing names a fused node after its first: 'fc2/MatMulAddFusion'
        sources = {entry} | {n.name for n in given if n.op_type == entry and n.name}
        found = [n.name for n in nodes if n.name and (n.op_type == entry
                 or any(n.name == s or n.name.startswith(f"{s}/") for s in sources))]
        names += [n for n in found if n not in names]
    return names
