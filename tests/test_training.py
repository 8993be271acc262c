"""The KD loss and the training loop on tiny synthetic problems."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compress.errors import CompressError
from compress.train import TrainConfig, evaluate, fit, kd_loss


def test_kd_loss_is_hard_loss_when_alpha_is_one():
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert torch.allclose(kd_loss(s, t, y, temperature=4.0, alpha=1.0), torch.nn.functional.cross_entropy(s, y))


def test_kd_soft_term_is_zero_when_student_matches_teacher_and_scales_with_t_squared():
    t, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert kd_loss(t.clone(), t, y, temperature=3.0, alpha=0.0).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(8, 5)
    # For large T, KL(T) ~ ||z_s - z_t||^2 / (2 T^2 K) (centred), so T^2 * KL tends to a constant: the scale is kept.
    a = kd_loss(s, t, y, temperature=50.0, alpha=0.0).item()
    b = kd_loss(s, t, y, temperature=100.0, alpha=0.0).item()
    assert a == pytest.approx(b, rel=0.05)


def _blobs(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.5 + torch.tensor([[0.0, 3.0], [3.0, 0.0], [-3.0, -3.0]])[y]
    return x, y


def test_fit_learns_and_keeps_best_epoch():
    x, y = _blobs()
    torch.manual_seed(0)  # the initialisation must not depend on which tests ran before
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    history = fit(model, (x[:300], y[:300]), (x[300:], y[300:]), TrainConfig(epochs=5, lr=1e-2), seed=0,
                  progress=False)
    assert history["val_accuracy"] > 0.9
    assert evaluate(model, x[300:], y[300:]) == pytest.approx(history["val_accuracy"])
    assert history["val_accuracy"] == max(h["val_accuracy"] for h in history["history"])


def test_distillation_with_teacher_logits_trains():
    x, y = _blobs()
    teacher_logits = torch.nn.functional.one_hot(y[:300], 3).float() * 5
    torch.manual_seed(0)  # the initialisation must not depend on which tests ran before
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    h = fit(model, (x[:300], y[:300]), (x[300:], y[300:]), TrainConfig(epochs=5, lr=1e-2), seed=0,
            teacher_logits=teacher_logits, temperature=4.0, alpha=0.3, progress=False)
    assert h["val_accuracy"] > 0.9


def test_nan_loss_before_any_step_blames_the_models_outputs_not_the_learning_rate():
    # before: "at epoch 1, batch 1; lower the learning rate", though no step had changed a weight yet
    x, y = _blobs()
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.fill_(math.inf)
    with pytest.raises(CompressError, match=r"^the model outputs NaN/inf on the first training batch, before any "
                                            r"optimiser step changed a weight \(distill loss nan\); check the model"):
        fit(model, (x, y), (x, y), TrainConfig(epochs=1), seed=0, progress=False, desc="distill")


def test_steps_per_epoch_caps_each_epoch_to_a_subset_of_the_rows():
    x, y = _blobs()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    capped = fit(model, (x[:300], y[:300]), (x[300:], y[300:]), TrainConfig(epochs=3, lr=1e-2, steps_per_epoch=2),
                 seed=0, batch_size=32, progress=False)
    assert [h["examples"] for h in capped["history"]] == [64, 64, 64]
    whole = fit(model, (x[:300], y[:300]), (x[300:], y[300:]), TrainConfig(epochs=1, lr=1e-2, steps_per_epoch=50),
                seed=0, batch_size=32, progress=False)
    assert [h["examples"] for h in whole["history"]] == [300]  # a cap above the pass changes nothing


def test_predict_keeps_one_row_per_item_when_a_dataset_skips_one():
    # an image that passed the scan but does not decode in the run is dropped from its batch; the rows after it moved
    # up by one, so cached teacher outputs were read for the wrong images (then an IndexError past the end)
    import torch

    from compress.data.datasets import SKIPPED
    from compress.train.loop import predict

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return i, torch.full((2,), float(i)), SKIPPED if i == 2 else i % 2

    got = predict(torch.nn.Identity(), Items(), batch_size=4)
    values = next(iter(got.values()))
    assert values.shape == (6, 2)
    assert np.isnan(values[2]).all()
    assert values[[0, 1, 3, 4, 5], 0].tolist() == [0.0, 1.0, 3.0, 4.0, 5.0]
    # a Subset's items report their parent's indices (5 of a 3-item subset was an IndexError)
    part = next(iter(predict(torch.nn.Identity(), torch.utils.data.Subset(Items(), [5, 2, 3]), batch_size=2).values()))
    assert part.shape == (3, 2) and np.isnan(part[1]).all() and part[[0, 2], 0].tolist() == [5.0, 3.0]
