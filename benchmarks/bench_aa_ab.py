"""A/A and A/B through `compress bench --baseline`: false regressions and detections out of N (default 20).

A is a ~0.8 ms conv stack (5 layers); B has the same input and one more conv layer (about 25% slower; the measured
ratio is printed). One baseline of A is saved, then A and B are benchmarked against it alternately, so both
see the same machine. `--spin N --mem M` add N pure-CPU and M memory-streaming busy processes for the whole
run (the 2-core machine oversubscribed on purpose); the load average is printed either way.
With --mode paired (or both), each run also times `compress bench A --against A` and `bench B --against A`
(paired mode: both models in one process, alternating blocks), so the two gates see the same minutes.
Run: python benchmarks/bench_aa_ab.py [--n 20] [--spin 3 --mem 1] [--mode baseline|paired|both]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--layers", type=int, default=5, help="layers of A; B has one more")
    parser.add_argument("--max-regression", type=float, default=0.10)
    parser.add_argument("--spin", type=int, default=0, help="extra pure-CPU busy processes during the run")
    parser.add_argument("--mem", type=int, default=0, help="extra memory-streaming busy processes during the run")
    parser.add_argument("--mode", choices=("baseline", "paired", "both"), default="baseline",
                        help="saved-baseline gate (--baseline), paired gate (--against), or both in turn")
    args = parser.parse_args()
    load = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.spin)]
    load += [subprocess.Popen([sys.executable, "-c", MEM]) for _ in range(args.mem)]
    try:
        if args.mode in ("baseline", "both"):
            run(args)
        if args.mode in ("paired", "both"):
            run_paired(args)
    finally:
        for proc in load:
            proc.kill()
            proc.wait()


SPIN = "while True: pass"
MEM = "import numpy as np\na = np.ones(8_000_000)\nwhile True: a *= 1.0"


def run(args: argparse.Namespace) -> None:
    from click.testing import CliRunner

    from compress.cli import main as cli

    work = Path(tempfile.mkdtemp(prefix="bench_aa_ab_"))
    a = conv_model(work / "a.onnx", args.layers)
    b = conv_model(work / "b.onnx", args.layers + 1)
    runner = CliRunner()
    base = work / "base.json"
    gate = ["--max-regression", str(args.max_regression), "--quiet"]
    res = runner.invoke(cli, ["bench", str(a), "--json", str(base), "--quiet"])
    assert res.exit_code == 0, res.output
    false_regressions, detections, rechecks_aa, rechecks_ab, loads = 0, 0, 0, 0, []
    aa_ratios, ab_ratios, aa_raw, ab_raw = [], [], [], []
    for i in range(args.n):
        for name, model, out in (("A", a, work / f"a{i}.json"), ("B", b, work / f"b{i}.json")):
            res = runner.invoke(cli, ["bench", str(model), "--baseline", str(base), "--json", str(out), *gate])
            if res.exit_code not in (0, 1):
                raise SystemExit(res.output)
            new = json.loads(out.read_text())["latency"][0]
            old = json.loads(base.read_text())["latency"][0]
            ratio = new["score"] / old["score"]
            loads.append(os.getloadavg()[0])
            raw = new["p50_ms"] / old["p50_ms"]
            if name == "A":
                false_regressions += res.exit_code == 1
                rechecks_aa += bool(new.get("rechecked"))
                aa_ratios.append(ratio)
                aa_raw.append(raw)
            else:
                detections += res.exit_code == 1
                rechecks_ab += bool(new.get("rechecked"))
                ab_ratios.append(ratio)
                ab_raw.append(raw)
        print(f"run {i + 1:2d}: A/A ratio {aa_ratios[-1]:.3f} (raw {aa_raw[-1]:.3f})  "
              f"A/B ratio {ab_ratios[-1]:.3f} (raw {ab_raw[-1]:.3f})  load {loads[-1]:.1f}", flush=True)
    print(f"A/A false regressions: {false_regressions}/{args.n} at --max-regression {args.max_regression} "
          f"(score ratio range {min(aa_ratios):.3f}..{max(aa_ratios):.3f}; raw p50 ratio {min(aa_raw):.3f}..{max(aa_raw):.3f}; "
          f"re-measured {rechecks_aa})")
    print(f"A/B detections: {detections}/{args.n} for B = A + 1 layer (score ratio median {np.median(ab_ratios):.3f}, "
          f"range {min(ab_ratios):.3f}..{max(ab_ratios):.3f}; raw p50 ratio {min(ab_raw):.3f}..{max(ab_raw):.3f}; "
          f"re-measured {rechecks_ab})")
    print(f"1-min load average during the runs: {min(loads):.1f}..{max(loads):.1f} on {os.cpu_count()} cores "
          f"(extra busy processes: {args.spin} spin, {args.mem} mem)")


def run_paired(args: argparse.Namespace) -> None:
    """A/A and A/B through `compress bench NEW --against OLD`: false regressions and detections out of N."""
    from click.testing import CliRunner

    from compress.cli import main as cli

    work = Path(tempfile.mkdtemp(prefix="bench_paired_"))
    a = conv_model(work / "a.onnx", args.layers)
    b = conv_model(work / "b.onnx", args.layers + 1)
    runner = CliRunner()
    gate = ["--max-regression", str(args.max_regression), "--quiet"]
    found = {"A": [], "B": []}
    loads = []
    for i in range(args.n):
        for name, model in (("A", a), ("B", b)):
            out = work / f"{name}{i}.json"
            res = runner.invoke(cli, ["bench", str(model), "--against", str(a), "--json", str(out), *gate])
            if res.exit_code not in (0, 1):
                raise SystemExit(res.output)
            row = json.loads(out.read_text())["paired"][0]
            found[name].append((res.exit_code == 1, row["ratio"], row["raw_ratio"], row["verdict"]))
            loads.append(os.getloadavg()[0])
        (_, ra, _, va), (_, rb, _, vb) = found["A"][-1], found["B"][-1]
        print(f"paired run {i + 1:2d}: A/A ratio {ra:.3f} ({va})  A/B ratio {rb:.3f} ({vb})  load {loads[-1]:.1f}",
              flush=True)
    for name, what in (("A", "A/A false regressions"), ("B", "A/B detections")):
        ratios = [r for _, r, _, _ in found[name]]
        print(f"paired {what}: {sum(f for f, *_ in found[name])}/{args.n} at --max-regression {args.max_regression} "
              f"(paired ratio median {np.median(ratios):.3f}, range {min(ratios):.3f}..{max(ratios):.3f}; "
              f"unsure {sum(v == 'unsure' for *_, v in found[name])})")
    print(f"1-min load average during the paired runs: {min(loads):.1f}..{max(loads):.1f} on {os.cpu_count()} cores "
          f"(extra busy processes: {args.spin} spin, {args.mem} mem)")


if __name__ == "__main__":
    main()
