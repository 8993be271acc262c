"""compress compare on results that describe different things: a warning line, or exit 2 under --strict."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from compress.cli import main

ROW = {"provider": "CPUExecutionProvider", "batch": 1, "threads": 1, "p50_ms": 0.5}


def report(path: Path, pipeline: str, teacher_params: int, provider: str = "CPUExecutionProvider") -> str:
    row = {**ROW, "provider": provider}
    doc = {"schema": "compress.report/1", "pipeline": pipeline,
           "models": [{"name": "teacher", "params": teacher_params, "latency": [row]},
                      {"name": "student", "params": 100, "latency": [row]}]}
    path.write_text(json.dumps(doc))
    return str(path)


def bench(path: Path, shape: list) -> str:
    doc = {"schema": "compress.bench/1", "model": "m.onnx",
           "inputs": {"x": {"shape": shape, "type": "tensor(float)"}}, "latency": [ROW]}
    path.write_text(json.dumps(doc))
    return str(path)


def compare(*args: str):
    return CliRunner().invoke(main, ["compare", *args])


def test_two_runs_of_one_pipeline_compare_without_a_warning(tmp_path: Path):
    a, b = report(tmp_path / "a.json", "digits", 581050), report(tmp_path / "b.json", "digits", 581050)
    result = compare(a, b, "--strict")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_unrelated_pipelines_warn_and_go_on(tmp_path: Path):
    a, b = report(tmp_path / "a.json", "digits", 581050), report(tmp_path / "b.json", "cancer", 16962)
    result = compare(a, b)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"warning: compare: {a} and {b}: different pipelines ('digits' vs 'cancer'); their rows may compare "
        "unrelated models",
        f"warning: compare: {a} and {b}: model 'teacher' has 581,050 params in one and 16,962 in the other; their "
        "rows may compare unrelated models",
    ]
    assert "teacher" in result.stdout


def test_unrelated_pipelines_fail_under_strict(tmp_path: Path):
    a, b = report(tmp_path / "a.json", "digits", 581050), report(tmp_path / "b.json", "cancer", 16962)
    result = compare(a, b, "--strict")
    assert result.exit_code == 2
    assert result.stderr == (f"error: compare: {a} and {b} are not comparable: different pipelines ('digits' vs "
                             "'cancer'); compare two results of the same pipeline and model, or drop --strict to see "
                             "the rows anyway\n")


def test_different_providers_fail_under_strict(tmp_path: Path):
    a = report(tmp_path / "a.json", "digits", 581050)
    b = report(tmp_path / "b.json", "digits", 581050, provider="XnnpackExecutionProvider")
    result = compare(a, b, "--strict")
    assert result.exit_code == 2
    assert result.stderr == (f"error: compare: {a} and {b} are not comparable: different providers measured "
                             "(CPUExecutionProvider vs XnnpackExecutionProvider); compare two results of the same "
                             "pipeline and model, or drop --strict to see the rows anyway\n")


def test_bench_results_of_models_with_different_inputs_fail_under_strict(tmp_path: Path):
    a, b = bench(tmp_path / "a.json", ["batch", 1, 8, 8]), bench(tmp_path / "b.json", ["batch", 30])
    result = compare(a, b, "--strict")
    assert result.exit_code == 2
    assert result.stderr == (f"error: compare: {a} and {b} are not comparable: different model inputs (x ['batch', "
                             "1, 8, 8] tensor(float) vs x ['batch', 30] tensor(float)); compare two results of the "
                             "same pipeline and model, or drop --strict to see the rows anyway\n")


def test_bench_json_records_the_model_inputs(tmp_path: Path):
    import torch

    path = tmp_path / "m.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(path), input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    from compress.bench.identity import model_inputs

    assert model_inputs(path) == {"x": {"shape": ["batch", 4], "type": "tensor(float)"}}


def test_reports_of_models_with_different_input_shapes_fail_under_strict(tmp_path: Path):
    a, b = report(tmp_path / "a.json", "digits", 581050), report(tmp_path / "b.json", "digits", 581050)
    for path, shape in ((a, [1, 8, 8]), (b, [1, 16, 16])):
        doc = json.loads(Path(path).read_text())
        doc["inputs"] = {"input": {"shape": ["batch", *shape], "type": "tensor(float)"}}
        Path(path).write_text(json.dumps(doc))
    result = compare(a, b, "--strict")
    assert result.exit_code == 2
    assert "are not comparable: different model inputs (input ['batch', 1, 8, 8] tensor(float) vs input " \
           "['batch', 1, 16, 16] tensor(float))" in result.stderr


def test_cpus_with_different_int8_instruction_sets_warn(tmp_path: Path):
    a, b = report(tmp_path / "a.json", "digits", 581050), report(tmp_path / "b.json", "digits", 581050)
    for path, isa in ((a, ["avx2", "avx512f", "avx512_vnni"]), (b, ["avx2", "avx512f"])):
        doc = json.loads(Path(path).read_text())
        doc["environment"] = {"int8_isa": isa}
        Path(path).write_text(json.dumps(doc))
    result = compare(a, b, "--strict")
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"warning: compare: {a} and {b}: the two CPUs have different int8 instruction sets "
                             "(avx2, avx512f, avx512_vnni vs avx2, avx512f); int8 models' latency and even accuracy "
                             "(u8s8 saturation without VNNI) can differ for that alone\n")
