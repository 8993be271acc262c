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
    ('[distill]\nepochs = "ten"\n', "distill.epochs: input should be a valid integer"),
    ('[quantize]\nmode = "int4"\n', "quantize.mode: expected 'static', 'dynamic' or 'fp16', got 'int4'"),
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
    path = write_toml(sub, BASE.replace('[teacher]\n', '[teacher]\ncheckpoint = "t.safetensors"\n'))
    with pytest.raises(CompressError, match=r"teacher.checkpoint: file not found: .*sub/t.safetensors"):
        load_config(path)
