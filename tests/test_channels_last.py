"""Image arrays saved channels last (N, H, W, C), as numpy and Pillow give them: the line says how to turn them,
for a builtin CNN before it is built and for the user's own model when its first conv fails."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.test_user_data import error_line, validate

TOML = """\
[pipeline]
name = "c"
[data]
source = "npz:t.npz"
[teacher]
model = "MODEL"
[teacher.train]
epochs = 1
[student]
model = "MODEL"
"""
MODS = """
import torch.nn as nn


def net(input_shape, num_classes):
    return nn.Sequential(nn.Conv2d(input_shape[0], 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""


@pytest.mark.parametrize("model, line", [
    ("builtin:cnn-small", "builtin:cnn-small needs image examples shaped (C, H, W); the data's examples are (16, 16, 3), "
                          "which looks channels last (H, W, C): store x.transpose(0, 3, 1, 2)"),
    ("mods:net", "mods:net fails on a batch of shape (2, 16, 16, 3) from the data: RuntimeError: Given input size: "
                 "(8x14x1). Calculated output size: (8x7x0). Output size is too small; the examples are (16, 16, 3), "
                 "which looks channels last (H, W, C): torch models take (C, H, W), e.g. x.transpose(0, 3, 1, 2) "
                 "before saving"),
])
def test_channels_last_images_are_told_how_to_turn(tmp_path: Path, model: str, line: str):
    # before: torch's "Given input size: (32x8x1)..." and a zero-element warning, with no word of the layout
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", x=rng.random((40, 16, 16, 3)).astype(np.float32), y=rng.integers(0, 2, 40))
    (tmp_path / "mods.py").write_text(MODS)
    assert error_line(validate(tmp_path, TOML.replace("MODEL", model))) == f"error: p.toml: teacher.model: {line}"
    np.savez(tmp_path / "t.npz", x=rng.random((40, 3, 16, 16)).astype(np.float32), y=rng.integers(0, 2, 40))
    result = validate(tmp_path, TOML.replace("MODEL", model))
    assert result.exit_code == 0, result.output  # turned: it validates
