"""A/A and A/B through `compress bench --baseline`: false regressions and detections out of N (default 20).

A is a ~0.8 ms conv stack (5 layers); B has the same input and one more conv layer (about 25% slower; the measured
ratio is printed). One baseline of A is saved, then A and B are benchmarked against it alternately, so both
see the same machine. Run: python benchmarks/bench_aa_ab.py [--n 20]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def conv_model(path: Path, layers: int, channels: int = 32, size: int = 32) -> Path:
    """Conv3x3 stack on [batch, 3, size, size]; each extra layer adds the same cost."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev, cin = [], [], "x", 3
    for i in range(layers):
        w = (rng.standard_normal((channels, cin, 3, 3)) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, cin = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["y"]))
    graph = helper.make_graph(
        nodes, f"conv{layers}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels, 1, 1])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def main() -> None:
    from click.testing import CliRunner

    from compress.cli import main as cli

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--layers", type=int, default=5, help="layers of A; B has one more")
    parser.add_argument("--max-regression", type=float, default=0.10)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_aa_ab_"))
    a = conv_model(work / "a.onnx", args.layers)
    b = conv_model(work / "b.onnx", args.layers + 1)
    runner = CliRunner()
    base = work / "base.json"
    gate = ["--max-regression", str(args.max_regression), "--quiet"]
    res = runner.invoke(cli, ["bench", str(a), "--json", str(base), "--quiet"])
    assert res.exit_code == 0, res.output
    false_regressions, detections = 0, 0
    aa_ratios, ab_ratios, aa_raw, ab_raw = [], [], [], []
    for i in range(args.n):
        for name, model, out in (("A", a, work / f"a{i}.json"), ("B", b, work / f"b{i}.json")):
            res = runner.invoke(cli, ["bench", str(model), "--baseline", str(base), "--json", str(out), *gate])
            if res.exit_code not in (0, 1):
                raise SystemExit(res.output)
            new = json.loads(out.read_text())["latency"][0]
            old = json.loads(base.read_text())["latency"][0]
            ratio = new["p50_score"] / old["p50_score"]
            raw = new["p50_ms"] / old["p50_ms"]
            if name == "A":
                false_regressions += res.exit_code == 1
                aa_ratios.append(ratio)
                aa_raw.append(raw)
            else:
                detections += res.exit_code == 1
                ab_ratios.append(ratio)
                ab_raw.append(raw)
        print(f"run {i + 1:2d}: A/A ratio {aa_ratios[-1]:.3f} (raw {aa_raw[-1]:.3f})  "
              f"A/B ratio {ab_ratios[-1]:.3f} (raw {ab_raw[-1]:.3f})", flush=True)
    print(f"A/A false regressions: {false_regressions}/{args.n} at --max-regression {args.max_regression} "
          f"(score ratio range {min(aa_ratios):.3f}..{max(aa_ratios):.3f}; raw p50 ratio {min(aa_raw):.3f}..{max(aa_raw):.3f})")
    print(f"A/B detections: {detections}/{args.n} for B = A + 1 layer (score ratio median {np.median(ab_ratios):.3f}, "
          f"range {min(ab_ratios):.3f}..{max(ab_ratios):.3f}; raw p50 ratio {min(ab_raw):.3f}..{max(ab_raw):.3f})")


if __name__ == "__main__":
    main()
