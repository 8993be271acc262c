"""QNN target: placement measured on the HTP simulator, accuracy beside ORT CPU, EPContext, not-installed path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress.edge import qnn
from compress.edge.qnn_flow import _DEFAULT_FIX, blockers, prepare_qnn, readiness_entry

DIGITS = Path(__file__).resolve().parents[1] / "compress" / "data" / "digits.npz"


def _digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(DIGITS) as z:
        return z["x"][:n].astype(np.float32)[:, None] / 16.0, z["y"][:n]


def _tiny_cnn(path: Path) -> Path:
    import torch
    import torch.nn as nn

    from compress.onnx.export import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    return export_onnx(model, torch.zeros(1, 1, 8, 8), path)


def _graph_with(op: str, path: Path) -> Path:
    """Relu -> `op` -> Relu on a fixed [1, 4, 4] float input, node names relu_in, odd, relu_out."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu_in"), helper.make_node(op, ["a"], ["b"], name="odd"),
             helper.make_node("Relu", ["b"], ["y"], name="relu_out")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


LOG = """\
2026-11-23 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation FAILED for 1 nodes in OrtNodeUnit (Det) :
\tOperator type: Det Node name: odd Node index: 1
\tREASON : Operators of type `Det` are not supported by QNN EP.

2026-11-23 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation PASSED for 2 nodes in OrtNodeUnit (Relu) :
\tOperator type: Relu Node name: relu_in Node index: 0
\tOperator type: Relu Node name: relu_out Node index: 2
"""


def test_parse_validation_log_reads_each_node_with_its_reason():
    assert qnn.parse_validation_log(LOG) == {
        "odd": {"op_type": "Det", "passed": False, "reason": "Operators of type `Det` are not supported by QNN EP."},
        "relu_in": {"op_type": "Relu", "passed": True, "reason": None},
        "relu_out": {"op_type": "Relu", "passed": True, "reason": None},
    }


def test_blockers_group_by_op_and_name_the_usual_fix():
    refused = [{"name": "a", "op_type": "Conv", "reason": "Cannot get shape"},
               {"name": "b", "op_type": "Conv", "reason": "Cannot get shape"},
               {"name": "c", "op_type": "Det", "reason": "Operators of type `Det` are not supported by QNN EP."}]
    got = blockers(refused)
    assert [(b["op_type"], b["nodes"]) for b in got] == [("Conv", 2), ("Det", 1)]
    assert got[0]["fix"].startswith("fix the shapes: [export] fixed_batch = 1")
    assert got[1]["fix"] == _DEFAULT_FIX
    # the simulator's default chip out of memory at finalize (PP-OCRv4's detector): name a phone's chip
    finalize = "accepted, then the graph failed to compile: ... Failed to finalize QNN graph. Error: " \
               "QNN_COMMON_ERROR_MEM_ALLOC: Memory allocation related error., Code: 1002"
    assert "--qnn-option soc_model=60" in blockers([{"name": "d", "op_type": "Concat", "reason": finalize}])[0]["fix"]


def test_a_quantize_node_refused_with_its_ops_unit_joins_that_ops_group():
    # the EP validates DQ -> Erf -> Q as one unit: the Q carried Erf's reason and read as a second blocker
    erf = "Operators of type `Erf` are not supported by QNN EP.Erf node `/Erf` will not be assigned to QNN EP."
    got = blockers([{"name": "/Erf", "op_type": "Erf", "reason": erf},
                    {"name": "/Erf_q", "op_type": "QuantizeLinear", "reason": erf}])
    assert [(b["op_type"], b["nodes"], b.get("with")) for b in got] == [("Erf", 1, ["QuantizeLinear"])]
    assert "a torch.erf of the model's own has no HTP kernel" in got[0]["fix"]
    own = blockers([{"name": "q", "op_type": "QuantizeLinear", "reason": "Operators of type `QuantizeLinear` ..."}])
    assert [(b["op_type"], b["nodes"]) for b in own] == [("QuantizeLinear", 1)]  # refused for itself: its own group


def test_not_installed_is_reported_with_the_install_line(monkeypatch, tmp_path):
    # setup: onnxruntime_qnn not importable, nothing registered yet
    monkeypatch.setitem(qnn._registered, "status", None)
    monkeypatch.delitem(qnn._registered, "status")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime_qnn", None)
    # execute
    section = prepare_qnn(tmp_path / "never-read.onnx", tmp_path, calibration=np.zeros((1, 1, 8, 8), np.float32))
    # assert
    assert section == {"provider": "QNNExecutionProvider", "installed": False,
                       "reason": f"not installed; {qnn.INSTALL}", "install": qnn.INSTALL}
    assert readiness_entry(section)["available"] is False
    assert not (tmp_path / "qnn.json").exists()


@pytest.mark.qnn
def test_tiny_cnn_runs_entirely_on_htp_with_a_matching_context_model(tmp_path):
    x, y = _digits(24)
    section = prepare_qnn(_tiny_cnn(tmp_path / "cnn.onnx"), tmp_path / "edge", calibration=x[:8], val_x=x,
                          val_y=y, latency_runs=3)
    placed = section["placement"]
    assert (placed["nodes_on_htp"], placed["share_on_htp"], placed["partitions"]) == (placed["nodes_total"], 1.0, 1)
    assert placed["refused"] == [] and section["blockers"] == []
    assert section["runs_without_fallback"] is True
    assert section["accuracy"]["samples"] == 24
    # an untrained model's logits are near ties, so uint8 rounding flips a few; trained ones: docs/qnn.md
    assert section["accuracy"]["top1_agreement_htp_vs_int8_cpu"] >= 0.9
    assert section["context"]["loads"] is True and section["context"]["parity"]["ok"] is True
    assert section["latency"]["simulated"] is True
    assert sorted(p.name for p in (tmp_path / "edge").iterdir()) == [
        "cnn.batch1.onnx", "cnn.qnn.qdq.onnx", "cnn.qnn_ctx.onnx", "qnn.json"]
    assert readiness_entry(section)["suitability"] == "yes"


@pytest.mark.qnn
def test_convolution_weights_are_int8_per_channel_on_htp_an_old_opset_raised_to_13_for_it(tmp_path):
    # setup: Conv -> Relu -> Flatten -> Gemm at opset 12, where DequantizeLinear has no axis
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.edge.qnn import quantize_for_qnn

    rng = np.random.default_rng(0)
    weights = {"w": rng.normal(0, 0.3, (4, 1, 3, 3)) * np.array([1, 10, 0.1, 3])[:, None, None, None],
               "b": np.zeros(4), "fc": rng.normal(0, 0.1, (10, 256)), "fb": np.zeros(10)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    old = tmp_path / "cnn12.onnx"
    onnx.save(model, str(old))
    x, _ = _digits(24)
    # execute
    qdq = quantize_for_qnn(old, tmp_path / "cnn.qdq.onnx", {"x": x[:8]})
    section = prepare_qnn(old, tmp_path / "edge", calibration=x[:8], val_x=x, latency_runs=2)
    # assert: the Conv's weight has 4 int8 codes' scales (one per output channel), the Linear's one uint8 scale;
    # HTP runs the graph whole
    model = onnx.load(str(qdq))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    conv, gemm = (next(n for n in model.graph.node if n.op_type == op) for op in ("Conv", "Gemm"))
    weight = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert consts[weight[conv.input[1]].input[1]].shape == (4,)
    assert consts[weight[conv.input[1]].input[0]].dtype == np.int8
    assert consts[weight[gemm.input[1]].input[1]].size == 1
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    placed = section["placement"]
    assert placed["nodes_on_htp"] == placed["nodes_total"] and section["runs_without_fallback"] is True


def test_only_weights_that_convolutions_alone_read_go_per_channel_and_grouped_transposes_stay_per_tensor(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.edge.qnn import conv_weights

    weights = {"w": np.ones((4, 1, 3, 3)), "shared": np.ones((4, 4, 1, 1)), "t1": np.ones((4, 2, 2, 2)),
               "t2": np.ones((4, 1, 2, 2)), "shape": np.array([4, 4])}
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "shared"], ["b"]),
             helper.make_node("Reshape", ["shared", "shape"], ["m"]),  # the same weight read as a matrix too
             helper.make_node("ConvTranspose", ["b", "t1"], ["c"]),
             helper.make_node("ConvTranspose", ["c", "t2"], ["d"], group=2)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("m", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v, np.float32 if k != "shape" else np.int64), k)
                               for k, v in weights.items()])
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"))
    assert conv_weights(tmp_path / "g.onnx") == {"w": 0, "t1": 1}


@pytest.mark.qnn
def test_placement_names_the_node_htp_refused_and_why(tmp_path):
    model = _graph_with("Det", tmp_path / "det.onnx")
    placed = qnn.placement(model, tmp_path / "det_ctx.onnx")
    assert (placed["nodes_total"], placed["nodes_on_htp"], placed["partitions"]) == (3, 2, 2)
    assert [(n["name"], n["op_type"]) for n in placed["refused"]] == [("odd", "Det")]
    assert "`Det` are not supported by QNN EP" in placed["refused"][0]["reason"]
    assert qnn.runs_without_fallback(model)["ok"] is False


@pytest.mark.qnn
def test_dynamic_batch_is_refused_with_the_fixed_shape_fix(tmp_path):
    placed = qnn.placement(_tiny_cnn(tmp_path / "cnn.onnx"), tmp_path / "ctx.onnx")
    assert (placed["nodes_on_htp"], placed["context_path"]) == (0, None)
    assert {n["reason"] for n in placed["refused"]} == {"Cannot get shape"}
    assert blockers(placed["refused"])[0]["fix"].startswith("fix the shapes")


@pytest.mark.qnn
def test_cli_edge_provider_qnn_measures_and_writes_the_context_model(tmp_path):
    from click.testing import CliRunner

    from compress.cli import main

    x, y = _digits(16)
    np.savez(tmp_path / "calib.npz", input=x, y=y)
    model = _tiny_cnn(tmp_path / "cnn.onnx")
    result = CliRunner().invoke(main, ["edge", str(model), "--out", str(tmp_path / "edge"), "--fixed-batch", "1",
                                       "--provider", "qnn", "--calibration", str(tmp_path / "calib.npz")])
    assert result.exit_code == 0, result.output
    assert "runs with CPU fallback disabled: yes" in result.output
    assert (tmp_path / "edge" / "cnn.qnn_ctx.onnx").is_file() and (tmp_path / "edge" / "cnn.batch1.basic.ort").is_file()


def test_cli_edge_provider_qnn_without_calibration_is_exit_2(tmp_path):
    from click.testing import CliRunner

    from compress.cli import main

    result = CliRunner().invoke(main, ["edge", str(_tiny_cnn(tmp_path / "cnn.onnx")), "--provider", "qnn"])
    assert result.exit_code == 2
    assert "--provider qnn: needs --calibration DATA.npz" in result.output


@pytest.mark.qnn
@pytest.mark.e2e
def test_pipeline_edge_targets_qnn_measures_the_final_model(ran_dir):
    tiny_dir = ran_dir  # teacher and distill from tiny_run's cache: the file's own, unchanged
    from tests.test_pipeline import _run_with

    result, report = _run_with(tiny_dir, '\n[export]\nort_format = true\nfixed_batch = 1\nedge_targets = ["qnn"]\n'
                                         'qnn_options = { soc_model = 60 }\n'
                                         '\n[quantize]\nmode = "static"\nmax_accuracy_drop = 0.05\n')
    assert result.exit_code == 0, result.output
    edge = report["edge"]
    # the NPU is judged by the quantize gate's budget (it took its own 0.01 and contradicted the quantize stage)
    assert edge["qnn"]["budget"]["metric"] == "accuracy" and edge["qnn"]["budget"]["budget"] == 0.05
    assert "QNN HTP (test) budget: accuracy drop " in result.output and " points <= 5.00 points" in result.output
    assert edge["qnn"]["provider_options"] == {"soc_model": "60"}  # the phone's chip, as the QNN EP was given it
    assert edge["readiness"]["providers"]["QNN"]["measured"] is True
    assert edge["qnn"]["placement"]["share_on_htp"] == 1.0 and edge["qnn"]["runs_without_fallback"] is True
    assert edge["qnn"]["accuracy"]["samples"] == 80  # the test split of the 400 tiny digits
    assert (tiny_dir / "runs/tiny" / edge["qnn"]["placement"]["context_path"]).is_file()
    md = (tiny_dir / "runs/tiny/report.md").read_text()
    assert "### Qualcomm NPU (QNN HTP backend, simulated here; latency not used for the pick)" in md
    assert "runs with CPU fallback disabled: yes" in md and "top-1 agreement HTP vs ORT CPU int8" in md
    # the terminal summary says what the NPU took and how it read (it said nothing of the NPU)
    nodes = f"{edge['qnn']['placement']['nodes_on_htp']}/{edge['qnn']['placement']['nodes_total']} nodes on HTP"
    assert f"QNN HTP: {nodes}" in result.output and "QNN HTP (test) budget: " in result.output


@pytest.mark.parametrize("section, message", [
    ('edge_targets = ["qnn"]', "pipeline.toml: export: edge_targets run in the edge stage: set ort_format = true as well"),
    ('ort_format = true\nedge_targets = ["npu"]', "pipeline.toml: export.edge_targets.0: expected 'qnn', got 'npu'"),
])
def test_edge_targets_are_checked_when_the_file_loads(tiny_dir, section, message):
    from click.testing import CliRunner

    from compress.cli import main

    toml = tiny_dir / "pipeline.toml"
    toml.write_text(toml.read_text() + f"\n[export]\n{section}\n")
    result = CliRunner().invoke(main, ["validate", str(toml)])
    assert result.exit_code == 2
    assert message in result.output


def test_a_missing_qnn_plugin_is_said_before_training_and_is_exit_2_under_strict(tiny_dir, monkeypatch, caplog):
    # it was said last, after every model had trained, and [benchmark] strict = true did not apply to it
    from click.testing import CliRunner

    from compress.cli import main

    monkeypatch.setattr(qnn, "qnn_status", lambda: {"installed": False, "reason": "not installed; pip install x"})
    toml = tiny_dir / "pipeline.toml"
    plain = toml.read_text() + '\n[export]\nort_format = true\nedge_targets = ["qnn"]\n'
    toml.write_text(plain)
    line = f"{toml}: export.edge_targets: 'qnn' needs the onnxruntime-qnn plugin, not installed; pip install x"
    assert CliRunner().invoke(main, ["validate", str(toml)]).exit_code == 0
    assert [r.getMessage() for r in caplog.records if r.name == "compress"] == [
        f"warning: {line}; the edge stage will report the target as not installed"]
    toml.write_text(plain.replace('providers = ["cpu", "cuda"]', 'providers = ["cpu"]\nstrict = true'))
    result = CliRunner().invoke(main, ["run", str(toml)])
    assert result.exit_code == 2 and f"error: {line} (benchmark.strict = true)" in result.output
    assert not (tiny_dir / "runs" / "tiny" / "teacher").exists()


@pytest.mark.qnn
def test_bench_kit_runs_the_model_on_qnn_htp_and_compare_reads_it(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from click.testing import CliRunner

    from compress.cli import main
    from compress.kit import make_kit

    # setup: the QNN QDQ model in a kit (expected outputs from ORT CPU on this machine)
    x, y = _digits(8)
    section = prepare_qnn(_tiny_cnn(tmp_path / "cnn.onnx"), tmp_path / "edge", calibration=x, latency_runs=2)
    kit = make_kit(Path(section["qdq_path"]), tmp_path / "kit", inputs={"input": x[:1]}, providers=["qnn"],
                   min_runs=5, min_seconds=0.0, repetitions=1, warmup_runs=1)
    # execute: the kit's own script, the whole graph required on the NPU
    done = subprocess.run([sys.executable, str(kit / "bench_kit.py"), "--json", "device.json", "--atol", "1",
                           "--provider-option", "qnn:session.disable_cpu_ep_fallback=1", "--strict"],
                          cwd=kit, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    # assert
    assert done.returncode == 0, done.stderr
    report = json.loads((kit / "device.json").read_text())
    rows = report["models"][0]["latency"]
    assert [r["provider"] for r in rows] == ["QNNExecutionProvider"]
    result = CliRunner().invoke(main, ["compare", str(kit / "device.json"), str(kit / "device.json")])
    assert result.exit_code == 0, result.output
    assert "QNNExecutionProvider" in result.output


def abort_after_marking() -> None:
    """What a native abort inside a provider looks like to the process: SIGABRT, after a stage was reached."""
    import os

    from compress.edge.isolated import mark

    mark("placement on HTP")
    os.abort()


def test_a_native_abort_in_the_provider_is_one_line_naming_signal_and_stage(tmp_path):
    from compress.edge.isolated import ProviderCrashed, run_isolated

    with pytest.raises(ProviderCrashed) as err:
        run_isolated("tests.test_qnn:abort_after_marking", {}, out_dir=tmp_path, name="qnn",
                     provider="QNNExecutionProvider")
    assert err.value.exit_code == 1
    assert str(err.value).startswith("provider QNNExecutionProvider: the provider's native code ended the process with "
                                     "signal 6 (SIGABRT) during 'placement on HTP'")


def test_the_npu_budget_judges_the_figure_the_outputs_allow():
    from compress.edge.qnn_flow import judge

    labelled = {"accuracy_drop_htp_vs_fp32": 0.311, "outputs_look_like_logits": True, "accuracy_fp32_cpu": 0.9,
                "accuracy_int8_cpu": 0.895}
    got = judge(labelled, 0.01)
    assert {k: got[k] for k in ("metric", "drop", "budget", "ok")} == {"metric": "accuracy", "drop": 0.311,
                                                                      "budget": 0.01, "ok": False}
    # ORT CPU reads the same QDQ graph within the budget: HTP is where it parts (Magika's Reciprocal)
    assert got["int8_cpu_drop"] == pytest.approx(0.005) and "HTP computes it differently" in got["where"]
    assert got["where"].endswith("not its 8-bit codes")
    assert judge(labelled, 0.01, "uint16")["where"].endswith("not its 16-bit codes")  # PP-OCRv4's detector at 16
    logits = {"outputs_look_like_logits": True, "top1_agreement_htp_vs_fp32_cpu": 0.995}
    assert judge(logits, 0.01)["ok"] and judge(logits, 0.01)["metric"] == "top-1 agreement with fp32"
    assert judge(logits, 0.01)["where"] is None
    boxes = {"outputs_look_like_logits": False, "cosine_htp_vs_fp32_cpu": 0.78, "top1_agreement_htp_vs_fp32_cpu": 0,
             "cosine_int8_cpu_vs_fp32_cpu": 0.75}
    assert judge(boxes, 0.01)["metric"] == "cosine to fp32" and not judge(boxes, 0.01)["ok"]
    # the 8-bit graph loses on ORT CPU too (PP-OCRv4's recogniser): 16-bit activations, not HTP
    assert "--activation-type uint16" in judge(boxes, 0.01)["where"]
    assert "with 16-bit activations" in judge(boxes, 0.01, "uint16")["where"]  # already 16 bits: not that advice


@pytest.mark.qnn
def test_a_model_with_metadata_props_goes_to_htp_and_keeps_them(tmp_path):
    # ORT's qnn_preprocess_model raised TypeError on models that carry metadata_props (YOLO, PP-OCR)
    import onnx

    from compress.onnx.graph import set_metadata

    x, y = _digits(16)
    model = _tiny_cnn(tmp_path / "cnn.onnx")
    set_metadata(model, {"names": "{0: 'digit'}", "stride": "8"})
    section = prepare_qnn(model, tmp_path / "edge", calibration=x[:8], val_x=x, val_y=y, latency_runs=2)
    assert section["placement"]["nodes_on_htp"] == section["placement"]["nodes_total"]
    props = {p.key: p.value for p in onnx.load(section["qdq_path"]).metadata_props}
    assert {k: props[k] for k in ("names", "stride")} == {"names": "{0: 'digit'}", "stride": "8"}


@pytest.mark.qnn
def test_cli_edge_provider_qnn_is_exit_1_when_htp_cannot_run_the_whole_model(tmp_path):
    # a node HTP refuses (Det): the rest may run there with CPU fallback, but the NPU target is the whole model
    from click.testing import CliRunner

    from compress.cli import main

    model = _graph_with("Det", tmp_path / "det.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 4, 4)).astype(np.float32))
    result = CliRunner().invoke(main, ["edge", str(model), "--out", str(tmp_path / "edge"), "--provider", "qnn",
                                       "--calibration", str(tmp_path / "calib.npz")])
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert "provider qnn: the HTP backend cannot run the whole model with CPU fallback disabled" in line, line
    assert "; fix: not supported by the QNN EP" in line  # the refused node's usual fix, in the same line
    assert (tmp_path / "edge" / "edge.json").is_file()


class _MaskedAttention:
    """A self-attention block with the padding mask as a Hugging Face export builds it: Where(mask, 0, -inf) added
    to the scores, then Softmax: the graph HTP could not finalize before compress.edge.mask."""

    @staticmethod
    def export(path: Path) -> Path:
        import torch

        class Block(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.emb, self.qkv = torch.nn.Embedding(32, 8), torch.nn.Linear(8, 24)
                self.norm, self.head = torch.nn.LayerNorm(8), torch.nn.Linear(8, 4)

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                x = self.emb(input_ids)
                q, k, v = self.qkv(x).chunk(3, dim=-1)
                bias = torch.where(attention_mask[:, None, :] > 0, 0.0, float("-inf"))
                probs = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5 + bias, dim=-1)
                probs = torch.where(torch.isnan(probs), 0.0, probs)  # the exporters' guard for fully masked rows
                return self.head(self.norm(x + probs @ v).mean(dim=1))

        torch.manual_seed(0)
        ids, mask = torch.randint(0, 32, (2, 6)), torch.ones(2, 6, dtype=torch.int64)
        torch.onnx.export(Block().eval(), (ids, mask), path, input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                                                 "attention_mask": {0: "batch", 1: "seq"}},
                          dynamo=False, opset_version=17)
        return path


def _token_feeds(rows: int = 16, seq: int = 6) -> dict:
    rng = np.random.default_rng(0)
    mask = np.ones((rows, seq), np.int64)
    mask[::2, 4:] = 0
    return {"input_ids": rng.integers(0, 32, (rows, seq)).astype(np.int64), "attention_mask": mask}


def test_the_mask_rewrite_keeps_the_outputs_and_leaves_no_infinite_or_boolean_mask(tmp_path):
    import onnx
    import onnxruntime as ort

    from compress.edge.mask import MARGIN, finite_attention_mask

    src = _MaskedAttention.export(tmp_path / "block.onnx")
    feeds = _token_feeds()
    done = finite_attention_mask(src, tmp_path / "masked.onnx", feeds)
    assert len(done) == 1 and done[0]["fill"] <= -MARGIN
    model = onnx.load(str(tmp_path / "masked.onnx"))
    assert not {"IsNaN", "And", "Not"} & {n.op_type for n in model.graph.node}
    run = (lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0])
    assert np.abs(run(tmp_path / "masked.onnx") - run(src)).max() < 1e-4  # masked weights < e^-12
    assert finite_attention_mask(_tiny_cnn(tmp_path / "cnn.onnx"), tmp_path / "none.onnx", {}) == []


@pytest.mark.qnn
def test_a_two_input_attention_model_runs_entirely_on_htp_at_a_fixed_sequence_length(tmp_path):
    src = _MaskedAttention.export(tmp_path / "block.onnx")
    feeds = _token_feeds()
    section = prepare_qnn(src, tmp_path / "edge", calibration=feeds, val_x=feeds, seq=6, latency_runs=3,
                          logits=False)
    placed = section["placement"]
    assert placed["nodes_on_htp"] == placed["nodes_total"] and placed["partitions"] == 1
    assert section["runs_without_fallback"] is True and section["seq"] == 6
    assert section["finite_mask"] and section["accuracy"]["cosine_htp_vs_fp32_cpu"] > 0.99
    assert section["budget"]["metric"] == "cosine to fp32"
    assert section["context"]["loads"] is True and section["context"]["parity"]["ok"] is True


def test_a_nan_guard_on_a_graph_output_stays_and_the_others_go():
    from onnx import TensorProto, helper

    from compress.edge.mask import _no_nan_guards

    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = []
    for name in ("inner", "outer"):
        nodes += [helper.make_node("Softmax", ["x" if name == "inner" else "inner_out"], [f"{name}_p"]),
                  helper.make_node("IsNaN", [f"{name}_p"], [f"{name}_nan"]),
                  helper.make_node("Where", [f"{name}_nan", "zero", f"{name}_p"], [f"{name}_out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("outer_out", TensorProto.FLOAT, [1, 4])],
                              initializer=[zero])
    _no_nan_guards(graph)
    assert [(n.op_type, list(n.input)) for n in graph.node] == [
        ("Softmax", ["x"]), ("Softmax", ["inner_p"]), ("IsNaN", ["outer_p"]),
        ("Where", ["outer_nan", "zero", "outer_p"])]


@pytest.mark.qnn
def test_shape_arithmetic_on_the_fixed_batch_is_folded_so_htp_takes_the_whole_graph(tmp_path):
    # setup: a free batch and a Shape -> Expand chain that sizes a tensor by it (a jax2tf export's way: Google's
    # Magika), so fixing the batch alone leaves ONNX Runtime, and QNN, without the Expand's shape
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.edge.shapes import fix_batch, shapes_static

    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Expand", ["ones"], ["e"], name="expand"),
             helper.make_node("Mul", ["x", "e"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    nodes[1].input.append("s")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(np.full((1, 4), 0.5, np.float32), "ones")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / "expand.onnx"
    onnx.save(model, str(path))
    assert not shapes_static(fix_batch(path, tmp_path / "only-fixed.onnx", 1))
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    # execute
    section = prepare_qnn(path, tmp_path / "edge", calibration=x[:8], val_x=x, latency_runs=3)
    # assert: the model compared and quantized is folded (no Shape left, every shape fixed) and HTP takes all of it
    fixed = onnx.load(str(tmp_path / "edge" / "expand.batch1.onnx"))
    assert "Shape" not in {n.op_type for n in fixed.graph.node}
    assert shapes_static(tmp_path / "edge" / "expand.batch1.onnx")
    placed = section["placement"]
    assert placed["nodes_on_htp"] == placed["nodes_total"] > 0 and placed["refused"] == []


def test_a_wrong_scale_misses_the_npu_budget_though_the_cosine_is_perfect():
    from compress.edge.qnn_flow import judge

    scaled = {"outputs_look_like_logits": False, "cosine_htp_vs_fp32_cpu": 1.0, "sqnr_db_htp_vs_fp32_cpu": 1.3,
              "cosine_int8_cpu_vs_fp32_cpu": 0.9995, "sqnr_db_int8_cpu_vs_fp32_cpu": 30.0}  # HTP: a seventh of it
    got = judge(scaled, 0.01)
    assert not got["ok"] and got["metric"].startswith("error relative to fp32") and got["drop"] > 0.3
    assert got["int8_cpu_drop"] == pytest.approx(0.0005) and "HTP computes it differently" in got["where"]
    plain = {"outputs_look_like_logits": False, "cosine_htp_vs_fp32_cpu": 0.9977, "sqnr_db_htp_vs_fp32_cpu": 23.4}
    assert judge(plain, 0.01)["metric"] == "cosine to fp32" and judge(plain, 0.01)["ok"]  # YOLOv8n's figures
    # the larger of the two decides, also where the cosine names the metric
    close = {"outputs_look_like_logits": False, "cosine_htp_vs_fp32_cpu": 0.99, "sqnr_db_htp_vs_fp32_cpu": 15.23}
    assert judge(close, 0.01)["drop"] == pytest.approx(0.015, abs=1e-4) and not judge(close, 0.01)["ok"]
    zeros = {"outputs_look_like_logits": False, "cosine_htp_vs_fp32_cpu": 0.0, "sqnr_db_htp_vs_fp32_cpu": -3090.0}
    assert not judge(zeros, 0.01)["ok"]  # an all-zero fp32 output: no overflow


def test_a_graph_the_default_chip_cannot_finalize_is_compiled_for_a_larger_one_and_said(monkeypatch, tmp_path):
    # PP-OCRv4's detector and Silero VAD run out of memory finalizing on the simulator's default chip only
    from compress.edge import qnn_flow

    calls = []

    def placement(qdq, context, provider_options=None):
        calls.append(dict(provider_options or {}))
        error = None if "soc_model" in (provider_options or {}) else (
            "[ONNXRuntimeError] : 11 : EP_FAIL : Failed to finalize QNN graph. Error: QNN_COMMON_ERROR_MEM_ALLOC")
        return {"compile_error": error, "refused": []}

    monkeypatch.setattr(qnn_flow, "placement", placement)
    placed, options, note = qnn_flow._placed(tmp_path / "m.qdq.onnx", tmp_path / "ctx.onnx", {"htp_arch": "73"})
    assert calls == [{"htp_arch": "73"}, {"htp_arch": "73", "soc_model": "60"}]
    assert placed["compile_error"] is None and options == {"htp_arch": "73", "soc_model": "60"}
    assert note.startswith("the simulator's default chip ran out of memory finalizing the graph") and \
        "--qnn-option soc_model=N" in note
    calls.clear()  # a chip the user named is never replaced
    placed, options, note = qnn_flow._placed(tmp_path / "m.qdq.onnx", tmp_path / "ctx.onnx", {"soc_model": "57"})
    assert len(calls) == 1 and options == {"soc_model": "57"} and note is None


@pytest.mark.qnn
def test_a_given_qdq_graph_keeps_the_rewrites_it_was_made_with_in_the_summary(tmp_path):
    # the pipeline's edge stage is handed the quantize stage's QNN graph: its summary named no rewrite before
    from compress.edge.qnn_flow import qnn_table

    x, _ = _digits(16)
    model = _tiny_cnn(tmp_path / "cnn.onnx")
    qdq = qnn.quantize_for_qnn(model, tmp_path / "made.qdq.onnx", {"input": x[:8]})
    made = {"reciprocals_as_division": [{"node": "recip", "one": "reciprocal_one"}]}
    section = prepare_qnn(model, tmp_path / "edge", calibration=x[:8], val_x=x, latency_runs=2, qdq=qdq,
                          rewrites=made)
    assert section["reciprocals_as_division"] == made["reciprocals_as_division"]
    assert "1 Reciprocal(s) as Div" in qnn_table(section)


def _one_wide_channel(path: Path) -> Path:
    """x [1, 16] times [100, 1, ..., 1], then the 15 narrow channels: at 8 bits the wide one's scale rounds them
    away, at 16 bits they keep their values."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    scale = np.ones((1, 16), np.float32)
    scale[0, 0] = 100.0
    consts = {"scale": scale, "starts": np.array([1]), "ends": np.array([16]), "axes": np.array([1])}
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["t"], name="widen"),
         helper.make_node("Slice", ["t", "starts", "ends", "axes"], ["y"], name="narrow")], "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 15])],
        [numpy_helper.from_array(v if k == "scale" else v.astype(np.int64), k) for k, v in consts.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _wide_then_narrow(path: Path) -> Path:
    """x [1, 16] times [100, 1, ..., 1] (t), then its 15 narrow channels, plus a bias, through a Relu: only t needs
    16 bits; x, the slice, the sum and the Relu read the same at 8."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    scale = np.ones((1, 16), np.float32)
    scale[0, 0] = 100.0
    consts = {"scale": scale, "starts": np.array([1]), "ends": np.array([16]), "axes": np.array([1]),
              "bias": np.full((1, 15), 0.5, np.float32)}
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["t"], name="widen"),
         helper.make_node("Slice", ["t", "starts", "ends", "axes"], ["u"], name="narrow"),
         helper.make_node("Add", ["u", "bias"], ["v"], name="shift"),
         helper.make_node("Relu", ["v"], ["y"], name="relu")], "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 15])],
        [numpy_helper.from_array(v if v.dtype == np.float32 else v.astype(np.int64), k) for k, v in consts.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _wide_chain(path: Path, links: int = 6) -> Path:
    """x [1, 16] times [100, 1, ..., 1], then `links` more element-wise steps that keep the wide channel, then the 15
    narrow channels: every step's activation needs 16 bits, more than half of the graph's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    scale = np.ones((1, 16), np.float32)
    scale[0, 0] = 100.0
    nodes = [helper.make_node("Mul", ["x", "scale"], ["t0"], name="widen")]
    for i in range(links):
        nodes.append(helper.make_node("Mul" if i % 2 else "Add", [f"t{i}", f"c{i}"], [f"t{i + 1}"], name=f"step{i}"))
    nodes.append(helper.make_node("Slice", [f"t{links}", "starts", "ends", "axes"], ["y"], name="narrow"))
    consts = [numpy_helper.from_array(scale, "scale")] + [
        numpy_helper.from_array(np.full((1, 16), 1.01 if i % 2 else 0.01, np.float32), f"c{i}") for i in range(links)
    ] + [numpy_helper.from_array(np.array([v], np.int64), k) for k, v in (("starts", 1), ("ends", 16), ("axes", 1))]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 15])], consts)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_activation_8_bits_damage_most_ranks_first(tmp_path):
    from compress.edge.mixed import noisy_activations

    model = _wide_then_narrow(tmp_path / "wide.onnx")
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    ranked = noisy_activations(model, [{"x": x[i:i + 1]} for i in range(8)])
    assert ranked[0][0] == "t" and {name for name, _ in ranked} >= {"x", "t", "v", "y"}, ranked
    assert ranked[0][1] < ranked[1][1] - 6, ranked  # a hundredfold channel: over 6 dB (a bit) below the next


def test_the_ranking_takes_every_op_qnn_quantizes_and_leaves_out_the_outlier_tensors(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from compress.edge.mixed import noisy_activations

    # Exp, Sub, Div: outside quantize_static's default op types, quantized by QNN's (a written-out norm or softmax)
    graph = helper.make_graph([helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Sub", ["e", "x"], ["s"]),
                               helper.make_node("Div", ["s", "e"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "e.onnx"))
    feeds = [{"x": np.random.default_rng(0).standard_normal((1, 4, 8)).astype(np.float32)}]
    assert {name for name, _ in noisy_activations(tmp_path / "e.onnx", feeds)} == {"x", "e", "s", "y"}
    assert {name for name, _ in noisy_activations(tmp_path / "e.onnx", feeds, skip=["e"])} == {"x", "s", "y"}


def test_auto_goes_on_to_16_bits_when_the_mixed_graph_misses_on_htp(tmp_path, monkeypatch):
    import compress.edge.isolated as isolated
    from compress.edge.prepare import _qnn_measured
    from compress.edge.qnn_flow import _tried

    eight = {"budget": {"drop": 0.05, "ok": False, "lost_in": "codes", "int8_cpu_drop": 0.05}}
    wide = {"budget": {"drop": 0.002, "ok": True, "lost_in": None, "int8_cpu_drop": 0.001}}
    mixed = {"mixed": {"sixteen_bit": ["t"], "tried": [{"sixteen_bit": 1, "int8_cpu_drop": 0.007}]}}
    for budget in ({"drop": 0.012, "ok": False, "lost_in": "htp", "int8_cpu_drop": 0.007}, None):  # None: no compile
        calls = []

        def fake(function, kwargs, **_):
            calls.append(kwargs["activation_type"])
            given = {"uint8": eight, "mixed": {**mixed, "budget": budget}, "uint16": wide}[kwargs["activation_type"]]
            return {"activation_type": kwargs["activation_type"], "installed": True, **given}

        monkeypatch.setattr(isolated, "run_isolated", fake)
        section = _qnn_measured(tmp_path / "m.onnx", tmp_path, 1, {"activation_type": "auto"})
        assert calls == ["uint8", "mixed", "uint16"] and section["activation_type"] == "uint16"
        assert [_tried(t, "uint16") for t in section["activation_tried"]][1:] == [
            f"mixed (1 at 16 bits) {'drop 0.0120' if budget else 'not measured on HTP'} (missed)",
            "uint16 drop 0.0020 (met, kept)"]
    nothing = {"activation_type": "mixed", "skipped": "not compiled", "int8_cpu_drop": None, "rounds": None}
    assert _tried(nothing, "uint16") == "mixed (up to 0 at 16 bits): nothing to widen, not compiled"


def test_the_mixed_search_stops_at_the_first_round_within_the_headroom():
    from compress.edge.mixed import HEADROOM, counts, search

    assert counts(5) == [1, 2, 3] and counts(8) == [1, 2, 3, 4] and counts(64) == [2, 4, 8, 16, 32]
    assert counts(1) == [1] and counts(0) == []
    ranked = [(f"t{i}", float(i)) for i in range(64)]
    written: list[list[str]] = []
    drops = {2: 0.05, 4: 0.02, 8: HEADROOM * 0.01, 16: 0.0}

    def quantized(names):
        written.append(names)
        return Path(f"{len(names)}.onnx")

    qdq, record = search(ranked, quantized, lambda p: drops[int(p.stem)], 0.01)
    assert qdq == Path("8.onnx") and record["met"] and record["sixteen_bit"] == [f"t{i}" for i in range(8)]
    assert [r["sixteen_bit"] for r in record["tried"]] == [2, 4, 8] and len(written) == 3
    # none within the headroom: the round that lost least, written again as the file the last round overwrote
    qdq, record = search(ranked, quantized, lambda p: {2: 0.05, 4: 0.03}.get(int(p.stem), 0.04), 0.001)
    assert qdq == Path("4.onnx") and not record["met"] and written[-1] == [f"t{i}" for i in range(4)]


def test_the_mixed_search_reads_every_output_the_worst_deciding():
    # a detector's second head loses alone: the first output matches, the second is a tenth of itself
    from compress.edge.qnn_accuracy import worst_int8_drop

    rng = np.random.default_rng(0)
    logits, boxes = rng.standard_normal((32, 10)), rng.uniform(0, 320, (32, 4))
    assert worst_int8_drop([logits], [logits], None, True) == 0.0
    assert worst_int8_drop([logits, boxes], [logits, boxes], None, True) < 1e-6  # the SQNR cap: 80 dB
    lost = worst_int8_drop([logits, boxes], [logits, boxes / 10], None, True)
    assert lost > 0.3  # half the squared relative error of a 0.1 scale: 0.405


@pytest.mark.qnn
def test_by_default_the_npu_widens_only_the_activations_the_8_bit_graph_loses_on(tmp_path):
    import json

    from click.testing import CliRunner

    from compress.cli import main

    model = _wide_then_narrow(tmp_path / "wide.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))
    args = ["edge", str(model), "--provider", "qnn", "--calibration", str(tmp_path / "calib.npz")]
    auto = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "auto")])
    assert auto.exit_code == 0, auto.output
    qnn_section = json.loads((tmp_path / "auto" / "edge.json").read_text())["qnn"]
    tried = {t["activation_type"]: t for t in qnn_section["activation_tried"]}
    assert qnn_section["activation_type"] == "mixed" and tried["mixed"]["ok"] and not tried["uint8"]["ok"]
    assert "uint16" not in tried and qnn_section["mixed"]["sixteen_bit"] == ["t"]
    assert "mixed (1 at 16 bits) drop" in auto.output and "mixed widths: 1 of" in auto.output
    eight = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "eight"), "--activation-type", "uint8"])
    assert eight.exit_code == 1 and "try 16-bit activations" in eight.output


@pytest.mark.qnn
def test_the_npu_gets_16_bit_activations_throughout_when_mixed_widths_miss_too(tmp_path):
    import json

    from click.testing import CliRunner

    from compress.cli import main

    model = _wide_chain(tmp_path / "wide.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))
    auto = CliRunner().invoke(main, ["edge", str(model), "--provider", "qnn", "--calibration",
                                     str(tmp_path / "calib.npz"), "--out", str(tmp_path / "auto")])
    assert auto.exit_code == 0, auto.output
    qnn_section = json.loads((tmp_path / "auto" / "edge.json").read_text())["qnn"]
    tried = {t["activation_type"]: t for t in qnn_section["activation_tried"]}
    assert list(tried) == ["uint8", "mixed", "uint16"], tried
    assert qnn_section["activation_type"] == "uint16" and tried["uint16"]["ok"] and not tried["mixed"]["ok"]
    # the mixed graph's ORT CPU reading missed already: it was not compiled for HTP
    assert tried["mixed"]["skipped"] and tried["mixed"]["rounds"] == [1, 2, 3, 4, 5]
    assert not list((tmp_path / "auto" / "qnn-mixed").glob("*.qnn_ctx.onnx"))
    assert "mixed (up to 5 at 16 bits): ORT CPU drop 0.5000 at best, not compiled" in auto.output


@pytest.mark.qnn
def test_every_output_is_judged_on_the_npu_and_auto_publishes_the_kept_width_at_the_top(tmp_path):
    # setup: y1 = Relu(x) survives 8 bits; y2 = (x + B) - B with |B| ~ 1000 does not (its codes step by ~8). Only
    # the first output was judged: the NPU passed with y2 at cosine 0.02. Under auto the top of the folder held the
    # rejected 8-bit try's qnn.json, QDQ and EPContext models.
    import json

    import onnx
    from click.testing import CliRunner
    from onnx import TensorProto, helper, numpy_helper

    from compress.cli import main

    big = numpy_helper.from_array((np.random.default_rng(0).standard_normal((1, 16)) * 1000).astype(np.float32), "B")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y1"]), helper.make_node("Add", ["x", "B"], ["xb"]),
                               helper.make_node("Sub", ["xb", "B"], ["y2"])], "two",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 16]) for n in ("y1", "y2")],
                              [big])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "two.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32))
    args = ["edge", str(tmp_path / "two.onnx"), "--provider", "qnn", "--calibration", str(tmp_path / "calib.npz")]
    # execute
    eight = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "eight"), "--activation-type", "uint8"])
    auto = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "auto")])
    # assert
    assert eight.exit_code == 1 and "cosine to fp32 (output y2) on the NPU dropped" in eight.output, eight.output
    budget = json.loads((tmp_path / "eight" / "edge.json").read_text())["qnn"]["budget"]
    assert budget["metric"] == "cosine to fp32 (output y2)" and budget["drop"] > 0.5 and budget["lost_in"] == "codes"
    assert auto.exit_code == 0, auto.output
    top = json.loads((tmp_path / "auto" / "qnn.json").read_text())
    assert top["activation_type"] != "uint8" and top["budget"]["ok"]
    assert Path(top["qdq_path"]).parent == tmp_path / "auto" and Path(top["qdq_path"]).is_file()
    assert (tmp_path / "auto" / "two.qnn_ctx.onnx").is_file() and top["placement"]["context_path"] == str(
        tmp_path / "auto" / "two.qnn_ctx.onnx")
    assert json.loads((tmp_path / "auto" / "qnn-uint8" / "qnn.json").read_text())["activation_type"] == "uint8"


def _fp16_cnn(path: Path) -> Path:
    """A float16 conv net (float16 input, weights and output), as a user's fp16 export is."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((0.3 * rng.standard_normal((8, 3, 3, 3))).astype(np.float16), "w"),
             numpy_helper.from_array(np.zeros(8, np.float16), "b"),
             numpy_helper.from_array((0.05 * rng.standard_normal((512, 10))).astype(np.float16), "w2"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w2"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "fp16", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.qnn
def test_a_float16_model_compiles_whole_for_htp(tmp_path):
    # QNN's quantizer made an invalid graph of it (float16 scales below opset 19) or one HTP could not compile
    # (0 of 14 or 20 nodes on HTP); quantized from its float32 copy it runs whole
    import json

    from click.testing import CliRunner

    from compress.cli import main

    model = _fp16_cnn(tmp_path / "fp16.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float16))
    result = CliRunner().invoke(main, ["edge", str(model), "--provider", "qnn", "--calibration",
                                       str(tmp_path / "calib.npz"), "--out", str(tmp_path / "edge"),
                                       "--max-accuracy-drop", "0.2"])  # 16 random samples: one is 0.0625
    assert result.exit_code == 0, result.output
    section = json.loads((tmp_path / "edge" / "edge.json").read_text())["qnn"]
    placed = section["placement"]
    assert placed["compile_error"] is None and placed["share_on_htp"] == 1.0 and placed["nodes_total"] >= 14
    assert sorted(section["float16_as_float32"]) == ["b", "w", "w2", "x", "y"]
    assert section["context"]["parity"]["ok"] and section["budget"]["ok"]
    assert "5 float16 input(s), output(s) and weight(s) as float32" in result.output
    assert "matches the QDQ model: yes" in result.output


def test_a_graph_htp_cannot_compile_is_not_a_pass():
    from compress.cli.edge import _npu_gate
    from compress.errors import GateFailed

    section = {"runs_without_fallback": True, "budget": None, "placement": {"compile_error": "FAIL : no EP for X"}}
    with pytest.raises(GateFailed, match=r"m.onnx: provider qnn: the HTP backend could not compile the graph "
                                         r"\(FAIL : no EP for X\); nothing was measured on the NPU"):
        _npu_gate(Path("m.onnx"), section)
    _npu_gate(Path("m.onnx"), {**section, "placement": {"compile_error": None}})  # nothing to judge: no verdict


def test_the_missing_plugin_warning_is_said_once_a_process(monkeypatch, caplog):
    # a search checks every trial's pipeline: the same line came once a trial
    from types import SimpleNamespace

    from compress import config

    monkeypatch.setattr(qnn, "qnn_status", lambda: {"installed": False, "reason": "not installed; pip install x"})
    cfg = SimpleNamespace(export=SimpleNamespace(edge_targets=("qnn",)), benchmark=SimpleNamespace(strict=False),
                          source_path="once.toml")
    for _ in range(3):
        config._check_edge_targets(cfg)
    assert len([r for r in caplog.records if "needs the onnxruntime-qnn plugin" in r.getMessage()]) == 1


def test_the_terminal_says_when_the_quantize_stages_qnn_graphs_missed_their_budget(monkeypatch):
    # "QNN HTP budget: accuracy drop 0.00 points <= 0.50 points" (HTP on test) was all the terminal said, where
    # report.md said neither the post-training nor the QAT QNN graph met the budget on validation
    from compress.edge import qnn_flow
    from compress.stages.edge import _summary

    monkeypatch.setattr(qnn_flow, "qnn_table", lambda section: "QNN HTP: 26/26 nodes on HTP\n  ...")
    qnn = {"budget": {"metric": "accuracy", "drop": 0.0, "budget": 0.005, "ok": True}}
    missed = _summary(qnn, "test", None)["summary_lines"]
    assert missed[1].startswith("QNN HTP (test) budget: ") and missed[2] == (
        "QNN graph: neither post-training quantization nor QAT met the budget on validation (report.md, quantize)")
    assert len(_summary(qnn, "test", "qat")["summary_lines"]) == 2
