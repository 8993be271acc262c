"""The latency gate of `compress compare` and `compress bench --baseline`: which rows it judges, what it refuses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_cli_bench import FAST, error_line, invoke
from .test_harness import mlp


def row(p50: float, threads: int = 1, **extra) -> dict:
    return {"provider": "CPUExecutionProvider", "batch": 1, "threads": threads, "p50_ms": p50,
            "ci95_p50_ms": [p50 * 0.99, p50 * 1.01], **extra}


def bench_json(path: Path, *rows: dict, **extra) -> Path:
    path.write_text(json.dumps({"schema": "compress.bench/1", "model": "m.onnx", "latency": list(rows), **extra}))
    return path


def test_no_matching_row_is_exit_2_saying_what_each_side_has(tmp_path: Path):
    # a baseline at 2 threads against a 7.5x slower run at 1 thread: nothing was judged, so nothing may pass
    base = bench_json(tmp_path / "base.json", row(1.0, threads=2))
    new = bench_json(tmp_path / "new.json", row(7.5, threads=1))
    for flags in ([], ["--strict"]):
        result = invoke("compare", base, new, *flags)
        assert result.exit_code == 2, result.output
        line = error_line(result)
        assert "no latency row of the two matches" in line
        assert f"{base} has CPUExecutionProvider batch 1 threads 2" in line
        assert f"{new} has CPUExecutionProvider batch 1 threads 1" in line


def test_a_baseline_row_the_new_run_lacks_warns_and_fails_under_strict(tmp_path: Path):
    base = bench_json(tmp_path / "base.json", row(1.0, threads=1), row(1.0, threads=2))
    new = bench_json(tmp_path / "new.json", row(1.0, threads=1))
    result = invoke("compare", base, new)
    assert result.exit_code == 0, result.output
    assert "1 baseline row(s) not measured, so not judged: CPUExecutionProvider batch 1 threads 2" in result.stderr
    strict = invoke("compare", base, new, "--strict")
    assert strict.exit_code == 2, strict.output
    assert "error: " in strict.stderr and "not measured, so not judged" in strict.stderr
    # an added row (new, not in the baseline) is only shown
    assert invoke("compare", new, base, "--strict").exit_code == 0


def test_rows_that_differ_only_in_seq_length_are_judged_apart(tmp_path: Path):
    def report(path: Path, p50_short: float) -> Path:
        doc = {"schema": "compress.report/1", "models": [{"name": "student", "latency": [
            row(p50_short, seq_length=64), row(4.0, seq_length=128)]}]}
        path.write_text(json.dumps(doc))
        return path

    base, new = report(tmp_path / "a.json", 1.0), report(tmp_path / "b.json", 2.0)
    result = invoke("compare", base, new)
    assert result.exit_code == 1, result.output  # the seq 64 row is 2x slower; seq 128 did not hide it
    lines = [ln for ln in result.output.splitlines() if ln.startswith("student")]
    assert len(lines) == 2 and "REGRESSED" in lines[0] and lines[1].endswith("ok")


def test_two_rows_with_one_key_are_an_error(tmp_path: Path):
    base = bench_json(tmp_path / "base.json", row(1.0), row(2.0))
    result = invoke("compare", base, base)
    assert result.exit_code == 2
    assert error_line(result) == (f"error: {base}: latency[1]: a second row for CPUExecutionProvider batch 1 "
                                  "threads 1; expected one row per model, provider, batch, threads and seq_length")


@pytest.mark.parametrize("change, says", [
    ({"samples_ms": ["a", "b"]}, "latency[0]: samples_ms: expected a list of numbers >= 0 or none"),
    ({"score": "x"}, "latency[0]: score: expected a number > 0 or none, got 'x'"),
    ({"reference_block_p50_ms": "abc"}, "latency[0]: reference_block_p50_ms: expected a list"),
    ({"reference_block_p50_ms": [0.0]}, "latency[0]: reference_block_p50_ms: expected numbers > 0"),
    ({"p50_ms": 0}, "latency[0]: p50_ms: expected a number > 0, got 0"),
    ({"p50_ms": "1.0"}, "latency[0]: p50_ms: expected a number > 0, got '1.0'"),
    ({"batch": 1.7}, "latency[0]: batch: expected a whole number >= 1, got 1.7"),
    ({"ci95_p50_ms": [0.1]}, "latency[0]: ci95_p50_ms: expected a list of 2 numbers"),
])
def test_malformed_rows_are_one_line_naming_the_file_and_the_row(tmp_path: Path, change: dict, says: str):
    good = bench_json(tmp_path / "good.json", row(1.0, score=1.0, reference_block_p50_ms=[0.2], samples_ms=[1.0]))
    bad = bench_json(tmp_path / "bad.json", {**row(1.0, score=1.0, reference_block_p50_ms=[0.2]), **change})
    for args in ((good, bad), (bad, good)):
        result = invoke("compare", *args)
        assert result.exit_code == 2, result.output
        assert error_line(result) == f"error: {bad}: {says}" or error_line(result).startswith(f"error: {bad}: {says}")


def test_a_model_latency_that_is_not_a_list_is_exit_2(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "compress.report/1", "models": [{"name": "m", "latency": 5}]}))
    result = invoke("compare", bad, bad)
    assert result.exit_code == 2 and f"{bad}: models[m].latency: expected a list of rows" in error_line(result)


def test_machines_that_differ_are_said(tmp_path: Path):
    env = {"cpu": "AMD EPYC", "cores": 2, "onnxruntime": "1.32.0"}
    base = bench_json(tmp_path / "base.json", row(1.0), environment=env)
    new = bench_json(tmp_path / "new.json", row(1.0), environment={"cpu": "Intel Xeon", "cores": 64,
                                                                    "onnxruntime": "1.20.0"})
    result = invoke("compare", base, new, "--strict")
    assert result.exit_code == 0, result.output  # a note, not a refusal
    assert "different CPU models (AMD EPYC vs Intel Xeon)" in result.stderr
    assert "different core counts (2 vs 64)" in result.stderr
    assert "different onnxruntime versions (1.32.0 vs 1.20.0)" in result.stderr


def test_bench_baseline_makes_the_checks_compare_makes(tmp_path: Path):
    model = mlp(tmp_path / "m.onnx", layers=2)
    other_inputs = {"x": {"shape": ["batch", 32], "type": "tensor(float)"}}
    base = bench_json(tmp_path / "base.json", row(1.0), inputs=other_inputs, environment={"cpu": "Some Other CPU"})
    # --strict: a baseline of another model is refused before anything is timed
    strict = invoke("bench", model, "--baseline", base, "--strict", *FAST)
    assert strict.exit_code == 2, strict.output
    line = error_line(strict)
    assert f"--baseline {base} and {model} are not comparable: different model inputs" in line
    # without: warnings, as compare gives them, and the gate runs
    loose = invoke("bench", model, "--baseline", base, *FAST)
    assert loose.exit_code in (0, 1), loose.output
    assert f"warning: --baseline {base}: different model inputs" in loose.stderr
    assert f"warning: --baseline {base}: different CPU models (Some Other CPU vs " in loose.stderr


def test_bench_baseline_at_other_threads_is_exit_2(tmp_path: Path):
    model = mlp(tmp_path / "m.onnx", layers=2)
    base = bench_json(tmp_path / "base.json", row(1.0, threads=2))
    result = invoke("bench", model, "--baseline", base, *FAST)
    assert result.exit_code == 2, result.output
    assert error_line(result) == (  # before anything is timed (it was said after every row was)
        f"error: --baseline {base}: none of its rows (CPUExecutionProvider batch 1 threads 2) is among the rows this "
        "run times (rows match on provider, batch and threads); time the same ones")


def test_bench_baseline_refuses_a_malformed_baseline_before_timing(tmp_path: Path):
    model = mlp(tmp_path / "m.onnx", layers=2)
    base = bench_json(tmp_path / "base.json", row(1.0, samples_ms=["a", "b"]))
    result = invoke("bench", model, "--baseline", base, *FAST)
    assert result.exit_code == 2, result.output
    assert error_line(result).startswith(f"error: {base}: latency[0]: samples_ms: expected a list of numbers")
