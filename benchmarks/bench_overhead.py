"""Harness overhead: median latency through `measure` vs a bare `session.run` loop on a small model.

This machine's speed moves by up to 1.5x in phases of seconds, so the two are alternated in short pairs
(~0.3 s each, order flipped every pair) and the result is the median of the per-pair ratios.
The harness runs with its defaults (reference blocks interleaved), one repetition per pair.
Run: python benchmarks/bench_overhead.py [--pairs 40]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_aa_ab import conv_model


def bare_p50_ms(model: Path, seconds: float) -> float:
    """The simplest honest loop: one session, warm-up, perf_counter_ns around session.run."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    for _ in range(20):
        session.run(None, feed)
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        samples.append(time.perf_counter_ns() - t0)
    return float(np.median(samples)) / 1e6


def main() -> None:
    from compress.bench.harness import BenchSettings, measure

    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=0.3)
    args = parser.parse_args()
    # small on purpose (~20-40 us): per-call overhead of the harness would show here first
    model = conv_model(Path(tempfile.mkdtemp(prefix="bench_overhead_")) / "small.onnx", layers=1, channels=8, size=8)
    ratios = []
    settings = BenchSettings(repetitions=1, min_seconds=args.seconds)
    for i in range(args.pairs):
        if i % 2 == 0:
            row = measure(model, "cpu", 1, 1, settings=settings)
            bare = bare_p50_ms(model, seconds=args.seconds)
        else:
            bare = bare_p50_ms(model, seconds=args.seconds)
            row = measure(model, "cpu", 1, 1, settings=settings)
        ratios.append(row["p50_ms"] / bare)
        print(f"pair {i + 1:2d}: harness p50 {row['p50_ms'] * 1000:.2f} us, bare p50 {bare * 1000:.2f} us, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    med = float(np.median(ratios))
    print(f"harness overhead: median ratio {med:.3f} ({(med - 1) * 100:+.1f}%) over {args.pairs} pairs "
          f"(range {min(ratios):.3f}..{max(ratios):.3f})")


if __name__ == "__main__":
    main()
