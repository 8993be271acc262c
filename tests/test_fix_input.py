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
    (tmp_path / "models").mkdir()
    model = rated(tmp_path / "models" / "rated.onnx")
    quick = ["--quiet", "--min-runs", "3", "--repetitions", "1", "--warmup", "1", "--min-seconds", "0"]
    result = _invoke("bench", model, "--fix-input", "sr=8000", "--json", tmp_path / "b.json", *quick)
    assert result.exit_code == 0, result.output
    assert f"timing {model} with sr=8000 fixed" in result.output
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["model"] == str(model) and doc["fixed"] == ["sr=8000"] and list(doc["inputs"]) == ["x"]
    # --against is bound to the same value: the inputs below hold x only, which the unbound OLD could not run
    old = rated(tmp_path / "models" / "old.onnx")
    np.savez(tmp_path / "x.npz", x=np.ones((1, 16), np.float32))
    paired = _invoke("bench", model, "--against", old, "--fix-input", "sr=8000", "--inputs", tmp_path / "x.npz",
                     "--json", tmp_path / "p.json", *quick)
    assert paired.exit_code in (0, 1), paired.output
    said = json.loads((tmp_path / "p.json").read_text())
    assert (said["old"], said["new"]) == (str(old), str(model)) and said["paired"] and said["fixed"] == ["sr=8000"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["old.onnx", "rated.onnx"]  # nothing beside
    # a baseline bound to another value times another graph: said, by bench --baseline and by compare
    other = _invoke("bench", model, "--fix-input", "sr=16000", "--json", tmp_path / "c.json", "--baseline",
                    tmp_path / "b.json", *quick)
    said = "timed with different dimensions or inputs fixed (sr=8000 vs sr=16000)"
    assert other.exit_code in (0, 1) and f"warning: --baseline {tmp_path / 'b.json'}: {said}" in other.output
    compared = _invoke("compare", tmp_path / "b.json", tmp_path / "c.json")
    assert said in compared.output
    assert _invoke("compare", tmp_path / "b.json", tmp_path / "c.json", "--strict").exit_code == 2


@pytest.mark.parametrize("flag, says", [
    ("nope=1", "--fix-input nope: rated.onnx has no input 'nope' (inputs: x, sr)"),
    ("sr=1.5", "--fix-input sr: input 'sr' of rated.onnx is int64, which cannot hold 1.5"),
    ("sr=1,2", "--fix-input sr: input 'sr' of rated.onnx has shape [], so it takes 1 value(s); got 2"),
    ("sr", "--fix-input: expected NAME=VALUE"),
    ("sr=1e19", "--fix-input sr: input 'sr' of rated.onnx is int64, which cannot hold 1e+19"),
    ("sr=16000", "--fix-input sr: given twice (16000 and 8000); bind each input once"),
])
def test_a_bad_fix_input_is_one_line_and_exit_2(tmp_path: Path, flag: str, says: str):
    model = rated(tmp_path / "rated.onnx")
    result = _invoke("quantize", model, "--out", tmp_path / "q.onnx", "--mode", "dynamic", "--fix-input", flag,
                     *(["--fix-input", "sr=8000"] if flag == "sr=16000" else []))
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


@pytest.mark.parametrize("elem, value, says", [
    (TensorProto.UINT8, 300.0, "is uint8, which cannot hold 300"),
    (TensorProto.BOOL, 2.0, "is bool, which cannot hold 2; use 0 or 1"),
    (TensorProto.FLOAT16, 70000.0, "is float16, which cannot hold 70000"),
])
def test_a_value_the_input_type_cannot_hold_is_refused_not_wrapped(tmp_path: Path, elem, value, says):
    from compress.errors import CompressError
    from compress.onnx.control import bind_inputs

    graph = helper.make_graph([helper.make_node("Identity", ["k"], ["y"])], "g",
                              [helper.make_tensor_value_info("k", elem, [])],
                              [helper.make_tensor_value_info("y", elem, [])])
    with pytest.raises(CompressError, match=f"^--fix-input k: input 'k' of m.onnx {says}"):
        bind_inputs(helper.make_model(graph), {"k": [value]}, "m.onnx")


def test_an_ir3_model_keeps_the_bound_input_as_an_input_with_its_value(tmp_path: Path):
    # before IR 4 every initializer must be a graph input too: removing it wrote a model onnx's checker refuses
    from compress.edge.shapes import specialise
    from compress.onnx.graph import graph_inputs, load_model

    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("k", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 3
    onnx.save(model, str(tmp_path / "old.onnx"))
    fixed, _ = specialise(tmp_path / "old.onnx", tmp_path / "bound.onnx", [], {"k": [2.0]})
    loaded = load_model(fixed)  # the project's own checked loader
    assert [v.name for v in graph_inputs(loaded.graph)] == ["x"]
    np.testing.assert_array_equal(_run(fixed, {"x": np.array([1.0, 3.0], np.float32)}), [2.0, 6.0])


def test_a_float16_model_gets_no_cpu_casts_when_its_if_is_resolved(tmp_path: Path):
    # ORT's CPU session writes float32 casts around float16 ops into the model it saves: that graph is not kept
    from compress.edge.shapes import specialise

    branch = lambda op, name: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["x"], [name])], name, [], [helper.make_tensor_value_info(name, TensorProto.FLOAT16,
                                                                                        ["batch", 4])])
    four = numpy_helper.from_array(np.array(4, np.int64), "four")
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    graph = helper.make_graph([
        helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["w"]),
        helper.make_node("Equal", ["w", "four"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=branch("Relu", "r"), else_branch=branch("Neg", "n")),
        helper.make_node("Softmax", ["y"], ["z"], axis=-1),
    ], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT16, ["batch", 4])], [four, one])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "h.onnx"))
    fixed, _ = specialise(tmp_path / "h.onnx", tmp_path / "fixed.onnx", [("batch", None, 1)])
    ops = [n.op_type for n in onnx.load(str(fixed)).graph.node]
    assert "Cast" not in ops and "Softmax" in ops
    x = np.array([[1, -2, 3, -4]], np.float16)
    np.testing.assert_array_equal(_run(fixed, {"x": x}), _run(tmp_path / "h.onnx", {"x": x}))


@pytest.mark.qnn
def test_few_samples_and_a_fixed_batch_on_the_state_axis_reach_htp(tmp_path: Path):
    # 4 samples (the EPContext check asked for 8 and failed), --fixed-batch 1 fixed the state's axis 0
    model = stateful(tmp_path / "vad.onnx")
    calibration = state_inputs(tmp_path / "calib.npz", 4, 8, 4, sr=16000, seed=1)
    result = _invoke("edge", model, "--out", tmp_path / "edge", "--fix-input", "sr=16000", "--batch-axis", "state:1",
                     "--fixed-batch", "1", "--provider", "qnn", "--calibration", calibration)
    assert result.exit_code == 0, result.output
    section = json.loads((tmp_path / "edge" / "edge.json").read_text())
    assert section["qnn"]["context"]["loads"] is True and section["qnn"]["accuracy"]["samples"] == 4
    bad = _invoke("edge", model, "--out", tmp_path / "bad", "--fix-input", "sr=16000", "--batch-axis", "state:5",
                  "--fixed-batch", "1")
    assert bad.exit_code == 2 and "--batch-axis state:5: input 'state' of vad.fixed.onnx has 3 axes" in bad.output


def test_data_made_for_another_value_of_a_bound_input_is_a_warning(tmp_path: Path):
    model = rated(tmp_path / "rated.onnx")
    rng = np.random.default_rng(0)
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, x=rng.standard_normal((16, 16)).astype(np.float32), sr=np.array(8000, np.int64))
    out = tmp_path / "q" / "rated-int8.onnx"
    result = _invoke("quantize", model, "--out", out, "--calibration", calibration, "--fix-input", "sr=16000",
                     "--max-cosine-drop", "0.05", "--quiet")
    said = ("--fix-input sr=16000: the --calibration data holds sr = 8000; the model is bound to 16000, so those "
            "inputs were made for another setting")
    assert said in result.output and said in json.loads(out.with_suffix(".json").read_text())["warnings"]


def test_an_ort_format_model_cannot_be_specialised_said_in_one_line(tmp_path: Path):
    model = rated(tmp_path / "rated.onnx")
    converted = tmp_path / "old.ort"
    converted.write_bytes(b"not read")
    result = _invoke("bench", model, "--against", converted, "--fix-input", "sr=16000", "--quiet")
    assert result.exit_code == 2
    assert (f"{converted}: an ORT-format model cannot take --fix-dim or --fix-input: compress rewrites ONNX "
            "graphs only; pass the .onnx it was converted from") in result.output


def test_bench_says_when_its_inputs_were_made_for_another_value(tmp_path: Path):
    model = rated(tmp_path / "rated.onnx")
    np.savez(tmp_path / "in.npz", x=np.ones((2, 16), np.float32), sr=np.array(8000, np.int64))
    result = _invoke("bench", model, "--fix-input", "sr=16000", "--inputs", tmp_path / "in.npz", "--quiet",
                     "--min-runs", "3", "--repetitions", "1", "--warmup", "1", "--min-seconds", "0")
    assert result.exit_code == 0, result.output
    assert ("warning: --fix-input sr=16000: the --inputs data holds sr = 8000; the model is bound to 16000"
            in result.output)


def test_edge_says_when_its_data_was_made_for_another_value(tmp_path: Path):
    model = rated(tmp_path / "rated.onnx")
    np.savez(tmp_path / "in.npz", x=np.ones((2, 16), np.float32), sr=np.array([8000, 8000], np.int64))
    result = CliRunner().invoke(main, ["edge", str(model), "--out", str(tmp_path / "edge"), "--fix-input", "sr=16000",
                                       "--inputs", str(tmp_path / "in.npz")])
    said = ("--fix-input sr=16000: the --inputs data holds sr = 8000; the model is bound to 16000, so those inputs "
            "were made for another setting")
    assert result.exit_code == 0, result.output
    assert f"warning: {said}" in result.output
    assert json.loads((tmp_path / "edge" / "edge.json").read_text())["warnings"] == [said]


@pytest.mark.qnn
def test_an_unbound_if_on_the_npu_is_told_to_bind_the_input_its_condition_reads(tmp_path: Path):
    # the advice was the first blocker's ("try activation_type = 'uint16'..."), not --fix-input
    model = rated(tmp_path / "rated.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32),
             sr=np.array(16000, np.int64))
    result = _invoke("edge", model, "--out", tmp_path / "edge", "--fixed-batch", "1", "--provider", "qnn",
                     "--calibration", tmp_path / "calib.npz")
    assert result.exit_code == 1
    assert ("fix: the If condition reads input 'sr': bind it to the value you deploy with, --fix-input sr=VALUE, and "
            "the branch taken is inlined") in result.output


def test_an_if_whose_branches_hold_the_only_matmuls_is_named_though_most_nodes_are_outside(tmp_path: Path):
    # setup: Equal, If and a Relu in the main graph; one MatMul in each branch (5 nodes, 2 inside)
    rng = np.random.default_rng(0)
    out = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 8])  # noqa: E731
    branch = {}
    for side in ("then", "else"):
        w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), f"w_{side}")
        branch[side] = helper.make_graph([helper.make_node("MatMul", ["x", f"w_{side}"], [f"m_{side}"])], side, [],
                                         [out(f"m_{side}")], [w])
    rate = numpy_helper.from_array(np.array(16000, np.int64), "rate")
    graph = helper.make_graph([
        helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["m"], then_branch=branch["then"], else_branch=branch["else"]),
        helper.make_node("Relu", ["m"], ["y"]),
    ], "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
                 helper.make_tensor_value_info("sr", TensorProto.INT64, [])], [out("y")], [rate])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    # execute
    result = _invoke("quantize", tmp_path / "m.onnx", "--out", tmp_path / "q.onnx", "--mode", "dynamic", "--quiet")
    # assert
    assert result.exit_code == 1, result.output
    assert ("2 of the model's 5 nodes sit inside If subgraphs, which ONNX Runtime's quantizer does not enter (the If "
            "condition reads input 'sr': bind it to the value you deploy with, --fix-input sr=VALUE") in result.output
