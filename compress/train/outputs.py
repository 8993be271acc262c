"""The teacher's cached outputs: one safetensors file, every output on every split, keys `SPLIT/OUTPUT`.

Written once by the teacher stage; read memory-mapped (`open_outputs`), so distillation looks the training rows up by
index without loading the file, whatever its size. Without augmentation the training split is there; with it, the
teacher runs on each augmented batch instead and only validation and test are cached.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Mapping

_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": None, "F64": "<f8", "I64": "<i8", "I32": "<i4", "I16": "<i2",
           "I8": "i1", "U8": "u1", "BOOL": "?"}


def save_outputs(path: Path, outputs: Mapping[str, Mapping[str, Any]]) -> None:
    """{split: {output name: array (N, ...)}} -> one safetensors file, atomically."""
    import numpy as np
    from safetensors.numpy import save_file

    from compress.cache import atomic_path

    flat = {f"{split}/{name}": np.ascontiguousarray(np.asarray(value, dtype=np.float32))
            for split, by_name in outputs.items() for name, value in by_name.items()}
    order = list(flat)  # safetensors sorts its header; the output order (the ONNX output order) is kept here
    with atomic_path(Path(path)) as tmp:
        save_file(flat, str(tmp), metadata={"order": json.dumps(order)})


def open_outputs(path: Path) -> dict[str, dict[str, Any]]:
    """{split: {output name: read-only memory-mapped array}}, in the order the file lists them."""
    import numpy as np

    path = Path(path)
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    out: dict[str, dict[str, Any]] = {}
    start = 8 + size
    order = json.loads((header.get("__metadata__") or {}).get("order", "[]")) or sorted(k for k in header
                                                                                       if k != "__metadata__")
    for key in order:
        meta = header[key]
        split, _, name = key.partition("/")
        dtype = _DTYPES.get(meta["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: {key} has dtype {meta['dtype']}, which numpy cannot map")
        begin, end = meta["data_offsets"]
        shape = tuple(meta["shape"])
        out.setdefault(split, {})[name] = (np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
                                           if end > begin else np.zeros(shape, dtype=dtype))
    return out
