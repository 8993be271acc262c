"""`text:PATH` as the pipeline's data: read, check, split (seeded), tokenize once with the teacher's tokenizer,
cache the token ids, and serve the data contract's Datasets (items `(index, inputs, target)`, inputs a dict of
the tokenizer's keyword tensors, target the int64 label or -1 for the embedding task) in a DataBundle whose
inputs are compress.data.inputs.TokenInputs."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from compress.errors import CompressError

log = logging.getLogger("compress")


def load_text(cfg: Any, *, seed: int, base_dir: Path, origin: str, tokenizer_spec: str | None,
              cache_dir: Path | None = None) -> Any:
    """Read cfg.source ('text:PATH'), tokenize with the hf: folder `tokenizer_spec` (the teacher's)."""
    import numpy as np
    import torch

    from compress.hf.model import load_tokenizer, resolve_dir
    from compress.hf.text import read_text_file, tokenize

    path = Path(cfg.source[len("text:"):])
    path = path if path.is_absolute() else Path(base_dir) / path
    if tokenizer_spec is None or not tokenizer_spec.startswith("hf:"):
        raise CompressError(f"{origin}: text: data is tokenized with the teacher's tokenizer; set [teacher] model = "
                            f"'hf:DIR', got {tokenizer_spec!r}")
    if cfg.task == "classification" and not cfg.label_column:
        raise CompressError(f"{origin}: data.task = 'classification' needs labels: set data.label_column (a .csv, "
                            ".tsv or .jsonl column), or data.task = 'embedding' for unlabelled text")
    rows = read_text_file(path, origin, text_column=cfg.text_column, label_column=cfg.label_column,
                          pair_column=cfg.pair_column, labels=cfg.labels)
    if rows.bad_rows:
        log.warning("warning: %s: %s: skipped %d bad rows (%s)", origin, path, rows.bad_rows,
                    ", ".join(f"{n} {r}, first at line {rows.first_bad[r]}" for r, n in rows.bad.items()))
    folder = resolve_dir(tokenizer_spec, base_dir, origin.replace("data.source", "teacher.model"))
    names = label_order(rows.labels) if rows.labels is not None else ("embedding",)
    if cfg.task == "classification" and len(names) < 2:
        raise CompressError(f"{origin}: {path}: a single label value {list(names)} in column {cfg.label_column!r}; "
                            "classification needs at least two")
    labels = (np.asarray([names.index(v) for v in rows.labels], dtype=np.int64) if cfg.task == "classification"
              else np.full(len(rows.texts), -1, dtype=np.int64))
    parts, grouped = _split(labels, cfg.val_fraction, cfg.test_fraction, seed, origin,
                            names if cfg.task == "classification" else None,
                            texts=rows.texts if rows.pairs is None else list(zip(rows.texts, rows.pairs)), path=path)
    key = _key(path, folder, cfg, seed, grouped=grouped)
    cached = _read_cache(cache_dir, key)
    if cached is None:
        tok = load_tokenizer(folder, origin.replace("data.source", "teacher.model"))
        encoded = tokenize(tok, rows.texts, max_length=cfg.max_length, pairs=rows.pairs)
        _write_cache(cache_dir, key, encoded)
    else:
        encoded = cached
    from compress.data import DataBundle
    from compress.data.inputs import TokenInputs
    from compress.hf.text import text_dataset

    datasets = {s: text_dataset(encoded, torch.from_numpy(labels), torch.from_numpy(i)) for s, i in parts.items()}
    pct = {"val": cfg.val_fraction, "test": cfg.test_fraction}
    how = {s: f"{'stratified ' if cfg.task == 'classification' else ''}{pct[s]:.0%} of {path.name} (seed {seed})"
           for s in parts if s != "train"}
    how["train"] = f"the rest of {path.name}"
    details = {"text": {"file": str(path), "rows": len(rows.texts), "bad_rows": dict(rows.bad),
                        "max_length": cfg.max_length, "tokenizer": str(folder), "task": cfg.task}}
    inputs = TokenInputs(tuple(encoded), texts=[rows.texts[j] for j in parts["val"]], tokenizer_dir=str(folder),
                         max_length=cfg.max_length)
    return DataBundle(train=datasets["train"], val=datasets["val"], test=datasets.get("test"),
                      num_classes=len(names) if cfg.task == "classification" else 0, input_shape=(cfg.max_length,),
                      fingerprint=key, how=how, class_names=list(names) if cfg.task == "classification" else None,
                      details=details, task=cfg.task, inputs=inputs, has_targets=cfg.task == "classification")


def _split(labels, val_fraction: float, test_fraction: float, seed: int, origin: str,
           names: Sequence[str] | None = None, *, texts: Sequence[Any] | None = None,
           path: Path | None = None) -> tuple[dict[str, Any], bool]:
    """(seeded train / val / test row indices, whether repeated texts were grouped), stratified by label
    (compress.data.arrays.stratified_split: every class keeps its fractions, and a class too small for a split is
    named, given `names`; the embedding task's labels are all -1, so it is one random split). Rows of the same text
    (`texts`: a row's text, or its pair) go to one split together, split as one row (its first's label), with one
    warning before the split's own: a test text that was trained on would read as learned. Without repeats the rows
    are those of the plain split."""
    from compress.data.arrays import grouped_split

    seen: list[int] = []

    def said(repeats: int, rows: int, distinct: int) -> None:
        seen.append(distinct)
        log.warning("warning: %s: %s: %d texts appear more than once (%d rows); each text's rows are kept in one "
                    "split, so none is both trained on and scored, and the split counts %d distinct texts",
                    origin, path, repeats, rows, distinct)

    train, val, test = grouped_split(labels, texts if texts is not None else range(len(labels)), val_fraction,
                                     test_fraction, seed, origin if names else None, names, said=said)
    parts = {"train": train, "val": val, **({"test": test} if test_fraction else {})}
    if not all(len(v) for v in parts.values()):
        distinct = f", {seen[0]} distinct" if seen else ""
        raise CompressError(f"{origin}: too few texts ({len(labels)}{distinct}) to hold out validation and test "
                            "splits")
    return parts, bool(seen)


LABEL_ORDER = "numeric when every label is an integer"
"""How labels are numbered, in the data's key: cached stages trained under another numbering are not reused."""


def label_order(labels: Sequence[str]) -> tuple[str, ...]:
    """The class names in output order: sorted, by value when every label is an integer ('2' before '10', so labels
    0..K-1 are their own output index), else as strings."""
    distinct = set(labels)
    try:
        return tuple(sorted(distinct, key=lambda s: (int(s), s)))  # "01" and "1": a fixed order
    except ValueError:
        return tuple(sorted(distinct))


def _key(path: Path, folder: Path, cfg: Any, seed: int, *, grouped: bool = False) -> str:
    h = hashlib.sha256(path.read_bytes())
    names = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
             "special_tokens_map.json", *sorted(p.name for p in folder.glob("*.model")))
    for name in names:
        f = folder / name
        if f.is_file():
            h.update(name.encode() + f.read_bytes())
    # workers change how the rows are read, not the ids: a new value re-tokenized and reran every stage (pinned to
    # the default rather than dropped, so a file that never set it keeps the key it had)
    data = {**cfg.model_dump(mode="json"), "workers": type(cfg).model_fields["workers"].default}
    # a file with repeated texts splits them as groups since 2026-12-08: its stages trained on the row-by-row split
    # are not reused (a file without repeats splits as before, and keeps its key)
    h.update(json.dumps([data, seed, LABEL_ORDER, *(["repeats in one split"] if grouped else [])],
                        sort_keys=True).encode())
    return h.hexdigest()


def _read_cache(cache_dir: Path | None, key: str):
    if cache_dir is None:
        return None
    f = Path(cache_dir) / f"tokens-{key[:16]}.safetensors"
    if not f.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(f))
        with safe_open(str(f), framework="pt") as handle:
            order = ((handle.metadata() or {}).get("order") or "").split(",")
    except Exception:  # a damaged cache is re-made, never trusted
        return None
    if sorted(order) != sorted(tensors):
        return None  # written before the order was kept: re-made
    # the tokenizer's order: the inputs are named, exported and fed positionally in it (safetensors sorts keys)
    return {k: tensors[k] for k in order}


def _write_cache(cache_dir: Path | None, key: str, encoded: dict) -> None:
    if cache_dir is None:
        return
    from safetensors.torch import save_file

    from compress.cache import atomic_path

    with atomic_path(Path(cache_dir) / f"tokens-{key[:16]}.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in encoded.items()}, str(tmp), metadata={"order": ",".join(encoded)})
