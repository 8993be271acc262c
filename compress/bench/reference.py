"""The reference workload: a fixed small ONNX graph timed between model blocks, so a gate can divide out the
machine's speed of the moment.

On shared machines CPU speed moves in phases of seconds (up to 1.5x on the 2-core dev VM) as neighbours come and
go, and every raw p50 inherits that. The model and a similar fixed workload slow down together, so a model block's
latency over the adjacent reference block's latency (a block score) stays put; the gate compares scores.
"""
from __future__ import annotations

import functools

import numpy as np

REFERENCE_VERSION = 1
"""Bump when the reference graph changes: scores are only comparable between equal versions."""


@functools.lru_cache(maxsize=1)
def reference_model_bytes() -> bytes:
    """The reference graph, serialized: 3 conv3x3(16ch, 32x32) + ReLU, pool, gemm; ~0.16 ms at 1 thread here."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1234)
    channels, size = 16, 32
    nodes, inits, prev = [], [], "x"
    for i in range(3):
        w = (rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
    wf = (rng.standard_normal((channels, 10)) * 0.1).astype(np.float32)
    inits.append(numpy_helper.from_array(wf, "wf"))
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("MatMul", ["f", "wf"], ["y"])]
    graph = helper.make_graph(
        nodes, "compress_reference",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def reference_input() -> dict[str, np.ndarray]:
    """The reference workload's fixed input."""
    return {"x": np.random.default_rng(0).standard_normal((1, 16, 32, 32)).astype(np.float32)}
