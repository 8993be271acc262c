"""`compress bench` as a CI gate, as a review used it: inputs that turned the gate off, overwrote its baseline or
compared unlike runs, each now one line and exit 2 before anything is timed (or, with nothing timed, after)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import absent_provider

from .test_cli_bench import FAST, invoke
from .test_harness import mlp

ABSENT, ABSENT_NAME = absent_provider()


def _seq(path: Path) -> Path:
    """x [N, seq, 64] -> MatMul -> y: the work grows with the symbolic seq."""
    import onnx

    w = numpy_helper.from_array(np.eye(64, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "seq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "seq", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "seq", 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def base(tmp_path: Path) -> tuple[Path, Path]:
    model = mlp(tmp_path / "m.onnx", layers=2)
    result = invoke("bench", model, "--json", tmp_path / "base.json", *FAST)
    assert result.exit_code == 0, result.output
    return model, tmp_path / "base.json"


def test_the_result_cannot_be_written_over_its_own_baseline(base, tmp_path: Path):
    # before: written before it was judged, so a regressed run replaced the baseline and the next build passed
    model, baseline = base
    before = baseline.read_bytes()
    result = invoke("bench", model, "--baseline", baseline, "--json", baseline, *FAST)
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: --json {baseline}: the --baseline file itself; write the new result elsewhere, and replace the "
        "baseline once the build passes")
    assert baseline.read_bytes() == before


@pytest.mark.parametrize("command, option", [("bench", "--max-regression"), ("compare", "--max-regression"),
                                             ("bench", "--time-budget"), ("quantize", "--max-accuracy-drop")])
def test_a_number_that_is_not_finite_is_refused(base, tmp_path: Path, command: str, option: str):
    # before: nan compared false with every bound, so --max-regression nan passed a 4.4x slowdown
    model, baseline = base
    first = {"bench": [model], "compare": [baseline, baseline], "quantize": [model, "--out", tmp_path / "q.onnx"]}
    result = invoke(command, *first[command], option, "nan")
    assert result.exit_code == 2 and f"Invalid value for '{option}': 'nan' is not a finite number" in result.output


@pytest.mark.parametrize("key, value, want", [
    ("inputs", ["x"], "an object of input name -> {shape, type}, got list ['x']"),
    ("fixed", 5, "a list of NAME=VALUE strings, got int 5"),
    ("fixed", [1, 2], "a list of NAME=VALUE strings, got list [1, 2]")])
def test_a_baseline_whose_keys_have_the_wrong_form_is_one_line(base, tmp_path: Path, key, value, want):
    # before: a traceback and exit 1, which CI reads as a regression
    model, baseline = base
    doc = json.loads(baseline.read_text())
    doc[key] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    line = f"error: {bad}: {key}: expected {want}; pass the file bench --json wrote"
    for args in (["bench", model, "--baseline", bad, *FAST], ["compare", baseline, bad]):
        result = invoke(*args)
        assert result.exit_code == 2 and result.output.strip() == line, result.output


def test_inputs_of_other_shapes_are_not_compared_as_the_same_run(tmp_path: Path):
    # before: x [1, 16, 64] against x [1, 256, 64] read "REGRESSED x5.35" without a word, even under --strict
    model = _seq(tmp_path / "seq.onnx")
    np.savez(tmp_path / "s16.npz", x=np.ones((1, 16, 64), np.float32))
    np.savez(tmp_path / "s256.npz", x=np.ones((1, 256, 64), np.float32))
    assert invoke("bench", model, "--inputs", tmp_path / "s16.npz", "--json", tmp_path / "i16.json",
                  *FAST).exit_code == 0
    assert json.loads((tmp_path / "i16.json").read_text())["fed"] == {"x": [1, 16, 64]}
    result = invoke("bench", model, "--inputs", tmp_path / "s256.npz", "--baseline", tmp_path / "i16.json",
                    "--strict", *FAST)
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: --baseline {tmp_path / 'i16.json'} and {model} are not comparable: timed on --inputs of different "
        "shapes (x 1x16x64 vs x 1x256x64); compare two results of the same pipeline and model, or drop --strict to "
        "see the rows anyway")


def test_a_dim_fixed_by_input_and_axis_and_sized_by_dim_is_refused(tmp_path: Path):
    # before: --dim seq=256 was ignored (the seq-16 copy was timed) and recorded in the JSON as what was timed
    model = _seq(tmp_path / "seq.onnx")
    result = invoke("bench", model, "--fix-dim", "x:1=16", "--dim", "seq=256", *FAST)
    assert result.exit_code == 2 and result.output.strip() == (
        "error: --dim seq=256: --fix-dim x:1=16 fixes that axis (x's seq) to 16 in the model; give one size")
    # the same size is consistent (and needed where another input shares the name): it runs
    assert invoke("bench", model, "--fix-dim", "x:1=16", "--dim", "seq=16", *FAST).exit_code == 0


def test_nothing_timed_is_exit_2_and_writes_no_result(base, tmp_path: Path):
    # before: exit 0 and a JSON of no rows, which the gate it was made for then refused
    model, _ = base
    result = invoke("bench", model, "--provider", ABSENT, "--json", tmp_path / "none.json", *FAST)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: {model}: nothing was timed ({ABSENT_NAME}: ")
    assert not (tmp_path / "none.json").exists()


def test_a_provider_this_machine_lacks_is_not_a_different_provider(tmp_path: Path):
    # before: the same command against its own baseline warned "different providers measured (CPU vs CPU, CUDA)"
    model = mlp(tmp_path / "m.onnx", layers=2)
    assert invoke("bench", model, "--provider", "cpu", "--provider", ABSENT, "--json", tmp_path / "b.json",
                  *FAST).exit_code == 0
    result = invoke("bench", model, "--provider", "cpu", "--provider", ABSENT, "--baseline", tmp_path / "b.json",
                    *FAST)
    assert result.exit_code == 0 and "different providers" not in result.output, result.output


def test_a_kit_of_one_batch_says_so_when_several_were_timed(base, tmp_path: Path):
    model, _ = base
    result = invoke("bench", model, "--batch", "1", "--batch", "4", "--kit", tmp_path / "kit", *FAST)
    assert result.exit_code == 0, result.output
    assert ("note: the kit times batch 1 only (the first --batch); compare its result with this run without "
            "--strict, or run bench once per batch for a kit each") in result.output


def test_a_baseline_with_no_row_this_run_times_is_refused_before_timing(base, monkeypatch):
    # before: every row was timed first, then "no latency row ... matches", exit 2
    from compress.bench import harness

    model, baseline = base
    monkeypatch.setattr(harness, "bench_model", lambda *a, **k: pytest.fail("timed before the check"))
    result = invoke("bench", model, "--threads", "2", "--baseline", baseline, *FAST)
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: --baseline {baseline}: none of its rows (CPUExecutionProvider batch 1 threads 1) is among the rows "
        "this run times (rows match on provider, batch and threads); time the same ones")
