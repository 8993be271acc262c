"""Whole pipelines on a tiny random BERT: text: data, hf: teacher, students cut from it, both tasks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from compress.cli import main
from tests.hf.conftest import make_bert, write_labelled, write_texts

pytestmark = pytest.mark.e2e

BENCH = """
[benchmark]
batch_sizes = [1]
seq_lengths = [8, 16]
min_runs = 10
min_seconds = 0.05
repetitions = 1
warmup_runs = 2
"""


def _write(tmp_path: Path, body: str) -> Path:
    make_bert(tmp_path / "bert")
    toml = tmp_path / "p.toml"
    toml.write_text('[pipeline]\nname = "t"\nthreads = 1\n' + body + BENCH)
    return toml


def test_embedding_pipeline_reports_cosine_and_overlap_per_model_and_reruns_from_cache(tmp_path):
    # setup
    write_texts(tmp_path / "corpus.txt", 160)
    toml = _write(tmp_path, """
[data]
source = "text:corpus.txt"
task = "embedding"
max_length = 16
batch_size = 16
[teacher]
model = "hf:bert"
[student]
from_teacher = { num_layers = 2 }
[distill]
epochs = 2
lr = 1e-3
hidden_weight = 1.0
relation_weight = 0.5
relation_bank = 64
[export]
ort_format = true
optimize = "transformer"
[quantize]
mode = "dynamic"
max_cosine_drop = 0.05
""")
    # execute
    first = CliRunner().invoke(main, ["run", str(toml), "--quiet"])
    report = json.loads((tmp_path / "runs" / "t" / "report.json").read_text())
    again = CliRunner().invoke(main, ["run", str(toml), "--quiet"])
    # assert
    assert first.exit_code == 0, first.output
    models = {m["name"]: m for m in report["models"]}
    assert set(models) == {"teacher", "student", "student-int8"}
    for m in models.values():
        assert 0.5 < m["cosine"] <= 1.0 + 1e-6 and 0 <= m["neighbour_overlap@10"] <= 1
        assert m["accuracy"] is None
        assert sorted(r["seq_length"] for r in m["latency"]) == [8, 16]
    assert models["teacher"]["cosine"] == pytest.approx(1.0)
    assert models["student"]["parity"]["max_abs_diff"] <= 1e-4
    distill = report["details"]["distill"]["student"]
    assert distill["kept_layers"] == [0, 3] and distill["layer_map"] == [0, 3]
    assert report["edge"]["ort"]["bytes"] > 0
    optimized = {k: v for k, v in report["details"]["export"].items() if k != "markdown"}
    assert set(optimized) == {"teacher", "student"} and all("kept" in o and "why" in o for o in optimized.values())
    shown = (tmp_path / "runs" / "t" / "report.md").read_text()  # in report.md too, not in report.json alone
    assert all(f"- {name}: {o['why']}\n" in shown for name, o in optimized.items())
    assert again.exit_code == 0 and all(s["status"] == "cached" for s in
                                        json.loads((tmp_path / "runs" / "t" / "report.json").read_text())["stages"])


def test_classification_student_beats_chance_and_has_a_control(tmp_path):
    write_labelled(tmp_path / "topics.tsv", 200)
    toml = _write(tmp_path, """
[data]
source = "text:topics.tsv"
label_column = "label"
max_length = 16
batch_size = 8
[teacher]
model = "hf:bert"
[teacher.train]
epochs = 8
lr = 1e-3
[student]
from_teacher = { layers = [0, 3] }
[distill]
epochs = 4
lr = 1e-3
control = true
""")
    result = CliRunner().invoke(main, ["run", str(toml), "--quiet"])
    assert result.exit_code == 0, result.output
    models = {m["name"]: m for m in json.loads((tmp_path / "runs" / "t" / "report.json").read_text())["models"]}
    assert set(models) == {"teacher", "student", "control"}
    assert models["teacher"]["accuracy"] > 0.8 and models["student"]["accuracy"] > 0.8  # chance: 0.5
    assert "cosine" not in models["student"]


def test_a_teacher_folder_with_its_own_head_is_used_without_training(tmp_path):
    from tests.hf.conftest import make_bert_classifier

    # setup: a folder fine-tuned elsewhere (labels in the opposite order to the data's), no [teacher.train]
    write_labelled(tmp_path / "topics.tsv", 200)
    make_bert_classifier(tmp_path / "clf", id2label={0: "vehicle", 1: "animal"},
                         train_on=write_labelled(tmp_path / "other.tsv", 200, seed=1))
    toml = tmp_path / "p.toml"
    toml.write_text('[pipeline]\nname = "t"\nthreads = 1\n' + """
[data]
source = "text:topics.tsv"
label_column = "label"
max_length = 16
batch_size = 8
[teacher]
model = "hf:clf"
[student]
from_teacher = { layers = [0, 3] }
[distill]
epochs = 2
lr = 1e-3
""" + BENCH)
    # execute
    result = CliRunner().invoke(main, ["run", str(toml), "--quiet"])
    # assert: the folder's head read in the right order (reversed, it would score below chance)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "t" / "report.json").read_text())
    models = {m["name"]: m for m in report["models"]}
    assert models["teacher"]["accuracy"] > 0.8 and models["student"]["accuracy"] > 0.8
    assert "hf folder, with its own classification head" in json.dumps(report)


def test_bad_hf_configs_are_exit_2_naming_the_key(tmp_path):
    write_texts(tmp_path / "corpus.txt", 40)
    toml = _write(tmp_path, '[data]\nsource = "text:corpus.txt"\nmax_length = 32\ntask = "embedding"\n[teacher]\n'
                            'model = "hf:nope"\n'
                            '[student]\nfrom_teacher = { num_layers = 2 }\n')
    result = CliRunner().invoke(main, ["validate", str(toml)])
    assert result.exit_code == 2 and "hf directory not found" in result.output and "nope" in result.output
    toml.write_text(toml.read_text().replace("hf:nope", "hf:bert").replace("num_layers = 2", "num_layers = 9"))
    result = CliRunner().invoke(main, ["validate", str(toml)])
    assert result.exit_code == 2 and "student.from_teacher: num_layers must be 1..4, got 9" in result.output
    toml.write_text(toml.read_text().replace('task = "embedding"\n', ""))
    result = CliRunner().invoke(main, ["validate", str(toml)])
    assert result.exit_code == 2 and "needs labels: set data.label_column" in result.output


@pytest.mark.slow  # slow: 20-25 s; tests/test_dist.py keeps two processes in make test
def test_a_text_pipeline_trains_on_two_processes_as_on_one(tmp_path):
    # setup: the same transformer classification pipeline, in one process and on two (torchrun + DDP, gloo)
    write_labelled(tmp_path / "topics.tsv", 160)
    body = """
[data]
source = "text:topics.tsv"
label_column = "label"
max_length = 16
batch_size = 8
[teacher]
model = "hf:bert"
[teacher.train]
epochs = 4
lr = 1e-3
[student]
from_teacher = { layers = [0, 3] }
[distill]
epochs = 3
lr = 1e-3
hidden_weight = 1.0
"""
    toml = _write(tmp_path, body)
    two = tmp_path / "two.toml"
    two.write_text(toml.read_text().replace('name = "t"', 'name = "t2"'))
    # execute
    one = CliRunner().invoke(main, ["run", str(toml), "--quiet"])
    many = CliRunner().invoke(main, ["run", str(two), "--quiet", "--nproc", "2"])
    # assert: both ran; the two-process run trained in workers (its job logs are there) to the same figures
    assert one.exit_code == 0, one.output
    assert many.exit_code == 0, many.output
    assert list((tmp_path / "runs" / "t2" / "distill" / "dist").glob("*/torchrun.log"))
    figures = [{m["name"]: m["accuracy"] for m in json.loads((tmp_path / "runs" / name / "report.json").read_text())
                ["models"]} for name in ("t", "t2")]
    assert figures[0].keys() == figures[1].keys() == {"teacher", "student"}
    for name in figures[0]:
        assert figures[1][name] > 0.7 and abs(figures[0][name] - figures[1][name]) <= 0.1, figures


def test_fp16_and_static_int8_quantize_a_text_student_through_the_one_quantize_function(tmp_path):
    # the text path used to fail on mode = "fp16" after distillation had run (it had its own quantizer)
    write_texts(tmp_path / "corpus.txt", 120)
    for mode in ("fp16", "static"):
        toml = _write(tmp_path, f"""
[data]
source = "text:corpus.txt"
task = "embedding"
max_length = 16
batch_size = 16
[teacher]
model = "hf:bert"
[student]
from_teacher = {{ num_layers = 2 }}
[distill]
epochs = 1
[quantize]
mode = "{mode}"
max_cosine_drop = 0.5
calibration_samples = 16
""")
        result = CliRunner().invoke(main, ["run", str(toml), "--quiet"])
        assert result.exit_code == 0, (mode, result.output)
        report = json.loads((tmp_path / "runs" / "t" / "report.json").read_text())
        name = "student-fp16" if mode == "fp16" else "student-int8"
        models = {m["name"]: m for m in report["models"]}
        assert models[name]["quantization"]["mode"] == mode and models[name]["metrics"]["cosine"] > 0.5
        assert report["details"]["quantize"]["gate"]["metric"]["name"] == "cosine"


@pytest.mark.qnn
def test_qat_trains_the_cpu_and_the_qnn_graph_of_a_text_student_and_htp_runs_both_whole(tmp_path):
    # three inputs (token ids, mask, token types) at a fixed length on HTP, the -inf mask made finite; PTQ and QAT
    # side by side on CPU and on the NPU, with the embedding task's own figure (cosine to the teacher) on HTP
    pytest.importorskip("onnxruntime_qnn")
    write_texts(tmp_path / "corpus.txt", 120)
    toml = _write(tmp_path, """
[data]
source = "text:corpus.txt"
task = "embedding"
max_length = 16
batch_size = 16
[teacher]
model = "hf:bert"
[student]
from_teacher = { num_layers = 2 }
[distill]
epochs = 1
[quantize]
mode = "qat"
qat_epochs = 1
max_cosine_drop = 0.5
calibration_samples = 16
[export]
ort_format = true
fixed_batch = 1
edge_targets = ["qnn"]
qnn_samples = 8
""")
    result = CliRunner().invoke(main, ["run", str(toml), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "t" / "report.json").read_text())
    qat = report["details"]["quantize"]["qat"]
    assert qat["side_by_side"]["parity"]["kind"] == "cosine" and qat["side_by_side"]["parity"]["ok"]
    assert {"drop_test", "test"} <= set(qat["qnn"]["qat"]) and qat["qnn"]["used"] in ("ptq", "qat")
    graphs = report["edge"]["qnn_graphs"]
    for name in ("ptq", "qat"):
        assert graphs[name]["nodes_on_htp"] == graphs[name]["nodes_total"] > 100
        assert graphs[name]["runs_without_fallback"] is True and graphs[name]["accuracy"]["samples"] == 8
        assert graphs[name]["accuracy"]["cosine_to_reference_htp"] > 0.5
    assert report["edge"]["qnn"]["seq"] == 8  # the benchmark's first sequence length
    md = (tmp_path / "runs" / "t" / "report.md").read_text()  # report.md showed the picked graph only
    for name, label in (("ptq", "post-training"), ("qat", "quantization-aware")):
        row = next(line for line in md.splitlines() if line.startswith(f"| {label}"))
        placed = f"| {graphs[name]['nodes_on_htp']}/{graphs[name]['nodes_total']} | yes | budget: "
        assert placed in row and ("(picked)" in row) == (graphs["used"] == name), row
