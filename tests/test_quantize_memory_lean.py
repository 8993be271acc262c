"""compress.quantize.lean: the copies of a model quantization no longer makes, checked by what holds them (the peak
itself: test_quantize_memory_peak.py), each with the same bytes out as before."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from compress.cli import main


def _gemms(path: Path, sizes: tuple[tuple[int, int], ...] = ((512, 256), (10, 512)), *, seed: int = 0) -> Path:
    """Gemm layers (rows, cols) with transposed weights and biases, Relu between them, at `path`."""
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    for i, (rows, cols) in enumerate(sizes):
        inits += [numpy_helper.from_array((rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32),
                                          f"w{i}"),
                  numpy_helper.from_array(np.full(rows, 0.01, np.float32), f"b{i}")]
        out = "logits" if i == len(sizes) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out], transB=1, name=f"fc{i}"))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            x = f"r{i}"
    shape = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", sizes[0][1]])]
    graph = helper.make_graph(nodes, "mlp", shape, [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                                   ["n", sizes[-1][0]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_ort_dynamic_quantizer_holds_one_model_and_writes_the_same_bytes(tmp_path: Path, monkeypatch):
    """ORT's dynamic quantizer deep-copies the model it holds to infer shapes (three models' weights at once);
    under one_model_in_ort_quantizer it makes no copy, and the quantized file is byte for byte ORT's own."""
    import copy

    from onnxruntime.quantization import QuantType, quant_utils, quantize_dynamic

    from compress.quantize.lean import one_model_in_ort_quantizer

    model = _gemms(tmp_path / "mlp.onnx")
    copies = []

    class Counting:  # quant_utils' `copy` module, counting deep copies of models
        def __getattr__(self, name):
            return getattr(copy, name)

        @staticmethod
        def deepcopy(obj, *args):
            copies.append(type(obj).__name__)
            return copy.deepcopy(obj, *args)

    monkeypatch.setattr(quant_utils, "copy", Counting())
    for per_channel in (True, False):
        theirs, ours = tmp_path / f"ort-{per_channel}.onnx", tmp_path / f"lean-{per_channel}.onnx"
        quantize_dynamic(model, theirs, per_channel=per_channel, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": 1})
        assert "ModelProto" in copies, "ORT's round trip no longer copies: the check below proves nothing"
        copies.clear()
        with one_model_in_ort_quantizer():
            quantize_dynamic(model, ours, per_channel=per_channel, weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": 1})
        assert copies == []
        assert ours.read_bytes() == theirs.read_bytes()
    from onnxruntime.quantization import onnx_quantizer

    assert onnx_quantizer.save_and_reload_model_with_shape_infer is quant_utils.save_and_reload_model_with_shape_infer


def test_graph_of_parses_a_file_once_and_keeps_no_weights(tmp_path: Path, monkeypatch):
    from compress.onnx.graph import external_bytes, fixed_batch, model_bytes
    from compress.onnx.skeleton import graph_of

    path = _gemms(tmp_path / "big.onnx", ((1024, 1024), (10, 1024)))
    loads = []
    real = onnx.load
    monkeypatch.setattr(onnx, "load", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    first, second = graph_of(path), graph_of(path)
    # parsed once, whoever asks: the size on disk and the fixed batch every command reads come from that parse
    assert (model_bytes(path), external_bytes(path), fixed_batch(path)) == (path.stat().st_size, 0, None)
    assert len(loads) == 1
    assert first is not second and first.SerializeToString() == second.SerializeToString()
    assert first.ByteSize() < 4096 and path.stat().st_size > 4_000_000  # 4 MB of weights left out
    weight = next(t for t in first.graph.initializer if t.name == "w0")
    assert list(weight.dims) == [1024, 1024] and weight.data_type == TensorProto.FLOAT  # its shape and type stay
    monkeypatch.setattr(onnx, "load", real)
    inferred = onnx.shape_inference.infer_shapes(first)  # shapes infer on it as on the model
    assert {v.name for v in inferred.graph.value_info} == {"h0", "r0"}


def test_static_quantization_opens_no_session_from_serialized_bytes(tmp_path: Path, monkeypatch):
    """Calibration's min-max pass and bias correction open their ORT sessions from a file whose weights ORT maps in
    (a session from SerializeToString() bytes held the proto, the bytes and ORT's copy at once)."""
    import onnxruntime as ort

    from compress.quantize.attempts import quantize_once
    from compress.quantize.prepare import preprocess

    model = _gemms(tmp_path / "mlp.onnx")
    base = tmp_path / "base.onnx"
    preprocess(model, base, "static")
    given = []
    real = ort.InferenceSession

    def spy(source, *args, **kwargs):
        given.append(type(source).__name__)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 256)).astype(np.float32)} for _ in range(8)]
    settings = {"mode": "static", "per_channel": True, "weight_type": "int8", "reduce_range": False,
                "nodes_to_exclude": [], "calibration_method": "mean_minmax", "quant_format": "qdq",
                "activation_type": "uint8", "bias_correction": True}
    note = quantize_once(base, tmp_path / "q.onnx", settings, calib)
    assert "biases of 2 layers corrected" in note
    assert given and "bytes" not in given, given


@pytest.mark.parametrize("cap, said", [(1, True), (4096, False)])
def test_a_memory_cap_below_the_models_copies_is_said_before_quantizing(tmp_path: Path, caplog, monkeypatch,
                                                                        cap: int, said: bool):
    """--max-memory sizes calibration's batches and the ranking's samples; the model's own copies (its weights about
    MODEL_COPIES times) are beyond it, and a cap below them is said in one line, before any attempt, instead of
    promised; the summary repeats it."""
    import json
    import logging

    from compress.quantize import attempts
    from compress.quantize.lean import MODEL_COPIES, cap_warning

    model = _gemms(tmp_path / "mlp.onnx", ((1024, 256), (10, 1024)))  # 1 MB of weights
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32))
    real, order = attempts.quantize_once, []
    monkeypatch.setattr(attempts, "quantize_once", lambda *a, **k: order.append(len(caplog.records)) or real(*a, **k))
    out = tmp_path / "q.onnx"
    with caplog.at_level(logging.WARNING, logger="compress"):
        result = CliRunner().invoke(main, ["quantize", str(model), "--out", str(out), "--calibration",
                                           str(tmp_path / "calib.npz"), "--max-memory", str(cap), "--quiet",
                                           "--max-accuracy-drop", "1"])
    assert result.exit_code == 0, result.output
    lines = [r.getMessage() for r in caplog.records if "bounds only the activations" in r.getMessage()]
    summary = json.loads(out.with_suffix(".json").read_text())
    if not said:
        assert lines == [] and not [w for w in summary["warnings"] if "max-memory" in w]
        return
    assert lines == [cap_warning(model.stat().st_size, cap, "mlp.onnx")] and f"about {MODEL_COPIES} times" in lines[0]
    first = next(i for i, r in enumerate(caplog.records) if r.getMessage() == lines[0])
    assert order and first < order[0]  # said before the first attempt quantized anything
    assert lines[0] in summary["warnings"] and lines[0] in result.output


def test_scratch_copies_go_beside_the_output_not_into_the_system_temp_folder(tmp_path: Path, monkeypatch):
    """A static run with bias correction writes scratch models (ours, and ONNX Runtime's quantizer's augmented
    copies) through tempfile; they go into the output folder's .scratch, removed afterwards, so a small or RAM-backed
    system temp folder is never used: here the system temp folder is a file, where any scratch folder fails."""
    import json
    import tempfile

    from compress.quantize.lean import SCRATCH

    model = _gemms(tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32))
    not_a_folder = tmp_path / "system-temp"
    not_a_folder.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    out = tmp_path / "q" / "mlp-int8.onnx"
    made = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    result = CliRunner().invoke(main, ["quantize", str(model), "--out", str(out), "--calibration",
                                       str(tmp_path / "calib.npz"), "--quiet", "--max-accuracy-drop", "1"])
    assert result.exit_code == 0, result.output
    assert tempfile.tempdir == str(not_a_folder)  # restored
    summary = json.loads(out.with_suffix(".json").read_text())
    first = summary["attempts"][0]  # static, with bias correction, and built (not failed and passed by a remedy)
    assert first["settings"]["bias_correction"] is True and first["accepted"], first["reason"]
    assert all(Path(m).is_relative_to(out.parent) for m in made), made  # the CLI's own staging folder too
    assert [m for m in made if Path(m).parent.name == SCRATCH], made
    assert not [p for p in tmp_path.rglob(SCRATCH)]  # removed afterwards
