"""The user's code inside training (compress.train.objective): a forward or a loss that raises, a loss that is not
a scalar tensor, NaN before any step, outputs that are not batch-first, and a BatchNorm model whose last training
batch would hold one example. Each is one line naming what failed, exit 2, or (BatchNorm) just trains."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.train import TrainConfig, fit, predict
from compress.train.objective import Objective, Position, step_loss
from tests.test_bad_inputs import assert_one_line_error, invoke

MODELS = '''
import torch.nn as nn


class Reg(nn.Module):
    def __init__(self, hidden, mode):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.mode = mode

    def forward(self, x):
        if self.mode == "raises" and self.training:
            raise RuntimeError("only in training\\nsecond line")
        out = self.net(x)
        if self.mode == "time_first":  # CTC's [T, B, C]
            return out.unsqueeze(0).expand(3, -1, -1)
        return out


def reg(hidden=8, mode="ok"):
    return Reg(hidden, mode)
'''

LOSSES = '''
import torch


def vector(outputs, targets):
    return (outputs["output"] - targets.float()) ** 2


def number(outputs, targets):
    return 0.5


def detached(outputs, targets):
    return ((outputs["output"] - targets.float()) ** 2).mean().detach()


def raises(outputs, targets):
    raise KeyError("boxes")
'''

PIPELINE = '''
[pipeline]
name = "t"
[data]
source = "npz:reg.npz"
task = "tensors"
[teacher]
model = "models:reg"
kwargs = {{ hidden = 8, mode = "{mode}" }}
[teacher.train]
epochs = 1
[student]
model = "models:reg"
kwargs = {{ hidden = 4 }}
[distill]
epochs = 1
loss = "{loss}"
'''


def _folder(tmp_path: Path, *, mode: str = "ok", loss: str = "mse") -> Path:
    """A regression folder (80 rows of 8 features, y of shape (N, 1)) whose teacher trains with [distill] loss."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 8)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=x[:, :1] * 2)
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "losses.py").write_text(LOSSES)
    (tmp_path / "pipeline.toml").write_text(textwrap.dedent(PIPELINE.format(mode=mode, loss=loss)))
    return tmp_path


def _run_line(folder: Path, *fragments: str) -> str:
    return assert_one_line_error(invoke(folder, "run", "pipeline.toml", "--quiet"), folder, *fragments)


# --- F10: BatchNorm and a last batch of one; the forward raising ---------------------------------------------------

def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("rows, seen", [(129, 128), (130, 130)])
def test_a_batchnorm_model_trains_when_the_last_batch_would_hold_one_example(rows: int, seen: int):
    # before: ValueError "Expected more than 1 value per channel when training" from the 129th example's batch
    x, y = torch.randn(rows, 4), torch.randint(0, 2, (rows,))
    history = fit(_bn_model(), (x, y), (x[:20], y[:20]), TrainConfig(epochs=2), seed=0, batch_size=64,
                  progress=False)
    assert [h["examples"] for h in history["history"]] == [seen, seen]  # a last batch of 2 is kept


def test_every_rank_drops_its_lone_last_example_alike():
    # DDP: every rank must take the same steps; DistributedSampler pads each share to ceil(129 / 2) = 65 rows
    from compress.data.datasets import TensorPairs
    from compress.train.loop import _train_loader

    data = TensorPairs(torch.randn(129, 4), torch.zeros(129, dtype=torch.long))
    loaders = [_train_loader(data, batch_size=64, seed=0, workers=0, world=SimpleNamespace(size=2, rank=r))
               for r in (0, 1)]
    assert [[len(i) for i, _, _ in loader] for loader in loaders] == [[32, 32], [32, 32]]
    assert [len(loader) for loader in loaders] == [2, 2]


@pytest.mark.parametrize("rows", [65, 66, 129, 130])
def test_two_processes_take_the_steps_one_takes_whether_or_not_a_lone_example_is_dropped(rows):
    from compress.data.datasets import TensorPairs
    from compress.train.loop import _train_loader

    data = TensorPairs(torch.randn(rows, 4), torch.zeros(rows, dtype=torch.long))
    steps = {size: len(_train_loader(data, batch_size=32, seed=0, workers=0, world=SimpleNamespace(size=size, rank=0)))
             for size in (1, 2, 4)}
    assert steps[1] == steps[2] == steps[4] == (rows // 32 if rows % 32 == 1 else -(-rows // 32)), steps


def test_a_forward_that_raises_in_training_is_one_line_naming_the_model_epoch_and_batch(tmp_path: Path):
    # before: a raw traceback, exit 1 (validate runs the model in eval mode, so it passed)
    folder = _folder(tmp_path, mode="raises")
    assert _run_line(folder) == ("error: pipeline.toml: teacher.model: models:reg's forward raised RuntimeError in "
                                 "training (teacher, epoch 1, batch 1): only in training")


class _Raises(nn.Module):
    def __init__(self, error: BaseException):
        super().__init__()
        self.fc, self.error = nn.Linear(2, 2), error

    def forward(self, x):
        raise self.error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), CompressError("p.toml: data.source: ours, as it was")])
def test_an_interrupt_or_our_own_error_in_a_step_passes_through_untouched(error: BaseException):
    _passes_through(error)


def _passes_through(error: BaseException) -> None:
    """A step whose forward raises `error` raises that very exception: not wrapped as the user's code's failure."""
    objective = Objective(lambda s, t, y, i: s["logits"].sum(), ("logits",))
    batch = (torch.arange(2), torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(type(error)) as caught:
        step_loss(objective, _Raises(error), batch, "cpu", bf16=False, position=Position("student", 1, 1, 0),
                  origin="p.toml: distill.lr", lr=0.01)
    assert caught.value is error


# --- F5: the user's loss -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss, says", [
    ("vector", "returned a tensor of shape (48, 1) in training (teacher, epoch 1, batch 1); expected a scalar tensor "
               "computed from the outputs (reduce it, e.g. with .mean())"),
    ("number", "returned float 0.5 in training (teacher, epoch 1, batch 1); expected a scalar tensor computed from "
               "the outputs (reduce it, e.g. with .mean())"),
    ("detached", "returned a tensor without a gradient in training (teacher, epoch 1, batch 1); compute it from the "
                 "outputs with torch operations (not .item(), .detach() or numpy)"),
    ("raises", "raised KeyError in training (teacher, epoch 1, batch 1): 'boxes'"),
])
def test_a_users_loss_that_is_not_a_scalar_tensor_or_raises_is_one_line_naming_it(tmp_path: Path, loss: str,
                                                                                  says: str):
    # before: tracebacks at torch.isfinite (a vector, a float); a raising loss named neither the file nor the module
    folder = _folder(tmp_path, loss=f"losses:{loss}")
    assert _run_line(folder) == f"error: pipeline.toml: distill.loss: losses:{loss} {says}"


@pytest.mark.parametrize("value, says", [
    (0.5, "returned float 0.5 in training (student, epoch 1, batch 2); expected a scalar tensor computed from the "
          "outputs (reduce it, e.g. with .mean())"),
    (torch.tensor(0.5), "returned a tensor without a gradient in training (student, epoch 1, batch 2); compute it "
                        "from the outputs with torch operations (not .item(), .detach() or numpy)")])
def test_a_users_loss_added_to_the_distillation_term_is_checked_on_its_own(monkeypatch, tmp_path, value, says):
    # at the default alpha 0.5 the distillation term's gradient hid it: the student trained on the teacher alone
    import sys

    from compress.tasks.tensors import Tensors

    from compress.train.objective import Blame

    class Cached:  # a teacher whose outputs are cached (no model to run)
        model = None

        def __call__(self, index, x):
            return torch.ones(len(x), 2)

    monkeypatch.setitem(sys.modules, "userloss", SimpleNamespace(const=lambda outputs, targets: value))
    settings = SimpleNamespace(output_weights=None, loss="userloss:const", alpha=0.5)
    loss = Tensors().make_loss(settings, teacher=True, labels=True, base_dir=tmp_path)
    objective = Objective(loss, ("output",), teacher=Cached(),
                          blame=Blame(loss="p.toml: distill.loss: userloss:const", user_loss=True))
    batch = (torch.arange(2), torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(CompressError) as caught:
        step_loss(objective, nn.Linear(3, 2), batch, "cpu", bf16=False, position=Position("student", 1, 2, 1),
                  origin="p.toml: distill.lr", lr=0.01)
    assert str(caught.value) == f"p.toml: distill.loss: userloss:const {says}"


# --- F6: NaN before any optimiser step -------------------------------------------------------------------------------

class _NanAfter(nn.Module):
    """Finite outputs for `calls` training forwards, NaN after (a run that diverged)."""

    def __init__(self, calls: int):
        super().__init__()
        self.fc, self.calls = nn.Linear(2, 3), calls

    def forward(self, x):
        self.calls -= int(self.training)
        return self.fc(x) * (math.nan if self.calls < 0 else 1.0)


def _data():
    x = torch.randn(64, 2)
    return x, (x[:, 0] > 0).long()


def test_nan_after_steps_still_suggests_a_lower_learning_rate():
    x, y = _data()
    with pytest.raises(CompressError, match=r"^p.toml: distill.lr: student loss became nan at epoch 1, batch 3; "
                                            r"lower the learning rate \(lr = 0.01\)$"):
        fit(_NanAfter(2), (x, y), (x, y), TrainConfig(epochs=1, lr=0.01), seed=0, batch_size=16, progress=False,
            desc="student", origin="p.toml: distill.lr")


def test_nan_teacher_outputs_before_any_step_name_the_teacher():
    x, y = _data()
    logits = torch.zeros(64, 3)
    logits[:, 1] = math.nan
    with pytest.raises(CompressError, match=r"^the teacher's outputs for the first training batch hold NaN/inf"):
        fit(_NanAfter(99), (x, y), (x, y), TrainConfig(epochs=1), seed=0, teacher_logits=logits, alpha=0.5,
            progress=False)


def test_a_nan_loss_from_finite_outputs_before_any_step_names_the_loss():
    x, y = _data()
    objective = Objective(lambda s, t, y, i: s["logits"].sum() * math.nan, ("logits",))
    with pytest.raises(CompressError, match=r"^the loss returned nan on the first training batch from finite "
                                            r"outputs, before any optimiser step \(train, epoch 1, batch 1\)"):
        fit(_NanAfter(99), (x, y), (x, y), TrainConfig(epochs=1), seed=0, objective=objective, progress=False)


# --- F2: outputs whose batch is not on axis 0 ----------------------------------------------------------------------

def test_outputs_with_the_batch_on_axis_1_are_refused_at_validate(tmp_path: Path):
    # before: validate said ok; the run crashed after the teacher trained, in np.concatenate (exit 1)
    folder = _folder(tmp_path, mode="time_first")
    result = invoke(folder, "validate", "pipeline.toml")
    assert assert_one_line_error(result, folder) == (
        "error: pipeline.toml: teacher.model: models:reg returns output 'output' of shape (3, 2, 1) for 2 examples; "
        "compress needs every output batch-first (the 2 examples on axis 0): move the batch axis first in forward "
        "(e.g. .transpose(0, 1)) and back in your loss if it needs it")


class _TimeFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x).unsqueeze(0).expand(3, -1, -1)


def test_predict_refuses_an_output_that_is_not_batch_first():
    # the run-time guard for what validate's 2 examples cannot see (a time axis of 2)
    with pytest.raises(CompressError, match=r"^output 'logits' has shape \(3, 4, 2\) for a batch of 4 examples; "
                                            r"compress needs every output batch-first"):
        predict(_TimeFirst(), torch.randn(5, 4), batch_size=4)


@pytest.mark.parametrize("error", [RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer"),
                                   MemoryError("out of memory")], ids=["peer-lost", "memory"])
def test_a_dead_peer_or_memory_running_out_is_not_blamed_on_the_users_forward(error):
    # a dead DDP peer surfaces in the survivor's forward; compress.dist.failure must see it as it is
    _passes_through(error)
