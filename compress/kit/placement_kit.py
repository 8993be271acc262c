"""Where the nodes ran, from ONNX Runtime's own verbose log: the part of compress.bench.placement a bench kit needs.

Standalone (the standard library and onnxruntime only), so the kit can audit placement on the device itself, where
it matters most (NNAPI, CoreML, QNN on a phone). compress.bench.placement imports these functions: one parser.

At VERBOSE log level `SessionState::VerifyEachNodeIsAssignedToAnEp` (onnxruntime/core/framework/session_state.cc)
prints, after partitioning, `Node(s) placed on [X]. Number of nodes: N` and the nodes, or `All nodes placed on [X].
Number of nodes: N` when one provider took everything.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile

CPU = "CPUExecutionProvider"
_HEADER = re.compile(r"(?:All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)")
_NODE = re.compile(r"VerifyEachNodeIsAssignedToAnEp\]\s{3}(\S+) \((.*)\)\s*$")
# ORT adds copy nodes on the device provider's side of a boundary; they are not the model's nodes
_COPIES = frozenset({"MemcpyToHost", "MemcpyFromHost"})


def parse_placements(log_text):
    """{provider: {"count": kernels ORT placed there, "nodes": [(op_type, node name), ...]}} from a verbose log.

    "All nodes placed on" lists no nodes (ORT prints only the count). The last "Node placements" block wins,
    so a log that holds several sessions reports the last one. Empty when the log holds no placement report.
    """
    out, current = {}, None
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


def record_from_logs(provider, cpu_log, provider_log):
    """The placement record of `provider` from a CPU-only session's log and the provider session's log; None when a
    log holds no placement report. Keys: provider, nodes_total, nodes_on_provider, nodes_on_cpu, cpu_nodes,
    provider_kernels (one per compiled subgraph for OpenVINO/TensorRT/QNN)."""
    cpu_only = parse_placements(cpu_log)
    placed = parse_placements(provider_log) if provider != CPU else cpu_only
    if CPU not in cpu_only or not placed:
        return None
    total = cpu_only[CPU]["count"]
    fell_back = [op for op, _ in placed.get(CPU, {}).get("nodes", []) if op not in _COPIES] if provider != CPU else []
    if provider == CPU:
        on_cpu = 0
    elif provider not in placed:  # "All nodes placed on [CPU...]": the provider took nothing, ORT lists no nodes
        on_cpu = total
    else:
        on_cpu = len(fell_back)
    return {"provider": provider, "nodes_total": total, "nodes_on_provider": max(total - on_cpu, 0),
            "nodes_on_cpu": on_cpu, "cpu_nodes": fell_back,
            "provider_kernels": placed.get(provider, {}).get("count", 0)}


def session_log(open_session):
    """ORT's log while `open_session(log_severity_level)` opens a session at VERBOSE level; ORT's logger writes to
    file descriptor 2 from native code, so the descriptor is redirected, not sys.stderr."""
    tmp = tempfile.mkdtemp(prefix="compress-placement-")
    path = os.path.join(tmp, "ort.log")
    try:
        with _stderr_into(path):
            open_session(0)  # VERBOSE: the only level that prints the placement report
        with open(path, errors="replace") as f:
            return f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _stderr_into(path):
    sys.stderr.flush()
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    saved = os.dup(2)
    try:
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)
