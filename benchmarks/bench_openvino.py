"""OpenVINO EP vs CPU EP: p50 at batch 1 and 32, same models, same run (interleaved), with placement and parity.

Models: the digits teacher (zoo cnn-large on 8x8; `--teacher PATH` for a trained export, else an untrained one of
the same graph), zoo mobilenet exported at 3x32x32, and the onnx package's light_squeezenet (IR 3, weights made
by ConstantOfShape; its batch is fixed to 1, so batch 1 only). 1 intra-op thread on the CPU EP and
num_of_threads=1 on OpenVINO, so both use one core. 'score' ratio: each row's latency in units of the harness's
reference workload timed in between (stats.gate_score), so a load burst that hits one row cancels out. Needs a venv with onnxruntime-openvino (docs/openvino.md).
Run: python benchmarks/bench_openvino.py [--teacher runs/digits/export/teacher.onnx] [--repetitions 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

CPU, OV = "CPUExecutionProvider", "OpenVINOExecutionProvider"
OV_OPTIONS = {"device_type": "CPU", "num_of_threads": "1", "precision": "FP32"}


def _export(factory, input_shape: tuple[int, ...], path: Path) -> Path:
    import torch

    from compress.onnx.export import export_onnx

    torch.manual_seed(0)
    model = factory(input_shape=input_shape, num_classes=10).eval()
    return export_onnx(model, torch.randn(1, *input_shape), path)


def _max_abs_diff(path: Path, feed: dict[str, np.ndarray]) -> float:
    from compress.bench.providers import open_session

    cpu, _ = open_session(path, "cpu", 1)
    ov, _ = open_session(path, "openvino", 1, provider_options=OV_OPTIONS, strict=True)
    return max(float(np.abs(a - b).max()) for a, b in zip(cpu.run(None, feed), ov.run(None, feed)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, help="the trained digits teacher .onnx (default: untrained export)")
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()

    import onnx
    import onnxruntime as ort

    from compress.bench.harness import BenchSettings, bench_model
    from compress.bench.inputs import make_inputs
    from compress.bench.providers import open_session
    from compress.zoo import cnn_large, mobilenet

    if OV not in ort.get_available_providers():
        print(f"OpenVINO EP not in onnxruntime {ort.__version__} here ({ort.get_available_providers()}); "
              "see docs/openvino.md")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-openvino-"))
    light = Path(os.path.dirname(onnx.__file__)) / "backend/test/data/light/light_squeezenet.onnx"
    models = [("digits teacher (cnn-large 8x8)", args.teacher or _export(cnn_large, (1, 8, 8), tmp / "t.onnx"),
               [1, 32]),
              ("mobilenet 3x32x32", _export(mobilenet, (3, 32, 32), tmp / "m.onnx"), [1, 32]),
              ("light_squeezenet 3x224x224 (onnx backend data)", light, [1])]
    settings = BenchSettings(repetitions=args.repetitions, strict=True, provider_options={"openvino": OV_OPTIONS})
    print(f"onnxruntime {ort.__version__} ({ort.get_device()}), OpenVINO options {OV_OPTIONS}, "
          f"{args.repetitions} interleaved repetitions\n")
    lines = ["| model | batch | CPU EP p50 ms | OpenVINO EP p50 ms | OpenVINO / CPU (p50) | OpenVINO / CPU (score) "
             "| nodes on OpenVINO | max abs diff |", "|---|---|---|---|---|---|---|---|"]
    for name, path, batches in models:
        result = bench_model(path, ["cpu", "openvino"], batches, [1], settings=settings, progress=False)
        rows = {(r["provider"], r["batch"]): r for r in result["latency"]}
        for b in batches:
            cpu, ov = rows[(CPU, b)], rows[(OV, b)]
            session, _ = open_session(path, "cpu", 1)
            diff = _max_abs_diff(path, make_inputs(session, b, None, seed=0))
            p = ov["placement"]
            lines.append(f"| {name} | {b} | {cpu['p50_ms']:.4f} | {ov['p50_ms']:.4f} | "
                         f"{ov['p50_ms'] / cpu['p50_ms']:.3f} | {ov['score'] / cpu['score']:.3f} | "
                         f"{p['nodes_on_provider']}/{p['nodes_total']} "
                         f"({p['provider_kernels']} subgraph) | {diff:.1e} |")
        print("\n".join(lines[-len(batches):]), file=sys.stderr)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
