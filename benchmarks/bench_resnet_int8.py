"""Static int8 of a ResNet-50 at batch 8 through `compress quantize`: speedup over fp32, agreement, accuracy.

No trained ResNet-50 can be had offline here (the onnx package's model-zoo ResNet-50 has its weights replaced by
constants), so this builds the torchvision ResNet-50 architecture (bottleneck blocks 3-4-6-3, 25.5M parameters) in
plain torch, with seeded He-initialised convolutions, batch-norm statistics taken from the data (a few forward passes
in train mode) and a real classifier on top: the 2048-d pooled features of the digits (upsampled to 3x224x224) fit
by ridge regression (a linear probe). The network is then a real digit classifier whose activations have real
ranges, which is what static calibration and the agreement check need. It is exported (opset 17, dynamic batch) and
handed to `compress quantize --mode static --batch 8` like any user's ONNX file, with held-out labelled digits as
--data, so the gate is accuracy; agreement with fp32 is computed here on the same images.

    .venv/bin/python benchmarks/bench_resnet_int8.py [--out runs/bench_resnet_int8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def resnet50(num_classes: int = 10):
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int):
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    layers: list = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return features, nn.Linear(cin, num_classes)


def digits_224(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n digits (8x8, 0-16) upsampled to 3x224x224, normalised, with a little noise."""
    import torch

    with np.load(Path(__file__).resolve().parents[1] / "compress" / "data" / "digits.npz") as z:
        x, y = z["x"].astype(np.float32) / 16.0, z["y"]
    idx = np.random.default_rng(seed).permutation(len(x))[:n]
    small = torch.from_numpy(x[idx].reshape(-1, 1, 8, 8))
    big = torch.nn.functional.interpolate(small, size=224, mode="bilinear", align_corners=False)
    big = (big - 0.3) / 0.35 + 0.05 * torch.randn(big.shape, generator=torch.Generator().manual_seed(seed))
    return big.repeat(1, 3, 1, 1).numpy().astype(np.float32), y[idx].astype(np.int64)


def build(out: Path) -> dict:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    features, head = resnet50()
    x, y = digits_224(900, seed=0)
    train, test = slice(0, 600), slice(600, 900)
    features.train()
    with torch.no_grad():
        for i in range(0, 256, 32):  # batch-norm statistics from the data, not from init
            features(torch.from_numpy(x[i:i + 32]))
        features.eval()
        feats = torch.cat([features(torch.from_numpy(x[i:i + 50])) for i in range(0, len(x), 50)]).numpy()
    f_train, onehot = feats[train], np.eye(10, dtype=np.float32)[y[train]]
    mean, scale = f_train.mean(0), f_train.std(0) + 1e-6
    z = (f_train - mean) / scale
    w = np.linalg.solve(z.T @ z + 10.0 * np.eye(z.shape[1]), z.T @ onehot)  # ridge: (2048, 10)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy((w / scale[:, None]).T.astype(np.float32)))
        head.bias.copy_(torch.from_numpy((-(mean / scale) @ w).astype(np.float32)))
    model = torch.nn.Sequential(features, head).eval()
    from compress.onnx.export import export_onnx

    path = export_onnx(model, torch.from_numpy(x[:2]), out / "resnet50.onnx", opset=17)
    np.savez(out / "calib.npz", x=x[:64])  # calibration: training images
    np.savez(out / "test.npz", x=x[test], y=y[test])  # the gate: held-out labelled digits
    return {"onnx": str(path), "params": sum(p.numel() for p in model.parameters()), "test": int(len(y[test]))}


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    from compress.onnx.parity import run_cpu

    return run_cpu(path, {"input": x}, batch_size=50)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_resnet_int8"))
    parser.add_argument("--reuse", action="store_true", help="keep the model and data a previous run built")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    if args.reuse and (args.out / "built.json").exists():
        built = json.loads((args.out / "built.json").read_text())
    else:
        built = build(args.out)
        (args.out / "built.json").write_text(json.dumps(built))
    print(f"built ResNet-50 ({built['params'] / 1e6:.1f}M params) in {time.perf_counter() - started:.0f} s")
    int8 = args.out / "resnet50-int8.onnx"
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "compress", "quantize", built["onnx"], "--out", str(int8), "--mode", "static",
           "--calibration", str(args.out / "calib.npz"), "--data", str(args.out / "test.npz"), "--batch", "8",
           "--max-accuracy-drop", "0.01", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    print(f"compress quantize exit {done.returncode} in {seconds:.0f} s")
    print(done.stdout[-3000:], done.stderr[-2000:])
    summary = json.loads(int8.with_suffix(".json").read_text())
    test = np.load(args.out / "test.npz")
    chosen = summary["attempts"][-1]["path"] if summary["out"] is None else str(int8)
    f32, q = outputs(Path(built["onnx"]), test["x"]), outputs(Path(chosen), test["x"]) if Path(chosen).exists() else None
    result = {
        "load_1min": round(load, 2), "quantize_seconds": round(seconds, 1), "exit": done.returncode,
        "params_m": round(built["params"] / 1e6, 2), "final": summary["final"], "pick": summary["pick"],
        "fp32_accuracy": summary["float"]["accuracy"],
        "attempts": [{k: a.get(k) for k in ("name", "accuracy", "accuracy_drop", "bytes", "accepted")}
                     for a in summary["attempts"]],
        "fp32_bytes": Path(built["onnx"]).stat().st_size,
    }
    if q is not None:
        result["top1_agreement"] = float((f32.argmax(1) == q.argmax(1)).mean())
        result["distinct_fp32_classes"] = int(len(set(f32.argmax(1).tolist())))
    for side in ("float", "attempts"):
        rows = summary[side]["latency"]["rows"] if side == "float" else \
            [r for a in summary["attempts"] for r in ((a.get("latency") or {}).get("rows") or [])]
        result[f"{side}_p50_ms_b8"] = [round(r["p50_ms"], 2) for r in rows if r["batch"] == 8]
    print(json.dumps(result, indent=2))
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
