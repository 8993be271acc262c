"""The standalone bench kit keeps its own copy of the statistics (it may import only numpy and onnxruntime):
on the same samples it must give the same p50/p90/p99 and median CI as compress.bench.stats, or a device's
numbers and this machine's would not be comparable."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from compress.bench import stats
from compress.kit import SCRIPT


def _kit():
    """compress/kit/bench_kit.py loaded as the script it is (not through the compress package)."""
    spec = importlib.util.spec_from_file_location("bench_kit_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _samples() -> dict[str, list[float]]:
    rng = np.random.default_rng(7)
    return {
        "one": [0.5],
        "two": [2.0, 1.0],
        "nine-odd-below-ci-threshold": [3.0, 1.0, 2.0, 9.0, 4.0, 4.0, 7.0, 0.5, 6.0],
        "ten-even-at-threshold": [float(v) for v in range(10, 0, -1)],
        "eleven-odd": rng.exponential(1.0, 11).tolist(),
        "hundred-even-lognormal": (0.05 * np.exp(rng.normal(0, 0.3, 100))).tolist(),
        "hundred-one-odd-heavy-tail": (0.1 + rng.pareto(2.0, 101)).tolist(),
        "ties-quantised-timer": (np.round(rng.normal(1.0, 0.02, 200), 2)).tolist(),  # a 10 us timer: many ties
        "all-equal": [0.25] * 64,
        "two-modes": [1.0] * 30 + [1.2] * 31,
    }


@pytest.mark.parametrize("name", list(_samples()))
def test_kit_and_stats_give_the_same_percentiles_and_median_ci(name: str):
    # setup
    kit, samples = _kit(), _samples()[name]
    # execute
    kit_p50, kit_p90, kit_p99 = kit.percentile_row(samples)
    ours = stats.percentiles_ms(samples)
    # assert: exactly equal, not approximately: both must be the same computation
    assert (kit_p50, kit_p90, kit_p99) == (ours["p50_ms"], ours["p90_ms"], ours["p99_ms"])
    assert kit.median_ci(samples) == stats.median_ci(samples)
    lo, hi = stats.median_ci(samples)
    assert lo <= ours["p50_ms"] <= hi
