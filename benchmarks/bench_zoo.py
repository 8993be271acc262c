"""Model-zoo graphs nobody here wrote, through `compress bench`, `compress edge` and `compress quantize`.

The onnx package ships real model-zoo network graphs in its backend test data (onnx/backend/test/data/light: IR 3,
opset 9, weights replaced by ConstantOfShape so the package stays small): AlexNet, DenseNet-121, Inception v1/v2,
ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512. Plus one transformer exported here (2-layer encoder). Each
command must succeed or exit 2 with one short line; this prints one row per (model, command) with the outcome.
The weights are constants, so accuracy and agreement figures on these graphs mean nothing: only whether each
command copes with the graph, and how long it takes.

    .venv/bin/python benchmarks/bench_zoo.py [--out runs/bench_zoo]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def _transformer(out: Path) -> Path:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_qnn import tiny_transformer

    from compress.onnx.export import export_onnx

    torch.manual_seed(0)
    model = tiny_transformer((1, 8, 8), 10).eval()
    return export_onnx(model, torch.rand(2, 1, 8, 8), out / "transformer.onnx", opset=17)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_zoo"))
    args = parser.parse_args()
    import onnx

    light = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
    args.out.mkdir(parents=True, exist_ok=True)
    models = sorted(light.glob("light_*.onnx")) + [_transformer(args.out)]
    compress = [sys.executable, "-m", "compress"]
    print("| model | command | exit | seconds | last line |\n|---|---|---|---|---|")
    for model in models:
        name = model.stem.removeprefix("light_")
        commands = {
            "bench": ["bench", str(model), "--batch", "1", "--quiet"],
            "edge": ["edge", str(model), "--out", str(args.out / f"{name}_edge")],
            "quantize": ["quantize", str(model), "--out", str(args.out / f"{name}-int8.onnx"), "--mode", "dynamic",
                         "--max-accuracy-drop", "1", "--quiet"],
        }
        for command, argv in commands.items():
            started = time.perf_counter()
            done = subprocess.run(compress + argv, capture_output=True, text=True, timeout=900)
            lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
            last = next((l for l in reversed(lines) if l.startswith("error:")), lines[-1] if lines else "")
            print(f"| {name} | {command} | {done.returncode} | {time.perf_counter() - started:.1f} | "
                  f"{last[:160].replace('|', '/')} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
