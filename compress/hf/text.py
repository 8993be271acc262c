"""`text:PATH` data: read texts (and labels) from .txt / .csv / .tsv / .jsonl, tokenize once, serve dict inputs.

- .txt: one example a line, no labels (the embedding task). Blank lines are skipped (paragraph spacing).
- .csv / .tsv (header row) and .jsonl (one object a line): `text_column`, optional `label_column` and
  `pair_column` (the second text of a sentence-pair task). A .csv field may be quoted (and hold commas and line
  breaks). A .tsv is read with quoting when the whole file parses strictly that way (Python's csv module and
  pandas quote a field holding a tab, a line break or a quote mark), else without: a quote mark is then text
  (GLUE's own readers do the same), so an unbalanced one cannot swallow the rows after it. A row with more fields
  than the header is a bad row.
Lines end at "\n" (or "\r\n") only: a text may hold U+2028 or a form feed. The suffix's case does not matter.
Bad rows (empty text, a missing column, a label outside the known set, an unparsable line) are counted and
reported; a file where most rows are bad is an error, since it is almost certainly the wrong file or column.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from compress.errors import CompressError

SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl")
MAX_BAD_FRACTION = 0.5


@dataclass
class TextRows:
    """What a text file held: texts, optional pair texts and string labels, and the bad rows it skipped."""

    texts: list[str]
    pairs: list[str] | None = None
    labels: list[str] | None = None
    bad: dict[str, int] = field(default_factory=dict)
    """Reason -> count of skipped rows."""
    first_bad: dict[str, int] = field(default_factory=dict)
    """Reason -> 1-based line of the first row skipped for it."""

    @property
    def bad_rows(self) -> int:
        return sum(self.bad.values())


def read_text_file(path: Path, origin: str, *, text_column: str = "text", label_column: str | None = None,
                   pair_column: str | None = None, labels: Sequence[str] | None = None) -> TextRows:
    """Read `path`; `labels` (when given) is the closed set of allowed label strings, others are bad rows."""
    if path.is_dir():
        raise CompressError(f"{origin}: {path} is a folder; text: takes one {', '.join(SUFFIXES)} file "
                            "(e.g. source = \"text:sentences.txt\")")
    if not path.is_file():
        raise CompressError(f"{origin}: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CompressError(f"{origin}: {path}: expected a {', '.join(SUFFIXES)} file, got {path.suffix or 'none'}")
    try:
        raw = path.read_text(encoding="utf-8-sig")  # a byte-order mark would join the first column's name
    except UnicodeDecodeError as exc:
        raise CompressError(f"{origin}: {path} is not UTF-8 text (byte {exc.start})") from exc
    rows = TextRows(texts=[], pairs=[] if pair_column else None, labels=[] if label_column else None)
    if suffix == ".txt":
        if label_column or pair_column:
            raise CompressError(f"{origin}: {path}: a .txt file holds one text a line and no columns; use .csv, "
                                ".tsv or .jsonl for labels or sentence pairs")
        records = ((n, {"text": line}) for n, line in enumerate(_lines(raw), 1) if line.strip())
        text_column = "text"
    elif suffix == ".jsonl":
        records = _jsonl(raw)
    else:
        records = _table(raw, "\t" if suffix == ".tsv" else ",", path, origin,
                         [c for c in (text_column, label_column, pair_column) if c])
    allowed = set(labels) if labels is not None else None
    total = 0
    for line, rec in records:
        total += 1
        reason = _take(rec, rows, text_column, label_column, pair_column, allowed)
        if reason:
            rows.bad[reason] = rows.bad.get(reason, 0) + 1
            rows.first_bad.setdefault(reason, line)
    if total == 0 or rows.bad_rows > MAX_BAD_FRACTION * total:
        detail = "; ".join(f"{n} {r} (first at line {rows.first_bad[r]})" for r, n in rows.bad.items())
        columns = "" if suffix == ".txt" else " and data.text_column / data.label_column"
        what = f"{rows.bad_rows} of {total} rows are bad ({detail})" if total else "no texts in it"
        raise CompressError(f"{origin}: {path}: {what}; check the file{columns}")
    return rows


def _take(rec: Any, rows: TextRows, text_column: str, label_column: str | None, pair_column: str | None,
          allowed: set[str] | None) -> str | None:
    """Append the record to `rows`, or return why it is bad."""
    if not isinstance(rec, dict):
        return "unparsable rows"
    text = rec.get(text_column)
    if not isinstance(text, str) or not text.strip():
        return "empty texts"
    pair = rec.get(pair_column) if pair_column else None
    if pair_column and (not isinstance(pair, str) or not pair.strip()):
        return "empty pair texts"
    label = None
    if label_column:
        label = rec.get(label_column)
        if label is None or str(label).strip() == "":
            return "missing labels"
        if isinstance(label, float) and label.is_integer():  # JSON's 2.0 is the class of 2, not another
            label = int(label)
        label = str(label).strip()
        if allowed is not None and label not in allowed:
            return "unknown labels"
    rows.texts.append(text.strip())
    if rows.pairs is not None:
        rows.pairs.append(pair.strip())
    if rows.labels is not None:
        rows.labels.append(label)
    return None


def _lines(raw: str) -> list[str]:
    """The file's lines: split at "\n" alone (str.splitlines also splits at U+2028, U+0085 and form feeds, which a
    text may hold), a trailing "\r" dropped, no empty last line for a final newline."""
    lines = [line.removesuffix("\r") for line in raw.split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines


def _jsonl(raw: str):
    for n, line in enumerate(_lines(raw), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError:
            yield n, None


def _table(raw: str, delimiter: str, path: Path, origin: str, needed: list[str]):
    """Rows of a .csv (quoted fields may hold line breaks) or a .tsv (no quoting), each with the line it starts on."""
    import io

    quoting = csv.QUOTE_MINIMAL if delimiter == "," or _quoted(raw, delimiter) else csv.QUOTE_NONE
    reader = csv.DictReader(io.StringIO(raw, newline=""), delimiter=delimiter, quoting=quoting)
    header = reader.fieldnames or []
    missing = [c for c in needed if c not in header]
    if missing:
        raise CompressError(f"{origin}: {path}: no column {missing[0]!r} in the header (columns: "
                            f"{', '.join(header) or 'none'}); set data.text_column / data.label_column")
    start = reader.line_num + 1
    try:
        for rec in reader:
            yield start, (None if None in rec else rec)  # more fields than the header: the columns cannot be trusted
            start = reader.line_num + 1
    except csv.Error as exc:  # an unbalanced quote in a .csv runs to the end of the file
        raise CompressError(f"{origin}: {path}: line {start}: {exc}; check the quoting of that row") from exc


def _quoted(raw: str, delimiter: str) -> bool:
    """Whether a .tsv was written with CSV quoting: some field opens with a quote mark, and the file parses strictly
    that way into rows of the header's width."""
    import io

    if '"' not in raw:
        return False
    try:
        rows = list(csv.reader(io.StringIO(raw, newline=""), delimiter=delimiter, strict=True))
    except csv.Error:
        return False
    width = len(rows[0]) if rows else 0
    return all(len(r) in (0, width) for r in rows)


def tokenize(tokenizer: Any, texts: Sequence[str], *, max_length: int, pairs: Sequence[str] | None = None,
             batch: int = 2048) -> dict[str, Any]:
    """Token ids, attention mask (and token type ids when the tokenizer makes them), padded to `max_length`,
    as int32 tensors (half the memory of int64; widened per item)."""
    import torch

    parts: dict[str, list] = {}
    for i in range(0, len(texts), batch):
        second = list(pairs[i:i + batch]) if pairs is not None else None
        enc = tokenizer(list(texts[i:i + batch]), second, padding="max_length", truncation=True,
                        max_length=max_length, return_tensors="pt")
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key in enc:
                parts.setdefault(key, []).append(enc[key].to(torch.int32))
    return {k: torch.cat(v) for k, v in parts.items()}


def text_dataset(encoded: dict[str, Any], targets: Any, indices: Any = None):
    """A torch Dataset over `encoded` rows (optionally a subset `indices`): items are (index, inputs, target) with
    inputs a dict of int64 tensors (the data contract's keyword inputs) and target an int64 (-1 without labels)."""
    import torch

    class TextDataset(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.rows = torch.arange(len(targets)) if indices is None else torch.as_tensor(indices)

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int):
            r = int(self.rows[i])
            return i, {k: v[r].long() for k, v in encoded.items()}, targets[r]

        def lengths(self):
            """Real tokens of each row (its attention mask's sum): what length-grouped batches sort by."""
            return encoded["attention_mask"][self.rows].sum(1)

        def targets(self):
            return targets[self.rows].numpy()

    return TextDataset()


def bench_feed(tokenizer: Any, texts: Sequence[str], names: Sequence[str], *, batch: int, seq_length: int):
    """Benchmark inputs of shape (batch, seq_length): real text (validation sentences run together until
    seq_length tokens are filled, so every id is inside the vocabulary and the mask is all real tokens)."""
    import numpy as np

    rows, k = [], 0
    for _ in range(batch):
        words: list[str] = []
        while len(tokenizer(" ".join(words))["input_ids"]) < seq_length and k < 10 * len(texts) + 100:
            words.append(texts[k % len(texts)])
            k += 1
        rows.append(" ".join(words))
    enc = tokenizer(rows, padding="max_length", truncation=True, max_length=seq_length, return_tensors="np")
    return {n: np.ascontiguousarray(enc[n].astype(np.int64)) for n in names}
