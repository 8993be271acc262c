"""Tasks beyond class logits: a regression model and a two-output model with the user's own metric, through
`compress run` and `compress quantize --metric`; the tensors task's figures; the user metric's contract."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compress.cli import main
from compress.errors import CompressError

MODELS = '''
import torch
import torch.nn as nn


class Regressor(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)


class TwoHeads(nn.Module):
    """A value and a sign: two outputs, returned as a dict (named in the export)."""

    def __init__(self, hidden):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, hidden), nn.ReLU())
        self.value = nn.Linear(hidden, 1)
        self.sign = nn.Linear(hidden, 2)

    def forward(self, x):
        h = self.body(x)
        return {"value": self.value(h), "sign": self.sign(h)}


def regressor(hidden=32):
    return Regressor(hidden)


def two_heads(hidden=32):
    return TwoHeads(hidden)
'''

METRICS = '''
import numpy as np
import torch


def r2(outputs, targets):
    pred = outputs["output"].reshape(-1)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    return {"r2": float(1 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2)),
            "mae": float(np.mean(np.abs(pred - y)))}


def both(outputs, targets):
    value = outputs["value"].reshape(-1)
    sign_ok = outputs["sign"].argmax(1) == targets["sign"].reshape(-1)
    return {"error": float(np.mean(np.abs(value - targets["value"].reshape(-1)))),
            "sign_accuracy": float(np.mean(sign_ok))}


def loss(outputs, targets):
    value = torch.nn.functional.mse_loss(outputs["value"], targets["value"].float())
    return value + torch.nn.functional.cross_entropy(outputs["sign"], targets["sign"].long().reshape(-1))
'''

BENCH = """
[benchmark]
providers = ["cpu"]
batch_sizes = [1]
warmup_runs = 2
min_runs = 10
min_seconds = 0.0
repetitions = 1
"""


def _folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    value = (x @ rng.normal(size=8) + 0.5 * np.sin(3 * x[:, 0])).astype(np.float32)[:, None]
    np.savez(tmp_path / "reg.npz", x=x, y=value)
    np.savez(tmp_path / "two.npz", x=x, y_value=value, y_sign=(value[:, 0] > 0).astype(np.int64)[:, None])
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "metrics.py").write_text(METRICS)
    return tmp_path


def _run(folder: Path, body: str, *args: str):
    toml = folder / "p.toml"
    toml.write_text(textwrap.dedent(body) + BENCH)
    result = CliRunner().invoke(main, ["run", str(toml), "--quiet", *args])
    report_path = folder / "runs" / "t" / "report.json"
    return result, (json.loads(report_path.read_text()) if report_path.is_file() else None)


@pytest.mark.e2e
def test_a_regression_model_is_distilled_gated_and_reported_on_the_users_metric(tmp_path: Path):
    # setup: one float output per row, labels of that shape, R^2 as the metric
    folder = _folder(tmp_path)
    result, report = _run(folder, """
        [pipeline]
        name = "t"
        [data]
        source = "npz:reg.npz"
        task = "tensors"
        [teacher]
        model = "models:regressor"
        kwargs = { hidden = 64 }
        [teacher.train]
        epochs = 30
        [student]
        model = "models:regressor"
        kwargs = { hidden = 16 }
        [distill]
        epochs = 30
        control = true
        [quantize]
        mode = "dynamic"
        max_metric_drop = 0.05
        [evaluate]
        metric = "metrics:r2"
        """)
    # assert: the user's first figure is primary everywhere, every model has the task's figures beside it
    assert result.exit_code == 0, result.output
    assert report["primary_metric"] == {"name": "r2", "higher_is_better": True} and report["task"] == "tensors"
    models = {m["name"]: m for m in report["models"]}
    for name in ("teacher", "student", "control"):
        assert models[name]["metrics"]["r2"] > 0.8, (name, models[name]["metrics"])
        assert {"mae", "cosine", "cosine/output", "sqnr_db/output", "mse/output"} <= set(models[name]["metrics"])
    assert models["teacher"]["metrics"]["sqnr_db/output"] == 80.0  # itself: the cap
    import onnx  # the exported model says what its outputs are, for `compress quantize` and `edge` on the file

    meta = {p.key: p.value for p in onnx.load(str(folder / "runs/t" / models["student"]["path"])).metadata_props}
    assert meta["compress.task"] == "tensors"
    assert report["details"]["teacher"]["history"][0]["val"]["r2"] is not None  # the teacher was picked by r2
    gate = report["details"]["quantize"]["gate"]
    assert gate["metric"]["name"] == "r2" and gate["key"] == "quantize.max_metric_drop"
    md = (folder / "runs" / "t" / "report.md").read_text()
    assert "r2 (ORT, test)" in md and "Did the teacher help?" in md
    from compress.report import markdown

    models["teacher"]["parity"]["top1_agreement"] = 1.0  # as compare() gives a regressor with two values a row
    assert "- teacher: max abs diff" in markdown(report) and "top-1 agreement" not in markdown(report)


@pytest.mark.e2e
def test_a_two_output_model_trains_with_the_users_loss_and_quantizes_on_the_users_metric(tmp_path: Path):
    # setup: a dict of two outputs (value, sign logits), two targets (y_value, y_sign), the user's loss and metric
    folder = _folder(tmp_path)
    result, report = _run(folder, """
        [pipeline]
        name = "t"
        [data]
        source = "npz:two.npz"
        task = "tensors"
        [teacher]
        model = "models:two_heads"
        kwargs = { hidden = 64 }
        [teacher.train]
        epochs = 25
        [student]
        model = "models:two_heads"
        kwargs = { hidden = 16 }
        [distill]
        epochs = 25
        loss = "metrics:loss"
        output_weights = { value = 2.0 }
        [evaluate]
        metric = "metrics:both"
        primary = "error"
        higher_is_better = false
        """)
    assert result.exit_code == 0, result.output
    assert report["primary_metric"] == {"name": "error", "higher_is_better": False}
    models = {m["name"]: m for m in report["models"]}
    assert models["student"]["metrics"]["sign_accuracy"] > 0.8 and models["student"]["metrics"]["error"] < 0.6
    assert {"cosine/value", "cosine/sign", "sqnr_db/value"} <= set(models["student"]["metrics"])
    import onnxruntime as ort

    student = folder / "runs" / "t" / models["student"]["path"]
    assert [o.name for o in ort.InferenceSession(str(student)).get_outputs()] == ["value", "sign"]
    # execute: compress quantize on the exported student, gated on the same metric
    data = np.load(folder / "two.npz")
    np.savez(folder / "gate.npz", x=data["x"][:200], y_value=data["y_value"][:200], y_sign=data["y_sign"][:200])
    np.savez(folder / "calib.npz", x=data["x"][200:328])
    out = folder / "q" / "student-int8.onnx"
    q = CliRunner().invoke(main, ["quantize", str(student), "--out", str(out), "--calibration",
                                  str(folder / "calib.npz"), "--data", str(folder / "gate.npz"), "--metric",
                                  "metrics:both", "--primary", "error", "--lower-is-better", "--max-metric-drop",
                                  "0.2", "--quiet"], catch_exceptions=False)
    # assert: the summary names the gate, every attempt carries the metric's figures
    assert q.exit_code == 0, q.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["gate"] == "metrics:both on 200 samples from gate.npz"
    assert summary["gate_metric"]["metric"] == {"name": "error", "higher_is_better": False}
    accepted = [a for a in summary["attempts"] if a["accepted"]]
    assert accepted and "sign_accuracy" in accepted[0]["figures"] and out.is_file()


def test_tensors_figures_are_per_output_cosine_and_sqnr():
    from compress.tasks.tensors import Tensors

    ref = {"a": np.ones((4, 3)), "b": np.arange(8.0).reshape(4, 2)}
    noisy = {"a": ref["a"] + 0.01, "b": -ref["b"]}
    figures = Tensors().metrics(noisy, None, ref)
    assert figures["cosine/a"] == pytest.approx(1.0) and figures["cosine/b"] == pytest.approx(-1.0, abs=1e-9)
    assert 35 < figures["sqnr_db/a"] < 45 and figures["sqnr_db"] == figures["sqnr_db/b"] < 0
    assert figures["cosine"] == pytest.approx(0.0, abs=1e-6)
    assert Tensors().metrics(ref, None, ref)["sqnr_db"] == 80.0  # identical: the cap, not infinity
    labelled = Tensors().metrics(ref, {"b": np.zeros((4, 2))}, ref)
    assert labelled["mse/b"] == pytest.approx(np.mean(np.arange(8.0) ** 2)) and "mse/a" not in labelled


def test_an_output_of_one_value_a_sample_is_compared_over_the_batch():
    # Silero VAD's speech probability, (N, 1): an 8-bit copy that rounds 0.001 to 0 read cosine 0 on that row
    from compress.tasks.tensors import Tensors

    ref = {"p": np.array([[0.001], [0.5], [0.98], [0.002]])}
    rounded = {"p": np.array([[0.0], [0.502], [0.98], [0.0]])}
    figures = Tensors().metrics(rounded, None, ref)
    assert figures["cosine/p"] == pytest.approx(1.0, abs=1e-4) and figures["sqnr_db/p"] > 40
    flipped = Tensors().metrics({"p": ref["p"][::-1]}, None, ref)
    assert flipped["cosine/p"] < 0.85 and flipped["sqnr_db/p"] < 5  # wrong samples still show


def test_the_users_metric_must_return_numbers_and_its_primary(tmp_path: Path):
    from compress.tasks.metric import UserMetric

    (tmp_path / "m.py").write_text("def bad(o, t):\n    return 3\n\ndef ok(o, t):\n    return {'f1': 0.5, 'p': 1}\n"
                                   "\ndef boom(o, t):\n    raise KeyError('boxes')\n")
    with pytest.raises(CompressError, match=r"^evaluate.metric: m:bad returned int; expected a dict of figures"):
        UserMetric("m:bad", base_dir=tmp_path, origin="evaluate.metric")({}, None)
    with pytest.raises(CompressError, match=r"^evaluate.primary: 'map' is not among the figures m:ok returned "
                                            r"\(f1, p\)$"):
        UserMetric("m:ok", base_dir=tmp_path, origin="evaluate.metric", primary="map")({}, None)
    with pytest.raises(CompressError, match=r"^evaluate.metric: m:boom raised KeyError: 'boxes'$"):
        UserMetric("m:boom", base_dir=tmp_path, origin="evaluate.metric")({}, None)
    first = UserMetric("m:ok", base_dir=tmp_path, origin="evaluate.metric")
    assert first({}, None) == {"f1": 0.5, "p": 1.0} and first.primary.name == "f1"


def test_tensors_figures_are_the_same_compared_a_few_rows_at_a_time(monkeypatch):
    # setup: float32 outputs of 10 rows with a zero row, compared whole and 3 rows at a time (7 values a row)
    from compress.tasks import tensors

    rng = np.random.default_rng(0)
    ref = {"y": rng.standard_normal((10, 7)).astype(np.float32)}
    ref["y"][4] = 0
    out = {"y": ref["y"] + 0.05 * rng.standard_normal((10, 7)).astype(np.float32)}
    out["y"][4] = 0
    whole = tensors.Tensors().metrics(out, None, ref)
    monkeypatch.setattr(tensors, "CHUNK_VALUES", 21)
    # execute
    pieces = tensors.Tensors().metrics(out, None, ref)
    # assert: the same figures (the zero row agrees exactly: cosine 1), and the inputs untouched
    assert pieces == pytest.approx(whole, rel=1e-12) and 0.99 < whole["cosine/y"] < 1.0
    assert np.all(out["y"][4] == 0) and np.all(ref["y"][4] == 0)


VALIDATED = """
[pipeline]
name = "t"
[data]
source = "npz:{data}"
task = "tensors"
[teacher]
model = "models:{model}"
kwargs = {{ hidden = 16 }}
[teacher.train]
epochs = 1
[student]
model = "models:{model}"
kwargs = {{ hidden = 4 }}
"""


def _validate(folder: Path, data: str, model: str = "Regressor", extra: str = "") -> tuple[int, str, Path]:
    """`compress validate` on a tensors-task file of `data` and `model` (teacher and student), plus `extra`."""
    toml = folder / "p.toml"
    toml.write_text(VALIDATED.format(data=data, model=model) + extra)
    result = CliRunner().invoke(main, ["validate", str(toml)])
    return result.exit_code, result.output.strip(), toml


def test_a_teacher_to_train_on_data_without_targets_is_refused_at_validate(tmp_path: Path):
    # setup: inputs only; the teacher was trained toward -1, the "no label" fill, and the run exited 0
    folder = _folder(tmp_path)
    np.savez(folder / "noy.npz", x=np.load(folder / "reg.npz")["x"])
    # execute
    code, line, toml = _validate(folder, "noy.npz")
    # assert
    assert code == 2 and line == (f"error: {toml}: teacher.train: the data has no targets (npz y or y_NAME) to train a "
                                  "teacher on; give the teacher's checkpoint instead")


def test_a_nan_target_is_named_at_validate(tmp_path: Path):
    # before: training stopped at "loss became nan ... lower the learning rate", or, with the NaN in a validation
    # row, every val_loss was NaN and the epoch-1 weights shipped silently
    folder = _folder(tmp_path)
    arrays = dict(np.load(folder / "reg.npz"))
    arrays["y"][5, 0] = np.nan
    np.savez(folder / "reg.npz", **arrays)
    code, line, _ = _validate(folder, "reg.npz")
    assert code == 2 and line.endswith("reg.npz: y holds NaN at index 5 (first of 1 bad values); clean the data or "
                                       "drop those rows")


def test_an_output_weight_for_an_output_the_student_lacks_is_refused_at_validate(tmp_path: Path):
    # a mistyped name was never used, without a word
    extra = "[distill]\noutput_weights = { vaule = 2.0 }\n"
    code, line, toml = _validate(_folder(tmp_path), "two.npz", "two_heads", extra)
    assert code == 2 and line == (f"error: {toml}: distill.output_weights: the student has no output 'vaule'; its "
                                  "outputs are value, sign")


def test_a_nan_output_reads_the_worst_sqnr_not_the_cap():
    # min(80, nan) is 80: an all-NaN output read as perfect in the SQNR figure (the NPU's and the gate's)
    from compress.tasks.tensors import SQNR_CAP_DB, Tensors

    ref = np.ones((8, 4))
    out = ref.copy()
    out[3] = np.nan
    figures = Tensors().metrics({"out": out}, None, {"out": ref})
    assert figures["sqnr_db"] == -SQNR_CAP_DB and figures["cosine"] == pytest.approx(7 / 8)


def test_a_student_whose_outputs_come_in_another_order_is_refused():
    # the export names outputs by position: {"b", "a"} against the teacher's ("a", "b") swapped them in ONNX
    import torch

    from compress.tasks.tensors import Tensors

    teacher = {"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}
    with pytest.raises(CompressError, match=r"return a dict with the same keys, in the same order"):
        Tensors().check_outputs({"b": torch.zeros(2, 3), "a": torch.zeros(2, 3)}, num_classes=0, teacher=teacher,
                                origin="student", spec="m:f")


def test_a_builtin_regressor_gets_its_targets_width_for_num_classes(tmp_path: Path):
    # the tensors task has no class labels: num_classes was filled with 0, a zero-width head, and the error blamed
    # a [distill] loss the file did not have
    folder = _folder(tmp_path)
    toml = folder / "p.toml"
    toml.write_text(VALIDATED.format(data="reg.npz", model="Regressor").replace('"models:Regressor"', '"builtin:mlp"'))
    result = CliRunner().invoke(main, ["validate", str(toml)])
    assert result.exit_code == 0, result.output

    from types import SimpleNamespace

    from compress.families.torch import _num_classes

    assert _num_classes(SimpleNamespace(num_classes=0, task="embedding", has_targets=False)) is None


def test_a_target_that_labels_no_output_is_named_at_validate(tmp_path: Path, caplog):
    # a typo in y_NAME beside a target that fits was dropped without a word: that head trained on no label
    folder = _folder(tmp_path)
    two = dict(np.load(folder / "two.npz"))
    np.savez(folder / "typo.npz", x=two["x"], y_value=two["y_value"], y_sigm=two["y_value"])
    code, line, toml = _validate(folder, "typo.npz", "TwoHeads")
    assert code == 0, line
    assert [r.getMessage() for r in caplog.records if r.name == "compress"] == [
        f"warning: {toml}: data.source: target 'sigm' (npz y_sigm, per example (1,)) labels no output of the student "
        "(value (1,), sign (2,)), so the default loss does not use it; name each target after the output it labels, "
        "with that output's shape, or give [distill] loss = 'module:function' that reads it"]
    np.savez(folder / "typo.npz", x=two["x"], y_valu=two["y_value"])  # none fits: the default loss has no label
    code, line, toml = _validate(folder, "typo.npz", "TwoHeads")
    assert code == 2 and line == (  # it said "no target (per example {'valu': (1,)}) has the shape of an output"
        f"error: {toml}: distill.loss: target 'valu' (npz y_valu) names no output of the student (value (1,), sign "
        "(2,)); name each y_NAME after the output it labels; give [distill] loss = 'module:function' to compare your "
        "outputs with your targets")


def test_a_target_one_axis_short_of_its_output_says_the_shape_that_fits(tmp_path: Path):
    folder = _folder(tmp_path)
    reg = dict(np.load(folder / "reg.npz"))
    np.savez(folder / "flat.npz", x=reg["x"], y=reg["y"][:, 0])  # (N,) for the regressor's (N, 1)
    code, line, toml = _validate(folder, "flat.npz", "Regressor")
    assert code == 2 and line == (
        f"error: {toml}: distill.loss: no target (per example ()) has the shape of an output (output (1,)); y of "
        "shape (N, 1) fits it (y[..., None]); give [distill] loss = 'module:function' to compare your "
        "outputs with your targets")


def test_a_distill_loss_that_cannot_be_imported_is_named_at_validate(tmp_path: Path):
    # validate said "ok" and the run failed after the teacher stage
    folder = _folder(tmp_path)
    code, line, toml = _validate(folder, "two.npz", "TwoHeads", '[distill]\nloss = "metrics:nosuchloss"\n')
    assert code == 2 and line.startswith(f"error: {toml}: distill.loss: module 'metrics' has no attribute "
                                         "'nosuchloss'")
    assert _validate(folder, "two.npz", "TwoHeads", '[distill]\nloss = "metrics:loss"\n')[0] == 0


@pytest.mark.parametrize("metric, says", [
    ("python:metrics:r2", "expected 'module:function', got 'python:metrics:r2'; drop the 'python:' prefix: it marks "
                          "a data source, and this key takes 'module:function'"),
    ("metrics.r2", "expected 'module:function' (a Python module beside the TOML and a function in it), got "
                   "'metrics.r2'")])
def test_a_metric_that_is_not_module_function_says_so_in_words(tmp_path: Path, metric: str, says: str):
    # the field's regex was the message: "string should match pattern '^[A-Za-z_][\w.]*:...'"
    folder = _folder(tmp_path)
    code, line, toml = _validate(folder, "reg.npz", extra=f'[evaluate]\nmetric = "{metric}"\n')
    assert code == 2 and line == f"error: {toml}: evaluate.metric: {says}"


REGRESSION = """
    [pipeline]
    name = "t"
    [data]
    source = "npz:reg.npz"
    task = "tensors"
    [teacher]
    model = "models:regressor"
    [teacher.train]
    epochs = 1
    [student]
    model = "models:regressor"
    kwargs = { hidden = 4 }
    [distill]
    epochs = 1
    [evaluate]
    metric = "metrics:%s"
    """


@pytest.mark.parametrize("body, code, says", [
    ("    return None", 2, "evaluate.metric: metrics:bad returned NoneType; expected a dict of figures, e.g. "
     "{'map50': 0.71}"),
    ("    return {'r': [1, 2]}", 2, "evaluate.metric: metrics:bad returned 'r' = [1, 2]; every figure must be a number"),
    ("    raise ValueError('needs two classes')", 0, "warning: "),
])
def test_validate_calls_the_users_metric_once_before_training(tmp_path: Path, caplog, body: str, code: int,
                                                              says: str):
    # validate said ok, and run failed on it after the teacher had been trained and run over every split
    folder = _folder(tmp_path)
    (folder / "metrics.py").write_text(METRICS + f"\ndef bad(outputs, targets):\n{body}\n")
    (folder / "p.toml").write_text(textwrap.dedent(REGRESSION % "bad"))
    with caplog.at_level("WARNING", logger="compress"):
        result = CliRunner().invoke(main, ["validate", str(folder / "p.toml")])
    assert result.exit_code == code, result.output
    if code == 2:
        assert result.output.strip() == f"error: {folder / 'p.toml'}: {says}"
    else:  # an exception on 32 rows of an untrained model may not recur on a trained one: said, not refused
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
            f"warning: {folder / 'p.toml'}: evaluate.metric: metrics:bad raised ValueError: needs two classes (called "
            "once before training, on 32 validation rows of an untrained model)"]
    assert not (folder / "runs").exists()


def test_a_users_figure_named_like_the_tasks_own_is_said_once(tmp_path: Path, caplog):
    # {"cosine": 42.0} replaced the tensors task's cosine in every row of the report, unsaid
    from compress.tasks import evaluation_for
    from compress.tasks.metric import EvaluateConfig

    (tmp_path / "mine.py").write_text("def cos(o, t):\n    return {'cosine': 42.0, 'mine': 1.0}\n")
    evaluation = evaluation_for("tensors", EvaluateConfig(metric="mine:cos"), base_dir=tmp_path)
    outputs = {"output": np.ones((4, 2), np.float32)}
    with caplog.at_level("WARNING", logger="compress"):
        for _ in range(2):
            figures = evaluation(outputs, None, outputs)
    assert figures["cosine"] == 42.0 and figures["mine"] == 1.0
    assert [r.getMessage() for r in caplog.records] == [
        "warning: evaluate.metric: mine:cos returns 'cosine', named like the tensors task's own figure, which it "
        "replaces in the report; rename them to keep both"]


def test_a_run_that_stops_before_a_pick_reports_it_in_words(tmp_path: Path):
    # the metric raises on every split: report.md said "None (ORT, test)" and "Final model: **None**"
    folder = _folder(tmp_path)
    (folder / "metrics.py").write_text(METRICS + "\ndef bad(outputs, targets):\n    raise ValueError('x')\n")
    result, _ = _run(folder, REGRESSION % "bad")
    assert result.exit_code == 2, result.output
    md = (folder / "runs" / "t" / "report.md").read_text()
    assert "| first figure of metrics:bad (ORT, test) |" in md
    assert "Final model: none (the run stopped before one was picked)" in md and "None" not in md
