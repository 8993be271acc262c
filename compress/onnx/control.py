"""Inputs bound to a value (`--fix-input NAME=VALUE`), and the control flow they decide resolved.

Silero VAD's ONNX file is five nodes around an If on its sample-rate input: every Conv and its LSTM sit in the two
branches, where ONNX Runtime's quantizer does not go and QNN cannot place them. Bound to the rate a deployment uses
(sr=16000), the condition is a constant and the branch taken can be inlined; the conditions left inside it read
shapes (squeeze an axis when it is 1), which fold once the dimensions are fixed.

Two folders do it between them: onnxscript's constant folding (the Ifs whose condition is a constant, nested ones
included, and the shape arithmetic it can infer) and ONNX Runtime's basic optimisations (shapes onnx's inference
leaves open, such as a Pad's computed amounts). ORT's own If inlining fails on a branch whose nested Ifs read outer
names, so ORT only runs once onnxscript has inlined those.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    import numpy as np
    import onnx

CONTROL_FLOW = ("If", "Loop", "Scan")


def shown(values: "list[float]") -> str:
    """A --fix-input value as the flag writes it: numbers separated by commas."""
    return ",".join(f"{v:g}" for v in values)


def parse_fixed_inputs(items: "tuple[str, ...] | list[str]") -> dict[str, list[float]]:
    """`--fix-input` values: NAME=VALUE, VALUE a number or numbers separated by commas (the input's own shape)."""
    bound: dict[str, list[float]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            values = [float(v) for v in text.split(",")] if text.strip() else []
        except ValueError:
            values = []
        if not sep or not name or not values:
            raise CompressError(f"--fix-input: expected NAME=VALUE (an input bound to a number, e.g. sr=16000, or "
                                f"to numbers separated by commas), got {item!r}")
        if name in bound:
            raise CompressError(f"--fix-input {name}: given twice ({shown(bound[name])} and {text}); bind each "
                                "input once")
        bound[name] = values
    return bound


def bind_inputs(model: "onnx.ModelProto", bound: dict[str, list[float]], origin: str) -> None:
    """Make each bound input an initializer holding its value (in place): the model no longer takes it. The value
    takes the input's element type and declared shape (a scalar for a shape of [], or with none declared, one
    value; a list for a free 1-D one); one line when they disagree or the type cannot hold the value. Before IR
    version 4 an initializer must also be a graph input: there the input stays, holding the value as its default,
    and compress feeds it no more (compress.onnx.graph.graph_inputs)."""
    from compress.onnx.graph import graph_inputs

    inputs = {v.name: v for v in graph_inputs(model.graph)}
    for name, values in bound.items():
        value = inputs.get(name)
        if value is None:
            raise CompressError(f"--fix-input {name}: {origin} has no input {name!r} (inputs: {', '.join(inputs)})")
        array = _bound_value(value, values, origin)
        if model.ir_version >= 4:
            model.graph.input.remove(value)
        from onnx import numpy_helper

        model.graph.initializer.append(numpy_helper.from_array(array, name))


def _bound_value(value: "onnx.ValueInfoProto", values: list[float], origin: str) -> "np.ndarray":
    """The input's value as an array of its type and shape; CompressError naming the flag when it cannot be."""
    import numpy as np
    from onnx import helper

    name = value.name
    if not value.type.HasField("tensor_type"):
        raise CompressError(f"--fix-input {name}: input {name!r} of {origin} is not a tensor "
                            f"({value.type.WhichOneof('value')}); only numeric tensors can be bound")
    tensor = value.type.tensor_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except (KeyError, ValueError):
        dtype = np.dtype(object)
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise CompressError(f"--fix-input {name}: input {name!r} of {origin} holds {dtype.name} values; only "
                            "numeric and boolean inputs can be bound")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    if not tensor.HasField("shape"):
        shape: tuple[int, ...] | None = () if len(values) == 1 else (len(values),)
    else:
        shape = tuple(dims) if all(d > 0 for d in dims) else (len(values),) if len(dims) == 1 else None
    if shape is None or int(np.prod(shape, dtype=np.int64)) != len(values):
        raise CompressError(f"--fix-input {name}: input {name!r} of {origin} has shape "
                            f"{[d if d > 0 else '?' for d in dims]}, so it takes "
                            f"{int(np.prod(dims)) if all(d > 0 for d in dims) else 'a fixed number of'} "
                            f"value(s); got {len(values)}")
    array = np.asarray(values, dtype=np.float64).reshape(shape)
    if dtype == np.bool_:
        ok = bool(np.isin(array, (0, 1)).all())
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        ok = bool(np.all(array == np.round(array)) and np.all((array >= info.min) & (array <= info.max)))
    else:
        ok = bool(np.all(np.isfinite(array)) and np.all(np.abs(array) <= np.finfo(dtype).max))
    if not ok:
        raise CompressError(f"--fix-input {name}: input {name!r} of {origin} is {dtype.name}, which cannot hold "
                            f"{shown(values)}" + ("; use 0 or 1" if dtype == np.bool_ else ""))
    return array.astype(dtype)


def count_control_flow(graph: "onnx.GraphProto") -> int:
    """If, Loop and Scan nodes in the graph, those inside their bodies too."""
    return sum((n.op_type in CONTROL_FLOW) + sum(count_control_flow(a.g) for a in n.attribute if a.HasField("g"))
               + sum(count_control_flow(g) for a in n.attribute for g in a.graphs) for n in graph.node)


def resolve(model: "onnx.ModelProto", path: Path, work: Path) -> tuple[int, int]:
    """Inline every If of `model` (saved at `path`, rewritten there) whose condition is a constant or a shape the
    fixed dimensions decide. Returns the count of control-flow nodes (all depths) before and after."""
    import onnx

    before = count_control_flow(model.graph)
    if not before:
        return before, before
    for _ in range(4):
        model = _fold(model, path)
        onnx.save(model, str(path))
        folded = _ort_basic(model, path, Path(work) / f"{path.stem}.basic.onnx") if count_control_flow(
            model.graph) else None
        if folded is None:
            break
        model = folded  # ORT inlined what onnxscript could not: fold again
    return before, count_control_flow(model.graph)


def _fold(model: "onnx.ModelProto", path: Path) -> "onnx.ModelProto":
    try:
        import onnxscript.optimizer as folding
    except ImportError:
        raise CompressError(f"{path.name}: resolving its If nodes needs onnxscript (pip install onnxscript)") from None
    folding.fold_constants(model)  # in place, a ModelProto in and out
    folding.remove_unused_nodes(model)
    return model


def _ort_basic(model: "onnx.ModelProto", path: Path, scratch: Path) -> "onnx.ModelProto | None":
    """ORT's basic optimisations (constant folding with the shapes it infers, which inlines If nodes whose condition
    folds) of `model`, saved at `path`, written back over `path` and returned, only where that resolves control flow
    and is a model any target can take: not for a float16 model (the CPU provider's session writes its float32
    casts into it), not when ORT cannot (its inliner on nested outer-scope names), and not when folding grows the
    file past half again (a ConstantOfShape materialised). None when it is not taken."""
    import onnx
    import onnxruntime as ort

    if _has_float16(model):
        return None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(scratch)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - ORT's own error types; the model stays as onnxscript left it
        scratch.unlink(missing_ok=True)
        return None
    folded = onnx.load(str(scratch))
    if (count_control_flow(folded.graph) < count_control_flow(model.graph)
            and scratch.stat().st_size <= 1.5 * path.stat().st_size + (1 << 20)):
        scratch.replace(path)
        return folded
    scratch.unlink(missing_ok=True)
    return None


def _has_float16(model: "onnx.ModelProto") -> bool:
    from onnx import TensorProto

    types = [i.data_type for i in model.graph.initializer]
    types += [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.value_info]]
    return TensorProto.FLOAT16 in types or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)
        for n in model.graph.node)


def condition_inputs(graph: "onnx.GraphProto") -> tuple[list[str], bool]:
    """The graph inputs whose values the main graph's If conditions read, and whether some condition reads a
    shape only (then fixing dimensions decides it): what `--fix-input` and `--fix-dim` would resolve."""
    producers = {out: node for node in graph.node for out in node.output}
    names = {v.name for v in graph.input} - {i.name for i in graph.initializer}
    read: list[str] = []
    shapes = False
    for node in graph.node:
        if node.op_type != "If":
            continue
        stack, seen = [node.input[0]], set()
        while stack:
            name = stack.pop()
            if name in seen or not name:
                continue
            seen.add(name)
            if name in names:
                read += [name] if name not in read else []
            producer = producers.get(name)
            if producer is None:
                continue
            if producer.op_type in ("Shape", "Size"):
                shapes = True
                continue
            stack.extend(producer.input)
    return read, shapes


def resolve_hint(graph: "onnx.GraphProto") -> str:
    """What resolves the If nodes: binding a setting-like input their condition reads (a scalar or up to four values
    in a row, Silero VAD's sample rate), fixing the dimensions a shape condition reads, else a re-export."""
    import numpy as np

    from compress.onnx.graph import graph_inputs

    read, shapes = condition_inputs(graph)
    sizes = {v.name: [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
             for v in graph_inputs(graph)}
    settings = [n for n in read if all(sizes.get(n, [0])) and len(sizes[n]) <= 1 and int(np.prod(sizes[n])) <= 4]
    if settings:
        flags = " ".join(f"--fix-input {n}=VALUE" for n in settings)
        return (f"the If condition reads input{'s' if len(settings) > 1 else ''} {', '.join(map(repr, settings))}: "
                f"bind {'them' if len(settings) > 1 else 'it'} to the value you deploy with, {flags}, and the "
                "branch taken is inlined")
    if shapes and not read:
        return "the If condition reads shapes: fix the model's dimensions with --fix-dim and it is inlined"
    return "export the model without control flow: a fixed-size path, or the If resolved for your input"


def bound_mismatches(items: "tuple[str, ...]", files: dict[str, "Path | None"]) -> list[str]:
    """A warning line for each data file ({option: .npz}) that holds an array for an input `items` (--fix-input
    values) binds, with other values: the data was made for another setting (sr=8000 recorded, 16000 bound)."""
    import numpy as np

    from compress.bench.inputs import read_npz

    if not items:  # nothing bound: no file is read for it (a gate's images are hundreds of MB)
        return []
    bound, lines = parse_fixed_inputs(items), []
    for option, path in files.items():
        if path is None:
            continue
        arrays = read_npz(path, expects=f"{option} expects an .npz")
        for name, values in bound.items():
            held = arrays.get(name)
            if held is not None and held.size and not np.all(np.isin(np.unique(held), np.asarray(values))):
                held_values = ", ".join(f"{v:g}" for v in np.unique(held)[:4])
                lines.append(f"--fix-input {name}={shown(values)}: the {option} data holds {name} = {held_values}; "
                             f"the model is bound to {shown(values)}, so those inputs were made for another setting")
    return lines


def specialised_summary(bound: dict[str, list[float]], counts: tuple[int, int]) -> dict[str, Any]:
    """What the summary records of a bound model: the inputs and values, the control flow before and after."""
    shown = {k: [int(x) if float(x).is_integer() else x for x in v] for k, v in bound.items()}
    return {"fixed_inputs": {k: v[0] if len(v) == 1 else v for k, v in shown.items()},
            "control_flow": {"before": counts[0], "after": counts[1]}}
