"""`compress quantize MODEL.onnx --out OUT.onnx`: the quantize stage's function on any ONNX file."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from compress.cli import main

from .stages.test_quantize import _data, _mlp


@pytest.fixture()
def files(tmp_path: Path) -> dict:
    train_x, _, centroids = _data(256, seed=1)
    val_x, val_y, _ = _data(200, seed=2)
    np.savez(tmp_path / "calib.npz", x=train_x)
    np.savez(tmp_path / "val.npz", x=val_x, y=val_y)
    return {"model": _mlp(tmp_path / "mlp.onnx", centroids), "calib": tmp_path / "calib.npz",
            "val": tmp_path / "val.npz", "dir": tmp_path}


def _invoke(*args: object):
    return CliRunner().invoke(main, ["quantize", *map(str, args), "--quiet"])


def test_static_with_labelled_data_writes_int8_model_and_summary(files: dict):
    out = files["dir"] / "q" / "mlp-int8.onnx"
    result = _invoke(files["model"], "--out", out, "--calibration", files["calib"], "--data", files["val"],
                     "--pick", "quantized")
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    # 200 samples cannot resolve the default 0.5-point budget, and the summary says so; each drop is counted too
    assert summary["gate"] == ("accuracy on 200 labelled samples from val.npz; one sample is 0.50 points, so the "
                               "budget of 0.50 points is 1.0 samples: attempts within a sample or two of each other "
                               "are not told apart (more samples resolve it)")
    assert re.fullmatch(r"accuracy drop -?\d+\.\d\d points \(-?\d+ of 200 samples\) <= budget 0\.50 points.*",
                        summary["attempts"][0]["reason"])
    assert summary["attempts"][0]["accepted"] and summary["out"] == str(out) and summary["ships"] == "quantized"
    weights = [i for i in onnx.load(str(out)).graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert weights, "the written model holds no int8 weights"
    assert out.with_suffix(".md").read_text().startswith("# compress quantize: mlp.onnx (static)")
    # each attempt's time (quantized and scored), in the summary and its table: where a run's time went
    assert all(0 < a["seconds"] < 120 for a in summary["attempts"])
    assert f"| {summary['attempts'][0]['seconds']:.1f} s | yes |" in out.with_suffix(".md").read_text()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "scratch attempts left behind"


def test_without_labels_gates_on_agreement_with_fp32(files: dict):
    out = files["dir"] / "mlp-dyn.onnx"
    result = _invoke(files["model"], "--out", out, "--mode", "dynamic", "--calibration", files["calib"])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["gate"].startswith("top-1 agreement with the fp32 model on 256 calibration inputs; one sample is "
                                      "0.39 points, so the budget of 0.50 points is 1.3 samples")
    assert summary["float"]["score"] == 1.0  # fp32 agrees with itself
    assert summary["gate_metric"]["metric"]["name"] == "top1_agreement" and not summary["warnings"]
    # OUT is the model to ship: the int8 one when picked, else the float model, as the summary says
    shipped = onnx.load(str(out))
    has_int8 = any(i.data_type == onnx.TensorProto.INT8 for i in shipped.graph.initializer)
    assert has_int8 == (summary["ships"] == "quantized") and summary["final"] == summary["ships"]


def test_paths_relative_to_the_current_folder_are_pre_processed_and_corrected(files: dict, monkeypatch):
    # setup: a user in the model's folder passing bare file names (pre-processing once resolved them elsewhere)
    monkeypatch.chdir(files["dir"])
    # execute
    result = _invoke("mlp.onnx", "--out", "rel-int8.onnx", "--calibration", "calib.npz", "--data", "val.npz",
                     "--pick", "quantized")
    # assert: ORT's pre-processing ran, and the first attempt corrected the biases of both layers
    assert result.exit_code == 0, result.output
    summary = json.loads((files["dir"] / "rel-int8.json").read_text())
    assert summary["preprocess"].startswith("quant_pre_process: shape inference + optimisation")
    assert "biases of 2 layers corrected" in summary["attempts"][0]["reason"]


def test_without_any_data_says_the_gate_used_random_inputs(files: dict):
    out = files["dir"] / "mlp-rand.onnx"
    result = _invoke(files["model"], "--out", out, "--mode", "dynamic", "--max-accuracy-drop", "1")
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["gate"] == "top-1 agreement with the fp32 model on 64 seeded random inputs (pass --data for a " \
                              "real gate)"


def test_missed_budget_exits_1_and_still_writes_the_summary(files: dict):
    calib = np.load(files["calib"])["x"].copy()
    calib[:, -1] = 1e4  # a wild value in every sample stretches the range: int8 then loses accuracy for sure
    np.savez(files["dir"] / "outlier.npz", x=calib)
    out = files["dir"] / "strict.onnx"
    result = _invoke(files["model"], "--out", out, "--calibration", files["dir"] / "outlier.npz", "--data",
                     files["val"], "--max-accuracy-drop", "0", "--no-fallback")
    assert result.exit_code == 1, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert not out.exists() and summary["out"] is None
    assert summary["final"] is None and summary["ships"] is None  # "final" said "float", with nothing written
    assert "no quantized model met the accuracy budget of 0.00 points after 1 attempt" in result.output
    effort = files["dir"] / "strict.best-effort.onnx"  # the best attempt, beside OUT and named as such
    assert effort.is_file() and summary["best_effort"] == str(effort)
    # the line names the budget that takes the best attempt, and that budget does
    budget = re.search(r"; --max-accuracy-drop ([0-9.]+) would take it\)", result.output)
    assert budget, result.output
    again = _invoke(files["model"], "--out", out, "--calibration", files["dir"] / "outlier.npz", "--data",
                    files["val"], "--max-accuracy-drop", budget.group(1), "--no-fallback")
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize("extra, line", [
    (["--out", "x.onnx", "--mode", "static"], "error: --calibration: static quantization needs calibration inputs "
                                              "(.npz with an array per model input, or 'x' for one input); pass one "
                                              "or use --mode dynamic"),
    (["--out", "x.onnx", "--metric", "m:f"], "error: --metric: your metric compares outputs with targets: pass "
                                             "--data with the inputs and their targets ('y' or 'y_NAME')"),
    (["--out", "x.txt", "--mode", "dynamic"], "error: --out: expected a path ending in .onnx, got 'x.txt'"),
    (["--out", "x.onnx", "--mode", "dynamic", "--data", "missing.npz"],
     "error: missing.npz: no such file; --data expects an .npz"),
    # each of these was taken: a typo sized nothing, --output was ignored beside --metric
    (["--out", "x.onnx", "--calibration", "calib.npz", "--batch-axis", "nosuch:0"],
     "error: --batch-axis nosuch: mlp.onnx has no input 'nosuch' (inputs: x)"),
    (["--out", "x.onnx", "--calibration", "calib.npz", "--batch-axis", "x:5"],
     "error: --batch-axis x:5: input 'x' of mlp.onnx has 2 axes; name one of 0-1, or none"),
    (["--out", "x.onnx", "--mode", "dynamic", "--dim", "N=4", "--batch", "2"],  # timed at 4, the gate cut to 4
     "error: --dim N=4: N is the batch axis (axis 0) of input 'x', which --batch sets (2); drop --dim N, or time "
     "--batch 4"),
    (["--out", "x.onnx", "--calibration", "calib.npz", "--data", "val.npz", "--metric", "m:f", "--output", "nosuch"],
     "error: --output nosuch: picks what the agreement gate judges; --metric gates on your metric, which reads every "
     "output: drop --output"),
])
def test_bad_input_is_one_line_and_exit_2(files: dict, monkeypatch: pytest.MonkeyPatch, extra: list, line: str):
    monkeypatch.chdir(files["dir"])
    result = _invoke("mlp.onnx", *extra)
    assert result.exit_code == 2 and result.output.strip() == line


@pytest.mark.parametrize("arrays, option, line", [
    ({"x": 200, "y": (150,)}, "--data", "error: bad.npz: y has 150 rows and the inputs 200; --data needs a target for "
     "every input row"),
    ({"x": 200, "y": (200, 4)}, "--data", "error: bad.npz: --max-accuracy-drop gates on labels, which must be one "
     "class index per sample (200 samples); got an array of shape (200, 4) (one-hot labels: np.argmax(y, axis=1) "
     "gives the indices)"),
    ({"x": 0}, "--calibration", "error: bad.npz: --calibration expects at least one sample; the array for input 'x' "
     "is empty (shape (0, 16))"),
    # before: strings failed in numpy with a traceback, 0.5 was cut to 0, and NaN in --inputs passed the gate
    ({"x": 200, "y": "strings"}, "--data", "error: bad.npz: --max-accuracy-drop gates on labels, which must be class "
     "indices (whole numbers); got text values ('cat', 'cat', 'cat', ...)"),
    ({"x": 200, "y": "halves"}, "--data", "error: bad.npz: --max-accuracy-drop gates on labels, which must be class "
     "indices (whole numbers); got float64 values (0.5, 0.5, 0.5, ...)"),
    ({"x": "nan"}, "--inputs", "error: bad.npz: array 'x' holds NaN at index 0 (first of 64 bad values); --inputs "
     "expects numbers, not NaN: clean the data or drop those rows"),
])
def test_labels_that_are_not_one_index_per_sample_and_empty_inputs_are_one_line(
        files: dict, monkeypatch: pytest.MonkeyPatch, arrays: dict, option: str, line: str):
    # setup: before, each was a traceback of numpy's and exit 1, the code of a missed budget
    monkeypatch.chdir(files["dir"])
    rng = np.random.default_rng(0)
    special = {"strings": np.array(["cat"] * 200), "halves": np.full(200, 0.5),
               "nan": np.full((4, 16), np.nan, np.float32)}
    np.savez("bad.npz", **{k: special[v] if isinstance(v, str) else rng.standard_normal((v, 16)).astype(np.float32)
                           if k == "x" else rng.integers(0, 4, v) for k, v in arrays.items()})
    given = ["--calibration", "bad.npz"] if option == "--calibration" else ["--calibration", "calib.npz", option,
                                                                             "bad.npz"]
    # execute
    result = _invoke("mlp.onnx", "--out", "x.onnx", *given)
    # assert
    assert result.exit_code == 2 and result.output.strip() == line


def test_output_chooses_the_logits_labels_are_gated_on_and_an_unknown_output_is_named(files: dict):
    # setup: the MLP with its hidden layer as a first, second output
    model = onnx.load(str(files["model"]))
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, ["N", 8]))
    two = files["dir"] / "two.onnx"
    onnx.save(model, str(two))
    out = files["dir"] / "two-int8.onnx"
    # execute
    chosen = _invoke(two, "--out", out, "--calibration", files["calib"], "--data", files["val"], "--output", "logits")
    unknown = _invoke(files["model"], "--out", out, "--calibration", files["calib"], "--data", files["val"],
                      "--output", "nosuch")
    # assert: the labels are used on the output named (before: agreement with fp32 on both, labels dropped), and a
    # name the model lacks is refused on the labelled path too (before: ignored, exit 0)
    assert chosen.exit_code == 0, chosen.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["gate_metric"]["metric"]["name"] == "accuracy" and summary["float"]["score"] > 0.9
    assert unknown.exit_code == 2
    assert unknown.output.strip() == f"error: --output: {files['model']} has no output 'nosuch'; its outputs are logits"


def _old_conv(path: Path, *, batch: int | str = "N") -> Path:
    """An IR 3, opset 9 Conv net like the model-zoo graphs: weights also listed as graph inputs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="pool"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc"], ["logits"], name="head")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, 6, 6])]
    inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    graph = helper.make_graph(nodes, "old", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                                   [batch, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.save(model, str(path))
    return path


def test_static_upgrades_an_opset_9_graph_for_per_channel_qdq(tmp_path: Path):
    # setup: ORT writes per-channel DequantizeLinear nodes with `axis`, which opset 9 lacks: an invalid model
    model = _old_conv(tmp_path / "old.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((32, 2, 6, 6)).astype(np.float32))
    out = tmp_path / "old-int8.onnx"
    # execute
    result = _invoke(model, "--out", out, "--calibration", tmp_path / "calib.npz", "--max-accuracy-drop", "1",
                     "--pick", "quantized")
    # assert
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["preprocess"].startswith("weights dropped from the graph inputs (IR 3); opset 9 upgraded to 13")
    written = onnx.load(str(out))
    assert max(o.version for o in written.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert any(n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)
               for n in written.graph.node), "no per-channel DequantizeLinear: the upgrade did not reach QDQ"


def test_batch_the_fixed_batch_dimension_cannot_take_is_refused(tmp_path: Path):
    model = _old_conv(tmp_path / "fixed.onnx", batch=1)
    result = _invoke(model, "--out", tmp_path / "q.onnx", "--mode", "dynamic", "--batch", "8")
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: --batch: {model} fixes its batch dimension to 1, so batch 8 cannot be "
                                     "timed; use --batch 1, or re-export with a dynamic batch axis")


@pytest.mark.parametrize("rows", [64, 60])
def test_static_calibrates_a_model_fixed_at_batch_8(tmp_path: Path, rows: int):
    # setup: the MLP's batch fixed to 8 (as edge exports are); 60 rows leave a short last batch
    model = _old_conv(tmp_path / "fixed.onnx", batch=8)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((rows, 2, 6, 6)).astype(np.float32))
    out = tmp_path / "q" / "fixed-int8.onnx"
    # execute
    result = _invoke(model, "--out", out, "--calibration", tmp_path / "calib.npz", "--batch", "8",
                     "--max-accuracy-drop", "1", "--pick", "quantized", "--no-fallback")
    # assert: the default attempt builds (before: it ran single rows the model refuses, and with 60 rows every
    # attempt failed on the short batch)
    assert result.exit_code == 0, result.output
    attempt = json.loads(out.with_suffix(".json").read_text())["attempts"][0]
    assert attempt["accepted"] and "mean_minmax" in attempt["name"], attempt

def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def external_mlp(path: Path) -> Path:
    """A 64 -> 256 -> 10 MatMul net whose weights live in `<name>.data` beside it (ONNX external data)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 256)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((256, 10)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "ext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
              save_as_external_data=True, all_tensors_to_one_file=True, location=f"{path.name}.data", size_threshold=0)
    return path


def test_a_model_too_big_for_one_protobuf_is_quantized_with_external_data(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    # setup: the 2 GB limit scaled down to this 75 KB model, so every write takes the large-model path
    import onnxruntime as ort

    import compress.onnx.graph

    monkeypatch.setattr(compress.onnx.graph, "PROTOBUF_LIMIT", 10_000)
    model = external_mlp(tmp_path / "big.onnx")
    out = tmp_path / "q" / "big-int8.onnx"
    # execute
    result = _invoke(model, "--out", out, "--mode", "dynamic", "--max-accuracy-drop", "1", "--no-fallback")
    # assert: the weights went to big-int8.onnx.data, and the pair loads and runs
    assert result.exit_code == 0, result.output
    data = out.parent / "big-int8.onnx.data"
    assert data.stat().st_size > 10_000 > out.stat().st_size
    assert data.stat().st_mode & 0o777 == 0o666 & ~_umask()  # onnx writes it 0600; an artifact is readable
    assert "weights kept as external data" in json.loads(out.with_suffix(".json").read_text())["preprocess"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.ones((2, 64), np.float32)})[0].shape == (2, 10)


def test_static_over_1_gb_says_which_edits_it_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # they were skipped without a word (among them the NaN guard of attention masks, and bias correction)
    import compress.onnx.graph

    monkeypatch.setattr(compress.onnx.graph, "PROTOBUF_LIMIT", 10_000)
    model = external_mlp(tmp_path / "big.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    out = tmp_path / "q" / "big-int8.onnx"
    result = _invoke(model, "--out", out, "--calibration", tmp_path / "calib.npz", "--max-accuracy-drop", "1",
                     "--no-fallback")
    assert result.exit_code == 0, result.output
    reason = json.loads(out.with_suffix(".json").read_text())["attempts"][0]["reason"]
    assert reason.endswith("over 1 GB: graph outputs, infinite ranges, outlier tensors and biases left as ORT's "
                           "quantizer wrote them"), reason


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_a_small_model_with_external_data_is_quantized_and_its_kept_attempts_run(tmp_path: Path, mode: str):
    # setup: recent torch.onnx.export writes small models' weights to a .data file beside them too
    import onnxruntime as ort

    model = external_mlp(tmp_path / "small.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    out, kept = tmp_path / "q" / "small-int8.onnx", tmp_path / "kept"
    # execute
    result = _invoke(model, "--out", out, "--mode", mode, "--calibration", tmp_path / "calib.npz",
                     "--max-accuracy-drop", "1", "--pick", "quantized", "--keep-attempts", kept)
    # assert: quantized (before: a traceback for static, every attempt failing to build for dynamic), and every
    # kept attempt loads with its weights after the working folder is gone
    assert result.exit_code == 0, result.output
    assert "weights read in from external data" in json.loads(out.with_suffix(".json").read_text())["preprocess"]
    attempts = sorted(kept.glob("attempt-*.onnx"))
    assert attempts
    for path in [out, *attempts]:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.run(None, {"x": np.ones((2, 64), np.float32)})[0].shape == (2, 10)
def _constant_weights(path: Path) -> Path:
    """A 16 -> 32 -> 4 MatMul net whose weights are Constant nodes (as Paddle exports write them)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    consts = [helper.make_node("Constant", [], [f"w{i}"], name=f"const{i}",
                               value=numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32)))
              for i, shape in enumerate([(16, 32), (32, 4)])]
    nodes = consts + [helper.make_node("MatMul", ["x", "w0"], ["h"], name="fc1"),
                      helper.make_node("Relu", ["h"], ["r"], name="relu"),
                      helper.make_node("MatMul", ["r", "w1"], ["logits"], name="fc2")]
    graph = helper.make_graph(nodes, "const", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_weights_in_constant_nodes_are_quantized_and_the_summary_says_so(tmp_path: Path):
    # setup
    model = _constant_weights(tmp_path / "const.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32))
    out = tmp_path / "const-int8.onnx"
    # execute
    result = _invoke(model, "--out", out, "--calibration", tmp_path / "calib.npz", "--max-accuracy-drop", "1",
                     "--pick", "quantized", "--no-fallback")
    # assert: both weights became int8 initializers, and the summary names the move
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert "2 Constant nodes holding weights moved to initializers" in summary["preprocess"]
    int8 = [i.name for i in onnx.load(str(out)).graph.initializer if i.data_type == onnx.TensorProto.INT8
            and i.name.endswith("_quantized")]
    assert sorted(int8) == ["w0_quantized", "w1_quantized"], int8


def test_exclude_keeps_an_op_type_in_float_and_an_unknown_one_is_named(tmp_path: Path, files: dict):
    out = tmp_path / "ex.onnx"
    result = _invoke(files["model"], "--out", out, "--calibration", files["calib"], "--data", files["val"],
                     "--exclude", "fc2", "--pick", "quantized", "--no-fallback")
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["attempts"][0]["settings"]["nodes_to_exclude"] == ["fc2/MatMulAddFusion"]
    inits = {i.name: i.data_type for i in onnx.load(str(out)).graph.initializer}
    assert inits["w2"] == onnx.TensorProto.FLOAT and inits["w1_quantized"] == onnx.TensorProto.INT8
    bad = _invoke(files["model"], "--out", tmp_path / "bad.onnx", "--mode", "dynamic", "--exclude", "Conv")
    assert bad.exit_code == 2 and bad.output.strip().startswith(
        f"error: {files['model']}: [quantize] exclude (--exclude): 'Conv' is neither a node name nor an op type of "
        "this model (its op types: ")
    assert not (tmp_path / "bad.json").exists()  # refused before any work
    # with --fix-dim the model checked is a copy in a folder deleted on exit: the line names the user's model
    fixed = _invoke(files["model"], "--out", tmp_path / "bad.onnx", "--mode", "dynamic", "--exclude", "Conv",
                    "--fix-dim", "x:0=1")
    assert fixed.exit_code == 2 and fixed.output.strip().startswith(
        f"error: {files['model']}: [quantize] exclude (--exclude): 'Conv' is neither"), fixed.output


def test_a_non_logits_model_with_labelled_data_runs_fp32_once(files: dict, monkeypatch: pytest.MonkeyPatch):
    """Outputs named as an embedding: the gate is cosine to fp32, and the fp32 pass the CLI looked at is the one it
    compares with (it ran twice before)."""
    import compress.quantize.gate as gate

    model = onnx.load(str(files["model"]))
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["embedding" if o == old else o for o in node.output]
    model.graph.output[0].name = "embedding"
    path = files["dir"] / "embed.onnx"
    onnx.save(model, str(path))
    runs: list[str] = []
    real = gate.outputs_of
    monkeypatch.setattr(gate, "outputs_of", lambda p, *a, **k: runs.append(Path(p).name) or real(p, *a, **k))
    out = files["dir"] / "embed-int8.onnx"
    result = _invoke(path, "--out", out, "--calibration", files["calib"], "--data", files["val"])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["gate_metric"]["metric"]["name"] == "cosine" and summary["float"]["score"] == pytest.approx(1.0)
    assert runs.count("embed.onnx") == 1, runs
    assert summary["warnings"] == ["warning: val.npz: its labels ('y') are not used: the judged outputs (embedding) "
                                   "are not one set of class logits, so the gate compares with the fp32 model; pass "
                                   "--metric module:function to gate on the labels"]


def test_gate_resolution_clause_is_said_once_when_the_gate_is_derived():
    from dataclasses import replace

    from compress.quantize.gate import Gate
    from compress.tasks import Metric

    gate = Gate(lambda path: {}, Metric("accuracy"), 0.005, "--max-accuracy-drop", "accuracy on 300 samples",
                samples=300)
    derived = replace(gate, score=lambda path: {"accuracy": 1.0})
    assert gate.what.count("one sample is 0.33 points") == 1
    assert derived.what == gate.what and derived.score("x") == {"accuracy": 1.0}


def test_a_model_quantized_already_is_named_so(files: dict):
    # setup: the MLP quantized dynamically by ONNX Runtime itself, as a user might pass it by mistake
    from onnxruntime.quantization import quantize_dynamic

    done = files["dir"] / "mlp-int8-already.onnx"
    quantize_dynamic(files["model"], done)
    out = files["dir"] / "again.onnx"
    # execute
    result = _invoke(done, "--out", out)
    # assert: one warning line naming the integer ops it holds, in the output and the summary; the float MLP has none
    summary = json.loads(out.with_suffix(".json").read_text())
    said = [w for w in summary["warnings"] if "quantized already" in w]
    assert len(said) == 1 and re.search(r"\(\d+ (MatMulInteger|DynamicQuantizeLinear), ", said[0]), said
    assert said[0] in result.output
    plain = _invoke(files["model"], "--out", files["dir"] / "plain.onnx")
    assert "quantized already" not in plain.output


def test_default_dynamic_int8_of_a_conv_net_points_to_static_when_float_ships(tmp_path: Path):
    # setup: a conv net and the MLP; a summary whose float model shipped
    from compress.cli.quantize import _markdown, _op_counts, _static_pays

    from .stages.test_bias_correction import _model

    conv = _model(tmp_path)
    mlp_dir = tmp_path / "mlp"
    mlp_dir.mkdir()
    train_x, _, centroids = _data(64, seed=1)
    mlp = _mlp(mlp_dir / "mlp.onnx", centroids)
    # execute
    said, none = _static_pays(_op_counts(conv)), _static_pays(_op_counts(mlp))
    # assert: the conv net is told to pass --calibration (its convolutions counted), the MLP is not; the summary
    # prints the line after what it wrote
    n = sum(node.op_type == "Conv" for node in onnx.load(str(conv)).graph.node)
    assert said is not None and said.startswith(f"this model's {n} convolutions") and "--calibration" in said
    assert none is None
    summary = {"model": str(conv), "mode": "dynamic", "gate": "g", "warnings": [], "cpu_int8": "c", "attempts": [],
               "gate_metric": {"metric": {"name": "cosine"}}, "why": "float", "out": "o.onnx", "ships": "float",
               "next": said}
    text = _markdown(summary)
    assert text.rstrip().endswith(f"Next: {said}") and text.index("Wrote:") < text.index("Next:")


def test_a_matmul_with_a_1_by_n_bias_quantizes_per_channel(tmp_path: Path):
    # setup: MatMul + Add whose bias is stored (1, N), as jax2tf writes it (Google's Magika): ORT's pre-processing
    # fuses them into a Gemm with that bias, on which ORT's quantizer failed with per-channel weights
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((16, 8)).astype(np.float32), rng.standard_normal((1, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = tmp_path / "dense.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((64, 16)).astype(np.float32))
    out = tmp_path / "dense-int8.onnx"
    # execute
    result = _invoke(model, "--out", out, "--calibration", tmp_path / "calib.npz")
    # assert: the first (per-channel) attempt quantized the model and was judged (before: "failed: The truth value
    # of an array ... is ambiguous", on every per-channel attempt); the summary says what was reshaped
    assert result.exit_code in (0, 1), result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    first = summary["attempts"][0]
    assert first["settings"]["per_channel"] and first["quantized"] and first["drop"] is not None, first["reason"]
    assert "1 Gemm bias of shape (1, N) stored as (N,)" in summary["preprocess"]


def test_out_that_is_the_model_itself_is_refused_before_any_work(tmp_path: Path, files: dict):
    # it deleted the input when no attempt met the budget, and overwrote it when int8 shipped; a model named like
    # --out's best-effort file would be overwritten too
    import shutil

    same, effort = tmp_path / "m.onnx", tmp_path / "n.best-effort.onnx"
    for path in (same, effort):
        shutil.copyfile(files["model"], path)
    os.link(same, tmp_path / "hard.onnx")  # another name for the same file: quantize overwrote the model through it
    for model, out in ((same, same), (effort, tmp_path / "n.onnx"), (same, tmp_path / "hard.onnx")):
        result = _invoke(model, "--out", out, "--mode", "dynamic")
        assert result.exit_code == 2 and result.output.strip() == (
            f"error: --out: {out} would write {out if out.name == 'hard.onnx' else model}, which is MODEL itself ({model}); write the quantized model to "
            "another path"), result.output
        assert model.read_bytes() == Path(files["model"]).read_bytes()
    assert not list(tmp_path.glob("*.json"))


def test_inputs_of_the_wrong_shape_are_named_with_the_file_and_the_sizes(tmp_path: Path, files: dict):
    # ORT's own message was cut before the sizes and named the model: "did not run on the gate's inputs ... Got
    # invalid dimensions for input: input for the following indices"
    x = np.load(files["calib"])["x"]
    np.savez(tmp_path / "wide.npz", x=np.concatenate([x, x[:, :1]], axis=1))
    np.savez(tmp_path / "flat.npz", x=x.reshape(-1))
    for name, shape in (("wide", f"{len(x)}x{x.shape[1] + 1}"), ("flat", f"{x.size}")):
        result = _invoke(files["model"], "--out", tmp_path / "q.onnx", "--calibration", tmp_path / f"{name}.npz")
        assert result.exit_code == 2 and result.output.strip() == (
            f"error: {tmp_path / name}.npz: --calibration: input 'x' has shape {shape}, the model takes "
            f"?x{x.shape[1]} ('?': any size)"), result.output


def test_a_graph_older_than_onnx_runtime_runs_is_raised_to_opset_13_first(tmp_path: Path):
    # an opset-6 Gemm has no kernel in ONNX Runtime: the fp32 gate could not score it ("check the export")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 3]),  # IR 3: weights are inputs too
              helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])]
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, broadcast=1)], "old",
                              inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 4])], [w, b])
    model = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3), str(model))
    np.savez(tmp_path / "in.npz", x=np.random.default_rng(1).standard_normal((8, 3)).astype(np.float32))
    bench = CliRunner().invoke(main, ["bench", str(model), "--inputs", str(tmp_path / "in.npz")])
    assert bench.exit_code == 2 and "its opset 6 is older than ONNX Runtime runs (7 and up): upgrade it" in bench.output
    out = tmp_path / "q.onnx"
    result = _invoke(model, "--out", out, "--calibration", tmp_path / "in.npz", "--batch", "8")
    assert result.exit_code == 0, result.output
    assert "note: old.onnx: opset 6 raised to 13 (ONNX Runtime runs opset 7 and up)" in result.output
    assert max(o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")) >= 13
    # with two outputs (not class logits) the gate's warning names the user's model, not the raised scratch copy
    graph.node.append(helper.make_node("Relu", ["y"], ["z"]))
    graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [8, 4]))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3), str(model))
    result = _invoke(model, "--out", out, "--calibration", tmp_path / "in.npz", "--batch", "8")
    assert "warning: old.onnx: the outputs" in result.output and "old.opset.onnx" not in result.output


def test_a_rejected_input_leaves_no_folders_behind(files: dict):
    np.savez(files["dir"] / "bad.npz", nothing=np.zeros(3))
    out = files["dir"] / "new" / "sub" / "q.onnx"
    result = _invoke(files["model"], "--out", out, "--calibration", files["dir"] / "bad.npz")
    assert result.exit_code == 2, result.output
    assert not (files["dir"] / "new").exists()  # made for --out, removed again: they were left empty


def test_a_graph_that_declares_no_standard_opset_is_not_raised(tmp_path: Path):
    # only com.microsoft ops: ORT runs it; read as "opset 1", it was sent to the version converter, which failed
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("BiasGelu", ["x", "b"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "ms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
                              [onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    model = tmp_path / "ms.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("com.microsoft", 1)]), str(model))
    result = _invoke(model, "--out", tmp_path / "q.onnx", "--mode", "dynamic")
    assert "opset" not in result.output and "nothing could be quantized" in result.output, result.output


def test_onnx_runtime_warnings_show_only_with_verbose(files: dict, capfd: pytest.CaptureFixture):
    """A graph with an initializer no node reads makes ORT print "Removing initializer ..." for every session it
    opens; compress's own output says what matters, so ORT's warnings show with -v only."""
    model = onnx.load(str(files["model"]))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "nobody_reads_me"))
    path = files["dir"] / "unused.onnx"
    onnx.save(model, str(path))

    def stderr(*flags: str) -> str:  # ORT's logger writes to the process's stderr, below Python's
        capfd.readouterr()
        result = CliRunner().invoke(main, [*flags, "quantize", str(path), "--out", str(files["dir"] / "u-int8.onnx"),
                                           "--mode", "dynamic", "--quiet"])
        assert result.exit_code in (0, 1), result.output  # 1: the random-input gate may refuse; not the point here
        return capfd.readouterr().err

    assert "Removing initializer 'nobody_reads_me'" not in stderr()
    assert "Removing initializer 'nobody_reads_me'" in stderr("-v")


def _open_with_unused_initializer(path: str) -> int:
    import onnxruntime

    onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return 1


def test_a_spawned_provider_child_keeps_the_clis_quiet_onnx_runtime(files: dict, monkeypatch, capfd):
    # compress.edge.isolated runs a provider's session in a spawned interpreter, which starts at ORT's default level
    from compress.edge.isolated import ORT_SEVERITY_ENV, run_isolated

    model = onnx.load(str(files["model"]))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "nobody_reads_me"))
    onnx.save(model, str(files["dir"] / "unused.onnx"))
    for level, shown in (("3", False), ("2", True)):
        monkeypatch.setenv(ORT_SEVERITY_ENV, level)
        assert run_isolated(f"{__name__}:_open_with_unused_initializer", {"path": str(files["dir"] / "unused.onnx")},
                            out_dir=files["dir"], name="probe", provider="cpu") == 1
        assert ("Removing initializer 'nobody_reads_me'" in capfd.readouterr().err) is shown


def test_excluding_every_node_that_computes_in_int8_is_nothing_quantized_not_a_speedup(files: dict):
    # before: --exclude MatMul missed the MatMuls the pre-processing fused with their Adds into Gemms (both were
    # quantized), and excluding them by name left Q/DQ pairs on the activations alone, which counted as quantized:
    # the attempt was accepted and timed against the float model
    out = files["dir"] / "ex.onnx"
    result = _invoke(files["model"], "--out", out, "--calibration", files["calib"], "--data", files["val"],
                     "--exclude", "MatMul")
    assert result.exit_code == 1, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    attempt = summary["attempts"][0]
    assert attempt["settings"]["nodes_to_exclude"] == ["fc1/MatMulAddFusion", "fc2/MatMulAddFusion"]
    assert not attempt["accepted"] and attempt["reason"] == "nothing computes in fewer bits"
    assert summary["why"] == ("nothing could be quantized: every node that would compute in int8 (2 Gemm) is kept "
                              "in float by --exclude ([quantize] exclude); nothing written to --out")
    assert not out.exists()


def test_exclude_on_a_graph_without_node_names_keeps_only_what_was_named(tmp_path: Path):
    # before: ORT's pre-processing left the names empty, excluded_nodes returned [''], and ORT kept every unnamed
    # node in float (the MatMul too); an unnamed MatMul fused into a Gemm was not excluded at all
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "wc"),
             numpy_helper.from_array(rng.standard_normal((64, 5)).astype(np.float32), "wm")]
    nodes = [helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "wm"], ["logits"])]
    graph = helper.make_graph(nodes, "unnamed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "u.onnx"))
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((32, 1, 4, 4)).astype(np.float32))
    for op, kept in (("Conv", "Conv_0"), ("MatMul", "MatMul_3")):
        out = tmp_path / f"u-{op}.onnx"
        result = _invoke(tmp_path / "u.onnx", "--out", out, "--calibration", tmp_path / "calib.npz",
                         "--exclude", op, "--max-accuracy-drop", "1")
        summary = json.loads(out.with_suffix(".json").read_text())
        assert summary["attempts"][0]["settings"]["nodes_to_exclude"] == [kept], result.output
        assert summary["attempts"][0]["quantized"], summary["attempts"][0]  # the other layer is int8
        assert "4 unnamed nodes named" in summary["preprocess"], summary["preprocess"]


def test_a_static_search_on_a_matmul_graph_ends_with_dynamic_int8_and_ships_it_when_static_fails(
        files: dict, monkeypatch: pytest.MonkeyPatch):
    # setup: every static attempt fails in ORT (as static int8 lost on all-MiniLM-L6-v2: pooled cosine 0.956-0.982)
    from compress.quantize import attempts as qa
    from compress.quantize.config import QuantizeConfig
    from compress.quantize.dynamic import matmuls_only
    from compress.onnx.skeleton import graph_of

    def refused(*args, **kwargs):
        raise RuntimeError("static refused")

    monkeypatch.setattr(qa, "_static", refused)
    out = files["dir"] / "q" / "mlp-int8.onnx"
    # execute
    result = _invoke(files["model"], "--out", out, "--calibration", files["calib"], "--data", files["val"],
                     "--pick", "quantized")
    # assert: the dynamic attempt came last, after every static remedy, met the budget and ships
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    last = summary["attempts"][-1]
    assert [a["settings"]["mode"] for a in summary["attempts"]].count("dynamic") == 1
    assert last["settings"]["mode"] == "dynamic" and last["accepted"] and last["why_tried"] == qa.DYNAMIC_WHY
    assert all(a["reason"] == "failed: static refused" for a in summary["attempts"][:-1])
    assert any(n.op_type == "DynamicQuantizeLinear" for n in onnx.load(str(out)).graph.node)
    assert summary["mode"] == "static" and summary["accepted_mode"] == "dynamic"  # the model shipped says which
    assert out.with_suffix(".md").read_text().startswith(
        "# compress quantize: mlp.onnx (static; the accepted attempt is dynamic)")
    # --static-only ([quantize] dynamic_remedy = false): for a target that runs static int8 only
    strict = files["dir"] / "q" / "static-only.onnx"
    result = _invoke(files["model"], "--out", strict, "--calibration", files["calib"], "--data", files["val"],
                     "--pick", "quantized", "--static-only")
    assert result.exit_code == 1, result.output
    tried = json.loads(strict.with_suffix(".json").read_text())["attempts"]
    assert tried and all(a["settings"]["mode"] == "static" for a in tried)
    # the plan: only for a static search on a graph whose weights are all MatMul or Gemm
    assert matmuls_only(graph_of(files["model"]).graph)
    conv = onnx.helper.make_graph([onnx.helper.make_node("Conv", ["x", "w"], ["y"])], "c", [], [])
    assert not matmuls_only(conv) and not matmuls_only(onnx.helper.make_graph([], "empty", [], []))
    assert qa.remedy_plan(QuantizeConfig(), matmuls_only=True)[:-1] == qa.remedy_plan(QuantizeConfig())
    assert all(s["mode"] == "dynamic" for s, _ in qa.remedy_plan(QuantizeConfig(mode="dynamic"), matmuls_only=True))


def test_dynamic_without_calibration_finds_the_outlier_layers_on_the_gates_rows(tmp_path: Path):
    # all-MiniLM-L6-v2 with --mode dynamic and no --calibration missed its budget by 0.0008: the outlier check had no
    # rows, so the attempt with the FFN output MatMuls in float was never built. Dynamic int8 calibrates nothing, so
    # its remedies read the gate's own rows (--inputs, else --data)
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = np.eye(16, dtype=np.float32)
    w1[15, 15] = 1000.0  # fc1 writes channel 15 at 1000x the others: its output's range one channel sets
    head = rng.standard_normal((16, 4)).astype(np.float32)
    head[15] = 0.0
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             helper.make_node("MatMul", ["m1", "w2"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4, 4])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(head, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "rows.npz", x=rng.standard_normal((32, 4, 16)).astype(np.float32))
    for option in ("--inputs", "--data"):
        out = tmp_path / f"q{option}.onnx"
        # execute: a budget no attempt meets, so every remedy runs
        result = _invoke(tmp_path / "m.onnx", "--out", out, "--mode", "dynamic", option, tmp_path / "rows.npz",
                         "--max-cosine-drop", "0")
        # assert: after plain dynamic (per channel, per tensor), a remedy keeps fc1 (and nothing else) in float; the
        # exclusion remedy follows, ranked by SQNR (a dynamic graph's nodes cannot be put back in float one by one)
        assert result.exit_code == 1, result.output
        tried = json.loads(out.with_suffix(".json").read_text())["attempts"]
        assert tried[2]["settings"]["nodes_to_exclude"] == ["fc1"], (option, tried[2])
        assert tried[2]["name"].endswith("-float1") and "outlier check" in tried[2]["why_tried"]
        assert tried[3]["why_tried"] == "remedy: 1 most sensitive node kept in float (ranked by SQNR)"
    # --no-fallback: no remedies, so no check
    out = tmp_path / "plain.onnx"
    _invoke(tmp_path / "m.onnx", "--out", out, "--mode", "dynamic", "--inputs", tmp_path / "rows.npz",
            "--max-cosine-drop", "0", "--no-fallback")
    assert len(json.loads(out.with_suffix(".json").read_text())["attempts"]) == 1


def test_an_attempt_onnx_runtime_cannot_load_is_recorded_and_the_next_one_runs(files: dict, monkeypatch):
    # an already-QDQ model's static attempt had two nodes of one name: ORT refused to load it, and the whole run
    # ended with exit 2 blaming the user's model ("check the export")
    from compress.quantize import attempts as qa

    real = qa.quantize_once

    def broken_first(base, out, settings, *args, **kwargs):
        note = real(base, out, settings, *args, **kwargs)
        if out.name.startswith("attempt-01"):
            out.write_bytes(b"not a model")
        return note
    monkeypatch.setattr(qa, "quantize_once", broken_first)
    out = files["dir"] / "q" / "broken.onnx"
    # execute
    result = _invoke(files["model"], "--out", out, "--calibration", files["calib"], "--data", files["val"],
                     "--pick", "quantized", "--max-accuracy-drop", "1")
    # assert: the first attempt failed on its own line, the second was built, judged and shipped
    assert result.exit_code == 0, result.output
    first, second = json.loads(out.with_suffix(".json").read_text())["attempts"][:2]
    assert first["reason"].startswith("failed: onnxruntime could not load the model") and not first["accepted"]
    assert str(files["model"]) not in first["reason"] and second["accepted"]


def test_integer_outputs_are_gated_on_agreement_and_a_box_output_is_not_class_logits(tmp_path: Path):
    # a model that returns class indices (ArgMax, int64) was gated by cosine over the whole vector: int8 shipped at
    # cosine 0.993 with 2 points of labels changed; a box regressor's (N, 4) output was judged by its argmax
    from onnx import TensorProto, helper, numpy_helper

    from compress.quantize.gate import agreement_gate, looks_like_logits

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    feeds = {"x": rng.standard_normal((50, 16)).astype(np.float32)}
    # execute
    gate = agreement_gate(tmp_path / "m.onnx", feeds, budget_top1=0.005, budget_cosine=0.01, source="50 rows")
    # assert: the share of labels kept, counted in samples
    assert gate.metric.name == "top1_agreement" and gate.key == "--max-accuracy-drop" and gate.samples == 50
    assert gate.what.startswith("agreement of the integer outputs (label) with the fp32 model's on 50 rows")
    assert gate.score(tmp_path / "m.onnx") == {"top1_agreement": 1.0}
    boxes = np.zeros((8, 4), np.float32)
    assert not looks_like_logits({"boxes": boxes}) and not looks_like_logits({"bbox_xyxy": boxes})
    assert looks_like_logits({"logits": boxes}) and looks_like_logits({"output": boxes})


def test_a_gemm_kept_in_float_stays_float_in_dynamic_int8(tmp_path: Path):
    # ORT's dynamic quantizer turns each Gemm into a MatMul named NAME_MatMul before it reads nodes_to_exclude: the
    # Gemm named in --exclude was quantized all the same, while the summary said it was kept in float
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((4, 32)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="g1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["delta"], name="g2", transB=1)]
    graph = helper.make_graph(nodes, "gemms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("delta", TensorProto.FLOAT, ["N", 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    np.savez(tmp_path / "in.npz", x=rng.standard_normal((64, 16)).astype(np.float32))
    out = tmp_path / "q.onnx"
    # execute
    result = _invoke(tmp_path / "g.onnx", "--out", out, "--mode", "dynamic", "--inputs", tmp_path / "in.npz",
                     "--exclude", "g1", "--pick", "quantized", "--max-cosine-drop", "1", "--no-fallback")
    # assert: g2 alone is int8; g1's product stays a float MatMul
    assert result.exit_code == 0, result.output
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("MatMulInteger") == 1 and ops.count("MatMul") + ops.count("Gemm") == 1, ops
    # the keep-in-float remedy ranks Gemm layers in a dynamic search too (ORT's dynamic op list has no Gemm: it
    # ranked nothing and ended without a word)
    result = _invoke(tmp_path / "g.onnx", "--out", out, "--mode", "dynamic", "--calibration", tmp_path / "in.npz",
                     "--max-cosine-drop", "0")
    tried = json.loads(out.with_suffix(".json").read_text())["attempts"]
    assert tried[-1]["why_tried"].startswith("remedy: ") and "most sensitive node" in tried[-1]["why_tried"], tried


def test_y_name_labels_gate_the_output_they_name(files: dict):
    # 'y_NAME' labels (the help: targets for several outputs) were never used, without a word
    val_x, val_y = np.load(files["val"])["x"], np.load(files["val"])["y"]
    np.savez(files["dir"] / "named.npz", x=val_x, y_logits=val_y)
    np.savez(files["dir"] / "other.npz", x=val_x, y_boxes=val_y)
    out = files["dir"] / "q.onnx"
    result = _invoke(files["model"], "--out", out, "--calibration", files["calib"], "--data",
                     files["dir"] / "named.npz")
    assert json.loads(out.with_suffix(".json").read_text())["gate"].startswith(
        "accuracy on 200 labelled samples from named.npz"), result.output
    result = _invoke(files["model"], "--out", out, "--calibration", files["calib"], "--data",
                     files["dir"] / "other.npz")
    assert "warning: other.npz: its labels ('y_boxes') are not used: the judged outputs (logits) are not one set of " \
           "class logits with its own y_NAME" in result.output


def test_inputs_the_model_cannot_run_are_named_by_their_file(tmp_path: Path, capfd):
    # token ids past the vocabulary: ORT printed its own red error line, then the one line named the model
    from tests.test_input_shapes import embedding

    embedding(tmp_path / "emb.onnx", seq=4)
    np.savez(tmp_path / "ids.npz", ids=np.full((8, 4), 50, np.int64))
    result = _invoke(tmp_path / "emb.onnx", "--out", tmp_path / "q.onnx", "--calibration", tmp_path / "ids.npz")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {tmp_path / 'ids.npz'}: emb.onnx did not run on these inputs (check them "
                                    "against its inputs) in ONNX Runtime (")
    assert "onnxruntime" not in capfd.readouterr().err  # ORT's own copy of the error is not printed first


def test_the_gate_counts_the_random_inputs_it_made(tmp_path: Path):
    # at a fixed batch of 3 it made 63 and said 64 (the attempt said "1 of 63 samples")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "b3",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [3, 5])],
                              [numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "b3.onnx"))
    out = tmp_path / "q.onnx"
    _invoke(tmp_path / "b3.onnx", "--out", out, "--batch", "3")
    assert "top-1 agreement with the fp32 model on 63 seeded random inputs" in json.loads(
        out.with_suffix(".json").read_text())["gate"]


def test_the_batch_is_found_when_the_first_input_has_none_on_axis_0(tmp_path: Path):
    # a recurrent state [2, N, 3] listed first: "--batch: fixes its batch dimension to 2", and the gate counted 2
    # samples of 64; a batch-1 model that squeezes its batch away was judged on its first sample alone
    from onnx import TensorProto, helper, numpy_helper

    from compress.onnx.graph import batch_axes_of, fixed_batch_of
    from compress.quantize.gate import agreement_gate

    rng = np.random.default_rng(0)
    value = helper.make_tensor_value_info
    w = numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Mul", ["state", "state"], ["s2"])]
    graph = helper.make_graph(nodes, "g", [value("state", TensorProto.FLOAT, [2, "N", 3]),
                                           value("x", TensorProto.FLOAT, ["N", 8])],
                              [value("logits", TensorProto.FLOAT, ["N", 5]),
                               value("s2", TensorProto.FLOAT, [2, "N", 3])],
                              [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    assert batch_axes_of(graph) == {"state": 1} and fixed_batch_of(graph) is None
    np.savez(tmp_path / "calib.npz", state=rng.standard_normal((2, 64, 3)).astype(np.float32),
             x=rng.standard_normal((64, 8)).astype(np.float32))
    out = tmp_path / "q.onnx"
    result = _invoke(tmp_path / "m.onnx", "--out", out, "--calibration", tmp_path / "calib.npz", "--batch", "2")
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["gate"].endswith("on 64 calibration inputs")
    # a batch-1 copy squeezed: (5,) a sample, judged on all ten
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Squeeze", ["m", "zero"], ["logits"])]
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    graph = helper.make_graph(nodes, "b1", [value("x", TensorProto.FLOAT, [1, 8])],
                              [value("logits", TensorProto.FLOAT, [5])], [w, zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "b1.onnx"))
    gate = agreement_gate(tmp_path / "b1.onnx", {"x": rng.standard_normal((10, 8)).astype(np.float32)},
                          budget_top1=0.005, budget_cosine=0.01, source="10 rows")
    assert gate.metric.name == "top1_agreement" and gate.samples == 10


@pytest.mark.parametrize("extra", [[], ["--mode", "dynamic"], ["--mode", "fp16"]])
def test_static_only_without_static_mode_is_exit_2(files: dict, extra: list):
    # without --calibration the mode defaulted to dynamic, and --static-only (for a target that runs static int8 only)
    # shipped dynamic int8
    out = files["dir"] / "q" / "static-only.onnx"
    result = _invoke(files["model"], "--out", out, "--static-only", *extra)
    assert result.exit_code == 2, result.output
    assert "--static-only: a target that runs static int8 only needs --calibration" in result.output
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_inputs_without_the_batch_on_axis_0_are_read_from_the_graph(tmp_path: Path):
    # a scale of fixed shape [1] beside x [N, 8] was cut on axis 0 like x: the second calibration batch had no scale
    # left (IndexError in numpy, a traceback); a state [2, N, 3] needed --batch-axis state:1
    from onnx import TensorProto, helper, numpy_helper

    from compress.onnx.graph import batch_axes_of
    from compress.onnx.skeleton import graph_of

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Mul", ["x", "k"], ["xk"]), helper.make_node("MatMul", ["xk", "w"], ["logits"]),
             helper.make_node("Mul", ["state", "k"], ["state_out"])]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, ["N", 8]), value("k", TensorProto.FLOAT, [1]),
                                           value("state", TensorProto.FLOAT, [2, "N", 3])],
                              [value("logits", TensorProto.FLOAT, ["N", 5]),
                               value("state_out", TensorProto.FLOAT, [2, "N", 3])],
                              [numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    # execute / assert: the graph's own answer, and what --batch-axis says still wins
    assert batch_axes_of(graph_of(tmp_path / "m.onnx").graph) == {"k": None, "state": 1}
    assert batch_axes_of(graph_of(tmp_path / "m.onnx").graph, {"state": None}) == {"k": None, "state": None}
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((64, 8)).astype(np.float32), k=np.array([2.0], np.float32),
             state=rng.standard_normal((2, 64, 3)).astype(np.float32))
    out = tmp_path / "q.onnx"
    result = _invoke(tmp_path / "m.onnx", "--out", out, "--calibration", tmp_path / "calib.npz", "--pick", "quantized")
    assert result.exit_code == 0, result.output
    first = json.loads(out.with_suffix(".json").read_text())["attempts"][0]
    assert first["quantized"] and first["accepted"], first


def test_the_cosine_gate_leaves_out_padded_tokens_of_a_model_that_takes_an_attention_mask(tmp_path: Path):
    # setup: token states (N, T, D) from ids and an HF-style mask; a second model that differs from the first only at
    # padded positions (where nobody reads a state), and a third that differs at a real one
    from onnx import TensorProto, helper

    from compress.quantize.gate import agreement_gate

    def model(path: Path, noise_where: str) -> Path:
        # y = x + 5 * (1 - mask) (padded positions moved) or + 5 * mask (real ones moved); "none": y = x
        m = helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT)
        nodes = [m, helper.make_node("Unsqueeze", ["m", "axis"], ["m3"])]
        if noise_where == "padded":
            nodes.append(helper.make_node("Sub", ["one", "m3"], ["w"]))
        else:
            nodes.append(helper.make_node("Identity", ["m3"], ["w"]))
        scale = 5.0 if noise_where != "none" else 0.0
        nodes += [helper.make_node("Mul", ["w", "five"], ["d"]), helper.make_node("Add", ["x", "d"], ["states"])]
        inits = [helper.make_tensor("axis", TensorProto.INT64, [1], [2]),
                 helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
                 helper.make_tensor("five", TensorProto.FLOAT, [], [scale])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6, 4]),
                                               helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                                             ["n", 6])],
                                  [helper.make_tensor_value_info("states", TensorProto.FLOAT, ["n", 6, 4])], inits)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    rng = np.random.default_rng(0)
    mask = np.ones((16, 6), np.int64)
    mask[:, 4:] = 0
    feeds = {"x": rng.standard_normal((16, 6, 4)).astype(np.float32), "attention_mask": mask}
    reference = model(tmp_path / "ref.onnx", "none")
    # execute
    gate = agreement_gate(reference, feeds, budget_top1=0.005, budget_cosine=0.01, source="16 rows")
    padded_only = gate.score(model(tmp_path / "padded.onnx", "padded"))["cosine"]
    real_moved = gate.score(model(tmp_path / "real.onnx", "real"))["cosine"]
    # assert: padding moved reads as no change; a real token moved does not; the gate says what it leaves out
    assert padded_only == pytest.approx(1.0) and real_moved < 0.5
    assert gate.what.endswith("; padded tokens left out (attention_mask): states")
    without = {"x": feeds["x"], "attention_mask": np.ones_like(mask)}  # no padding: every position judged
    assert agreement_gate(reference, without, budget_top1=0.005, budget_cosine=0.01, source="16 rows").score(
        model(tmp_path / "padded.onnx", "padded"))["cosine"] == pytest.approx(1.0)


def test_padded_tokens_are_left_out_only_on_a_token_axis_and_never_hide_a_nan():
    # an (N, D) pooled output whose D happens to equal the mask's T is not a token axis; a 2-D output whose axis 1 the
    # model names as the mask's is (a QA model's start logits); NaN at a padded position still reaches the gate
    from onnx import TensorProto, helper

    from compress.quantize.gate import _at, real_tokens

    def graph(seq: object, pooled_axis: object, scores_axis: object) -> object:
        info = helper.make_tensor_value_info
        return helper.make_graph([], "g", [info("attention_mask", TensorProto.INT64, ["n", seq])],
                                 [info("states", TensorProto.FLOAT, ["n", seq, 4]),
                                  info("pooled", TensorProto.FLOAT, ["n", pooled_axis]),
                                  info("scores", TensorProto.FLOAT, ["n", scores_axis])])

    mask = np.ones((2, 6), np.int64)
    mask[:, 4:] = 0
    outputs = {"states": np.ones((2, 6, 4), np.float32), "pooled": np.ones((2, 6), np.float32),
               "scores": np.ones((2, 6), np.float32)}
    feeds = {"attention_mask": mask}
    assert set(real_tokens(feeds, outputs, graph(6, 6, 6))) == {"states"}  # numbers: 3-D outputs only
    assert set(real_tokens(feeds, outputs, graph("seq", 6, "seq"))) == {"states", "scores"}  # by the axis' name
    assert set(real_tokens(feeds, outputs, graph("seq", "hidden", "seq"))) == {"states", "scores"}
    states = outputs["states"].copy()
    states[0, 5, 0] = np.nan
    judged = _at(states, mask != 0)
    assert np.isnan(judged[0, 5, 0]) and judged[0, 5, 1] == 0 and judged[0, 3, 0] == 1


def test_mode_qat_says_in_one_line_that_it_needs_a_pipeline(tmp_path: Path):
    # click's "'qat' is not one of 'static', 'dynamic', 'fp16'", where docs/qat.md promised one line
    result = _invoke(_old_conv(tmp_path / "m.onnx", batch=1), "--out", tmp_path / "q.onnx", "--mode", "qat")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --mode qat: quantization-aware training distils the model from its teacher, which compress quantize "
        "does not have; use --mode static here, or [quantize] mode = 'qat' in a pipeline (compress run)")
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("command", ["quantize", "bench", "edge"])
def test_a_symlink_to_a_model_with_external_data_reads_the_data_beside_its_target(tmp_path: Path, command: str):
    # setup: the model and its .data in one folder, a link to the model alone in another (onnx looked for the data
    # beside the link, ONNX Runtime refused data outside the resolved model's folder: "re-export the model")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").mkdir()
    external_mlp(tmp_path / "real" / "m.onnx")
    link = tmp_path / "link" / "student.onnx"  # named otherwise than its target: what is written keeps this name
    link.symlink_to(tmp_path / "real" / "m.onnx")
    args = {"quantize": ["--out", tmp_path / "q.onnx", "--mode", "dynamic", "--max-accuracy-drop", "1"],
            "bench": ["--min-runs", "3", "--repetitions", "1", "--time-budget", "2", "--json", tmp_path / "b.json"],
            "edge": ["--out", tmp_path / "edge"]}[command]
    # execute
    result = CliRunner().invoke(main, [command, str(link), *map(str, args)])
    # assert
    assert result.exit_code == 0, result.output
    assert "re-export" not in result.output
    if command == "edge":  # were m.inputs.basic.ort and the rest, named after the link's target
        assert sorted(p.name for p in (tmp_path / "edge").glob("*.ort")) == ["student.inputs.basic.ort"]
    else:
        summary = json.loads((tmp_path / ("q.json" if command == "quantize" else "b.json")).read_text())
        assert summary["model"] == str(link)
    if command == "quantize":
        assert "# compress quantize: student.onnx (dynamic)" in result.output


def test_a_symlink_whose_data_is_linked_beside_it_stays_as_given(tmp_path: Path):
    # a Hugging Face cache snapshot: the model and its data both links, into a folder of blobs with other names
    from compress.onnx.graph import model_home

    (tmp_path / "blobs").mkdir()
    (tmp_path / "snapshot").mkdir()
    external_mlp(tmp_path / "blobs" / "m.onnx")
    (tmp_path / "blobs" / "m.onnx").rename(tmp_path / "blobs" / "abc123")
    (tmp_path / "blobs" / "m.onnx.data").rename(tmp_path / "blobs" / "def456")
    (tmp_path / "snapshot" / "m.onnx").symlink_to(tmp_path / "blobs" / "abc123")
    (tmp_path / "snapshot" / "m.onnx.data").symlink_to(tmp_path / "blobs" / "def456")
    model = tmp_path / "snapshot" / "m.onnx"
    assert model_home(model) == model
    # ONNX Runtime reads it (bench); onnx refuses data that is a link (quantize, edge): one line with the way out
    assert CliRunner().invoke(main, ["bench", str(model), "--min-runs", "3", "--repetitions", "1",
                                     "--time-budget", "2"]).exit_code == 0
    for args in (["quantize", str(model), "--out", str(tmp_path / "q.onnx"), "--mode", "dynamic"],
                 ["edge", str(model), "--out", str(tmp_path / "edge")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1] == (
            f"error: {model}: its external data m.onnx.data is a symbolic link (a Hugging Face cache snapshot keeps "
            "its files so), which onnx refuses to read; copy the model and its data into one folder (cp -L m.onnx "
            "m.onnx.data DIR/) and pass the copy")


def test_a_model_that_says_it_is_a_regressor_is_not_gated_as_a_classifier(files: dict):
    # a tensors-task model exported by `compress run`, its (N, K) output named 'output': it was judged by the argmax
    # of its values, and float targets shaped like the output were "labels, which must be class indices": exit 2
    from compress.onnx.graph import TASK_KEY, set_metadata

    val = np.load(files["val"])
    model = files["dir"] / "regressor.onnx"
    model.write_bytes(files["model"].read_bytes())
    out = files["dir"] / "r-int8.onnx"
    # execute: the model says its task; then a model that does not, with fractional targets shaped like its output
    set_metadata(model, {TASK_KEY: "tensors"})
    said = _invoke(model, "--out", out, "--mode", "dynamic", "--calibration", files["calib"])
    first = json.loads(out.with_suffix(".json").read_text())
    np.savez(files["dir"] / "targets.npz", x=val["x"], y=(val["x"][:, :4] * 0.5).astype(np.float32))
    targets = _invoke(files["model"], "--out", out, "--mode", "dynamic", "--data", files["dir"] / "targets.npz")
    # assert
    assert said.exit_code == 0, said.output
    assert first["gate_metric"]["metric"]["name"] == "cosine"
    assert "the outputs (logits (256, 4)) are the tensors task's (its metadata says so)" in first["warnings"][0]
    # a classifier's own word never explains a cosine gate (an output named like pooled features gets one)
    pooled = onnx.load(str(model))
    pooled.graph.node[-1].output[0] = pooled.graph.output[0].name = "pooled"
    onnx.save(pooled, str(model))
    set_metadata(model, {TASK_KEY: "classification"})
    out3 = files["dir"] / "r3.onnx"
    assert _invoke(model, "--out", out3, "--mode", "dynamic", "--calibration", files["calib"]).exit_code == 0
    said = json.loads(out3.with_suffix(".json").read_text())["warnings"]
    assert len(said) == 1 and "the outputs (pooled (256, 4)) do not look like class logits" in said[0], said
    assert targets.exit_code == 0, targets.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["gate_metric"]["metric"]["name"] == "cosine"
    assert summary["warnings"] == ["warning: targets.npz: its targets ('y') hold values (fractional, or shaped like "
                                   "the output), not class indices, so the gate compares with the fp32 model; pass "
                                   "--metric module:function to gate on the targets"]


def test_data_with_fewer_targets_than_inputs_is_one_line_naming_both(files: dict):
    # with --metric the metric was handed (100, K) outputs and 90 targets and "raised ValueError" in numpy
    val = np.load(files["val"])
    np.savez(files["dir"] / "short.npz", x=val["x"][:100], y=val["y"][:90])
    out = files["dir"] / "s.onnx"
    result = _invoke(files["model"], "--out", out, "--mode", "dynamic", "--data", files["dir"] / "short.npz")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: {files['dir'] / 'short.npz'}: y has 90 rows and the inputs 100; "
                                     "--data needs a target for every input row")
    assert not out.exists()


def test_a_qdq_model_is_refused_by_quantize_and_the_qnn_edge_target(files: dict):
    # a QAT or PTQ graph passed by mistake: every attempt failed ("two nodes with same node name"), exit 1, and
    # edge --provider qnn blamed each op ("not supported by the QNN EP"); --calibration's NaN or a wrong shape there
    # read as "drop 50000000" or named a copy in --out
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"x": r[None]} for r in np.load(files["calib"])["x"][:16]])

        def get_next(self):
            return next(self.rows, None)

    qdq = files["dir"] / "qdq.onnx"
    quantize_static(str(files["model"]), str(qdq), Reader(), activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    quantized = _invoke(qdq, "--out", files["dir"] / "again.onnx", "--calibration", files["calib"])
    edge = CliRunner().invoke(main, ["edge", str(qdq), "--provider", "qnn", "--calibration", str(files["calib"]),
                                     "--out", str(files["dir"] / "e")])
    assert quantized.exit_code == 2 and quantized.output.strip().startswith(
        f"error: {qdq}: quantized already, as a QDQ graph ("), quantized.output
    assert edge.exit_code == 2 and edge.output.strip().splitlines()[-1] == (
        f"error: {qdq}: quantized already (DequantizeLinear, QuantizeLinear); --provider qnn quantizes the float model "
        "for HTP itself: pass the float model it came from (a pipeline's export/student.onnx)"), edge.output
    calib = np.load(files["calib"])["x"].copy()
    calib[3, 2] = np.nan
    np.savez(files["dir"] / "nan.npz", x=calib)
    np.savez(files["dir"] / "narrow.npz", x=calib[:, :12])
    for npz, says in (("nan.npz", "array 'x' holds NaN at index 3"),
                      ("narrow.npz", "--calibration: input 'x' has shape")):
        bad = CliRunner().invoke(main, ["edge", str(files["model"]), "--provider", "qnn", "--calibration",
                                        str(files["dir"] / npz), "--out", str(files["dir"] / "e2")])
        assert bad.exit_code == 2 and bad.output.strip().splitlines()[-1].startswith(
            f"error: {files['dir'] / npz}"), bad.output
        assert says in bad.output, bad.output
