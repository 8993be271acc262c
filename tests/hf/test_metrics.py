"""Embedding figures and distillation losses: known values on hand-made vectors."""
from __future__ import annotations

import numpy as np
import torch

from compress.hf.losses import attention_loss, default_layer_map, embedding_loss, hidden_loss
from compress.hf.metrics import cosine, neighbour_overlap


def test_cosine_and_neighbour_overlap_on_known_embeddings():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    assert abs(cosine(x, x) - 1) < 1e-9 and abs(cosine(-x, x) + 1) < 1e-9
    assert cosine(3 * x, x) > 0.999999  # scale does not matter
    assert neighbour_overlap(x, x) == 1.0
    noisy = neighbour_overlap(x + 0.3 * rng.normal(size=x.shape), x)
    unrelated = neighbour_overlap(rng.normal(size=x.shape), x)
    assert 0.3 < noisy < 1.0 and unrelated < 0.15  # chance is 10/199


def test_losses_are_zero_for_a_perfect_student_and_positive_otherwise():
    t = torch.randn(4, 8)
    assert embedding_loss(t, t, "cosine").abs() < 1e-6 and embedding_loss(t, t, "mse") == 0
    assert embedding_loss(torch.randn(4, 8), t, "mse") > 0.1
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    hidden = [torch.randn(2, 4, 8) for _ in range(5)]
    assert hidden_loss(hidden[:3], hidden, [0, 1], mask) == 0
    assert hidden_loss(hidden[:3], hidden, [2, 3], mask) > 0.5
    att = [torch.softmax(torch.randn(2, 2, 4, 4), -1) for _ in range(4)]
    assert attention_loss(att[:2], att, [0, 1], mask).abs() < 1e-6
    assert attention_loss(att[:2], att, [2, 3], mask) > 0
    assert default_layer_map(3, 6, [0, 2, 5]) == [0, 2, 5] and default_layer_map(3, 6) == [1, 3, 5]
