"""A model's graph without its weights, parsed once per file: what every command reads a graph for (its inputs,
batch axes, operators, shapes) without holding the weights.

`onnx.load` without external data still reads every inline weight (twice the weights for a moment), and the
commands read the graph of one file many times: quantize four times an attempt, bench for the batch axes beside
the parse that checks its --dim names. `graph_of` parses a file once (keyed on its path and identity: a model
rewritten in place is parsed again) and keeps the graph with its weights of 1 KB and more left out.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

KEPT_TYPES = (6, 7, 8)
"""onnx.TensorProto INT32, INT64 (what shapes, axes and indices are made of: shape inference reads a Reshape's
shape) and STRING: `graph_of` keeps these whole and leaves out the weights of every other type (float, int8 ...)
of 1 KB and more."""

NOT_LOADED = "(weights not loaded)"
"""The external-data location of a weight `weightless` left out: no file holds it; the graph is for reading."""


def file_key(path: Path) -> tuple:
    """A model file's path and identity: a model rewritten in place misses a cache keyed on it."""
    stat = Path(path).stat()
    return str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns


def graph_of(path: Path) -> Any:
    """The model at `path` (an onnx ModelProto, a fresh copy each call) with its weights of 1 KB and more left out
    (`without_weights`). For reading the graph and inferring shapes (onnx reads no weight for a shape); never for
    running or saving it. The file is parsed once."""
    import onnx

    return onnx.ModelProto.FromString(_parsed(file_key(path))[0])


def outside_bytes(path: Path) -> int:
    """Bytes of the model's external data (compress.onnx.graph.external_bytes), from `graph_of`'s single parse."""
    return _parsed(file_key(path))[1]


@functools.lru_cache(maxsize=8)
def _parsed(key: tuple) -> tuple[bytes, int]:
    """(the weightless model serialized, bytes of its external data) of the file `key` names."""
    import onnx

    from compress.heap import release

    path = Path(key[0])
    model = onnx.load(str(path), load_external_data=False)
    outside = external_bytes_of(model, path.parent)
    skeleton = without_weights(model)
    del model
    release()  # the pages of the whole parse given back
    return skeleton.SerializeToString(), outside


def without_weights(model: Any) -> Any:
    """`weightless(model)` without its weights of 1 KB and more but shape-like ones (KEPT_TYPES): a graph to read
    and infer shapes on."""
    return weightless(model, lambda t: t.data_type not in KEPT_TYPES and data_bytes(t) >= 1024)


def weightless(model: Any, leave_out: Callable[[Any], bool]) -> Any:
    """A copy of `model` in which each initializer of the main graph holding data in the file (not external already)
    for which `leave_out(tensor)` holds keeps its name, type and shape but no data: it reads as external data in a
    file that does not exist (NOT_LOADED). The weights left out are not copied, not even one at a time."""
    import onnx

    out = onnx.ModelProto()
    _copy_fields(model, out, skip=("graph",))
    _copy_fields(model.graph, out.graph, skip=("initializer",))
    for tensor in model.graph.initializer:
        kept = out.graph.initializer.add()
        if tensor.data_location == onnx.TensorProto.EXTERNAL or not leave_out(tensor):
            kept.CopyFrom(tensor)
            continue
        kept.name, kept.data_type, kept.doc_string = tensor.name, tensor.data_type, tensor.doc_string
        kept.dims.extend(tensor.dims)
        if tensor.HasField("segment"):
            kept.segment.CopyFrom(tensor.segment)
        kept.data_location = onnx.TensorProto.EXTERNAL
        entry = kept.external_data.add()
        entry.key, entry.value = "location", NOT_LOADED
    return out


def _copy_fields(source: Any, target: Any, skip: tuple[str, ...]) -> None:
    """Every field set in `source` but those in `skip` onto `target` (a message of the same type)."""
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:  # protobuf before 5.28: the label says it
            repeated = field.label == field.LABEL_REPEATED
        if repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def data_bytes(tensor: Any) -> int:
    """Bytes of a tensor's data as its type and shape say (raw_data's length), without reading the data."""
    import numpy as np
    from onnx import helper

    try:
        width = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return len(tensor.raw_data) if tensor.HasField("raw_data") else 0
    if tensor.data_type in (21, 22, 23, 25, 26):  # 4-bit and 2-bit types pack several to a byte: read the length
        return len(tensor.raw_data) if tensor.HasField("raw_data") else 0
    return int(np.prod(tensor.dims, dtype=np.int64)) * width


def external_bytes_of(model: Any, folder: Path) -> int:
    """compress.onnx.graph.external_bytes of a model already loaded (an onnx ModelProto, without its external data)
    from a file in `folder`."""
    import onnx

    total, whole_files = 0, set()
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entry = {e.key: e.value for e in tensor.external_data}
        if "length" in entry:
            total += int(entry["length"])
        else:
            whole_files.add(entry.get("location", ""))
    for location in whole_files:
        data = Path(folder) / location
        total += data.stat().st_size if data.is_file() else 0
    return total
