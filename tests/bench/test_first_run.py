"""Generated inputs a model rejects: ids bounded through ops that keep their values, else one line (exit 2)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress.bench.inputs import index_bounds
from .test_cli_bench import FAST, error_line, invoke


def gather_model(path: Path, *between: tuple[str, list[str], dict]) -> Path:
    """ids [N, 16] int64 -> `between` ops -> Gather on a 50-row table."""
    table = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    nodes, prev = [], "ids"
    for i, (op, extra, attrs) in enumerate(between):
        nodes.append(helper.make_node(op, [prev, *extra], [f"t{i}"], **attrs))
        prev = f"t{i}"
    nodes.append(helper.make_node("Gather", ["table", prev], ["y"]))
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([-1], np.int64), "flat"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(np.array(7, np.int64), "k")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_ids_are_bounded_through_ops_that_keep_their_values(tmp_path: Path):
    reshaped = gather_model(tmp_path / "r.onnx", ("Reshape", ["flat"], {}))
    chain = gather_model(tmp_path / "c.onnx", ("Unsqueeze", ["axis0"], {}), ("Squeeze", ["axis0"], {}),
                         ("Flatten", [], {}), ("Identity", [], {}), ("Cast", [], {"to": TensorProto.INT32}))
    assert index_bounds(reshaped) == {"ids": 50} and index_bounds(chain) == {"ids": 50}
    result = invoke("bench", reshaped, *FAST)
    assert result.exit_code == 0, result.output


def test_inputs_the_model_rejects_on_its_first_run_are_one_line_and_exit_2(tmp_path: Path):
    scaled = gather_model(tmp_path / "s.onnx", ("Mul", ["k"], {}))  # ids x 7: past the table, nothing can bound it
    assert index_bounds(scaled) == {}
    result = invoke("bench", scaled, *FAST)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert line.startswith(f"error: {scaled}: its first run failed on the generated inputs (ids [1, 16] int64): ")
    assert "indices element out of data bounds" in line and line.endswith("--inputs FILE.npz, or other sizes with "
                                                                          "--dim NAME=N")
