"""Data sources: the built-in `digits`, `npz:PATH`, and `python:module:function`. Deterministic split from the seed.

Everything is materialised as float32/int64 tensors: the pipelines this tool targets (edge classifiers) fit in memory,
and one in-memory copy makes the teacher's logits cacheable and the split reproducible.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from compress.errors import CompressError, shorten
from compress.section import Section


class DataConfig(Section):
    """[data]: where examples come from and how the validation split is made."""

    source: str = Field("digits", description="'digits' (built-in, offline), 'npz:PATH' (arrays x, y and optional "
                        "x_val, y_val), 'text:PATH' (.txt one text a line, or .csv/.tsv/.jsonl with text_column and "
                        "label_column; tokenized with the teacher's hf: tokenizer) or 'python:module:function' "
                        "returning (train, val) torch datasets or one dataset.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Fraction held out for validation when the source has "
                                "no validation split of its own (stratified, from the pipeline seed).")
    batch_size: int = Field(64, ge=1, le=65536, description="Mini-batch size for training and evaluation.")
    task: Literal["classification", "embedding"] = Field("classification", description="text: sources only: "
                                                         "'classification' (labels, KD on logits) or 'embedding' "
                                                         "(no labels; the student learns the teacher's pooled "
                                                         "sentence embeddings, scored by cosine and "
                                                         "neighbour_overlap@10).")
    text_column: str = Field("text", min_length=1, description="text: .csv/.tsv/.jsonl: the column holding the text.")
    label_column: str | None = Field(None, description="text: .csv/.tsv/.jsonl: the column holding the label "
                                     "(any strings; numbered in sorted order). Required for classification.")
    pair_column: str | None = Field(None, description="text: .csv/.tsv/.jsonl: a second text column for sentence-pair "
                                    "tasks (tokenized as a pair with the first).")
    labels: tuple[str, ...] | None = Field(None, description="text: the allowed label values; rows with any other "
                                           "label are counted as bad. Default: every label that occurs.")
    max_length: int = Field(128, ge=8, le=4096, description="text: tokens per example after truncation (and the "
                            "padded length of the cached token ids).")

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if v == "digits" or v.startswith(("npz:", "python:", "text:")):
            return v
        raise ValueError(f"expected 'digits', 'npz:PATH', 'text:PATH' or 'python:module:function', got "
                         f"{v!r}{_source_hint(v)}")


def _source_hint(v: str) -> str:
    """'; did you mean 'npz:cancer.npz'?' for the usual slips: a bare file, a missing or misspelt prefix."""
    import difflib

    scheme, colon, rest = v.partition(":")
    if colon and rest:
        fixed = difflib.get_close_matches(scheme, ["npz", "python", "text"], n=1, cutoff=0.5)
        if fixed:
            return f"; did you mean {fixed[0] + ':' + rest!r}?"
        if ":" not in rest:  # module:function without its prefix
            return f"; did you mean {'python:' + v!r}?"
    elif v.lower().endswith(".npz"):
        return f"; did you mean {'npz:' + v!r}?"
    elif difflib.get_close_matches(v, ["digits"], n=1, cutoff=0.6):
        return "; did you mean 'digits'?"
    return ""


@dataclass
class DataBundle:
    """Train and validation tensors plus what models need to know about them."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    num_classes: int
    input_shape: tuple[int, ...]
    fingerprint: str

    def example(self, batch: int = 1):
        """A real validation batch (export and benchmarks use real inputs, not noise)."""
        import torch

        idx = torch.arange(batch) % len(self.x_val)
        return self.x_val[idx]


def load_data(cfg: DataConfig, *, seed: int, base_dir: Path, origin: str = "data.source") -> DataBundle:
    """Load the configured source and split it. `base_dir` is the TOML's folder (relative paths resolve there)."""
    import numpy as np

    src = cfg.source
    where = origin  # what a bad-value message names: the key, and the file or function the arrays came from
    if src == "digits":
        arrays = _read_npz(Path(__file__).parent / "data" / "digits.npz", origin)
        arrays["x"] = arrays["x"].astype(np.float32)[:, None, :, :] / 16.0
    elif src.startswith("npz:"):
        path = Path(src[4:])
        path = path if path.is_absolute() else base_dir / path
        arrays = _read_npz(path, origin)
        where = f"{origin}: {path}"
    else:
        arrays = _from_python(src[len("python:"):], base_dir, origin)
        where = f"{origin}: {src[len('python:'):]}()"
    bundle = _bundle(arrays, cfg.val_fraction, seed, origin, where=where)
    _warn_label_gaps(bundle, origin)
    return bundle


def _warn_label_gaps(bundle: DataBundle, origin: str) -> None:
    """Labels 0, 2, 4 make a 5-output model with two classes never seen: legal, but rarely meant; say so once."""
    import logging

    import torch

    seen = torch.unique(torch.cat([bundle.y_train, bundle.y_val])).tolist()
    missing = sorted(set(range(bundle.num_classes)) - set(seen))
    if missing:
        logging.getLogger("compress").warning(
            "warning: %s: labels run 0..%d but these values never occur: %s; models get %d outputs, one per "
            "label value; renumber the labels 0..%d if the gaps are not meant", origin, bundle.num_classes - 1,
            shorten(", ".join(map(str, missing)), 60), bundle.num_classes, len(seen) - 1)


def _read_npz(path: Path, origin: str) -> dict:
    import numpy as np

    if not path.is_file():
        raise CompressError(f"{origin}: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/ValueError variants: one line either way
        raise CompressError(f"{origin}: {path} is not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    for key in ("x", "y"):
        if key not in arrays:
            raise CompressError(f"{origin}: {path} has no array {key!r} (found {sorted(arrays)}); expected x and y, "
                                "optionally x_val and y_val")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise CompressError(f"{origin}: {path} must have both x_val and y_val, or neither")
    return arrays


def _from_python(target: str, base_dir: Path, origin: str) -> dict:
    import numpy as np

    from compress.imports import import_object

    fn = import_object(target, base_dir, origin)
    try:
        result = fn()
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"{origin}: {target}() raised {type(exc).__name__}: {exc}") from exc
    parts = result if isinstance(result, (tuple, list)) else (result,)
    if len(parts) not in (1, 2):
        raise CompressError(f"{origin}: {target}() must return a dataset or (train, val), got {len(parts)} items")

    def materialise(ds, name: str):
        try:
            xs, ys = zip(*(ds[i] for i in range(len(ds))))
        except Exception as exc:
            raise CompressError(f"{origin}: could not read the {name} dataset from {target}() as (x, y) pairs: "
                                f"{type(exc).__name__}: {exc}") from exc
        return np.stack([np.asarray(x, dtype=np.float32) for x in xs]), np.asarray([int(y) for y in ys])

    arrays = {}
    arrays["x"], arrays["y"] = materialise(parts[0], "train")
    if len(parts) == 2:
        arrays["x_val"], arrays["y_val"] = materialise(parts[1], "validation")
    return arrays


def _bundle(arrays: dict, val_fraction: float, seed: int, origin: str, *, where: str | None = None) -> DataBundle:
    """Check and split the arrays; `where` (origin plus the file or function) is what bad-value messages name."""
    import numpy as np
    import torch

    where = where or origin
    x, y = np.asarray(arrays["x"]), np.asarray(arrays["y"])
    _check_xy(x, y, where, "x", "y")
    if "x_val" in arrays:
        xv, yv = np.asarray(arrays["x_val"]), np.asarray(arrays["y_val"])
        _check_xy(xv, yv, where, "x_val", "y_val")
        if xv.shape[1:] != x.shape[1:]:
            raise CompressError(f"{origin}: x_val examples have shape {xv.shape[1:]}, x has {x.shape[1:]}")
        xt, yt = x, y
    else:
        # Stratified: every class keeps val_fraction of its examples in validation (at least one where it can).
        rng = np.random.default_rng(seed)
        val_idx = []
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            n_val = int(round(len(idx) * val_fraction))
            val_idx.extend(idx[: min(max(n_val, 1), len(idx) - 1)] if len(idx) > 1 else [])
        mask = np.zeros(len(y), dtype=bool)
        mask[val_idx] = True
        xt, yt, xv, yv = x[~mask], y[~mask], x[mask], y[mask]
        if len(xv) == 0:
            raise CompressError(f"{origin}: too few examples ({len(y)}) to hold out a validation split")
    classes = np.unique(np.concatenate([yt, yv]))
    if len(classes) < 2:
        raise CompressError(f"{origin}: the data has a single class ({classes.tolist()}); need at least two")
    num_classes = int(max(yt.max(), yv.max())) + 1
    h = hashlib.sha256()
    for a in (xt, yt, xv, yv):
        a = np.ascontiguousarray(a)
        h.update(str(a.shape).encode() + str(a.dtype).encode())
        h.update(a.tobytes())
    return DataBundle(
        x_train=torch.from_numpy(np.ascontiguousarray(xt, dtype=np.float32)),
        y_train=torch.from_numpy(yt.astype(np.int64)),
        x_val=torch.from_numpy(np.ascontiguousarray(xv, dtype=np.float32)),
        y_val=torch.from_numpy(yv.astype(np.int64)),
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in xt.shape[1:]),
        fingerprint=h.hexdigest(),
    )


def _check_xy(x, y, origin: str, xname: str, yname: str) -> None:
    import numpy as np

    if x.ndim < 2 or len(x) == 0:
        raise CompressError(f"{origin}: {xname} must be a non-empty array of examples (N, ...), got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise CompressError(f"{origin}: {yname} must be a 1-D label array as long as {xname} "
                            f"({len(x)}), got shape {y.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise CompressError(f"{origin}: {xname} must be numeric, got dtype {x.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        _check_bad(y, ~np.isfinite(y) | (y != np.round(y)), origin, yname, "non-integer label", "labels",
                   "store class labels as integers 0..K-1")
    if not np.issubdtype(y.dtype, np.integer):
        raise CompressError(f"{origin}: {yname} must hold integer class labels, got dtype {y.dtype}; "
                            "store class labels as integers 0..K-1")
    _check_bad(y, y < 0, origin, yname, "negative label", "labels", "labels must be integers 0..K-1")
    if np.issubdtype(x.dtype, np.floating):
        _check_bad(x, ~np.isfinite(x), origin, xname, None, "values", "clean the data or drop those rows")


def _check_bad(a, bad, origin: str, name: str, what: str | None, unit: str, fix: str) -> None:
    """Raise naming the first bad entry of `a` (by example index along axis 0) and how many there are.

    `what` None: name the value itself (NaN, inf or -inf), as for inputs; else e.g. "negative label -3".
    """
    import numpy as np

    if not bad.any():
        return
    rows = bad.reshape(len(a), -1)
    first = int(np.flatnonzero(rows.any(axis=1))[0])
    value = a.reshape(len(a), -1)[first][rows[first]][0]
    if what is None:
        shown = "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    else:
        shown = f"{what} {value.item()!r}"
    raise CompressError(f"{origin}: {name} holds {shown} at index {first} (first of {int(bad.sum())} bad {unit}); "
                        f"{fix}")
