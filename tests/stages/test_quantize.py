"""Quantize stage: each mode on a tiny model, the accuracy gate and its remedies, the float-vs-quantized pick."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from compress.errors import CompressError
from compress.quantize import QuantizeConfig, pick_final, quantize
from compress.quantize.sensitivity import rank_sensitive_nodes

N_FEATURES, N_CLASSES = 16, 4
def _fast() -> object:
    """Quick latency settings so the tests stay in seconds."""
    from compress.bench.config import BenchSettings

    return BenchSettings(warmup_runs=3, min_runs=20, min_seconds=0.02, repetitions=2)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four well separated clusters in 16-d, centroids of norm 3; the last feature is noise the model ignores."""
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((N_CLASSES, N_FEATURES)).astype(np.float32)
    centroids[:, -1] = 0.0
    centroids *= 3.0 / np.linalg.norm(centroids, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    x = centroids[y] + 0.3 * rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    return x.astype(np.float32), y, centroids


def _mlp(path: Path, centroids: np.ndarray) -> Path:
    """x @ [C, -C] -> relu -> @ [I; -I]: logits = x @ C.T, a nearest-centroid classifier as a MatMul MLP."""
    from onnx import TensorProto, helper, numpy_helper

    w1 = np.concatenate([centroids, -centroids]).T.astype(np.float32)  # (16, 8)
    w2 = np.concatenate([np.eye(N_CLASSES), -np.eye(N_CLASSES)]).astype(np.float32)  # (8, 4)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(4, np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
             helper.make_node("Relu", ["a1"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "w2"], ["m2"], name="fc2"),
             helper.make_node("Add", ["m2", "b2"], ["logits"], name="fc2_bias")]
    return _saved(helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                                    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits),
                  path, opset=17)


def _saved(graph: object, path: Path, opset: int) -> Path:
    """The graph as a checked model file at `path`."""
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def setup(tmp_path: Path) -> dict:
    train_x, _, centroids = _data(512, seed=1)
    val_x, val_y, _ = _data(400, seed=2)
    model = _mlp(tmp_path / "mlp.onnx", centroids)
    return {"model": model, "out": tmp_path / "q", "calib_x": train_x, "val_x": val_x, "val_y": val_y}


def _arrays(calib_x, val_x, val_y, budget: float) -> dict:
    """quantize()'s data arguments from arrays: the accuracy gate, calibration batches, timing feeds."""
    from compress.quantize.attempts import batched
    from compress.quantize.gate import accuracy_gate

    def feed(b: int) -> dict:
        return {"x": np.concatenate([val_x[:b]] * -(-b // len(val_x)))[:b]}

    return {"gate": accuracy_gate({"x": val_x}, val_y, budget, key="quantize.max_accuracy_drop", source="val.npz"),
            "calibration": batched({"x": calib_x}, 32) if calib_x is not None else None, "feed": feed}


def _run(s: dict, cfg: QuantizeConfig, **kw) -> dict:
    data = {"calib_x": s["calib_x"], "val_x": s["val_x"], "val_y": s["val_y"]}
    data.update({k: kw.pop(k) for k in list(kw) if k in data})
    args = {**_arrays(data["calib_x"], data["val_x"], data["val_y"], cfg.max_accuracy_drop), "providers": ["cpu"],
            "batch_sizes": [1, 32], "progress": False, "profile": _fast()}
    args.update(kw)
    return quantize(s["model"], s["out"], cfg, **args)


@pytest.mark.parametrize("mode", ["static", "dynamic", "fp16"])
def test_each_mode_quantizes_within_budget(setup: dict, mode: str) -> None:
    # execute
    result = _run(setup, QuantizeConfig(mode=mode, max_accuracy_drop=0.01))
    # assert
    assert result["float"]["accuracy"] > 0.95
    first = result["attempts"][0]
    assert first["accepted"], first["reason"]
    assert abs(first["accuracy_drop"]) <= 0.01
    assert Path(result["chosen"]).is_file()
    # the pick follows the paired speedup (geometric mean over batches): quantized only when significantly faster
    pick = result["pick"]
    assert pick["paired"] and result["final"] == ("quantized" if pick["speedup"] > 1.0 and pick["significant"]
                                                  else "float"), result["why"]
    assert {(r["provider"], r["batch"]) for r in first["latency"]["rows"]} == {
        ("CPUExecutionProvider", 1), ("CPUExecutionProvider", 32)}
    assert all(r["p50_ms"] > 0 for r in first["latency"]["rows"])
    assert result["why"].startswith(result["final"] + ":")
    import onnx

    graph = onnx.load(result["chosen"]).graph
    ops = {n.op_type for n in graph.node}
    types = {i.data_type for i in graph.initializer}
    expected_op = {"static": "DequantizeLinear", "dynamic": "DynamicQuantizeLinear", "fp16": "Cast"}[mode]
    assert expected_op in ops
    assert (onnx.TensorProto.FLOAT16 if mode == "fp16" else onnx.TensorProto.INT8) in types


@pytest.mark.parametrize("stalled", [0.1, 0.0])
def test_the_exclusion_remedy_stops_when_a_node_in_float_wins_nothing_back(setup: dict, monkeypatch, stalled):
    # setup: the budget-zero case below (only fc1 in float cures it), with the gate's check of the candidates handed
    # back in the wrong order, so the first node kept in float is one that does not matter
    from compress.quantize import attempts as qa

    calib = setup["calib_x"].copy()
    calib[:, -1] = 1e4
    checked = qa.gate_checked
    monkeypatch.setattr(qa, "gate_checked", lambda *a: list(reversed(checked(*a))))
    monkeypatch.setattr(qa, "STALLED", stalled)
    # execute (the dynamic remedy off: it would meet this budget first, its ranges read at run time)
    result = _run(setup, QuantizeConfig(mode="static", max_accuracy_drop=0.0), calib_x=calib, dynamic_remedy=False)
    # assert: with the rule, the remedy stops after the one node that won nothing back and says why; without it, it
    # goes on to two nodes (fc1 among them: the drop is gone, with nothing left quantized in this two-layer model)
    last = result["attempts"][-1]
    assert last["why_tried"].startswith("remedy: 1 most sensitive node kept in float" if stalled else
                                        "remedy: 2 most sensitive nodes kept in float")
    if stalled:
        assert not last["accepted"] and result["chosen"] is None
        assert "1 node in float won back under 10% of the excess over the budget, so no more nodes were tried" in \
            last["reason"]
    else:
        assert last["accuracy_drop"] == 0.0 and any(n.startswith("fc1") for n in last["settings"]["nodes_to_exclude"])


def test_progress_ends_at_the_attempts_run_when_the_exclusion_remedy_stops(setup: dict, monkeypatch, capsys):
    # setup: the stalled case above: the plan, then one node in float that wins nothing back
    import re

    from compress.quantize import attempts as qa

    calib = setup["calib_x"].copy()
    calib[:, -1] = 1e4
    checked = qa.gate_checked
    monkeypatch.setattr(qa, "gate_checked", lambda *a: list(reversed(checked(*a))))
    # execute
    result = _run(setup, QuantizeConfig(mode="static", max_accuracy_drop=0.0), calib_x=calib, progress=True,
                  dynamic_remedy=False)
    # assert: one line per attempt, never past its total, the last one saying the search is done
    lines = [(int(n), int(t), bool(d)) for n, t, d in re.findall(r"quantize \(static\): (\d+)/(\d+) attempt(, done)?",
                                                                 capsys.readouterr().err)]
    done = len(result["attempts"])
    assert result["attempts"][-1]["why_tried"].startswith("remedy: 1 most sensitive node kept in float")
    assert [n for n, _, _ in lines] == list(range(1, done + 1)), lines
    assert [d for _, _, d in lines] == [False] * (done - 1) + [True], lines
    assert all(n <= total for n, total, _ in lines), lines


def test_the_exclusion_remedy_starts_from_a_static_attempt_when_the_dynamic_one_misses(setup: dict) -> None:
    # setup: the budget-zero case below, with the gate reading the dynamic attempt 0.3 lower (as if it had missed):
    # before, the remedy took it as its source (the best drop so far), found no Gemm in ORT's dynamic op list and
    # tried nothing, and the run shipped no model
    import dataclasses

    from compress.quantize.attempts import DYNAMIC_WHY

    calib = setup["calib_x"].copy()
    calib[:, -1] = 1e4
    gate = _arrays(calib, setup["val_x"], setup["val_y"], 0.0)["gate"]

    def worse_dynamic(path: Path) -> dict:
        figures = dict(gate.score(path))
        if "dynamic" in Path(path).name:
            figures["accuracy"] -= 0.3
        return figures

    # execute
    result = _run(setup, QuantizeConfig(mode="static", max_accuracy_drop=0.0), calib_x=calib,
                  gate=dataclasses.replace(gate, score=worse_dynamic))
    # assert: the dynamic attempt ran and missed; nodes in float were tried on static attempts, and one ships
    attempts = result["attempts"]
    assert [a["why_tried"] for a in attempts].count(DYNAMIC_WHY) == 1
    after = attempts[[a["why_tried"] for a in attempts].index(DYNAMIC_WHY) + 1:]
    assert after and all(a["settings"]["mode"] == "static" and a["settings"]["nodes_to_exclude"] for a in after)
    assert result["chosen"] is not None and attempts[-1]["accepted"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_weighted_ops_remedy_leaves_the_ops_between_them_float(tmp_path: Path) -> None:
    # setup: a conv net (convs, ReLUs, a global average pool, a Linear head), pre-processed
    import onnx

    from compress.quantize import attempts as qa

    from .test_bias_correction import SETTINGS, _preprocessed

    base = _preprocessed(tmp_path)
    calib = qa.batched({"x": np.random.default_rng(7).standard_normal((16, 3, 16, 16)).astype(np.float32)}, 4)

    def readers(path: Path) -> set[str]:  # the op types that read a dequantized tensor
        graph = onnx.load(str(path)).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return {n.op_type for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                and dequantized & set(n.input)}

    # execute: every op type ORT quantizes, then the remedy's settings
    for method in ("minmax", "percentile"):
        qa.quantize_once(base, tmp_path / f"all-{method}.onnx", {**SETTINGS, "calibration_method": method}, calib)
        qa.quantize_once(base, tmp_path / f"weighted-{method}.onnx",
                         {**SETTINGS, "calibration_method": method, "op_types": list(qa.WEIGHTED)}, calib)
        # assert: the pool reads int8 codes by default; with the remedy only the convs, the head and what reads a
        # conv's own output (ORT quantizes a Conv's output too) do
        assert "GlobalAveragePool" in readers(tmp_path / f"all-{method}.onnx")
        assert readers(tmp_path / f"weighted-{method}.onnx") == {"Conv", "Gemm", "Relu"}
    assert qa.attempt_name(6, {**SETTINGS, "op_types": list(qa.WEIGHTED)}) == "attempt-06-static-minmax-pc-weighted"


def test_unavailable_provider_is_recorded_not_swapped(setup: dict) -> None:
    from tests.conftest import absent_provider

    short, name = absent_provider()
    result = _run(setup, QuantizeConfig(mode="dynamic", max_accuracy_drop=0.01), providers=["cpu", short],
                  batch_sizes=[1])
    for latency in (result["float"]["latency"], result["attempts"][0]["latency"]):
        assert [r["provider"] for r in latency["rows"]] == ["CPUExecutionProvider"]
        assert [u["provider"] for u in latency["unavailable"]] == [name]


def test_static_model_really_is_int8(setup: dict) -> None:
    import onnx

    result = _run(setup, QuantizeConfig(mode="static", max_accuracy_drop=0.01))
    graph = onnx.load(result["chosen"]).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert {i.name for i in int8} >= {"w1_quantized", "w2_quantized"}


def test_budget_zero_runs_the_remedies_in_order(setup: dict) -> None:
    # setup: a wild value in the ignored feature of every calibration sample stretches the input's range, so every
    # real feature rounds to the zero point; no range estimate can tell it from data, only keeping fc1 (the layer that
    # reads the input) in float cures it
    calib = setup["calib_x"].copy()
    calib[:, -1] = 1e4
    # execute (the dynamic remedy off: below, it meets the budget before the exclusion remedy)
    result = _run(setup, QuantizeConfig(mode="static", max_accuracy_drop=0.0), calib_x=calib, dynamic_remedy=False)
    # assert
    attempts = result["attempts"]
    assert attempts[0]["settings"]["calibration_method"] == "mean_minmax"
    assert not attempts[0]["accepted"] and attempts[0]["accuracy_drop"] > 0.3
    assert [a["why_tried"] for a in attempts[:4]] == [
        "configured settings", "remedy: calibration method minmax", "remedy: calibration method entropy",
        "remedy: calibration method percentile"]
    assert attempts[4]["why_tried"] == "remedy: per-tensor weights"
    weighted = attempts[5]
    assert weighted["name"].endswith("-weighted") and weighted["why_tried"].startswith(
        "remedy: only the ops with weights quantized (Conv, ConvTranspose, MatMul, Gemm)")
    assert all(not a["accepted"] for a in attempts[:-1])
    last = attempts[-1]
    assert last["accepted"] and last["accuracy_drop"] == 0.0
    assert last["why_tried"] == "remedy: 1 most sensitive node kept in float (ranked by the gate on 2 candidates)"
    assert last["settings"]["nodes_to_exclude"][0].startswith("fc1")
    import onnx

    inits = {i.name: i.data_type for i in onnx.load(last["path"]).graph.initializer}
    assert inits["w2_quantized"] == onnx.TensorProto.INT8 and inits["w1"] == onnx.TensorProto.FLOAT
    assert result["chosen"] is not None
    assert last["latency"]["rows"] and all(a["latency"] is None for a in attempts[:-1])  # only what can ship is timed
    # with the dynamic remedy (a Gemm-only graph): tried after the weighted ops, it meets the budget, since it takes
    # each activation's range as the model runs, where the calibration data's wild value is not
    from compress.quantize.attempts import DYNAMIC_WHY

    result = _run(setup, QuantizeConfig(mode="static", max_accuracy_drop=0.0), calib_x=calib)
    dynamic = result["attempts"][-1]
    assert [a["why_tried"] for a in result["attempts"][:6]] == [a["why_tried"] for a in attempts[:6]]
    assert len(result["attempts"]) == 7 and dynamic["why_tried"] == DYNAMIC_WHY
    assert dynamic["accepted"] and dynamic["accuracy_drop"] <= 0.0 and dynamic["settings"]["mode"] == "dynamic"


def test_one_outlier_sample_stretches_minmax_not_the_default_mean_of_sample_ranges(setup: dict) -> None:
    # setup: one calibration sample with a wild value in the ignored feature (minmax takes it as the range's end;
    # the mean of per-sample ranges takes 1/N of it)
    calib = setup["calib_x"].copy()
    calib[0, -1] = 1e4
    # execute
    result = _run(setup, QuantizeConfig(mode="static", max_accuracy_drop=0.0, calibration_method="minmax"),
                  calib_x=calib)
    # assert: minmax collapses, the next remedy (the default estimate) meets a zero budget with nothing in float
    first, second = result["attempts"][:2]
    assert not first["accepted"] and first["accuracy_drop"] > 0.3
    assert second["why_tried"] == "remedy: calibration method mean_minmax"
    assert second["accepted"] and second["settings"]["nodes_to_exclude"] == []
    assert len(result["attempts"]) == 2


def test_nothing_meets_budget_keeps_float_and_says_why(setup: dict) -> None:
    calib = setup["calib_x"].copy()
    calib[:, -1] = 1e4
    result = _run(setup, QuantizeConfig(max_accuracy_drop=0.0, fallback=False), calib_x=calib)
    assert len(result["attempts"]) == 1
    assert result["chosen"] is None and result["final"] == "float"
    assert result["why"].startswith("no quantized model met the accuracy budget of 0.00 points after 1 attempt")


def test_sensitive_nodes_rank_the_outlier_damaged_layer_first(setup: dict) -> None:
    from compress.quantize.attempts import quantize_once as _quantize_once
    from compress.quantize.prepare import preprocess as _preprocess

    calib = setup["calib_x"].copy()
    calib[0, -1] = 1e4
    setup["out"].mkdir()
    base = setup["out"] / "pre.onnx"
    _preprocess(setup["model"], base, "static")
    quant = setup["out"] / "q.onnx"
    settings = {"mode": "static", "per_channel": True, "weight_type": "int8", "reduce_range": False,
                "nodes_to_exclude": [], "calibration_method": "minmax", "quant_format": "qdq",
                "activation_type": "uint8"}
    _quantize_once(base, quant, settings, [{"x": calib[i:i + 32]} for i in range(0, len(calib), 32)])
    ranked = rank_sensitive_nodes(base, quant, [{"x": setup["val_x"][:64]}], {"MatMul", "Add", "Gemm"})
    assert ranked[0][0].startswith("fc1")  # its input x is quantized with the outlier's range: nearly all signal lost
    assert ranked[0][1] > 20.0


def test_pick_prefers_float_when_it_is_faster() -> None:
    row = lambda b, ms: {"provider": "CPUExecutionProvider", "batch": b, "p50_ms": ms}  # noqa: E731
    decision = pick_final([row(1, 0.019), row(32, 0.20)], [row(1, 0.030), row(32, 0.21)])
    assert decision["final"] == "float"
    assert decision["speedups"] == pytest.approx({"cpu/b1": 0.019 / 0.030, "cpu/b32": 0.20 / 0.21})
    assert "not faster" in decision["why"]
    faster = pick_final([row(1, 0.5), row(32, 9.0)], [row(1, 0.25), row(32, 3.0)])
    assert faster["final"] == "quantized" and faster["speedup"] == pytest.approx((2.0 * 3.0) ** 0.5)
    forced = pick_final([row(1, 0.019)], [row(1, 0.030)], prefer_quantized=True)
    assert forced["final"] == "quantized"


def test_float_wins_the_pick_and_is_final(tmp_path: Path) -> None:
    # int8 QOperator with signed activations (s8s8) has no fast x86 kernels: measured ~3x slower than fp32 on this
    # small conv net at batch 1, far outside timing noise. It meets the budget, so only speed can make float final.
    import torch

    from compress.onnx.export import export_onnx
    from compress.quantize.gate import accuracy_gate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 64, 4)).eval()
    x = np.random.default_rng(0).random((200, 1, 8, 8), dtype=np.float32)
    y = model(torch.from_numpy(x)).argmax(1).numpy()
    path = export_onnx(model, torch.from_numpy(x[:2]), tmp_path / "conv.onnx")
    cfg = QuantizeConfig(mode="static", quant_format="qoperator", activation_type="int8", max_accuracy_drop=0.5,
                         fallback=False)
    data = _arrays(x, x, y, 0.5)
    renamed = {"gate": accuracy_gate({"input": x}, y, 0.5, key="quantize.max_accuracy_drop", source="x"),
               "calibration": [{"input": f["x"]} for f in data["calibration"]],
               "feed": lambda b: {"input": data["feed"](b)["x"]}}  # export_onnx names the input 'input'
    result = quantize(path, tmp_path / "q", cfg, **renamed, providers=["cpu"], batch_sizes=[1], progress=False,
                      profile=_fast())
    assert result["attempts"][0]["accepted"] and result["chosen"] is not None
    assert result["final"] == "float", result["why"]
    assert result["pick"]["speedup"] < 0.8
    assert result["why"].startswith("float: quantized vs float speedup")


def test_static_without_calibration_data_is_a_clear_error(setup: dict) -> None:
    with pytest.raises(CompressError) as err:
        _run(setup, QuantizeConfig(mode="static"), calib_x=None)
    assert str(err.value) == ("quantize.mode: 'static' needs calibration samples from the training data, got none; "
                              "provide training data in [data] or use mode = 'dynamic'")


def test_fp16_on_cpu_only_with_pick_quantized_is_refused(setup: dict) -> None:
    with pytest.raises(CompressError, match=r"quantize.mode: 'fp16' with pick = 'quantized' needs a GPU provider"):
        _run(setup, QuantizeConfig(mode="fp16", pick="quantized"))


def test_calibration_shape_mismatch_names_both_shapes(setup: dict) -> None:
    with pytest.raises(CompressError) as err:
        _run(setup, QuantizeConfig(), calib_x=np.zeros((8, 10), np.float32))
    assert str(err.value) == ("quantize: calibration input 'x' has shape 10 per sample, the model takes 16; check "
                              "[data] against the exported model")


def test_config_rejects_unknown_keys_and_bad_ranges() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        QuantizeConfig(mode="int4")
    with pytest.raises(ValidationError):
        QuantizeConfig(max_accuracy_drop=1.5)
    with pytest.raises(ValidationError):
        QuantizeConfig(calibration="entropy")
    assert QuantizeConfig().model_dump()["per_channel"] is True


def test_cpu_int8_isa_decides_the_reduce_range_remedy() -> None:
    from compress.bench.environment import int8_isa, u8s8_saturates
    from compress.quantize.attempts import remedy_plan

    assert int8_isa({"fpu", "avx2", "avx512f", "avx512_vnni", "sse4_2"}) == ["avx2", "avx512f", "avx512_vnni"]
    assert u8s8_saturates(["avx2", "avx512f"], "x86_64")  # AVX-512 without VNNI: VPMADDUBSW saturates
    assert not u8s8_saturates(["avx2", "avx512f", "avx512_vnni"], "x86_64")
    assert not u8s8_saturates(["asimddp"], "aarch64")
    plain = [why for _, why in remedy_plan(QuantizeConfig())]
    old_cpu = remedy_plan(QuantizeConfig(), saturates=True)
    assert [why for _, why in old_cpu][:-2] == plain[:-1] and old_cpu[-1][1] == plain[-1]
    settings, why = old_cpu[-2]
    assert settings["reduce_range"] is True and why.startswith("remedy: 7-bit weights (reduce_range)")


def test_pick_never_decides_by_noise() -> None:
    # the same architecture measured twice once read 0.0087 vs 0.0061 ms: a 1.4x "speedup" that is noise
    row = lambda ms, lo, hi: {"provider": "CPUExecutionProvider", "batch": 1, "p50_ms": ms,  # noqa: E731
                              "ci95_p50_ms": [lo, hi]}
    separate = pick_final([row(0.0087, 0.0058, 0.0095)], [row(0.0061, 0.0059, 0.0090)])
    assert separate["final"] == "float" and not separate["significant"] and "noise" in separate["why"]
    pair = lambda ratio, lo, hi: [{"provider": "CPUExecutionProvider", "batch": 1, "ratio": ratio,  # noqa: E731
                                   "ci_ratio": [lo, hi]}]
    noisy = pick_final([], [], paired=pair(0.71, 0.5, 1.3))
    assert noisy["final"] == "float" and noisy["paired"]
    real = pick_final([], [], paired=pair(0.5, 0.45, 0.55))
    assert real["final"] == "quantized" and real["speedup"] == pytest.approx(2.0)
    # a paired 1.01x with a tight interval is real but too small to ship int8 for; the summary states the threshold
    tiny = pick_final([], [], paired=pair(0.99, 0.985, 0.995))
    assert tiny["final"] == "float" and not tiny["significant"] and "at least 1.03x at 99% confidence" in tiny["why"]


def test_histogram_calibration_takes_only_the_samples_that_fit_in_memory(tmp_path: Path, monkeypatch):
    # setup: a machine with little free memory (as a ResNet-50's 100 MB of activations a sample makes any machine)
    import os as os_module

    from compress.quantize import sensitivity

    model = _mlp(tmp_path / "mlp.onnx", _data(8, seed=0)[2])
    onnx_model = onnx.shape_inference.infer_shapes(onnx.load(str(model)))
    onnx.save(onnx_model, str(model))
    per_sample = sensitivity.activation_bytes(model)
    pages = {"SC_PAGE_SIZE": 1, "SC_AVPHYS_PAGES": per_sample * 4 * 20 * 2}  # half of it: 20 samples at copies=4
    monkeypatch.setattr(os_module, "sysconf", lambda name: pages[name])
    # execute
    keep, note = sensitivity.samples_that_fit(model, 256, copies=4)
    # assert
    assert per_sample == 4 * (8 + 8 + 8 + 4 + 4)  # m1, a1, h (8 floats), m2, logits (4 floats) for one sample
    assert keep == 20 and note.startswith("20 of 256 samples (every activation is kept:")
    assert sensitivity.samples_that_fit(model, 16, copies=4) == (16, "")
    # an explicit cap (--max-memory, [quantize] max_memory_mb) wins; MinMax holds only the batches that fit
    assert sensitivity.samples_that_fit(model, 256, copies=4, cap=per_sample * 4 * 10)[0] == 10
    # calibration batches shrink to what the cap (or FOLD_BYTES) holds, every sample kept
    from compress.quantize.attempts import smaller_batches
    feed = {"x": np.zeros((64, N_FEATURES), np.float32)}
    batches = smaller_batches(model, [feed], cap=per_sample * 16)
    assert [len(b["x"]) for b in batches] == [16] * 4
    assert smaller_batches(model, [feed], cap=2**40) == [feed]
    assert sensitivity.memory_cap(100) == 100 * 2**20


def test_a_run_holds_what_is_alive_at_once_and_a_calibrator_every_tensor(tmp_path: Path):
    # setup: a chain of 10 Relu over 1000 floats a sample; the third tensor is also a graph output
    from onnx import TensorProto, helper

    from compress.quantize import sensitivity

    names = ["x", *(f"r{i}" for i in range(1, 11))]
    nodes = [helper.make_node("Relu", [a], [b]) for a, b in zip(names, names[1:])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1000])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1000]) for n in ("r10", "r3")])
    path = tmp_path / "chain.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(helper.make_model(graph)), str(path))
    feed = {"x": np.zeros((4, 1000), np.float32)}
    # execute / assert: the sum counts all 10 tensors; a run holds two at once plus r3, kept to the end, times the
    # margin; per sample of the feed
    assert sensitivity.activation_bytes(path, feed) == 10 * 4000
    assert sensitivity.run_bytes(path, feed) == sensitivity.ALIVE_MARGIN * 3 * 4000
    fit = sensitivity.FOLD_BYTES // (sensitivity.ALIVE_MARGIN * 3 * 4000)
    assert sensitivity.rows_that_fit(path, feed, 10**6) == fit
    assert sensitivity.rows_that_fit(path, feed, 10**6, every_tensor=True) == sensitivity.FOLD_BYTES // 40000
    assert sensitivity.rows_that_fit(path, feed, 7) == 7


def test_a_concat_of_mixed_ranges_ranks_first(tmp_path: Path):
    # a YOLOv8 head joins boxes in pixels and class scores in 0-1; one shared scale turns every score into 0 or 1.27,
    # while the output's SQNR, dominated by the boxes, looks fine
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.quantize.sensitivity import mixed_ranges

    nodes = [helper.make_node("Mul", ["x", "k"], ["boxes"], name="scale"),
             helper.make_node("Sigmoid", ["x"], ["scores"], name="sigmoid"),
             helper.make_node("Concat", ["boxes", "scores"], ["y"], name="head", axis=1),
             helper.make_node("Concat", ["scores", "scores"], ["z"], name="same", axis=1)]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8])],
                              [numpy_helper.from_array(np.array(320.0, np.float32), "k")])
    x = np.random.default_rng(0).uniform(0, 1, (16, 4)).astype(np.float32)
    acts = {"boxes": [x * 320], "scores": [1 / (1 + np.exp(-x))], "x": [x]}
    found = mixed_ranges(onnx.helper.make_model(graph).graph, acts)
    assert list(found) == ["head"]  # "same" joins equal ranges
    assert 40 < found["head"] < 55  # 20 log10(320 / ~0.73) dB


def test_the_sensitivity_ranking_never_passes_the_hard_cap(tmp_path: Path):
    from compress.quantize import sensitivity

    model = _mlp(tmp_path / "mlp.onnx", _data(8, seed=0)[2])
    onnx.save(onnx.shape_inference.infer_shapes(onnx.load(str(model))), str(model))
    per = sensitivity.activation_bytes(model) * 3
    # the soft cap decides; it gives way to one sample when the hard cap holds it; never past the hard cap
    assert sensitivity.samples_that_fit(model, 64, copies=3, cap=per * 2, hard=per * 100)[0] == 2
    assert sensitivity.samples_that_fit(model, 64, copies=3, cap=per // 2, hard=per * 5)[0] == 1
    keep, note = sensitivity.samples_that_fit(model, 64, copies=3, cap=per // 2, hard=per // 2)
    assert keep == 0 and note.startswith("one sample's activations")


def test_symbolic_shape_inference_only_where_onnx_leaves_a_shape_unknown():
    # setup: a conv graph whose every tensor onnx infers (batch named), and a Reshape to a shape computed at run time
    from onnx import TensorProto, helper, numpy_helper

    from compress.quantize.prepare import _shapes_known

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    conv = helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])
    relu = helper.make_node("Relu", ["c"], ["y"])
    plain = helper.make_model(helper.make_graph([conv, relu], "g", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 13)])
    computed = helper.make_model(helper.make_graph(
        [conv, helper.make_node("Shape", ["c"], ["s"]), helper.make_node("Reshape", ["c", "s"], ["y"])],
        "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 13)])
    # execute / assert: onnx's inference is enough for the first; the second needs ORT's symbolic inference
    assert _shapes_known(plain)
    assert not _shapes_known(computed)


def _outlier_model(path: Path, centroids: np.ndarray, outlier: float = 1000.0) -> Path:
    """(N, 4 positions, 16) -> MatMul (identity) -> Add a bias that puts channel 15 at `outlier` -> Sub it again ->
    MatMul (centroids on channels 0-14) -> mean over the positions: a nearest-centroid classifier whose hidden
    tensor's range one channel sets, as a transformer's residual stream has a few huge channels (read, as there, by
    arithmetic that is not a MatMul: a MatMul reading a float or 16-bit tensor becomes ORT's MatMulNBits, which
    quantizes it to 8 bits again at its default accuracy level)."""
    from onnx import TensorProto, helper, numpy_helper

    bias = np.zeros(N_FEATURES, np.float32)
    bias[-1] = outlier
    head = centroids.T.astype(np.float32).copy()
    head[-1] = 0.0
    inits = [numpy_helper.from_array(np.eye(N_FEATURES, dtype=np.float32), "w1"), numpy_helper.from_array(bias, "b1"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"), numpy_helper.from_array(head, "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
             helper.make_node("Sub", ["a1", "b1"], ["h"], name="unbias"),
             helper.make_node("MatMul", ["h", "w2"], ["scores"], name="head"),
             helper.make_node("ReduceMean", ["scores", "axes"], ["logits"], name="pool", keepdims=0)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16])
    return _saved(helper.make_graph(nodes, "outlier", [x], [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                                          ["N", 4])], inits),
                  path, opset=18)


def _positions(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Four positions a row for _outlier_model: the row's point plus noise at each."""
    return (x[:, None, :] + 0.3 * rng.standard_normal((len(x), 4, N_FEATURES))).astype(np.float32)


def test_an_activation_whose_range_one_channel_sets_stays_float(tmp_path: Path) -> None:
    # setup: four positions a row, each the row's point plus noise; channel 15 of the hidden tensor sits at 1000
    from compress.quantize.outliers import outlier_activations

    rng = np.random.default_rng(3)
    train_x, _, centroids = _data(256, seed=1)
    val_x, val_y, _ = _data(400, seed=2)
    model = _outlier_model(tmp_path / "outlier.onnx", centroids)
    calib = [{"x": _positions(train_x[i:i + 32], rng)} for i in range(0, 256, 32)]
    found = outlier_activations(model, calib)
    assert [name for name, _ in found] == ["a1"] and found[0][1] > 64  # m1 and the rest: ordinary ranges
    assert outlier_activations(model, calib, ratio=found[0][1] + 1) == []
    s = {"model": model, "calib_x": _positions(train_x, rng), "val_x": _positions(val_x, rng), "val_y": val_y}
    # execute: one attempt each, the default against outlier_ratio = None
    runs = {}
    for ratio in (64.0, None):
        s["out"] = tmp_path / f"q-{ratio}"
        runs[ratio] = _run(s, QuantizeConfig(mode="static", max_accuracy_drop=0.01, fallback=False,
                                             outlier_ratio=ratio))
    # assert: with one 8-bit scale over [-4, 1000], channels 0-14 fall on three codes and accuracy goes; float a1
    # keeps it, and the quantized graph really reads a1 unquantized
    kept, crushed = runs[64.0]["attempts"][0], runs[None]["attempts"][0]
    assert [o["tensor"] for o in runs[64.0]["outliers"]] == ["a1"] and runs[None]["outliers"] == []
    assert kept["settings"]["float_activations"] == ["a1"] and "float_activations" not in crushed["settings"]
    assert crushed["drop"] > 0.05, crushed
    assert kept["drop"] <= 0.01 and kept["accepted"], kept
    graph = onnx.load(kept["path"]).graph
    assert not [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "a1"]
    assert [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]  # the rest is int8


def test_the_qnn_graph_gives_such_an_activation_16_bit_codes(tmp_path: Path) -> None:
    # setup: the same classifier; the QNN graph must quantize everything, so the outlier tensor takes uint16 codes
    from compress.edge.qnn import quantize_for_qnn
    from compress.onnx.parity import run_cpu
    from compress.qat.qnn import sixteen_bit

    train_x, _, centroids = _data(64, seed=1)
    val_x, val_y, _ = _data(200, seed=2)
    rng = np.random.default_rng(4)
    x, v = _positions(train_x, rng), _positions(val_x, rng)
    model = _outlier_model(tmp_path / "outlier.onnx", centroids)
    # execute
    paths = {ratio: quantize_for_qnn(model, tmp_path / f"qnn-{ratio}.onnx", {"x": x}, batch=8, outlier_ratio=ratio)
             for ratio in (64.0, None)}
    # assert
    # what the report names: the outlier tensor, with the conversions and outputs QNN's rules widen beside it
    wide = sixteen_bit(paths[64.0])
    assert "a1" in wide and "x" not in wide and sixteen_bit(paths[None]) == []
    for ratio, path in paths.items():
        graph = onnx.load(str(path)).graph
        types = {i.name: i.data_type for i in graph.initializer}
        q = {n.input[0]: types.get(n.input[2]) for n in graph.node if n.op_type == "QuantizeLinear"}
        assert q["a1"] == (onnx.TensorProto.UINT16 if ratio else onnx.TensorProto.UINT8)
        assert q["x"] == onnx.TensorProto.UINT8
    accuracy = {ratio: float((run_cpu(path, {"x": v})[0].argmax(1) == val_y).mean()) for ratio, path in paths.items()}
    assert accuracy[64.0] >= 0.95 > accuracy[None] + 0.2, accuracy


def test_the_qnn_functions_default_to_the_quantize_sections_outlier_ratio() -> None:
    # compress.edge keeps its own literal (it does not import compress.quantize at load): the two must not drift
    import inspect

    from compress.edge.qnn import quantize_for_qnn
    from compress.edge.qnn_flow import prepare_qnn
    from compress.quantize.config import OUTLIER_RATIO

    for fn in (quantize_for_qnn, prepare_qnn):
        assert inspect.signature(fn).parameters["outlier_ratio"].default == OUTLIER_RATIO
    assert QuantizeConfig().outlier_ratio == OUTLIER_RATIO


@pytest.mark.parametrize("batch_dim", [4, "N"])
def test_outputs_over_chunks_join_on_each_outputs_own_sample_axis(tmp_path: Path, batch_dim: object):
    # setup: a model whose outputs carry the samples on axis 0, on axis 1 (a recurrent state's layout) and on no
    # axis; with a fixed batch of 4 (the last chunk padded) and with a free one run 4 at a time; 10 samples
    from onnx import TensorProto, helper

    from compress.quantize.gate import outputs_of

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"]), helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
         helper.make_node("ReduceSum", ["two"], ["c"], keepdims=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 3]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, [3, batch_dim]),
         helper.make_tensor_value_info("c", TensorProto.FLOAT, [])],
        [helper.make_tensor("two", TensorProto.FLOAT, [3], [2.0, 2.0, 2.0])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    # execute
    out = outputs_of(path, {"x": x}, batch=4)
    # assert: every sample once, in order, on its own axis; the padding cut off; the per-model output as it is
    np.testing.assert_array_equal(out["y"], x * 2)
    np.testing.assert_array_equal(out["t"], x.T)
    assert float(out["c"]) == 6.0


def test_sensitivity_ranking_takes_a_tensor_whose_noise_is_infinite(tmp_path: Path):
    # an fp16 tensor that overflows: ORT's SQNR took log10(0) and the ranking stopped with "math domain error"
    from onnx import TensorProto, helper, numpy_helper

    from compress.quantize.sensitivity import rank_sensitive_nodes

    def model(path: Path, factor: float) -> Path:
        nodes = [helper.make_node("Mul", ["x", "k"], ["h"], name="scale"),
                 helper.make_node("Relu", ["h"], ["y"], name="relu")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                                  [numpy_helper.from_array(np.full(4, factor, np.float32), "k")])
        return _saved(graph, path, opset=17)

    x = np.abs(np.random.default_rng(0).standard_normal((4, 4))).astype(np.float32) + 0.1
    for bad in (np.inf, np.nan):  # NaN: ORT's SQNR is NaN, which min(cap, NaN) read as noise-free
        ranked = rank_sensitive_nodes(model(tmp_path / "f.onnx", 1.0), model(tmp_path / "q.onnx", bad), [{"x": x}],
                                      None)
        assert ranked[0][0] == "scale" and ranked[0][1] > 0, (bad, ranked)


def test_an_int8_lstm_counts_as_quantized(tmp_path: Path):
    # dynamic int8 of an RNN writes DynamicQuantizeLSTM: its attempts were "nothing computes in fewer bits"
    from onnx import TensorProto, helper

    from compress.quantize.reduced import is_reduced

    for op, domain, want in (("DynamicQuantizeLSTM", "com.microsoft", True), ("QLinearAdd", "com.microsoft", True),
                             ("LSTM", "", False)):
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="n", domain=domain)], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        path = tmp_path / f"{op}.onnx"
        onnx.save(helper.make_model(graph), str(path))
        assert is_reduced(path, "dynamic") is want, op


def test_unnamed_nodes_are_named_except_in_a_model_too_large_to_read_in(tmp_path: Path):
    # naming a large model's nodes would read every external weight into memory just to write a copy
    from onnx import TensorProto, helper, numpy_helper

    from compress.quantize.prepare import _brought_up_to_date

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 512])],
                              [numpy_helper.from_array(np.ones((4, 512), np.float32), "w")])  # 8 KB: saved outside
    src = _saved(graph, tmp_path / "u.onnx", opset=17)
    path, notes, model = _brought_up_to_date(src, tmp_path / "copy.onnx", "dynamic", large=False)
    assert path == tmp_path / "copy.onnx" and [n.name for n in onnx.load(str(path)).graph.node] == ["MatMul_0"]
    assert notes == ["1 unnamed node named (ONNX Runtime keeps nodes in float by name: --exclude and the exclusion "
                     "remedy need one)"]
    path, notes, _ = _brought_up_to_date(src, tmp_path / "copy2.onnx", "dynamic", large=True)
    assert path == src and not (tmp_path / "copy2.onnx").exists()
    assert notes == ["1 unnamed node left unnamed (naming alone would write this large model again): --exclude and "
                     "the exclusion remedy cannot keep it in float; name the model's nodes to exclude them"]
    # written anyway (here: opset 12 raised for static QDQ), a large model's nodes are named on the way
    old = _saved(graph, tmp_path / "u12.onnx", opset=12)
    path, notes, _ = _brought_up_to_date(old, tmp_path / "copy3.onnx", "static", large=True)
    assert path == tmp_path / "copy3.onnx" and [n.name for n in onnx.load(str(path)).graph.node] == ["MatMul_0"]
    assert notes[0].startswith("1 unnamed node named")


def test_a_dynamic_attempt_with_the_layers_that_write_outlier_activations_in_float_follows_plain_dynamic(
        tmp_path: Path) -> None:
    # all-MiniLM-L6-v2: plain dynamic missed by 0.0008; with the three FFN output MatMuls whose outputs a few channels
    # dominate in float, it met the budget (docs/results.md)
    from compress.quantize import attempts as qa
    from compress.quantize.dynamic import outlier_layers
    from compress.onnx.skeleton import graph_of

    _, _, centroids = _data(64, seed=1)
    graph = graph_of(_outlier_model(tmp_path / "outlier.onnx", centroids)).graph
    assert outlier_layers(graph, ["m1", "a1"]) == ["fc1"]  # m1 is fc1's (a MatMul with a weight)
    assert outlier_layers(graph, ["a1"]) == []  # written by an Add: nothing to keep in float
    plan = qa.remedy_plan(QuantizeConfig(), matmuls_only=True, outlier_layers=["fc1"])
    (plain, why_plain), (kept, why_kept) = plan[-2:]
    assert why_plain == qa.DYNAMIC_WHY and plain["nodes_to_exclude"] == []
    assert kept == {**plain, "nodes_to_exclude": ["fc1"]}
    assert why_kept == f"remedy: dynamic int8 with the 1 layer that writes {qa.OUTLIER_LAYERS_WHY}"
    assert qa.remedy_plan(QuantizeConfig(), matmuls_only=True)[-1][1] == qa.DYNAMIC_WHY  # no outliers: no entry
    assert qa.attempt_name(9, kept) == "attempt-09-dynamic-pc-float1"
    # a dynamic plan (its outlier check ran on calibration rows) ends with the same attempt; not without remedies
    plan = qa.remedy_plan(QuantizeConfig(mode="dynamic"), outlier_layers=["fc1"])
    assert plan[-1] == ({**plan[0][0], "nodes_to_exclude": ["fc1"]}, why_kept) and len(plan) == 3
    assert len(qa.remedy_plan(QuantizeConfig(mode="dynamic", fallback=False), outlier_layers=["fc1"])) == 1
