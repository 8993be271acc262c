"""Data: the [data] section, the sources (built-in `digits`, `npz:PATH`, `python:module:function`), the seeded
stratified train/val/test split, and the one DataLoader every training and evaluation path uses.

Every source yields `(index, inputs, target)` items (compress.data.datasets) read one at a time: .npz arrays are
memory-mapped, a `python:` dataset is indexed as it is. Nothing here holds the whole training set in memory.
Validation chooses (best epoch, early stop, gates, the final pick); the test split, which no choice sees, is where
the report's figures come from.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field, field_validator, model_validator

from compress.section import Section


class DataConfig(Section):
    """[data]: where examples come from, how the validation and test splits are made, and how batches are read."""

    source: str = Field("digits", description="'digits' (built-in, offline), 'npz:PATH' (arrays x, y and optional "
                        "x_val, y_val, x_test, y_test; memory-mapped), 'images:DIR' (one sub-folder per class, or "
                        "DIR/train/<class>/ with optional DIR/val/ and DIR/test/; png, jpg, jpeg, bmp, webp), "
                        "'text:PATH' (.txt one text a line, or .csv/.tsv/.jsonl with text_column and label_column; "
                        "tokenized with the teacher's hf: tokenizer) or 'python:module:function' returning a torch "
                        "dataset of (x, y) pairs, or (train, val) or (train, val, test).")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Fraction held out for validation when the source has "
                                "no validation split of its own (stratified, from the pipeline seed). Validation "
                                "picks the best epoch, stops training early, gates quantization and picks the "
                                "final model.")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="Fraction held out as the test split when the source "
                                 "has none of its own (stratified, from the pipeline seed); no choice sees it, and "
                                 "every figure in the report is measured on it. 0: no test split (the report then "
                                 "shows validation figures and says so). Repeats stay in one split, for both "
                                 "fractions: the same text (for text pairs, the same pair of texts) or links to one "
                                 "image file, said in one warning line.")
    batch_size: int = Field(64, ge=1, le=65536, description="Mini-batch size for training and evaluation.")
    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes that read (and decode, augment) "
                         "examples beside training; 0 reads them in the training process.")
    task: Literal["classification", "embedding", "tensors"] = Field(
        "classification", description="What the outputs mean: 'classification' (one (N, K) logits output, integer "
        "labels, KD on logits, accuracy), 'embedding' (one (N, D) embedding, no labels; the student learns the "
        "teacher's, scored by cosine and neighbour_overlap@10) or 'tensors' (any outputs of any shape, a tuple or "
        "dict from forward; labels optional and of any shape: npz y, or y_NAME per target; per-output MSE to the "
        "teacher, scored by cosine and SQNR per output, or by your [evaluate] metric).")
    text_column: str = Field("text", min_length=1, description="text: .csv/.tsv/.jsonl: the column holding the text.")
    label_column: str | None = Field(None, description="text: .csv/.tsv/.jsonl: the column holding the label "
                                     "(any strings; numbered in sorted order, by value when every label is an "
                                     "integer). Required for classification.")
    pair_column: str | None = Field(None, description="text: .csv/.tsv/.jsonl: a second text column for "
                                    "sentence-pair tasks (tokenized as a pair with the first).")
    labels: tuple[str, ...] | None = Field(None, description="text: the allowed label values; rows with any other "
                                           "label are counted as bad. Default: every label that occurs.")
    max_length: int = Field(128, ge=8, le=4096, description="text: tokens per example after truncation (and the "
                            "padded length of the cached token ids).")

    image_size: int | tuple[int, int] | None = Field(None, description="images: side (or [height, width]) every "
                                                     "image is resized to; default the first image's size.")
    mean: tuple[float, float, float] | None = Field(None, description="images: per-channel (RGB) mean subtracted "
                                                    "after scaling to [0, 1]; with std. Default: computed from 512 "
                                                    "training images and recorded in the report.")
    std: tuple[float, float, float] | None = Field(None, description="images: per-channel (RGB) standard deviation "
                                                   "divided by; with mean.")
    augment: tuple[Literal["flip", "crop", "jitter"], ...] = Field((), description="images: training augmentations "
                                                                   "('flip' horizontal, 'crop' pad 1/8 and crop back, "
                                                                   "'jitter' brightness/contrast +-20%). With any, "
                                                                   "the teacher runs on each augmented batch.")
    max_bad_fraction: float = Field(0.01, ge=0, le=1, description="images: unreadable files are reported and "
                                    "skipped up to this fraction of all files; past it the run stops (exit 2). The "
                                    "same holds for a file that passed the scan but fails to decode during the run "
                                    "(fraction of its split).")

    def check_files(self, base_dir: Path, origin: str) -> None:
        """A source that names one file (npz:) must find it, relative to the TOML's folder (`base_dir`)."""
        from compress.errors import CompressError

        scheme, _, rest = self.source.partition(":")
        if scheme == "npz":
            path = Path(rest) if Path(rest).is_absolute() else Path(base_dir) / rest
            if not path.is_file():
                raise CompressError(f"{origin}: file not found: {path}")

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if v == "digits" or v.startswith(("npz:", "python:", "images:", "text:")):
            return v
        raise ValueError("expected 'digits', 'npz:PATH', 'images:DIR', 'text:PATH' or 'python:module:function', got "
                         f"{v!r}{_source_hint(v)}")

    @model_validator(mode="after")
    def _fractions(self) -> "DataConfig":
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then both are computed from the training images)")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {list(self.std)}")
        sides = [self.image_size] if isinstance(self.image_size, int) else list(self.image_size or ())
        if any(side < 1 for side in sides):
            raise ValueError(f"image_size: expected a side (or [height, width]) of at least 1 pixel, got "
                             f"{self.image_size}")
        if not self.source.startswith("images:") and (self.augment or self.image_size is not None or self.mean):
            raise ValueError("image_size, mean, std and augment apply to source = 'images:DIR' only")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(f"val_fraction + test_fraction must leave at least 10% for training, got "
                             f"{self.val_fraction:g} + {self.test_fraction:g}")
        return self


def _source_hint(v: str) -> str:
    """'; did you mean 'npz:cancer.npz'?' for the usual slips: a bare file, a missing or misspelt prefix."""
    import difflib

    scheme, colon, rest = v.partition(":")
    if colon and rest:
        fixed = difflib.get_close_matches(scheme, ["npz", "python", "images", "text"], n=1, cutoff=0.5)
        if fixed:
            return f"; did you mean {fixed[0] + ':' + rest!r}?"
        if ":" not in rest:  # module:function without its prefix
            return f"; did you mean {'python:' + v!r}?"
    elif v.lower().endswith(".npz"):
        return f"; did you mean {'npz:' + v!r}?"
    elif difflib.get_close_matches(v, ["digits"], n=1, cutoff=0.6):
        return "; did you mean 'digits'?"
    return ""


SPLITS = ("train", "val", "test")


@dataclass
class DataBundle:
    """The train, validation and (optional) test datasets, plus what models and the report need to know."""

    train: Any
    val: Any
    test: Any
    num_classes: int
    input_shape: tuple[int, ...]
    fingerprint: str
    how: dict[str, str] = field(default_factory=dict)
    """How each split was made: 'x_val/y_val', 'stratified 20% of x (seed 0)', 'folder val/'."""
    class_names: list[str] | None = None
    train_plain: Any = None
    """The training split without augmentation (what the teacher's cached outputs and calibration read)."""
    augment: tuple[str, ...] = ()
    workers: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    """Source-specific facts for the report (image size, mean/std and where they came from, skipped files)."""
    task: str = "classification"
    inputs: Any = None
    """compress.data.inputs: what the models eat (one tensor, named tensors, token ids): export names, feeds."""
    has_targets: bool = True
    """Whether items carry targets (labels, or arrays for the tensors task); without, targets are -1."""
    id_peaks: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Integer named inputs' largest values and where ({name: (value, 'validation example 5')}): ids past the rows of
    the nn.Embedding they feed."""
    steady: bool = True
    """Whether an item reads the same twice (False: a python: dataset with random state inside, which a search must
    load afresh for each trial to start it from the same state; compress.config.held)."""

    def __post_init__(self) -> None:
        if self.train_plain is None:
            self.train_plain = self.train
        if self.inputs is None:
            from compress.data.inputs import TensorInputs

            self.inputs = TensorInputs()

    def split(self, name: str) -> Any:
        return {"train": self.train_plain, "val": self.val, "test": self.test}[name]

    @property
    def eval_split(self) -> str:
        """Where report figures come from: 'test' when there is one, else 'val'."""
        return "test" if self.test is not None and len(self.test) else "val"

    def sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)) if self.split(name) is not None else 0 for name in SPLITS}

    def describe(self) -> dict[str, Any]:
        """The report's `data` section."""
        return {"splits": {name: {"size": size, "how": self.how.get(name, "")} for name, size in self.sizes().items()},
                "evaluated_on": self.eval_split, "selection_on": "val", "class_names": self.class_names,
                "augment": list(self.augment), **self.details}

    def batches(self, split: str, batch_size: int = 256) -> Iterator[tuple[Any, Any, Any]]:
        """`(index, inputs, target)` batches of a split, in order, without augmentation."""
        yield from loader(self.split(split), batch_size=batch_size, shuffle=False, seed=0, workers=self.workers)

    def feeds(self, split: str, *, rows: Any = None, batch_size: int = 256) -> Iterator[dict[str, Any]]:
        """ONNX Runtime feeds (numpy, by input name) of a split's rows `rows` (all when None), in order."""
        import torch

        ds = self.split(split)
        if rows is not None:
            ds = torch.utils.data.Subset(ds, list(rows))
        for _, x, _ in loader(ds, batch_size=batch_size, shuffle=False, seed=0, workers=self.workers):
            yield self.inputs.as_feed(x)

    def targets(self, split: str) -> Any:
        """A split's targets in data order, as the source gave them: an int label array, an array of any shape, a
        dict of arrays (several targets), or None when the data has none."""
        if not self.has_targets:
            return None
        ds = self.split(split)
        if hasattr(ds, "targets"):
            return ds.targets()
        from compress.data.datasets import stack_targets

        return stack_targets([t for _, _, t in loader(ds, batch_size=256, shuffle=False, seed=0,
                                                       workers=self.workers)])

    def arrays(self, split: str, limit: int | None = None, rows: Any = None, spill: Any = None) -> tuple[Any, Any]:
        """Examples `rows` of a split (else the first `limit`, else all) as whole numpy arrays: ({input name:
        array}, targets). For ONNX Runtime runs that want one array per input (the QNN target). With `spill` (a
        folder), float inputs are written there batch by batch and come back memory-mapped, so a split of any size
        is read without holding it in memory."""
        import numpy as np
        import torch

        from compress.data.datasets import stack_targets

        ds = self.split(split)
        if rows is None:
            rows = range(len(ds) if limit is None else min(limit, len(ds)))
        parts: dict[str, list] = {}
        mapped: dict[str, Any] = {}
        filled, ys = 0, []
        for _, x, y in loader(torch.utils.data.Subset(ds, list(rows)), batch_size=256, shuffle=False, seed=0,
                              workers=self.workers):
            ys.append(y)
            feed = self.inputs.as_feed(x) if self.inputs.kind != "tokens" else {
                n: x[n].numpy().astype(np.int64) for n in self.inputs.names}
            for name, value in feed.items():
                if spill is None or not np.issubdtype(value.dtype, np.floating):
                    parts.setdefault(name, []).append(value)
                    continue
                if name not in mapped:
                    mapped[name] = np.lib.format.open_memmap(Path(spill) / f"{split}-{name}.npy", mode="w+",
                                                             dtype=value.dtype, shape=(len(rows), *value.shape[1:]))
                mapped[name][filled:filled + len(value)] = value
            filled += len(next(iter(feed.values())))
        out = {name: np.concatenate(chunks) for name, chunks in parts.items()}
        for name, array in mapped.items():
            array.flush()
            del array  # read back read-only, cut to what was read (items that no longer decode are dropped)
            out[name] = np.load(Path(spill) / f"{split}-{name}.npy", mmap_mode="r")[:filled]
        mapped.clear()
        targets = stack_targets(ys) if self.has_targets else None
        return {n: out[n] for n in self.inputs.names if n in out}, targets

    def calibration_rows(self, samples: int) -> Any:
        """The training rows quantization calibrates on: a fixed random subset (seed 0) of `samples` examples."""
        import numpy as np

        n = len(self.train_plain)
        return np.sort(np.random.default_rng(0).permutation(n)[:min(samples, n)])

    def example(self, batch: int = 1) -> Any:
        """A real validation batch (export and benchmarks use real inputs, not noise): a Tensor or a dict."""
        import torch

        items = [self.val[i % len(self.val)][1] for i in range(batch)]
        if isinstance(items[0], dict):
            return {k: torch.stack([it[k] for it in items]) for k in items[0]}
        return torch.stack(items)

    def describe_inputs(self) -> dict[str, Any]:
        """The report's `inputs` section."""
        return self.inputs.describe(self.input_shape)


def load_data(cfg: DataConfig, *, seed: int, base_dir: Path, origin: str = "data.source",
              tokenizer: str | None = None, cache_dir: Path | None = None) -> DataBundle:
    """Open the configured source and split it. `base_dir` is the TOML's folder (relative paths resolve there);
    `tokenizer` the hf: spec whose tokenizer reads `text:` data (the teacher's), `cache_dir` where its token ids
    are cached."""
    from compress.data.sources import open_source

    with _warnings_said() as said:
        bundle = open_source(cfg, seed=seed, base_dir=base_dir, origin=origin, tokenizer=tokenizer,
                             cache_dir=cache_dir)
    if said:  # what the console said of the data (labels never trained on, empty class folders) goes in the report
        bundle.details["warnings"] = [*bundle.details.get("warnings", []), *said]
    return bundle


@contextlib.contextmanager
def _warnings_said() -> Iterator[list[str]]:
    """The warning lines the 'compress' logger gives while the block runs, without the 'warning: ' prefix."""
    import logging

    said: list[str] = []
    logger = logging.getLogger("compress")
    # logging prints a warning through its last resort only where no logger on the way has a handler: this one
    # would silence the console line, so it hands the record on where nothing else would print it
    unheard = not any(lg.handlers for lg in (logger, logging.getLogger()))

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                said.append(record.getMessage().removeprefix("warning: "))
            if unheard and logging.lastResort is not None and record.levelno >= logging.lastResort.level:
                logging.lastResort.handle(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        yield said
    finally:
        logger.removeHandler(handler)


def loader(dataset: Any, *, batch_size: int, shuffle: bool, seed: int, workers: int = 0, sampler: Any = None,
           drop_last: bool = False, batch_sampler: Any = None) -> Any:
    """The one DataLoader: a seeded order (the same batches every run with the same seed), seeded workers, and a
    `sampler` (e.g. DistributedSampler) in place of the shuffle when given, or a `batch_sampler` that yields whole
    batches of indices (length-grouped token batches)."""
    import torch
    from torch.utils.data import DataLoader

    from compress.data.datasets import collate

    generator = torch.Generator().manual_seed(seed)
    common = {"generator": generator, "num_workers": workers, "collate_fn": collate,
              "worker_init_fn": _seed_worker if workers else None, "persistent_workers": workers > 0}
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
                      drop_last=drop_last, **common)


def _seed_worker(worker_id: int) -> None:
    """numpy and random in a worker follow torch's per-worker seed (itself from the loader's seeded generator)."""
    import random

    import numpy as np
    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def forward(model: Any, inputs: Any) -> Any:
    """`model(**inputs)` for keyword inputs (a dict), `model(inputs)` for a Tensor."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)
