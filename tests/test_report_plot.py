"""report.png stays readable with many models: numbers fan out where models coincide, accuracy stays <= 100%."""
from __future__ import annotations

from pathlib import Path

import pytest

from compress.report import _accuracy_limits, _label_offsets, _plot


def test_accuracy_axis_stays_within_the_data_and_never_past_100():
    assert _accuracy_limits([98.33, 100.0]) == (pytest.approx(97.83), 100.0)
    assert _accuracy_limits([50.0, 50.0]) == (49.5, 50.5)


def test_coinciding_models_get_distinct_label_offsets_and_lone_ones_none():
    points = [("a", 0.02, 98.89, 1), ("b", 0.0201, 98.89, 1), ("c", 0.0199, 98.89, 1), ("d", 0.4, 99.4, 1)]
    offsets = _label_offsets(points)
    assert offsets[3] == (0.0, 0.0)
    assert len({(round(x, 6), round(y, 6)) for x, y in offsets[:3]}) == 3


def test_ten_models_render(tmp_path: Path):
    pytest.importorskip("matplotlib")
    models = [{"name": f"student-variant-{i}", "accuracy": 0.98 + i / 1000, "bytes": 1000 * (i + 1),
               "latency": [{"provider": "CPUExecutionProvider", "batch": 1, "threads": 1, "p50_ms": 0.02}]}
              for i in range(10)]
    _plot(tmp_path / "report.png", {"pipeline": "ten", "models": models})
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_latency_column_names_the_batch_it_shows():
    # [benchmark] batch_sizes = [32]: the column said "p50 ms (b1)" over batch-32 figures
    from compress.report import headers, table_rows

    def model(name: str, role: str, p50: dict) -> dict:
        return {"name": name, "role": role, "params": 10, "bytes": 2048, "metrics": {"accuracy": 0.9},
                "latency": [{"provider": "CPUExecutionProvider", "batch": b, "threads": 1, "p50_ms": v}
                            for b, v in p50.items()]}

    report = {"models": [model("teacher", "teacher", {32: 2.0, 8: 1.0}),
                         model("student", "student", {32: 0.5, 8: 0.25})], "primary_metric": {"name": "accuracy"}, "final": "student"}
    assert headers(report)[4] == "p50 ms (b8)"
    assert [r[4:] for r in table_rows(report)] == [["1.0000", "1.0x"], ["0.2500", "4.0x"]]
    report["models"][0]["latency"].append({"provider": "CPUExecutionProvider", "batch": 1, "threads": 1, "p50_ms": 0.1})
    assert headers(report)[4] == "p50 ms (b1)"  # one batch for every row: the student has none at 1
    assert [r[4:] for r in table_rows(report)] == [["0.1000", "1.0x"], ["-", "-"]]
