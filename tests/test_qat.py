"""Quantization-aware distillation: the QDQ graph run in torch (compress.qat.graph) against ONNX Runtime, its export,
the kernels ORT fuses, rebuild from a record, and `[quantize] mode = "qat"` in a pipeline."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

STATIC = {"mode": "static", "nodes_to_exclude": (), "per_channel": True, "reduce_range": False,
          "activation_type": "uint8", "weight_type": "int8", "calibration_method": "mean_minmax", "quant_format": "qdq",
          "bias_correction": True}


class Attention(torch.nn.Module):
    """One self-attention block with a -inf attention mask, LayerNorm and GELU: what a transformer student's graph
    holds, at toy size."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = torch.nn.Linear(8, 24), torch.nn.Linear(8, 8)
        self.norm, self.head = torch.nn.LayerNorm(8), torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = (q @ k.transpose(1, 2)) / 8 ** 0.5
        scores = scores.masked_fill(mask[:, None, :] == 0, float("-inf"))
        h = self.norm(x + self.out(torch.softmax(scores, dim=-1) @ v))
        return self.head(torch.nn.functional.gelu(h).mean(dim=1))


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()


def _quantized(tmp_path: Path, model: torch.nn.Module, feeds: dict[str, np.ndarray],
               **settings: object) -> tuple[Path, str]:
    """Export `model` (inputs named as `feeds`), pre-process and statically quantize it as the quantize stage does
    (STATIC, with `settings` over it)."""
    from compress.quantize import prepare as prep
    from compress.quantize.attempts import quantize_once

    names = list(feeds)
    args = tuple(torch.from_numpy(feeds[n][:2]) for n in names)
    torch.onnx.export(model, args, tmp_path / "f.onnx", input_names=names, output_names=["logits"],
                      dynamic_axes={n: {0: "b"} for n in names}, dynamo=False, opset_version=17)
    prep.preprocess(tmp_path / "f.onnx", tmp_path / "p.onnx", "static")
    rows = len(feeds[names[0]])
    calib = [{n: feeds[n][i:i + 8] for n in names} for i in range(0, rows, 8)]
    note = quantize_once(tmp_path / "p.onnx", tmp_path / "q.onnx", {**STATIC, **settings}, calib)
    return tmp_path / "q.onnx", note


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _fit(module: torch.nn.Module, feeds: dict[str, np.ndarray], target: torch.Tensor, steps: int = 20) -> None:
    """Train `module`'s logits toward `target` (mean squared error, Adam at 1e-2)."""
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(module(**{k: torch.from_numpy(v) for k, v in feeds.items()})["logits"],
                                            target)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _attention_feeds(rows: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((rows, 6), np.int64)
    mask[::2, 4:] = 0
    return {"x": rng.normal(size=(rows, 6, 8)).astype(np.float32), "mask": mask}


@pytest.mark.parametrize("settings", [{}, {"reduce_range": True}, {"weight_type": "uint8"}, {"per_channel": False}],
                         ids=["int8", "reduce_range", "uint8_weights", "per_tensor"])
def test_the_qdq_graph_in_torch_computes_what_onnx_runtime_computes_and_exports_unchanged(tmp_path, settings):
    # reduce_range (7-bit weights, for CPUs whose u8s8 products saturate) came back from an untrained export as
    # full 8-bit weights, and symmetric uint8 weights with scales 256/255 larger
    from compress.qat.graph import QDQModule

    x = np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32)
    path, _ = _quantized(tmp_path, _cnn(), {"input": x}, **settings)
    module = QDQModule(onnx.load(str(path)))
    with torch.no_grad():
        got = module(torch.from_numpy(x))["logits"].numpy()
    want = _ort(path, {"input": x})
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    module.export(tmp_path / "again.onnx")
    before = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "again.onnx")).graph.initializer}
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


@pytest.mark.parametrize("pool", [torch.nn.AvgPool2d(2), torch.nn.AvgPool2d(3, 2, 1)], ids=["2x2", "3x3_padded"])
def test_an_average_pool_computes_in_torch_what_onnx_runtimes_qlinearaveragepool_computes(tmp_path, pool):
    # ORT fuses DequantizeLinear -> AveragePool -> QuantizeLinear into QLinearAveragePool, which rounds
    # y / scale + zero point; over a 2x2 window the QDQ arithmetic landed one step apart in 236 of 256 samples
    from compress.qat.graph import QDQModule

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), pool,
                              torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    x = np.random.default_rng(0).normal(size=(256, 1, 8, 8)).astype(np.float32)
    path, _ = _quantized(tmp_path, net, {"input": x})
    module = QDQModule(onnx.load(str(path)))
    got = module(torch.from_numpy(x))["logits"]
    want = _ort(path, {"input": x})
    assert np.abs(got.detach().numpy() - want).max() <= 1e-6 * np.abs(want).max()
    got.sum().backward()  # the gradient is the QDQ arithmetic's, straight through
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters() if p.requires_grad)


def test_an_attention_block_with_a_minus_inf_mask_keeps_the_mask_in_float_and_matches_in_torch(tmp_path):
    from compress.qat.graph import QDQModule

    torch.manual_seed(0)
    feeds, model = _attention_feeds(), Attention().eval()
    path, note = _quantized(tmp_path, model, feeds)
    assert "infinite calibrated range" in note  # else ORT dequantizes 0 x inf = NaN on every masked score
    want = _ort(path, feeds)
    assert np.isfinite(want).all()
    with torch.no_grad():
        float_out = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    assert np.corrcoef(want.ravel(), float_out.ravel())[0, 1] > 0.9  # the int8 model still computes the block
    with torch.no_grad():
        got = QDQModule(onnx.load(str(path)))(**{k: torch.from_numpy(v) for k, v in feeds.items()})["logits"]
    assert np.abs(got.numpy() - want).max() <= 1e-4 * max(np.abs(want).max(), 1.0)


def test_training_changes_the_int8_values_and_the_export_runs_the_same_kernels_with_the_same_outputs(tmp_path):
    from safetensors.torch import save_file

    from compress.families import rebuild
    from compress.qat import kernels
    from compress.qat.graph import QDQModule
    from compress.records import ModelRecord, ModelSpec

    x = np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32)
    path, _ = _quantized(tmp_path, _cnn(), {"input": x})
    module = QDQModule(onnx.load(str(path)))
    _fit(module, {"input": x}, torch.randn(64, 10))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.params.values() if p.dim() == 0)
    module.eval()
    out = module.export(tmp_path / "qat.onnx")
    with torch.no_grad():
        got = module(torch.from_numpy(x))["logits"].numpy()
    want = _ort(out, {"input": x})
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).all()
    assert not np.allclose(want, _ort(path, {"input": x}))  # training moved the int8 model
    assert kernels(out) == kernels(path) and kernels(out).get("QLinearConv") == 2  # both convolutions in int8
    # a torchrun worker restores the same module from its record
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp_path / "w.safetensors"))
    record = ModelRecord(name="student-qat", role="student", spec=ModelSpec("builtin:cnn-small", {}, {}),
                         origin="t", quantization={"qat_graph": str(path), "freeze_at": 1})
    again = rebuild(record, data=None, base_dir=tmp_path, weights=tmp_path / "w.safetensors")
    with torch.no_grad():
        assert torch.equal(again(torch.from_numpy(x))["logits"], torch.from_numpy(got))


class Bag(torch.nn.Module):
    """Token ids through an embedding table, averaged, then a head: ORT quantizes the table as the Gather's
    activation (one scale and zero point for the table's DequantizeLinear and the Gather's QuantizeLinear)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(50, 8), torch.nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(dim=1))


def test_an_embedding_table_sharing_its_gathers_scale_trains_and_exports_what_onnx_runtime_then_computes(tmp_path):
    from compress.qat.graph import QDQModule

    torch.manual_seed(0)
    ids = np.random.default_rng(0).integers(0, 50, size=(64, 5)).astype(np.int64)
    path, _ = _quantized(tmp_path, Bag().eval(), {"ids": ids})
    module = QDQModule(onnx.load(str(path)))
    assert [w.tied for w in module.weights.values() if w.tied] == ["emb.weight_scale"]  # the graph has the tie
    _fit(module, {"ids": ids}, torch.randn(64, 3))  # the table and the shared scale both move
    module.eval()
    out = module.export(tmp_path / "qat.onnx")
    with torch.no_grad():
        got = module(torch.from_numpy(ids))["logits"].numpy()
    want = _ort(out, {"ids": ids})
    # before the tie the table was written with its own min-max scale and ORT read it with the Gather's: 2% off
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert not np.allclose(want, _ort(path, {"ids": ids}))


def test_frozen_ranges_stop_learning_and_come_back_with_the_weights(tmp_path):
    from compress.qat.graph import QDQModule

    x = np.random.default_rng(0).normal(size=(16, 1, 8, 8)).astype(np.float32)
    path, _ = _quantized(tmp_path, _cnn(), {"input": x})
    module = QDQModule(onnx.load(str(path)))
    module.freeze_at = 1
    name = next(iter(module.acts))
    with torch.no_grad():
        module.params[module.acts[name].param].fill_(0.1)
    module.epoch_end(1)
    frozen = module.act_scale(name).detach().clone()
    with torch.no_grad():
        module.params[module.acts[name].param].fill_(0.5)  # the optimiser may still move it: nothing changes
    assert torch.equal(module.act_scale(name).detach(), frozen)
    fresh = QDQModule(onnx.load(str(path)))
    fresh.load_state_dict(module.state_dict())
    assert bool(fresh.frozen) and torch.equal(fresh.act_scale(name).detach(), frozen)


def test_an_operator_without_a_torch_counterpart_is_named_before_training(tmp_path):
    from onnx import TensorProto, helper

    from compress.errors import CompressError
    from compress.qat.graph import QDQModule

    graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["y"], name="where_nonzero")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1, None])])
    with pytest.raises(CompressError, match="NonZero.*where_nonzero.*mode = 'static'"):
        QDQModule(helper.make_model(graph))


def test_qat_outside_a_pipeline_is_one_clear_error(tmp_path):
    from compress.errors import CompressError
    from compress.quantize import quantize
    from compress.quantize.config import QuantizeConfig

    with pytest.raises(CompressError, match="'qat' trains against the teacher, which only a pipeline has"):
        quantize(tmp_path / "m.onnx", tmp_path, QuantizeConfig(mode="qat"), gate=None, calibration=None,
                 feed=lambda b: {}, providers=["cpu"], batch_sizes=[1])


DIGITS_QAT = """
[pipeline]
name = "q"
[data]
source = "digits"
[teacher]
model = "builtin:cnn-large"
kwargs = { width = 16 }
[teacher.train]
epochs = 3
[student]
model = "builtin:cnn-small"
[distill]
epochs = 3
[quantize]
mode = "qat"
qat_epochs = 2
[benchmark]
providers = ["cpu"]
batch_sizes = [1]
min_runs = 10
min_seconds = 0.05
repetitions = 1
"""


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory) -> tuple[Path, object]:
    """DIGITS_QAT run once by the CLI from nothing: (its folder, the CLI result). Read only; a test that runs another
    file takes the teacher and distill stages from it (copied), as those sections are the same."""
    from click.testing import CliRunner

    from compress.cli import main

    folder = tmp_path_factory.mktemp("qat")
    (folder / "p.toml").write_text(DIGITS_QAT)
    return folder, CliRunner().invoke(main, ["run", str(folder / "p.toml"), "--quiet"])


@pytest.mark.e2e
def test_a_qat_pipeline_shows_ptq_and_qat_side_by_side_with_parity_and_the_same_kernels(qat_run):
    folder, result = qat_run
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "runs" / "q" / "report.json").read_text())
    details = report["details"]["quantize"]
    table = details["qat"]["side_by_side"]
    assert table["ptq"]["score"] > 0.5 and table["qat"]["score"] > 0.5  # chance: 0.1
    assert table["parity"]["kind"] == "top1_agreement" and table["parity"]["ok"]
    assert table["same_kernels"] is True and table["train_seconds"] > 0
    trained = details["attempts"][-1]["qat"]  # QAT that beat no post-training value holds them: nothing to time
    assert [r["batch"] for r in table["paired_qat_over_ptq"]] == ([] if trained["best_epoch"] == 0 else [1])
    assert details["qat"]["used"] in ("ptq", "qat") and details["qat"]["why"] in report["final_reason"]
    assert [a["name"] for a in details["attempts"]][-1] == "qat"
    assert details["attempts"][-1]["seconds"] >= table["train_seconds"]  # QAT's row is timed too: trained and scored
    source = table["distilled_from"]  # 'auto': the student only where it reads better than its teacher
    student, teacher = (float(v) for v in re.findall(r"(?:student|teacher) (\d\.\d+)", source["why"]))
    assert source["model"] == ("student" if student > teacher else "teacher"), source
    trained = details["attempts"][-1]["qat"]  # the validation figure before training and at the best epoch
    assert 0.5 < trained["val_before"] <= 1.0 and 0.5 < trained["val_best_epoch"] <= 1.0
    markdown = (folder / "runs" / "q" / "report.md").read_text()
    assert "Post-training vs quantization-aware" in markdown and "| QAT (qat) |" in markdown


@pytest.mark.e2e
def test_qat_distils_from_the_fp32_student_when_asked_and_keeps_the_teachers_validation_rows(qat_run, tmp_path):
    from click.testing import CliRunner

    from compress.cli import main
    from compress.train.outputs import open_outputs
    from tests.conftest import copy_folder

    # the teacher and the student as qat_run trained them (the same [teacher] and [distill]): from the cache
    copy_folder(qat_run[0], tmp_path, only=("runs/q/teacher", "runs/q/distill"))
    toml = tmp_path / "p.toml"
    toml.write_text(DIGITS_QAT.replace('mode = "qat"', 'mode = "qat"\nqat_teacher = "student"\nqat_steps = 3'))
    result = CliRunner().invoke(main, ["run", str(toml), "--quiet"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "q"
    report = json.loads((run / "report.json").read_text())
    source = report["details"]["quantize"]["qat"]["side_by_side"]["distilled_from"]
    assert source["model"] == "student" and source["why"].startswith("as configured (accuracy on validation: student")
    own, teacher = open_outputs(run / "quantize" / "qat-reference.safetensors"), open_outputs(
        run / "teacher" / "outputs.safetensors")
    name = next(iter(teacher["val"]))
    assert np.array_equal(own["val"][name], teacher["val"][name])  # figures still compare with the teacher's
    assert own["train"][name].shape == teacher["train"][name].shape
    assert not np.allclose(own["train"][name], teacher["train"][name])  # the student's own rows
    trained = report["details"]["quantize"]["attempts"][-1]["qat"]  # qat_steps: 3 batches an epoch, not a pass
    assert trained["examples_per_epoch"] == [3 * 64] * 2, trained["examples_per_epoch"]
    assert "QAT trained 2 epochs against the student (as configured" in (run / "report.md").read_text()


def test_a_qat_run_no_epoch_of_which_beat_the_post_training_values_says_it_kept_them():
    # report.md said "QAT trained 2 epochs" beside a QAT row of identical figures, timed against itself
    from compress.qat.pick import side_by_side, side_by_side_table

    def row(name: str, qat: dict | None = None) -> dict:
        return {"name": name, "side_by_side": True, "score": 0.19, "drop": 0.02, "bytes": 7000, "accepted": False,
                "test": {"accuracy": 0.2}, "drop_test": 0.03, "latency": {"rows": []}, **({"qat": qat} if qat else {})}

    kept = {"seconds": 3.0, "epochs": 2, "best_epoch": 0, "val_before": 0.1922, "val_best_epoch": 0.1699,
            "parity": {"what": "top-1 agreement 100.00%"}, "same_kernels": True}
    table = side_by_side({"attempts": [row("attempt-02"), row("qat", kept)], "qat": {"used": "ptq"}})
    text = "\n".join(side_by_side_table(table, "accuracy"))
    assert "No QAT epoch beat the post-training values on validation (accuracy 19.22% before, 16.99% at QAT's " \
           "best epoch), so the QAT graph keeps them" in text
    trained = side_by_side({"attempts": [row("attempt-02"), row("qat", {**kept, "best_epoch": 2})], "qat": {}})
    assert "No QAT epoch" not in "\n".join(side_by_side_table(trained, "accuracy"))


def _attempt(name: str, drop: float | None, accepted: bool) -> dict:
    return {"name": name, "drop": drop, "accepted": accepted, "qat": {"seconds": 1.0, "parity": {"ok": True}}}


def test_the_pick_keeps_a_post_training_model_that_loses_under_a_tenth_of_a_point_and_else_the_smaller_drop():
    from compress.qat.pick import pick_quantized
    from compress.quantize.gate import Gate
    from compress.tasks import Metric

    gate = Gate(score=lambda p: {}, metric=Metric("accuracy", True), budget=0.005, key="k", what="w")
    ptq, qat = _attempt("attempt-01", 0.0008, True), _attempt("qat", -0.01, True)
    chosen, note = pick_quantized(ptq, qat, gate)
    assert chosen is ptq and note["used"] == "ptq" and "QAT is not needed" in note["why"]
    chosen, note = pick_quantized(_attempt("attempt-01", 0.004, True), qat, gate)
    assert chosen is qat and note["used"] == "qat"
    assert note["why"].startswith("QAT gains 1.00 points (post-training 0.40 points)")  # not "loses -1.00"
    chosen, note = pick_quantized(None, qat, gate)
    assert chosen is qat and "no post-training attempt met the budget" in note["why"]
    chosen, note = pick_quantized(_attempt("attempt-01", 0.004, True), _attempt("qat", 0.0045, True), gate)
    assert chosen["name"] == "attempt-01" and "no better" in note["why"]
    chosen, note = pick_quantized(None, _attempt("qat", 0.02, False), gate)
    assert chosen is None and note["used"] is None


@pytest.mark.parametrize("domain", ["", "com.microsoft"])  # 16-bit QNN graphs below opset 21: com.microsoft's Q/DQ
def test_nodes_a_qnn_graph_leaves_in_float_are_named(tmp_path, domain: str):
    from onnx import TensorProto, helper

    from compress.qat.qnn import float_nodes

    s = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    z = helper.make_tensor("z", TensorProto.UINT16 if domain else TensorProto.UINT8, [], [0])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q", domain=domain),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq", domain=domain),
             helper.make_node("Relu", ["xd"], ["r"], name="quantized_in_float_out"),
             helper.make_node("Sigmoid", ["r"], ["sig"], name="float_in"),
             # a dynamic batch's shape math: integer Mul and Div on the batch dimension, not HTP's to run
             helper.make_node("Shape", ["sig"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["n"], name="batch", axis=0),
             helper.make_node("Mul", ["n", "four"], ["n4"], name="integer_mul"),
             helper.make_node("Div", ["n4", "four"], ["n1"], name="integer_div"),
             helper.make_node("Concat", ["n1", "minus_one"], ["target"], name="target", axis=0),
             helper.make_node("Reshape", ["sig", "target"], ["y"], name="reshape")]
    ints = [helper.make_tensor(name, TensorProto.INT64, [1], [value])
            for name, value in (("zero", 0), ("four", 4), ("minus_one", -1))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              initializer=[s, z, *ints])
    opsets = [helper.make_opsetid("", 18), *([helper.make_opsetid(domain, 1)] if domain else [])]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(tmp_path / "g.onnx"))
    assert float_nodes(tmp_path / "g.onnx") == [("quantized_in_float_out", "Relu"), ("float_in", "Sigmoid")]


@pytest.mark.slow  # two torchrun workers: about a minute on 2 cores; `make test-all` runs it
@pytest.mark.e2e
def test_qat_trains_in_torchrun_workers_restored_from_the_record(tmp_path):
    # the workers rebuild the QDQ graph from the record (compress.families.rebuild); DDP is told that some of its
    # constants get no gradient
    import subprocess
    import sys

    toml = tmp_path / "p.toml"
    toml.write_text(DIGITS_QAT)
    proc = subprocess.run([sys.executable, "-m", "compress", "run", str(toml), "--nproc", "2", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "runs" / "q" / "report.json").read_text())
    table = report["details"]["quantize"]["qat"]["side_by_side"]
    assert table["epochs"] == 2 and table["parity"]["ok"] and table["qat"]["score"] > 0.5
    assert list((tmp_path / "runs" / "q" / "quantize" / "dist").glob("*qat*"))


def test_static_calibration_takes_token_batches_of_different_lengths(tmp_path):
    # a text batch is as long as its longest row: mean_minmax's one-row batches were cut from one concatenated
    # array, which failed on the second batch's width, and every static attempt on real text failed
    from compress.quantize import prepare as prep
    from compress.quantize.attempts import quantize_once

    torch.manual_seed(0)
    model, feeds = Attention().eval(), _attention_feeds(8)
    torch.onnx.export(model, (torch.from_numpy(feeds["x"][:2]), torch.from_numpy(feeds["mask"][:2])),
                      tmp_path / "f.onnx", input_names=["x", "mask"], output_names=["logits"], dynamo=False,
                      opset_version=17, dynamic_axes={n: {0: "b", 1: "seq"} for n in ("x", "mask")})
    prep.preprocess(tmp_path / "f.onnx", tmp_path / "p.onnx", "static")
    calib = [{"x": feeds["x"][:4], "mask": feeds["mask"][:4]}, {"x": feeds["x"][4:, :4], "mask": feeds["mask"][4:, :4]}]
    quantize_once(tmp_path / "p.onnx", tmp_path / "q.onnx", dict(STATIC), calib)
    assert _ort(tmp_path / "q.onnx", {"x": feeds["x"][:2], "mask": feeds["mask"][:2]}).shape == (2, 3)


@pytest.mark.parametrize("cached", [True, False], ids=["faster_collector", "orts_counting"])
@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_keeps_a_minus_inf_mask_in_float_where_orts_collector_raised(tmp_path, monkeypatch,
                                                                                          method, cached):
    # before: "supplied range of [-inf, inf] is not finite" failed the entropy and percentile attempts of every
    # transformer with an HF-style mask (seen quantizing all-MiniLM-L6-v2 with `compress quantize`); without a
    # calibration cache (an older ORT, a model over 1 GB) ORT's own counting runs, handed the batches flattened
    from compress.quantize import calibrate

    if not cached:
        monkeypatch.setattr(calibrate, "supported", lambda: False)
    torch.manual_seed(0)
    feeds, model = _attention_feeds(), Attention().eval()
    path, note = _quantized(tmp_path, model, feeds, calibration_method=method)
    assert "infinite calibrated range" in note
    got = _ort(path, feeds)
    with torch.no_grad():
        want = model(*(torch.from_numpy(feeds[n]) for n in ("x", "mask"))).numpy()
    assert np.isfinite(got).all() and np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_an_infinite_range_on_a_graph_output_is_taken_off_and_the_output_keeps_its_name():
    from onnx import TensorProto, helper

    from compress.quantize.qdq import infinite_ranges_in_float

    s = helper.make_tensor("s", TensorProto.FLOAT, [], [float("inf")])
    z = helper.make_tensor("z", TensorProto.UINT8, [], [0])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], name="q"),
             helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"], name="dq"),
             helper.make_node("Neg", ["y"], ["w"], name="reader")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 4])], initializer=[s, z])
    model = helper.make_model(graph)
    assert infinite_ranges_in_float(model) == ["y"]
    assert [o.name for o in model.graph.output] == ["y", "w"]  # the contract's names
    assert [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node] == [
        ("Relu", ["x"], ["y"]), ("Neg", ["y"], ["w"])]
    assert not model.graph.initializer  # the pair's scale and zero point went with it


class SoftAttention(torch.nn.Module):
    """Self-attention without a mask: its Softmax output is quantized, and ORT CPU fuses it into QLinearSoftmax."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.head = torch.nn.Linear(8, 24), torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.head((torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v).mean(dim=1))


def test_a_quantized_softmax_computes_in_onnx_runtime_what_the_qdq_graph_and_torch_say(tmp_path):
    # setup: ORT's QLinearSoftmax requantizes with floor(1 / scale): at ORT's own 1/255 that is 254, one step low
    from compress.qat.graph import QDQModule

    torch.manual_seed(0)
    feeds = {"x": np.random.default_rng(0).normal(size=(64, 12, 8)).astype(np.float32) * 2}
    # execute
    path, _ = _quantized(tmp_path, SoftAttention().eval(), feeds)
    # assert: the Softmax output's scale is one whose reciprocal floors to 255, and torch's fake quantization of the
    # graph gives what ORT CPU computes (before the scale was pinned, 1/255 in the graph was 1/254 in ORT's kernel)
    model = onnx.load(str(path))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    scales = [inits[n.input[1]] for n in model.graph.node
              if n.op_type == "QuantizeLinear" and producer.get(n.input[0]) == "Softmax"]
    assert len(scales) == 1 and np.floor(np.float32(1) / scales[0]) == 255
    module = QDQModule(model)
    assert [a.fixed for a in module.acts.values()].count(True) == 1  # QAT does not move it
    with torch.no_grad():
        got = module(torch.from_numpy(feeds["x"]))["logits"].numpy()
    want = _ort(path, feeds)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_only_softmax_scales_ort_would_misread_are_pinned():
    # setup: a Softmax -> QuantizeLinear at 1/255 (misread) and one at 1/100 (read as written)
    from onnx import TensorProto, helper, numpy_helper

    from compress.quantize.qdq import pinned_softmax_scales

    def graph(scale: float):
        nodes = [helper.make_node("Softmax", ["x"], ["p"]), helper.make_node("QuantizeLinear", ["p", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s2", "z"], ["y"])]
        inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"),
                 numpy_helper.from_array(np.array(scale, np.float32), "s2"),
                 numpy_helper.from_array(np.array(0, np.uint8), "z")]
        return helper.make_model(helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits))

    misread, fine = graph(1 / 255), graph(1 / 100)
    # execute / assert: the pair reads a scale of its own (ORT's quantizer shares equal scales between tensors)
    assert pinned_softmax_scales(misread) == 1 and pinned_softmax_scales(fine) == 0
    values = {i.name: float(numpy_helper.to_array(i)) for i in misread.graph.initializer}
    q, dq = misread.graph.node[1:]
    assert q.input[1] == dq.input[1] == "q_softmax_scale" and values["s"] == float(np.float32(1 / 255))
    assert values["q_softmax_scale"] == float(np.float32(0.00392156839))
    assert np.floor(np.float32(1) / np.float32(values["q_softmax_scale"])) == 255


def _tied_sum() -> tuple[object, np.ndarray]:
    """GELU's 1 + erf: erf at scale 2/255 plus the constant 1 at 1/255 into a sum at 2/255 puts every sum exactly
    half-way between two codes; ORT's fused QLinearAdd and the QDQ arithmetic then round by their own float error."""
    from onnx import TensorProto, helper, numpy_helper

    two = np.array(2 / 255, np.float32)
    inits = [numpy_helper.from_array(two, "s2"), numpy_helper.from_array(np.array(128, np.uint8), "z128"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "s1"),
             numpy_helper.from_array(np.array(0, np.uint8), "z0"), numpy_helper.from_array(np.array(255, np.uint8), "one"),
             numpy_helper.from_array(two.copy(), "s_sum")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s2", "z128"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s2", "z128"], ["xd"]),
             helper.make_node("DequantizeLinear", ["one", "s1", "z0"], ["c"]),
             helper.make_node("Add", ["xd", "c"], ["sum"]),
             helper.make_node("QuantizeLinear", ["sum", "s_sum", "z0"], ["sq"]),
             helper.make_node("DequantizeLinear", ["sq", "s_sum", "z0"], ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])], inits),
        opset_imports=[helper.make_opsetid("", 13)])
    return model, np.random.default_rng(0).uniform(-1, 1, (256, 64)).astype(np.float32)


def _disagreeing(model, x: np.ndarray, emulate: bool = True) -> int:
    """Outputs where the QDQ graph in torch and ORT's int8 model differ (emulate=False: the plain QDQ sum)."""
    from compress.qat.graph import QDQModule

    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    module = QDQModule(model)
    if not emulate:
        module._fused = {}
    with torch.no_grad():
        got = module(torch.from_numpy(x))["y"].numpy()
    return int((np.abs(got - want) > 1e-4).sum())


def test_a_fused_add_computes_in_torch_what_onnx_runtimes_qlinearadd_computes_even_on_rounding_ties():
    model, x = _tied_sum()
    assert _disagreeing(model, x, emulate=False) > 1000  # the QDQ sum rounds its ties the other way
    assert _disagreeing(model, x) == 0


def test_a_sum_on_exact_rounding_ties_is_moved_off_them_so_torch_and_onnx_runtime_agree():
    from onnx import numpy_helper

    from compress.quantize.qdq import untied_add_scales

    model, x = _tied_sum()
    two = np.array(2 / 255, np.float32)
    # execute
    assert untied_add_scales(model) == 1
    # assert: the sum reads a scale of its own, 1 part in 65,536 larger, and torch and ORT give the same codes
    scale = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}[model.graph.node[4].input[1]]
    assert float(scale) == float(np.float32(float(two) * (1 + 2 ** -16)))
    assert _disagreeing(model, x, emulate=False) == 0 and _disagreeing(model, x) == 0


@pytest.mark.parametrize("task,student_val,expected", [("embedding", 0.94, "student"),
                                                       ("classification", 0.80, "teacher"),
                                                       ("classification", 0.95, "student")])
def test_auto_picks_what_qat_distils_from(tmp_path, monkeypatch, task, student_val, expected):
    """qat_teacher = 'auto': the fp32 student where it reads better than the teacher; for embeddings, whose figure is
    the cosine to the teacher's own outputs (1.0 for the teacher by construction), always the student."""
    from types import SimpleNamespace

    import compress.train as train
    from compress.qat import distilled_from

    rows = {"out": np.ones((3, 4), np.float32)}
    monkeypatch.setattr(train, "predict", lambda model, data, **kw: {"out": np.full((3, 4), 2.0, np.float32)})

    kind = task

    class Evaluation:
        primary = SimpleNamespace(name="score", better=lambda a, b: a > b)
        task = SimpleNamespace(name=kind)

        def __call__(self, got, targets, reference):
            return {"score": 1.0 if kind == "embedding" else 0.90}  # the teacher's own figure

    ctx = SimpleNamespace(run_dir=tmp_path, stage_dir=tmp_path, state=SimpleNamespace(teacher_outputs="t.safetensors"),
                          data=SimpleNamespace(augment=None, train=None, inputs=None, workers=0),
                          teacher_outputs={"train": rows, "val": rows}, evaluation=Evaluation(), targets=lambda s: None,
                          load_torch=lambda name: None, final=SimpleNamespace(name="student"),
                          figures_torch=lambda model, split: {"score": student_val}, output_names=("out",),
                          teacher=lambda: "the teacher")
    path, reference, source = distilled_from(ctx, "auto")
    assert source["model"] == expected, source
    if expected == "student":
        assert path == str(tmp_path / "qat-reference.safetensors")
        assert float(np.asarray(reference.outputs["out"]).mean()) == 2.0  # the student's own outputs
    else:
        assert reference == "the teacher" and path == str(tmp_path / "t.safetensors")
    if task == "embedding":
        assert "cosine to the teacher's own embeddings" in source["why"]


def test_parity_reads_dequantized_weight_matmuls_exactly(tmp_path):
    """A DequantizeLinear(uint8 weight) -> MatMul with a float activation (a QNN graph's W8A16 MatMul, as ORT CPU sees
    it) becomes ORT's MatMulNBits, which quantizes the activation to 8 bits at its default accuracy level; parity
    (compress.qat.parity) opens its session with EXACT_MATMULS, which computes it in float, and so do the QNN
    graph's CPU figures (compress.qat.qnn, compress.edge.qnn_flow)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.bench.providers import EXACT_MATMULS, open_session
    from compress.onnx.parity import run_cpu

    rng = np.random.default_rng(0)
    w = rng.integers(0, 256, (16, 4)).astype(np.uint8)
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]),
             helper.make_node("MatMul", ["a", "wf"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.01, np.float32), "s"),
             numpy_helper.from_array(np.array(144, np.uint8), "z")]
    graph = helper.make_graph(nodes, "w8", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "w8.onnx"))
    a = rng.standard_normal((2, 3, 16)).astype(np.float32)
    exact = a @ ((w.astype(np.float32) - 144) * 0.01)
    errors = {}
    for label, config in (("default", None), ("exact", EXACT_MATMULS)):
        session, _ = open_session(tmp_path / "w8.onnx", "cpu", 1, strict=True, config=config)
        errors[label] = float(np.abs(session.run(None, {"a": a})[0] - exact).max())
    # the QNN graph's CPU figures (the gate's score, int8_cpu beside HTP) run through run_cpu and outputs_on
    errors["run_cpu"] = float(np.abs(run_cpu(tmp_path / "w8.onnx", {"a": a}, config=EXACT_MATMULS)[0] - exact).max())
    # ORT 1.32 fuses it (default error 0.04 here); with the entry it is exact whatever the version fuses
    assert errors["exact"] < 1e-5 and errors["run_cpu"] < 1e-5, errors


def test_the_qnn_graphs_line_says_drops_of_a_share_in_points():
    # "(test: post-training drop 0.005571, QAT -0.01393)" beside a table in points
    from compress.stages.quantize import _markdown

    qnn = {"activation_type": "uint8", "used": "qat", "why": "QAT loses less", "float_nodes": [],
           "ptq": {"reason": "met", "drop_test": 0.005571}, "qat": {"reason": "met", "drop_test": -0.01393}}
    result = {"gate": {"what": "accuracy", "metric": {"name": "accuracy"}}, "preprocess": "-", "attempts": [],
              "cpu_int8": "-", "why": "-", "qat": {"qnn": qnn}}
    text = "\n".join(_markdown(result, None, "test"))
    assert "(test: post-training drop 0.56 points, QAT -1.39 points)" in text
