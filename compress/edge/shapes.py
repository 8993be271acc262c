"""Fixed shapes for edge providers (NNAPI, CoreML and QNN want them): the batch dimension set to a number."""
from __future__ import annotations

from pathlib import Path

from compress.errors import CompressError
from compress.onnx.graph import graph_inputs, load_model


def fix_batch(onnx_path: Path, out_path: Path, batch: int = 1) -> Path:
    """Write a copy of the model with the first (batch) dimension of every input fixed to `batch`.

    Uses `onnxruntime.tools.onnx_model_utils` (the helpers behind `make_dynamic_shape_fixed`): a symbolic batch
    dim is replaced throughout the graph, an unnamed one on the input; output shapes are re-inferred. Other
    dynamic dimensions are left alone (readiness still reports them).
    """
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed, make_input_shape_fixed

    if batch < 1:
        raise CompressError(f"fixed_batch: expected an integer >= 1, got {batch}; use 1 for on-device inference")
    model = load_model(onnx_path)
    for value in graph_inputs(model.graph):
        if not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if not dims:
            continue
        first = dims[0]
        if first.HasField("dim_value") and first.dim_value > 0:
            if first.dim_value != batch:
                raise CompressError(
                    f"{onnx_path}: input '{value.name}' already has a fixed batch of {first.dim_value}, "
                    f"not {batch}; re-export with a dynamic batch or use fixed_batch = {first.dim_value}"
                )
            continue
        if first.HasField("dim_param") and first.dim_param:
            make_dim_param_fixed(model.graph, first.dim_param, batch)
        else:
            shape = [batch] + [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims[1:]]
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
