"""What a new user met: a search space value no trial could build, an output_dir that is a file, and a pipeline
whose every provider was unavailable. Each is said in one line: the first two before any work (exit 2), the last in
the summary `compress run` prints (exit code unchanged)."""
from __future__ import annotations

from pathlib import Path

from tests.test_bad_inputs import ABSENT, ABSENT_NAME, assert_one_line_error, invoke, set_key
from tests.test_search import STUDY, _folder

USER_ZOO = '''
import torch.nn as nn


def mlp(input_shape, num_classes, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def picky(input_shape, num_classes, hidden=8):
    if hidden > 16:
        raise ValueError("hidden above 16")
    return mlp(input_shape, num_classes, hidden)
'''


def _study(tmp_path: Path, space: str, student: str = "mymodels:mlp") -> Path:
    text = STUDY.replace('model = "builtin:cnn-small"\nkwargs = { width = 8 }',
                         f'model = "{student}"\nkwargs = {{ hidden = 8 }}')
    folder = _folder(tmp_path, text=text[: text.index("[search.space]")] + "[search.space]\n" + space + "\n")
    (folder / "mymodels.py").write_text(USER_ZOO)
    return folder


def test_a_factory_keyword_no_trial_can_use_is_refused_before_any_trial(tmp_path):
    # setup: the student's factory takes `hidden`; the space names `hiden`
    folder = _study(tmp_path, '"student.kwargs.hiden" = [4, 8, 16]')
    # execute
    result = invoke(folder, "search", "s.toml", "--quiet")
    # assert: one line naming the search file, the space key, the value and the factory's own error; nothing ran
    assert_one_line_error(result, folder, "s.toml: search.space.student.kwargs.hiden: with the value 4 the pipeline "
                          "fails its checks before training", "unexpected keyword argument 'hiden'")
    assert not (folder / "runs").exists()
    assert_one_line_error(invoke(folder, "validate", "s.toml"), folder, "search.space.student.kwargs.hiden",
                          "unexpected keyword argument 'hiden'")


def test_every_choice_of_a_built_key_is_built(tmp_path):
    # setup: the first choice builds, the second makes the factory raise
    folder = _study(tmp_path, '"student.kwargs.hidden" = [8, 32]', student="mymodels:picky")
    # execute
    result = invoke(folder, "search", "s.toml", "--quiet")
    # assert
    assert_one_line_error(result, folder, "s.toml: search.space.student.kwargs.hidden: with the value 32",
                          "mymodels:picky raised ValueError: hidden above 16")
    assert not (folder / "runs").exists()


def test_a_distill_key_is_checked_as_a_run_checks_it(tmp_path):
    folder = _study(tmp_path, '"distill.freeze" = [[], ["nomatch.*"]]')
    result = invoke(folder, "validate", "s.toml")
    assert_one_line_error(result, folder, "search.space.distill.freeze: with the value ['nomatch.*']",
                          "distill.freeze: 'nomatch.*' matches no parameter")


def test_a_space_whose_models_build_validates(tmp_path):
    folder = _study(tmp_path, '"student.kwargs.hidden" = [4, 16]\n"distill.temperature" = { low = 1.0, high = 8.0 }')
    result = invoke(folder, "validate", "s.toml")
    assert result.exit_code == 0, result.output
    assert "s.toml: ok (" in result.stdout and "search: 2 keys" in result.stdout
    (tmp_path / "one").mkdir()
    one = _study(tmp_path / "one", '"student.kwargs.hidden" = [4, 16]')
    result = invoke(one, "validate", "s.toml")
    assert "; search: 1 key, " in result.stdout, result.output


def test_an_output_dir_that_is_a_file_is_refused_by_validate_and_run(tiny_dir: Path):
    # setup
    (tiny_dir / "afile").write_text("keep")
    set_key(tiny_dir, "pipeline", "output_dir", '"afile"')
    fragments = ["pipeline.toml: pipeline.output_dir: ", f"{tiny_dir / 'afile'} is a file", "name a folder"]
    # execute / assert: one line, exit 2, the file untouched, nothing made
    assert_one_line_error(invoke(tiny_dir, "validate", "pipeline.toml"), tiny_dir, *fragments)
    assert_one_line_error(invoke(tiny_dir, "run", "pipeline.toml", "--quiet"), tiny_dir, *fragments)
    assert (tiny_dir / "afile").read_text() == "keep"
    assert not (tiny_dir / "runs").exists()


def test_an_output_dir_below_a_file_is_refused(tiny_dir: Path):
    (tiny_dir / "afile").write_text("keep")
    set_key(tiny_dir, "pipeline", "output_dir", '"afile/run"')
    result = invoke(tiny_dir, "validate", "pipeline.toml")
    assert_one_line_error(result, tiny_dir, "pipeline.output_dir: ", f"{tiny_dir / 'afile'} (above the run directory "
                          f"{tiny_dir / 'afile/run'}) is a file")


def test_the_summary_says_which_providers_timed_nothing_and_why(tiny_dir: Path):
    # setup: only a provider this machine lacks; short training
    set_key(tiny_dir, "benchmark", "providers", f'["{ABSENT}"]')
    set_key(tiny_dir, "teacher.train", "epochs", "1")
    set_key(tiny_dir, "distill", "epochs", "1")
    set_key(tiny_dir, "distill", "control", "false")
    # execute
    result = invoke(tiny_dir, "run", "pipeline.toml", "--quiet")
    # assert: exit 0 (strict is off), and the terminal says why every p50 is '-'
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [ln for ln in lines if ln.startswith("not timed on")] == [
        next(ln for ln in lines if ln.startswith(f"not timed on {ABSENT_NAME}: not available in onnxruntime"))]
    assert "no latency was measured (p50 '-'): no provider in [benchmark] providers could run here; set [benchmark] " \
           "strict = true to make this an error" in lines


def test_a_provider_unavailable_for_some_models_names_them():
    from compress.stages.benchmark import _not_timed

    why = {"provider": "XnnpackExecutionProvider", "reason": "session creation failed"}
    row = {"provider": "CPUExecutionProvider", "batch": 1, "threads": 1, "p50_ms": 1.0}
    rows = {"teacher": {"latency": [row], "unavailable": []}, "student": {"latency": [row], "unavailable": [why]}}
    assert _not_timed(rows) == ["not timed on XnnpackExecutionProvider: session creation failed (student)"]
    rows["teacher"]["unavailable"] = [why, why]
    assert _not_timed(rows) == ["not timed on XnnpackExecutionProvider: session creation failed"]
    assert _not_timed({"student": {"latency": [row], "unavailable": []}}) == []
