"""Where the nodes actually ran: per provider, how many nodes it took and how many fell back to the CPU provider.

The source is ONNX Runtime's own placement report: at VERBOSE log level, `SessionState::
VerifyEachNodeIsAssignedToAnEp` (onnxruntime/core/framework/session_state.cc) prints, after partitioning,

    Node placements
     Node(s) placed on [OpenVINOExecutionProvider]. Number of nodes: 1
      OpenVINO-EP-subgraph_1 (OpenVINOExecutionProvider_OpenVINO-EP-subgraph_1_0)
     Node(s) placed on [CPUExecutionProvider]. Number of nodes: 2
      Det ()
      Sigmoid ()

or `All nodes placed on [X]. Number of nodes: N` when one provider took everything. ONNX Runtime's own EP perf
script (onnxruntime/python/tools/tensorrt/perf/benchmark.py, fetch_ep_node_info) reads the same two lines.
A profile (enable_profiling) was the other candidate; its kernel events name the fused subgraph, not the nodes in
it, so it says no more than this log and costs a run.

An EP that compiles subgraphs (OpenVINO, TensorRT, QNN) shows up as one node per subgraph, so the provider's own
count is of kernels, not of the model's nodes. The model's nodes are counted in a CPU-only session instead, and
the provider's share is that total minus the nodes the CPU provider got. Both audit sessions run with basic
(level 1) graph optimizations: those run before partitioning for every provider, so the audit sees the graph the
providers were offered; the timed sessions' level 2/3 fusions only rewrite nodes already assigned to the CPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.errors import CompressError, first_line
from compress.kit.placement_kit import CPU, parse_placements, record_from_logs, session_log

__all__ = ["CPU", "SOURCE", "audit", "fallback_error", "nodes_on_provider", "parse_placements", "placement",
           "placement_from_logs"]

SOURCE = "onnxruntime verbose log: Node placements (session_state.cc VerifyEachNodeIsAssignedToAnEp), graph " \
         "optimizations basic; nodes_total from a CPU-only session of the same model"


def placement_from_logs(provider: str, cpu_log: str, provider_log: str, *, origin: str = "model") -> dict[str, Any]:
    """The placement record of `provider` from the two audit logs (CPU-only session, provider session).

    Keys: provider, nodes_total (the model's nodes, CPU-only session), nodes_on_provider, nodes_on_cpu (nodes
    that fell back to the CPU provider; 0 for the CPU provider itself), cpu_nodes (their op types, in log order),
    provider_kernels (what ORT placed on the provider: one per compiled subgraph for OpenVINO/TensorRT/QNN),
    source. CompressError when a log has no placement report (ORT changed its log, or logging was off).
    The parsing is compress.kit.placement_kit's, which bench kits run on the device.
    """
    record = record_from_logs(provider, cpu_log, provider_log)
    if record is None:
        raise CompressError(f"{origin}: onnxruntime's verbose log has no 'Node placements' report for {provider}; "
                            "the placement audit needs ORT's session_state log lines (ORT >= 1.14)")
    return {**record, "source": SOURCE}


def placement(model_path: str | Path, provider: str, *, provider_options: dict[str, str] | None = None,
              threads: int = 1, cpu_log: str | None = None) -> dict[str, Any]:
    """Where the nodes of `model_path` run on `provider` (with CPU fallback, as the harness opens it); see
    `placement_from_logs` for the keys. Two extra sessions, no runs; one when the CPU-only session's log
    (`cpu_log`, which only counts the model's nodes) is given."""
    cpu_log = cpu_log if cpu_log is not None else _session_log(model_path, CPU, {}, threads)
    provider_log = cpu_log if provider == CPU else _session_log(model_path, provider, provider_options or {}, threads)
    return placement_from_logs(provider, cpu_log, provider_log, origin=str(model_path))


def fallback_error(model_path: str | Path, record: dict[str, Any]) -> CompressError | None:
    """The strict-mode error for a non-CPU provider that left nodes to the CPU provider; None when none fell back."""
    if record["provider"] == CPU or record["nodes_on_cpu"] == 0:
        return None
    ops = ", ".join(sorted(set(record["cpu_nodes"]))) or "all of them"
    return CompressError(
        f"{model_path}: {record['provider']}: {record['nodes_on_cpu']} of {record['nodes_total']} nodes fell back "
        f"to CPUExecutionProvider ({ops}); its latency would be partly CPU time. Drop strict to measure it anyway, "
        "or change the model so the provider takes every node")


def nodes_on_provider(record: dict[str, Any] | None) -> str:
    """'12/14' (nodes on the provider / the model's nodes) for a non-CPU provider; '-' for CPU or no record."""
    if not record or record["provider"] == CPU:
        return "-"
    return f"{record['nodes_on_provider']}/{record['nodes_total']}"


def _session_log(model_path: str | Path, provider: str, options: dict[str, str], threads: int) -> str:
    """ORT's verbose log while opening one session on `provider` (+ CPU fallback), basic optimizations."""
    import onnxruntime as ort

    providers: list[Any] = [(provider, {str(k): str(v) for k, v in options.items()})]
    if provider != CPU:
        providers.append(CPU)

    def open_session(level: int) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.log_severity_level = level
        ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)

    try:
        return session_log(open_session)
    except Exception as exc:  # the timed session opened a moment ago; say which audit session failed
        raise CompressError(f"{model_path}: placement audit on {provider}: onnxruntime could not open the "
                            f"session: {first_line(exc)}; rerun, or report it with the model") from None


def audit(model_path: str | Path, threads_of: dict[str, int], settings: Any) -> dict[str, dict[str, Any]]:
    """{provider: placement record} for each ORT provider name in `threads_of` (provider -> threads), with the
    provider options of `settings` (harness.BenchSettings). Under settings.strict the first provider that left
    nodes to the CPU provider raises (`fallback_error`); bench_model calls this before timing, so it stops at once."""
    out: dict[str, dict[str, Any]] = {}
    cpu_log = _session_log(model_path, CPU, {}, 1) if threads_of else None  # the node count: once per model
    for name, threads in threads_of.items():
        record = placement(model_path, name, provider_options=settings.options_for(name), threads=threads,
                           cpu_log=cpu_log)
        error = fallback_error(model_path, record) if settings.strict else None
        if error is not None:
            raise error
        out[name] = record
    return out
