"""Issue 2's numbers on pipelines/digits.toml: accuracies, KD vs control, size and latency ratios, parity, timings.

Usage: python benchmarks/bench_pipeline.py [--seeds 0 1 2] [--keep]
Runs the pipeline from scratch (a temporary output_dir), then again (cached), and prints one line per check.
With several seeds it also reports how often the distilled student beat or matched the control.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(seed: int, out: Path) -> tuple[dict, float, float]:
    import json

    text = (ROOT / "pipelines/digits.toml").read_text()
    text = re.sub(r"output_dir = .*", f'output_dir = "{out}"', text)
    text = re.sub(r"seed = \d+", f"seed = {seed}", text)
    toml = out.parent / f"digits-seed{seed}.toml"
    toml.write_text(text)
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "compress", "run", str(toml), "--quiet"], check=True,
                       stdout=subprocess.DEVNULL)
        timings.append(time.perf_counter() - start)
    return json.loads((out / "report.json").read_text()), timings[0], timings[1]


def headline(model: dict) -> float:
    return next(r["p50_ms"] for r in model["latency"] if r["batch"] == 1 and r["threads"] == 1
                and r["provider"] == "CPUExecutionProvider")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    wins = 0
    try:
        for seed in args.seeds:
            report, first_s, cached_s = run_once(seed, tmp / f"seed{seed}")
            m = {x["name"]: x for x in report["models"]}
            t, s, c = m["teacher"], m["student"], m["control"]
            final = m[report["final"]]
            print(f"seed {seed}")
            print(f"  teacher accuracy (ORT)           {100 * t['accuracy']:.2f}%   (>= 97%)")
            print(f"  final ({report['final']}) accuracy   {100 * final['accuracy']:.2f}%   "
                  f"(gap {100 * (t['accuracy'] - final['accuracy']):+.2f} points, <= 1.5)")
            print(f"  distilled vs control             {100 * s['accuracy']:.2f}% vs {100 * c['accuracy']:.2f}%   (>=)")
            print(f"  params teacher / final           {t['params']:,} / {final['params']:,} = "
                  f"{t['params'] / final['params']:.1f}x   (>= 20x)")
            print(f"  p50 b1 t1 teacher / final        {headline(t):.4f} / {headline(final):.4f} ms = "
                  f"{headline(t) / headline(final):.1f}x   (>= 10x)")
            worst = max(x["parity"]["max_abs_diff"] for x in report["models"] if x.get("parity"))
            print(f"  fp32 parity max abs diff         {worst:.2e}   (<= 1e-4)")
            print(f"  first run                        {first_s:.1f} s   (< 180 s)")
            print(f"  cached rerun                     {cached_s:.1f} s = {100 * cached_s / first_s:.1f}% of first "
                  "(< 20%)")
            wins += s["accuracy"] >= c["accuracy"]
        if len(args.seeds) > 1:
            print(f"distilled >= control in {wins}/{len(args.seeds)} seeds")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")


if __name__ == "__main__":
    main()
