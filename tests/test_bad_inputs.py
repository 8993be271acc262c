"""The bad-input battery: every user error through the real CLI is one line, exit 2, no traceback, no partial file.

Each case starts from the tiny pipeline (tests/conftest.py `tiny_dir`), breaks one thing, runs `compress ...` through
click's CliRunner and checks: the exit code, exactly one non-empty line on stderr starting "error: " that names the
file and the key or line, no "Traceback" anywhere (it appears only with -v), and no `*.tmp` left anywhere.
"""
from __future__ import annotations

import errno
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from compress.cli import main
from tests.conftest import absent_provider

ABSENT, ABSENT_NAME = absent_provider()  # a provider this machine's onnxruntime lacks (CUDA on a CPU box)

# Extra factories next to the fixture's zoo.py: a forward that goes NaN, one that is slow (for the lock test).
EXTRA_ZOO = '''
import time
from pathlib import Path

import torch
import torch.nn as nn


class NaNOut(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out * float("nan") if self.training else out


def nan_student(input_shape=(1, 8, 8), num_classes=10):
    return NaNOut(num_classes)


class Sleepy(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        if self.training:
            Path("started").touch()
            time.sleep(0.2)
        return self.fc(x.flatten(1))


def sleepy_teacher(input_shape=(1, 8, 8), num_classes=10):
    return Sleepy(num_classes)


def raises(input_shape=(1, 8, 8), num_classes=10):
    raise RuntimeError("factory exploded")
'''


class Payload:
    """Unpickling this runs `touch <marker>`: the hostile checkpoint the loader must refuse, never execute."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def invoke(folder: Path, *args: object, monkeypatch: pytest.MonkeyPatch | None = None) -> Result:
    """Run `compress ARGS` from `folder` (the config's folder), exceptions left to the CLI as a user would see."""
    old = Path.cwd()
    os.chdir(folder)
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)


def leftovers(folder: Path) -> list[str]:
    """Temp files a half-finished write would leave behind."""
    return sorted(str(Path(d, f).relative_to(folder)) for d, _, files in os.walk(folder) for f in files
                  if f.endswith(".tmp"))


def assert_one_line_error(result: Result, folder: Path, *fragments: str, code: int = 2) -> str:
    """Exit `code`, one stderr line 'error: ...' holding every fragment, no traceback, nothing half-written."""
    detail = f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}\nexc: {result.exception!r}"
    assert result.exit_code == code, detail
    assert isinstance(result.exception, SystemExit), detail  # not an uncaught exception turned into exit 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, detail
    line = lines[0]
    assert line.startswith("error: "), detail
    assert "Traceback" not in result.output, detail
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert leftovers(folder) == []
    return line


def edit(folder: Path, old: str, new: str) -> None:
    """Replace `old` (which must be there) by `new` in the folder's pipeline.toml."""
    path = folder / "pipeline.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def set_key(folder: Path, section: str, key: str, value: str | None, *, rename: str | None = None) -> None:
    """In [section] of pipeline.toml: set `key = value` (added when absent), drop it (value None) or rename it."""
    path = folder / "pipeline.toml"
    lines = path.read_text().splitlines()
    start = lines.index(f"[{section}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    at = next((i for i in range(start + 1, end) if lines[i].split("=")[0].strip() == key), None)
    if at is None:
        assert value is not None and rename is None, (section, key)
        lines.insert(start + 1, f"{key} = {value}")
    elif rename is not None:
        lines[at] = f"{rename} ={lines[at].split('=', 1)[1]}"
    elif value is None:
        del lines[at]
    else:
        lines[at] = f"{key} = {value}"
    path.write_text("\n".join(lines) + "\n")


def save_npz(folder: Path, name: str = "tiny.npz", **arrays: np.ndarray) -> None:
    np.savez(folder / name, **arrays)


def tiny_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / "tiny.npz") as z:
        return z["x"], z["y"]


def use_checkpoint(folder: Path, name: str) -> None:
    """Point [teacher] at a checkpoint and drop [teacher.train]."""
    path = folder / "pipeline.toml"
    text = path.read_text()
    start = text.index("[teacher.train]")
    end = text.index("[", start + 1)
    path.write_text(text[:start] + text[end:])
    set_key(folder, "teacher", "checkpoint", f'"{name}"')


def teacher_state() -> dict:
    import torch.nn as nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return model.state_dict()


# --- the config file ---------------------------------------------------------------------------------------------

def _syntax(d: Path) -> None:
    set_key(d, "pipeline", "name", '"tiny')


def _big(d: Path) -> None:
    with open(d / "pipeline.toml", "a") as f:
        f.write("#" * 1_100_000 + "\n")


def _latin1(d: Path) -> None:
    set_key(d, "pipeline", "name", '"t\u00efny"')
    (d / "pipeline.toml").write_bytes((d / "pipeline.toml").read_text().encode("latin-1"))


def _prune_amount(value: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        with open(d / "pipeline.toml", "a") as f:
            f.write(f"\n[prune]\namount = {value}\n")
    return setup


def _key(section: str, key: str, value: str | None, *, rename: str | None = None) -> Callable[[Path], None]:
    return lambda d: set_key(d, section, key, value, rename=rename)


CONFIG_CASES = {
    "toml-syntax": (_syntax, ["pipeline.toml", "TOML syntax error", "line 3", "column"]),
    "unknown-section": (lambda d: edit(d, "[distill]", "[distil]"), ["pipeline.toml", "distil: unknown key",
                                                                        "did you mean 'distill'"]),
    "unknown-nested-key": (_key("distill", "control", None, rename="controll"),
                           ["pipeline.toml", "distill.controll: unknown key", "did you mean 'control'"]),
    "unknown-subsection-key": (_key("teacher.train", "epochs", None, rename="epoch"),
                               ["teacher.train.epoch: unknown key", "did you mean 'epochs'"]),
    "wrong-type": (_key("data", "batch_size", '"thirty-two"'), ["pipeline.toml", "data.batch_size", "integer",
                                                               "'thirty-two'"]),
    "negative-epochs": (_key("distill", "epochs", "-3"), ["pipeline.toml", "distill.epochs", "greater than or equal to 1", "got -3"]),
    "zero-temperature": (_key("distill", "temperature", "0"), ["distill.temperature", "greater than 0", "got 0"]),
    "val-fraction-1.5": (_key("data", "val_fraction", "1.5"), ["data.val_fraction", "less than 1", "got 1.5"]),
    "prune-amount-1.5": (_prune_amount("1.5"), ["prune.amount", "1.5"]),
    "prune-amount-0": (_prune_amount("0"), ["prune.amount", "got 0"]),
    "lr-too-high": (_key("teacher.train", "lr", "1e9"), ["teacher.train.lr", "less than or equal to 10"]),
    "missing-required-key": (_key("pipeline", "name", None), ["pipeline.toml", "pipeline.name: required key is "
                                                                               "missing"]),
    "bad-choice": (_key("distill", "optimizer", '"adam"'), ["distill.optimizer", "expected 'adamw' or 'sgd'",
                                                           "'adam'"]),
    "bad-data-scheme": (_key("data", "source", '"csv:tiny.csv"'), ["data.source", "npz:PATH", "'csv:tiny.csv'"]),
    "unknown-builtin": (_key("student", "model", '"builtin:resnet9000"'),
                        ["student.model", "unknown built-in model 'resnet9000'"]),
    "unknown-provider": (_key("benchmark", "providers", '["cpu", "cdua"]'), ["benchmark.providers", "'cdua'",
                                                                           "did you mean 'cuda'?"]),
    "bad-run-name": (_key("pipeline", "name", '"../tiny"'), ["pipeline.name", "'../tiny'"]),
    "config-too-large": (_big, ["pipeline.toml", "too large", "limit 1000000"]),
    "config-not-utf8": (_latin1, ["pipeline.toml", "not UTF-8"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_errors(tiny_dir: Path, case: str):
    # setup
    setup, fragments = CONFIG_CASES[case]
    setup(tiny_dir)
    # execute
    result = invoke(tiny_dir, "run", "pipeline.toml", "--quiet")
    # assert
    assert_one_line_error(result, tiny_dir, *fragments)
    assert not (tiny_dir / "runs").exists()  # refused before anything was created


def test_output_dir_that_cannot_be_created(tiny_dir: Path):
    (tiny_dir / "runs").write_text("a file where the run directory should go")
    result = invoke(tiny_dir, "run", "pipeline.toml", "--quiet")
    assert_one_line_error(result, tiny_dir, "pipeline.toml: pipeline.output_dir: ", f"{tiny_dir / 'runs'} (above the "
                          f"run directory {tiny_dir / 'runs/tiny'}) is a file", "move the file away")


def test_ctrl_c_is_one_line_and_exit_130(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch):
    import compress.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compress.runner, "run_pipeline", interrupted)
    result = invoke(tiny_dir, "run", "pipeline.toml", "--quiet")
    assert_one_line_error(result, tiny_dir, "interrupted", "run the same command again", code=130)


def test_missing_config_file(tiny_dir: Path):
    result = invoke(tiny_dir, "run", "nope.toml", "--quiet")
    assert_one_line_error(result, tiny_dir, "nope.toml: file not found")


def test_verbose_shows_the_traceback(tiny_dir: Path):
    edit(tiny_dir, "[distill]", "[distil]")
    result = invoke(tiny_dir, "-v", "run", "pipeline.toml", "--quiet")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "error: pipeline.toml: distil: unknown key" in result.stderr


# --- files, models and data --------------------------------------------------------------------------------------

def _ckpt_missing(d: Path) -> None:
    use_checkpoint(d, "teacher.safetensors")


def _ckpt_wrong_shapes(d: Path) -> None:
    from safetensors.torch import save_file

    state = teacher_state()
    state["1.weight"] = state["1.weight"][:32].contiguous()
    save_file(state, str(d / "teacher.safetensors"))
    use_checkpoint(d, "teacher.safetensors")


def _ckpt_truncated(d: Path) -> None:
    from safetensors.torch import save_file

    save_file(teacher_state(), str(d / "teacher.safetensors"))
    data = (d / "teacher.safetensors").read_bytes()
    (d / "teacher.safetensors").write_bytes(data[: len(data) // 2])
    use_checkpoint(d, "teacher.safetensors")


def _ckpt_not_state_dict(d: Path) -> None:
    import torch

    torch.save([torch.zeros(3)], d / "teacher.pt")
    use_checkpoint(d, "teacher.pt")


def _ckpt_huge(d: Path) -> None:
    with open(d / "teacher.pt", "wb") as f:  # sparse: 5 GB on paper, nothing on disk
        f.truncate(5 * 1024**3)
    use_checkpoint(d, "teacher.pt")


def _npz(**change: Callable[[np.ndarray, np.ndarray], dict]) -> Callable[[Path], None]:
    (how,) = change.values()

    def setup(d: Path) -> None:
        x, y = tiny_arrays(d)
        (d / "tiny.npz").unlink()
        save_npz(d, **how(x, y))
    return setup


def _npz_not_zip(d: Path) -> None:
    (d / "tiny.npz").write_text("x,y\n1,2\n")


def _npz_pickled(d: Path) -> None:
    (d / "tiny.npz").unlink()
    np.savez(d / "tiny.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4, dtype=np.int64))


def _model(role: str, spec: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / "extra.py").write_text(EXTRA_ZOO)
        set_key(d, role, "model", f'"{spec}"')
    return setup


FILE_CASES = {
    "checkpoint-missing": (_ckpt_missing, ["pipeline.toml", "teacher.checkpoint", "file not found"]),
    "checkpoint-wrong-shapes": (_ckpt_wrong_shapes, ["pipeline.toml: teacher.checkpoint", "does not match the model",
                                                     "size mismatch"]),
    "checkpoint-truncated-safetensors": (_ckpt_truncated, ["teacher.checkpoint", "not a valid safetensors file"]),
    "checkpoint-not-a-state-dict": (_ckpt_not_state_dict, ["teacher.checkpoint", "holds a list, not a state_dict"]),
    "checkpoint-absurd-size": (_ckpt_huge, ["teacher.checkpoint", "over the", "byte limit"]),
    "npz-missing": (lambda d: (d / "tiny.npz").unlink(), ["pipeline.toml", "data.source", "file not found"]),
    "npz-not-a-zip": (_npz_not_zip, ["data.source", "not a readable .npz"]),
    "npz-needs-pickle": (_npz_pickled, ["data.source", "not a readable .npz"]),
    "npz-no-x": (_npz(f=lambda x, y: {"inputs": x, "y": y}), ["data.source", "no array 'x'"]),
    "npz-no-y": (_npz(f=lambda x, y: {"x": x, "labels": y}), ["data.source", "no array 'y'"]),
    "npz-length-mismatch": (_npz(f=lambda x, y: {"x": x, "y": y[:-7]}), ["data.source", "as long as x (400)"]),
    "npz-single-class": (_npz(f=lambda x, y: {"x": x, "y": np.zeros_like(y)}), ["data.source", "single class"]),
    "npz-empty": (_npz(f=lambda x, y: {"x": x[:0], "y": y[:0]}), ["data.source", "non-empty"]),
    "npz-float-labels": (_npz(f=lambda x, y: {"x": x, "y": y.astype(np.float32)}), ["data.source", "integer"]),
    "npz-x-val-without-y-val": (_npz(f=lambda x, y: {"x": x, "y": y, "x_val": x}), ["data.source", "x_val and y_val"]),
    "module-not-importable": (_model("teacher", "no_such_module:make"), ["pipeline.toml: teacher.model",
                                                                         "cannot import module 'no_such_module'"]),
    "factory-missing": (_model("teacher", "zoo:no_such_factory"), ["teacher.model", "no attribute 'no_such_factory'"]),
    "factory-raises": (_model("teacher", "extra:raises"), ["teacher.model", "factory exploded"]),
    "factory-not-a-module": (_model("student", "zoo:not_a_module"), ["student.model", "returned str",
                                                                     "expected a torch.nn.Module"]),
    "model-wrong-classes": (_model("student", "zoo:wrong_classes"), ["student.model", "outputs (2, 3)",
                                                                     "10 classes"]),
    "factory-bad-kwargs": (_key("student", "kwargs", "{width = 3}"),
                           ["student.kwargs", "width"]),
    "hf-dir-missing": (_model("teacher", "hf:no_such_dir"), ["teacher.model", "hf directory not found"]),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_file_model_and_data_errors(tiny_dir: Path, case: str):
    setup, fragments = FILE_CASES[case]
    setup(tiny_dir)
    result = invoke(tiny_dir, "run", "pipeline.toml", "--quiet")
    assert_one_line_error(result, tiny_dir, *fragments)


@pytest.mark.parametrize("case", ["factory-not-a-module", "model-wrong-classes", "checkpoint-wrong-shapes"])
def test_validate_builds_the_models(tiny_dir: Path, case: str):
    setup, fragments = FILE_CASES[case]
    setup(tiny_dir)
    result = invoke(tiny_dir, "validate", "pipeline.toml")
    assert_one_line_error(result, tiny_dir, *fragments)


@pytest.mark.parametrize("saver", ["torch.save", "pickle"])
def test_pickle_checkpoint_that_runs_code_is_refused_not_executed(tiny_dir: Path, saver: str):
    # setup: a checkpoint whose unpickling would run `touch marker`
    import torch

    marker = tiny_dir / "pwned"
    payload = {"1.weight": Payload(marker)}
    if saver == "torch.save":
        torch.save(payload, tiny_dir / "teacher.pt")
    else:
        (tiny_dir / "teacher.pt").write_bytes(pickle.dumps(payload))
    use_checkpoint(tiny_dir, "teacher.pt")
    # execute
    result = invoke(tiny_dir, "run", "pipeline.toml", "--quiet")
    # assert
    assert_one_line_error(result, tiny_dir, "pipeline.toml: teacher.checkpoint", "refused", "needs code to load",
                          "safetensors")
    assert not marker.exists()


# --- faults while running ----------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_nan_outputs_on_the_first_batch_name_the_model_not_the_learning_rate(tiny_dir: Path):
    # before: "distill.lr: ... lower the learning rate", though no optimiser step had run (compress.train.objective)
    _model("student", "extra:nan_student")(tiny_dir)
    result = invoke(tiny_dir, "run", "pipeline.toml", "--quiet")
    assert_one_line_error(result, tiny_dir, "pipeline.toml: student.model: extra:nan_student outputs NaN/inf on the "
                          "first training batch, before any optimiser step changed a weight (student loss nan); "
                          "check the model's forward or its inputs")
    # the teacher finished and is cached; the failed stage left no manifest
    assert (tiny_dir / "runs/tiny/teacher/manifest.json").is_file()
    assert not (tiny_dir / "runs/tiny/distill/manifest.json").exists()


@pytest.mark.e2e
def test_out_of_disk_while_writing_an_artifact(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch):
    # setup: the safetensors writer gets half way, then the disk is full
    import safetensors.torch

    real = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        real(tensors, filename, metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    # execute
    result = invoke(tiny_dir, "run", "pipeline.toml", "--quiet")
    # assert
    assert_one_line_error(result, tiny_dir, "teacher.safetensors", "No space left on device", "free disk space")
    assert not (tiny_dir / "runs/tiny/teacher/teacher.safetensors").exists()
    assert not (tiny_dir / "runs/tiny/teacher/manifest.json").exists()


# --- compress bench / compare ------------------------------------------------------------------------------------

def small_onnx(path: Path, *, ir_version: int = 8) -> Path:
    """x[batch, 4] @ W -> y: the smallest model `compress bench` can time."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = ir_version
    onnx.save(model, str(path))
    return path


def _truncated(d: Path) -> str:
    data = small_onnx(d / "m.onnx").read_bytes()
    (d / "m.onnx").write_bytes(data[: len(data) // 2])
    return "m.onnx"


def _not_onnx(d: Path) -> str:
    (d / "m.onnx").write_text("this is not a model\n")
    return "m.onnx"


def _checker_fails(d: Path) -> str:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(d / "m.onnx"))
    return "m.onnx"


def _external_data(location: Callable[[Path], str]) -> Callable[[Path], str]:
    """A model whose weights live outside its folder (../secret.bin or an absolute path)."""
    def setup(d: Path) -> str:
        import onnx

        (d / "model").mkdir()
        model = onnx.load(str(small_onnx(d / "model" / "m.onnx")))
        onnx.save(model, str(d / "model" / "m.onnx"), save_as_external_data=True, location="w.bin",
                  size_threshold=0)
        (d / "model" / "w.bin").rename(d / "secret.bin")
        model = onnx.load(str(d / "model" / "m.onnx"), load_external_data=False)
        for entry in model.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location(d)
        onnx.save(model, str(d / "model" / "m.onnx"))
        return "model/m.onnx"
    return setup


def _inputs(**arrays: np.ndarray) -> Callable[[Path], str]:
    def setup(d: Path) -> str:
        small_onnx(d / "m.onnx")
        np.savez(d / "in.npz", **arrays)
        return "m.onnx"
    return setup


BENCH_CASES = {
    "missing-file": (lambda d: "missing.onnx", [], ["missing.onnx: no such file"]),
    "directory": (lambda d: ".", [], [": expected an .onnx file, got a directory"]),
    "truncated-onnx": (_truncated, [], ["m.onnx: not a valid ONNX model", "truncated"]),
    "not-onnx": (_not_onnx, [], ["m.onnx: not a valid ONNX model"]),
    "checker-fails": (_checker_fails, [], ["m.onnx", "NoSuchOp"]),
    "external-data-outside-folder": (_external_data(lambda d: "../secret.bin"), [],
                                     ["model/m.onnx", "escapes model directory"]),
    "external-data-absolute-path": (_external_data(lambda d: str(d / "secret.bin")), [],
                                    ["model/m.onnx", "Absolute path not allowed"]),
    "inputs-wrong-shape": (_inputs(x=np.zeros((2, 5), np.float32)), ["--inputs", "in.npz"],
                           ["in.npz: input 'x': expected shape ['batch', 4], got [2, 5]"]),
    "inputs-wrong-dtype": (_inputs(x=np.zeros((2, 4), np.float64)), ["--inputs", "in.npz"],
                           ["in.npz: input 'x': expected dtype float32, got float64"]),
    "inputs-wrong-name": (_inputs(pixels=np.zeros((2, 4), np.float32), other=np.zeros((2, 4), np.float32)),
                          ["--inputs", "in.npz"], ["in.npz: missing input(s) x; the model expects x, got other, pixels"]),
    "inputs-empty": (_inputs(x=np.zeros((0, 4), np.float32)), ["--inputs", "in.npz"],
                     ["in.npz: input 'x' is empty (shape [0, 4]); give at least one sample"]),
    "inputs-strings": (_inputs(x=np.array(["a", None], dtype=object)), ["--inputs", "in.npz"],
                       ["in.npz: holds object arrays (strings, lists), which compress does not unpickle"]),
    "inputs-missing": (lambda d: small_onnx(d / "m.onnx").name, ["--inputs", "nope.npz"], ["nope.npz: no such file"]),
    "inputs-not-npz": (lambda d: small_onnx(d / "m.onnx").name, ["--inputs", "m.onnx"],  # was "holds object arrays"
                       ["m.onnx: not an .npz (numpy.savez writes a zip archive; this is not one); --inputs expects"]),
    "unknown-provider": (lambda d: small_onnx(d / "m.onnx").name, ["--provider", "tpu"],
                         ["provider: unknown provider 'tpu'; did you mean 'cpu'?"]),
    "bad-dim": (lambda d: small_onnx(d / "m.onnx").name, ["--dim", "batch=0"], ["--dim: expected NAME=POSITIVE_INT"]),
    "bad-provider-option": (lambda d: small_onnx(d / "m.onnx").name, ["--provider-option", "cuda"],
                            ["--provider-option: expected PROVIDER:KEY=VALUE"]),
    "strict-unavailable": (lambda d: small_onnx(d / "m.onnx").name, ["--provider", ABSENT, "--strict"],
                           [f"provider {ABSENT_NAME}: not available"]),
    "baseline-garbage": (lambda d: (d / "b.json").write_text("{not json") and small_onnx(d / "m.onnx").name,
                         ["--baseline", "b.json"], ["b.json: not valid JSON", "pass a bench --json output or a report.json"]),
}


@pytest.mark.parametrize("case", list(BENCH_CASES))
def test_bench_errors(tmp_path: Path, case: str):
    setup, extra, fragments = BENCH_CASES[case]
    model = setup(tmp_path)
    result = invoke(tmp_path, "bench", model, *extra, "--quiet", "--warmup", "0", "--min-runs", "2",
                    "--min-seconds", "0", "--repetitions", "1")
    assert_one_line_error(result, tmp_path, *fragments)


def test_provider_failing_at_session_creation_is_reported_and_the_run_goes_on(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    # setup: onnxruntime claims XNNPACK is there, but creating a session on it fails
    import onnxruntime as ort

    real_session, real_available = ort.InferenceSession, ort.get_available_providers

    def session(model, sess_options=None, providers=None, **kw):
        if providers and "Xnnpack" in str(providers[0]):
            raise RuntimeError("xnnpack: failed to initialise the device\n(second line of detail)")
        return real_session(model, sess_options=sess_options, providers=providers, **kw)

    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*real_available(), "XnnpackExecutionProvider"])
    small_onnx(tmp_path / "m.onnx")
    # execute
    result = invoke(tmp_path, "bench", "m.onnx", "--provider", "xnnpack", "--provider", "cpu", "--quiet",
                    "--warmup", "0", "--min-runs", "2", "--min-seconds", "0", "--repetitions", "1")
    # assert
    assert result.exit_code == 0, result.output
    assert "XnnpackExecutionProvider" in result.stdout
    assert "unavailable: session creation failed: xnnpack: failed to initialise the device" in result.stdout
    assert "CPUExecutionProvider" in result.stdout


COMPARE_CASES = {
    "missing": (lambda d: None, ["nope.json: no such file"]),
    "garbage": (lambda d: (d / "nope.json").write_text("{definitely not json"), ["nope.json: not valid JSON"]),
    "wrong-shape": (lambda d: (d / "nope.json").write_text('{"schema": "something/else"}'),
                    ["nope.json: no 'latency' rows or 'models' list"]),
}


@pytest.mark.parametrize("case", list(COMPARE_CASES))
def test_compare_errors(tmp_path: Path, case: str):
    setup, fragments = COMPARE_CASES[case]
    setup(tmp_path)
    (tmp_path / "other.json").write_text("[]")
    result = invoke(tmp_path, "compare", "nope.json", "other.json")
    assert_one_line_error(result, tmp_path, *fragments)


def test_bench_refuses_an_absurdly_large_model_before_reading_it(tmp_path):
    huge = tmp_path / "huge.onnx"
    with open(huge, "wb") as f:
        f.truncate(3 * 1024**3)  # sparse: costs no disk, and must never be read into memory
    result = CliRunner().invoke(main, ["bench", str(huge)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {huge}: {3 * 1024**3} bytes is over the {2 * 1024**3}-byte protobuf limit of a single ONNX file; "
        "a model this large keeps its weights as external data beside it"]


def test_the_python_api_says_in_one_line_what_it_takes(tmp_path: Path):
    # a folder read as "file not found"; nproc="2", a dict for search and a number for run escaped as TypeErrors
    import compress
    from compress.errors import CompressError

    with pytest.raises(CompressError, match=r": is a folder; give the pipeline's .toml file$"):
        compress.run(tmp_path)
    with pytest.raises(CompressError, match=r"^expected the path of a pipeline .toml file, got int 3$"):
        compress.run(3)
    with pytest.raises(CompressError, match=r"^nproc: expected a whole number, got str '2'$"):
        compress.run(tmp_path / "p.toml", nproc="2")
    with pytest.raises(CompressError, match=r"^search: expected the path of a pipeline .toml file with a \[search\] "):
        compress.search({"pipeline": {"name": "t"}})

    class PathLike:  # os.PathLike (pytest's tmpdir is one) and numpy's integers stay accepted
        def __fspath__(self) -> str:
            return str(tmp_path / "missing.toml")

    import numpy as np

    with pytest.raises(CompressError, match=r"missing.toml: file not found$"):
        compress.run(PathLike(), nproc=np.int64(1))


def test_the_python_api_keeps_the_clis_memory_policy(tmp_path: Path, monkeypatch):
    # compress.run() left glibc's heap as it was: no trimming between passes, COMPRESS_LOW_MEMORY ignored
    import compress
    from compress import heap
    from compress.errors import CompressError

    applied = []
    monkeypatch.setattr(heap, "limit_heap_growth_for_run", lambda: applied.append(True) or "trim")
    with pytest.raises(CompressError, match="file not found"):
        compress.run(tmp_path / "missing.toml")
    assert applied == [True]


def test_a_run_that_fails_its_checks_leaves_no_run_folder_behind(tmp_path: Path):
    # compress.run of a file whose checks fail left runs/<name>/ holding only a .lock
    import compress
    from compress.errors import CompressError

    import numpy as np

    np.savez(tmp_path / "x.npz", x=np.zeros((40, 4), np.float32))  # no y: the data check inside the run fails
    (tmp_path / "p.toml").write_text('[pipeline]\nname = "t"\n[data]\nsource = "npz:x.npz"\n[teacher]\n'
                                     'model = "builtin:mlp"\n[teacher.train]\nepochs = 1\n[student]\n'
                                     'model = "builtin:mlp"\n')
    with pytest.raises(CompressError, match="no array 'y'"):
        compress.run(tmp_path / "p.toml")
    assert not (tmp_path / "runs").exists()


def test_a_dict_configs_errors_name_it_one_way(tmp_path: Path, monkeypatch):
    # before: a key error read "<dict>: ...", a file check "/cwd/<dict>: ...": two names for one config
    import compress
    from compress.errors import CompressError

    monkeypatch.chdir(tmp_path)
    base = {"pipeline": {"name": "x"}, "data": {"source": "digits"}, "teacher": {"model": "builtin:cnn-large"},
            "student": {"model": "builtin:cnn-small"}}
    for section, key, value, rest in (("teacher", "epochs", 3, "teacher.epochs: unknown key"),
                                      ("data", "source", "npz:missing.npz", "data.source: file not found")):
        with pytest.raises(CompressError) as caught:
            compress.validate({**base, section: {**base.get(section, {}), key: value}})
        assert str(caught.value).startswith(f"{tmp_path / '<dict>'}: {rest}"), caught.value
