"""A model over 2 GB (weights as ONNX external data) through `compress bench`, `compress edge` and `compress quantize`.

One serialized ONNX protobuf holds at most 2 GB, so models this large keep their weights in a file beside the
.onnx (external data). This writes one: x[N, 1024] @ W1[1024, 540000] -> ReLU -> @ W2[540000, 10], 2.2 GB of float32
weights, then runs each command on it and prints its exit code, wall time, peak memory (RSS of the child) and the
first line it printed. Expected: bench measures it; edge refuses in one line (an ORT-format file is one flatbuffer,
at most 2 GB); quantize (dynamic int8) writes OUT.onnx + OUT.onnx.data, about a quarter of the size.

    .venv/bin/python benchmarks/bench_external.py [--out /tmp/bench_external] [--hidden 540000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_model(path: Path, hidden: int) -> int:
    """The weights are written straight to `<name>.data` and referenced from the graph: a tensor over 2 GB cannot
    pass through a protobuf message even for a moment (onnx.helper would serialize it)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    data = path.parent / f"{path.name}.data"
    tensors = []
    with open(data, "wb") as f:
        for name, shape, scale in (("w1", (1024, hidden), 1 / 32.0), ("w2", (hidden, 10), 1 / np.sqrt(hidden))):
            offset = f.tell()
            for rows in np.array_split(np.arange(shape[0]), max(1, shape[0] // 64)):  # in slices: bounded memory
                f.write((rng.standard_normal((len(rows), shape[1]), dtype=np.float32) * scale).astype(np.float32)
                        .tobytes())
            tensor = TensorProto(name=name, dims=shape, data_type=TensorProto.FLOAT,
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(f.tell() - offset))):
                tensor.external_data.add(key=key, value=value)
            tensors.append(tensor)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], tensors)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path.stat().st_size + data.stat().st_size


def run(args: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip() and "[W:onnxruntime" not in ln]
    return {"exit": done.returncode, "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_gb_so_far": round(peak_kb / 2**20, 2), "first_line": (lines or [""])[0][:300]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_external"))
    parser.add_argument("--hidden", type=int, default=540_000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "big.onnx"
    size = write_model(model, args.hidden)
    result = {"model_gb": round(size / 2**30, 2), "load_1min": round(os.getloadavg()[0], 2)}
    print(f"wrote {model}: {result['model_gb']} GB with its external data")
    result["bench"] = run(["bench", str(model), "--quiet", "--time-budget", "10"])
    result["edge"] = run(["edge", str(model), "--out", str(args.out / "edge")])
    out = args.out / "q" / "big-int8.onnx"
    result["quantize"] = run(["quantize", str(model), "--out", str(out), "--mode", "dynamic", "--no-fallback",
                              "--max-accuracy-drop", "1", "--quiet"])
    if out.exists():
        data = out.parent / f"{out.name}.data"
        result["quantize"]["out_gb"] = round((out.stat().st_size + (data.stat().st_size if data.exists() else 0))
                                             / 2**30, 3)
        result["quantize"]["external_data_file"] = data.exists()
    print(json.dumps(result, indent=2))
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
