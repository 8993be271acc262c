"""Paired mode: the verdict on synthetic block medians (deterministic), and `bench NEW --against OLD` end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compress.bench.harness import BenchSettings
from compress.bench.paired import paired_bench, paired_verdict
from .test_cli_bench import FAST, invoke
from .test_harness import mlp


def _blocks(n: int, ratio: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n pairs of block medians around 1 ms whose machine speed wanders by +-30% (both sides of a pair alike),
    with 3% independent noise per block, and new = ratio x old."""
    rng = np.random.default_rng(seed)
    machine = 1.0 + 0.3 * np.abs(np.sin(np.arange(n) / 3.0))
    old = machine * (1 + 0.03 * rng.standard_normal(n))
    new = ratio * machine * (1 + 0.03 * rng.standard_normal(n))
    return old, new


def test_equal_models_on_a_wandering_machine_are_ok():
    old, new = _blocks(40, 1.0)
    v = paired_verdict(old, new, 0.10)
    assert v["verdict"] == "ok" and v["ci_ratio"][0] < 1.0 < v["ci_ratio"][1]


def test_a_25_percent_slowdown_is_regressed():
    v = paired_verdict(*_blocks(40, 1.25), 0.10)
    assert v["verdict"] == "REGRESSED" and v["ratio"] == pytest.approx(1.25, rel=0.03)


def test_load_bursts_in_a_minority_of_new_blocks_do_not_regress():
    old, new = _blocks(40, 1.0)
    new[::3] *= 2.0  # a third of the pairs hit by a burst on the new side only
    assert paired_verdict(old, new, 0.10)["verdict"] == "ok"


def test_past_the_budget_without_significance_is_unsure():
    v = paired_verdict([1.0, 1.0, 1.0], [1.3, 1.25, 0.9], 0.10)  # 3 pairs: the CI is [min, max]
    assert v["verdict"] == "unsure" and not v["regressed"]


def test_a_much_faster_new_model_is_faster():
    assert paired_verdict(*_blocks(40, 0.5), 0.10)["verdict"] == "faster"


def test_a_significant_slowdown_within_budget_is_ok():
    v = paired_verdict(*_blocks(40, 1.05), 0.10)
    assert v["verdict"] == "ok" and v["significant"]


def test_paired_verdict_rejects_unequal_blocks():
    with pytest.raises(ValueError, match="as many positive old and new block medians"):
        paired_verdict([1.0, 1.0], [1.0], 0.10)


def test_paired_bench_returns_one_row_per_configuration(tmp_path: Path):
    a = mlp(tmp_path / "a.onnx", layers=2)
    settings = BenchSettings(warmup_runs=2, min_runs=20, min_seconds=0.05, repetitions=2)
    row = paired_bench(a, a, "cpu", 1, 1, settings)
    assert row["pairs"] == len(row["old_block_p50_ms"]) == len(row["new_block_p50_ms"]) >= 2
    assert row["repetitions"] == 2 and row["runs_old"] >= 40 and row["runs_new"] >= 40


def test_a_settled_row_stops_after_a_repetition_and_carries_each_models_own_row(tmp_path: Path):
    # setup: a deep and a shallow MLP; three repetitions planned
    old, new = mlp(tmp_path / "old.onnx", layers=12), mlp(tmp_path / "new.onnx", layers=1)
    settings = BenchSettings(warmup_runs=2, min_runs=20, min_seconds=0.05, repetitions=3)
    seen: list[dict] = []
    # execute: one row stopped as soon as asked, one never asked to stop
    stopped = paired_bench(old, new, "cpu", 1, 1, settings, sides=True, settled=lambda v: seen.append(v) or True)
    full = paired_bench(old, new, "cpu", 1, 1, settings, settled=lambda v: False)
    # assert: the check ran once, on the first repetition's pairs, and the row is that repetition's; each side's row
    # has the p50 its ratio came from
    assert len(seen) == 1 and seen[0]["pairs"] == stopped["pairs"]
    assert stopped["repetitions"] == 1 and full["repetitions"] == 3
    assert stopped["old_row"]["p50_ms"] == stopped["old_p50_ms"] and stopped["new_row"]["runs"] == stopped["runs_new"]
    assert stopped["new_row"]["p50_ms"] < stopped["old_row"]["p50_ms"] and "old_row" not in full


def test_quantize_times_each_pair_once_whatever_its_feeds_first_axis(tmp_path: Path):
    # setup: a feed whose first axis is not the batch asked for (an input batched on another axis looks like this)
    from compress.quantize.timing import timed_together

    old, new = mlp(tmp_path / "old.onnx", layers=4), mlp(tmp_path / "new.onnx", layers=1)
    settings = BenchSettings(warmup_runs=1, min_runs=5, min_seconds=0.01, repetitions=1)
    # execute
    paired, float_rows, quant_rows = timed_together(old, new, ["CPUExecutionProvider"], [1], 1,
                                                    lambda b: {"x": np.ones((b + 3, 64), np.float32)}, settings, 0.97)
    # assert: one paired row, and each model's one row from it (not timed a second time alone)
    assert len(paired) == 1 and len(float_rows["rows"]) == 1 and len(quant_rows["rows"]) == 1
    assert float_rows["rows"][0]["p50_ms"] == paired[0]["old_p50_ms"]


def test_against_itself_with_a_huge_budget_is_ok(tmp_path: Path):
    a = mlp(tmp_path / "a.onnx", layers=2)
    out = tmp_path / "p.json"
    result = invoke("bench", a, "--against", a, "--max-regression", "100", "--json", out, *FAST)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == "compress.paired/1" and doc["paired"][0]["verdict"] in ("ok", "faster")


def test_against_a_much_faster_old_model_is_regressed_exit_1(tmp_path: Path):
    old = mlp(tmp_path / "old.onnx", layers=2, width=256)
    new = mlp(tmp_path / "new.onnx", layers=12, width=256)  # ~6x the work; measured well over 3x slower
    result = invoke("bench", new, "--against", old, "--batch", "16", "--max-regression", "0.10", *FAST)
    assert result.exit_code == 1, result.output
    assert "REGRESSED" in result.output and "paired rows regressed beyond +10%" in result.output


def test_against_and_baseline_together_is_exit_2(tmp_path: Path):
    a = mlp(tmp_path / "a.onnx", layers=2)
    result = invoke("bench", a, "--against", a, "--baseline", tmp_path / "base.json", *FAST)
    assert result.exit_code == 2 and "--against and --baseline: use one" in result.output


def test_against_a_model_with_other_inputs_is_exit_2(tmp_path: Path):
    old = mlp(tmp_path / "old.onnx", layers=2, width=64)
    new = mlp(tmp_path / "new.onnx", layers=2, width=32)
    result = invoke("bench", new, "--against", old, *FAST)
    assert result.exit_code == 2 and "new.onnx: does not take the inputs of" in result.output


def test_the_kit_judges_pairs_as_compress_bench_does():
    # the kit restates paired_verdict (it may import only numpy and onnxruntime): same blocks, same verdict
    import importlib.util

    from compress.kit import SCRIPT

    kit, script = (importlib.util.module_from_spec(spec) for spec in (
        importlib.util.spec_from_file_location("paired_kit_under_test", SCRIPT.with_name("paired_kit.py")),
        importlib.util.spec_from_file_location("bench_kit_under_test", SCRIPT)))
    kit.__spec__.loader.exec_module(kit)
    script.__spec__.loader.exec_module(script)
    cases = [_blocks(40, 1.0), _blocks(40, 1.25), _blocks(40, 0.5), _blocks(40, 1.05), _blocks(12, 1.12, seed=3),
             ([1.0, 1.0, 1.0], [1.3, 1.25, 0.9])]
    for old, new in cases:
        ours, theirs = paired_verdict(old, new, 0.10), kit.verdict(old, new, 0.10, script.median_ci)
        assert theirs.pop("ci_ratio") == pytest.approx(ours.pop("ci_ratio"))
        assert theirs == pytest.approx(ours)


def test_a_kit_made_against_an_old_model_catches_the_slowdown_on_the_device(tmp_path: Path):
    # setup: NEW does ~6x OLD's work; the kit made here carries both
    import subprocess
    import sys

    old = mlp(tmp_path / "old.onnx", layers=2, width=256)
    new = mlp(tmp_path / "new.onnx", layers=12, width=256)
    made = invoke("bench", new, "--against", old, "--batch", "16", "--kit", tmp_path / "kit", *FAST)
    assert made.exit_code == 1 and (tmp_path / "kit" / "against.onnx").is_file(), made.output
    # execute: the kit "on the device"
    done = subprocess.run([sys.executable, "bench_kit.py", "--json", "device.json", "--repetitions", "2",
                           "--min-runs", "20", "--min-seconds", "0.05"], cwd=tmp_path / "kit", capture_output=True,
                          text=True, timeout=120)
    # assert: exit 1, one line naming the old model, and the paired row in the device's JSON
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().startswith("error: slower than against.onnx beyond +10% on CPUExecutionProvider x")
    paired = json.loads((tmp_path / "kit" / "device.json").read_text())["paired"]
    assert paired["rows"][0]["verdict"] == "REGRESSED" and paired["rows"][0]["batch"] == 16


def test_too_few_pairs_are_never_significant():
    # one pair 2x slower gave a zero-width "99%" interval and REGRESSED; 7 pairs' [min, max] covers the median
    # with 98.4% only; 8 pairs (the exact sign test's 99%) can be significant
    from compress.kit.paired_kit import MIN_PAIRS

    assert MIN_PAIRS == 8
    for n in (1, 2, 7):
        v = paired_verdict([1.0] * n, [2.0] * n, 0.10)
        assert v["verdict"] == "unsure" and not v["significant"] and not v["regressed"], n
        assert paired_verdict([2.0] * n, [1.0] * n, 0.10)["verdict"] == "unsure"
    assert paired_verdict([1.0] * 8, [2.0] * 8, 0.10)["verdict"] == "REGRESSED"


def test_a_tiny_time_limit_still_times_the_pairs_a_verdict_needs_and_says_so(tmp_path: Path):
    # setup: a per-repetition stop far shorter than one pair (budget.plan can cut max_seconds this far)
    a = mlp(tmp_path / "a.onnx", layers=2)
    settings = BenchSettings(warmup_runs=1, min_runs=100000, min_seconds=10.0, max_seconds=1e-6, repetitions=1,
                             time_budget_seconds=0)
    # execute
    row = paired_bench(a, a, "cpu", 1, 1, settings)
    # assert: the loop ran on to 8 pairs rather than stopping after one, and the budget record says what ran
    assert row["pairs"] == 8 and row["verdict"] in ("ok", "faster", "unsure")
    ran = row["budget"]["ran"]
    assert (ran["pairs"], ran["repetitions"], ran["runs_old"], ran["runs_new"]) == (8, 1, row["runs_old"],
                                                                                    row["runs_new"])


def test_against_at_the_edge_times_batch_1_once(tmp_path: Path):
    a = mlp(tmp_path / "a.onnx", layers=2)
    out = tmp_path / "p.json"
    result = invoke("bench", a, "--against", a, "--edge", "--batch", "1", "--batch", "8", "--max-regression", "100",
                    "--json", out, *FAST)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["paired"]
    assert [(r["batch"], r["threads"]) for r in rows] == [(1, 1)]


def test_paired_bench_under_strict_audits_placement_before_timing(tmp_path: Path, monkeypatch):
    # setup: a placement audit that finds nodes left to the CPU provider (a real one needs an NPU or a GPU)
    from compress.bench import placement
    from compress.errors import CompressError

    audited = []

    def left_to_cpu(model_path, record):
        audited.append(Path(model_path).name)
        return CompressError(f"{model_path}: nodes left to the CPU provider")

    monkeypatch.setattr(placement, "fallback_error", left_to_cpu)
    a = mlp(tmp_path / "a.onnx", layers=2)
    # execute / assert: strict stops at once; without strict the row is timed
    with pytest.raises(CompressError, match="nodes left to the CPU provider"):
        paired_bench(a, a, "cpu", 1, 1, BenchSettings(warmup_runs=1, min_runs=5, min_seconds=0.0, repetitions=1,
                                                        strict=True))
    assert audited == ["a.onnx"]
    assert paired_bench(a, a, "cpu", 1, 1, BenchSettings(warmup_runs=1, min_runs=5, min_seconds=0.0,
                                                         repetitions=1))["pairs"] >= 8
