"""ONNX operators as torch functions, for running a (QDQ) ONNX graph in torch with gradients (compress.qat.graph).

Each entry takes the node's inputs (torch tensors, None for an omitted optional input) and its attributes (a
dict) and returns a tensor or a tuple of them. Integer tensors (shapes, indices) stay int64 torch tensors on the
host. What ORT's pre-processing leaves in the graphs of compress's families is covered: convolutions and pooling,
Gemm/MatMul, element-wise maths and activations, normalisations, shape plumbing, Resize (nearest, linear).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

Op = Callable[[list[Any], dict[str, Any]], Any]

ONNX_DTYPES: dict[int, torch.dtype] = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16,
                                       6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16,
                                       11: torch.float64, 16: torch.bfloat16}


def attrs_of(node: Any) -> dict[str, Any]:
    """The node's attributes; tensors as numpy arrays."""
    from onnx import TensorProto, helper, numpy_helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: numpy_helper.to_array(v) if isinstance(v, TensorProto) else v for k, v in values.items()}


def constant_value(node: Any) -> Any:
    """A Constant node's value as a numpy array."""
    from onnx import helper, numpy_helper

    attr = node.attribute[0]
    value = helper.get_attribute_value(attr)
    if attr.name == "value":
        return numpy_helper.to_array(value)
    return np.array(value, dtype=np.float32 if attr.name.startswith("value_float") else
                    np.int64 if attr.name.startswith("value_int") else None)


def broadcast_to_axis(a: np.ndarray, axis: int | None, rank: int) -> np.ndarray:
    """A per-channel array shaped to broadcast along `axis` of a rank-`rank` tensor (a scalar when per tensor)."""
    a = a.astype(np.float64)
    if axis is None or a.size == 1:
        return a.reshape(())
    shape = [1] * rank
    shape[axis % rank] = -1
    return a.reshape(shape)


def _ints(t: Any) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _pads(x: torch.Tensor, pads: list[int], value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """ONNX pads (all begins, then all ends): symmetric ones for the torch op, the rest applied with F.pad."""
    n = len(pads) // 2
    begin, end = pads[:n], pads[n:]
    if begin == end:
        return x, begin
    flat: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        flat += [b, e]
    return F.pad(x, flat, value=value), [0] * n


def pad(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    """ONNX Pad (pads, constant_value and axes as inputs from opset 11; the attribute form before): constant,
    reflect, edge and wrap modes; negative pads crop."""
    x = i[0]
    pads = _ints(i[1]) if len(i) > 1 and i[1] is not None else list(a.get("pads", []))
    value = float(i[2].item()) if len(i) > 2 and i[2] is not None and i[2].numel() else float(a.get("value", 0.0))
    axes = [_axis(v, x.dim()) for v in _ints(i[3])] if len(i) > 3 and i[3] is not None else list(range(x.dim()))
    begin, end = dict(zip(axes, pads[:len(axes)])), dict(zip(axes, pads[len(axes):]))
    flat: list[int] = []
    for d in range(x.dim() - 1, -1, -1):  # torch: the last axis first
        flat += [begin.get(d, 0), end.get(d, 0)]
    mode = a.get("mode", b"constant")
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[
        mode.decode() if isinstance(mode, bytes) else mode]
    if mode == "constant":
        return F.pad(x, flat, value=value)
    while len(flat) > 2 and flat[-2:] == [0, 0]:  # torch pads the last 1-3 axes in these modes
        flat = flat[:-2]
    return F.pad(x, flat, mode=mode)


def conv(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, w, b = i[0], i[1], i[2] if len(i) > 2 else None
    dims = w.dim() - 2
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        raise NotImplementedError("Conv auto_pad SAME_*")
    x, pad = _pads(x, list(a.get("pads", [0] * 2 * dims)))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return fn(x, w, b, stride=a.get("strides", 1), padding=pad, dilation=a.get("dilations", 1),
              groups=a.get("group", 1))


def _pool(kind: str) -> Op:
    def run(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
        x = i[0]
        k = list(a["kernel_shape"])
        dims = len(k)
        x, pad = _pads(x, list(a.get("pads", [0] * 2 * dims)), value=-math.inf if kind == "max" else 0.0)
        stride = a.get("strides", [1] * dims)
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
            return fn(x, k, stride, pad, dilation=a.get("dilations", 1), ceil_mode=ceil)
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
        return fn(x, k, stride, pad, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))
    return run


def gemm(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, w = i[0], i[1]
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x @ w)
    if len(i) > 2 and i[2] is not None:
        y = y + a.get("beta", 1.0) * i[2]
    return y


def _reduce(fn: Callable[..., torch.Tensor]) -> Op:
    def run(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
        x = i[0]
        axes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("axes")
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=[_axis(d, x.dim()) for d in axes], keepdim=keep)
    return run


def _reduce_max(x: torch.Tensor, dim: list[int], keepdim: bool) -> torch.Tensor:
    return torch.amax(x, dim=dim, keepdim=keepdim)


def reshape(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, shape = i[0], _ints(i[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[d] if s == 0 else s for d, s in enumerate(shape)]
    return x.reshape(shape)


def flatten(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = i[0]
    axis = _axis(a.get("axis", 1), x.dim())
    return x.reshape(int(math.prod(x.shape[:axis])), -1)


def gather(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, idx = i[0], i[1].long()
    axis = _axis(a.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


def slice_(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = i[0]
    starts, ends = _ints(i[1]), _ints(i[2])
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
    steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise NotImplementedError("Slice with a negative step")
        n = x.shape[_axis(ax, x.dim())]
        index[_axis(ax, x.dim())] = slice(max(-n, min(s, n)), max(-n, min(e, n)), st)
    return x[tuple(index)]


def unsqueeze(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = i[0]
    axes = _ints(i[1]) if len(i) > 1 and i[1] is not None else list(a["axes"])
    rank = x.dim() + len(axes)
    for ax in sorted(_axis(d, rank) for d in axes):
        x = x.unsqueeze(ax)
    return x


def squeeze(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = i[0]
    axes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("axes")
    if axes is None:
        return x.squeeze()
    for ax in sorted((_axis(d, x.dim()) for d in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def split(i: list[Any], a: dict[str, Any], outputs: int) -> tuple[torch.Tensor, ...]:
    x = i[0]
    axis = _axis(a.get("axis", 0), x.dim())
    sizes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("split")
    if sizes is None:
        sizes = [x.shape[axis] // outputs] * outputs
    return tuple(torch.split(x, list(sizes), dim=axis))


def shape(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    dims = list(i[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64)


def div(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, y = i
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def clip(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    lo = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    hi = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    return torch.clamp(i[0], min=lo, max=hi)


def layer_norm(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = i[0]
    axis = _axis(a.get("axis", -1), x.dim())
    shape_ = x.shape[axis:]
    bias = i[2] if len(i) > 2 else None
    return F.layer_norm(x, shape_, i[1].expand(shape_), None if bias is None else bias.expand(shape_),
                        a.get("epsilon", 1e-5))


def batch_norm(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, scale, bias, mean, var = i[:5]
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))


def resize(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = i[0]
    sizes = i[3] if len(i) > 3 and i[3] is not None and i[3].numel() else None
    scales = i[2] if len(i) > 2 and i[2] is not None and i[2].numel() else None
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    transform = a.get("coordinate_transformation_mode", b"half_pixel")
    transform = transform.decode() if isinstance(transform, bytes) else transform
    size = _ints(sizes)[2:] if sizes is not None else None
    factor = [float(s) for s in scales.tolist()[2:]] if scales is not None and size is None else None
    if mode == "nearest":
        if transform != "asymmetric":
            raise NotImplementedError(f"Resize nearest with {transform} coordinates")
        return F.interpolate(x, size=size, scale_factor=factor, mode="nearest")
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        kind = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
        return F.interpolate(x, size=size, scale_factor=factor, mode=kind, align_corners=transform == "align_corners")
    raise NotImplementedError(f"Resize mode {mode} with {transform} coordinates")


def constant_of_shape(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    value = a.get("value")
    fill = torch.from_numpy(value.copy()).reshape(()) if value is not None else torch.tensor(0.0)
    return torch.full(_ints(i[0]), fill.item(), dtype=fill.dtype)


def expand(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = i[0]
    return torch.broadcast_to(x, torch.broadcast_shapes(x.shape, tuple(_ints(i[1]))))


def cast(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    return i[0].to(ONNX_DTYPES[a["to"]])


def gelu(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
    approx = a.get("approximate", b"none")
    return F.gelu(i[0], approximate=approx.decode() if isinstance(approx, bytes) else approx)


def _variadic(fn: Callable[[Any, Any], Any]) -> Op:
    def run(i: list[Any], a: dict[str, Any]) -> torch.Tensor:
        out = i[0]
        for t in i[1:]:
            out = fn(out, t)
        return out
    return run


def _unary(fn: Callable[[Any], Any]) -> Op:
    return lambda i, a: fn(i[0])


def _binary(fn: Callable[[Any, Any], Any]) -> Op:
    return lambda i, a: fn(i[0], i[1])


OPS: dict[str, Op] = {
    "Conv": conv, "MaxPool": _pool("max"), "AveragePool": _pool("avg"), "Gemm": gemm,
    "MatMul": _binary(torch.matmul), "Add": _binary(torch.add), "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul), "Div": div, "Pow": _binary(torch.pow), "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt), "Greater": _binary(torch.gt), "LessOrEqual": _binary(torch.le),
    "GreaterOrEqual": _binary(torch.ge), "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or),
    "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum), "Sum": _variadic(torch.add),
    "Where": lambda i, a: torch.where(i[0], i[1], i[2]), "Not": _unary(torch.logical_not),
    "IsNaN": _unary(torch.isnan), "IsInf": _unary(torch.isinf),
    "Relu": _unary(torch.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf), "Sqrt": _unary(torch.sqrt), "Exp": _unary(torch.exp), "Log": _unary(torch.log),
    "Neg": _unary(torch.neg), "Abs": _unary(torch.abs), "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil), "Identity": _unary(lambda x: x),
    "Dropout": _unary(lambda x: x), "HardSwish": _unary(F.hardswish), "Gelu": gelu,
    "LeakyRelu": lambda i, a: F.leaky_relu(i[0], a.get("alpha", 0.01)),
    "HardSigmoid": lambda i, a: torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1),
    "Clip": clip, "Softmax": lambda i, a: torch.softmax(i[0], a.get("axis", -1)),
    "LogSoftmax": lambda i, a: torch.log_softmax(i[0], a.get("axis", -1)),
    "LayerNormalization": layer_norm, "BatchNormalization": batch_norm,
    "GlobalAveragePool": lambda i, a: i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda i, a: torch.amax(i[0], dim=tuple(range(2, i[0].dim())), keepdim=True),
    "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum), "ReduceMax": _reduce(_reduce_max),
    "Reshape": reshape, "Flatten": flatten, "Transpose": lambda i, a: i[0].permute(
        *(a.get("perm") or range(i[0].dim() - 1, -1, -1))),
    "Concat": lambda i, a: torch.cat([t for t in i if t is not None], dim=a.get("axis", 0)),
    "Gather": gather, "Slice": slice_, "Unsqueeze": unsqueeze, "Squeeze": squeeze, "Shape": shape,
    "Cast": cast, "ConstantOfShape": constant_of_shape, "Expand": expand, "Resize": resize, "Pad": pad,
    "Range": lambda i, a: torch.arange(i[0].item(), i[1].item(), i[2].item(), dtype=i[0].dtype),
    "Tile": lambda i, a: i[0].repeat(*_ints(i[1])),
    "Einsum": lambda i, a: torch.einsum(a["equation"].decode() if isinstance(a["equation"], bytes) else
                                        a["equation"], *i),
}
"""Op type -> torch function. Split (several outputs) is called with the output count; QuantizeLinear,
DequantizeLinear and Constant are handled by the graph itself."""

HANDLED = frozenset(OPS) | {"QuantizeLinear", "DequantizeLinear", "Constant", "Split"}
"""Every op type a QDQ graph may hold for quantization-aware training."""


def without_counterpart(graph: Any, inputs: Any) -> list[tuple[str, str]]:
    """(name, op type) of each node of `graph` that QAT could not run in torch and that computes on the data (reads,
    through any path, one of the graph inputs named in `inputs`): a node on weights and constants alone is folded
    by ORT's pre-processing before the QDQ graph is made, so its op never reaches QAT."""
    live = set(inputs)
    found = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(i in live for i in node.input):
            live.update(node.output)
            if node.op_type not in HANDLED:
                found.append((node.name or node.output[0], node.op_type))
    return found


def no_counterpart(origin: str, nodes: list[tuple[str, str]]) -> str:
    """The one line for a graph with ops QAT cannot run in torch."""
    ops = ", ".join(sorted({op for _, op in nodes}))
    return (f"{origin}: quantization-aware training runs the QDQ graph in torch, which has no counterpart for {ops} "
            f"(nodes {', '.join(name for name, _ in nodes)[:200]}); use mode = 'static' for this model")
