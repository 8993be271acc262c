"""Fixed shapes for edge providers (NNAPI, CoreML and QNN want them): the batch dimension set to a number, or any
dimension by name or by input and axis (`--fix-dim`)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.errors import CompressError
from compress.onnx.graph import check_batch_axes, graph_inputs, load_model

if TYPE_CHECKING:
    import onnx


def fix_batch(onnx_path: Path, out_path: Path, batch: int = 1,
              axes: "dict[str, int | None] | None" = None) -> Path:
    """Write a copy of the model with the batch dimension of every input fixed to `batch`: its first dimension, or
    the axis `axes` names for it (an LSTM state [layers, N, hidden]: 1; None: the input has no batch axis).

    Uses `onnxruntime.tools.onnx_model_utils` (the helpers behind `make_dynamic_shape_fixed`): a symbolic batch
    dim is replaced throughout the graph, an unnamed one on the input; output shapes are re-inferred. Other
    dynamic dimensions are left alone (readiness still reports them).
    """
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed, make_input_shape_fixed

    if batch < 1:
        raise CompressError(f"fixed_batch: expected an integer >= 1, got {batch}; use 1 for on-device inference")
    model = load_model(onnx_path)
    names = {v.name for v in graph_inputs(model.graph)}  # axes may name inputs bound away (--fix-input)
    check_batch_axes(model.graph, {k: v for k, v in (axes or {}).items() if k in names}, Path(onnx_path).name)
    for value in graph_inputs(model.graph):
        axis = (axes or {}).get(value.name, 0)
        if not value.type.HasField("tensor_type") or axis is None:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) <= axis:
            continue  # a scalar, or an input with no declared shape: no batch to fix
        first = dims[axis]
        if first.HasField("dim_value") and first.dim_value > 0:
            if first.dim_value != batch:
                raise CompressError(
                    f"{onnx_path}: input '{value.name}' already has a fixed batch of {first.dim_value}"
                    f"{f' on axis {axis}' if axis else ''}, not {batch}; re-export with a dynamic batch, use "
                    f"fixed_batch = {first.dim_value} (--fixed-batch {first.dim_value})"
                    f"{'' if axis else ', or name its batch axis (--batch-axis)'}")
            continue
        if first.HasField("dim_param") and first.dim_param:
            make_dim_param_fixed(model.graph, first.dim_param, batch)
        else:
            shape = [batch if i == axis else d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                     for i, d in enumerate(dims)]
            if any(d < 1 for d in shape):  # other unnamed dims: only the batch dim can be set on the input
                first.Clear()
                first.dim_value = batch
            else:
                make_input_shape_fixed(model.graph, value.name, shape)
    fix_output_shapes(model)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path


def parse_fix_dims(items: "tuple[str, ...] | list[str]") -> list[tuple[str, int | None, int]]:
    """`--fix-dim` values: NAME=VALUE (a named symbolic dimension, everywhere it occurs) or INPUT:AXIS=VALUE (one
    axis of one input, for unnamed dimensions). Returns [(name or input, axis or None, value)]."""
    fixes = []
    for item in items:
        target, sep, value = item.rpartition("=")
        try:
            size = int(value)
        except ValueError:
            size = 0
        name, colon, axis = target.rpartition(":") if ":" in target else (target, "", "")
        if not sep or not (name or target) or size < 1 or (colon and not axis.isdigit()) or target in ("?", "*"):
            raise CompressError(f"--fix-dim: expected NAME=VALUE (a named dimension, e.g. height=640) or "
                                f"INPUT:AXIS=VALUE (one axis of one input, e.g. images:2=640), got {item!r}")
        fixes.append((name, int(axis), size) if colon else (target, None, size))
    return fixes


def fix_dims(onnx_path: Path, out_path: Path, fixes: list[tuple[str, int | None, int]]) -> Path:
    """A copy of the model with dimensions fixed (ORT's `make_dim_param_fixed` for a named one, the input's shape
    for an axis of one input), output shapes re-inferred. A name or axis the model does not have is one line."""
    return specialise(onnx_path, out_path, fixes)[0]


def specialised(model: Path, out: Path, fix: "tuple[str, ...]", fix_inputs: "tuple[str, ...]") -> tuple[
        Path, "dict[str, list[float]]", tuple[int, int]]:
    """specialise() from the command line's --fix-dim and --fix-input values: the copy, the bound values and the
    control-flow counts before and after."""
    from compress.onnx.control import parse_fixed_inputs

    if Path(model).suffix == ".ort":
        raise CompressError(f"{model}: an ORT-format model cannot take --fix-dim or --fix-input: compress "
                            "rewrites ONNX graphs only; pass the .onnx it was converted from")
    bound = parse_fixed_inputs(fix_inputs)
    path, counts = specialise(model, out, parse_fix_dims(fix), bound)
    return path, bound, counts


def specialise(onnx_path: Path, out_path: Path, fixes: list[tuple[str, int | None, int]],
               bound: "dict[str, list[float]] | None" = None) -> tuple[Path, tuple[int, int]]:
    """A copy of the model with inputs bound to values (`--fix-input`, compress.onnx.control) and dimensions fixed
    (`--fix-dim`); when the model has control flow, the If nodes those decide are then inlined. Returns the path
    and the counts of control-flow nodes (If, Loop, Scan at every depth) before and after."""
    import onnx

    from compress.onnx.control import bind_inputs, resolve

    name = Path(onnx_path).name
    model = load_model(onnx_path)
    if bound:
        bind_inputs(model, bound, name)
    _fix(model, fixes, name)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    counts = (0, 0)
    if (bound or fixes) and any(n.op_type == "If" for n in model.graph.node):  # a Loop alone is left as it is
        counts = resolve(model, out_path, out_path.parent)
    _check_loads(out_path, fixes, name, bound or {})
    return out_path, counts


def _fix(model: "onnx.ModelProto", fixes: list[tuple[str, int | None, int]], name: str) -> None:
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    inputs = {v.name: v for v in graph_inputs(model.graph)}
    params = {d.dim_param for v in inputs.values() for d in v.type.tensor_type.shape.dim if d.dim_param}
    for target, axis, size in fixes:
        if axis is None:
            if target not in params:
                raise CompressError(f"--fix-dim {target}={size}: {name} has no dimension named {target!r} (named: "
                                    f"{', '.join(sorted(params)) or 'none'}; unnamed ones: INPUT:AXIS=VALUE)")
            make_dim_param_fixed(model.graph, target, size)
            continue
        value = inputs.get(target)
        dims = value.type.tensor_type.shape.dim if value is not None else []
        if value is None or axis >= len(dims):
            raise CompressError(f"--fix-dim {target}:{axis}={size}: {name} has no input {target!r} with an axis "
                                f"{axis} (inputs: {', '.join(inputs)})")
        dims[axis].Clear()
        dims[axis].dim_value = size
    if fixes:
        fix_output_shapes(model)


def _check_loads(path: Path, fixes: list[tuple[str, int | None, int]], name: str,
                 bound: "dict[str, list[float]]") -> None:
    """ONNX Runtime infers every branch of an If with the fixed sizes; a branch the model never takes at that size
    may then fail (Silero VAD's 8 kHz path squeezes an axis of 2 once the chunk is 512, unless sr is bound and that
    branch gone). Say which flags did it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # constant folding infers it
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        from compress.errors import first_line

        from compress.onnx.control import shown

        flags = " ".join([f"--fix-input {k}={shown(v)}" for k, v in bound.items()]
                         + [f"--fix-dim {n}:{a}={v}" if a is not None else f"--fix-dim {n}={v}" for n, a, v in fixes])
        raise CompressError(f"{flags}: onnxruntime cannot load {name} with these values, so the graph needs one of "
                            "them free (fix fewer dimensions: the batch alone is often enough): "
                            f"{first_line(exc)}") from None


def folded(onnx_path: Path, out_path: Path) -> Path:
    """A copy of a fixed-shape model with ONNX Runtime's basic optimisations applied (constant folding: the
    Shape -> Gather -> Slice chains of an exported attention become constants once every dimension is fixed) and
    every intermediate shape inferred into value_info: QNN refuses a node whose shapes it cannot get."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out_path)
    options.log_severity_level = 3
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out_path)), data_prop=True)
    onnx.save(model, str(out_path))
    return Path(out_path)


def shapes_static(onnx_path: Path) -> bool:
    """Whether onnx's shape inference gives every intermediate and output a fixed shape without propagating values
    (as ONNX Runtime's own inference, which QNN reads, does not: a Shape -> Expand chain leaves its outputs unknown
    there until it is folded)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path), load_external_data=False))
    values = [*model.graph.value_info, *model.graph.output]
    return all(v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in
                                                            v.type.tensor_type.shape.dim)
               for v in values if v.type.HasField("tensor_type"))

