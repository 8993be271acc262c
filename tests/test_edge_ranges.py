"""compress.edge.ranges: rewrites that keep the float function and bound what 8-bit activations must hold on QNN."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _save(nodes: list, consts: dict[str, np.ndarray], path: Path, width: int = 64) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _gelu(path: Path, extra_reader: bool = False) -> Path:
    """y = tanh(0.798 (g + 0.0447 g^3)), g = 50 x (so g spans about +-150), the inside of the tanh GELU as jax2tf
    writes it; the graph ends at the Tanh, which is what an 8-bit graph gets wrong (a LayerNorm after it, as in
    Magika, scales its error up). `extra_reader`: the tanh's argument is also added to y (then it must not be
    clipped)."""
    mul = lambda a, b, o: helper.make_node("Mul", [a, b], [o])  # noqa: E731
    nodes = [mul("fifty", "x", "g"), mul("c", "g", "m"), mul("g", "m", "m1"), mul("g", "m1", "m2"),
             helper.make_node("Add", ["g", "m2"], ["inner"]), mul("k", "inner", "arg"),
             helper.make_node("Tanh", ["arg"], ["y" if not extra_reader else "t"])]
    if extra_reader:
        nodes.append(helper.make_node("Add", ["t", "arg"], ["y"]))
    return _save(nodes, {"fifty": 50.0, "c": 0.044715, "k": 0.7978846}, path)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": row[None]})[0] for row in x])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.qnn
def test_a_saturating_tanh_reads_its_input_clipped_and_quantizes_with_qnn_settings(tmp_path: Path):
    # setup: the written-out tanh GELU on inputs up to about +-150; QNN's all-uint8 settings
    from compress.edge.qnn import quantize_for_qnn
    from compress.edge.ranges import bounded_tanh

    x = np.random.default_rng(0).normal(0, 0.05, (24, 64)).astype(np.float32)  # g mostly where the tanh bends
    x[:, 0] = np.where(np.arange(24) % 2, 3.0, -3.0)  # and one column at +-150, which sets the ranges
    src = _gelu(tmp_path / "gelu.onnx")
    # execute
    done = bounded_tanh(src, tmp_path / "bounded.onnx")
    fp32, bounded = _run(src, x), _run(tmp_path / "bounded.onnx", x)
    before = _run(quantize_for_qnn(src, tmp_path / "before.qdq.onnx", {"x": x}), x)
    after = _run(quantize_for_qnn(tmp_path / "bounded.onnx", tmp_path / "after.qdq.onnx", {"x": x}), x)
    # assert: one Tanh bounded at 8 (where it is within 1e-6 of +-1), the float model the same to a float32 step,
    # and the QNN graph near fp32 where the tanh bends (every column but the large one): before, nothing there
    assert [(d["input"], d["clip"]) for d in done] == [("g", 8.0)]
    np.testing.assert_allclose(bounded, fp32, rtol=1e-6, atol=1e-5)
    assert _cosine(after[:, 1:], fp32[:, 1:]) > 0.97  # 0.985 measured
    assert not _cosine(before[:, 1:], fp32[:, 1:]) > 0.5  # every output 0 there: nan
    assert bounded_tanh(_gelu(tmp_path / "read-twice.onnx", extra_reader=True), tmp_path / "no.onnx") == []
    assert not (tmp_path / "no.onnx").exists()


@pytest.mark.qnn
def test_an_infinite_max_guard_is_dropped_so_the_softmax_after_it_quantizes(tmp_path: Path):
    # setup: softmax written out as jax writes it, its row maximum guarded by Max(m, -inf)
    from compress.edge.qnn import quantize_for_qnn
    from compress.edge.ranges import without_infinite_guards

    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Max", ["low", "m"], ["guarded"], name="guard"),
             helper.make_node("Sub", ["x", "guarded"], ["d"]), helper.make_node("Exp", ["d"], ["e"]),
             helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=1), helper.make_node("Div", ["e", "s"], ["y"])]
    src = tmp_path / "softmax.onnx"
    _save(nodes, {"low": -np.inf, "axes": np.array([1])}, src, width=16)
    model = onnx.load(str(src))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    onnx.save(model, str(src))
    x = np.random.default_rng(1).normal(0, 3, (24, 16)).astype(np.float32)
    # execute
    dropped = without_infinite_guards(src, tmp_path / "plain.onnx")
    fp32, plain = _run(src, x), _run(tmp_path / "plain.onnx", x)
    before = _run(quantize_for_qnn(src, tmp_path / "before.qdq.onnx", {"x": x}), x)
    after = _run(quantize_for_qnn(tmp_path / "plain.onnx", tmp_path / "after.qdq.onnx", {"x": x}), x)
    # assert: the guard named and gone, the float model unchanged, and the quantized softmax back from nothing
    assert dropped == ["guard"]
    assert "Max" not in {n.op_type for n in onnx.load(str(tmp_path / "plain.onnx")).graph.node}
    np.testing.assert_array_equal(plain, fp32)
    assert _cosine(after, fp32) > 0.99 and _cosine(before, fp32) < 0.9
