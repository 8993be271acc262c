"""`compress edge --provider qnn` on an old model-zoo graph (IR 3: every weight, or the shape a ConstantOfShape makes
it from, also listed as a graph input), as the onnx package's light_squeezenet ships: the QNN flow is handed the copy
edge makes with those taken out of the inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.mark.qnn
@pytest.mark.slow
def test_an_ir3_zoo_graph_reaches_htp(tmp_path: Path):
    # before: "QNN QDQ quantization failed (Required inputs (['fire3/expand1x1_w_0__SHAPE', ...]) are missing" (exit
    # 2): the flow read the user's file, not the copy with the weights no longer inputs. A tiny graph of the same
    # shape did not fail, so the shipped graph is used (a 224x224 squeezenet on the simulator: about 30 s)
    import onnx
    from click.testing import CliRunner

    from compress.cli import main

    model = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_squeezenet.onnx"
    if not model.is_file():
        pytest.skip("this onnx build ships no light_squeezenet.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", data_0=rng.random((2, 3, 224, 224)).astype(np.float32))
    result = CliRunner().invoke(main, ["edge", str(model), "--out", str(tmp_path / "e"), "--provider", "qnn",
                                       "--calibration", str(tmp_path / "calib.npz")])
    assert result.exit_code == 0, result.output
    assert "runs with CPU fallback disabled: yes" in result.output
