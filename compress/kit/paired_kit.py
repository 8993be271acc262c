"""Paired mode of the bench kit: the kit's model (NEW) against `against.onnx` (OLD), on the device, one process.

Copied into a kit made with `compress bench NEW --against OLD --kit DIR`; bench_kit.py imports it from the kit
folder. Like bench_kit.py it needs only numpy (and the sessions bench_kit opens). `verdict` is the one paired rule:
compress.bench.paired.paired_verdict calls it too, since a kit may not import compress. OLD and NEW timed in
alternating ABBA blocks, the ratio is the median over pairs of new_block_p50 / old_block_p50, its 99% CI is the
distribution-free CI of that median, and REGRESSED needs both the CI above 1 and the ratio past 1 + budget.
Fewer than MIN_PAIRS pairs cannot give that CI at all: such a verdict is 'unsure', and the loops time at least
that many pairs (taking longer than planned rather than stopping short).
"""
from __future__ import annotations

import gc
import math
import time

import numpy as np

Z_99 = 2.5758293035489004
"""Two-sided 99% normal quantile: compress.bench.paired.CONFIDENCE."""


def pairs_needed(confidence):
    """The fewest pairs whose widest interval, [min, max] of the ratios, covers the median with `confidence` by the
    exact sign test: 1 - 2 * 0.5 ** n >= confidence (8 at 99%). Fewer pairs can never be significant."""
    n = 1
    while 2 * 0.5 ** n > 1 - confidence + 1e-12:
        n += 1
    return n


MIN_PAIRS = pairs_needed(0.99)
"""Pairs a 99% CI of the median ratio needs (compress.bench.paired.CONFIDENCE); below it the verdict is 'unsure'."""


def verdict(old_blocks, new_blocks, max_regression, median_ci):
    """ratio, ci_ratio, pairs, significant, regressed, verdict: compress.bench.paired.paired_verdict's rule.
    `median_ci(values, z)` is bench_kit.py's (the order-statistics CI of the median)."""
    log_ratio = np.log(np.asarray(new_blocks, dtype=np.float64) / np.asarray(old_blocks, dtype=np.float64))
    ratio = math.exp(float(np.median(log_ratio)))
    lo, hi = (math.exp(x) for x in median_ci(log_ratio, z=Z_99))
    slower, faster = lo > 1.0, hi < 1.0
    if log_ratio.size < MIN_PAIRS:  # [min, max] of so few pairs covers the median less often than 99%
        slower = faster = False
        label = "unsure"
    elif slower and ratio > 1.0 + max_regression:
        label = "REGRESSED"
    elif faster and ratio < 1.0 / (1.0 + max_regression):
        label = "faster"
    elif ratio > 1.0 + max_regression:
        label = "unsure"
    else:
        label = "ok"
    return {"ratio": ratio, "ci_ratio": [lo, hi], "pairs": int(log_ratio.size), "significant": bool(slower or faster),
            "regressed": label == "REGRESSED", "verdict": label}


def alternate(runs, warmup_runs, block_seconds, min_runs, min_seconds, max_seconds, min_pairs=0):
    """One repetition of ABBA blocks over runs = [old, new]: (samples in ms per side, block medians per side).
    It times at least `min_pairs` pairs, past max_seconds if need be."""
    perf = time.perf_counter
    samples, blocks, busy = [[], []], [[], []], [0.0, 0.0]
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(warmup_runs):
            for run in runs:
                run()
        stop, pair = perf() + max_seconds, 0
        while True:
            for side in ((0, 1) if pair % 2 == 0 else (1, 0)):
                first, start = len(samples[side]), perf()
                while True:
                    t0 = perf()
                    runs[side]()
                    t1 = perf()
                    samples[side].append((t1 - t0) * 1e3)
                    if t1 - start >= block_seconds:
                        break
                busy[side] += perf() - start
                blocks[side].append(float(np.median(samples[side][first:])))
            pair += 1
            enough = min(len(s) for s in samples) >= min_runs and min(busy) >= min_seconds
            if (enough or perf() >= stop) and pair >= min_pairs:
                break
    finally:
        if was_enabled:
            gc.enable()
    return samples, blocks


def paired_rows(kit, here, feed, providers, threads, options, args, open_session, median_ci, batch):
    """One verdict row per (provider, threads) that opens for both models; the unavailable ones listed."""
    import os

    models = [os.path.join(here, kit["against"]), os.path.join(here, kit["model"])]
    rows, unavailable = [], []
    for prov in providers:
        for t in threads:
            samples, blocks = [[], []], [[], []]
            for rep in range(args.repetitions):  # fresh session pairs per repetition, as compress bench does
                sessions = [open_session(m, prov, t, options.get(prov, {}), args.no_spin) for m in models]
                reason = next((r for s, r in sessions if s is None), None)
                if reason is not None:
                    break
                runs = [lambda s=s: s.run(None, feed) for s, _ in sessions]
                got = alternate(runs, args.warmup_runs, kit.get("block_seconds", 0.05), args.min_runs,
                                args.min_seconds, args.max_seconds, MIN_PAIRS if rep == 0 else 0)
                for side in (0, 1):
                    samples[side] += got[0][side]
                    blocks[side] += got[1][side]
                del runs, sessions
            if reason is not None:
                unavailable.append({"provider": prov, "reason": reason})
                break
            old_p50, new_p50 = (float(np.median(s)) for s in samples)
            rows.append(dict({"provider": prov, "batch": batch, "threads": t, "old_p50_ms": old_p50,
                              "new_p50_ms": new_p50, "raw_ratio": new_p50 / old_p50, "runs_old": len(samples[0]),
                              "runs_new": len(samples[1]), "repetitions": args.repetitions},
                             **verdict(blocks[0], blocks[1], kit["max_regression"], median_ci)))
            r = rows[-1]
            print("paired %-21s batch %-3d threads %-2d old %9.4f ms  new %9.4f ms  x%.3f [%.3f, %.3f]  %s"
                  % (prov, batch, t, old_p50, new_p50, r["ratio"], r["ci_ratio"][0], r["ci_ratio"][1], r["verdict"]))
    return rows, unavailable
