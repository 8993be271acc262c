"""End to end on the tiny pipeline: stages, report contract, cache hits, invalidation, --force."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from compress.cli import main
from compress.stages import stage_names
from tests.conftest import copy_folder, has_cuda

pytestmark = pytest.mark.e2e


def _run(folder, *args):
    return CliRunner().invoke(main, ["run", str(folder / "pipeline.toml"), "--quiet", *args])


def _run_with(folder, section: str):
    """Append a TOML section to the tiny pipeline, run it, and return (CLI result, report.json)."""
    toml = folder / "pipeline.toml"
    toml.write_text(toml.read_text() + section)
    result = _run(folder)
    return result, json.loads((folder / "runs/tiny/report.json").read_text())


def test_tiny_pipeline_end_to_end_then_cached(tiny_run, tmp_path):
    # execute: the first run is tiny_run's (from nothing); the second runs in a copy of its folder
    tiny_dir, first = tiny_run
    # assert: the TOML asks for cpu and cuda; CUDA is measured where onnxruntime has it, else recorded unavailable
    cuda = has_cuda()
    assert first.exit_code == 0, first.output
    report = json.loads((tiny_dir / "runs/tiny/report.json").read_text())
    assert report["schema"] == "compress.report/1"
    # on this tiny set the labels-only control beats the student on validation (98% vs 94%): the control ships
    assert report["final"] == "control"
    assert report["final_reason"].startswith("control: the labels-only control beat the distilled student on "
                                             "validation accuracy (98.00% vs 94.00%)")
    assert report["primary_metric"] == {"name": "accuracy", "higher_is_better": True}
    assert [s["name"] for s in report["stages"]] == ["teacher", "distill", "export", "benchmark"]
    assert all(s["status"] == "done" for s in report["stages"])
    models = {m["name"]: m for m in report["models"]}
    assert set(models) == {"teacher", "student", "control"}
    for m in models.values():
        assert m["format"] == "onnx" and (tiny_dir / "runs/tiny" / m["path"]).is_file()
        assert m["accuracy"] > 0.5  # ten classes: chance is 0.1
        assert m["parity"]["max_abs_diff"] <= 1e-4 and m["parity"]["top1_agreement"] == 1.0
        assert m["params"] > 0 and m["bytes"] > 0
        row = next(r for r in m["latency"] if r["batch"] == 1)
        assert row["provider"] == "CPUExecutionProvider" and row["p50_ms"] > 0
        assert row["ci95_p50_ms"][0] <= row["p50_ms"] <= row["ci95_p50_ms"][1]
        assert [u["provider"] for u in m["unavailable"]] == ([] if cuda else ["CUDAExecutionProvider"])
        assert {r["provider"] for r in m["latency"]} == {"CPUExecutionProvider", *(["CUDAExecutionProvider"] * cuda)}
    assert models["teacher"]["params"] > models["student"]["params"]
    assert "student" in first.output and "p50 ms" in first.output
    for name in ("report.md", "report.png"):
        assert (tiny_dir / "runs/tiny" / name).is_file()

    copy = copy_folder(tiny_dir, tmp_path)
    second = _run(copy)
    assert second.exit_code == 0, second.output
    again = json.loads((copy / "runs/tiny/report.json").read_text())
    assert [s["status"] for s in again["stages"]] == ["cached"] * 4
    assert {m["name"]: m["accuracy"] for m in again["models"]} == {m["name"]: m["accuracy"] for m in report["models"]}


def test_changing_a_key_reruns_that_stage_and_later(ran_dir):
    tiny_dir = ran_dir  # run once already (tiny_run)
    toml = tiny_dir / "pipeline.toml"
    toml.write_text(toml.read_text().replace("[distill]\nepochs = 10", "[distill]\nepochs = 9"))
    result = _run(tiny_dir)
    assert result.exit_code == 0, result.output
    statuses = {s["name"]: s["status"] for s in json.loads((tiny_dir / "runs/tiny/report.json").read_text())["stages"]}
    assert statuses == {"teacher": "cached", "distill": "done", "export": "done", "benchmark": "done"}


def test_a_stage_whose_artifacts_changed_under_the_same_key_reruns_every_later_stage(ran_dir):
    """The export stage's student.onnx replaced by different bytes under the same key, as a stage run again after a
    code change leaves it: the benchmark must time the new model, not stay cached on the old one (the keys chain
    the earlier stages' artifact digests, not only their configs). Rebuilt bytes that are identical keep it."""
    import shutil

    import onnx

    from compress.cache import file_sha256

    tiny_dir = ran_dir  # run once already (tiny_run)
    run_dir = tiny_dir / "runs/tiny"
    shutil.rmtree(run_dir / "export")  # rebuilt from the same student: the same bytes, so the benchmark stays cached
    assert _run(tiny_dir).exit_code == 0
    statuses = {s["name"]: s["status"] for s in json.loads((run_dir / "report.json").read_text())["stages"]}
    assert statuses == {"teacher": "cached", "distill": "cached", "export": "done", "benchmark": "cached"}
    model = onnx.load(str(run_dir / "export/student.onnx"))
    model.doc_string = "rebuilt by other code"
    onnx.save(model, str(run_dir / "export/student.onnx"))
    manifest_path = run_dir / "export/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["artifacts"] = {rel: file_sha256(run_dir / rel) for rel in manifest["artifacts"]}
    manifest_path.write_text(json.dumps(manifest))
    assert _run(tiny_dir).exit_code == 0
    statuses = {s["name"]: s["status"] for s in json.loads((run_dir / "report.json").read_text())["stages"]}
    assert statuses == {"teacher": "cached", "distill": "cached", "export": "cached", "benchmark": "done"}


def test_force_recomputes_and_same_seed_gives_same_accuracy(ran_dir):
    tiny_dir = ran_dir  # run once already (tiny_run): its report, copied, is the first run's
    before = json.loads((tiny_dir / "runs/tiny/report.json").read_text())
    assert _run(tiny_dir, "--force").exit_code == 0
    after = json.loads((tiny_dir / "runs/tiny/report.json").read_text())
    assert all(s["status"] == "done" for s in after["stages"])
    assert [m["accuracy"] for m in after["models"]] == [m["accuracy"] for m in before["models"]]


def test_tampered_artifact_is_not_trusted(ran_dir):
    tiny_dir = ran_dir  # run once already (tiny_run)
    weights = tiny_dir / "runs/tiny/distill/student.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # truncated as if a write had been cut short
    assert _run(tiny_dir).exit_code == 0
    statuses = {s["name"]: s["status"] for s in json.loads((tiny_dir / "runs/tiny/report.json").read_text())["stages"]}
    assert statuses["teacher"] == "cached" and statuses["distill"] == "done"


def test_python_api_mirrors_cli(tiny_dir):
    import compress

    report = compress.run(tiny_dir / "pipeline.toml", progress=False)
    assert report["final"] == "control"  # it beats the student on this tiny set (test_tiny_pipeline_end_to_end)
    cfg = compress.validate(tiny_dir / "pipeline.toml")
    assert stage_names(cfg) == ["teacher", "distill", "export", "benchmark"]


def test_quantize_stage_in_pipeline_reports_attempts_and_pick(ran_dir):
    tiny_dir = ran_dir  # teacher and distill from tiny_run's cache: the file's own, unchanged
    result, report = _run_with(tiny_dir, '\n[quantize]\nmode = "dynamic"\nmax_accuracy_drop = 0.05\n')
    assert result.exit_code == 0, result.output
    models = {m["name"]: m for m in report["models"]}
    assert "student-int8" in models and models["student-int8"]["role"] == "quantized"
    base = models["student-int8"]["quantization"]["from"]
    assert base == "control"  # the quantize stage takes the final model: the control beat the student here
    assert models["student-int8"]["bytes"] < models[base]["bytes"]
    pick = report["details"]["quantize"]
    assert report["final"] == {"quantized": "student-int8", "float": base}[pick["final"]]
    assert pick["why"].startswith(f"{pick['final']}: quantized vs float")
    # the pick's reason, then why the control was the model quantized (it was replaced by the pick's alone)
    assert report["final_reason"].startswith(f"{pick['why']}; control: the labels-only control beat the distilled")
    assert report["details"]["quantize"]["attempts"][0]["accepted"] is True
    # what was done before the attempts, and the activations kept in float for their outlier channels (none here)
    assert "quant_pre_process" in pick["preprocess"] and pick["outliers"] == []
    markdown = (tiny_dir / "runs/tiny/report.md").read_text()
    assert "## Quantization attempts" in markdown and f"Before the attempts: {pick['preprocess']}." in markdown
    # the int8 model's parity: against the float model it came from, on the 100 validation rows
    parity = models["student-int8"]["parity"]
    assert parity["against"] == base and parity["samples"] == 100 and 0 < parity["max_abs_diff"] < 5
    assert 0.8 <= parity["top1_agreement"] <= 1.0
    assert f"- student-int8 (vs {base}): max abs diff" in markdown


def test_quantize_budget_nobody_meets_writes_report_and_exits_1(tiny_dir):
    # one calibration example and no drop allowed: on these 400 digits (all but validation for training) no
    # quantized student meets the budget
    toml = tiny_dir / "pipeline.toml"
    toml.write_text(toml.read_text().replace("val_fraction = 0.25\n", "val_fraction = 0.25\ntest_fraction = 0\n"))
    result, report = _run_with(tiny_dir, '\n[quantize]\nmode = "static"\ncalibration_samples = 1\n'
                                         'max_accuracy_drop = 0.0\nfallback = false\n')
    assert result.exit_code == 1, result.output
    assert "quantize.max_accuracy_drop: no quantized model met the accuracy budget" in result.output
    assert "[quantize] mode = 'qat' fine-tunes the int8 model against the teacher" in result.output
    assert report["gate_failure"] and report["final"] == "student"  # without a test split, the student wins
    assert [s["status"] for s in report["stages"]] == ["done"] * 5  # the benchmark still ran: the report is whole
    # the summary table comes first, with its GATE FAILED line (it was never printed on a failed gate)
    assert "* final: student" in result.output and "GATE FAILED: quantize.max_accuracy_drop" in result.output


def test_prune_stage_in_pipeline_shrinks_and_reports_steps(ran_dir):
    tiny_dir = ran_dir  # teacher and distill from tiny_run's cache: the file's own, unchanged
    result, report = _run_with(tiny_dir, '\n[prune]\namount = 0.5\nsteps = 2\nfinetune_epochs = 2\nlatency_batch = 8\n')
    assert result.exit_code == 0, result.output
    models = {m["name"]: m for m in report["models"]}
    assert report["final"] == "student-pruned" and models["student-pruned"]["role"] == "pruned"
    assert models["student-pruned"]["params"] < 0.75 * models["control"]["params"]
    assert report["details"]["prune"]["from"] == "control"
    # the reason is the pruned model's, with the control's after it (it said only why the control beat the student)
    assert report["final_reason"].startswith("pruned from control; control: the labels-only control beat")
    assert models["student-pruned"]["parity"]["max_abs_diff"] <= 1e-4
    assert models["student-pruned"]["accuracy"] > 0.3
    steps = report["details"]["prune"]["steps"]
    assert [s["step"] for s in steps] == [0, 1, 2] and all(s["latency_ms"] > 0 for s in steps)
    assert "## Pruning (channel)" in (tiny_dir / "runs/tiny/report.md").read_text()
    # cached rerun rebuilds the pruned model from its safetensors (shapes restored), without pruning again
    again = _run(tiny_dir)
    assert again.exit_code == 0, again.output
    statuses = [s["status"] for s in json.loads((tiny_dir / "runs/tiny/report.json").read_text())["stages"]]
    assert statuses == ["cached"] * 5
    # prune exports every step at [export] opset to time it: changing the opset re-runs prune (and what follows)
    toml = tiny_dir / "pipeline.toml"
    toml.write_text(toml.read_text() + "\n[export]\nopset = 17\n")
    third = _run(tiny_dir)
    assert third.exit_code == 0, third.output
    statuses = {s["name"]: s["status"] for s in json.loads((tiny_dir / "runs/tiny/report.json").read_text())["stages"]}
    assert statuses == {"teacher": "cached", "distill": "cached", "prune": "done", "export": "done",
                        "benchmark": "done"}


def test_edge_stage_writes_ort_copy_and_readiness(ran_dir):
    tiny_dir = ran_dir  # teacher and distill from tiny_run's cache: the file's own, unchanged
    result, report = _run_with(tiny_dir, '\n[export]\nort_format = true\nfixed_batch = 1\n')
    assert result.exit_code == 0, result.output
    edge = report["edge"]
    assert edge["model"] == report["final"] == "control"
    run_dir = tiny_dir / "runs/tiny"
    assert (run_dir / edge["ort"]["ort_path"]).is_file() and (run_dir / edge["ort"]["config_path"]).is_file()
    assert edge["parity"]["max_abs_diff"] <= 1e-5 and edge["parity_ok"]
    providers = edge["readiness"]["providers"]
    nnapi = providers["NNAPI"]
    assert nnapi["nodes_total"] == 4 and len(nnapi["nodes"]) == 4  # every node listed
    assert nnapi["nodes_taken"] == 4 and nnapi["partitions"] == 1  # batch fixed to 1: NNAPI takes the whole MLP
    assert providers["XNNPACK"]["available"] is False and providers["XNNPACK"]["reason"]
    assert [s["name"] for s in report["stages"]][-1] == "edge"


def test_relative_config_path_and_output_dir_with_dotdot(tiny_dir, monkeypatch):
    # what `make demo` does: a relative path to the TOML and an output_dir that climbs out of its folder
    sub = tiny_dir / "pipelines"
    sub.mkdir()
    toml = (tiny_dir / "pipeline.toml").read_text().replace('output_dir = "runs/tiny"', 'output_dir = "../runs/tiny"')
    toml = toml.replace('"npz:tiny.npz"', '"npz:../tiny.npz"') + '\n[export]\nort_format = true\n'
    (sub / "pipeline.toml").write_text(toml)
    monkeypatch.chdir(tiny_dir)
    monkeypatch.syspath_prepend(str(tiny_dir))
    result = CliRunner().invoke(main, ["run", "pipelines/pipeline.toml", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tiny_dir / "runs/tiny/report.json").read_text())
    assert (tiny_dir / "runs/tiny" / report["edge"]["ort"]["ort_path"]).is_file()
    again = CliRunner().invoke(main, ["run", "pipelines/pipeline.toml", "--quiet"])
    assert again.exit_code == 0, again.output
    assert all(s["status"] == "cached" for s in json.loads((tiny_dir / "runs/tiny/report.json").read_text())["stages"])


def test_editing_the_model_code_beside_the_toml_reruns_its_stage(ran_dir):
    tiny_dir = ran_dir  # run once already (tiny_run)
    zoo = tiny_dir / "zoo.py"
    zoo.write_text(zoo.read_text() + "\n# a comment is enough: the file changed\n")
    assert _run(tiny_dir).exit_code == 0
    statuses = {s["name"]: s["status"] for s in json.loads((tiny_dir / "runs/tiny/report.json").read_text())["stages"]}
    assert statuses["teacher"] == "done" and statuses["benchmark"] == "done"


def test_benchmark_models_final_still_gives_every_model_its_size(ran_dir):
    # the models not timed showed size '-' (bytes null) although their .onnx files were on disk
    toml = ran_dir / "pipeline.toml"
    toml.write_text(toml.read_text().replace('providers = ["cpu", "cuda"]', 'providers = ["cpu"]\nmodels = "final"'))
    result = _run(ran_dir)
    assert result.exit_code == 0, result.output
    report = json.loads((ran_dir / "runs/tiny/report.json").read_text())
    onnx = [m for m in report["models"] if m["format"] == "onnx"]
    assert len(onnx) == 3  # teacher, student, control
    for model in onnx:
        assert model["bytes"] == (ran_dir / "runs/tiny" / model["path"]).stat().st_size, model["name"]
    timed = [m["name"] for m in report["models"] if m.get("latency")]
    assert timed == [report["final"]]
