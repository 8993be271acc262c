"""A user's dataset read once, item by item (python: sources): labels or a digest of the targets, the inputs'
common shape, types and largest ids, and a digest of the inputs for the stage cache; bad values named where they are."""
from __future__ import annotations

from typing import Any

from compress.errors import CompressError


def scan(ds: Any, name: str, where: str, *, labels: bool = True) -> tuple[Any, Any, str, dict[str, str], dict]:
    """Labels of every item (a digest of the targets when they are not labels), the (common) shape of its inputs,
    and a digest of the inputs (the stage cache's key: an input changed under the same labels is other data; '' for
    a dataset whose item 0 reads differently twice, e.g. random augmentation in __getitem__, which has no fixed
    inputs to key on, so its labels alone key it as before), named inputs' types ({name: 'float' | 'int64' | ...},
    from item 0) and integer ones' largest values ({name: (value, 'train example 5')}); checks values item by item."""
    import hashlib

    import numpy as np

    found, shape, digest, inputs, steady, kinds, peaks = [], None, hashlib.sha256(), hashlib.sha256(), True, {}, {}
    try:
        n = len(ds)
        for i in range(n):
            item = ds[i]
            if isinstance(item, dict):
                raise CompressError(f"{where}: {name} example {i} is a dict (keys {', '.join(map(str, item))}); items "
                                    "must be (x, y) pairs: return (inputs, label) from __getitem__ (inputs may be a "
                                    "dict of named arrays)")
            if not isinstance(item, (tuple, list)) or len(item) != 2:  # a (2, 6) tensor split into x and y
                what = (f"a {type(item).__name__} of shape {tuple(item.shape)}" if hasattr(item, "shape") else
                        f"a {type(item).__name__}" + (f" of {len(item)}" if isinstance(item, (tuple, list)) else ""))
                raise CompressError(f"{where}: {name} example {i} is {what}; items must be (x, y) pairs: return "
                                    "(inputs, label) from __getitem__ ((inputs, None) where there is no label)")
            x, y = item
            if isinstance(x, (tuple, list)) and any(hasattr(v, "shape") for v in x):  # numpy: "inhomogeneous shape"
                raise CompressError(f"{where}: {name} example {i}: x is a {type(x).__name__} of {len(x)} tensors; give "
                                    "several inputs as a dict named after forward's parameters ({'image': ..., "
                                    "'meta': ...} for forward(self, image, meta))")
            if i == 0 and hasattr(x, "getbands") and hasattr(x, "mode"):  # numpy reads it (H, W, C) in 0..255
                raise CompressError(f"{where}: {name} example 0 is a PIL image; return a float (C, H, W) tensor, "
                                    "e.g. torch.from_numpy(numpy.asarray(image, 'float32') / 255).permute(2, 0, 1), "
                                    "or put the files in folders and use source = 'images:DIR'")
            if i == 0:
                steady = _same_inputs(x, ds[0][0])
            if steady:
                for k, v in (sorted(x.items()) if isinstance(x, dict) else [("", x)]):
                    v = np.ascontiguousarray(np.asarray(v))
                    inputs.update(f"{k}|{v.dtype}|{v.shape}|".encode())
                    inputs.update(v.tobytes())
            if isinstance(x, dict):
                s: Any = {k: tuple(np.shape(v)) for k, v in x.items()}
                _named(x, i, name, where, kinds, peaks)
            else:
                a = np.asarray(x, dtype=np.float32)
                s = tuple(a.shape)
                _finite(a, f"the {name} dataset's x", where, i)
            if shape is None:
                shape = s
            elif s != shape:
                _shape_changed(s, shape, name, i, where)
            if labels:
                found.append(_label(y, name, i, where))
            else:
                for k, v in (y.items() if isinstance(y, dict) else [("y", y)]):
                    v = np.ascontiguousarray(np.asarray(v))
                    if v.dtype.kind == "f" and not np.isfinite(v).all():
                        raise CompressError(f"{where}: {name} example {i} has a non-finite target ({k}); clean the "
                                            "data or drop those rows")
                    digest.update(v.tobytes())
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"{where.rsplit(': ', 1)[0]}: could not read the {name} dataset from "
                            f"{where.rsplit(': ', 1)[-1]} as (x, y) pairs: {type(exc).__name__}: {exc}") from exc
    if shape is None:
        raise CompressError(f"{where}: the {name} dataset is empty")
    return (np.asarray(found, dtype=np.int64) if labels else digest.hexdigest()), shape, \
        inputs.hexdigest() if steady else "", kinds, peaks


def _shape_changed(s: Any, shape: Any, name: str, i: int, where: str) -> None:
    """Example `i`'s inputs differ in form or shape from the first example's: one line saying how."""
    if isinstance(s, dict) != isinstance(shape, dict):
        forms = ("a dict of named inputs", "one tensor")
        now, first = forms[not isinstance(s, dict)], forms[not isinstance(shape, dict)]
        raise CompressError(f"{where}: {name} example {i}: x is {now}, the first example's {first}; every example's "
                            "x needs the same form")
    if isinstance(s, dict) and s.keys() == shape.keys():
        k = next(k for k in s if s[k] != shape[k])
        raise CompressError(f"{where}: {name} example {i}: input {k!r} has shape {s[k]}, the first example's "
                            f"{shape[k]}; every example needs one shape per input (pad or cut them to one length)")
    raise CompressError(f"{where}: {name} example {i} has shape {s}, the first had {shape}")


def _named(x: dict, i: int, name: str, where: str, kinds: dict[str, str], peaks: dict[str, tuple[int, str]]) -> None:
    """Example `i`'s named inputs: their types (from the first), integer ones' largest values (an id past an
    nn.Embedding's rows is said at load), and NaN or infinity named here, not as a loss that became nan."""
    import numpy as np

    for k, v in x.items():
        a = np.asarray(v)
        if i == 0:
            kinds[k] = "float" if a.dtype.kind == "f" else a.dtype.name
        if a.dtype.kind in "iu" and a.size and (k not in peaks or a.max() > peaks[k][0]):
            peaks[k] = (int(a.max()), f"{name} example {i}")
        if a.dtype.kind == "f":
            _finite(a, f"the {name} dataset's input {k!r}", where, i)


def _finite(a: Any, what: str, where: str, i: int) -> None:
    """Example `i`'s input `a` (float) holds no NaN or infinity, or one line naming it and the first bad value."""
    import numpy as np

    from compress.data.arrays import check_bad

    if not np.isfinite(a).all():
        check_bad(a[None], ~np.isfinite(a[None]), where, what, None, "values", "clean the data or drop those rows",
                  offset=i)


def _same_inputs(a: Any, b: Any) -> bool:
    """Whether two reads of one item gave the same inputs (array or {name: array})."""
    import numpy as np

    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)
    return np.array_equal(np.asarray(a), np.asarray(b))


def _label(y: Any, name: str, i: int, where: str) -> int:
    """An item's class label as an int; a fractional, non-numeric or array label is one line (int() truncated 0.5
    to 0 silently, and said 'invalid literal' for a class name)."""
    import numpy as np

    a = np.asarray(y)
    if a.size != 1:
        raise CompressError(f"{where}: {name} example {i} has a label of shape {a.shape}; classification labels are "
                            "single integers 0..K-1 (one-hot or scores: take the argmax), or set data.task = "
                            "'tensors' for array targets")
    value = a.reshape(()).item()
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):  # bool is an int
        raise CompressError(f"{where}: {name} example {i} has the label {value!r}; labels must be integers 0..K-1"
                            f"{': number the class names' if isinstance(value, str) else ''}")
    if value < 0:
        raise CompressError(f"{where}: {name} example {i} has the negative label {value}; labels must be integers "
                            "0..K-1")
    return int(value)
