"""report.json is a contract: every key path it had before the restructuring (tests/data/report_keys.json) is
still there. New keys are allowed; a renamed or dropped key breaks readers of old reports (compare, dashboards)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import absent_provider
from .test_pipeline import _run_with

pytestmark = pytest.mark.e2e

STORED = Path(__file__).parent / "data" / "report_keys.json"


def key_paths(obj: object, prefix: str = "") -> set[str]:
    """'a.b', 'models[].latency[].p50_ms', ...: every key path, list items collapsed to []."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = f"{prefix}.{key}" if prefix else key
            out |= {path} | key_paths(value, path)
    elif isinstance(obj, list):
        for value in obj:
            out |= key_paths(value, prefix + "[]")
    return out


def test_key_paths_collapse_lists_and_nest():
    doc = {"a": 1, "models": [{"latency": [{"p50_ms": 1.0}, {"p50_ms": 2.0, "x": {}}]}, {"name": "s"}]}
    assert key_paths(doc) == {"a", "models", "models[].latency", "models[].latency[].p50_ms",
                              "models[].latency[].x", "models[].name"}


def test_report_keeps_every_key_path_it_had_before_the_restructuring(ran_dir: Path):
    tiny_dir = ran_dir  # teacher and distill from tiny_run's cache: the file's own, unchanged
    # setup: the digits pipeline's shape (teacher trained, distill with control, ORT copy and readiness at batch 1),
    # and one provider that is missing here so 'unavailable' rows exist on any machine
    stored = json.loads(STORED.read_text())
    toml = tiny_dir / "pipeline.toml"
    text = toml.read_text()
    assert 'providers = ["cpu", "cuda"]' in text
    toml.write_text(text.replace('providers = ["cpu", "cuda"]', f'providers = ["cpu", "{absent_provider()[0]}"]'))
    # execute
    result, report = _run_with(tiny_dir, '\n[export]\nopset = 18\nort_format = true\nfixed_batch = 1\n')
    # assert
    assert result.exit_code == 0, result.output
    required = set(stored["paths"]) - set(stored["optional"])
    assert sorted(required - key_paths(report)) == []


def test_a_fixed_name_made_from_the_control_says_so_in_the_table():
    # 'student 0.2748 -> student-int8 0.4579' read as int8 gaining 18 points; it was quantized from the control
    from compress.report import table_rows

    report = {"primary_metric": {"name": "map50", "higher_is_better": True}, "final": "student-int8",
              "details": {"prune": {"from": "student"}},
              "models": [{"name": "control", "role": "control", "metrics": {"map50": 0.46}},
                         {"name": "student-int8", "role": "quantized", "quantization": {"from": "control"},
                          "metrics": {"map50": 0.45}},
                         {"name": "student-pruned", "role": "pruned", "metrics": {"map50": 0.44}}]}
    names = [row[0] for row in table_rows(report)]
    assert names == ["control", "student-int8 (from control) *", "student-pruned"]


def test_the_latency_table_says_which_sequence_length_each_row_is(tiny_run):
    # two rows per model at seq_lengths [16, 64], told apart by nothing in report.md
    import copy
    import json

    from compress.report import markdown

    folder, _ = tiny_run
    report = json.loads((folder / "runs/tiny/report.json").read_text())
    model = next(m for m in report["models"] if m.get("latency"))
    row = next(r for r in model["latency"] if r["provider"] == "CPUExecutionProvider")
    model["latency"] = [{**copy.deepcopy(row), "seq_length": seq} for seq in (16, 64)]
    text = markdown(report)
    assert f"| {model['name']} | CPUExecutionProvider | {row['batch']} (seq 16) |" in text
    assert f"| {model['name']} | CPUExecutionProvider | {row['batch']} (seq 64) |" in text
