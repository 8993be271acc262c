"""Embedding: one (N, D) output, a pooled sentence (or image) embedding, learned from the teacher's; no labels.

Loss: mean(1 - cos) (`[distill] loss = "cosine"`, the default) or MSE scaled by the teacher's mean square, plus
optionally relational KD (`relation_weight`): each example's similarity distribution over a bank of teacher
embeddings of training examples, which teaches the teacher's neighbours.

Figures, against the teacher's embeddings of the same examples:
- `cosine`: mean cosine similarity of each example's embedding to the teacher's;
- `neighbour_overlap@10`: for each example, the fraction of its 10 nearest neighbours (cosine, itself excluded)
  under the model that are also among its 10 nearest under the teacher, averaged: whether search results
  survive compression, which `cosine` alone does not say.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

from compress.errors import CompressError
from compress.tasks import Metric
from compress.tasks.base import LossFn, Task, single

K = 10
EmbeddingLoss = Literal["mse", "cosine"]


def embedding_loss(student, teacher, kind: EmbeddingLoss = "cosine"):
    """`cosine` = mean(1 - cos), `mse` = mean squared error scaled by the teacher's mean square (so it reads the same
    whatever the embeddings' scale)."""
    import torch.nn.functional as F

    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    return F.mse_loss(student, teacher) / teacher.pow(2).mean().clamp(min=1e-12)


def relation_loss(student, teacher, bank, temperature: float = 0.05, exclude=None):
    """KL(teacher || student) of each example's similarity distribution over a fixed bank of teacher embeddings
    (CompRess-style relational KD): softmax over cosine similarities to the bank at `temperature`. `exclude`
    (batch, bank) bool marks bank rows that are the example itself."""
    import torch.nn.functional as F

    bank = F.normalize(bank, dim=-1)
    s = F.normalize(student, dim=-1) @ bank.T / temperature
    t = F.normalize(teacher, dim=-1) @ bank.T / temperature
    if exclude is not None:
        s, t = s.masked_fill(exclude, -1e4), t.masked_fill(exclude, -1e4)
    return F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="batchmean")


def cosine(embeddings: Any, reference: Any) -> float:
    """Mean cosine similarity of matching rows (numpy or torch, (N, D))."""
    import numpy as np

    a, b = _unit(np.asarray(embeddings, dtype=np.float64)), _unit(np.asarray(reference, dtype=np.float64))
    return float(np.mean(np.sum(a * b, axis=1)))


def neighbour_overlap(embeddings: Any, reference: Any, k: int = K, *, block: int = 1024) -> float:
    """Mean overlap of the k nearest neighbours under `embeddings` and under `reference` (self excluded). A row
    tied with the reference's k-th neighbour (duplicate texts give equal similarities) counts as one of its
    neighbours: which of the tied rows is k-th is arbitrary, and 15 duplicate rows read 0.70 for a perfect copy."""
    import numpy as np

    a, b = _unit(np.asarray(embeddings, dtype=np.float32)), _unit(np.asarray(reference, dtype=np.float32))
    n = len(a)
    k = min(k, n - 1)
    if k < 1:
        return 1.0
    hits = 0
    for start in range(0, n, block):
        idx = np.arange(start, min(start + block, n))
        found, near = _knn(a, idx, k), _near(b, idx, k)
        hits += int(np.take_along_axis(near, found, axis=1).sum())
    return float(hits / (n * k))


def small_split_warning(task: str | None, split: str, n: int, k: int = K) -> list[str]:
    """The report's warning for a split too small for neighbour_overlap@k: with k + 1 examples or fewer every other
    one is a neighbour, and it reads 1.0 whatever the model."""
    if task != "embedding" or n > k + 1:
        return []
    return [f"the {split} split has {n} examples: neighbour_overlap@{k} counts every other one a neighbour and reads "
            "1.0 whatever the model"]


def embedding_metrics(embeddings: Any, reference: Any, k: int = K) -> dict[str, float]:
    """{"cosine", "neighbour_overlap@k"} of a model's embeddings against the teacher's."""
    return {"cosine": cosine(embeddings, reference),
            f"neighbour_overlap@{k}": neighbour_overlap(embeddings, reference, k)}


TIE = 1e-6
"""Similarities this close to the k-th neighbour's count as tied with it (float32 rounding of equal rows)."""


def _sims(x, idx):
    import numpy as np

    sims = x[idx] @ x.T
    sims[np.arange(len(idx)), idx] = -np.inf
    return sims


def _knn(x, idx, k: int):
    """Each row of `idx`: the indices of its k nearest rows of `x` (self excluded), [rows, k]."""
    import numpy as np

    return np.argpartition(-_sims(x, idx), k - 1, axis=1)[:, :k].copy()  # not a view holding [rows, n] int64


def _near(x, idx, k: int):
    """Each row of `idx`: which rows of `x` are among its k nearest, those tied with the k-th included, [rows, n]."""
    import numpy as np

    sims = _sims(x, idx)
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1:k]
    return sims >= kth - TIE


def _unit(x):
    import numpy as np

    x = x.reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Embedding(Task):
    name = "embedding"
    primary = Metric("cosine", True)
    budget_key = "max_cosine_drop"
    labels = "none"
    default_output = "embedding"
    reads = frozenset({"relation_weight", "relation_temperature", "relation_bank"})
    losses = ("cosine", "mse")

    def check_outputs(self, outputs: Mapping[str, Any], *, num_classes: int, teacher: Mapping[str, Any] | None,
                      origin: str, spec: str) -> None:
        out = single(outputs, self.name, origin, spec)
        if out.dim() != 2:
            raise CompressError(f"{origin}.model: {spec} outputs shape {tuple(out.shape)}; the embedding task takes "
                                "one (N, D) embedding per example")
        if teacher is not None:
            want = next(iter(teacher.values())).shape[1]
            if out.shape[1] != want:
                raise CompressError(f"{origin}.model: {spec} makes {out.shape[1]}-dimensional embeddings, the "
                                    f"teacher {want}; the student learns the teacher's, so they must match")

    def make_loss(self, settings: Any, *, teacher: bool, labels: bool, train_reference: Any = None,
                  base_dir: Any = None, seed: int = 0) -> LossFn:
        kind = settings.loss or "cosine"
        bank = _bank(train_reference, settings, seed) if settings.relation_weight > 0 else None

        def loss(student, teacher_out, target, index):
            s, t = next(iter(student.values())), next(iter(teacher_out.values()))
            value = embedding_loss(s, t, kind)
            if bank is not None:
                bank_rows, embeddings = bank
                exclude = index.unsqueeze(1) == bank_rows.unsqueeze(0)
                value = value + settings.relation_weight * relation_loss(s, t, embeddings,
                                                                         settings.relation_temperature, exclude)
            return value

        return loss

    def metrics(self, outputs: Mapping[str, Any], targets: Any, reference: Mapping[str, Any]) -> dict[str, float]:
        return embedding_metrics(next(iter(outputs.values())), next(iter(reference.values())))

    def why_not(self, key: str) -> str:
        if key in ("temperature", "label_smoothing", "alpha"):
            return "the embedding task has no labels or class probabilities (the student learns the teacher's " \
                   "embeddings)"
        return super().why_not(key)


def _bank(train_reference: Any, settings: Any, seed: int) -> Any:
    """(bank row indices, the teacher's embeddings of them) for relational KD, from the cached teacher outputs."""
    import numpy as np
    import torch

    if train_reference is None:
        raise CompressError("distill.relation_weight: relational KD needs the teacher's cached embeddings of the "
                            "training set, which this run does not keep (augmentation runs the teacher per batch)")
    table = next(iter(train_reference.values()))
    n = len(table)
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[: min(settings.relation_bank, n)]
    rows = np.sort(chosen.numpy())
    return torch.from_numpy(rows), torch.from_numpy(np.asarray(table[rows], dtype=np.float32))
