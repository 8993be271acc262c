"""Bring your own model and data (issue 14): each message a newcomer met is one exact line that says what to do.

The setup is a user's folder: `mymodels.py` with two MLP factories, `table.npz` (30 features, 2 classes) and a
pipeline.toml that loads the teacher from a checkpoint. Each case breaks one thing and asserts the whole line.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.test_bad_inputs import invoke

MYMODELS = '''
import torch.nn as nn


def big_mlp(input_shape, num_classes, hidden=32):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def small_mlp(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 8), nn.ReLU(), nn.Linear(8, num_classes))


def broken(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(7, num_classes))


class Spectrum(nn.Module):  # an audio-style front end: TorchScript export has no complex STFT
    def __init__(self, num_classes):
        super().__init__()
        self.head = nn.Linear(5, num_classes)

    def forward(self, x):
        import torch

        return self.head(torch.stft(x, 8, hop_length=4, window=torch.ones(8), return_complex=True).abs().mean(-1))


def spectrum(input_shape, num_classes):
    return Spectrum(num_classes)
'''

PIPELINE = '''
[pipeline]
name = "table"

[data]
source = "npz:table.npz"

[teacher]
model = "mymodels:big_mlp"
checkpoint = "teacher.pt"

[student]
model = "mymodels:small_mlp"

[benchmark]
providers = ["cpu"]
'''


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    import sys

    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 30)).astype(np.float32)
    np.savez(tmp_path / "table.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    (tmp_path / "mymodels.py").write_text(MYMODELS)
    (tmp_path / "pipeline.toml").write_text(textwrap.dedent(PIPELINE))
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        import mymodels
        importlib.reload(mymodels)
        teacher = mymodels.big_mlp((30,), 2)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mymodels", None)
    torch.save({"model": teacher.state_dict(), "epoch": 3}, tmp_path / "teacher.pt")
    return tmp_path


def replace(folder: Path, old: str, new: str) -> None:
    path = folder / "pipeline.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def error_line(folder: Path, command: str = "validate") -> str:
    """The one stderr line of `compress COMMAND pipeline.toml`, which must exit 2."""
    args = ["run", "pipeline.toml", "--quiet"] if command == "run" else ["validate", "pipeline.toml"]
    result = invoke(folder, *args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_user_folder_validates(user_dir: Path):
    result = invoke(user_dir, "validate", "pipeline.toml")
    assert result.exit_code == 0, result.output
    assert result.stdout == "pipeline.toml: ok (teacher, distill, export, benchmark)\n"


def test_a_student_the_exporter_cannot_take_is_found_at_validate_not_after_training(user_dir: Path):
    replace(user_dir, '"mymodels:small_mlp"', '"mymodels:spectrum"')
    assert error_line(user_dir) == (
        "error: pipeline.toml: student.model: mymodels:spectrum cannot be exported to ONNX, found before training: "
        "torch.onnx.export (torchscript) failed: SymbolicValueError: STFT does not currently support complex types; "
        "try [export] exporter = 'dynamo' or another opset")
    assert error_line(user_dir, "run") == error_line(user_dir)  # run: before its first training stage
    assert not (user_dir / "runs" / "table" / "distill").exists()
    toml = user_dir / "pipeline.toml"
    toml.write_text(toml.read_text() + "[export]\nexporter = 'dynamo'\n")
    assert invoke(user_dir, "validate", "pipeline.toml").exit_code == 0  # the trial is TorchScript's only


def test_builtin_cnn_on_tabular_data_names_the_shape_and_suggests_mlp(user_dir: Path):
    replace(user_dir, '"mymodels:small_mlp"', '"builtin:cnn-small"')
    assert error_line(user_dir) == (
        "error: pipeline.toml: student.model: builtin:cnn-small needs image examples shaped (C, H, W); the data's "
        "examples are (30,); use builtin:mlp for flat features, or your own module:factory")


def test_builtin_mlp_takes_an_int_hidden(user_dir: Path):
    replace(user_dir, 'model = "mymodels:small_mlp"', 'model = "builtin:mlp"\nkwargs = { hidden = 16 }')
    assert invoke(user_dir, "validate", "pipeline.toml").exit_code == 0


def test_builtin_mlp_bad_hidden_says_it_wants_a_list(user_dir: Path):
    replace(user_dir, 'model = "mymodels:small_mlp"', 'model = "builtin:mlp"\nkwargs = { hidden = "wide" }')
    assert error_line(user_dir) == ("error: pipeline.toml: student.kwargs: builtin:mlp: hidden: expected a layer width "
                                    "or a list of widths like [64, 64], got 'wide'")


@pytest.mark.parametrize("source, hint", [("cancer.npz", "npz:cancer.npz"), ("npx:table.npz", "npz:table.npz"),
                                          ("mymodels:data", "python:mymodels:data"), ("digit", "digits")])
def test_data_source_without_its_prefix_suggests_one(user_dir: Path, source: str, hint: str):
    replace(user_dir, '"npz:table.npz"', f'"{source}"')
    assert error_line(user_dir) == ("error: pipeline.toml: data.source: expected 'digits', 'npz:PATH', 'images:DIR', "
                                    f"'text:PATH' or 'python:module:function', got '{source}'; did you mean '{hint}'?")


def test_factory_typo_suggests_the_close_name(user_dir: Path):
    replace(user_dir, "mymodels:big_mlp", "mymodels:bigmlp")
    assert error_line(user_dir) == ("error: pipeline.toml: teacher.model: module 'mymodels' has no attribute "
                                    "'bigmlp'; did you mean 'mymodels:big_mlp'?")


def test_factory_far_from_any_name_lists_the_callables(user_dir: Path):
    replace(user_dir, "mymodels:big_mlp", "mymodels:resnet")
    assert error_line(user_dir) == ("error: pipeline.toml: teacher.model: module 'mymodels' has no attribute "
                                    "'resnet'; its public callables are: Spectrum, big_mlp, broken, small_mlp, "
                                    "spectrum")


@pytest.mark.parametrize("layout", ["state_dict", "model_state_dict", "model", "lightning", "module-prefix"])
def test_common_checkpoint_layouts_load(user_dir: Path, layout: str):
    import torch

    state = torch.load(user_dir / "teacher.pt", weights_only=True)["model"]
    if layout == "lightning":
        ckpt = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3, "global_step": 30}
    elif layout == "module-prefix":
        ckpt = {f"module.{k}": v for k, v in state.items()}
    else:
        ckpt = {layout: state, "epoch": 3}
    torch.save(ckpt, user_dir / "teacher.pt")
    result = invoke(user_dir, "validate", "pipeline.toml")
    assert result.exit_code == 0, result.output


def test_checkpoint_dict_without_weights_names_its_keys(user_dir: Path):
    import torch

    state = torch.load(user_dir / "teacher.pt", weights_only=True)["model"]
    torch.save({"weights_v2": state, "epoch": 3}, user_dir / "teacher.pt")
    assert error_line(user_dir) == (
        f"error: pipeline.toml: teacher.checkpoint: {user_dir / 'teacher.pt'} holds a dict with keys 'weights_v2', "
        "'epoch' but no state_dict under 'state_dict', 'model_state_dict', 'model'; name the entry with [teacher] "
        "checkpoint_key, or save model.state_dict() alone, e.g. save_file(model.state_dict(), 'teacher.safetensors')")


def test_checkpoint_key_names_the_entry_and_a_wrong_one_lists_the_keys(user_dir: Path):
    import torch

    state = torch.load(user_dir / "teacher.pt", weights_only=True)["model"]
    torch.save({"weights_v2": state, "epoch": 3}, user_dir / "teacher.pt")
    toml = (user_dir / "pipeline.toml").read_text()
    (user_dir / "pipeline.toml").write_text(toml.replace("[teacher]\n", "[teacher]\ncheckpoint_key = 'weights_v2'\n"))
    assert invoke(user_dir, "validate", "pipeline.toml").exit_code == 0
    (user_dir / "pipeline.toml").write_text(toml.replace("[teacher]\n", "[teacher]\ncheckpoint_key = 'ema'\n"))
    assert error_line(user_dir) == (
        f"error: pipeline.toml: teacher.checkpoint_key: {user_dir / 'teacher.pt'} has no state_dict under 'ema' "
        "(its keys: 'weights_v2', 'epoch'); set checkpoint_key to the entry that holds the weights")


def test_whole_model_checkpoint_is_refused_with_the_conversion(user_dir: Path):
    import sys

    import torch

    sys.path.insert(0, str(user_dir))
    try:
        import mymodels
        torch.save(mymodels.big_mlp((30,), 2), user_dir / "teacher.pt")
    finally:
        sys.path.remove(str(user_dir))
        sys.modules.pop("mymodels", None)
    assert error_line(user_dir) == (
        f"error: pipeline.toml: teacher.checkpoint: refused {user_dir / 'teacher.pt'}: it needs code to load (a "
        "pickled object, e.g. a whole model saved with torch.save(model)), and loading it would run that code; "
        "convert it once where it was made: from safetensors.torch import save_file; "
        "save_file(model.state_dict(), 'teacher.safetensors')")


def _strict_cuda(d: Path) -> str:
    import onnxruntime as ort

    replace(d, 'providers = ["cpu"]', 'providers = ["cpu", "cuda"]\nstrict = true')
    return (f"error: pipeline.toml: benchmark.providers: 'cuda' (CUDAExecutionProvider) is not available in "
            f"onnxruntime {ort.__version__} here (available: {', '.join(ort.get_available_providers())}); install the "
            "onnxruntime build that has it, drop it from providers, or set strict = false")


def _broken_student(d: Path) -> str:
    replace(d, "mymodels:small_mlp", "mymodels:broken")
    return ("error: pipeline.toml: student.model: mymodels:broken fails on a batch of shape (2, 30) from the data: "
            "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x30 and 7x2)")


def _bad_checkpoint(d: Path) -> str:
    (d / "teacher.pt").write_bytes(b"not a checkpoint")
    return (f"error: pipeline.toml: teacher.checkpoint: cannot read {d / 'teacher.pt'} as a torch checkpoint "
            "(it is neither a torch.save zip nor a pickle); is it the right file?")


@pytest.mark.parametrize("breakage", [_strict_cuda, _broken_student, _bad_checkpoint])
def test_validate_rejects_what_run_rejects_with_the_same_line(user_dir: Path, breakage):
    import onnxruntime as ort

    if breakage is _strict_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is installed here")
    expected = breakage(user_dir)
    assert error_line(user_dir, "validate") == expected
    assert error_line(user_dir, "run") == expected
    assert not (user_dir / "runs").exists() or not any((user_dir / "runs").rglob("*.safetensors"))


LABEL_GAP = ("pipeline.toml: data.source: labels run 0..2 but these values never occur: 1; models get 3 outputs, one "
             "per label value; renumber the labels 0..1 if the gaps are not meant")


def _labels_with_a_gap(user_dir: Path) -> None:
    """The table's labels doubled: 0 and 2, label 1 never occurs; the teacher trained here (its checkpoint has 2
    outputs)."""
    with np.load(user_dir / "table.npz") as z:
        x, y = z["x"], z["y"]
    np.savez(user_dir / "table.npz", x=x, y=y * 2)
    replace(user_dir, 'checkpoint = "teacher.pt"', '[teacher.train]\nepochs = 1')


def test_labels_with_gaps_are_accepted_with_a_warning(user_dir: Path, caplog: pytest.LogCaptureFixture):
    _labels_with_a_gap(user_dir)
    result = invoke(user_dir, "validate", "pipeline.toml")
    assert result.exit_code == 0, result.output
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [f"warning: {LABEL_GAP}"]


def test_what_the_console_says_of_the_data_is_in_the_reports_warnings(user_dir: Path):
    # the label-gap and never-trained warnings were printed, and report.json / report.md said nothing of them
    from compress.config import load_config
    from compress.data import load_data
    from compress.report import data_section

    _labels_with_a_gap(user_dir)
    cfg = load_config(user_dir / "pipeline.toml")
    data = load_data(cfg.data, seed=0, base_dir=user_dir, origin="pipeline.toml: data.source")
    assert data_section(data, [], {})["warnings"] == [LABEL_GAP]


def test_a_data_warning_still_reaches_the_console_without_verbose(user_dir: Path):
    # keeping the data's warnings for the report silenced logging's last resort: no console line without -v (a
    # subprocess: pytest's own log handlers would stand in for the console here)
    import subprocess
    import sys

    _labels_with_a_gap(user_dir)
    done = subprocess.run([sys.executable, "-m", "compress", "validate", "pipeline.toml"], cwd=user_dir,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"warning: {LABEL_GAP}" in done.stderr


def test_the_model_codes_digest_follows_the_local_modules_it_imports(tmp_path: Path):
    # a layers.py that mymodels.py imports changed from ReLU to Tanh, and every stage stayed cached: old weights
    # loaded into new code
    from compress.cache import file_sha256, source_digest

    (tmp_path / "pkg").mkdir()
    (tmp_path / "mymodels.py").write_text("import torch\nfrom layers import ACT\nimport pkg.blocks\n")
    (tmp_path / "layers.py").write_text("from helpers import scale\nACT = 'relu'\n")
    (tmp_path / "helpers.py").write_text("scale = 1.0\n")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "blocks.py").write_text("WIDTH = 8\n")
    (tmp_path / "unrelated.py").write_text("x = 1\n")
    before = source_digest(tmp_path, "mymodels:mlp")
    for name, text in (("layers.py", "from helpers import scale\nACT = 'tanh'\n"), ("helpers.py", "scale = 2.0\n"),
                       ("pkg/blocks.py", "WIDTH = 16\n")):
        (tmp_path / name).write_text(text)
        after = source_digest(tmp_path, "mymodels:mlp")
        assert after != before, name
        before = after
    (tmp_path / "unrelated.py").write_text("x = 2\n")
    assert source_digest(tmp_path, "mymodels:mlp") == before
    assert source_digest(tmp_path, "helpers:scale") == file_sha256(tmp_path / "helpers.py")  # one file: as before
    # a package's relative imports (from .layers import, from . import blocks), as zoo.net:build reads them
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "__init__.py").write_text("")
    (tmp_path / "zoo" / "net.py").write_text("from .layers import ACT\nfrom . import blocks\n")
    (tmp_path / "zoo" / "layers.py").write_text("ACT = 'relu'\n")
    (tmp_path / "zoo" / "blocks.py").write_text("from ..helpers import scale\n")
    before = source_digest(tmp_path, "zoo.net:build")
    for name in ("zoo/layers.py", "zoo/blocks.py", "helpers.py"):
        (tmp_path / name).write_text((tmp_path / name).read_text() + "# edited\n")
        after = source_digest(tmp_path, "zoo.net:build")
        assert after != before, name
        before = after


def test_the_module_beside_each_config_is_the_one_imported(tmp_path):
    # in one process (a notebook, compress.run twice) a second folder's mymodels.py was the first folder's, and an
    # edited file the old code, while the stage cache hashed the file on disk
    import os
    import sys

    from compress.imports import import_object

    one, two = tmp_path / "one", tmp_path / "two"
    for folder, value in ((one, 1), (two, 2)):
        folder.mkdir()
        (folder / "mymodels_beside.py").write_text(f"def f():\n    return {value}\n")
    try:
        assert import_object("mymodels_beside:f", one, "student.model")() == 1
        assert import_object("mymodels_beside:f", two, "student.model")() == 2
        source = two / "mymodels_beside.py"
        source.write_text("def f():\n    return 3\n")
        os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
        assert import_object("mymodels_beside:f", two, "student.model")() == 3
        assert import_object("mymodels_beside:f", two, "student.model") is import_object("mymodels_beside:f", two,
                                                                                         "student.model")
    finally:
        sys.modules.pop("mymodels_beside", None)


def test_a_module_the_user_imported_is_kept_and_a_package_beside_each_config_is_its_own(tmp_path):
    # re-importing a module the user (or their data module) had imported made two copies of its classes: isinstance
    # and pickling failed across them; a dotted name still came from the first folder's package
    import importlib
    import pickle
    import sys

    from compress.imports import import_object

    one, two = tmp_path / "one", tmp_path / "two"
    for folder, value in ((one, 1), (two, 2)):
        (folder / "pkg_beside").mkdir(parents=True)
        (folder / "pkg_beside" / "__init__.py").write_text("")
        (folder / "pkg_beside" / "models.py").write_text(f"def f():\n    return {value}\n")
    (one / "mine_beside.py").write_text("class Net:\n    pass\n\ndef net():\n    return Net()\n")
    sys.path.insert(0, str(one))
    try:
        mine = importlib.import_module("mine_beside")  # the user's own import, before compress
        made = import_object("mine_beside:net", one, "student.model")()
        assert isinstance(made, mine.Net) and pickle.loads(pickle.dumps(made)).__class__ is mine.Net
        assert import_object("pkg_beside.models:f", one, "student.model")() == 1
        assert import_object("pkg_beside.models:f", two, "student.model")() == 2
    finally:
        sys.path.remove(str(one))
        for name in [n for n in sys.modules if n.startswith(("mine_beside", "pkg_beside"))]:
            del sys.modules[name]
