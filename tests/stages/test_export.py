"""Export: ONNX parity on real inputs, dynamic batch, the model is not mutated."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from compress.errors import CompressError
from compress.onnx.export import export_onnx
from compress.onnx.parity import compare, run_cpu
from compress.zoo import cnn_small, mobilenet


@pytest.mark.parametrize("factory", [cnn_small, mobilenet])
def test_export_parity_and_dynamic_batch(tmp_path, factory):
    torch.manual_seed(0)
    model = factory((1, 8, 8), 10).eval()
    x = torch.rand(33, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        ref = model(x)
    path = export_onnx(model, x[:2], tmp_path / "m.onnx")
    got = run_cpu(path, {"input": x.numpy()}, batch_size=16)  # 33 examples, exported at batch 2: the axis is dynamic
    check = compare([ref.numpy()], got, atol=1e-5)
    assert check["ok"] and check["max_abs_diff"] <= 1e-5 and check["top1_agreement"] == 1.0 and check["samples"] == 33
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
    assert not list(tmp_path.glob("*.tmp"))


def test_export_failure_is_one_line(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(np.zeros((len(x), 10), dtype=np.float32)) + x.sum()  # not traceable to ONNX

    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eig(x.reshape(len(x), 8, 8))[0].real

    with pytest.raises(CompressError, match=r"m.onnx: torch.onnx.export \(torchscript\) failed"):
        export_onnx(Unexportable(), torch.rand(2, 1, 8, 8), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob("*.tmp"))
