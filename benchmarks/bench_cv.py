"""Run-to-run coefficient of variation of p50 for a ~1 ms model, with default BenchSettings.

Each run is a full `measure` (fresh sessions, warm-up, 5 repetitions), as `compress bench` does it. Prints
the CV of the raw p50 and of the reference-normalized gate score (stats.gate_score) and its two halves
across runs, and the load average.
Run: python benchmarks/bench_cv.py [--runs 10]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench_aa_ab import conv_model


def main() -> None:
    from compress.bench.harness import measure

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    model = conv_model(Path(tempfile.mkdtemp(prefix="bench_cv_")) / "m.onnx", layers=4)
    rows = []
    for i in range(args.runs):
        row = measure(model, "cpu", 1, 1)
        rows.append(row)
        print(f"run {i + 1:2d}: p50 {row['p50_ms']:.4f} ms  score {row['score']:.3f}  "
              f"in-run cv of p50 across repetitions {row['cv_p50_across_repetitions']:.1%}", flush=True)
    p50 = np.array([r["p50_ms"] for r in rows])
    score = np.array([r["score"] for r in rows])
    median_ratio = np.array([r["p50_score"] for r in rows])
    quiet = np.array([r["quiet_score"] for r in rows])
    import os

    print(f"1-min load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"model p50 median {np.median(p50):.3f} ms")
    print(f"run-to-run CV of p50: raw {p50.std(ddof=1) / p50.mean():.1%}, "
          f"gate score {score.std(ddof=1) / score.mean():.1%} (its halves: quiet score "
          f"{quiet.std(ddof=1) / quiet.mean():.1%}, median of block ratios "
          f"{median_ratio.std(ddof=1) / median_ratio.mean():.1%}) over {args.runs} runs")


if __name__ == "__main__":
    main()
