"""Lines a user reads when their own model or file is not what compress expected (from a new user's pass)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from compress.errors import CompressError


def _pick_with(task_name: str, student: float, control: float, teacher: float):
    from compress.stages.distill import _pick
    from compress.tasks import evaluation_for

    evaluation = evaluation_for(task_name, None)
    name = evaluation.primary.name
    records = [SimpleNamespace(name=n, metrics_torch={name: v}) for n, v in (("student", student),
                                                                             ("control", control))]
    ctx = SimpleNamespace(evaluation=evaluation, models={"teacher": SimpleNamespace(metrics_torch={name: teacher})})
    return _pick(ctx, records)


def test_a_control_that_wins_by_a_hair_is_shown_with_the_digits_that_tell_them_apart():
    final, why = _pick_with("tensors", student=0.818812, control=0.818838, teacher=0.95)
    assert final == "control"
    assert "(0.81884 vs 0.81881)" in why


def test_the_advice_names_only_the_knobs_the_tasks_loss_reads():
    _, why = _pick_with("tensors", student=0.80, control=0.81, teacher=1.0)
    assert why.endswith("(same architecture, same cost): try another alpha or more epochs")  # no temperature there
    # the tensors task's cosine is agreement with the teacher's outputs: "the teacher (1.0000) is better than both"
    assert "teacher" not in why
    _, why = _pick_with("classification", student=0.80, control=0.81, teacher=0.95)
    assert "(81.00% vs 80.00%)" in why and why.endswith("try another temperature, alpha or more epochs")


def test_a_model_spec_with_the_data_sources_python_prefix_says_to_drop_it(tmp_path: Path):
    from compress.imports import import_object

    (tmp_path / "mynets.py").write_text("def build():\n    return None\n")
    with pytest.raises(CompressError) as err:
        import_object("python:mynets:build", tmp_path, "p.toml: teacher.model")
    assert str(err.value).endswith("drop the 'python:' prefix: it marks a data source, and this key takes "
                                   "'module:function'")
    assert import_object("mynets:build", tmp_path, "p.toml: teacher.model")() is None


class _Spectrogram:
    """An audio front end TorchScript export cannot take (torch.stft with a complex output)."""

    @staticmethod
    def build():
        import torch

        class Spec(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("win", torch.hann_window(64))
                self.head = torch.nn.Linear(33, 3)

            def forward(self, wav):
                s = torch.stft(wav, 64, hop_length=32, window=self.win, return_complex=True).abs()
                return self.head(s.mean(-1))

        return Spec()


def test_an_export_failure_is_one_line_without_torchs_ir_dump(tmp_path: Path, capfd):
    import torch

    from compress.onnx.export import export_onnx

    with pytest.raises(CompressError) as err:
        export_onnx(_Spectrogram.build(), torch.randn(2, 400), tmp_path / "m.onnx")
    assert str(err.value) == ("m.onnx: torch.onnx.export (torchscript) failed: SymbolicValueError: STFT does not "
                              "currently support complex types; try [export] exporter = 'dynamo' or another opset")
    out, errs = capfd.readouterr()
    assert "Torch IR graph" not in out + errs and "graph(" not in out + errs
    assert not (tmp_path / "m.onnx").exists()


def test_a_stage_error_names_the_pipeline_file_once():
    from compress.errors import GateFailed
    from compress.runner import _named

    source = Path("runs/p.toml")
    assert str(_named(CompressError("prune: the model must return a tensor"), source)) == \
        "runs/p.toml: prune: the model must return a tensor"
    already = CompressError("runs/p.toml: quantize.mode: 'fp16' needs a GPU")
    assert _named(already, source) is already
    gate = GateFailed("quantize: no attempt met the budget")
    assert _named(gate, source) is gate  # the runner's own gate line names the file; its report stays attached


def test_a_stage_error_from_a_dataloader_worker_is_unwrapped_before_it_is_named():
    from compress.runner import _named

    wrapped = CompressError("Caught CompressError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                            "call last):\n  File \"x.py\", line 1\ncompress.errors.CompressError: data.source: 1 of 4 "
                            "images failed to decode")
    try:
        raise wrapped
    except CompressError as exc:
        named = _named(exc, Path("p.toml"))
    assert str(named) == "p.toml: data.source: 1 of 4 images failed to decode"
    assert named.__traceback__ is wrapped.__traceback__ and named.__cause__ is wrapped


def test_no_time_budget_line_when_no_row_was_timed():
    # `compress bench m.onnx --provider cuda` on a machine without CUDA read "time budget: none (--time-budget 0)"
    from compress.bench.tables import budget_lines

    assert budget_lines([]) == []
    assert budget_lines([{"provider": "CPUExecutionProvider"}])[0].startswith("time budget: none")
