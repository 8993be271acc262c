"""The QNN target's data: {input name: samples}, each input's samples on its own batch axis (0 unless named: an
LSTM state [layers, N, hidden] has them on 1; None: a setting fed whole), cut into the batches a fixed-shape model
takes."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def rows(feeds: "dict[str, np.ndarray]", axes: dict[str, int | None] | None = None) -> int:
    """Samples in `feeds`: the length of the first input's batch axis (0 unless `axes` says otherwise)."""
    import numpy as np

    axes = axes or {}
    name = next((k for k, v in feeds.items() if np.ndim(v) and axes.get(k, 0) is not None), None)
    return 1 if name is None else int(np.shape(feeds[name])[axes.get(name, 0)])


def head(feeds: "dict[str, np.ndarray]", count: int,
         axes: dict[str, int | None] | None = None) -> "dict[str, np.ndarray]":
    """The first `count` samples of each input (all it has, when fewer), along its batch axis, as views; an input
    without one (None, a scalar) whole."""
    import numpy as np

    axes = axes or {}
    return {k: v if not np.ndim(v) or axes.get(k, 0) is None else v[(slice(None),) * axes.get(k, 0) + (slice(count),)]
            for k, v in feeds.items()}


def whole_batches(feeds: "dict[str, np.ndarray]", batch: int,
                  axes: dict[str, int | None]) -> "dict[str, np.ndarray]":
    """The samples of `feeds` that fill whole batches of `batch` (a fixed-shape model takes exactly its batch)."""
    return head(feeds, rows(feeds, axes) - rows(feeds, axes) % batch, axes)


def feeds_for(model: Path, given: "np.ndarray | dict[str, np.ndarray]", what: str) -> "dict[str, np.ndarray]":
    """{input name: rows} for the model's inputs: an array is the one input's; a dict must name each input."""
    from compress.errors import CompressError
    from compress.onnx.graph import graph_inputs, load_model

    inputs = graph_inputs(load_model(model).graph)
    names = [i.name for i in inputs]
    if not isinstance(given, dict):
        if len(names) != 1:
            raise CompressError(f"{model}: the QNN target got one {what} array for a model with inputs "
                                f"{', '.join(names)}; give one array per input")
        given = {names[0]: given}
    missing = [n for n in names if n not in given]
    if missing:
        raise CompressError(f"{model}: the {what} data has no rows for input(s) {', '.join(missing)}")
    # float16 rows for a float32 input: a float16 model's float32 copy (compress.edge.ranges.float16_as_float32)
    wide = {i.name for i in inputs if i.type.tensor_type.elem_type == 1}  # TensorProto.FLOAT
    return {n: given[n].astype("float32") if n in wide and getattr(given[n], "dtype", None) == "float16" else given[n]
            for n in names}


def run_batches(session: Any, feeds: "dict[str, np.ndarray]", batch: int = 1,
                axes: "dict[str, int | None] | None" = None, *, every: bool = False) -> Any:
    """First output of `session` (`every`: the list of all its outputs) over `feeds` ({input name: rows}), `batch`
    rows at a time (a fixed-shape model takes exactly its batch), cut along each input's batch axis (`axes`, 0 by
    default: an LSTM state [layers, N, hidden] is cut on 1)."""
    import numpy as np

    from compress.quantize.attempts import batched

    parts = [session.run(None, part) for part in batched(feeds, batch, axes)]
    joined = [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
    return joined if every else joined[0]
