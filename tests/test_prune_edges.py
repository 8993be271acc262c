"""Pruning at its edges: a model's own `*_mask` buffer, amounts that would empty a layer, layers Torch-Pruning
fails on while stepping, and the same-size control's budget."""
from __future__ import annotations

import torch
from torch import nn

import pytest

from compress.errors import CompressError
from compress.models import count_params
from compress.prune import PruneConfig, load_pruned, prune, save_pruned
from compress.prune.heads import find_heads


def _prune(model, x, **cfg):
    cfg = {"steps": 1, "finetune_epochs": 0, "importance": "l2", **cfg}
    return prune(model, PruneConfig(**cfg), example_input=x, finetune=lambda m, e: None, evaluate=lambda m: 0.5,
                 progress=False)


# ---------------------------------------------------------------- a buffer named like a mask

MASK_MODULE = '''
import torch
from torch import nn


class PadMasked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(16, 32), nn.Linear(32, 4)
        self.register_buffer("pad_mask", torch.ones(16))

    def forward(self, x):
        return self.head(torch.relu(self.a(x * self.pad_mask)))


def pad_masked():
    return PadMasked()
'''


def _pad_masked(tmp_path, name: str):
    import importlib
    import sys

    (tmp_path / f"{name}.py").write_text(MASK_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module(name).pad_masked
    finally:
        sys.path.remove(str(tmp_path))


def test_a_buffer_ending_in_mask_survives_pruning_save_and_load(tmp_path):
    # setup
    factory, x = _pad_masked(tmp_path, "padmask_prune"), torch.randn(8, 16)
    torch.manual_seed(0)
    pruned, _ = _prune(factory(), x, amount=0.5)
    # execute: save_pruned took the buffer for a pruning mask and refused
    save_pruned(pruned, tmp_path / "p.safetensors")
    loaded = load_pruned(factory(), tmp_path / "p.safetensors", example_input=x)
    # assert
    assert pruned.a.out_features == 16 and torch.equal(loaded.pad_mask, torch.ones(16))
    torch.testing.assert_close(loaded.eval()(x), pruned.eval()(x), rtol=0, atol=0)


def test_rebuild_loads_a_buffer_ending_in_mask_as_a_buffer(tmp_path):
    from safetensors.torch import save_file

    from compress.families import rebuild
    from compress.records import ModelRecord, ModelSpec

    # setup: an unpruned student whose state holds 'pad_mask' (no 'pad_orig')
    factory = _pad_masked(tmp_path, "padmask_rebuild")
    model = factory()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    record = ModelRecord(name="student", role="student", spec=ModelSpec("padmask_rebuild:pad_masked"), origin="t")
    # execute: this was an AttributeError ('PadMasked' object has no attribute 'pad')
    again = rebuild(record, data=None, base_dir=tmp_path, weights=tmp_path / "w.safetensors")
    # assert
    x = torch.randn(3, 16)
    torch.testing.assert_close(again(x), model.eval()(x), rtol=0, atol=0)


def test_real_pruning_masks_are_still_applied_on_rebuild(tmp_path):
    from safetensors.torch import save_file
    from torch.nn.utils import prune as tprune

    from compress.families import rebuild
    from compress.records import ModelRecord, ModelSpec

    factory = _pad_masked(tmp_path, "padmask_masked")
    model = factory()
    tprune.l1_unstructured(model.a, "weight", amount=0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    record = ModelRecord(name="s", role="student", spec=ModelSpec("padmask_masked:pad_masked"), origin="t")
    again = rebuild(record, data=None, base_dir=tmp_path, weights=tmp_path / "w.safetensors")
    assert tprune.is_pruned(again.a) and int((again.a.weight == 0).sum()) == 16 * 32 // 2


# ---------------------------------------------------------------- amounts that would empty a layer

def _mlp(hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 3))


def test_an_amount_that_would_empty_a_layer_keeps_one_channel_there():
    # setup
    torch.manual_seed(0)
    model, x = _mlp(), torch.randn(4, 16)
    # execute: 0.99 of 64 units leaves 0.64; Torch-Pruning then skipped the layer and nothing was removed
    pruned, history = _prune(model, x, amount=0.99)
    # assert
    assert [m.out_features for m in pruned if isinstance(m, nn.Linear)] == [1, 1, 3]
    assert history[-1]["params"] == count_params(pruned) < 0.01 * count_params(model)


def test_gradual_steps_towards_an_emptying_amount_all_remove_channels():
    torch.manual_seed(0)
    _, history = _prune(_mlp(), torch.randn(4, 16), amount=0.99, steps=3)
    sizes = [h["params"] for h in history]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4


def test_an_amount_that_removes_nothing_is_refused_before_training():
    # setup: 8-unit layers and round_to = 8: no layer can lose a channel
    torch.manual_seed(0)
    trained: list[int] = []
    # execute / assert
    with pytest.raises(CompressError, match=r"prune.amount: removing 0.99 of the channels removes nothing from "
                                            r"this model: every layer keeps at least round_to = 8"):
        prune(_mlp(8), PruneConfig(amount=0.99, steps=1, importance="l2", round_to=8), example_input=torch.randn(4, 16),
              finetune=lambda m, e: trained.append(e), evaluate=lambda m: 0.5, progress=False)
    assert trained == []


# ---------------------------------------------------------------- Torch-Pruning failing while it steps

def _depthwise_multiplier() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, groups=8),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_a_depthwise_conv_with_a_channel_multiplier_is_named_not_a_traceback():
    # setup
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    # execute: Torch-Pruning's step raised IndexError out of the dry run
    with pytest.raises(CompressError) as err:
        _prune(_depthwise_multiplier(), x, amount=0.5)
    # assert: one line naming the layer, and the advice works
    assert str(err.value).startswith("prune: cannot remove channels of layer '0' safely")
    assert "ignore = ['0']" in str(err.value) and "\n" not in str(err.value)
    pruned, _ = _prune(_depthwise_multiplier(), x, amount=0.5, ignore=("0",))
    assert pruned[2].out_channels == 8


def test_a_step_failure_in_a_target_search_is_named_too():
    with pytest.raises(CompressError, match="prune: cannot remove channels of layer '0' safely"):
        _prune(_depthwise_multiplier(), torch.randn(4, 1, 8, 8), target_params=200)


# ---------------------------------------------------------------- the same-size control's budget

@pytest.mark.e2e
def test_the_control_gets_the_pruned_models_total_clock_and_reports_the_epochs_it_ran(tiny_dir, monkeypatch):
    import json

    from click.testing import CliRunner

    import compress.train as train
    from compress.cli import main

    # setup: every training run has a 0.01-minute clock; the pruned model gets one for distill and one per step
    runs: list[tuple[str, float | None, int]] = []
    real = train.train_student

    def spy(model, data, settings, **kw):
        history = real(model, data, settings, **kw)
        runs.append((kw["desc"], settings.max_minutes, history["epochs_run"]))
        return history

    monkeypatch.setattr(train, "train_student", spy)
    toml = tiny_dir / "pipeline.toml"
    text = toml.read_text().replace("[teacher.train]\nepochs = 10", "[teacher.train]\nepochs = 2")
    text = text.replace("epochs = 10\nlr = 2e-2\ncontrol = true", "epochs = 40\nmax_minutes = 0.01\nlr = 2e-2")
    text = text.replace('providers = ["cpu", "cuda"]\nbatch_sizes = [1, 8]', 'providers = ["cpu"]\nbatch_sizes = [1]')
    toml.write_text(text + "\n[prune]\namount = 0.5\nsteps = 2\nfinetune_epochs = 30\nimportance = 'l2'\n"
                    "control = true\n")
    # execute
    result = CliRunner().invoke(main, ["run", str(toml), "--quiet"])
    # assert: the control had the three clocks together (it had one), and the report gives the epochs it ran
    assert result.exit_code == 0, result.output
    control = [r for r in runs if r[0] == "prune: control"]
    assert [r[1] for r in runs if r[0] == "prune: recover"] == [0.01, 0.01]
    assert len(control) == 1 and control[0][1] == pytest.approx(0.03)
    info = json.loads((tiny_dir / "runs/tiny/report.json").read_text())["details"]["prune"]["control"]
    assert info["epochs"] == control[0][2] and info["epochs_budget"] == 40 + 2 * 30
    assert f"distilled for {control[0][2]} epochs" in (tiny_dir / "runs/tiny/report.md").read_text()


# ---------------------------------------------------------------- keyword-input models

class KeywordModel(nn.Module):
    """Called as model(ids=..., scale=...), as the data contract's dict inputs are."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, ids, scale):
        return self.head(torch.relu(self.a(ids * scale)))


def test_the_checks_call_a_keyword_input_model_with_keywords():
    from compress.prune import mechanics

    model, x = KeywordModel(), {"ids": torch.randn(4, 16), "scale": torch.ones(4, 1)}
    assert mechanics.checked_forward(model, x) == ((4, 4),)  # one shape per output
    assert find_heads(model, x) == ("head",)
    mechanics.taylor_gradients(model, [(x, torch.arange(4))])
    assert model.a.weight.grad is not None


@pytest.mark.parametrize("settings", [{"amount": 0.1, "steps": 3}, {"amount": 0.3, "steps": 3, "round_to": 8}])
def test_a_schedule_whose_middle_step_removes_nothing_still_runs(settings):
    # narrow layers round a step's share down to nothing while the schedule reaches its amount: that is not an error
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    _, history = prune(net, PruneConfig(finetune_epochs=0, importance="l2", **settings),
                       example_input=torch.randn(4, 3, 8, 8), finetune=lambda m, e: None, evaluate=lambda m: 0.5,
                       progress=False)
    assert history[-1]["params"] < history[0]["params"] and len(history) == 4


# ---------------------------------------------------------------- tied weights

class TiedHead(nn.Module):
    """An embedding tied to the output head, the hidden width carried by a residual: pruning it takes the same
    channels from both."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids).mean(1)
        return self.head(h + self.down(torch.relu(self.up(h))))


class TiedAcross(nn.Module):
    """A tied head fed by a prunable layer: pruning 'fc' would shrink the head's copy only."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc, self.head = nn.Embedding(10, 16), nn.Linear(16, 16), nn.Linear(16, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.relu(self.fc(self.emb(ids).mean(1))))


def test_tied_weights_are_still_one_parameter_after_channel_pruning_and_loading(tmp_path):
    # setup
    torch.manual_seed(0)
    x = torch.randint(0, 10, (8, 5))
    # execute: Torch-Pruning's surgery gave emb and head two separate (10, 8) tensors
    pruned, history = _prune(TiedHead(), x, amount=0.5, steps=2)
    save_pruned(pruned, tmp_path / "p.safetensors")
    loaded = load_pruned(TiedHead(), tmp_path / "p.safetensors", example_input=x)
    # assert
    assert pruned.head.weight is pruned.emb.weight and pruned.emb.weight.shape == (10, 8)
    assert history[-1]["params"] == count_params(pruned) == 10 * 8 + (8 * 16 + 16) + (16 * 8 + 8)
    assert loaded.head.weight is loaded.emb.weight
    torch.testing.assert_close(loaded.eval()(x), pruned.eval()(x), rtol=0, atol=0)


def test_pruning_that_would_untie_weights_is_refused_naming_them():
    with pytest.raises(CompressError, match=r"layer 'fc'.*'emb\.weight' and 'head\.weight' are one tied tensor.*"
                                            r"shapes \[10, 16\] vs \[10, 8\]"):
        _prune(TiedAcross(), torch.randint(0, 10, (8, 5)), amount=0.5)


# ---------------------------------------------------------------- models with several outputs

class TwoHeads(nn.Module):
    """A regressor with two heads (a dict, a tuple or a list of outputs): each head's width is an output's."""

    def __init__(self, returns: str = "dict"):
        super().__init__()
        self.returns = returns
        self.body = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.value, self.score = nn.Linear(16, 2), nn.Linear(16, 1)

    def forward(self, x):
        h = self.body(x)
        out = {"value": self.value(h), "score": torch.sigmoid(self.score(h))}
        return out if self.returns == "dict" else tuple(out.values())


@pytest.mark.parametrize("returns", ["dict", "tuple"])
def test_every_head_of_a_model_with_several_outputs_is_left_alone(returns: str):
    # before: only the last Conv/Linear run ('score') was kept, so pruning narrowed 'value' and was refused: "outputs shapes [8, 1], [8, 1] instead of [8, 2], [8, 1] (last layer run: '')"
    from compress.prune import mechanics

    torch.manual_seed(0)
    model, x = TwoHeads(returns), torch.randn(8, 10)
    assert find_heads(model, x) == ("value", "score")
    pruned, history = _prune(model, x, amount=0.5)
    assert mechanics.checked_forward(pruned, x) == ((8, 2), (8, 1))
    assert pruned.body[0].out_features == 8 and history[-1]["params"] < history[0]["params"]
    frozen = TwoHeads(returns)  # a frozen head is found too: only the last one ran was, so 'value' was pruned
    for p in [*frozen.body.parameters(), *frozen.value.parameters()]:
        p.requires_grad_(False)
    assert find_heads(frozen, x) == ("value", "score") and frozen.body[0].weight.requires_grad is False


def test_a_shape_change_names_the_last_layer_that_ran():
    from compress.prune import mechanics

    model = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(CompressError, match=r"\(last layer run: '2'\)"):
        mechanics.checked_forward(model, torch.randn(2, 10), expected_shapes=((2, 4),))
