"""Config loading: defaults, keyed one-line errors, path resolution."""
from __future__ import annotations

import pytest

from compress.config import load_config
from compress.stages import stage_names
from compress.errors import CompressError
from tests.conftest import write_toml

BASE = """
[pipeline]
name = "x"
[teacher]
model = "builtin:cnn-large"
[teacher.train]
epochs = 1
[student]
model = "builtin:cnn-small"
"""


def test_minimal_file_gets_documented_defaults(tmp_path):
    cfg = load_config(write_toml(tmp_path, BASE))
    assert stage_names(cfg) == ["teacher", "distill", "export", "benchmark"]
    assert cfg.run_dir == tmp_path / "runs" / "x"
    assert cfg.distill.temperature == 4.0 and cfg.distill.alpha == 0.3
    assert cfg.benchmark.providers == ("cpu",) and cfg.export.opset == 18


def test_optional_sections_switch_stages_on(tmp_path):
    cfg = load_config(write_toml(tmp_path, BASE + '[prune]\namount = 0.5\n[quantize]\nmode = "dynamic"\n'))
    assert stage_names(cfg) == ["teacher", "distill", "prune", "export", "quantize", "benchmark"]


@pytest.mark.parametrize("extra, message", [
    ('[distill]\ntemprature = 2.0\n', "distill.temprature: unknown key; did you mean 'temperature'?"),
    ('[distill]\ntemperature = 0\n', "distill.temperature: input should be greater than 0, got 0"),
    ('[distill]\nepochs = "ten"\n', "distill.epochs: expected an integer, got the string 'ten'"),
    ('[distill]\nepochs = "3"\n', "distill.epochs: expected an integer, got the string '3' (write it without "
                                  "quotes)"),
    ('[distill]\ncontrol = "no"\n', "distill.control: expected true or false, got the string 'no'"),
    ('[benchmark]\nbatch_sizes = [8, true]\n', "benchmark.batch_sizes: entry 1: expected an integer, got true"),
    ('[quantize]\nmode = "int4"\n', "quantize.mode: expected 'static', 'dynamic', 'fp16' or 'qat', got 'int4'"),
    ('[benchmark]\nproviders = ["gpu"]\n', "benchmark.providers: unknown provider 'gpu'; did you mean 'cpu'?"),
    ('[data]\nsource = "csv:x.csv"\n', "data.source: expected 'digits', 'npz:PATH', 'images:DIR', 'text:PATH' or "
                                       "'python:module:function'"),
    ('[student2]\nmodel = "x"\n', "student2: unknown key; did you mean 'student'?"),
    ('[benchmark]\nproviders = ["cpu", "cuda"]\nprovider_options = { cdua = { device_id = 0 } }\n',
     "benchmark.provider_options: unknown provider 'cdua'; did you mean 'cuda'?"),
    ('[benchmark]\nprovider_options = { cuda = { device_id = 0 } }\n',
     "benchmark.provider_options: options for 'cuda', which is not in providers ['cpu']; add it there or remove "
     "its options"),
])
def test_bad_values_are_one_keyed_line(tmp_path, extra, message):
    path = write_toml(tmp_path, BASE + extra)
    with pytest.raises(CompressError) as err:
        load_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_config_lists_cannot_be_changed_in_place(tmp_path):
    cfg = load_config(write_toml(tmp_path, BASE))
    with pytest.raises(AttributeError):
        cfg.benchmark.providers.append("cuda")  # a tuple: the frozen config stays what the file said
    assert cfg.benchmark.providers == ("cpu",)


def test_toml_syntax_error_has_line(tmp_path):
    path = write_toml(tmp_path, BASE + "[distill\n")
    with pytest.raises(CompressError, match=r"TOML syntax error: .*\(at line 10, column 9\)"):
        load_config(path)


def test_paths_resolve_relative_to_the_file(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    text = BASE.replace('[teacher]\n', '[teacher]\ncheckpoint = "t.safetensors"\n')
    text = text.replace("[teacher.train]\nepochs = 1\n", "")
    path = write_toml(sub, text)
    with pytest.raises(CompressError, match=r"teacher.checkpoint: file not found: .*sub/t.safetensors"):
        load_config(path)


TEXT = """
[pipeline]
name = "x"
[data]
source = "text:t.txt"
task = "embedding"
[teacher]
model = "hf:bert"
[student]
from_teacher = { num_layers = 2 }
"""


@pytest.mark.parametrize("base, extra, message", [
    (TEXT, "[distill]\ntemperature = 2.0\n",
     "distill.temperature: the embedding task has no labels or class probabilities (the student learns the "
     "teacher's embeddings); remove it (data.task = 'embedding')"),
    (TEXT, "[distill]\ncontrol = true\n", "distill.control: the embedding task has no labels to train a "
                                          "labels-only control on"),
    (TEXT, "[prune]\namount = 0.5\n", "prune: channel pruning is not built for hf: (transformer) models"),
    (TEXT, "[quantize]\nmax_accuracy_drop = 0.01\n",
     "quantize.max_accuracy_drop: this pipeline's gate is on cosine (the embedding task); set "
     "quantize.max_cosine_drop instead"),
    (TEXT.replace('task = "embedding"', 'task = "tensors"'), "", "data.task: text models (hf: TextModel) give "
                                                                 "logits or a pooled embedding"),
    (BASE, "[distill]\nhidden_weight = 1.0\n", "distill.hidden_weight: intermediate-layer KD needs an hf: "
                                               "(transformer) teacher and student"),
    (BASE, "[distill]\nloss = \"cosine\"\n", "distill.loss: the classification task has its own loss; remove "
                                             "the key"),
    (BASE, "[distill]\noutput_weights = { boxes = 2.0 }\n", "distill.output_weights: classification has no such "
                                                            "setting; remove it (data.task = 'classification')"),
    (BASE, "[data]\nlabel_column = \"y\"\n", "data.label_column: applies to text: sources only"),
    (BASE.replace('"builtin:cnn-small"', '"builtin:cnn-small"\npooling = "cls"'), "",
     "student.pooling: pooling applies to hf: text models"),
    (TEXT.replace('task = "embedding"', 'task = "classification"').replace('"hf:bert"', '"hf:bert"\npooling = "cls"'),
     "", "teacher.pooling: applies to the embedding task (the pooled sentence embedding); a text classifier's head "
         "reads the first token ([CLS]): remove the key"),
    (BASE.replace("[student]", "[student]\nfrom_teacher = { num_layers = 2 }"), "",
     "student: give either model = '...' or from_teacher = { ... }"),
    (BASE, "[export]\noptimize = \"transformer\"\n", "export.optimize: ONNX Runtime's transformer optimizer is "
                                                    "for hf: (transformer) models"),
    (BASE, "[data]\ntask = \"tensors\"\n", "data.task: digits data carries class labels: use 'classification'"),
    (BASE, "[evaluate]\nmetric = \"m:f\"\n[quantize]\nmax_accuracy_drop = 0.01\n",
     "quantize.max_accuracy_drop: this pipeline's gate is on your metric m:f; set quantize.max_metric_drop "
     "instead"),
])
def test_a_key_the_task_or_family_cannot_use_is_refused_at_load(tmp_path, base, extra, message):
    # the file alone decides: nothing is trained, no data or model is read
    path = write_toml(tmp_path, base + extra)
    with pytest.raises(CompressError) as err:
        load_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


@pytest.mark.parametrize("extra, message", [
    ("freeze_embeddings = true\n", "distill.freeze_embeddings: builtin:cnn-small has no nn.Embedding layers to "
                                    "freeze; remove the key, or name parameters in freeze = [...]"),
    # a pattern typo froze nothing and trained everything, without a word
    ('freeze = ["0.0.*", "nosuch.*"]\n', "distill.freeze: 'nosuch.*' matches no parameter of builtin:cnn-small (its "
                                          "names: 0.0.weight, 0.1.weight, 0.1.bias, 2.0.weight, ...)"),
])
def test_freezing_what_the_model_lacks_is_refused_before_training(tmp_path, extra, message):
    from compress.config import check_before_training

    path = write_toml(tmp_path, BASE + "[distill]\n" + extra)
    with pytest.raises(CompressError) as err:
        check_before_training(load_config(path))
    assert str(err.value) == f"{path}: {message}"


def test_a_checkpoint_and_teacher_train_together_are_refused(tmp_path):
    # the checkpoint was loaded and [teacher.train] silently ignored (though its keys still re-ran the teacher stage)
    (tmp_path / "t.safetensors").write_bytes(b"")
    path = write_toml(tmp_path, BASE.replace('[teacher]\n', '[teacher]\ncheckpoint = "t.safetensors"\n', 1))
    with pytest.raises(CompressError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: teacher: give checkpoint (a trained teacher) or [teacher.train] (train one "
                              "here), not both")


def test_data_labels_without_a_label_column_is_refused(tmp_path):
    # accepted without a word on a .txt embedding file, where it closed nothing
    from pathlib import Path

    from compress.config import parse_config

    raw = {"pipeline": {"name": "t"}, "data": {"source": "text:s.txt", "task": "embedding", "labels": ["a", "b"]},
           "teacher": {"model": "hf:bert"}, "student": {"from_teacher": {"num_layers": 1}}}
    with pytest.raises(CompressError, match=r"^p.toml: data.labels: closes the set of data.label_column's values, "
                                            r"and the file sets no label_column$"):
        parse_config(raw, Path("p.toml"))
