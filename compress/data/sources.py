"""The sources behind `[data] source`: the built-in digits, `npz:PATH` (memory-mapped) and `python:module:function`.

Each ends in a DataBundle of `(index, inputs, target)` datasets (compress.data.datasets) split train/val/test.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from compress.errors import CompressError, shorten

log = logging.getLogger("compress")


def open_source(cfg: Any, *, seed: int, base_dir: Path, origin: str, tokenizer: str | None = None,
                cache_dir: Path | None = None) -> Any:
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
    elif src.startswith("text:"):
        from compress.hf.data import load_text

        bundle = load_text(cfg, seed=seed, base_dir=base_dir, origin=origin, tokenizer_spec=tokenizer,
                           cache_dir=cache_dir)
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
    from compress.data.arrays import check_xy, check_x, fingerprint, stratified_split
    from compress.data.datasets import ArrayDataset

    labels_task = cfg.task == "classification"
    names = _target_names(arrays, cfg.task, where)
    if "x" not in arrays or (labels_task and "y" not in arrays):
        named = "x" not in arrays and any(k.startswith("x_") and k not in ("x_val", "x_test") for k in arrays)
        raise CompressError(f"{where} has no array {'x' if 'x' not in arrays else 'y'!r} (found {sorted(arrays)}); "
                            "expected x and y, optionally x_val and y_val, x_test and y_test" + (
                                "; an npz holds one input: several named inputs come from a python: dataset whose "
                                "items are ({'image': ..., 'meta': ...}, y)" if named else ""))
    x = arrays["x"]
    targets = {"": _targets_of(arrays, names, "", x, cfg.task, where)}
    for part in ("val", "test"):
        if f"x_{part}" not in arrays:
            if any(f"{n}_{part}" in arrays for n in names):
                raise CompressError(f"{where} must have both x_{part} and y_{part}, or neither")
            continue
        xp = arrays[f"x_{part}"]
        if xp.shape[1:] != x.shape[1:]:
            raise CompressError(f"{where}: x_{part} examples have shape {xp.shape[1:]}, x has {x.shape[1:]}; every "
                                "split's examples need the same shape")
        targets[part] = _targets_of(arrays, [f"{n}_{part}" for n in names], f"_{part}", xp, cfg.task, where)
    if labels_task:
        for part, y in targets.items():
            check_xy(arrays[f"x{part and '_' + part}"], y, where, f"x{part and '_' + part}", f"y{part and '_' + part}")
    else:
        for part in targets:
            check_x(arrays[f"x{part and '_' + part}"], where, f"x{part and '_' + part}")
    y = targets[""] if labels_task else np.zeros(len(x), dtype=np.int64)  # one random split without labels
    val_f = 0.0 if "val" in targets else cfg.val_fraction
    test_f = 0.0 if "test" in targets else cfg.test_fraction
    train_rows, val_rows, test_rows = stratified_split(y, val_f, test_f, seed, where if labels_task else None)
    how = {"train": "x/y" if not (val_f or test_f) else "the rest of x/y"}
    kind = "stratified " if labels_task else ""

    def dataset(xa: Any, ya: Any, rows: Any = None) -> Any:
        return ArrayDataset(xa, ya, rows, labels=labels_task)

    splits = {"train": dataset(x, targets[""], train_rows)}
    for part, frac, rows in (("val", val_f, val_rows), ("test", test_f, test_rows)):
        if part in targets:
            splits[part], how[part] = dataset(arrays[f"x_{part}"], targets[part]), f"x_{part}/y_{part}"
        elif frac:
            splits[part] = dataset(x, targets[""], rows)
            how[part] = f"{kind}{100 * frac:g}% of x/y (seed {seed})"
        else:
            splits[part] = None
    if splits["val"] is None or len(splits["val"]) == 0:
        raise CompressError(f"{origin}: too few examples ({len(x)}) to hold out a validation split")
    num_classes = _classes(targets, train_rows, val_rows, test_rows, origin) if labels_task else 0
    parts = [np.asarray(arrays[k]) if k.startswith("y") else arrays[k] for k in sorted(arrays)]
    return DataBundle(train=splits["train"], val=splits["val"], test=splits["test"], num_classes=num_classes,
                      input_shape=tuple(int(s) for s in x.shape[1:]), how=how, task=cfg.task,
                      has_targets=targets[""] is not None,
                      fingerprint=fingerprint([*parts, train_rows, val_rows, test_rows]))


def _target_names(arrays: dict, task: str, where: str) -> list[str]:
    """The target arrays of the training split: ['y'] for labels, or 'y' / every 'y_NAME' for the tensors task."""
    if task == "classification":
        return ["y"]
    if task == "embedding":
        return []
    names = [k for k in sorted(arrays) if (k == "y" or k.startswith("y_")) and not k.endswith(("_val", "_test"))]
    if "y" in names and len(names) > 1:
        raise CompressError(f"{where}: give one target 'y' or several 'y_NAME', not both (found {names})")
    return names


def _targets_of(arrays: dict, names: list[str], suffix: str, x: Any, task: str, where: str) -> Any:
    """The targets of one split: labels (classification), an array or a dict of arrays (tensors), or None."""
    import numpy as np

    if not names:
        return None
    for n in names:
        if n not in arrays:
            raise CompressError(f"{where} must have both x{suffix} and {n}, or neither")
        if task != "classification" and len(arrays[n]) != len(x):  # labels: check_xy says it for classification
            raise CompressError(f"{where}: {n} has {len(arrays[n])} rows, x{suffix} {len(x)}; one target row per "
                                "example")
        if task != "classification" and np.asarray(arrays[n]).dtype.kind == "f":
            from compress.data.arrays import check_bad

            values = np.asarray(arrays[n])  # a NaN target makes every loss NaN (training stops, blaming the lr)
            check_bad(values, ~np.isfinite(values), where, n, None, "values", "clean the data or drop those rows")
    if task == "classification":
        return np.asarray(arrays[names[0]])
    if names == [f"y{suffix}"]:
        return arrays[names[0]]
    return {n[2:len(n) - len(suffix)]: arrays[n] for n in names}


def _classes(targets: dict, train_rows: Any, val_rows: Any, test_rows: Any, origin: str) -> int:
    """The number of classes (largest label + 1), after checking two of them are used."""
    import numpy as np

    from compress.data.arrays import check_label_range

    y = targets[""]
    used = [y[train_rows], y[val_rows] if "val" not in targets else targets["val"]]
    all_labels = np.concatenate(used + ([targets["test"]] if "test" in targets else [y[test_rows]]))
    classes = np.unique(np.concatenate(used))
    if len(classes) < 2:
        raise CompressError(f"{origin}: the data has a single class ({classes.tolist()}); need at least two")
    num_classes = int(all_labels.max()) + 1
    check_label_range(all_labels, num_classes, origin)
    _warn_untrained(y[train_rows], all_labels, origin)
    _warn_label_gaps(all_labels, num_classes, origin)
    return num_classes


def _warn_untrained(train_labels: Any, all_labels: Any, origin: str) -> None:
    """A label the validation or test split has but training never shows: no example teaches it; say so once."""
    import numpy as np

    untrained = np.setdiff1d(np.unique(all_labels), train_labels)
    if len(untrained):
        log.warning("warning: %s: labels %s occur in the validation or test split but never in training; no example "
                    "teaches them, and their examples count as errors in the figures", origin,
                    shorten(", ".join(map(str, untrained.tolist())), 60))


def _warn_label_gaps(labels: Any, num_classes: int, origin: str) -> None:
    """Labels 0, 2, 4 make a 5-output model with two classes never seen: legal, but rarely meant; say so once."""
    import numpy as np

    seen = np.unique(labels)
    if len(seen) == num_classes:
        return
    # the first few missing values, found among the labels seen (never a set of every value up to the largest one)
    ends = np.concatenate([[-1], seen])
    gaps = [(int(a) + 1, int(b)) for a, b in zip(ends[:-1], ends[1:]) if b - a > 1][:20]
    missing = [v for lo, hi in gaps for v in range(lo, min(hi, lo + 20))][:20]
    log.warning("warning: %s: labels run 0..%d but these values never occur: %s; models get %d outputs, one per "
                "label value; renumber the labels 0..%d if the gaps are not meant", origin, num_classes - 1,
                shorten(", ".join(map(str, missing)), 60), num_classes, len(seen) - 1)


def _from_python(target: str, cfg: Any, seed: int, base_dir: Path, origin: str) -> Any:
    """A user's dataset(s): read once, item by item, to check them and collect labels (never kept whole)."""
    import numpy as np

    from compress.data import DataBundle
    from compress.data.arrays import check_label_range, fingerprint, stratified_split
    from compress.data.datasets import PythonDataset
    from compress.imports import import_object

    fn = import_object(target, base_dir, origin)
    _check_no_arguments(fn, target, origin)
    try:
        result = fn()
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"{origin}: {target}() raised {type(exc).__name__}: {exc}") from exc
    parts = _datasets_of(result, target, origin)
    where = f"{origin}: {target}()"
    labels_task = cfg.task == "classification"
    from compress.data.scan import scan

    scans = [scan(ds, name, where, labels=labels_task) for ds, name in zip(parts, ("train", "validation", "test"))]
    shape = scans[0][1]
    for (_, s, *_), name in zip(scans[1:], ("validation", "test")):
        if s != shape:
            raise CompressError(f"{where}: {name} examples have shape {s}, train has {shape}")
    y = scans[0][0] if labels_task else np.zeros(len(parts[0]), dtype=np.int64)
    val_f = 0.0 if len(parts) > 1 else cfg.val_fraction
    test_f = 0.0 if len(parts) > 2 else cfg.test_fraction
    train_rows, val_rows, test_rows = stratified_split(y, val_f, test_f, seed, where if labels_task else None)
    kind = {"classification": "labels", "tensors": "arrays"}.get(cfg.task, "none")
    how = {"train": "the rest of the train dataset" if val_f or test_f else "train dataset"}
    splits = {"train": PythonDataset(parts[0], train_rows, kind)}
    for k, (part, frac, rows) in enumerate((("val", val_f, val_rows), ("test", test_f, test_rows)), start=1):
        if len(parts) > k:
            splits[part], how[part] = PythonDataset(parts[k], targets=kind), f"{part} dataset"
        elif frac:
            splits[part] = PythonDataset(parts[0], rows, kind)
            how[part] = f"{'stratified ' if labels_task else ''}{100 * frac:g}% of train (seed {seed})"
        else:
            splits[part] = None
    if len(splits["val"]) == 0:
        raise CompressError(f"{origin}: too few examples ({len(y)}) to hold out a validation split")
    num_classes = 0
    if labels_task:
        all_labels = np.concatenate([s[0] for s in scans])
        labelled = all_labels[all_labels >= 0]
        if len(np.unique(labelled)) < 2:
            raise CompressError(f"{origin}: the data has a single class ({np.unique(labelled).tolist()}); need at "
                                "least two")
        num_classes = int(labelled.max()) + 1
        check_label_range(labelled, num_classes, origin)
        if len(parts) > 1:
            _warn_untrained(scans[0][0][train_rows], labelled, origin)
        _warn_label_gaps(labelled, num_classes, origin)
    input_shape = tuple(next(iter(shape.values()))) if isinstance(shape, dict) else shape  # the first input's
    bundle = DataBundle(train=splits["train"], val=splits["val"], test=splits["test"], num_classes=num_classes,
                        input_shape=input_shape, how=how, task=cfg.task, has_targets=kind != "none",
                        fingerprint=fingerprint([target, *[v for s in scans for v in (s[0], s[2])], train_rows,
                                                 val_rows, test_rows]))
    bundle.steady = all(s[2] for s in scans)  # '' where item 0 read differently twice
    if isinstance(shape, dict):
        from compress.data.inputs import NamedInputs

        bundle.inputs = NamedInputs(list(shape), shapes={k: tuple(v) for k, v in shape.items()}, dtypes=scans[0][3])
        bundle.id_peaks = {k: max((s[4][k] for s in scans if k in s[4]), key=lambda p: p[0])
                           for k in {k for s in scans for k in s[4]}}
    return bundle


def _check_no_arguments(fn: Any, target: str, origin: str) -> None:
    """The function is called with no arguments: one that requires some is named so (not a TypeError it raised)."""
    import inspect

    try:
        params = inspect.signature(fn, follow_wrapped=False).parameters.values()  # a decorator may fill them
    except (TypeError, ValueError):  # no signature to read (a builtin): calling it says what it needs
        return
    required = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                                               p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if required:
        raise CompressError(f"{origin}: {target} requires arguments ({', '.join(required)}) but is called with none; "
                            "give them defaults, or add a function without arguments that calls it")


def _datasets_of(result: Any, target: str, origin: str) -> list:
    """The 1 to 3 datasets a python: function returned, or one line on what it returned instead."""
    from collections.abc import Mapping

    parts = list(result) if isinstance(result, (tuple, list)) else [result]
    if len(parts) not in (1, 2, 3):
        raise CompressError(f"{origin}: {target}() must return a dataset, (train, val) or (train, val, test), "
                            f"got {len(parts)} items")
    if all(hasattr(part, "shape") and hasattr(part, "dtype") for part in parts):
        arrays = f"{len(parts)} arrays" if len(parts) > 1 else "an array"
        raise CompressError(f"{origin}: {target}() returned {arrays}, not datasets; return a dataset of (x, y) pairs, "
                            "e.g. torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), or save "
                            "the arrays with numpy.savez and use source = 'npz:FILE'")
    for k, part in enumerate(parts):
        what = ("train", "validation", "test")[k]
        if isinstance(part, Mapping):
            raise CompressError(f"{origin}: {target}() returned a dict (keys {', '.join(map(str, part))}) as the "
                                f"{what} dataset; return a dataset, (train, val) or (train, val, test)")
        if not (hasattr(part, "__len__") and hasattr(part, "__getitem__")):
            kind = "None" if part is None else type(part).__name__
            raise CompressError(f"{origin}: {target}() returned {kind} as the {what} dataset, which "
                                "has no len() or indexing (an IterableDataset, a generator?); return a map-style "
                                "dataset: __len__ and __getitem__, e.g. torch.utils.data.TensorDataset")
    return parts
