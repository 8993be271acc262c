"""Embedding figures and distillation losses: known values on hand-made vectors."""
from __future__ import annotations

import numpy as np
import torch

from compress.hf.losses import attention_loss, default_layer_map, hidden_loss
from compress.tasks.embedding import cosine, embedding_loss, neighbour_overlap, relation_loss


def test_cosine_and_neighbour_overlap_on_known_embeddings():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    assert abs(cosine(x, x) - 1) < 1e-9 and abs(cosine(-x, x) + 1) < 1e-9
    assert cosine(3 * x, x) > 0.999999  # scale does not matter
    assert neighbour_overlap(x, x) == 1.0
    noisy = neighbour_overlap(x + 0.3 * rng.normal(size=x.shape), x)
    unrelated = neighbour_overlap(rng.normal(size=x.shape), x)
    assert 0.3 < noisy < 1.0 and unrelated < 0.15  # chance is 10/199
    # duplicate rows tie in the reference: a copy off by rounding noise is still a perfect student (it read 0.70)
    dup = np.concatenate([x[:185], np.repeat(x[185:186], 15, axis=0)])
    assert neighbour_overlap(dup + 1e-6 * rng.normal(size=dup.shape), dup) == 1.0
    assert neighbour_overlap(rng.normal(size=dup.shape), dup) < 0.15


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


def test_relation_loss_asks_for_the_teachers_neighbours_not_its_scale():
    torch.manual_seed(0)
    bank, t = torch.randn(64, 8), torch.randn(4, 8)
    assert relation_loss(t, t, bank).abs() < 1e-6
    assert relation_loss(5 * t, t, bank).abs() < 1e-5  # cosine similarities: scale does not matter
    assert relation_loss(torch.randn(4, 8), t, bank) > 1.0
    near = t + 0.05 * torch.randn(4, 8)
    assert relation_loss(near, t, bank) < relation_loss(t + 0.5 * torch.randn(4, 8), t, bank)
    # a text that is itself in the bank: masked out, so its perfect self-match neither helps nor hurts
    with_self = torch.cat([t, bank])
    exclude = torch.zeros(4, len(with_self), dtype=torch.bool)
    exclude[torch.arange(4), torch.arange(4)] = True
    assert torch.allclose(relation_loss(near, t, with_self, exclude=exclude), relation_loss(near, t, bank), atol=1e-5)


def test_the_learning_rate_follows_the_time_budget_when_it_ends_before_the_epochs():
    from compress.train.loop import lr_factor

    steps = 100 * 834  # 100 epochs allowed, a 20-minute budget that ends after about 5
    warm = 0.06 * steps
    assert lr_factor(0, steps, warm, 0.0, 1200) < 1e-3  # warming up
    assert lr_factor(300, steps, warm, 72.0, 1200) == 1.0  # warm-up is 6% of the budget, not of 100 epochs
    assert 0.45 < lr_factor(2000, steps, warm, 636.0, 1200) < 0.55  # half-way through the budget
    assert lr_factor(4170, steps, warm, 1200.0, 1200) < 1e-6  # decayed when the budget ends
    assert lr_factor(0, 1000, 0, 0.0, None) == 1.0 and lr_factor(1000, 1000, 0, 5.0, None) < 1e-9  # no budget
    assert lr_factor(0, 1000, 10) == 0.1 and lr_factor(9, 1000, 10) == 1.0  # steps: (step + 1) / warm-up steps


def test_a_split_too_small_for_neighbour_overlap_is_said_in_the_report():
    # five sentences: overlap@10 read 1.0 for a student at cosine 0.25, without a word
    from types import SimpleNamespace

    from compress.report import data_section

    describe = {"splits": {"val": {"size": 1}, "test": {"size": 5}}, "evaluated_on": "test"}
    data = SimpleNamespace(task="embedding", describe=lambda: dict(describe))
    assert data_section(data, [], {})["warnings"] == [
        "the test split has 5 examples: neighbour_overlap@10 counts every other one a neighbour and reads 1.0 "
        "whatever the model"]
    describe["splits"]["test"]["size"] = 12
    assert data_section(data, [], {})["warnings"] == []
