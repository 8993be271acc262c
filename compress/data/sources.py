"""The sources behind `[data] source`: the built-in digits, `npz:PATH` (memory-mapped) and `python:module:function`.

Each ends in a DataBundle of `(index, inputs, target)` datasets (compress.data.datasets) split train/val/test.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from compress.errors import CompressError, shorten

log = logging.getLogger("compress")


def open_source(cfg: Any, *, seed: int, base_dir: Path, origin: str) -> Any:
    import numpy as np

    from compress.data.arrays import open_npz

    src = cfg.source
    if src == "digits":
        arrays = open_npz(Path(__file__).parent / "digits.npz", origin)
        arrays["x"] = np.asarray(arrays["x"]).astype(np.float32)[:, None, :, :] / 16.0  # 1,797 images: in memory
        bundle = _from_arrays(arrays, cfg, seed, origin, where=origin)
    elif src.startswith("images:"):
        from compress.data.images import open_images

        bundle = open_images(cfg, seed=seed, base_dir=base_dir, origin=origin)
    elif src.startswith("npz:"):
        path = Path(src[4:])
        path = path if path.is_absolute() else base_dir / path
        bundle = _from_arrays(open_npz(path, origin), cfg, seed, origin, where=f"{origin}: {path}")
    else:
        bundle = _from_python(src[len("python:"):], cfg, seed, base_dir, origin)
    bundle.workers = cfg.workers
    return bundle


def _from_arrays(arrays: dict, cfg: Any, seed: int, origin: str, *, where: str) -> Any:
    """Check the arrays and split them; `where` (origin plus the file) is what bad-value messages name."""
    import numpy as np

    from compress.data import DataBundle
    from compress.data.arrays import check_xy, fingerprint, stratified_split
    from compress.data.datasets import ArrayDataset

    for key in ("x", "y"):
        if key not in arrays:
            raise CompressError(f"{where} has no array {key!r} (found {sorted(arrays)}); expected x and y, "
                                "optionally x_val and y_val, x_test and y_test")
    for part in ("val", "test"):
        if (f"x_{part}" in arrays) != (f"y_{part}" in arrays):
            raise CompressError(f"{where} must have both x_{part} and y_{part}, or neither")
    x = arrays["x"]
    labels = {"": np.asarray(arrays["y"])}
    check_xy(x, labels[""], where, "x", "y")
    for part in ("val", "test"):
        if f"x_{part}" in arrays:
            xp, yp = arrays[f"x_{part}"], np.asarray(arrays[f"y_{part}"])
            check_xy(xp, yp, where, f"x_{part}", f"y_{part}")
            if xp.shape[1:] != x.shape[1:]:
                raise CompressError(f"{origin}: x_{part} examples have shape {xp.shape[1:]}, x has {x.shape[1:]}")
            labels[part] = yp
    y = labels[""]
    val_f = 0.0 if "val" in labels else cfg.val_fraction
    test_f = 0.0 if "test" in labels else cfg.test_fraction
    train_rows, val_rows, test_rows = stratified_split(y, val_f, test_f, seed)
    how = {"train": "x/y" if not (val_f or test_f) else "the rest of x/y"}
    splits = {"train": ArrayDataset(x, y, train_rows)}
    for part, frac, rows in (("val", val_f, val_rows), ("test", test_f, test_rows)):
        if part in labels:
            splits[part], how[part] = ArrayDataset(arrays[f"x_{part}"], labels[part]), f"x_{part}/y_{part}"
        elif frac:
            splits[part] = ArrayDataset(x, y, rows)
            how[part] = f"stratified {100 * frac:g}% of x/y (seed {seed})"
        else:
            splits[part] = None
    if splits["val"] is None or len(splits["val"]) == 0:
        raise CompressError(f"{origin}: too few examples ({len(y)}) to hold out a validation split")
    used = [y[train_rows], y[val_rows] if "val" not in labels else labels["val"]]
    all_labels = np.concatenate(used + ([labels["test"]] if "test" in labels else [y[test_rows]]))
    classes = np.unique(np.concatenate(used))
    if len(classes) < 2:
        raise CompressError(f"{origin}: the data has a single class ({classes.tolist()}); need at least two")
    num_classes = int(all_labels.max()) + 1
    _warn_label_gaps(all_labels, num_classes, origin)
    parts = [np.asarray(arrays[k]) if k.startswith("y") else arrays[k] for k in sorted(arrays)]
    return DataBundle(train=splits["train"], val=splits["val"], test=splits["test"], num_classes=num_classes,
                      input_shape=tuple(int(s) for s in x.shape[1:]), how=how,
                      fingerprint=fingerprint([*parts, train_rows, val_rows, test_rows]))


def _warn_label_gaps(labels: Any, num_classes: int, origin: str) -> None:
    """Labels 0, 2, 4 make a 5-output model with two classes never seen: legal, but rarely meant; say so once."""
    import numpy as np

    seen = np.unique(labels).tolist()
    missing = sorted(set(range(num_classes)) - set(seen))
    if missing:
        log.warning("warning: %s: labels run 0..%d but these values never occur: %s; models get %d outputs, one per "
                    "label value; renumber the labels 0..%d if the gaps are not meant", origin, num_classes - 1,
                    shorten(", ".join(map(str, missing)), 60), num_classes, len(seen) - 1)


def _from_python(target: str, cfg: Any, seed: int, base_dir: Path, origin: str) -> Any:
    """A user's dataset(s): read once, item by item, to check them and collect labels (never kept whole)."""
    import numpy as np

    from compress.data import DataBundle
    from compress.data.arrays import fingerprint, stratified_split
    from compress.data.datasets import PythonDataset
    from compress.imports import import_object

    fn = import_object(target, base_dir, origin)
    try:
        result = fn()
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"{origin}: {target}() raised {type(exc).__name__}: {exc}") from exc
    parts = list(result) if isinstance(result, (tuple, list)) else [result]
    if len(parts) not in (1, 2, 3):
        raise CompressError(f"{origin}: {target}() must return a dataset, (train, val) or (train, val, test), "
                            f"got {len(parts)} items")
    where = f"{origin}: {target}()"
    scans = [_scan(ds, name, where) for ds, name in zip(parts, ("train", "validation", "test"))]
    shape = scans[0][1]
    for (labels, s), name in zip(scans[1:], ("validation", "test")):
        if s != shape:
            raise CompressError(f"{where}: {name} examples have shape {s}, train has {shape}")
    y = scans[0][0]
    val_f = 0.0 if len(parts) > 1 else cfg.val_fraction
    test_f = 0.0 if len(parts) > 2 else cfg.test_fraction
    train_rows, val_rows, test_rows = stratified_split(y, val_f, test_f, seed)
    how = {"train": "train dataset"}
    splits = {"train": PythonDataset(parts[0], train_rows)}
    for k, (part, frac, rows) in enumerate((("val", val_f, val_rows), ("test", test_f, test_rows)), start=1):
        if len(parts) > k:
            splits[part], how[part] = PythonDataset(parts[k]), f"{part} dataset"
        elif frac:
            splits[part], how[part] = PythonDataset(parts[0], rows), f"stratified {100 * frac:g}% of train (seed {seed})"
        else:
            splits[part] = None
    if len(splits["val"]) == 0:
        raise CompressError(f"{origin}: too few examples ({len(y)}) to hold out a validation split")
    all_labels = np.concatenate([s[0] for s in scans])
    labelled = all_labels[all_labels >= 0]
    if len(np.unique(labelled)) < 2:
        raise CompressError(f"{origin}: the data has a single class ({np.unique(labelled).tolist()}); need at least two")
    num_classes = int(labelled.max()) + 1
    _warn_label_gaps(labelled, num_classes, origin)
    input_shape = tuple(next(iter(shape.values()))[1:]) if isinstance(shape, dict) else shape
    return DataBundle(train=splits["train"], val=splits["val"], test=splits["test"], num_classes=num_classes,
                      input_shape=input_shape, how=how,
                      fingerprint=fingerprint([target, *[s[0] for s in scans], train_rows, val_rows, test_rows]))


def _scan(ds: Any, name: str, where: str) -> tuple[Any, Any]:
    """Labels of every item, and the (common) shape of its inputs; checks values item by item."""
    import numpy as np

    from compress.data.arrays import check_bad

    labels, shape = [], None
    try:
        n = len(ds)
        for i in range(n):
            x, y = ds[i]
            if isinstance(x, dict):
                s: Any = {k: tuple(np.shape(v)) for k, v in x.items()}
            else:
                a = np.asarray(x, dtype=np.float32)
                s = tuple(a.shape)
                if not np.isfinite(a).all():
                    check_bad(a[None], ~np.isfinite(a[None]), where, f"the {name} dataset's x", None, "values",
                              "clean the data or drop those rows", offset=i)
            if shape is None:
                shape = s
            elif s != shape and not isinstance(s, dict):
                raise CompressError(f"{where}: {name} example {i} has shape {s}, the first had {shape}")
            labels.append(int(y))
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"{where.rsplit(': ', 1)[0]}: could not read the {name} dataset from "
                            f"{where.rsplit(': ', 1)[-1]} as (x, y) pairs: {type(exc).__name__}: {exc}") from exc
    if not labels:
        raise CompressError(f"{where}: the {name} dataset is empty")
    return np.asarray(labels, dtype=np.int64), shape
