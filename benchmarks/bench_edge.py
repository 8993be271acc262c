"""Edge prep on the two reference students: the digits CNN (`cnn-small`) and the MobileNet-style net.

For each: train briefly on the built-in digits, export to ONNX (dynamic batch), then
  - ORT format (basic optimization) + reduced-operator config; load it; max abs diff vs the ONNX model on the
    whole validation set (fp32 target: <= 1e-5) and top-1 agreement / accuracy of both;
  - the same after `fix_batch(1)` (what NNAPI/CoreML/QNN want), parity over 64 single-image runs;
  - readiness: for every provider ORT's tools cover, every node of the analysed graph is listed once;
  - a bench kit run with this interpreter, its p50 next to `compress bench`'s harness on the same model.

    python benchmarks/bench_edge.py [--out runs/bench_edge] [--epochs 8]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _train_and_export(name: str, factory, data, epochs: int, out: Path) -> Path:
    import torch

    from compress.train import TrainConfig, evaluate, fit

    torch.manual_seed(0)
    model = factory(input_shape=data.input_shape, num_classes=data.num_classes)
    fit(model, (data.x_train, data.y_train), (data.x_val, data.y_val), TrainConfig(epochs=epochs), seed=0,
        progress=False)
    model.eval()
    print(f"{name}: torch val accuracy {evaluate(model, data.x_val, data.y_val):.4f}")
    path = out / f"{name}.onnx"
    torch.onnx.export(model, (data.example(2),), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def _accuracy(path: Path, x, y, *, ort_format: bool) -> float:
    import numpy as np

    import onnxruntime as ort

    opts = ort.SessionOptions()
    if ort_format:
        opts.add_session_config_entry("session.load_model_format", "ORT")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    fixed = session.get_inputs()[0].shape[0]
    if isinstance(fixed, int):
        logits = np.concatenate([session.run(None, {"x": x[i:i + fixed]})[0] for i in range(0, len(x), fixed)])
    else:
        logits = session.run(None, {"x": x})[0]
    return float((logits.argmax(-1) == y).mean())


def _every_node_listed(section: dict) -> dict:
    out = {}
    for key, p in section["providers"].items():
        if not p["available"]:
            out[key] = "not covered: no rules in onnxruntime.tools"
            continue
        names = [n["name"] for n in p["nodes"]]
        ok = len(names) == p["nodes_total"] == len(set(names)) == section["nodes"]
        ok = ok and sum(n["taken"] for n in p["nodes"]) == p["nodes_taken"]
        out[key] = {"every_node_listed": ok, "nodes": p["nodes_total"], "taken": p["nodes_taken"],
                    "partitions": p["partitions"], "suitability": p["suitability"],
                    "falls_back": p["unsupported_ops"], "dynamic_shape_fallbacks": p["fallback_due_to_dynamic_shape"]}
    return out


def bench_one(name: str, onnx_path: Path, data, out: Path) -> dict:
    import numpy as np

    from compress import edge
    from compress.bench.harness import BenchSettings, measure

    x_val = data.x_val.numpy().astype(np.float32)
    y_val = data.y_val.numpy()
    result: dict = {"onnx_bytes": onnx_path.stat().st_size}

    t0 = time.perf_counter()
    dyn = edge.prepare(onnx_path, out / f"{name}_edge", inputs={"x": x_val})
    result["dynamic"] = {
        "seconds": round(time.perf_counter() - t0, 2),
        "ort_bytes": dyn["ort"]["bytes"],
        "config": Path(dyn["ort"]["config_path"]).read_text().splitlines()[2:],
        "parity_val_set": dyn["parity"],
        "accuracy_onnx": _accuracy(onnx_path, x_val, y_val, ort_format=False),
        "accuracy_ort": _accuracy(Path(dyn["ort"]["ort_path"]), x_val, y_val, ort_format=True),
        "dynamic_inputs": dyn["readiness"]["dynamic_inputs"],
        "readiness": _every_node_listed(dyn["readiness"]),
    }

    fixed = edge.prepare(onnx_path, out / f"{name}_edge_b1", fixed_batch=1, inputs={"x": x_val[:1]})
    worst = 0.0
    for i in range(64):
        worst = max(worst, edge.ort_parity(Path(fixed["onnx_path"]), Path(fixed["ort"]["ort_path"]),
                                           {"x": x_val[i:i + 1]})["max_abs_diff"])
    result["fixed_batch_1"] = {
        "ort_bytes": fixed["ort"]["bytes"],
        "max_abs_diff_64_images": worst,
        "accuracy_ort": _accuracy(Path(fixed["ort"]["ort_path"]), x_val, y_val, ort_format=True),
        "readiness": _every_node_listed(fixed["readiness"]),
    }
    print(f"\n{name} (fixed batch 1):\n{edge.readiness_table(fixed['readiness'])}")

    # bench kit on this machine vs the harness `compress bench` uses; same model, batch 1, 1 thread. Alternated
    # three times: on a shared 2-core box the load moves p50 by tens of % from one minute to the next.
    kit = edge.make_kit(Path(fixed["onnx_path"]), out / f"{name}_kit", inputs={"x": x_val[:1]},
                        providers=["cpu", "xnnpack", "nnapi"], name=name)
    kit_p50, harness_p50, kit_seconds = [], [], []
    for _ in range(3):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-I", "bench_kit.py", "--json", "local_kit.json"], cwd=kit,
                              capture_output=True, text=True)
        kit_seconds.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        kit_entry = json.loads((kit / "local_kit.json").read_text())["models"][0]
        kit_p50.append(kit_entry["latency"][0]["p50_ms"])
        harness_row = measure(fixed["onnx_path"], "cpu", 1, 1, inputs={"x": x_val[:1]}, settings=BenchSettings())
        harness_p50.append(harness_row["p50_ms"])
    result["kit"] = {
        "seconds_per_run": round(float(np.median(kit_seconds)), 2),
        "kit_p50_ms": [round(v, 5) for v in kit_p50],
        "harness_p50_ms": [round(v, 5) for v in harness_p50],
        "median_kit_over_harness_p50": round(float(np.median(kit_p50) / np.median(harness_p50)), 3),
        "unavailable": [u["provider"] for u in kit_entry["unavailable"]],
        "parity_on_device": kit_entry["parity"],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_edge"))
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from compress.data import DataConfig, load_data
    from compress.zoo import BUILTINS

    data = load_data(DataConfig(), seed=0, base_dir=Path("."))
    results = {}
    for name in ("cnn-small", "mobilenet"):
        onnx_path = _train_and_export(name, BUILTINS[name], data, args.epochs, args.out)
        results[name] = bench_one(name, onnx_path, data, args.out)
    (args.out / "bench_edge.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    ok = all(
        r["dynamic"]["parity_val_set"]["max_abs_diff"] <= 1e-5 and r["fixed_batch_1"]["max_abs_diff_64_images"] <= 1e-5
        and all(v["every_node_listed"] for part in ("dynamic", "fixed_batch_1")
                for v in r[part]["readiness"].values() if isinstance(v, dict))
        for r in results.values()
    )
    print(f"\ntargets (ORT format loads, max abs diff <= 1e-5, every node listed): {'MET' if ok else 'MISSED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
