"""The batch a row says is the batch that was timed: --dim on the batch axis, --batch-axis, and the kit of an --edge
bench."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress.bench.harness import BenchSettings, measure
from compress.bench.inputs import Dims, batch_of
from .test_cli_bench import FAST, error_line, invoke
from .test_harness import mlp


def state_model(path: Path) -> Path:
    """y[N, 8] = x[N, 32] @ w + sum over axis 0 of state[2, N, 8]: the batch is axis 1 of its first input."""
    w = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("ReduceSum", ["state", "ax"], ["s"], keepdims=0),
             helper.make_node("Add", ["h", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 8]),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              initializer=[numpy_helper.from_array(w, "w"),
                                           numpy_helper.from_array(np.array([0], np.int64), "ax")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_dim_that_sets_the_batch_axis_to_another_batch_is_refused(tmp_path: Path):
    model = mlp(tmp_path / "m.onnx", layers=2)  # input x [batch, 64]
    result = invoke("bench", model, "--dim", "batch=1", "--batch", "64", *FAST)
    assert result.exit_code == 2, result.output
    assert error_line(result) == ("error: --dim batch=1: batch is the batch axis (axis 0) of input 'x', which --batch "
                                  "sets (64); drop --dim batch, or time --batch 1")
    assert invoke("bench", model, "--dim", "batch=4", "--batch", "4", *FAST).exit_code == 0


def test_the_batch_of_given_inputs_is_read_on_each_inputs_batch_axis(tmp_path: Path):
    feed = {"state": np.zeros((2, 4, 8), np.float32), "x": np.zeros((4, 32), np.float32)}
    assert batch_of(feed, {"state": 1}) == 4 and batch_of(feed, {"state": None}) == 4 and batch_of(feed) == 2
    model = state_model(tmp_path / "state.onnx")
    settings = BenchSettings(warmup_runs=1, min_runs=5, min_seconds=0.0, repetitions=1, time_budget_seconds=0)
    row = measure(model, "cpu", 1, 1, inputs=feed, dims=Dims(batch_axes={"state": 1}), settings=settings)
    assert row["batch"] == 4
    np.savez(tmp_path / "in.npz", **feed)
    out = tmp_path / "r.json"
    result = invoke("bench", model, "--inputs", tmp_path / "in.npz", "--batch-axis", "state:1", "--json", out, *FAST)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["latency"][0]["batch"] == 4


def test_the_kit_of_an_edge_bench_times_batch_1_without_spinning(tmp_path: Path):
    model = mlp(tmp_path / "m.onnx", layers=2)
    result = invoke("bench", model, "--edge", "--batch", "8", "--kit", tmp_path / "kit", *FAST)
    assert result.exit_code == 0, result.output
    kit = json.loads((tmp_path / "kit" / "kit.json").read_text())
    with np.load(tmp_path / "kit" / "inputs.npz") as data:
        assert data["x"].shape == (1, 64)
    assert kit["batch"] == 1 and kit["no_spin"] is True and kit["threads"] == [1]
    # the device script's default is the kit's; --spin turns it back on
    spec = importlib.util.spec_from_file_location("bench_kit_under_test", tmp_path / "kit" / "bench_kit.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.parse_args([], kit).no_spin is True and script.parse_args(["--spin"], kit).no_spin is False
    plain = invoke("bench", model, "--batch", "8", "--kit", tmp_path / "kit2", *FAST)
    assert plain.exit_code == 0 and json.loads((tmp_path / "kit2" / "kit.json").read_text())["no_spin"] is False
