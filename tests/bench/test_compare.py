"""compare: which score a verdict uses when rows carry reference scores."""
from __future__ import annotations

import pytest

from compress.bench import compare as cmp


def _row(p50: float, **extra) -> dict:
    return {"provider": "CPUExecutionProvider", "batch": 1, "threads": 1, "p50_ms": p50,
            "ci95_p50_ms": [p50 * 0.99, p50 * 1.01], "reference_version": 1, **extra}


def _verdict(base: dict, new: dict) -> dict:
    key = ("", "CPUExecutionProvider", 1, 1, None)
    return cmp.compare({key: base}, {key: new}, 0.10)[0]


def test_quiet_score_decides_when_both_rows_have_it():
    # raw p50 +30% and the old median-of-ratios score +15%, but the quiet score is unchanged: not a regression
    v = _verdict(_row(1.0, score=5.0, p50_score=5.0), _row(1.3, score=5.0, p50_score=5.75))
    assert v["raw_ratio"] == pytest.approx(1.3) and v["ratio"] == pytest.approx(1.0) and v["verdict"] == "ok"


def test_old_files_fall_back_to_p50_score_never_a_mix():
    v = _verdict(_row(1.0, p50_score=5.0), _row(1.3, score=5.0, p50_score=6.5))
    assert v["ratio"] == pytest.approx(1.3) and v["verdict"] == "REGRESSED"


def test_different_reference_versions_compare_raw():
    v = _verdict(_row(1.0, score=5.0), _row(1.3, score=5.0, reference_version=2))
    assert not v["normalized"] and v["ratio"] == pytest.approx(1.3)


def test_machine_ratio_and_warning_when_the_reference_ran_at_another_speed():
    base = _row(1.0, score=5.0, reference_block_p50_ms=[0.20, 0.16, 0.18])
    same = _verdict(base, _row(1.0, score=5.0, reference_block_p50_ms=[0.17, 0.165]))
    busy = _verdict(base, _row(1.0, score=5.0, reference_block_p50_ms=[0.22, 0.21]))
    assert same["machine_ratio"] == pytest.approx(1.03125) and cmp.machine_warnings([same]) == []
    assert busy["machine_ratio"] == pytest.approx(1.3125)
    [line] = cmp.machine_warnings([busy])
    assert line.startswith("warning: CPUExecutionProvider batch 1 threads 1: the reference workload ran x1.31")


def test_score_alone_does_not_fail_a_build():
    # the model's p50 did not move (raw 1.0) but the normalised score ratio is 1.11 (the reference measurement
    # moved): not called a regression, whether or not the machine state differed (x0.81 here, x1.0 below)
    base = _row(1.0, score=10.0, reference_block_p50_ms=[0.16], samples_ms=[1.0] * 50)
    new = _row(1.0, score=11.1, reference_block_p50_ms=[0.20], samples_ms=[1.0] * 50)
    v = _verdict(base, new)
    assert v["ratio"] == pytest.approx(1.11) and v["raw_ratio"] == pytest.approx(1.0)
    assert v["verdict"] == "unsure" and not v["regressed"] and cmp.regressions([v]) == []
    same = _verdict(base, _row(1.0, score=11.1, reference_block_p50_ms=[0.16],
                               samples_ms=[1.0] * 25 + [1.2] * 25))
    assert same["verdict"] == "unsure"
    # a real slowdown shows in the raw p50 too, and is a regression whatever the machine did
    slow = _verdict(base, _row(1.3, score=13.0, reference_block_p50_ms=[0.20], samples_ms=[1.3] * 50))
    assert slow["verdict"] == "REGRESSED"
    slow_same = _verdict(base, _row(1.25, score=12.5, reference_block_p50_ms=[0.16], samples_ms=[1.25] * 50))
    assert slow_same["verdict"] == "REGRESSED"
