"""An ONNX model's outputs on a whole split in ONNX Runtime: what every figure after export is computed from.

The split is read in batches through its Inputs (token rows sorted by length and trimmed of shared padding, then
put back in order), so the arrays match, row for row, what torch gave during training.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from compress.errors import CompressError, InputsRejected, first_line


def outputs_on(path: Path, data: Any, split: str, *, names: Sequence[str] | None = None, rows: Any = None,
               batch_size: int = 256, config: dict[str, str] | None = None) -> dict[str, Any]:
    """{output name: array} of the model at `path` on `split` (or its rows `rows`), in data order. `names` renames
    the session's outputs (the run's names; they are the same unless a tool renamed them); `config`: session config
    entries (compress.bench.providers.EXACT_MATMULS)."""
    import numpy as np
    import torch

    from compress.bench.providers import open_session
    from compress.data import loader
    from compress.data.inputs import in_order, in_place, item_indices
    from compress.heap import Watch

    sess, _ = open_session(path, "cpu", threads=os.cpu_count() or 1, strict=True, config=config)
    wanted = [o.name for o in sess.get_outputs()]
    ds = data.split(split)
    if rows is not None:
        ds = torch.utils.data.Subset(ds, list(rows))
    order = data.inputs.order(ds)
    source = torch.utils.data.Subset(ds, order) if order is not None else ds
    parts: list[list] = [[] for _ in wanted]
    seen: list = []
    growth = Watch()
    try:
        for index, x, _ in loader(source, batch_size=batch_size, shuffle=False, seed=0, workers=data.workers):
            for i, value in enumerate(sess.run(None, data.inputs.as_feed(x))):
                parts[i].append(value)
            seen.append(np.asarray(index))
            del x
            growth.check()  # freed buffers go back to the system once the pass grows (compress/heap.py)
    except CompressError:
        raise
    except Exception as exc:
        raise InputsRejected(path, f"the {split} split", first_line(exc)) from None
    outputs = {name: np.concatenate(chunks) for name, chunks in zip(names or wanted, parts)}
    if sum(map(len, seen)) != len(source):  # items the dataset skipped: NaN rows, as torch's predict keeps them
        outputs = in_place(outputs, np.concatenate(seen), item_indices(source))
    return in_order(outputs, order)
