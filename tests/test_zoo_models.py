"""Model-zoo graphs nobody here trained (the onnx wheel's resnet50, squeezenet, alexnet): IR version 3, their weights
listed as graph inputs, a batch fixed at 1 and class logits of shape [1, K] or [1, K, 1, 1]. Tiny graphs with
the same features stand in for them (the zoo files themselves are never loaded here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from compress.cli import main

CLASSES = 4


def _zoo_like(path: Path) -> Path:
    """An IR 3, opset 9 graph as the model zoo ships them: data_0 [1, 3, 8, 8] fixed at batch 1, a Conv and a Gemm
    whose weights are initializers listed among the graph inputs too, softmax class logits [1, CLASSES]."""
    rng = np.random.default_rng(0)
    weights = {"conv_w": rng.standard_normal((4, 3, 3, 3)), "conv_b": rng.standard_normal(4),
               "fc_w": rng.standard_normal((CLASSES, 4 * 6 * 6)), "fc_b": rng.standard_normal(CLASSES)}
    inits = [numpy_helper.from_array(w.astype(np.float32), k) for k, w in weights.items()]
    nodes = [helper.make_node("Conv", ["data_0", "conv_w", "conv_b"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["g"], transB=1),
             helper.make_node("Softmax", ["g"], ["prob_1"])]
    inputs = [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 8, 8])]
    inputs += [helper.make_tensor_value_info(i.name, TensorProto.FLOAT, list(i.dims)) for i in inits]
    graph = helper.make_graph(nodes, "zoo", inputs,
                              [helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [1, CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.save(model, str(path))
    return path


def _rows(n: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("labels, shown", [(CLASSES, "4 to 4"), (-1, "-1 to -1")])
def test_labels_outside_the_logits_classes_are_one_line(tmp_path: Path, labels: int, shown: str):
    # labels made for another head (1000 ImageNet classes vs 4 here) or a -1 'unknown': no prediction matches them,
    # so fp32 and int8 both scored 0% and every attempt passed the accuracy gate with a drop of 0.00 points
    model = _zoo_like(tmp_path / "zoo.onnx")
    np.savez(tmp_path / "calib.npz", data_0=_rows(8))
    np.savez(tmp_path / "gate.npz", data_0=_rows(16), y=np.full(16, labels, dtype=np.int64))
    result = CliRunner().invoke(main, ["quantize", str(model), "--out", str(tmp_path / "q.onnx"), "--calibration",
                                       str(tmp_path / "calib.npz"), "--data", str(tmp_path / "gate.npz"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"error: gate.npz: --max-accuracy-drop gates on labels, which must be class indices 0 to {CLASSES - 1} "
        f"(output 'prob_1' has {CLASSES} classes); got labels from {shown}")
    assert not (tmp_path / "q.onnx").exists()


def test_bench_inputs_of_many_rows_for_a_batch_fixed_at_1_say_how_to_cut_them(tmp_path: Path):
    # the calibration file quantize takes (16 rows) is refused by bench for a zoo model fixed at batch 1, as it
    # feeds the arrays whole: the line says so and what to save instead
    model = _zoo_like(tmp_path / "zoo.onnx")
    np.savez(tmp_path / "calib.npz", data_0=_rows(16))
    result = CliRunner().invoke(main, ["bench", str(model), "--inputs", str(tmp_path / "calib.npz"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"error: {tmp_path / 'calib.npz'}: input 'data_0': expected shape [1, 3, 8, 8], got [16, 3, 8, 8]; the "
        "model fixes its batch at 1 and the arrays are fed whole, as one batch: save 1 of the 16 rows (x[:1])")


def _one_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_edge_fixing_another_batch_names_the_users_file_and_the_flag(tmp_path: Path):
    # before: the line named edge's internal copy (zoo.inputs.onnx) and gave the config key only
    model = _zoo_like(tmp_path / "zoo.onnx")
    result = CliRunner().invoke(main, ["edge", str(model), "--out", str(tmp_path / "e"), "--fixed-batch", "4"])
    assert _one_line(result) == (
        f"error: {model}: input 'data_0' already has a fixed batch of 1, not 4; re-export with a dynamic batch, use "
        "fixed_batch = 1 (--fixed-batch 1), or name its batch axis (--batch-axis)")


def test_a_tensor_file_given_as_the_model_is_named_so(tmp_path: Path):
    # before: "ONNX graph has no nodes or no outputs; re-export the model" for the zoo's output_0.pb
    path = tmp_path / "output_0.pb"
    path.write_bytes(numpy_helper.from_array(np.zeros((1, CLASSES), np.float32)).SerializeToString())
    assert _one_line(CliRunner().invoke(main, ["bench", str(path)])) == (
        f"error: {path}: ONNX graph has no nodes or no outputs; the file reads as a tensor (shape [1, {CLASSES}]), "
        "such as a model's test input or output, not a model: pass the model's .onnx file")


def test_edge_converts_a_graph_older_than_ort_kernels(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # before: "ONNX Runtime could not convert the model to ORT format (... Could not find an implementation for
    # Relu(1) ...)" and no way out; quantize already converted such graphs to opset 13
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((32, 3)).astype(np.float32), "g")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r"], ["f"], shape=[1, 32]), helper.make_node("MatMul", ["f", "g"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])] + [
        helper.make_tensor_value_info(i.name, TensorProto.FLOAT, list(i.dims)) for i in inits]  # IR 3: listed
    graph = helper.make_graph(nodes, "old", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 4)])
    model.ir_version = 3
    onnx.save(model, str(tmp_path / "old.onnx"))
    result = CliRunner().invoke(main, ["edge", str(tmp_path / "old.onnx"), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert [r.getMessage() for r in caplog.records if r.name == "compress"] == [
        f"warning: {tmp_path / 'old.onnx'}: opset 4 converted to 13 for ONNX Runtime, which has no kernels before "
        "opset 7"]
