"""What a model eats: one float tensor, several named tensors, or token ids with masks.

An `Inputs` object owns everything that depends on it, so the stages never ask which kind they hold:
  - the ONNX input names, the export's arguments and dynamic axes;
  - a batch in torch -> an ONNX Runtime feed (numpy; token batches lose the padding every row shares);
  - the order in which a split is read for prediction (token rows by length: a batch costs its longest row);
  - training batches (token rows grouped by length; each process of a DDP run takes its share of every batch);
  - benchmark feeds at a batch size (and a sequence length for tokens: real text run together to fill it).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class TensorInputs:
    """One float tensor, exported as input 'input' with a dynamic batch axis."""

    kind = "tensor"
    names: tuple[str, ...] = ("input",)

    def as_feed(self, inputs: Any) -> dict[str, np.ndarray]:
        return {"input": np.ascontiguousarray(inputs.detach().cpu().numpy(), dtype=np.float32)}

    def export_args(self, example: Any) -> tuple:
        return (example,)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {n: {0: "batch"} for n in self.names}

    def seq_lengths(self, configured: Sequence[int]) -> tuple[int | None, ...]:
        """The sequence lengths a benchmark times: none for inputs without a sequence axis."""
        return (None,)

    def bench_feed(self, data: Any, batch: int, seq: int | None = None) -> dict[str, np.ndarray]:
        """Real validation rows, `batch` of them (repeated when the split is smaller)."""
        return self.as_feed(data.example(batch))

    def order(self, dataset: Any) -> Any:
        """The row order prediction reads a split in (None: as it is)."""
        return None

    def batch_sampler(self, dataset: Any, *, batch_size: int, seed: int, world: Any) -> Any:
        """Training batches of this process, or None for the default (DistributedSampler, batch_size / world)."""
        return None

    def describe(self, input_shape: Sequence[int]) -> dict[str, Any]:
        """The report's `inputs` section (the shape `compress bench --json` records)."""
        return {"input": {"shape": ["batch", *input_shape], "type": "tensor(float)"}}


class NamedInputs(TensorInputs):
    """Several named tensors (a dict from the data source), passed to the model as keyword arguments."""

    kind = "named"

    def __init__(self, names: Sequence[str], shapes: dict[str, tuple] | None = None,
                 dtypes: dict[str, str] | None = None) -> None:
        self.names = tuple(names)
        self.shapes = dict(shapes or {})
        self.dtypes = dict(dtypes or {})

    def as_feed(self, inputs: Any) -> dict[str, np.ndarray]:
        out = {}
        for n in self.names:
            v = inputs[n].detach().cpu().numpy()
            out[n] = np.ascontiguousarray(v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v)
        return out

    def export_args(self, example: Any) -> tuple:
        return ({n: example[n] for n in self.names},)  # a trailing dict: keyword arguments of forward

    def describe(self, input_shape: Sequence[int]) -> dict[str, Any]:
        return {n: {"shape": ["batch", *self.shapes.get(n, ())], "type": f"tensor({self.dtypes.get(n, 'float')})"}
                for n in self.names}


class TokenInputs(NamedInputs):
    """Token ids with masks (a transformer on text): int64 ids, batch and sequence axes dynamic."""

    kind = "tokens"

    def __init__(self, names: Sequence[str], *, texts: Sequence[str], tokenizer_dir: str, max_length: int) -> None:
        super().__init__(names, {n: (max_length,) for n in names}, {n: "int64" for n in names})
        self.texts = list(texts)
        """Validation texts: real text to fill benchmark sequences with."""
        self.tokenizer_dir = tokenizer_dir
        self.max_length = max_length

    def as_feed(self, inputs: Any) -> dict[str, np.ndarray]:
        from compress.hf.model import used_columns

        width = used_columns(inputs["attention_mask"])
        return {n: np.ascontiguousarray(inputs[n][:, :width].detach().cpu().numpy().astype(np.int64))
                for n in self.names}

    def export_args(self, example: Any) -> tuple:
        return tuple(example[n] for n in self.names)  # positional, in forward's order

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {n: {0: "batch", 1: "seq"} for n in self.names}  # `compress bench --dim seq=128`

    def seq_lengths(self, configured: Sequence[int]) -> tuple[int | None, ...]:
        return tuple(int(s) for s in configured)

    def bench_feed(self, data: Any, batch: int, seq: int | None = None) -> dict[str, np.ndarray]:
        from compress.hf.text import bench_feed
        from compress.hf.model import load_tokenizer

        tok = load_tokenizer(self.tokenizer_dir, "teacher.model")
        return bench_feed(tok, self.texts, self.names, batch=batch, seq_length=seq or self.max_length)

    def order(self, dataset: Any) -> Any:
        """Rows by length when the dataset knows them (a subset of rows is read as it is)."""
        import torch

        if not hasattr(dataset, "lengths"):
            return None
        return torch.argsort(dataset.lengths(), stable=True).tolist()

    def batch_sampler(self, dataset: Any, *, batch_size: int, seed: int, world: Any) -> Any:
        return LengthGroupedBatches(dataset.lengths(), batch_size, seed=seed, rank=world.rank, size=world.size)


def in_order(result: dict[str, Any], order: Any) -> dict[str, Any]:
    """Arrays computed on rows read in `order` (Inputs.order; None: as they are) put back in data order."""
    if order is None:
        return result
    back = np.empty(len(order), dtype=np.int64)
    back[np.asarray(order)] = np.arange(len(order))
    return {name: value[back] for name, value in result.items()}


def in_place(outputs: dict[str, Any], index: Any, expected: list[int]) -> dict[str, Any]:
    """Outputs of the items a dataset gave (`index`: the index each row's item reported), one row per item of
    `expected` (item_indices: what each item reports, in order), NaN for the items it skipped (an image that no
    longer decodes): row i stays item i's, which cached outputs and the torch/ONNX parity rely on."""
    at = {value: position for position, value in enumerate(expected)}
    positions = [at[int(v)] for v in np.asarray(index).reshape(-1)]
    placed = {}
    for name, value in outputs.items():
        full = np.full((len(expected), *value.shape[1:]), np.nan, dtype=np.float32)
        full[positions] = value
        placed[name] = full
    return placed


def item_indices(dataset: Any) -> list[int]:
    """The index each item of `dataset` reports, in order: its position, through the indices of a Subset."""
    import torch

    if isinstance(dataset, torch.utils.data.Subset):
        parent = item_indices(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    return list(range(len(dataset)))


class LengthGroupedBatches:
    """Random batches of similar lengths (shuffle, sort within chunks of 50 batches, shuffle the batch order), the
    same on every process for the same seed and epoch; process `rank` of `size` takes rows rank, rank + size, ...
    of each batch, so step k of N processes covers the rows of step k of one."""

    def __init__(self, lengths: Any, batch_size: int, *, seed: int, rank: int = 0, size: int = 1) -> None:
        if len(lengths) < size:  # every batch would be dropped: training would run no step and say nothing
            from compress.errors import CompressError

            raise CompressError(f"data: {len(lengths)} training row{'s' * (len(lengths) != 1)} cannot give each of "
                                f"the {size} processes one; use fewer processes (--nproc) or more training data")
        self.lengths, self.batch_size, self.seed, self.rank, self.size = lengths, batch_size, seed, rank, size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list:
        import torch

        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=gen)
        chunk = self.batch_size * 50
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            part = part[torch.argsort(self.lengths[part], stable=True)]
            batches.extend(part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size))
        perm = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[i] for i in perm if len(batches[i]) >= self.size]  # every process gets rows

    def __iter__(self):
        for batch in self._batches():
            yield batch[self.rank::self.size].tolist()

    def __len__(self) -> int:
        return len(self._batches())
