"""Graph helpers shared by export, quantize and edge: load a model checked, find its real inputs."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.errors import CompressError, first_line, shorten_list

if TYPE_CHECKING:
    import onnx


def load_model(onnx_path: Path, *, weights: bool = True) -> "onnx.ModelProto":
    """Load and check an ONNX file; a missing, truncated or invalid file is a one-line CompressError."""
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise CompressError(f"{onnx_path}: expected an ONNX model file, got nothing there; check the path")
    try:
        model = onnx.load(str(onnx_path), load_external_data=weights)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...: all mean "not a usable model"
        raise CompressError(f"{onnx_path}: expected a valid ONNX model, got {type(exc).__name__}: "
                            f"{first_line(exc)}; re-export the model") from None
    return model


def graph_inputs(graph: "onnx.GraphProto") -> list["onnx.ValueInfoProto"]:
    """The inputs a caller feeds: graph inputs that are not initializers (old IR versions list weights as inputs)."""
    initializers = {init.name for init in graph.initializer}
    return [value for value in graph.input if value.name not in initializers]


def single_input(onnx_path: Path, *, what: str) -> tuple[str, int, tuple[int | None, ...]]:
    """(name, element type, per-item shape with None for symbolic dims) of a model's one input.

    `what` names the caller for the error ('quantize'), which says what it needs when the model has several inputs.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inputs = graph_inputs(graph)
    if len(inputs) != 1:
        raise CompressError(f"{onnx_path}: {what} expects one input (batch first), got {len(inputs)}: "
                            f"{shorten_list([i.name for i in inputs], 'inputs')}")
    tensor = inputs[0].type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim[1:])
    return inputs[0].name, tensor.elem_type, dims


def fixed_batch(onnx_path: Path) -> int | None:
    """The first input's batch dimension when the graph fixes it (model-zoo and edge copies), else None."""
    import onnx

    inputs = graph_inputs(onnx.load(str(onnx_path), load_external_data=False).graph)
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


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
