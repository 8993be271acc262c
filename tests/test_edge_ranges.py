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


def _rsqrt(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """1 / sqrt(x^2 + eps) (node "recip" the Reciprocal) and 24 rows of x ~ N(0, 0.05), where its input spans 0.03
    to 0.15."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["v"]), helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]), helper.make_node("Reciprocal", ["s"], ["y"], name="recip")]
    x = np.random.default_rng(2).normal(0, 0.05, (24, 16)).astype(np.float32)
    return _save(nodes, {"eps": 1e-3}, tmp_path / "rsqrt.onnx", width=16), x


@pytest.mark.qnn
def test_a_reciprocal_reads_as_a_division_so_htp_computes_what_ort_cpu_computes(tmp_path: Path):
    # setup: 1 / sqrt(x^2 + eps) with x small (Magika's written-out LayerNorm: the Reciprocal's input spans 0 to
    # 0.13, a uint8 scale of 0.0005), quantized with QNN's settings
    from compress.edge.qnn import htp_session, quantize_for_qnn
    from compress.edge.ranges import reciprocals_as_division

    src, x = _rsqrt(tmp_path)
    htp = (lambda p: np.concatenate([htp_session(p, fallback=False).run(None, {"x": row[None]})[0] for row in x]))
    # execute
    done = reciprocals_as_division(src, tmp_path / "div.onnx")
    fp32, divided = _run(src, x), _run(tmp_path / "div.onnx", x)
    before = quantize_for_qnn(src, tmp_path / "before.qdq.onnx", {"x": x})
    after = quantize_for_qnn(tmp_path / "div.onnx", tmp_path / "after.qdq.onnx", {"x": x})
    # assert: the node named and rewritten, the float model the same to the bit; on HTP the Reciprocal read about a
    # seventh of the right value (its input range ends under 1), the division within a few output steps (0.12) of
    # what ORT CPU reads from the same graph (measured: 0.50 where 1 / x is steepest; 0.75 from fp32)
    assert done == ["recip"]
    assert [n.op_type for n in onnx.load(str(tmp_path / "div.onnx")).graph.node][-1] == "Div"
    np.testing.assert_array_equal(divided, fp32)
    assert np.abs(htp(after) - _run(after, x)).max() < 1.0
    assert np.abs(htp(after) - fp32).max() < 1.5 and np.abs(htp(before) - fp32).max() > 10  # 27 measured
    assert reciprocals_as_division(tmp_path / "div.onnx", tmp_path / "no.onnx") == []
    assert not (tmp_path / "no.onnx").exists()


def test_a_reciprocal_rewrite_takes_a_free_name_and_the_input_type(tmp_path: Path):
    # setup: a float16 Reciprocal in a graph that already has a tensor named reciprocal_one
    from onnx import helper

    from compress.edge.ranges import reciprocals_as_division

    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("Reciprocal", ["h"], ["r"], name="recip"),
             helper.make_node("Cast", ["r"], ["y0"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["y0", "reciprocal_one"], ["y"])]
    src = _save(nodes, {"reciprocal_one": np.zeros(8)}, tmp_path / "half.onnx", width=8)
    x = np.linspace(0.5, 4, 16, dtype=np.float32).reshape(2, 8)
    # execute
    assert reciprocals_as_division(src, tmp_path / "div.onnx") == ["recip"]
    # assert: the model loads and computes the same
    np.testing.assert_array_equal(_run(tmp_path / "div.onnx", x), _run(src, x))


@pytest.mark.qnn
def test_the_qnn_target_rewrites_a_reciprocal_measures_htp_near_fp32_and_says_what_it_rewrote(tmp_path: Path):
    # setup: the 1 / sqrt(x^2 + eps) graph above, through `compress edge --provider qnn`'s flow
    from compress.edge.qnn_flow import prepare_qnn, qnn_table

    src, x = _rsqrt(tmp_path)
    # execute
    section = prepare_qnn(src, tmp_path / "edge", calibration=x, val_x=x, latency_runs=2, logits=False)
    # assert: the rewrite recorded and named in the summary, the whole graph on HTP, its outputs near fp32's
    assert section["reciprocals_as_division"] == ["recip"] and section["bounded_tanh"] == []
    assert section["placement"]["nodes_on_htp"] == section["placement"]["nodes_total"]
    assert section["accuracy"]["cosine_htp_vs_fp32_cpu"] > 0.999
    assert "1 Reciprocal(s) as Div" in qnn_table(section)


@pytest.mark.qnn
def test_weights_held_in_constant_nodes_become_initializers_so_htp_takes_the_batchnorm(tmp_path: Path):
    # setup: Conv -> Relu -> BatchNormalization with every weight a Constant node, every node named (as Paddle's
    # PP-OCRv4 detector is exported: ORT's QNN pre-processing then leaves the graph as it is)
    from compress.edge.qnn import placement, quantize_for_qnn
    from compress.edge.qnn_flow import prepare_qnn

    rng = np.random.default_rng(0)
    values = {"w": rng.normal(0, 0.3, (8, 3, 3, 3)), "b": rng.normal(0, 0.1, 8), "g": rng.uniform(0.5, 1.5, 8),
              "beta": rng.normal(0, 0.1, 8), "mu": rng.normal(0, 0.1, 8), "var": rng.uniform(0.5, 1.5, 8)}
    nodes = [helper.make_node("Constant", [], [k], name=f"const_{k}",
                              value=numpy_helper.from_array(np.asarray(v, np.float32), f"{k}_value"))
             for k, v in values.items()]
    nodes += [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"], name="relu"),
              helper.make_node("BatchNormalization", ["r", "g", "beta", "mu", "var"], ["y"], name="bn")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "paddle.onnx"))
    x = rng.normal(0, 1, (16, 3, 8, 8)).astype(np.float32)
    # execute
    before = placement(quantize_for_qnn(tmp_path / "paddle.onnx", tmp_path / "before.qdq.onnx", {"x": x}),
                       tmp_path / "before.ctx.onnx")
    section = prepare_qnn(tmp_path / "paddle.onnx", tmp_path / "edge", calibration=x, val_x=x, latency_runs=2,
                          logits=False)
    # assert: before, HTP refused the BatchNormalization (its quantized weights computed by nodes); after, the six
    # constants are initializers, the whole graph runs on HTP, near fp32
    assert any(r["op_type"] == "BatchNormalization" and "dynamic" in (r["reason"] or "") for r in before["refused"])
    assert section["constants_as_initializers"] == list(values)
    assert section["placement"]["nodes_on_htp"] == section["placement"]["nodes_total"]
    assert section["runs_without_fallback"] is True and section["accuracy"]["cosine_htp_vs_fp32_cpu"] > 0.999


@pytest.mark.qnn
def test_where_htp_parts_from_ort_cpu_names_the_reciprocal_htp_misreads(tmp_path: Path):
    # setup: the 1 / sqrt(x^2 + eps) graph quantized for QNN without the rewrite: HTP misreads its Reciprocal
    from compress.edge.parting import PARTED_ERROR, where_htp_parts
    from compress.edge.qnn import quantize_for_qnn

    src, x = _rsqrt(tmp_path)
    before = quantize_for_qnn(src, tmp_path / "before.qdq.onnx", {"x": x})
    after = quantize_for_qnn(reciprocals_as_division_of(src, tmp_path), tmp_path / "after.qdq.onnx", {"x": x})
    # execute
    parted = where_htp_parts(before, {"x": x[:1]}, tmp_path / "parts.onnx")
    # assert: the Reciprocal named, with its input still where the CPU has it; the rewritten graph parts nowhere
    assert parted["op_type"] == "Reciprocal" and parted["node"] == "recip"
    assert parted["error"] > PARTED_ERROR and parted["inputs_cosine"] > 0.999
    assert where_htp_parts(after, {"x": x[:1]}, tmp_path / "parts2.onnx") is None


def reciprocals_as_division_of(src: Path, tmp_path: Path) -> Path:
    from compress.edge.ranges import reciprocals_as_division

    assert reciprocals_as_division(src, tmp_path / "div.onnx")
    return tmp_path / "div.onnx"


@pytest.mark.qnn
def test_a_missed_npu_budget_that_ort_cpu_meets_names_where_htp_parts(tmp_path: Path, monkeypatch):
    # setup: the QNN target on the 1 / sqrt graph with the rewrites turned off, so HTP misreads its Reciprocal
    from compress.edge import qnn_flow

    monkeypatch.setattr(qnn_flow, "for_htp", lambda model, out_dir, stem, calib, axes=None: (model, {}))
    nodes = [helper.make_node("Mul", ["x", "x"], ["v"]), helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]), helper.make_node("Reciprocal", ["s"], ["r"], name="recip"),
             helper.make_node("Mul", ["x", "r"], ["n"]), helper.make_node("Add", ["n", "beta"], ["y"])]
    src = _save(nodes, {"eps": 1e-3, "beta": 1.0}, tmp_path / "rsqrt.onnx", width=16)  # x / sqrt(x^2 + eps) + 1
    x = np.random.default_rng(2).normal(0, 0.05, (24, 16)).astype(np.float32)
    # execute
    section = qnn_flow.prepare_qnn(src, tmp_path / "edge", calibration=x, val_x=x, latency_runs=2, logits=False)
    # assert: the budget missed on HTP, met on ORT CPU; the Reciprocal named in the section and the summary
    assert not section["budget"]["ok"] and section["budget"]["int8_cpu_drop"] <= 0.01
    assert section["parts_at"]["node"] == "recip"
    assert "HTP parts from ORT CPU first at recip (Reciprocal)" in qnn_flow.qnn_table(section)
    assert not (tmp_path / "edge" / "rsqrt.parts.onnx").exists()


def test_a_float16_graph_becomes_float32_throughout_and_runs(tmp_path: Path):
    # a Constant's unnamed value, a Cast to float16 and an op told to make float16 (EyeLike's dtype) all change,
    # or the graph mixes types and does not load
    import onnxruntime as ort

    from compress.edge.ranges import float16_as_float32

    h = TensorProto.FLOAT16
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.full((4, 4), 2, np.float16))),
             helper.make_node("EyeLike", ["x"], ["eye"], dtype=h),
             helper.make_node("Add", ["x", "eye"], ["s"]),
             helper.make_node("Mul", ["s", "c"], ["m"]),
             helper.make_node("Cast", ["m"], ["y"], to=h)]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", h, [4, 4])],
                              [helper.make_tensor_value_info("y", h, [4, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "h.onnx"))
    changed = float16_as_float32(tmp_path / "h.onnx", tmp_path / "f.onnx")
    assert sorted(changed) == ["c", "x", "y"]
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    got = ort.InferenceSession(str(tmp_path / "f.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.dtype == np.float32 and np.array_equal(got, (x + np.eye(4, dtype=np.float32)) * 2)
    assert float16_as_float32(tmp_path / "f.onnx", tmp_path / "g.onnx") == [] and not (tmp_path / "g.onnx").exists()
