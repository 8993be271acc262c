"""`[quantize] mode = "qat"` on a student with an op QAT cannot run in torch (compress.qat.ops): named by `compress
validate`, and by `compress run` before any stage trains, not after distillation (issue 22, must 5)."""
from __future__ import annotations

from pathlib import Path

from tests.test_bad_inputs import invoke
from tests.test_own_model import error_line, replace, user_dir  # noqa: F401 (a fixture)

MORE_MODELS = '''


class Recurrent(nn.Module):  # the 30 features as 5 steps of 6: ONNX GRU, which QAT has no torch form for
    def __init__(self, num_classes):
        super().__init__()
        self.rnn = nn.GRU(6, 8, batch_first=True)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        out, _ = self.rnn(x.reshape(x.shape[0], 5, 6))
        return self.head(out[:, -1])


def recurrent(input_shape, num_classes):
    return Recurrent(num_classes)


class CosineScaled(nn.Module):  # Cos on a weight alone: ORT folds it before the QDQ graph is made
    def __init__(self, num_classes):
        super().__init__()
        import torch

        self.angle = nn.Parameter(torch.zeros(num_classes))
        self.head = nn.Linear(30, num_classes)

    def forward(self, x):
        return self.head(x.flatten(1)) * self.angle.cos()


def cosine_scaled(input_shape, num_classes):
    return CosineScaled(num_classes)
'''


def _qat(folder: Path, student: str) -> None:
    (folder / "mymodels.py").write_text((folder / "mymodels.py").read_text() + MORE_MODELS)
    replace(folder, '"mymodels:small_mlp"', f'"mymodels:{student}"')
    toml = folder / "pipeline.toml"
    toml.write_text(toml.read_text() + '[quantize]\nmode = "qat"\n')


def test_a_student_with_an_op_qat_cannot_run_is_refused_before_training(user_dir: Path):  # noqa: F811
    _qat(user_dir, "recurrent")
    line = ("error: pipeline.toml: quantize.mode: quantization-aware training runs the QDQ graph in torch, which has "
            "no counterpart for GRU (nodes /rnn/GRU); use mode = 'static' for this model (found before training)")
    assert error_line(user_dir) == line
    assert error_line(user_dir, "run") == line  # run: before its first training stage
    assert not (user_dir / "runs" / "table" / "distill").exists()
    replace(user_dir, 'mode = "qat"', 'mode = "static"')  # static PTQ leaves the GRU in float: nothing to refuse
    assert invoke(user_dir, "validate", "pipeline.toml").exit_code == 0


def test_an_op_on_weights_alone_is_not_refused(user_dir: Path):  # noqa: F811
    _qat(user_dir, "cosine_scaled")
    result = invoke(user_dir, "validate", "pipeline.toml")
    assert result.exit_code == 0, result.output
