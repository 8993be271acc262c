"""Arrays on disk: .npz members memory-mapped (a stored member in place, a compressed one decompressed once into an
unlinked temporary file), the value checks, and the seeded stratified split.

Nothing here reads a whole array into memory: checks walk it in chunks, and the split only needs the labels.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

from compress.errors import CompressError

CHUNK_ROWS = 4096  # rows per chunk when a check or the fingerprint walks an array


def open_npz(path: Path, origin: str) -> dict[str, Any]:
    """Every array of an .npz, memory-mapped; labels and small arrays cost nothing until read."""
    import zipfile

    if not path.is_file():
        raise CompressError(f"{origin}: file not found: {path}")
    try:
        arrays = {}
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                if info.compress_type == zipfile.ZIP_STORED:
                    arrays[name] = _map_stored(path, zf, info)
                else:
                    arrays[name] = _map_compressed(zf, info)
    except CompressError:
        raise
    except Exception as exc:  # zipfile/ValueError variants: one line either way
        raise CompressError(f"{origin}: {path} is not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    return arrays


def _header(zf: Any, info: Any) -> tuple[Any, bool, Any, int]:
    """A member's (shape, fortran order, dtype, header length); Python objects (pickle) are refused, stored or
    compressed alike."""
    from numpy.lib import format as npf

    with zf.open(info) as f:
        version = npf.read_magic(f)
        shape, fortran, dtype = (npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0)(f)
        header = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{info.filename} holds Python objects, which would need pickle; store plain numbers")
    return shape, fortran, dtype, header


def _map_stored(path: Path, zf: Any, info: Any) -> Any:
    import struct

    import numpy as np

    shape, fortran, dtype, header = _header(zf, info)
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
    offset = info.header_offset + 30 + name_len + extra_len + header
    if 0 in shape:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)


def _map_compressed(zf: Any, info: Any) -> Any:
    """Decompress in a stream to a temporary file and map that (the file is unlinked; the mapping keeps it)."""
    import os
    import shutil
    import tempfile

    import numpy as np

    _header(zf, info)
    fd, tmp = tempfile.mkstemp(suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as member:
            shutil.copyfileobj(member, out, 1 << 20)
        return np.load(tmp, mmap_mode="r", allow_pickle=False)
    finally:
        os.unlink(tmp)


def check_xy(x: Any, y: Any, origin: str, xname: str, yname: str) -> None:
    """Shapes, dtypes, labels (integers >= 0) and finite inputs; x is walked in chunks."""
    import numpy as np

    check_x(x, origin, xname)
    values = "; values to regress (any shape) take [data] task = 'tensors'"  # the classification task's checks
    if y.ndim != 1 or len(y) != len(x):
        raise CompressError(f"{origin}: {yname} must be a 1-D label array as long as {xname} "
                            f"({len(x)}), got shape {y.shape}" + (values if len(y) == len(x) else ""))
    if np.issubdtype(y.dtype, np.floating):
        check_bad(y, ~np.isfinite(y) | (y != np.round(y)), origin, yname, "non-integer label", "labels",
                  "store class labels as integers 0..K-1" + values)
    if not np.issubdtype(y.dtype, np.integer):
        raise CompressError(f"{origin}: {yname} must hold integer class labels, got dtype {y.dtype}; "
                            "store class labels as integers 0..K-1")
    check_bad(y, y < 0, origin, yname, "negative label", "labels", "labels must be integers 0..K-1")


def check_x(x: Any, origin: str, xname: str) -> None:
    """A non-empty numeric array of examples with finite values (walked in chunks)."""
    import numpy as np

    if x.ndim < 2 or len(x) == 0:
        raise CompressError(f"{origin}: {xname} must be a non-empty array of examples (N, ...), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise CompressError(f"{origin}: {xname} must be numeric, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.complexfloating):  # float32 of it would drop the imaginary part with a warning
        raise CompressError(f"{origin}: {xname} must hold real numbers, got dtype {x.dtype}; store the real and "
                            "imaginary parts as two channels")
    if np.issubdtype(x.dtype, np.floating):
        first, count = None, 0
        for start in range(0, len(x), CHUNK_ROWS):
            bad = ~np.isfinite(x[start:start + CHUNK_ROWS])
            n = int(bad.sum())
            if n and first is None:
                first = start
            count += n
        if count:
            chunk = np.asarray(x[first:first + CHUNK_ROWS])
            check_bad(chunk, ~np.isfinite(chunk), origin, xname, None, "values", "clean the data or drop those rows",
                      offset=first, total=count)


def check_bad(a: Any, bad: Any, origin: str, name: str, what: str | None, unit: str, fix: str, *,
              offset: int = 0, total: int | None = None) -> None:
    """Raise naming the first bad entry of `a` (by example index along axis 0, plus `offset`) and how many there are.

    `what` None: name the value itself (NaN, inf or -inf), as for inputs; else e.g. "negative label -3".
    """
    import numpy as np

    if not bad.any():
        return
    rows = bad.reshape(len(a), -1)
    first = int(np.flatnonzero(rows.any(axis=1))[0])
    value = np.asarray(a).reshape(len(a), -1)[first][rows[first]][0]
    if what is None:
        shown = "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    else:
        shown = f"{what} {value.item()!r}"
    count = int(bad.sum()) if total is None else total
    raise CompressError(f"{origin}: {name} holds {shown} at index {first + offset} (first of {count} bad {unit}); "
                        f"{fix}")


def stratified_split(y: Any, val_fraction: float, test_fraction: float, seed: int,
                     origin: str | None = None, names: Any = None) -> tuple[Any, Any, Any]:
    """Row indices (train, val, test), each sorted: every class keeps `val_fraction` of its examples in validation
    and `test_fraction` in test (at least one each where the class can spare it, and at least one for training).
    With `origin` (labels that are classes), a class too small for a split made here is named in one warning (by
    its name in `names`, indexed by label, when given)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    val_idx: list[int] = []
    test_idx: list[int] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = _take(len(idx), val_fraction, len(idx) - 1)
        n_test = _take(len(idx), test_fraction, len(idx) - 1 - n_val)
        val_idx.extend(idx[:n_val])
        test_idx.extend(idx[n_val:n_val + n_test])
    mask = np.zeros(len(y), dtype=np.int8)
    mask[val_idx] = 1
    mask[test_idx] = 2
    rows = np.flatnonzero(mask == 0), np.flatnonzero(mask == 1), np.flatnonzero(mask == 2)
    if origin is not None:
        warn_unheld_classes(y, {k: r for k, f, r in (("val", val_fraction, rows[1]), ("test", test_fraction, rows[2]))
                                if f > 0}, origin, (val_fraction, test_fraction), names)
    return rows


def grouped_split(y: Any, keys: Any, val_fraction: float, test_fraction: float, seed: int,
                  origin: str | None = None, names: Any = None,
                  said: Callable[[int, int, int], None] | None = None) -> tuple[Any, Any, Any]:
    """`stratified_split` in which the rows of one key (the same text, the same image file reached by two links) go
    to one split together, split as one row with its first row's label: a held-out row that was trained on too would
    read as learned. With repeats, `said(keys seen more than once, their rows, distinct keys)` is called before the
    split (whose warnings then count distinct keys); without, the rows are those of the plain split."""
    import numpy as np

    first: dict[Any, int] = {}
    group = np.fromiter((first.setdefault(k, len(first)) for k in keys), dtype=np.int64, count=len(y))
    firsts = np.unique(group, return_index=True)[1]
    if len(firsts) == len(y):
        return stratified_split(y, val_fraction, test_fraction, seed, origin, names)
    repeated = np.bincount(group)
    if said is not None:
        said(int((repeated > 1).sum()), int(repeated[repeated > 1].sum()), len(firsts))
    rows = stratified_split(np.asarray(y)[firsts], val_fraction, test_fraction, seed, None, names)
    rows = tuple(np.flatnonzero(np.isin(group, part)) for part in rows)
    if origin is not None:  # on the rows' own labels: a label only on repeats of another's text has no group of its own
        parts = {k: r for k, f, r in (("train", 1.0, rows[0]), ("val", val_fraction, rows[1]),
                                      ("test", test_fraction, rows[2])) if f > 0}
        warn_unheld_classes(y, parts, origin, (val_fraction, test_fraction), names)
    return rows  # type: ignore[return-value]


def smallest_held_class(val_fraction: float, test_fraction: float) -> int:
    """The fewest examples a class needs for stratified_split to give it a row in every split it makes."""
    for n in range(2, 100_000):
        n_val = _take(n, val_fraction, n - 1)
        if (n_val or val_fraction <= 0) and (_take(n, test_fraction, n - 1 - n_val) or test_fraction <= 0):
            return n
    return 100_000


def warn_unheld_classes(y: Any, held: dict[str, Any], origin: str, fractions: tuple[float, float],
                        names: Any = None) -> None:
    """One warning line naming each class the split gave no row of a held-out split it made (`held`: split name ->
    its rows of `y`): a class too small to spare one (at least one row stays for training), whose figures are then
    never measured there."""
    import logging

    import numpy as np

    counts = dict(zip(*np.unique(np.asarray(y), return_counts=True)))
    missing: dict[Any, list[str]] = {}
    for part, rows in held.items():
        seen = set(np.unique(np.asarray(y)[rows]).tolist())
        for c in counts:
            if c.item() not in seen:
                missing.setdefault(c, []).append(part)
    if not missing:
        return
    named = sorted(missing.items())

    def item(c: Any, parts: list[str]) -> str:
        return (f"{c.item() if names is None else names[c]} ({counts[c]} example{'' if counts[c] == 1 else 's'}: "
                f"not in {' or '.join(parts)})")

    items = ", ".join(item(c, parts) for c, parts in named[:10]) + (
        f", and {len(named) - 10} more" if len(named) > 10 else "")
    logging.getLogger("compress").warning(
        "warning: %s: classes a split does not show: %s; accuracy on them is not measured there: add examples (a "
        "class of %d or more gets at least one in every split)", origin, items, smallest_held_class(*fractions))


def _take(n: int, fraction: float, most: int) -> int:
    """round(n * fraction), at least one when the fraction is set, never more than `most` (>= 0)."""
    if fraction <= 0 or most <= 0:
        return 0
    return min(max(int(round(n * fraction)), 1), most)


def fingerprint(parts: list[Any]) -> str:
    """sha256 over arrays (walked in chunks, with shape and dtype) and plain values, in order."""
    import numpy as np

    h = hashlib.sha256()
    for a in parts:
        if isinstance(a, np.ndarray):
            h.update(str(a.shape).encode() + str(a.dtype).encode())
            for start in range(0, max(len(a), 1), CHUNK_ROWS):
                h.update(np.ascontiguousarray(a[start:start + CHUNK_ROWS]).tobytes())
        else:
            h.update(repr(a).encode())
    return h.hexdigest()


MAX_CLASSES = 1_000_000
"""Label values a model gets an output for, at most: past it the labels are ids, not classes numbered 0..K-1."""


def check_label_range(labels: Any, num_classes: int, origin: str) -> None:
    """Labels up to 2**40 (ids used as labels) made a model head of that many outputs: torch failed to allocate it."""
    import numpy as np

    if num_classes > MAX_CLASSES:
        raise CompressError(f"{origin}: labels run up to {num_classes - 1}, and models get one output per label "
                            f"value; renumber the {len(np.unique(labels))} distinct labels 0..K-1 (e.g. "
                            "numpy.unique(y, return_inverse=True)[1])")
