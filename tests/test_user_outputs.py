"""What a user's own model returns and how many classes it has: outputs compress cannot take are one line at validate
(exit 2), dict outputs prune as tuples do, a GRU is left to `prune.ignore` instead of a traceback, the default
importance follows the task, and an explicit num_classes above the data's labels wins.

Each case is a user's folder in tmp_path: `nets.py` with tiny models, an npz, a pipeline.toml.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.prune import PruneConfig, prune
from compress.prune.mechanics import checked_forward
from tests.test_bad_inputs import invoke

NETS = '''
from dataclasses import dataclass

import torch
import torch.nn as nn


class Heads(nn.Module):
    """Two outputs in a dict; `extra` adds one more entry (a list, None) to it."""

    def __init__(self, hidden=16, extra=""):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.value = nn.Linear(hidden, 1)
        self.sign = nn.Linear(hidden, 2)
        self.extra = extra

    def forward(self, x):
        h = self.body(x)
        out = {"value": self.value(h), "sign": self.sign(h)}
        if self.extra == "list":
            out["aux"] = [h, h * 2]
        elif self.extra == "none":
            out["loss"] = None
        return out


def heads(hidden=16, extra=""):
    return Heads(hidden, extra)


class Recurrent(nn.Module):
    """The 8 features as 2 steps of 4, through a GRU; the same two outputs."""

    def __init__(self, hidden=16):
        super().__init__()
        self.step = nn.Linear(4, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.post = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, 1)
        self.sign = nn.Linear(hidden, 2)

    def forward(self, x):
        h, _ = self.rnn(torch.relu(self.step(x.view(-1, 2, 4))))
        h = torch.relu(self.post(h[:, -1]))
        return {"value": self.value(h), "sign": self.sign(h)}


def recurrent(hidden=16):
    return Recurrent(hidden)


@dataclass
class Out:
    logits: torch.Tensor


class Classifier(nn.Module):
    def __init__(self, num_classes, hidden=16, wrap=False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.wrap = wrap

    def forward(self, x):
        logits = self.net(x)
        return Out(logits) if self.wrap else logits


def classifier(num_classes, hidden=16, wrap=False):
    return Classifier(num_classes, hidden, wrap)
'''

BENCH = '''
[benchmark]
providers = ["cpu"]
batch_sizes = [1]
warmup_runs = 1
min_runs = 5
min_seconds = 0.0
repetitions = 1
'''

TENSORS = '''
[pipeline]
name = "t"

[data]
source = "npz:two.npz"
task = "tensors"

[teacher]
model = "nets:heads"
kwargs = { hidden = 32 }

[teacher.train]
epochs = 2

[student]
model = "nets:heads"
kwargs = { hidden = 16 }

[distill]
epochs = 2
''' + BENCH

CLASSES = '''
[pipeline]
name = "c"

[data]
source = "npz:cls.npz"

[teacher]
model = "nets:classifier"
kwargs = { num_classes = 5 }
checkpoint = "teacher.pt"

[student]
model = "nets:classifier"
kwargs = { hidden = 8, num_classes = 5 }

[distill]
epochs = 2
''' + BENCH


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """nets.py; two.npz (8 features, a value and a sign label); cls.npz (labels 0..2 only) with a 5-class teacher."""
    import importlib.util

    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 8)).astype(np.float32)
    value = (x @ rng.normal(size=8)).astype(np.float32)[:, None]
    np.savez(tmp_path / "two.npz", x=x, y_value=value, y_sign=(value[:, 0] > 0).astype(np.int64)[:, None])
    np.savez(tmp_path / "cls.npz", x=x, y=(np.abs(x[:, 0]) * 2).astype(np.int64).clip(0, 2))
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "pipeline.toml").write_text(textwrap.dedent(TENSORS))
    (tmp_path / "classes.toml").write_text(textwrap.dedent(CLASSES))
    spec = importlib.util.spec_from_file_location("user_nets", tmp_path / "nets.py")
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    torch.save(nets.classifier(5).state_dict(), tmp_path / "teacher.pt")
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _error(folder: Path, toml: str = "pipeline.toml") -> str:
    """The one stderr line of `compress validate TOML`, which must exit 2."""
    result = invoke(folder, "validate", toml)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# ---------------------------------------------------------------- F15: outputs that are not tensors

TAKES = "but compress takes a tensor, or a tuple or dict of tensors, from forward"


@pytest.mark.parametrize("extra, line", [
    ("list", f"returns 'aux' as a list, {TAKES}; give each of its tensors a key of its own"),
    ("none", f"returns 'loss' as None, {TAKES}; leave it out of the dict when it has no value"),
])
def test_a_dict_entry_that_is_not_a_tensor_is_named_at_validate(folder: Path, extra: str, line: str):
    _edit(folder / "pipeline.toml", "kwargs = { hidden = 16 }", f'kwargs = {{ hidden = 16, extra = "{extra}" }}')
    assert _error(folder) == f"error: pipeline.toml: student.model: nets:heads {line}"


def test_a_dataclass_output_is_named_with_the_dict_to_return_instead(folder: Path):
    _edit(folder / "classes.toml", "hidden = 8,", "hidden = 8, wrap = true,")
    assert _error(folder, "classes.toml") == (
        f"error: classes.toml: student.model: nets:classifier returns Out, a dataclass, {TAKES}; return its tensors "
        "as a dict ({'logits': out.logits}) or the one tensor (out.logits)")


def test_a_tuple_item_that_is_not_a_tensor_is_named_by_its_place():
    from compress.tasks.base import not_tensors

    t = torch.zeros(2, 3)
    assert not_tensors((t, [t, t])) == f"item 1 of the tuple as a list, {TAKES}; return one flat tuple of tensors"
    assert not_tensors({"a": t, "b": 3}) == f"'b' as a int, {TAKES}; make it a tensor (torch.as_tensor)"
    assert not_tensors((t, {"a": t})) is not None and not_tensors({"a": t, "b": t}) is None


# ---------------------------------------------------------------- F1: pruning a model that returns a dict

class DictHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.value = nn.Linear(32, 1)
        self.sign = nn.Linear(32, 2)

    def forward(self, x):
        h = self.body(x)
        return {"value": self.value(h), "sign": self.sign(h)}


def _prune(model: nn.Module, x: torch.Tensor, **settings) -> nn.Module:
    cfg = PruneConfig(steps=1, finetune_epochs=0, importance="l2", **settings)
    pruned, _ = prune(model, cfg, example_input=x, finetune=lambda m, e: None, evaluate=lambda m: 0.5,
                      progress=False)
    return pruned


def test_a_model_returning_a_dict_is_pruned_as_one_returning_a_tuple():
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    pruned = _prune(DictHeads(), x, amount=0.5)
    assert pruned.body[0].out_features == 16 and pruned.body[2].in_features == 16
    assert checked_forward(pruned, x) == ((4, 1), (4, 2))  # every output checked, in the dict's order


# ---------------------------------------------------------------- F3: a GRU, and ignore = ["rnn"]

class ConvGRU(nn.Module):
    """[B, 1, 8, 16] -> conv, conv -> a GRU over the width -> a linear layer -> the head; per-step scores."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.rnn = nn.GRU(width * 4, width, batch_first=True)
        self.fc = nn.Linear(width, 16)
        self.head = nn.Linear(16, 6)

    def forward(self, x):
        f = self.conv(x)
        b, c, h, w = f.shape
        f, _ = self.rnn(f.permute(0, 3, 1, 2).reshape(b, w, c * h))
        return self.head(torch.relu(self.fc(f)))


@pytest.mark.parametrize("ignore", [(), ("rnn",)])
def test_a_gru_is_left_alone_and_the_layers_around_it_still_prune(ignore, recwarn):
    torch.manual_seed(0)
    model, x = ConvGRU(), torch.randn(4, 1, 8, 16)
    pruned = _prune(model, x, amount=0.5, ignore=ignore)
    # the GRU and the channels it reads (conv.2's outputs) stay; conv.0 and fc, which it does not touch, shrink
    assert pruned.conv[0].out_channels == 4 and pruned.conv[2].out_channels == 8
    assert (pruned.rnn.input_size, pruned.rnn.hidden_size) == (32, 8)
    assert pruned.fc.out_features == 8 and pruned.head.in_features == 8
    assert checked_forward(pruned, x) == ((4, 8, 6),)
    assert not [w for w in recwarn if "Unwrapped parameters" in str(w.message)]  # Torch-Pruning's, about the GRU


class OneConv(ConvGRU):
    """Nothing to prune but conv.0, whose outputs the GRU reads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Identity()
        self.head = nn.Linear(8, 6)


@pytest.mark.parametrize("ignore, line", [
    ((), "prune: no layer is left to prune: besides the head ('head'), every Conv or Linear layer feeds a recurrent "
         "layer ('rnn' (GRU)), which Torch-Pruning has no rule for, so it and the channels it reads stay as they are; "
         "prune a student with more layers, or remove [prune]"),
    (("rnn",), "prune.ignore: no layer is left to prune: besides the head ('head'), every Conv or Linear layer is "
               "ignored or feeds a module left as it is ('rnn'), which reads its channels as they are; ignore fewer "
               "modules, prune a student with more layers, or remove [prune]"),
])
def test_a_model_with_nothing_to_prune_around_its_gru_says_so(ignore, line):
    with pytest.raises(CompressError) as err:
        _prune(OneConv(), torch.randn(4, 1, 8, 16), amount=0.5, ignore=ignore)
    assert str(err.value) == line


def test_a_model_torch_pruning_cannot_trace_is_one_error_not_a_second_crash_in_the_diagnosis(monkeypatch):
    import torch_pruning as tp

    def broken(self, *args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", broken)
    with pytest.raises(CompressError) as err:
        _prune(DictHeads(), torch.randn(4, 8), amount=0.5)
    assert str(err.value) == ("prune: Torch-Pruning cannot trace this model's dependency graph: IndexError: list index "
                              "out of range; use method = 'magnitude' or simplify the forward()")
    assert isinstance(err.value.__cause__, IndexError) and err.value.__context__ is err.value.__cause__


def test_a_failed_trace_names_the_modules_torch_pruning_has_no_rule_for():
    from compress.prune.tracing import way_out

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(8))

        def forward(self, x):
            return x * self.gain

    model = nn.Sequential(nn.Linear(8, 8), Scaled(), nn.GRU(8, 8), nn.Linear(8, 2))
    assert way_out(model, [model[3]]) == (
        "it has no rule for '1' (Scaled): add it to prune.ignore (ignore = ['1']) so pruning leaves it and the "
        "channels around it alone, or use method = 'magnitude'")  # the GRU is left alone anyway


# ---------------------------------------------------------------- F4: the default importance follows the task

def test_the_default_importance_is_not_refused_for_the_tensors_task_but_an_explicit_taylor_is(folder: Path):
    toml = folder / "pipeline.toml"
    toml.write_text(toml.read_text() + "\n[prune]\namount = 0.5\n")
    result = invoke(folder, "validate", "pipeline.toml")
    assert result.exit_code == 0, result.output
    toml.write_text(toml.read_text() + 'importance = "taylor"\n')
    assert _error(folder) == ("error: pipeline.toml: prune.importance: 'taylor' ranks channels by the gradient of the "
                              "classification loss; use 'l1' or 'l2' for the tensors task")


def test_validate_finds_what_pruning_the_student_would_refuse_before_any_training(folder: Path):
    toml = folder / "pipeline.toml"
    toml.write_text(toml.read_text() + "\n[prune]\namount = 0.5\nignore = [\"bodyy\"]\n")
    assert _error(folder).startswith("error: pipeline.toml: prune.ignore: no module named 'bodyy' in the model")
    _edit(toml, "amount = 0.5", "amount = 0.99\nround_to = 32")
    _edit(toml, 'ignore = ["bodyy"]', "")
    assert _error(folder) == ("error: pipeline.toml: prune.amount: removing 0.99 of the channels removes nothing from "
                              "this model: every layer keeps at least round_to = 32 channel(s) and none has more; "
                              "lower prune.round_to or prune a wider student")


def test_the_default_importance_is_taylor_for_classification_and_l2_otherwise():
    assert PruneConfig(amount=0.5).ranking("classification") == "taylor"
    assert PruneConfig(amount=0.5).ranking("tensors") == "l2" == PruneConfig(amount=0.5).ranking("embedding")
    assert PruneConfig(amount=0.5, importance="l1").ranking("classification") == "l1"


@pytest.mark.e2e
def test_a_gru_student_returning_a_dict_is_pruned_in_the_pipeline_ranked_by_the_tasks_default(folder: Path):
    toml = folder / "pipeline.toml"
    _edit(toml, 'model = "nets:heads"\nkwargs = { hidden = 16 }', 'model = "nets:recurrent"\nkwargs = { hidden = 16 }')
    toml.write_text(toml.read_text() + "\n[prune]\namount = 0.5\nsteps = 1\nfinetune_epochs = 1\n")
    assert invoke(folder, "validate", "pipeline.toml").exit_code == 0
    result = invoke(folder, "run", "pipeline.toml", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "runs/t/report.json").read_text())
    assert report["details"]["prune"]["importance"] == "l2"
    params = {m["name"]: m["params"] for m in report["models"]}
    assert params["student-pruned"] < params["student"]
    assert ("Channels ranked by 'l2', the norm of their weights: the default for the tensors task ('taylor' needs "
            "the gradient of a classification loss). Left as they are: 'rnn' (GRU), with the channels they read "
            "(Torch-Pruning has no rule for recurrent layers).") in (folder / "runs/t/report.md").read_text()


# ---------------------------------------------------------------- F13: more classes than the labels show

def test_an_explicit_num_classes_above_the_labels_wins(folder: Path):
    result = invoke(folder, "validate", "classes.toml")
    assert result.exit_code == 0, result.output


def test_a_num_classes_below_the_labels_is_refused_naming_the_key(folder: Path):
    _edit(folder / "classes.toml", "hidden = 8, num_classes = 5", "hidden = 8, num_classes = 2")
    assert _error(folder, "classes.toml") == ("error: classes.toml: student.kwargs.num_classes: the data's labels run "
                                              "0..2, so the model needs at least 3 classes, got 2")


def test_a_student_with_fewer_classes_than_the_teacher_is_told_to_match_it(folder: Path):
    _edit(folder / "classes.toml", "hidden = 8, num_classes = 5", "hidden = 8")
    assert _error(folder, "classes.toml") == (
        "error: classes.toml: student.model: nets:classifier outputs 3 classes, the teacher 5; the student learns the "
        "teacher's class scores one by one, so set num_classes = 5 in student.kwargs")


def test_without_the_kwarg_the_checkpoint_mismatch_says_which_key_takes_more_classes(folder: Path):
    _edit(folder / "classes.toml", "kwargs = { num_classes = 5 }", "kwargs = { hidden = 16 }")
    line = _error(folder, "classes.toml")
    assert line.startswith(f"error: classes.toml: teacher.checkpoint: {folder / 'teacher.pt'} does not match the "
                           "model: its last layer 'net.2.weight' has 5 outputs, the model's 3: for a classifier with "
                           "more classes than the data's labels show, set num_classes = 5 in teacher.kwargs; Error(s) "
                           "in loading state_dict for Classifier: size mismatch for net.2.weight")


def test_a_fixed_head_with_more_classes_is_told_to_take_num_classes(folder: Path):
    _edit(folder / "nets.py", "def classifier(", "def fixed(hidden=16):\n    return Classifier(5, hidden)\n\n\n"
                                                 "def classifier(")
    _edit(folder / "classes.toml", 'model = "nets:classifier"\nkwargs = { num_classes = 5 }', 'model = "nets:fixed"')
    assert _error(folder, "classes.toml") == (
        "error: classes.toml: teacher.model: nets:fixed outputs (2, 5) for 2 examples; the data has 3 classes, so "
        "expected (2, 3) logits; for a model with more classes than the labels show, give its factory a num_classes "
        "parameter and set num_classes = 5 in teacher.kwargs")


@pytest.mark.e2e
def test_a_teacher_with_more_classes_than_the_labels_distils_and_exports(folder: Path):
    result = invoke(folder, "run", "classes.toml", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "runs/c/report.json").read_text())
    models = {m["name"]: m for m in report["models"]}
    assert {"teacher", "student"} <= set(models) and all("accuracy" in m["metrics"] for m in models.values())


def test_a_checkpoint_narrower_than_the_data_says_the_data_is_wider(tmp_path: Path):
    # y of width 3 and a 2-output teacher checkpoint: torch's size-mismatch text alone, cut mid-word at 300 characters
    import torch
    from safetensors.torch import save_file

    from compress.errors import CompressError
    from compress.models import load_weights

    save_file(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)).state_dict(), str(tmp_path / "t.safetensors"))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    with pytest.raises(CompressError) as err:
        load_weights(model, tmp_path / "t.safetensors", "p.toml: teacher.checkpoint")
    assert str(err.value).startswith(
        f"p.toml: teacher.checkpoint: {tmp_path / 't.safetensors'} does not match the model: its last layer '1.weight' has 2 "
        "outputs, the model's 3 (num_classes, from the data's labels or target width unless teacher.kwargs sets it): "
        "the data holds more classes or a wider target than the checkpoint was trained for; check the data, or "
        "retrain the teacher; Error(s) in loading state_dict")
