"""`--fix-input NAME=VALUE`: an input bound to the value a deployment uses, and the If nodes it decides inlined, as
Silero VAD needs (its work sits in two branches of an If on the sample rate, with Ifs on shapes nested inside that
read names of the branch around them: ONNX Runtime's own If inlining fails on those)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from compress.cli import main

from .test_input_shapes import state_inputs


def rated(path: Path) -> Path:
    """x [batch, 16] and a scalar rate sr (int64). If sr == 16000: h = x @ w16, then a nested If on h's width (a
    shape condition) that reads h from the branch around it: Relu(h) when the width is 16; else: Relu(x @ w8)."""
    rng = np.random.default_rng(0)
    w16 = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w16")
    w8 = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w8")
    out = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 16])  # noqa: E731
    inner_then = helper.make_graph([helper.make_node("Relu", ["h"], ["r"], name="relu_h")], "inner_then", [],
                                   [out("r")])
    inner_else = helper.make_graph([helper.make_node("Identity", ["h"], ["i"], name="same_h")], "inner_else", [],
                                   [out("i")])
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    sixteen = numpy_helper.from_array(np.array(16, np.int64), "sixteen")
    then = helper.make_graph([
        helper.make_node("MatMul", ["x", "w16"], ["h"], name="mm16"),
        helper.make_node("Shape", ["h"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "one"], ["width"], name="width"),
        helper.make_node("Equal", ["width", "sixteen"], ["wide"], name="wide"),
        helper.make_node("If", ["wide"], ["t"], then_branch=inner_then, else_branch=inner_else, name="inner"),
    ], "then", [], [out("t")], [w16, one, sixteen])
    other = helper.make_graph([helper.make_node("MatMul", ["x", "w8"], ["g"], name="mm8"),
                               helper.make_node("Relu", ["g"], ["e"], name="relu_g")], "else", [], [out("e")], [w8])
    rate = numpy_helper.from_array(np.array(16000, np.int64), "rate")
    graph = helper.make_graph([
        helper.make_node("Equal", ["sr", "rate"], ["is16k"], name="is16k"),
        helper.make_node("If", ["is16k"], ["y"], then_branch=then, else_branch=other, name="by_rate"),
    ], "rated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
                 helper.make_tensor_value_info("sr", TensorProto.INT64, [])], [out("y")], [rate])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _invoke(*args: object):
    return CliRunner().invoke(main, [*map(str, args)])


def _run(path: Path, feed: dict) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.mark.parametrize("rate", [16000, 8000])
def test_a_bound_input_inlines_the_branch_taken_and_the_shape_if_inside_it(tmp_path: Path, rate: int):
    from compress.edge.shapes import specialise

    model = rated(tmp_path / "rated.onnx")
    fixed, counts = specialise(model, tmp_path / "bound.onnx", [("batch", None, 5)], {"sr": [rate]})
    graph = onnx.load(str(fixed)).graph
    assert counts == (2, 0) and not [n for n in graph.node if n.op_type == "If"]
    assert [i.name for i in graph.input] == ["x"]
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    expected = _run(model, {"x": x, "sr": np.array(rate, np.int64)})
    np.testing.assert_array_equal(_run(fixed, {"x": x}), expected)
    assert (expected >= 0).all() and expected.any()  # both branches end in a Relu


def test_with_the_batch_free_the_shape_if_stays_and_the_matmul_reaches_the_main_graph(tmp_path: Path):
    from compress.edge.shapes import specialise

    model = rated(tmp_path / "rated.onnx")
    fixed, counts = specialise(model, tmp_path / "bound.onnx", [], {"sr": [16000]})
    graph = onnx.load(str(fixed)).graph
    assert counts == (2, 1) and [n.op_type for n in graph.node].count("MatMul") == 1
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_array_equal(_run(fixed, {"x": x}), _run(model, {"x": x, "sr": np.array(16000, np.int64)}))


def test_quantize_says_which_input_to_bind_and_quantizes_the_branch_once_it_is(tmp_path: Path):
    model = rated(tmp_path / "rated.onnx")
    out = tmp_path / "q" / "rated-int8.onnx"
    before = _invoke("quantize", model, "--out", out, "--mode", "dynamic", "--quiet")
    assert before.exit_code == 1, before.output
    assert ("the If condition reads input 'sr': bind it to the value you deploy with, --fix-input sr=VALUE, and the "
            "branch taken is inlined") in before.output

    after = _invoke("quantize", model, "--out", out, "--mode", "dynamic", "--fix-input", "sr=16000", "--quiet",
                    "--max-cosine-drop", "0.05")
    assert after.exit_code == 0, after.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["attempts"][0]["quantized"]
    assert summary["fixed_inputs"] == {"sr": 16000} and summary["control_flow"] == {"before": 2, "after": 1}
    assert summary["inputs"] == ["x"]
    assert ("Inputs bound: sr=16000: the written model takes x only; If/Loop/Scan nodes 2 -> 1"
            in out.with_suffix(".md").read_text())


def test_bench_times_the_bound_model(tmp_path: Path):
    model = rated(tmp_path / "rated.onnx")
    result = _invoke("bench", model, "--fix-input", "sr=8000", "--quiet", "--min-runs", "3", "--repetitions", "1",
                     "--warmup", "1", "--min-seconds", "0")
    assert result.exit_code == 0, result.output
    assert "rated.fixed.onnx (sr=8000 fixed)" in result.output


@pytest.mark.parametrize("flag, says", [
    ("nope=1", "--fix-input nope: rated.onnx has no input 'nope' (inputs: x, sr)"),
    ("sr=1.5", "--fix-input sr: input 'sr' of rated.onnx is int64; got 1.5"),
    ("sr=1,2", "--fix-input sr: input 'sr' of rated.onnx has shape [], so it takes 1 value(s); got 2"),
    ("sr", "--fix-input: expected NAME=VALUE"),
])
def test_a_bad_fix_input_is_one_line_and_exit_2(tmp_path: Path, flag: str, says: str):
    model = rated(tmp_path / "rated.onnx")
    result = _invoke("quantize", model, "--out", tmp_path / "q.onnx", "--mode", "dynamic", "--fix-input", flag)
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {says}"), result.output
    assert "Traceback" not in result.output


def stateful(path: Path) -> Path:
    """Silero VAD's interface in small: x [batch, 8], a state [2, batch, 4] with its batch on axis 1, and sr, which
    an If reads; each branch: h = Relu(x @ w), the new state = state + h."""
    rng = np.random.default_rng(0)

    def branch(name: str):
        w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), f"{name}_w")
        nodes = [helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_m"], name=f"{name}_mm"),
                 helper.make_node("Relu", [f"{name}_m"], [f"{name}_h"], name=f"{name}_relu"),
                 helper.make_node("Add", ["state", f"{name}_h"], [f"{name}_s"], name=f"{name}_add")]
        return helper.make_graph(nodes, name, [], [
            helper.make_tensor_value_info(f"{name}_h", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info(f"{name}_s", TensorProto.FLOAT, [2, "batch", 4])], [w])

    rate = numpy_helper.from_array(np.array(16000, np.int64), "rate")
    graph = helper.make_graph([
        helper.make_node("Equal", ["sr", "rate"], ["is16k"], name="is16k"),
        helper.make_node("If", ["is16k"], ["h", "new_state"], then_branch=branch("then"),
                         else_branch=branch("other"), name="by_rate"),
    ], "stateful", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
                    helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
                    helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, "batch", 4])], [rate])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.qnn
def test_a_bound_stateful_model_goes_whole_to_htp_cut_on_its_state_batch_axis(tmp_path: Path):
    # before --fix-input, QNN took none of it (the work sits in the If); the state is cut on axis 1 for each sample
    model = stateful(tmp_path / "vad.onnx")
    calibration = state_inputs(tmp_path / "calib.npz", 16, 8, 4, sr=16000, seed=1)
    result = _invoke("edge", model, "--out", tmp_path / "edge", "--fix-input", "sr=16000", "--batch-axis", "state:1",
                     "--provider", "qnn", "--calibration", calibration)
    assert result.exit_code == 0, result.output
    section = json.loads((tmp_path / "edge" / "edge.json").read_text())["qnn"]
    placed = section["placement"]
    assert placed["nodes_on_htp"] == placed["nodes_total"] > 0 and section["runs_without_fallback"] is True
    assert section["accuracy"]["samples"] == 16 and section["accuracy"]["cosine_htp_vs_fp32_cpu"] > 0.99
    qdq = onnx.load(section["qdq_path"]).graph
    assert [i.name for i in qdq.input] == ["x", "state"] and "If" not in {n.op_type for n in qdq.node}
    assert [d.dim_value for d in qdq.input[1].type.tensor_type.shape.dim] == [2, 1, 4]
