"""Inputs the tools must express as they are: a scalar input, a state input whose batch is on axis 1, dimensions
fixed by name or by input and axis, unnamed dimensions never set all at once. Tiny graphs with those features."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from compress.cli import main


def recurrent(path: Path) -> Path:
    """A voice-activity-like graph: x [batch, 16], state [2, batch, 8], a scalar sample rate sr (int64);
    outputs prob [batch, 1] and the new state [2, batch, 8]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((8, 1)).astype(np.float32), "v")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("Add", ["state", "h"], ["s"], name="mix"),
             helper.make_node("Tanh", ["s"], ["new_state"], name="cell"),
             helper.make_node("ReduceMean", ["new_state"], ["m"], name="pool", keepdims=0, axes=[0]),
             helper.make_node("MatMul", ["m", "v"], ["logit"], name="head"),
             helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Mul", ["logit", "srf"], ["scaled"], name="scale"),
             helper.make_node("Sigmoid", ["scaled"], ["prob"], name="sigmoid")]
    graph = helper.make_graph(nodes, "vad", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 8]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, "batch", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def state_inputs(path: Path, rows: int, width: int, state_width: int, *, sr: int, seed: int) -> Path:
    """An .npz of `rows` samples for such a graph: x [rows, width], state [2, rows, state_width], the scalar sr."""
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.standard_normal((rows, width)).astype(np.float32),
             state=rng.standard_normal((2, rows, state_width)).astype(np.float32), sr=np.array(sr, np.int64))
    return path


def image(path: Path) -> Path:
    """A detector-like input [batch, 3, height, width] with unnamed height and width (dims with no name)."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, None, None])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["y"], name="relu")], "img", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def embedding(path: Path, seq: int | str = 6) -> Path:
    """Token ids [batch, seq] (a vocabulary of 10) -> their rows of a 10x4 table: a transformer's first op."""
    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), "t")
    graph = helper.make_graph([helper.make_node("Gather", ["t", "ids"], ["states"])], "tok",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", seq])],
                              [helper.make_tensor_value_info("states", TensorProto.FLOAT, ["batch", seq, 4])], [table])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _invoke(*args: object):
    return CliRunner().invoke(main, [*map(str, args)])


def test_a_scalar_input_stays_scalar_and_a_state_batch_on_axis_1_is_said_once(tmp_path: Path):
    from compress.bench.inputs import make_inputs, parse_dims
    from compress.bench.providers import open_session

    model = recurrent(tmp_path / "vad.onnx")
    session, _ = open_session(model, "cpu", 1, strict=True)
    feed = make_inputs(session, 4, parse_dims([], ["state:1"]))
    assert feed["sr"].shape == () and feed["x"].shape == (4, 16) and feed["state"].shape == (2, 4, 8)
    assert session.run(None, feed)[0].shape == (4, 1)
    # without --batch-axis the graph says it: state's axis 1 is named like x's batch (it was refused: "its axis 0
    # is fixed to 2, so batch 4 cannot run"); a --batch-axis that names no input is one line
    for extra in ([], ["--batch-axis", "state:1"]):
        timed = _invoke("bench", model, "--batch", "4", "--time-budget", "1", *extra)
        assert timed.exit_code == 0 and "CPUExecutionProvider             4" in timed.output, timed.output
    typo = _invoke("bench", model, "--batch", "4", "--batch-axis", "stat:1")
    assert typo.exit_code == 2 and "--batch-axis stat: vad.onnx has no input 'stat' (inputs: x, state, sr)" in \
        typo.output


def _state_first(path: Path) -> Path:
    """h0 [2, batch, 8] listed first (torch's GRU export names x's batch 'batch_size'), x [batch_size, 16], a scale
    of fixed shape [1]."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Mul", ["h", "scale"], ["hs"]),
             helper.make_node("Add", ["h0", "hs"], ["h1"])]
    graph = helper.make_graph(nodes, "gru", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [2, "batch", 8]),
                                             helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", 16]),
                                             helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("h1", TensorProto.FLOAT, [2, "batch", 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_bench_and_edge_find_the_batch_of_a_state_listed_first_and_feed_a_fixed_shape_whole(tmp_path: Path):
    # bench --inputs read the state's fixed axis 0 (2) as the batch of 8 rows (items/s 4x too low; a scale [1]
    # first: 64x); edge --fixed-batch 1 said "its batch is fixed to 2", and with the scale fed rows to a batch-1 copy
    from compress.onnx.graph import batch_axes_of

    model = _state_first(tmp_path / "gru.onnx")
    assert batch_axes_of(onnx.load(str(model)).graph) == {"h0": 1, "scale": None}
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "in.npz", h0=rng.standard_normal((2, 8, 8)).astype(np.float32),
             x=rng.standard_normal((8, 16)).astype(np.float32), scale=np.array([0.5], np.float32))
    timed = _invoke("bench", model, "--inputs", tmp_path / "in.npz", "--time-budget", "1", "--json",
                    tmp_path / "b.json")
    assert timed.exit_code == 0, timed.output
    assert [r["batch"] for r in json.loads((tmp_path / "b.json").read_text())["latency"]] == [8]
    edge = _invoke("edge", model, "--out", tmp_path / "edge", "--fixed-batch", "1", "--inputs", tmp_path / "in.npz")
    assert edge.exit_code == 0, edge.output
    assert json.loads((tmp_path / "edge" / "edge.json").read_text())["parity"]["ok"]
    # without --inputs: the generated parity inputs read h0's batch on axis 1 too ("use --batch 2", which edge lacks)
    for extra in ((), ("--fixed-batch", "1")):
        made = _invoke("edge", model, "--out", tmp_path / f"made{len(extra)}", *extra)
        assert made.exit_code == 0, made.output


def test_quantize_reads_a_batch_1_copys_batch_on_the_axis_the_user_names(tmp_path: Path):
    # a batch-1 copy fixes every axis, so nothing in the graph says the state's batch is axis 1: the user's
    # --batch-axis h0:1 was read by the gate but not by the --batch check ("fixes its batch dimension to 2")
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(str(_state_first(tmp_path / "gru.onnx")))
    model = update_inputs_outputs_dims(model, {"h0": [2, 1, 8], "x": [1, 16], "scale": [1]}, {"h1": [2, 1, 8]})
    onnx.save(model, str(tmp_path / "gru1.onnx"))
    result = _invoke("quantize", tmp_path / "gru1.onnx", "--out", tmp_path / "q.onnx", "--batch-axis", "h0:1",
                     "--batch-axis", "scale:none", "--max-cosine-drop", "1", "--no-fallback", "--quiet")
    assert result.exit_code == 0, result.output
    assert "fixes its batch dimension to 2" not in result.output
    assert json.loads((tmp_path / "q.json").read_text())["attempts"][0]["quantized"]
    unsaid = _invoke("quantize", tmp_path / "gru1.onnx", "--out", tmp_path / "q2.onnx")
    assert unsaid.exit_code == 2 and "(axis 0 of input 'h0': --batch-axis h0:N or h0:none when that is not its " \
        "batch), so batch 1 cannot be timed" in unsaid.output


def test_quantize_times_and_counts_a_state_first_model_on_its_batch_axis(tmp_path: Path):
    # the rows' batch was h0's axis 0 (2): the pick said "cpu/b2" and the throughput was twice the items; bias
    # correction said "on 32 samples" of 16 rows
    model = _state_first(tmp_path / "gru.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", h0=rng.standard_normal((2, 16, 8)).astype(np.float32),
             x=rng.standard_normal((16, 16)).astype(np.float32), scale=np.array([0.5], np.float32))
    result = _invoke("quantize", model, "--out", tmp_path / "q.onnx", "--calibration", tmp_path / "calib.npz",
                     "--max-cosine-drop", "1", "--no-fallback", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "q.json").read_text())
    assert [r["batch"] for r in summary["float"]["latency"]["rows"]] == [1]

    from compress.quantize.bias import _mean_shifts  # bias correction's sample count, on the same axes

    graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0)], "g",
                              [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [2, "batch", 8]),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, [])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    calib = dict(np.load(tmp_path / "calib.npz"))
    _, seen = _mean_shifts(tmp_path / "m.onnx", [{k: calib[k] for k in ("h0", "x")}], ["m"], {"h0": 1})
    assert seen == 16


def test_edge_runs_a_model_whose_batch_is_fixed_above_one_at_its_own_batch(tmp_path: Path):
    # onnx's own test graphs fix axis 0 at 7: "batch 1 cannot run; use --batch 7", an option edge does not have
    graph = helper.make_graph([helper.make_node("Sign", ["x"], ["y"])], "sign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [7, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, 6])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "sign.onnx"))
    result = _invoke("edge", tmp_path / "sign.onnx", "--out", tmp_path / "edge")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "edge" / "edge.json").read_text())["parity"]["ok"]


def test_edge_names_the_inputs_file_the_model_cannot_run(tmp_path: Path, capfd):
    # ids past the vocabulary: ORT printed its own red line, then "did not run on the sample inputs" (the user's file)
    embedding(tmp_path / "tok.onnx")
    np.savez(tmp_path / "oob.npz", ids=np.full((2, 6), 50, np.int64))
    result = _invoke("edge", tmp_path / "tok.onnx", "--out", tmp_path / "edge", "--inputs", tmp_path / "oob.npz")
    assert result.exit_code == 2
    assert f"did not run on --inputs {tmp_path / 'oob.npz'} in ONNX Runtime" in result.output
    assert "onnxruntime" not in capfd.readouterr().err
    assert not (tmp_path / "edge").exists()  # it held an .ort and its config without an edge.json
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    again = _invoke("edge", tmp_path / "tok.onnx", "--out", tmp_path / "mine", "--inputs", tmp_path / "oob.npz")
    assert again.exit_code == 2
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]  # a folder of the user's: only ours goes


def test_a_baseline_timed_at_another_dim_size_is_said_and_refused_with_strict(tmp_path: Path):
    # seq=16 against seq=4096: REGRESSED x10.9 and exit 1, even with --strict, for the same model
    embedding(tmp_path / "tok.onnx", seq="seq")
    quick = ["--quiet", "--min-runs", "3", "--repetitions", "1", "--warmup", "1", "--min-seconds", "0"]
    for seq in (16, 4096):
        done = _invoke("bench", tmp_path / "tok.onnx", "--dim", f"seq={seq}", "--json", tmp_path / f"{seq}.json",
                       *quick)
        assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "16.json").read_text())["dims"] == {"seq": 16}
    said = "timed at different --dim sizes (seq=16 vs seq=4096)"
    compared = _invoke("compare", tmp_path / "16.json", tmp_path / "4096.json", "--strict")
    assert compared.exit_code == 2 and said in compared.output
    gated = _invoke("bench", tmp_path / "tok.onnx", "--dim", "seq=4096", "--baseline", tmp_path / "16.json",
                    "--strict", *quick)
    assert gated.exit_code == 2 and said in gated.output


def test_compress_quantize_takes_scalar_and_state_inputs(tmp_path: Path):
    model = recurrent(tmp_path / "vad.onnx")
    out = tmp_path / "vad-int8.onnx"
    result = _invoke("quantize", model, "--out", out, "--mode", "dynamic", "--batch-axis", "state:1",
                     "--max-cosine-drop", "1", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["inputs"] == ["x", "state", "sr"] and summary["gate_metric"]["metric"]["name"] == "cosine"
    assert {"cosine/prob", "cosine/new_state"} <= set(summary["attempts"][0]["figures"])


def test_fix_dim_by_input_and_axis_and_never_all_unnamed_at_once(tmp_path: Path):
    from compress.edge.shapes import fix_dims, parse_fix_dims

    model = image(tmp_path / "img.onnx")
    fixed = fix_dims(model, tmp_path / "fixed.onnx", parse_fix_dims(["images:2=48", "images:3=192", "batch=1"]))
    dims = [d.dim_value for d in onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 48, 192]
    result = _invoke("bench", model, "--dim", "?=48")
    assert result.exit_code == 2 and "unnamed dimensions are not set all at once" in result.output
    result = _invoke("bench", model, "--time-budget", "1")
    assert result.exit_code == 2 and "pass --fix-dim images:2=N or --inputs FILE.npz" in result.output
    timed = _invoke("bench", model, "--fix-dim", "images:2=48", "--fix-dim", "images:3=192", "--time-budget", "1")
    assert timed.exit_code == 0, timed.output
    bad = _invoke("bench", model, "--fix-dim", "height=48")
    assert bad.exit_code == 2 and "has no dimension named 'height'" in bad.output


def test_bench_inputs_npz_keeps_a_scalar_input_scalar(tmp_path: Path):
    # np.ascontiguousarray turns a 0-d array into shape [1]: the check passed, then the timing session refused it
    model = recurrent(tmp_path / "vad.onnx")
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=np.ones((4, 16), np.float32), state=np.zeros((2, 4, 8), np.float32), sr=np.array(16000))
    result = _invoke("bench", model, "--inputs", feeds, "--batch-axis", "state:1", "--batch-axis", "sr:none",
                     "--quiet", "--min-runs", "3", "--repetitions", "1", "--warmup", "1", "--min-seconds", "0")
    assert result.exit_code == 0, result.output
    assert "CPUExecutionProvider" in result.output


def test_bench_inputs_with_a_state_saved_rows_first_and_an_explicit_batch(tmp_path: Path):
    # the state's batch is on axis 1: "the model fixes its batch at 2 ... save 2 of the 4 rows" was wrong advice;
    # --batch 1 beside --inputs was dropped without a word (a batch other than 1 was refused)
    model = recurrent(tmp_path / "vad.onnx")
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=np.ones((4, 16), np.float32), state=np.zeros((4, 2, 8), np.float32), sr=np.array(16000))
    rows_first = _invoke("bench", model, "--inputs", feeds, "--batch-axis", "state:1", "--batch-axis", "sr:none")
    np.savez(feeds, x=np.ones((4, 16), np.float32), state=np.zeros((2, 4, 8), np.float32), sr=np.array(16000))
    batch = _invoke("bench", model, "--inputs", feeds, "--batch", "1", "--batch-axis", "state:1", "--batch-axis",
                    "sr:none")
    assert rows_first.exit_code == 2 and rows_first.output.strip().endswith(
        "input 'state': expected shape [2, 'batch', 8], got [4, 2, 8]; axis 0 is fixed at 2 and the batch ('batch') "
        "is axis 1: put the rows there (numpy.moveaxis(a, 0, 1) for rows saved first)"), rows_first.output
    assert batch.exit_code == 2 and batch.output.strip() == (
        f"error: --batch: --inputs {feeds} sets the batch and every shape (its arrays); drop --batch"), batch.output


def squeezer(path: Path) -> Path:
    """x [batch, d] -> Squeeze(axis 1): loads while d is free, and ONNX Runtime refuses it once d is fixed to 2
    (Silero VAD's unused 8 kHz branch does the same when its chunk length is fixed)."""
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph([helper.make_node("Squeeze", ["x", "axes"], ["y"], name="squeeze")], "sq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "d"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])], [axes])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_fixed_dimension_the_graph_cannot_take_is_one_line_naming_the_flag(tmp_path: Path):
    model = squeezer(tmp_path / "sq.onnx")
    for command in (["bench", model, "--quiet"], ["edge", model, "--out", tmp_path / "edge"],
                    ["quantize", model, "--out", tmp_path / "q.onnx", "--mode", "dynamic"]):
        result = _invoke(*command, "--fix-dim", "d=2")
        assert result.exit_code == 2, result.output
        line = [ln for ln in result.output.splitlines() if ln.startswith("error:")][0]
        assert line.startswith("error: --fix-dim d=2: onnxruntime cannot load sq.onnx with these values"), line
        assert "Traceback" not in result.output


def control_flow(path: Path) -> Path:
    """Every MatMul inside the two branches of an If (as Silero VAD's work sits in two Ifs): the quantizer, which
    works on the main graph, finds nothing to take."""
    rng = np.random.default_rng(0)

    def branch(name: str, scale: float):
        w = numpy_helper.from_array((rng.standard_normal((16, 16)) * scale).astype(np.float32), f"{name}_w")
        nodes = [helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_h"], name=f"{name}_mm"),
                 helper.make_node("Relu", [f"{name}_h"], [f"{name}_y"], name=f"{name}_relu")]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT,
                                                                                ["batch", 16])], [w])

    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], name="sum", keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["flag"], name="positive"),
             helper.make_node("If", ["flag"], ["y"], then_branch=branch("then", 1.0),
                              else_branch=branch("else", 0.5), name="if")]
    graph = helper.make_graph(nodes, "flow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], [zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_model_whose_work_sits_in_an_if_says_nothing_could_be_quantized(tmp_path: Path):
    model = control_flow(tmp_path / "flow.onnx")
    out = tmp_path / "q" / "flow-int8.onnx"
    result = _invoke("quantize", model, "--out", out, "--mode", "dynamic", "--quiet")
    assert result.exit_code == 1, result.output
    assert "nothing could be quantized: 4 of the model's 7 nodes sit inside If subgraphs" in result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert len(summary["attempts"]) == 1  # remedies cannot change what the quantizer reaches
    assert not out.exists()
    # what was written says so, not "keeping the float model" with nothing at --out
    assert "; nothing written to --out (summary:" in result.output and "keeping the float model" not in result.output
    assert "Wrote: nothing at --out (nothing could be quantized; the float model is the one given)" in result.output


def test_static_calibration_cuts_a_state_input_on_its_own_batch_axis(tmp_path: Path):
    # 40 rows make two calibration batches (32 + 8): the state [2, N, 8] is cut on axis 1, the scalar goes whole
    model = recurrent(tmp_path / "vad.onnx")
    calib = state_inputs(tmp_path / "calib.npz", 40, 16, 8, sr=1, seed=0)
    out = tmp_path / "vad-int8.onnx"
    result = _invoke("quantize", model, "--out", out, "--calibration", calib, "--batch-axis", "state:1",
                     "--batch-axis", "sr:none", "--max-cosine-drop", "1", "--no-fallback", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["attempts"][0]["quantized"] and summary["attempts"][0]["figures"]["cosine/new_state"] > 0.9

    from compress.quantize.attempts import batched
    parts = batched(dict(np.load(calib)), 32, {"state": 1, "sr": None})
    assert [p["state"].shape for p in parts] == [(2, 32, 8), (2, 8, 8)] and parts[1]["sr"].shape == ()


def test_a_fixed_batch_image_model_with_free_height_is_told_to_cut_rows(tmp_path: Path):
    # [1, 3, 'H', 'W']: 'H' is no batch axis; the advice said "the batch ('H') is axis 2: numpy.moveaxis(a, 0, 2)"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "img",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, "H", "W"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "img.onnx"))
    np.savez(tmp_path / "imgs.npz", x=np.ones((8, 3, 32, 32), np.float32))
    result = _invoke("bench", tmp_path / "img.onnx", "--inputs", tmp_path / "imgs.npz")
    assert result.exit_code == 2 and result.output.strip().endswith(
        "the model fixes its batch at 1 and the arrays are fed whole, as one batch: save 1 of the 8 rows (x[:1])"), \
        result.output
