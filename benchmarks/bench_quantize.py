"""Quantize-stage numbers on this CPU, for the README (issue 4).

    python benchmarks/bench_quantize.py [--out runs/bench_quantize] [--epochs 15] [--threads 1]

Trains on the built-in digits data (offline), exports to ONNX, runs `compress.quantize.quantize` and
prints one table. Targets: conv-heavy static int8 at batch 32 >= 1.8x faster than fp32 with <= 0.5 point drop;
Linear-heavy dynamic int8 >= 1.5x faster at batch 1; int8 file <= 30% of fp32. Writes results.json to --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = {"conv": ("static", 32, 1.8), "conv16": ("static", 32, 1.8), "linear": ("dynamic", 1, 1.5)}


def _digits(upsample: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The built-in digits (8x8, scaled to [0, 1]), optionally upsampled; a fixed 80/20 split."""
    data = np.load(Path(__file__).resolve().parents[1] / "compress" / "data" / "digits.npz")
    x = data["x"].astype(np.float32)[:, None] / 16.0
    if upsample > 1:
        x = x.repeat(upsample, axis=2).repeat(upsample, axis=3)
    y = data["y"].astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[idx[:cut]], y[idx[:cut]], x[idx[cut:]], y[idx[cut:]]


def _train(model: Any, x: np.ndarray, y: np.ndarray, epochs: int) -> Any:
    import torch

    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * -(-len(x) // 64))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            b = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def _export(model: Any, example: np.ndarray, path: Path) -> Path:
    import torch

    torch.onnx.export(model, (torch.from_numpy(example[:2]),), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def _models(epochs: int) -> dict[str, tuple[Any, tuple]]:
    import torch.nn as nn

    from compress.zoo import cnn_large, mlp

    wide16 = nn.Sequential(  # a wide CNN on 16x16 inputs
        nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))
    return {
        "conv": (cnn_large((1, 8, 8), 10), _digits(1)),  # the digits teacher
        "conv16": (wide16, _digits(2)),
        "linear": (mlp((1, 8, 8), 10, hidden=(1024, 1024, 1024)), _digits(1)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_quantize"))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--sweep", action="store_true",
                    help="also time the static settings grid on the digits teacher (why the defaults are what they are)")
    args = ap.parse_args()

    from compress.bench.config import BenchSettings
    from compress.quantize import QuantizeConfig, quantize_arrays

    settings = BenchSettings(warmup_runs=20, min_runs=100, min_seconds=0.6, repetitions=5)  # the harness defaults
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name, (model, (xtr, ytr, xva, yva)) in _models(args.epochs).items():
        if name not in args.only:
            continue
        mode, batch, target = TARGETS[name]
        t0 = time.perf_counter()
        model = _train(model, xtr, ytr, args.epochs)
        fp32 = _export(model, xva, args.out / f"{name}.onnx")
        cfg = QuantizeConfig(mode=mode, max_accuracy_drop=0.005, pick="quantized")
        res = quantize_arrays(fp32, args.out / f"{name}-{mode}", cfg, calib_x=xtr, val_x=xva, val_y=yva,
                       providers=["cpu"], batch_sizes=sorted({1, batch}), threads=args.threads,
                       bench_settings=settings)
        acc = next(a for a in reversed(res["attempts"]) if a["accuracy"] is not None)
        p50 = {(r["batch"]): r["p50_ms"] for r in res["float"]["latency"]["rows"]}
        q50 = {(r["batch"]): r["p50_ms"] for r in (acc["latency"] or {"rows": []})["rows"]}
        speed = {b: p50[b] / q50[b] for b in p50 if b in q50}
        results[name] = {
            "mode": mode, "params": sum(p.numel() for p in model.parameters()),
            "fp32_accuracy": res["float"]["accuracy"], "int8_accuracy": acc["accuracy"],
            "drop_points": 100 * acc["accuracy_drop"], "attempts": len(res["attempts"]),
            "accepted": acc["accepted"], "fp32_bytes": res["float"]["bytes"], "int8_bytes": acc["bytes"],
            "size_ratio": acc["bytes"] / res["float"]["bytes"], "fp32_p50_ms": p50, "int8_p50_ms": q50,
            "speedup": speed, "target_batch": batch, "target_speedup": target,
            "meets_targets": bool(acc["accepted"] and speed.get(batch, 0) >= target
                                  and acc["bytes"] <= 0.3 * res["float"]["bytes"]),
            "why": res["why"], "seconds": time.perf_counter() - t0,
        }
    if args.sweep:
        results["sweep"] = _sweep(args.out, args.epochs, args.threads, settings)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\n{'model':8} {'mode':8} {'params':>9} {'acc fp32':>8} {'drop pts':>8} {'size %':>7} "
          f"{'p50 fp32 ms (b1/bN)':>20} {'p50 int8 ms':>14} {'speedup':>14} target")
    for name, r in results.items():
        if name == "sweep":
            continue
        bs = sorted(r["fp32_p50_ms"])
        f = "/".join(f"{r['fp32_p50_ms'][b]:.3f}" for b in bs)
        q = "/".join(f"{r['int8_p50_ms'][b]:.3f}" for b in bs)
        s = "/".join(f"{r['speedup'][b]:.2f}x" for b in bs)
        ok = "MET" if r["meets_targets"] else "MISSED"
        print(f"{name:8} {r['mode']:8} {r['params']:>9} {r['fp32_accuracy']:>8.4f} {r['drop_points']:>8.2f} "
              f"{100 * r['size_ratio']:>6.1f}% {f:>20} {q:>14} {s:>14} {ok} (>= {r['target_speedup']}x at "
              f"b{r['target_batch']}, <= 0.5 pts, <= 30%)")

    for row in results.get("sweep", []):
        print("sweep", "  ".join(f"{k}={v}" for k, v in row.items()))


def _sweep(out: Path, epochs: int, threads: int, settings: Any) -> list[dict[str, Any]]:
    """Static int8 on the digits teacher at batch 32 under each activation/weight type, granularity and format."""
    from compress.quantize import QuantizeConfig, quantize_arrays
    from compress.zoo import cnn_large

    xtr, ytr, xva, yva = _digits(1)
    fp32 = _export(_train(cnn_large((1, 8, 8), 10), xtr, ytr, epochs), xva, out / "sweep.onnx")
    rows = []
    for act, weight in (("uint8", "int8"), ("int8", "int8"), ("uint8", "uint8")):
        for per_channel in (True, False):
            for fmt in ("qdq", "qoperator"):
                cfg = QuantizeConfig(activation_type=act, weight_type=weight, per_channel=per_channel,
                                     quant_format=fmt, fallback=False, max_accuracy_drop=1.0, pick="quantized")
                tag = f"{act[0]}{weight[0]}-{'pc' if per_channel else 'pt'}-{fmt}"
                res = quantize_arrays(fp32, out / f"sweep-{tag}", cfg, calib_x=xtr, val_x=xva, val_y=yva,
                               providers=["cpu"], batch_sizes=[32], threads=threads, bench_settings=settings,
                               progress=False)
                att = res["attempts"][0]
                rows.append({"settings": tag, "drop_points": round(100 * (att["accuracy_drop"] or 0), 2),
                             "speedup_b32": round(res["pick"]["speedup"], 2) if res["pick"] else None,
                             "reason": att["reason"]})
    return rows


if __name__ == "__main__":
    main()
