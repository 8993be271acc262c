"""The embedding task's figures: how close a model's sentence embeddings are to the teacher's.

- `cosine`: mean cosine similarity of each text's embedding to the teacher's embedding of the same text.
- `neighbour_overlap@k`: for each text, the fraction of its k nearest neighbours (cosine, itself excluded) under
  the model that are also among its k nearest under the teacher, averaged over texts. It asks whether search
  results survive compression, which `cosine` alone does not.
"""
from __future__ import annotations

from typing import Any

K = 10


def cosine(embeddings: Any, reference: Any) -> float:
    """Mean cosine similarity of matching rows (numpy or torch, (N, D))."""
    import numpy as np

    a, b = _unit(np.asarray(embeddings, dtype=np.float64)), _unit(np.asarray(reference, dtype=np.float64))
    return float(np.mean(np.sum(a * b, axis=1)))


def neighbour_overlap(embeddings: Any, reference: Any, k: int = K, *, block: int = 1024) -> float:
    """Mean overlap of the k nearest neighbours under `embeddings` and under `reference` (self excluded)."""
    import numpy as np

    a, b = _unit(np.asarray(embeddings, dtype=np.float32)), _unit(np.asarray(reference, dtype=np.float32))
    n = len(a)
    k = min(k, n - 1)
    if k < 1:
        return 1.0
    hits = 0
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        na, nb = _knn(a, rows, k), _knn(b, rows, k)
        hits += sum(len(np.intersect1d(x, y, assume_unique=True)) for x, y in zip(na, nb))
    return float(hits / (n * k))


def embedding_metrics(embeddings: Any, reference: Any, k: int = K) -> dict[str, float]:
    """{"cosine", "neighbour_overlap@k"} of a model's embeddings against the teacher's."""
    return {"cosine": cosine(embeddings, reference),
            f"neighbour_overlap@{k}": neighbour_overlap(embeddings, reference, k)}


def _knn(x, rows, k: int):
    import numpy as np

    sims = x[rows] @ x.T
    sims[np.arange(len(rows)), rows] = -np.inf
    idx = np.argpartition(-sims, k, axis=1)[:, :k]
    return [np.sort(r) for r in idx]


def _unit(x):
    import numpy as np

    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
