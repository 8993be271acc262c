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
