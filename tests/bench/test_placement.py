"""Placement audit: ORT's 'Node placements' log parsed from recorded samples, and measured on the CPU provider."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from compress.bench.harness import BenchSettings, bench_model
from compress.bench.placement import (
    fallback_error,
    nodes_on_provider,
    parse_placements,
    placement,
    placement_from_logs,
)
from compress.errors import CompressError

# Recorded on this machine (onnxruntime-openvino 1.24.1, AMD EPYC, 2026-11-23): Relu -> Det -> Sigmoid with a
# fixed [4, 4] input; OpenVINO took Relu as one compiled subgraph, Det (no OpenVINO kernel) and the lone
# Sigmoid after it stayed on the CPU provider. Timestamps trimmed.
OPENVINO_LOG = """\
[V:onnxruntime:, session_state.cc:1307 VerifyEachNodeIsAssignedToAnEp] Node placements
[V:onnxruntime:, session_state.cc:1313 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [OpenVINOExecutionProvider]. Number of nodes: 1
[V:onnxruntime:, session_state.cc:1315 VerifyEachNodeIsAssignedToAnEp]   OpenVINO-EP-subgraph_1 (OpenVINOExecutionProvider_OpenVINO-EP-subgraph_1_0)
[V:onnxruntime:, session_state.cc:1313 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 2
[V:onnxruntime:, session_state.cc:1315 VerifyEachNodeIsAssignedToAnEp]   Det ()
[V:onnxruntime:, session_state.cc:1315 VerifyEachNodeIsAssignedToAnEp]   Sigmoid ()
"""  # noqa: E501
CPU_ONLY_LOG_3 = """\
[V:onnxruntime:, session_state.cc:1307 VerifyEachNodeIsAssignedToAnEp] Node placements
[V:onnxruntime:, session_state.cc:1310 VerifyEachNodeIsAssignedToAnEp]  All nodes placed on [CPUExecutionProvider]. Number of nodes: 3
"""  # noqa: E501

# CUDA (not on this machine): written in the format of SessionState::VerifyEachNodeIsAssignedToAnEp
# (onnxruntime/core/framework/session_state.cc: a " Node(s) placed on [EP]. Number of nodes: N" header, then
# "   OpType (node name)" per node) for a 6-node graph whose NonMaxSuppression stays on CPU; the Memcpy node is the
# copy ORT's MemcpyTransformer inserts on the device side of the boundary (as in public ORT verbose logs of
# CUDA/WebGPU sessions, e.g. transformers.js and onnxruntime-web issue threads quoting these lines).
CUDA_LOG = """\
[V:onnxruntime:, session_state.cc:1345 VerifyEachNodeIsAssignedToAnEp] Node placements
[V:onnxruntime:, session_state.cc:1351 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 6
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   Conv (/backbone/Conv)
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   Relu (/backbone/Relu)
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   Conv (/head/Conv)
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   Sigmoid (/head/Sigmoid)
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   Reshape (/head/Reshape)
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   MemcpyToHost (Memcpy_token_1)
[V:onnxruntime:, session_state.cc:1351 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 1
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   NonMaxSuppression (/nms)
[W:onnxruntime:, session_state.cc:1355 VerifyEachNodeIsAssignedToAnEp] Some nodes were not assigned to the preferred execution providers which may or may not have an negative impact on performance. e.g. ORT explicitly assigns shape related ops to CPU to improve perf.
"""  # noqa: E501
CPU_ONLY_LOG_6 = CPU_ONLY_LOG_3.replace("Number of nodes: 3", "Number of nodes: 6")

# TensorRT (not here): a compiling EP, so one TRTKernel node per engine, in the same session_state.cc format; the
# three ScatterND left to CPU are what a public TensorRT EP crash report quotes from its verbose log.
TENSORRT_LOG = """\
[V:onnxruntime:, session_state.cc:1345 VerifyEachNodeIsAssignedToAnEp] Node placements
[V:onnxruntime:, session_state.cc:1351 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [TensorrtExecutionProvider]. Number of nodes: 2
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   TRTKernel_graph_main_graph_1234_0 (TensorrtExecutionProvider_TRTKernel_graph_main_graph_1234_0_0)
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   TRTKernel_graph_main_graph_1234_1 (TensorrtExecutionProvider_TRTKernel_graph_main_graph_1234_1_1)
[V:onnxruntime:, session_state.cc:1351 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 3
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   ScatterND (/ScatterND)
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   ScatterND (/ScatterND_1)
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   ScatterND (/ScatterND_2)
"""  # noqa: E501

# CoreML (macOS/iOS only): compiling, one kernel per CoreML partition, same session_state.cc format; NonZero (a
# data-dependent output shape, which the CoreML EP does not take) left to the CPU provider.
COREML_LOG = """\
[V:onnxruntime:, session_state.cc:1345 VerifyEachNodeIsAssignedToAnEp] Node placements
[V:onnxruntime:, session_state.cc:1351 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CoreMLExecutionProvider]. Number of nodes: 1
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   CoreMLExecutionProvider_CoreML_1234_0_0 (CoreMLExecutionProvider_CoreML_1234_0_0_0)
[V:onnxruntime:, session_state.cc:1351 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 1
[V:onnxruntime:, session_state.cc:1353 VerifyEachNodeIsAssignedToAnEp]   NonZero (/NonZero)
"""  # noqa: E501

# NNAPI (Android only): the provider took nothing, so ORT prints the "All nodes" line for the CPU provider.
NNAPI_NOTHING_LOG = CPU_ONLY_LOG_6  # the same lines a CPU-only session prints


def test_parse_the_recorded_openvino_log():
    assert parse_placements(OPENVINO_LOG) == {
        "OpenVINOExecutionProvider": {"count": 1, "nodes": [
            ("OpenVINO-EP-subgraph_1", "OpenVINOExecutionProvider_OpenVINO-EP-subgraph_1_0")]},
        "CPUExecutionProvider": {"count": 2, "nodes": [("Det", ""), ("Sigmoid", "")]},
    }


def test_openvino_record_counts_the_models_nodes_not_the_compiled_subgraph():
    record = placement_from_logs("OpenVINOExecutionProvider", CPU_ONLY_LOG_3, OPENVINO_LOG)
    assert {k: v for k, v in record.items() if k != "source"} == {
        "provider": "OpenVINOExecutionProvider", "nodes_total": 3, "nodes_on_provider": 1, "nodes_on_cpu": 2,
        "cpu_nodes": ["Det", "Sigmoid"], "provider_kernels": 1}


def test_cuda_record_leaves_out_copy_nodes():
    record = placement_from_logs("CUDAExecutionProvider", CPU_ONLY_LOG_6, CUDA_LOG)
    assert (record["nodes_total"], record["nodes_on_provider"], record["nodes_on_cpu"], record["cpu_nodes"]) == \
        (6, 5, 1, ["NonMaxSuppression"])


def test_tensorrt_record():
    record = placement_from_logs("TensorrtExecutionProvider", CPU_ONLY_LOG_6, TENSORRT_LOG)
    assert (record["nodes_on_provider"], record["nodes_on_cpu"], record["provider_kernels"]) == (3, 3, 2)


def test_coreml_record():
    record = placement_from_logs("CoreMLExecutionProvider", CPU_ONLY_LOG_6, COREML_LOG)
    assert (record["nodes_on_provider"], record["nodes_on_cpu"], record["cpu_nodes"]) == (5, 1, ["NonZero"])


def test_a_provider_that_took_nothing_has_every_node_on_cpu():
    record = placement_from_logs("NnapiExecutionProvider", CPU_ONLY_LOG_6, NNAPI_NOTHING_LOG)
    assert (record["nodes_on_provider"], record["nodes_on_cpu"], record["cpu_nodes"]) == (0, 6, [])


def test_the_last_placement_report_in_a_log_wins():
    assert parse_placements(CUDA_LOG + OPENVINO_LOG)["CPUExecutionProvider"]["nodes"] == [("Det", ""), ("Sigmoid", "")]


def test_a_log_without_a_placement_report_is_an_error():
    with pytest.raises(CompressError, match=r"^m\.onnx: onnxruntime's verbose log has no 'Node placements' report "
                                            r"for CUDAExecutionProvider"):
        placement_from_logs("CUDAExecutionProvider", CPU_ONLY_LOG_6, "[I:onnxruntime:, x.cc:1 F] nothing\n",
                            origin="m.onnx")


def test_fallback_error_names_provider_count_and_ops():
    record = placement_from_logs("TensorrtExecutionProvider", CPU_ONLY_LOG_6, TENSORRT_LOG)
    assert str(fallback_error("m.onnx", record)).startswith(
        "m.onnx: TensorrtExecutionProvider: 3 of 6 nodes fell back to CPUExecutionProvider (ScatterND); ")


def test_no_fallback_no_error():
    record = placement_from_logs("CPUExecutionProvider", CPU_ONLY_LOG_6, CPU_ONLY_LOG_6)
    assert (fallback_error("m.onnx", record), nodes_on_provider(record)) == (None, "-")


def test_nodes_on_provider_text():
    assert nodes_on_provider(placement_from_logs("CUDAExecutionProvider", CPU_ONLY_LOG_6, CUDA_LOG)) == "5/6"


def relu_chain(path: Path, nodes: int = 4) -> Path:
    names = ["x"] + [f"r{i}" for i in range(nodes)]
    graph = helper.make_graph(
        [helper.make_node("Relu", [a], [b]) for a, b in zip(names, names[1:])], "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, ["batch", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_cpu_placement_measured(tmp_path: Path):
    record = placement(relu_chain(tmp_path / "m.onnx"), "CPUExecutionProvider")
    assert (record["nodes_total"], record["nodes_on_provider"], record["nodes_on_cpu"]) == (4, 4, 0)


def test_bench_model_rows_carry_placement(tmp_path: Path):
    settings = BenchSettings(warmup_runs=1, min_runs=5, min_seconds=0.0, repetitions=1, strict=True)
    result = bench_model(relu_chain(tmp_path / "m.onnx"), ["cpu"], [1, 2], [1], settings=settings, progress=False)
    assert [r["placement"]["nodes_on_provider"] for r in result["latency"]] == [4, 4]


def test_a_single_measure_row_carries_placement_too(tmp_path: Path):
    # the quantize pick and the prune steps time their models through measure(), one row at a time
    from compress.bench.harness import measure

    settings = BenchSettings(warmup_runs=1, min_runs=5, min_seconds=0.0, repetitions=1)
    row = measure(relu_chain(tmp_path / "m.onnx"), "cpu", 1, 1, settings=settings)
    assert (row["placement"]["provider"], row["placement"]["nodes_total"], row["placement"]["nodes_on_cpu"]) == \
        ("CPUExecutionProvider", 4, 0)
