"""compress.quantize.bias: each quantized layer's mean output shift, measured with float inputs, taken out of its
bias."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

SETTINGS = {"mode": "static", "per_channel": True, "weight_type": "int8", "reduce_range": False,
            "nodes_to_exclude": [], "calibration_method": "minmax", "quant_format": "qdq", "activation_type": "uint8"}


def _preprocessed(tmp_path: Path) -> Path:
    """_model pre-processed for static quantization as compress does it: the base every attempt starts from."""
    from compress.quantize import prepare as prep

    base = tmp_path / "base.onnx"
    prep.preprocess(_model(tmp_path), base, "static")
    return base


def _model(tmp_path: Path) -> Path:
    """A conv net (plain, strided depthwise, pointwise; batch norm; a Linear head), weights nudged off their init."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, 2, 1, groups=16), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    for p in net.parameters():
        p.data += 0.05 * torch.randn_like(p)
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 16, 16), path, input_names=["x"], dynamic_axes={"x": {0: "n"}},
                      dynamo=False)
    return path


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bias_correction_takes_out_the_mean_shift_of_every_layer(tmp_path: Path):
    # setup: a static QDQ model of a small conv net, calibrated on 128 samples
    import onnx

    from compress.quantize import attempts as qa
    from compress.quantize.bias import correct_biases

    base = _preprocessed(tmp_path)
    x = np.random.default_rng(0).standard_normal((384, 3, 16, 16)).astype(np.float32)
    calib = qa.batched({"x": x[:128]}, 32)
    quant, fixed = tmp_path / "q.onnx", tmp_path / "qbc.onnx"
    qa.quantize_once(base, quant, SETTINGS, calib)
    shutil.copyfile(quant, fixed)
    # execute
    model = onnx.load(str(fixed))
    done = correct_biases(base, model, calib)
    onnx.save(model, str(fixed))
    # assert: the four layers (3 Conv, 1 Gemm) corrected; on held-out inputs the mean shift of the outputs is
    # several times smaller, and their error smaller too; only biases changed
    assert done == {"layers": 4, "skipped": 0, "samples": 128, "note": "biases of 4 layers corrected on 128 samples"}
    f, q, qb = (_outputs(p, x[128:]) for p in (base, quant, fixed))
    shift, corrected = np.abs((q - f).mean(0)).mean(), np.abs((qb - f).mean(0)).mean()
    assert corrected < shift / 2
    assert ((qb - f) ** 2).mean() < ((q - f) ** 2).mean()
    before = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(quant)).graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(fixed)).graph.initializer}
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert changed and all(k.endswith("_quantized") and ("bias" in k or "Conv_" in k) for k in changed)
    assert all(after[k].dtype == np.int32 for k in changed)
    assert correct_biases(base, model, []) == {"layers": 0, "skipped": 0, "samples": 0, "note": ""}


def test_the_first_static_attempt_corrects_biases_and_says_so(tmp_path: Path):
    # setup / execute: quantize_once with the default settings of [quantize] (bias_correction on)
    from compress.quantize import attempts as qa
    from compress.quantize.config import QuantizeConfig

    base = _preprocessed(tmp_path)
    first = qa.remedy_plan(QuantizeConfig())[0][0]
    x = np.random.default_rng(1).standard_normal((64, 3, 16, 16)).astype(np.float32)
    note = qa.quantize_once(base, tmp_path / "q.onnx", first, qa.batched({"x": x}, 32))
    off = qa.quantize_once(base, tmp_path / "q2.onnx", {**first, "bias_correction": False}, qa.batched({"x": x}, 32))
    # assert
    assert first["bias_correction"] is True
    assert note == "biases of 4 layers corrected on 64 samples"
    assert off == ""


def test_a_candidate_alone_in_float_is_scored_without_requantizing(tmp_path: Path):
    # setup: the static QDQ model (biases corrected) and its float twin
    import onnx

    from compress.quantize import attempts as qa
    from compress.quantize.qdq import with_node_in_float
    from compress.quantize.sensitivity import feeding_outputs, gate_checked

    base, quant = _preprocessed(tmp_path), tmp_path / "q.onnx"
    x = np.random.default_rng(2).standard_normal((256, 3, 16, 16)).astype(np.float32)
    qa.quantize_once(base, quant, {**SETTINGS, "bias_correction": True}, qa.batched({"x": x[:128]}, 32))
    f = _outputs(base, x[128:])

    def score(path: Path) -> float:
        return -float(((_outputs(path, x[128:]) - f) ** 2).mean())

    # execute
    head = feeding_outputs(onnx.load(str(base)).graph, {"Conv", "Gemm"})
    ok = with_node_in_float(base, quant, "/9/Gemm", tmp_path / "gemm.onnx")
    ranked = gate_checked(base, quant, ["/0/Conv", "/9/Gemm", "/nope"], score, tmp_path)
    # assert: the head is the layer feeding the output; in float it reads the float weights and bias and the tensor
    # before its input's quantizer, and the model is closer to float than the fully quantized one
    assert head == ["/9/Gemm"] and ok
    graph = onnx.load(str(tmp_path / "gemm.onnx")).graph
    gemm = next(n for n in graph.node if n.name == "/9/Gemm")
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in gemm.input)
    assert score(tmp_path / "gemm.onnx") > score(quant)
    assert dict(ranked)["/9/Gemm"] == pytest.approx(score(tmp_path / "gemm.onnx"))  # a node not in the model: left out
    assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1] and not list(tmp_path.glob("candidate-*.onnx"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_each_shift_is_the_quantized_layers_mean_output_minus_the_float_layers(tmp_path: Path):
    # setup: a grouped, strided Conv whose stride does not fit its padded input evenly (a tap row past the kernel's
    # end), a dilated Conv, then a Gemm; quantized statically, biases as ORT wrote them
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn
    from torch.nn import functional as F

    from compress.quantize import attempts as qa
    from compress.quantize import prepare as prep
    from compress.quantize.bias import correct_biases

    torch.manual_seed(0)
    kws = [{"stride": 2, "padding": 1, "groups": 2}, {"padding": 2, "dilation": 2}]
    net = nn.Sequential(nn.Conv2d(4, 8, 3, **kws[0]), nn.Conv2d(8, 8, 3, **kws[1]), nn.Flatten(),
                        nn.Linear(8 * 5 * 5, 5)).eval()
    src, base, quant = tmp_path / "m.onnx", tmp_path / "base.onnx", tmp_path / "q.onnx"
    torch.onnx.export(net, torch.randn(1, 4, 10, 10), src, input_names=["x"], dynamic_axes={"x": {0: "n"}},
                      dynamo=False)
    prep.preprocess(src, base, "static")
    x = np.random.default_rng(3).standard_normal((64, 4, 10, 10)).astype(np.float32) + 0.5
    calib = qa.batched({"x": x}, 16)
    qa.quantize_once(base, quant, SETTINGS, calib)
    model = onnx.load(str(quant))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    # execute
    done = correct_biases(base, model, calib)
    # assert: what was taken out of each int32 bias is, to its rounding step, the mean over samples and positions of
    # the quantized layer's output minus the float layer's, both fed the float model's input to the layer
    assert done["layers"] == 3
    after = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    t = torch.from_numpy(x.astype(np.float64))
    for conv, layer, kw in zip(convs, net, kws):
        q_in = producer[producer[conv.input[0]].input[0]]
        s, z = float(inits[q_in.input[1]]), float(inits[q_in.input[2]])
        w_dq, b_dq = producer[conv.input[1]], producer[conv.input[2]]
        wq = torch.from_numpy(inits[w_dq.input[0]].astype(np.float64) * inits[w_dq.input[1]].reshape(-1, 1, 1, 1))
        scale = inits[b_dq.input[1]].astype(np.float64)
        taken = (inits[b_dq.input[0]] - after[b_dq.input[0]]).astype(np.float64) * scale
        w, b = (torch.from_numpy(p.detach().numpy().astype(np.float64)) for p in (layer.weight, layer.bias))
        xq = (torch.clamp(torch.round(t / s) + z, 0, 255) - z) * s
        want = (F.conv2d(xq, wq, **kw) - F.conv2d(t, w, **kw)).mean((0, 2, 3)).numpy()
        assert np.abs(want).max() > 2 * scale.max()  # a shift worth correcting
        assert np.all(np.abs(taken - want) <= 0.5 * scale + 1e-6)
        t = F.conv2d(t, w, b, **kw)
