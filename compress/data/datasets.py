"""The one item shape every source produces: `(index, inputs, target)`.

`index` is the example's position in its split (the key into cached teacher outputs), `inputs` a float Tensor or a
dict of Tensors (keyword inputs such as input_ids/attention_mask), `target` an int class label (-1: no label), or
for the tensors task an array of any shape or a dict of arrays (several targets).
Items are read one at a time, so a memory-mapped array or a folder of files is never loaded whole.
"""
from __future__ import annotations

from typing import Any, Callable

import torch.utils.data as tud

SKIPPED = -2
"""The target of an item whose source could not be read at run time (an image that no longer decodes): `collate`
drops it from its batch."""


class Batch(tuple):
    """An `(index, inputs, target)` batch read whole by a dataset's `__getitems__` (rows taken at once from arrays in
    memory): `collate` passes it on as it is, instead of stacking one item at a time."""


def collate(items: Any) -> Any:
    """torch's default collation, without the items marked SKIPPED (all of them kept if all are, sliced to none)."""
    from torch.utils.data import default_collate

    index, inputs, target = items if isinstance(items, Batch) else default_collate(items)
    if not hasattr(target, "dim") or target.dim() != 1 or target.dtype.is_floating_point:
        return index, inputs, target  # array targets: SKIPPED marks only class labels
    keep = target != SKIPPED
    if bool(keep.all()):
        return index, inputs, target
    inputs = {k: v[keep] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[keep]
    return index[keep], inputs, target[keep]


class ArrayDataset(tud.Dataset):
    """Rows `rows` (all when None) of arrays `x`, `y` that may be memory-mapped; `scale` multiplies inputs.

    `y`: integer class labels (1-D), an array of any shape or a dict of arrays (`labels=False`: the tensors task's
    targets, served as they are), or None (no targets: -1)."""

    def __init__(self, x: Any, y: Any, rows: Any = None, *, scale: float = 1.0,
                 transform: Callable[[Any], Any] | None = None, labels: bool = True):
        self.x, self.y, self.rows, self.scale, self.transform = x, y, rows, scale, transform
        self.labels = labels

    def __len__(self) -> int:
        return len(self.x) if self.rows is None else len(self.rows)

    def row(self, i: int) -> int:
        if i < 0 or i >= len(self):
            raise IndexError(i)
        return i if self.rows is None else int(self.rows[i])

    def __getitem__(self, i: int) -> tuple[int, Any, Any]:
        import numpy as np
        import torch

        r = self.row(i)
        x = np.array(self.x[r], dtype=np.float32)  # a copy: never a view into the mapped file
        if self.scale != 1.0:
            x *= self.scale
        t = torch.from_numpy(x)
        if self.transform is not None:
            t = self.transform(t)
        return i, t, self._target(r)

    def __getitems__(self, indices: list[int]) -> Any:
        """A whole batch at once (DataLoader's batched fetch): the rows taken from the arrays in one indexing, the
        per-item path's dtypes. Items one by one where a transform or array targets need it."""
        import numpy as np
        import torch

        if self.transform is not None or (self.y is not None and not self.labels) or not indices:
            return [self[i] for i in indices]
        rows = np.asarray([self.row(i) for i in indices])
        x = np.array(self.x[rows], dtype=np.float32)  # fancy indexing copies, out of a mapped file too
        if self.scale != 1.0:
            x *= self.scale
        target = (torch.full((len(rows),), -1, dtype=torch.int64) if self.y is None else
                  torch.from_numpy(np.asarray(self.y[rows]).astype(np.int64)))
        return Batch((torch.as_tensor(indices, dtype=torch.int64), torch.from_numpy(x), target))

    def _target(self, r: int) -> Any:
        import numpy as np

        if self.y is None:
            return -1
        if self.labels:
            return int(self.y[r])
        if isinstance(self.y, dict):
            return {k: np.array(v[r]) for k, v in self.y.items()}
        return np.array(self.y[r])

    def targets(self) -> Any:
        """Every row's target in order (numpy), or None without targets."""
        import numpy as np

        if self.y is None:
            return None
        take = (lambda a: np.asarray(a)) if self.rows is None else (lambda a: np.asarray(a)[np.asarray(self.rows)])
        if isinstance(self.y, dict):
            return {k: take(v) for k, v in self.y.items()}
        return take(self.y).astype(np.int64) if self.labels else take(self.y)

    def with_transform(self, transform: Callable[[Any], Any] | None) -> "ArrayDataset":
        return ArrayDataset(self.x, self.y, self.rows, scale=self.scale, transform=transform, labels=self.labels)


class PythonDataset(tud.Dataset):
    """A user's dataset of `(x, y)` pairs (x array-like or a dict of them), seen through `rows`. `targets`: 'labels'
    (y an int class label), 'arrays' (y an array or a dict of arrays, served as they are) or 'none' (y ignored)."""

    def __init__(self, ds: Any, rows: Any = None, targets: str = "labels"):
        self.ds, self.rows, self.kind = ds, rows, targets

    def __len__(self) -> int:
        return len(self.ds) if self.rows is None else len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, Any, Any]:
        import numpy as np

        if i < 0 or i >= len(self):
            raise IndexError(i)
        r = i if self.rows is None else int(self.rows[i])
        x, y = self.ds[r]
        if self.kind == "labels":
            return i, as_inputs(x), int(y)
        if self.kind == "none":
            return i, as_inputs(x), -1
        return i, as_inputs(x), ({k: np.asarray(v) for k, v in y.items()} if isinstance(y, dict) else np.asarray(y))


def as_inputs(x: Any) -> Any:
    """A float32 Tensor, or a dict of Tensors (integer ids stay integers)."""
    import numpy as np
    import torch

    if isinstance(x, dict):
        return {k: torch.as_tensor(np.asarray(v)) for k, v in x.items()}
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


class TensorPairs(tud.Dataset):
    """In-memory (x, y) tensors as `(index, inputs, target)` items: for tests and scripts that hold tensors."""

    def __init__(self, x: Any, y: Any):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[int, Any, int]:
        return i, self.x[i], int(self.y[i])

    def __getitems__(self, indices: list[int]) -> Any:
        """A whole batch in one indexing of the tensors (DataLoader's batched fetch)."""
        import torch

        rows = torch.as_tensor(indices, dtype=torch.int64)
        return Batch((rows, self.x[rows], torch.as_tensor(self.y)[rows].long()))


def stack_targets(batches: list) -> Any:
    """Batched targets (tensors, or dicts of them) concatenated into numpy in order: an array or a dict of arrays."""
    import numpy as np

    if not batches:
        return None
    first = batches[0]
    if isinstance(first, dict):
        return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in first}
    return np.concatenate([np.asarray(b) for b in batches])
