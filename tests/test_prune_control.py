"""The same-size control of an unstructured (magnitude) prune: as sparse as the pruned model, layer by layer, after
its own training; and the report says how it was made."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress import zoo
from compress.prune import CONTROL_RECIPES, PruneConfig, prune, save_pruned, train_control
from compress.prune.mechanics import nonzero_params


def _magnitude_pruned(amount: float = 0.6) -> tuple[nn.Module, list[dict]]:
    torch.manual_seed(0)
    model = zoo.mlp(input_shape=(16,), num_classes=4, hidden=(32, 24), dropout=0.0)
    return prune(model, PruneConfig(method="magnitude", amount=amount, steps=2, finetune_epochs=0),
                 example_input=torch.randn(8, 16), finetune=lambda m, e: None, evaluate=lambda m: 0.5,
                 progress=False)


def _train(model: nn.Module, epochs: int) -> None:
    """A real recipe: SGD on random labelled data, enough steps that every unmasked weight moves."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    model.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_the_control_of_a_magnitude_prune_has_the_pruned_models_nonzeros_per_layer(tmp_path):
    # setup
    pruned, history = _magnitude_pruned()
    # execute: the control was dense (1,210 nonzero weights against the pruned model's 698)
    control = train_control(pruned, epochs=20, seed=3, train_fn=_train, sparse=True)
    # assert: the same zeros in every layer after training, on fresh weights, and no masks left to save
    for name, weight in _weights(pruned).items():
        kept = _weights(control)[name] != 0
        assert torch.equal(kept, weight != 0), name
        assert not torch.equal(_weights(control)[name], weight), f"{name} was not re-initialised"
    assert nonzero_params(control) == nonzero_params(pruned) == history[-1]["nonzero_params"]
    assert int((_weights(control)["1"] == 0).sum()) == pytest.approx(0.6 * 32 * 16, abs=1)
    save_pruned(control, tmp_path / "control.safetensors")  # refuses a model that still carries masks


def test_the_control_of_a_channel_prune_stays_dense():
    # setup: without sparse, a Linear whose weights hold zeros is trained as a whole (the channel control)
    pruned, _ = _magnitude_pruned()
    # execute
    control = train_control(pruned, epochs=20, seed=3, train_fn=_train)
    # assert
    assert all(bool((w != 0).all()) for w in _weights(control).values())


def test_the_report_says_how_the_control_was_made():
    from types import SimpleNamespace

    from compress.stages.prune import _markdown
    from compress.tasks import Metric

    step = {"step": 1, "amount": 0.5, "params": 1210, "bytes": 4840, "accuracy_before_finetune": 0.8,
            "accuracy": 0.9, "latency_ms": None}
    control = {"pruned_accuracy": 0.9, "control_accuracy": 0.85, "params": 1210, "nonzero_params": 698,
               "epochs": 4, "made": CONTROL_RECIPES["magnitude"]}
    lines = _markdown(SimpleNamespace(method="magnitude", latency_batch=1), [step], SimpleNamespace(note=None),
                      control, Metric("accuracy"))
    assert "(1,210 params, 698 nonzero: the pruned model's masks (kept in training) on re-initialised weights, " \
           "distilled for 4 epochs, same seed)" in lines[-1]


@pytest.mark.e2e
def test_the_pipelines_magnitude_control_is_as_sparse_as_the_pruned_model(ran_dir):
    tiny_dir = ran_dir  # teacher and distill from tiny_run's cache: the file's own, unchanged
    from safetensors.torch import load_file

    from .test_pipeline import _run_with

    # setup / execute
    result, report = _run_with(tiny_dir, "\n[prune]\nmethod = 'magnitude'\namount = 0.5\nsteps = 1\n"
                                         "finetune_epochs = 1\nlatency_batch = 8\ncontrol = true\n")
    # assert: per layer, the saved control has as many zeros as the saved pruned model; the report says so
    assert result.exit_code == 0, result.output
    stage = tiny_dir / "runs/tiny/prune"
    pruned, control = (load_file(str(stage / f"{n}.safetensors")) for n in ("student-pruned", "pruned-control"))
    weights = [k for k, v in pruned.items() if k.endswith("weight") and v.dim() > 1]
    assert any(int((pruned[k] == 0).sum()) > 0 for k in weights)
    assert {k: int((control[k] == 0).sum()) for k in weights} == {k: int((pruned[k] == 0).sum()) for k in weights}
    details = report["details"]["prune"]
    assert details["control"]["nonzero_params"] == details["steps"][-1]["nonzero_params"]
    assert f"{details['control']['nonzero_params']:,} nonzero: {CONTROL_RECIPES['magnitude']}" in \
        (tiny_dir / "runs/tiny/report.md").read_text()
