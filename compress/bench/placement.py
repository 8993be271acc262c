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

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compress.errors import CompressError, first_line

CPU = "CPUExecutionProvider"
SOURCE = "onnxruntime verbose log: Node placements (session_state.cc VerifyEachNodeIsAssignedToAnEp), graph " \
         "optimizations basic; nodes_total from a CPU-only session of the same model"

_HEADER = re.compile(r"(?:All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)")
_NODE = re.compile(r"VerifyEachNodeIsAssignedToAnEp\]\s{3}(\S+) \((.*)\)\s*$")
# ORT adds copy nodes on the device provider's side of a boundary; they are not the model's nodes
_COPIES = frozenset({"MemcpyToHost", "MemcpyFromHost"})


def parse_placements(log_text: str) -> dict[str, dict[str, Any]]:
    """{provider: {"count": kernels ORT placed there, "nodes": [(op_type, node name), ...]}} from a verbose log.

    "All nodes placed on" lists no nodes (ORT prints only the count). The last "Node placements" block wins,
    so a log that holds several sessions reports the last one. Empty when the log holds no placement report.
    """
    out: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in log_text.splitlines():
        if "Node placements" in line:
            out, current = {}, None
            continue
        header = _HEADER.search(line)
        if header:
            current = out.setdefault(header.group(1), {"count": 0, "nodes": []})
            current["count"] += int(header.group(2))
            continue
        node = _NODE.search(line)
        if node and current is not None:
            current["nodes"].append((node.group(1), node.group(2)))
    return out


def placement_from_logs(provider: str, cpu_log: str, provider_log: str, *, origin: str = "model") -> dict[str, Any]:
    """The placement record of `provider` from the two audit logs (CPU-only session, provider session).

    Keys: provider, nodes_total (the model's nodes, CPU-only session), nodes_on_provider, nodes_on_cpu (nodes
    that fell back to the CPU provider; 0 for the CPU provider itself), cpu_nodes (their op types, in log order),
    provider_kernels (what ORT placed on the provider: one per compiled subgraph for OpenVINO/TensorRT/QNN),
    source. CompressError when a log has no placement report (ORT changed its log, or logging was off).
    """
    cpu_only = parse_placements(cpu_log)
    placed = parse_placements(provider_log) if provider != CPU else cpu_only
    if CPU not in cpu_only or not placed:
        raise CompressError(f"{origin}: onnxruntime's verbose log has no 'Node placements' report for {provider}; "
                            "the placement audit needs ORT's session_state log lines (ORT >= 1.14)")
    total = cpu_only[CPU]["count"]
    fell_back = [op for op, _ in placed.get(CPU, {}).get("nodes", []) if op not in _COPIES] if provider != CPU else []
    if provider == CPU:
        on_cpu = 0
    elif provider not in placed:  # "All nodes placed on [CPU...]": the provider took nothing, ORT lists no nodes
        on_cpu = total
    else:
        on_cpu = len(fell_back)
    return {
        "provider": provider,
        "nodes_total": total,
        "nodes_on_provider": max(total - on_cpu, 0),
        "nodes_on_cpu": on_cpu,
        "cpu_nodes": fell_back,
        "provider_kernels": placed.get(provider, {}).get("count", 0),
        "source": SOURCE,
    }


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

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 0  # VERBOSE: the only level that prints the placement report
    providers: list[Any] = [(provider, {str(k): str(v) for k, v in options.items()})]
    if provider != CPU:
        providers.append(CPU)
    with tempfile.TemporaryDirectory(prefix="compress-placement-") as tmp:
        log_path = Path(tmp) / "ort.log"
        try:
            with _stderr_into(log_path):
                ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
        except Exception as exc:  # the timed session opened a moment ago; say which audit session failed
            raise CompressError(f"{model_path}: placement audit on {provider}: onnxruntime could not open the "
                                f"session: {first_line(exc)}; rerun, or report it with the model") from None
        return log_path.read_text(errors="replace")


@contextlib.contextmanager
def _stderr_into(path: Path) -> Iterator[None]:
    """ORT's logger writes to file descriptor 2 from native code: redirect the descriptor, not sys.stderr."""
    import sys

    sys.stderr.flush()
    target = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    saved = os.dup(2)
    try:
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)



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
