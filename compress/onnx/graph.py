"""Graph helpers shared by export, quantize and edge: load a model checked, find its real inputs."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError, first_line, shorten_list
from compress.onnx.skeleton import external_bytes_of

if TYPE_CHECKING:
    import onnx


def load_model(onnx_path: Path, *, weights: bool = True) -> "onnx.ModelProto":
    """Load and check an ONNX file; a missing, truncated or invalid file is a one-line CompressError."""
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise CompressError(f"{onnx_path}: expected an ONNX model file, got nothing there; check the path")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)  # parsed once; external weights read below
        outside = external_bytes_of(model, onnx_path.parent)
        if weights and outside:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, str(onnx_path.parent))
        # the checker takes a path for external data: an in-memory model over 2 GB cannot be serialized to check
        onnx.checker.check_model(str(onnx_path) if outside else model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...: all mean "not a usable model"
        raise CompressError(f"{onnx_path}: expected a valid ONNX model, got {type(exc).__name__}: "
                            f"{first_line(exc)}; re-export the model") from None
    return model


def model_home(onnx_path: Path, *, onnx_reads_weights: bool = False) -> Path:
    """`onnx_path`, or the file it links to when it is a symlink whose external data lies beside its target and
    not beside the link: onnx reads external data beside the path it is given, while ONNX Runtime refuses data
    outside the folder of the resolved model file, so neither could read such a model through its link. A link whose
    data is linked beside it too (a Hugging Face cache snapshot) stays as given: ONNX Runtime reads it, onnx refuses
    data that is a symlink, so where onnx must read the weights (`onnx_reads_weights`) that is a CompressError with
    the way out."""
    import onnx

    from compress.onnx.skeleton import graph_of

    path = Path(onnx_path)
    if not path.is_file() or path.suffix.lower() == ".ort":
        return path
    try:
        model = graph_of(path)
    except Exception:  # noqa: BLE001 - not a model: the caller's own check says so
        return path
    places = sorted({next((e.value for e in t.external_data if e.key == "location"), "")
                     for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL})
    if path.is_symlink() and places and not all((path.parent / p).is_file() for p in places):
        target = path.resolve()
        return target if all((target.parent / p).is_file() for p in places) else path
    linked = next((p for p in places if (path.parent / p).is_symlink()), None)
    if onnx_reads_weights and linked is not None:
        raise CompressError(f"{path}: its external data {linked} is a symbolic link (a Hugging Face cache snapshot "
                            "keeps its files so), which onnx refuses to read; copy the model and its data into one "
                            f"folder (cp -L {path.name} {linked} DIR/) and pass the copy")
    return path


def graph_inputs(graph: "onnx.GraphProto") -> list["onnx.ValueInfoProto"]:
    """The inputs a caller feeds: graph inputs that are not initializers (old IR versions list weights as inputs)."""
    initializers = {init.name for init in graph.initializer}
    return [value for value in graph.input if value.name not in initializers]


def shape_mismatch(inputs: list["onnx.ValueInfoProto"], arrays: dict, axes: dict[str, int | None] | None = None) \
        -> tuple[str, tuple[int, ...], str] | None:
    """The first array in `arrays` ({input name: array}) whose rank or fixed sizes are not its graph input's, as
    (name, the array's shape, what the input takes: 'x'-joined sizes, '?' for any); None when all fit. An input's
    batch axis (`axes`, 0 by default) may hold any size; symbolic and 0 dims take any size; inputs without a shape,
    or not in `arrays`, are not checked."""
    import numpy as np

    for value in inputs:
        tensor = value.type.tensor_type
        if value.name not in arrays or not tensor.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
        shape, batch = tuple(np.shape(arrays[value.name])), (axes or {}).get(value.name, 0)
        if len(shape) != len(dims) or any(d and d != s and i != batch for i, (d, s) in enumerate(zip(dims, shape))):
            return value.name, shape, "x".join("?" if d is None or i == batch else str(d) for i, d in enumerate(dims))
    return None


def single_input(onnx_path: Path, *, what: str) -> tuple[str, int, tuple[int | None, ...]]:
    """(name, element type, per-item shape with None for symbolic dims) of a model's one input.

    `what` names the caller for the error ('quantize'), which says what it needs when the model has several inputs.
    """
    from compress.onnx.skeleton import graph_of

    graph = graph_of(onnx_path).graph
    inputs = graph_inputs(graph)
    if len(inputs) != 1:
        raise CompressError(f"{onnx_path}: {what} expects one input (batch first), got {len(inputs)}: "
                            f"{shorten_list([i.name for i in inputs], 'inputs')}")
    tensor = inputs[0].type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim[1:])
    return inputs[0].name, tensor.elem_type, dims


def fixed_batch(onnx_path: Path, axes: dict[str, int | None] | None = None) -> int | None:
    """The batch dimension when the graph fixes it (model-zoo and edge copies), else None (fixed_batch_of), on each
    input's batch axis (`axes`: what the user said, over what the graph says); from the file's one weightless parse
    (compress.onnx.skeleton)."""
    from compress.onnx.skeleton import graph_of

    return fixed_batch_of(graph_of(onnx_path).graph, axes)


def fixed_batch_of(graph: "onnx.GraphProto", given: dict[str, int | None] | None = None) -> int | None:
    """fixed_batch of a graph already loaded: the batch dimension of the first input that has one (batched_input)."""
    found = batched_input(graph, given)
    if found is None:
        return None
    dim = found[0].type.tensor_type.shape.dim[found[1]]
    return dim.dim_value if _fixed(dim) else None


def batched_input(graph: "onnx.GraphProto", given: dict[str, int | None] | None = None) \
        -> "tuple[onnx.ValueInfoProto, int] | None":
    """(the first input that has a batch axis, that axis): where a graph's batch is read (batch_axes_of, over the
    axes `given`: a recurrent state [2, N, 16] or a scale [1] listed first is not where the batch is); None when no
    input has one."""
    axes = batch_axes_of(graph, given)
    for value in graph_inputs(graph):
        axis = axes.get(value.name, 0)
        if axis is not None and len(value.type.tensor_type.shape.dim) > axis:
            return value, axis
    return None


def batch_axes_of(graph: "onnx.GraphProto", given: dict[str, int | None] | None = None) -> dict[str, int | None]:
    """{input: its batch axis, or None} where the graph says other than axis 0, over `given` (what the user said).
    Where some input's axis 0 is symbolic (the batch), an input whose axis 0 is a fixed size has its batch on the
    axis named like that batch dimension (a recurrent state [2, batch, 128]), else on its one symbolic axis, or none
    (a scale of shape [1]). A graph whose inputs all fix axis 0 (a batch-1 copy) keeps axis 0 everywhere."""
    shapes = {v.name: list(v.type.tensor_type.shape.dim) for v in graph_inputs(graph)}
    axes = dict(given or {})
    firsts = [dims[0] for dims in shapes.values() if dims and not _fixed(dims[0])]
    if not firsts:
        return axes
    names = [d.dim_param for d in firsts if d.dim_param]
    batch = max(dict.fromkeys(names), key=names.count) if names else None
    for name, dims in shapes.items():
        if name not in axes and dims and _fixed(dims[0]):
            free = [i for i, d in enumerate(dims) if not _fixed(d)]  # torch names h0's batch 'batch', x's 'batch_size'
            axes[name] = next((i for i in free if batch and dims[i].dim_param == batch), free[0] if len(free) == 1
                              else None)
    return axes


def check_batch_axes(graph: "onnx.GraphProto", axes: "dict[str, int | None]", origin: str,
                     bound: "set[str] | frozenset[str]" = frozenset()) -> None:
    """Each --batch-axis names an input of the graph (or one `bound` away by --fix-input) and an axis it has: one
    line otherwise, before anything is fixed or generated for it."""
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in graph_inputs(graph)}
    for name, axis in axes.items():
        if name not in ranks and name not in bound:
            raise CompressError(f"--batch-axis {name}: {origin} has no input {name!r} (inputs: {', '.join(ranks)})")
        if name in ranks and axis is not None and axis >= ranks[name]:
            raise CompressError(f"--batch-axis {name}:{axis}: input '{name}' of {origin} " + (
                f"has {ranks[name]} axes; name one of 0-{ranks[name] - 1}, or none" if ranks[name]
                else f"is a scalar; use --batch-axis {name}:none"))


def batch_axes_for(graph: "onnx.GraphProto", given: dict[str, int | None], origin: str,
                   bound: "set[str] | frozenset[str]" = frozenset()) -> dict[str, int | None]:
    """--batch-axis `given` checked against the graph's inputs (check_batch_axes; `bound`: inputs --fix-input took
    away), with the axes the graph shows for the others (batch_axes_of): what every command that cuts inputs into
    batches is told. Without it `compress bench --inputs` read a scale [1] listed first as the batch (items/s 64x
    too low) and `compress edge --fixed-batch` a state [2, N, 16]."""
    check_batch_axes(graph, given, origin, bound)
    return batch_axes_of(graph, {k: v for k, v in given.items() if k not in bound})


def _fixed(dim: Any) -> bool:
    return dim.HasField("dim_value") and dim.dim_value > 0


def without_initializer_inputs(model: "onnx.ModelProto") -> bool:
    """Drop graph inputs that are initializers (how IR version 3 graphs list their weights), in place, and raise
    the IR version to 4 so the initializers stay constants; True when something changed.

    ONNX Runtime treats an initializer that is also a graph input as overridable, so it cannot fold it, and its
    ORT-format converter then asks for it as a required input. Its own tools (remove_initializer_from_input.py)
    advise this same step.
    """
    initializers = {init.name for init in model.graph.initializer}
    keep = [value for value in model.graph.input if value.name not in initializers]
    if len(keep) == len(model.graph.input):
        return False
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.ir_version = max(model.ir_version, 4)
    return True


def default_opset(model: "onnx.ModelProto") -> int:
    """The model's opset of the default ONNX domain ('' or 'ai.onnx'); 1 when it names none (very old graphs)."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)


def upgraded(model: "onnx.ModelProto", minimum: int, *, origin: str, why: str) -> "onnx.ModelProto | None":
    """`model` converted to opset `minimum` (onnx.version_converter) when its default-domain opset is older, else
    None. `why` says which tool needs it; a graph the converter cannot take is a one-line CompressError."""
    from onnx import version_converter

    have = default_opset(model)
    if have >= minimum:
        return None
    try:
        converted = version_converter.convert_version(model, minimum)
    except Exception as exc:  # the converter has no adapter for some op/version pairs
        raise CompressError(f"{origin}: opset {have} is too old for {why} (needs >= {minimum}) and onnx's "
                            f"version converter could not upgrade it: {first_line(exc)}; re-export the model at "
                            f"opset {minimum} or later") from None
    converted.ir_version = max(converted.ir_version, model.ir_version)
    return converted


PROTOBUF_LIMIT = 2**31 - 1
"""One serialized ONNX protobuf (and one ORT-format flatbuffer) holds at most this many bytes."""


def external_bytes(onnx_path: Path) -> int:
    """Bytes of weights the model keeps outside its .onnx file (ONNX external data), 0 when it keeps none.

    Read from the tensors' `length` entries, or the referenced file's size where a tensor gives none; the
    weights themselves are not loaded (compress.onnx.skeleton: from the file's one parse)."""
    from compress.onnx.skeleton import outside_bytes

    return outside_bytes(onnx_path)


def model_bytes(onnx_path: Path) -> int:
    """The model's whole size on disk: the .onnx file plus its external data."""
    return Path(onnx_path).stat().st_size + external_bytes(onnx_path)


def copy_model(src: Path, dst: Path) -> Path:
    """Copy an ONNX model; one with external data gets its weights in `<dst name>.data` beside `dst`."""
    import shutil

    import onnx

    if not external_bytes(src):
        shutil.copyfile(src, dst)
        return dst
    from compress.cache import usual_mode

    model = onnx.load(str(src))
    onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{dst.name}.data")
    usual_mode(dst.with_name(f"{dst.name}.data"))
    return dst

def set_metadata(onnx_path: Path, props: dict[str, str]) -> None:
    """Add (or replace) `metadata_props` entries of an ONNX file, atomically (e.g. class_names for an app)."""
    import onnx

    from compress.cache import atomic_path

    model = onnx.load(str(onnx_path))
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    with atomic_path(Path(onnx_path)) as tmp:
        onnx.save(model, str(tmp))


TASK_KEY = "compress.task"
"""The metadata key an exported model says its task in (the export stage writes it): what its outputs mean."""


def declared_task(path: Path | str) -> str | None:
    """The task a model says it is (TASK_KEY in its metadata: a model compress exported), else None."""
    from compress.onnx.skeleton import graph_of

    try:
        props = graph_of(Path(path)).metadata_props
    except Exception:  # noqa: BLE001 - an .ort file or an unreadable one: the caller's own checks say so
        return None
    return next((p.value for p in props if p.key == TASK_KEY), None)


def readers(graph: "onnx.GraphProto") -> dict[str, list["onnx.NodeProto"]]:
    """{tensor name: the nodes that read it, in graph order} (a node reading a tensor twice is listed twice)."""
    found: dict[str, list["onnx.NodeProto"]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def reroute(graph: "onnx.GraphProto", old: str, new: str) -> None:
    """Every node that reads tensor `old` reads `new` instead (a graph output named `old` is left alone)."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
