"""The OpenVINO EP for real (marker `openvino`: a venv with onnxruntime-openvino in place of onnxruntime)."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from compress.bench.harness import BenchSettings, bench_model
from compress.cli import main

pytestmark = pytest.mark.openvino
OV = "OpenVINOExecutionProvider"
FAST = ["--warmup", "1", "--min-runs", "5", "--min-seconds", "0", "--repetitions", "1", "--quiet"]


def graph(path: Path, ops: list[str]) -> Path:
    """A chain of one-input ops on a [batch, 4, 4] input (Det maps it to [batch])."""
    names = ["x"] + [f"t{i}" for i in range(len(ops))]
    nodes = [helper.make_node(op, [a], [b]) for op, a, b in zip(ops, names, names[1:])]
    out_shape = ["batch"] if "Det" in ops else ["batch", 4, 4]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 4])],
        [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, out_shape)]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_bench_openvino_row_has_every_node_on_openvino(tmp_path: Path):
    settings = BenchSettings(warmup_runs=1, min_runs=5, min_seconds=0.0, repetitions=1, strict=True)
    result = bench_model(graph(tmp_path / "m.onnx", ["Relu", "Sigmoid", "Tanh"]), ["cpu", "openvino"], [1], [1],
                         settings=settings, progress=False)
    ov = next(r for r in result["latency"] if r["provider"] == OV)
    assert {k: ov["placement"][k] for k in ("nodes_total", "nodes_on_provider", "nodes_on_cpu", "provider_kernels")} \
        == {"nodes_total": 3, "nodes_on_provider": 3, "nodes_on_cpu": 0, "provider_kernels": 1}


def test_provider_options_pass_through(tmp_path: Path):
    model = graph(tmp_path / "m.onnx", ["Relu"])
    options = {"openvino": {"device_type": "CPU", "num_of_threads": "1", "precision": "FP32"}}
    settings = BenchSettings(warmup_runs=1, min_runs=5, min_seconds=0.0, repetitions=1, provider_options=options)
    row = bench_model(model, ["openvino"], [1], [1], settings=settings, progress=False)["latency"][0]
    assert row["provider_options"] == options["openvino"]


def test_an_option_the_ep_rejects_makes_it_unavailable_not_cpu(tmp_path: Path):
    # OpenVINO's factory refuses precision=XYZ; ORT then drops the EP, which must not be timed as "OpenVINO"
    model = graph(tmp_path / "m.onnx", ["Relu"])
    settings = BenchSettings(warmup_runs=1, min_runs=5, min_seconds=0.0, repetitions=1,
                             provider_options={"openvino": {"precision": "XYZ"}})
    result = bench_model(model, ["openvino"], [1], [1], settings=settings, progress=False)
    assert (result["latency"], [u["provider"] for u in result["unavailable"]]) == ([], [OV])


def test_cli_shows_nodes_on_openvino(tmp_path: Path):
    model = graph(tmp_path / "m.onnx", ["Relu", "Sigmoid"])
    result = CliRunner().invoke(main, ["bench", str(model), "--provider", "openvino", *FAST])
    assert result.exit_code == 0 and result.output.splitlines()[2].rstrip().endswith(" 2/2")


def test_strict_fails_when_openvino_leaves_nodes_to_cpu(tmp_path: Path):
    # Det has no OpenVINO kernel: a real partition with CPU fallback
    model = graph(tmp_path / "m.onnx", ["Relu", "Det", "Sigmoid"])
    result = CliRunner().invoke(main, ["bench", str(model), "--provider", "openvino", "--strict", *FAST])
    assert (result.exit_code, result.output.splitlines()[-1].split(";")[0]) == (
        2, f"error: {model}: {OV}: 2 of 3 nodes fell back to CPUExecutionProvider (Det, Relu)")


def test_without_strict_the_fallback_is_measured_and_shown(tmp_path: Path):
    model = graph(tmp_path / "m.onnx", ["Relu", "Det", "Sigmoid"])
    result = CliRunner().invoke(main, ["bench", str(model), "--provider", "openvino", *FAST])
    assert result.exit_code == 0 and result.output.splitlines()[2].rstrip().endswith(" 1/3")


@pytest.mark.e2e
def test_pipeline_measures_openvino_and_reports_its_placement(tiny_dir: Path):
    # setup: the tiny pipeline asks for cpu and openvino, strict (no node may fall back to CPU)
    toml = tiny_dir / "pipeline.toml"
    toml.write_text(toml.read_text().replace('providers = ["cpu", "cuda"]', 'providers = ["cpu", "openvino"]\n'
                                             'strict = true\nprovider_options = {openvino = {num_of_threads = 1}}'))
    # execute
    result = CliRunner().invoke(main, ["run", str(toml), "--quiet"])
    # assert: every model has an OpenVINO row per batch, with all its nodes on OpenVINO
    assert result.exit_code == 0, result.output
    report = json.loads((tiny_dir / "runs/tiny/report.json").read_text())
    placed = {(m["name"], r["batch"]): (r["placement"]["nodes_on_provider"] == r["placement"]["nodes_total"] > 0)
              for m in report["models"] for r in m["latency"] if r["provider"] == OV}
    assert placed == {(m, b): True for m in ("teacher", "student", "control") for b in (1, 8)}
