"""`compress quantize` on the user's own data: any calibration count calibrates with every method, bad values and
dtypes in the .npz files are one line naming the file, and the pick says what is true of the file sizes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compress.cli import main
from compress.quantize import pick_final

from .stages.test_quantize import _data, _mlp


@pytest.fixture()
def files(tmp_path: Path) -> dict:
    calib_x, _, centroids = _data(200, seed=1)  # 200 samples: six batches of 32 and one of 8
    val_x, val_y, _ = _data(200, seed=2)
    np.savez(tmp_path / "calib.npz", x=calib_x)
    np.savez(tmp_path / "val.npz", x=val_x, y=val_y)
    return {"model": _mlp(tmp_path / "mlp.onnx", centroids), "calib": calib_x, "val": (val_x, val_y),
            "dir": tmp_path}


def _invoke(*args: object):
    return CliRunner().invoke(main, ["quantize", *map(str, args), "--quiet"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_a_histogram_method_calibrates_200_samples_in_batches_of_32_as_ort_calibrates_them_at_once(
        files: dict, monkeypatch: pytest.MonkeyPatch, method: str):
    # setup: the MLP pre-processed as compress does it; 200 samples cut into batches of 32 (the last one of 8)
    import contextlib

    import onnx

    from compress.quantize import attempts as qa
    from compress.quantize import calibrate, histograms
    from compress.quantize import prepare as prep

    base = files["dir"] / "base.onnx"
    prep.preprocess(files["model"], base, "static")
    settings = {"mode": "static", "per_channel": True, "weight_type": "int8", "reduce_range": False,
                "nodes_to_exclude": [], "calibration_method": method, "quant_format": "qdq",
                "activation_type": "uint8"}
    ragged = qa.batched({"x": files["calib"]}, 32)
    assert [len(b["x"]) for b in ragged] == [32] * 6 + [8]
    # execute: compress's attempt on the ragged batches, counted by compress's collector and (as where ORT has no
    # calibration cache, or a model is over 2 GB) by ORT's; ORT's own calibrator on the 200 samples as one batch
    qa.quantize_once(base, files["dir"] / "ours.onnx", settings, ragged)
    with monkeypatch.context() as m:
        m.setattr(calibrate, "supported", lambda: False)
        qa.quantize_once(base, files["dir"] / "flat.onnx", settings, ragged)
        m.setattr(histograms, "faster", contextlib.nullcontext)
        m.setattr(histograms, "flattened", contextlib.nullcontext)
        qa.quantize_once(base, files["dir"] / "ort.onnx", settings, [{"x": files["calib"]}])
    # assert: the same ranges, so the same model (before: entropy raised numpy's "inhomogeneous shape")
    ort = onnx.load(str(files["dir"] / "ort.onnx"))
    assert onnx.load(str(files["dir"] / "ours.onnx")) == ort and onnx.load(str(files["dir"] / "flat.onnx")) == ort


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_entropy_remedy_runs_on_a_calibration_count_that_is_not_a_multiple_of_32(files: dict):
    # setup: a wild value in every calibration sample, so the configured attempt misses a zero budget and the
    # calibration-method remedies run
    calib = files["calib"].copy()
    calib[:, -1] = 1e4
    np.savez(files["dir"] / "outlier.npz", x=calib)
    out = files["dir"] / "q.onnx"
    # execute
    result = _invoke(files["model"], "--out", out, "--calibration", files["dir"] / "outlier.npz", "--data",
                     files["dir"] / "val.npz", "--max-accuracy-drop", "0")
    # assert: the entropy attempt was built and gated, not "failed: setting an array element with a sequence"
    assert result.exit_code in (0, 1), result.output
    entropy = [a for a in json.loads(out.with_suffix(".json").read_text())["attempts"] if "entropy" in a["name"]]
    assert entropy and all(a["drop"] is not None and "failed" not in a["reason"] for a in entropy), entropy


@pytest.mark.parametrize("option, bad, index, count", [
    ("--calibration", np.nan, 5, 16),
    ("--data", np.nan, 7, 1),
])
def test_nan_in_the_inputs_is_one_line_naming_the_file_and_array_before_any_attempt(
        files: dict, monkeypatch: pytest.MonkeyPatch, option: str, bad: float, index: int, count: int):
    # setup: one sample of real inputs spoiled (before: NaN calibration ran 7 attempts, then "no quantized model met
    # the budget", exit 1)
    monkeypatch.chdir(files["dir"])
    x = files["calib"].copy()
    x.reshape(-1)[index * x.shape[1]:index * x.shape[1] + count] = bad
    np.savez("bad.npz", x=x, y=files["val"][1])
    given = {"--calibration": ["--calibration", "bad.npz"],
             "--data": ["--calibration", "calib.npz", "--data", "bad.npz"],
             "--inputs": ["--calibration", "calib.npz", "--inputs", "bad.npz"]}[option]
    shown = "NaN" if np.isnan(bad) else ("inf" if bad > 0 else "-inf")
    # execute
    result = _invoke("mlp.onnx", "--out", "q.onnx", *given)
    # assert
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: bad.npz: array 'x' holds {shown} at index {index} (first of {count} "
                                     f"bad values); {option} expects numbers, not NaN: clean the data or drop those "
                                     "rows")
    assert not Path("q.json").exists()


@pytest.mark.parametrize("option", ["--data", "--inputs"])
def test_an_infinity_in_the_inputs_is_taken(files: dict, monkeypatch, option: str):
    # an additive attention mask holds -inf where a position is not allowed (NaN in --inputs is refused: without
    # --data the agreement gate judges on them, tests/test_cli_quantize.py)
    monkeypatch.chdir(files["dir"])
    x = files["calib"].copy()
    x[0, 0] = -np.inf
    np.savez("odd.npz", x=x)
    result = _invoke("mlp.onnx", "--out", "q.onnx", "--calibration", "calib.npz", option, "odd.npz")
    assert result.exit_code in (0, 1), result.output


def test_nan_in_the_targets_of_data_is_one_line(files: dict, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(files["dir"])
    y = files["val"][1].astype(np.float32)
    y[3] = np.nan
    np.savez("bad.npz", x=files["val"][0], y=y)
    result = _invoke("mlp.onnx", "--out", "q.onnx", "--calibration", "calib.npz", "--data", "bad.npz")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("error: bad.npz: array 'y' holds NaN at index 3 (first of 1 bad values); "
                                     "--data expects numbers, not NaN: clean the data or drop those rows")


@pytest.mark.parametrize("option", ["--calibration", "--data"])
def test_float64_inputs_are_named_with_the_file_as_compress_bench_names_them(
        files: dict, monkeypatch: pytest.MonkeyPatch, option: str):
    # setup: numpy's default float64 for a float32 input (before: ORT's "Unexpected input data type" naming the model)
    monkeypatch.chdir(files["dir"])
    np.savez("f64.npz", x=files["val"][0].astype(np.float64), y=files["val"][1])
    given = ["--calibration", "f64.npz"] if option == "--calibration" else ["--calibration", "calib.npz", "--data",
                                                                             "f64.npz"]
    # execute
    result = _invoke("mlp.onnx", "--out", "q.onnx", *given)
    bench = CliRunner().invoke(main, ["bench", "mlp.onnx", "--inputs", "f64.npz"])
    # assert: the line compress bench gives for the same file
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: f64.npz: input 'x': expected dtype float32, got float64"
    assert bench.exit_code == 2 and bench.output.strip() == result.output.strip(), bench.output


def test_data_without_targets_and_a_metric_is_one_line(files: dict, monkeypatch: pytest.MonkeyPatch):
    # setup: a metric that would score None without complaint (before: it was called with None for the targets)
    monkeypatch.chdir(files["dir"])
    Path("nolabels_metric.py").write_text("def score(outputs, targets):\n    return {'seen': float(targets is None)}\n")
    np.savez("inputs_only.npz", x=files["val"][0])
    # execute
    result = _invoke("mlp.onnx", "--out", "q.onnx", "--calibration", "calib.npz", "--data", "inputs_only.npz",
                     "--metric", "nolabels_metric:score")
    # assert
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("error: inputs_only.npz: --metric compares outputs with targets, and this file "
                                     "holds none (arrays: x); save them in it as 'y', or 'y_NAME' for several")


def _paired(ratio: float, low: float, high: float) -> list[dict]:
    return [{"provider": "CPUExecutionProvider", "batch": 1, "ratio": ratio, "ci_ratio": [low, high]}]


def test_pick_quantized_says_the_int8_file_is_larger_when_it_is():
    # execute: a slower int8 model 2.9 KB against 1.3 KB of float (a tiny regressor's QDQ file), then a smaller one
    larger = pick_final([], [], prefer_quantized=True, paired=_paired(3.2, 3.1, 3.3), sizes=(1331, 2970))
    smaller = pick_final([], [], prefer_quantized=True, paired=_paired(1.0, 0.9, 1.1), sizes=(40_960, 12_288))
    unmeasured = pick_final([], [], prefer_quantized=True, sizes=(1331, 2970))
    # assert
    assert larger["final"] == "quantized" and "smaller" not in larger["why"]
    assert larger["why"].endswith("; it is slower (the 99% interval of quantized / float lies above 1) and its file "
                                  "is larger (2.9 KB vs 1.3 KB float), but pick = 'quantized' keeps it")
    assert smaller["why"].endswith("; it is not significantly faster, but pick = 'quantized' keeps it (smaller file: "
                                   "12.0 KB vs 40.0 KB float)")
    assert unmeasured["why"] == ("quantized: no provider measured both models, so speed could not decide "
                                 "(pick = 'quantized'; its file is larger: 2.9 KB vs 1.3 KB float)")


def test_pick_quantized_in_compress_quantize_states_the_sizes_it_wrote(files: dict, monkeypatch: pytest.MonkeyPatch):
    # setup: the timing made to say "slower", so pick = 'quantized' decides
    from compress.quantize import timing

    monkeypatch.setattr(timing, "_speedups", lambda *a: ({"cpu/b1": 0.5}, False, True))
    out = files["dir"] / "q.onnx"
    # execute
    result = _invoke(files["model"], "--out", out, "--calibration", files["dir"] / "calib.npz", "--data",
                     files["dir"] / "val.npz", "--pick", "quantized")
    # assert: the reason compares the two files' bytes, as the summary records them
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    accepted = next(a for a in summary["attempts"] if a["accepted"])
    kb = f"{accepted['bytes'] / 1024:.1f} KB vs {summary['float']['bytes'] / 1024:.1f} KB float"
    said = "its file is larger" if accepted["bytes"] > summary["float"]["bytes"] else "smaller file"
    assert summary["ships"] == "quantized" and f"{said}" in summary["why"] and kb in summary["why"], summary["why"]
