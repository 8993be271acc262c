"""Paired measurement: two models timed in one process, in alternating blocks, judged on the per-pair ratios.

Why: a saved baseline was measured on another minute's machine; a reference workload corrects for that only as
far as the load slows the model and the reference alike (stats.gate_score). Timing OLD and NEW in alternating
short blocks (old, new, new, old, old, new, ...: ABBA, so a steady drift and "who runs second" cancel) means both
see the same machine within a fraction of a second, and the ratio of two adjacent block medians is free of
the machine's slow phases. `compress bench NEW --against OLD`, the benchmark stage's comparisons and quantize's
float-vs-int8 pick use it.

The verdict (paired_verdict) needs significance AND effect size, as stats.verdict does:
- ratio = median over pairs of new_block_p50 / old_block_p50; a burst of load that lands in one block spoils one
  pair, and the median ignores a minority of spoiled pairs;
- its CI is the distribution-free (sign-test) CI of that median at CONFIDENCE, from order statistics, so it is
  deterministic (no bootstrap seed) and makes no assumption about the shape of the load's noise;
- REGRESSED when the CI lies above 1 (significantly slower) and the ratio exceeds 1 + budget; 'unsure' when
  the ratio exceeds the budget without significance (too few or too noisy pairs); 'faster' is the mirror case.
  Requiring the CI's *lower bound* past 1 + budget instead would miss half of all true slowdowns just past
  the budget; requiring only significance would fail builds on a true 1% slowdown.
- fewer than MIN_PAIRS pairs cannot give a 99% CI (the exact sign test's widest interval, [min, max], covers the
  median less often than that): 'unsure', never significant. So the first repetition times at least MIN_PAIRS
  pairs, past the time budget's per-repetition stop if need be, and the row's budget record says what ran.
"""
from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compress.bench import stats
from compress.kit.paired_kit import MIN_PAIRS, verdict
from compress.errors import CompressError

CONFIDENCE = 0.99
"""Two-sided confidence of the CI of the median pair ratio (one-sided error 0.5%, like verdict's alpha 0.01)."""


def paired_verdict(old_block_p50: Sequence[float], new_block_p50: Sequence[float], max_regression: float) -> dict:
    """Judge NEW against OLD from block medians in time order, pair i = (old[i], new[i]); see the module doc."""
    old = np.asarray(old_block_p50, dtype=np.float64)
    new = np.asarray(new_block_p50, dtype=np.float64)
    if old.size == 0 or old.size != new.size or np.any(old <= 0) or np.any(new <= 0):
        raise ValueError("paired_verdict needs as many positive old and new block medians, at least one each")
    if max_regression < 0:
        raise ValueError(f"max_regression must be >= 0, got {max_regression}")
    # the rule itself lives in the standalone kit script (the device judges its pairs the same way), as placement's
    # parser does; its CI is this module's order-statistics CI at CONFIDENCE (the kit's Z_99)
    return verdict(old, new, max_regression, lambda values, z: stats.median_ci(values, CONFIDENCE))


def paired_bench(old: str | Path, new: str | Path, provider: str, batch: int, threads: int, settings: Any, *,
                 max_regression: float = 0.10, inputs: dict[str, np.ndarray] | None = None,
                 dims: dict[str, int] | None = None, sides: bool = False,
                 settled: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """Time OLD and NEW in alternating blocks on fresh session pairs (settings.repetitions); one verdict row.

    Both models get the same arrays: the given `inputs`, or those generated for OLD. The row's time
    budget (settings.time_budget_seconds) covers both models: the probe adds their run times.
    Row: provider, batch, threads, old_p50_ms, new_p50_ms, raw_ratio (of the pooled p50s), ratio, ci_ratio,
    pairs, verdict, regressed, runs_old, runs_new, budget, old/new_block_p50_ms. With `sides`, also `old_row` and
    `new_row`: each model's own latency row (harness.measure's timing fields; no placement, reference workload or
    raw samples) from the same timed runs, so a caller that needs both p50s and the ratio times each model once.
    `settled(verdict so far)`: checked after each repetition but the last; True stops there (a decision that only
    needs the ratio on one side of a threshold, as quantize's pick, needs fewer pairs the farther it lies).
    """
    from compress.bench import budget
    from compress.bench.harness import ProviderUnavailable, _prepare

    first = _prepare(old, provider, batch, threads, inputs, dims, settings)
    # NEW gets OLD's very arrays: a model with other inputs is refused by name, never timed on other data
    try:
        jobs = [first, _prepare(new, provider, batch, threads, first.feed, dims, settings)]
    except ProviderUnavailable:
        raise
    except CompressError as exc:
        raise CompressError(f"{new}: does not take the inputs of {old} ({exc}); paired mode compares two versions of "
                            "one model, with the same inputs") from None
    if settings.strict:  # as bench_model: nodes a non-CPU provider leaves to the CPU provider fail before timing
        from compress.bench.placement import audit

        for job in jobs:
            audit(job.model_path, {job.provider: threads}, settings)
    start = time.perf_counter()
    per_run = sum(budget.probe_seconds(job._runner(job.session)) for job in jobs)
    settings, budget_info = budget.plan(settings, per_run, False, spent_seconds=time.perf_counter() - start)
    samples: list[list[np.ndarray]] = [[], []]
    blocks: list[list[float]] = [[], []]
    for rep in range(settings.repetitions):
        runs = [job._runner(job.session if rep == 0 else _reopen(job)) for job in jobs]
        for side, (s, b) in enumerate(zip(*_alternate(runs, settings, MIN_PAIRS if rep == 0 else 0))):
            samples[side].append(s)
            blocks[side] += b
        if settled is not None and rep + 1 < settings.repetitions and settled(
                paired_verdict(blocks[0], blocks[1], max_regression)):
            break
    pooled = [np.concatenate(s) / 1e6 for s in samples]
    old_p50, new_p50 = (float(np.median(p)) for p in pooled)
    # what ran, which a plan cut to a small budget understates when the pairs a verdict needs took longer
    budget_info = {**budget_info, "ran": {"repetitions": len(samples[0]), "pairs": len(blocks[0]),
                                          "runs_old": int(pooled[0].size), "runs_new": int(pooled[1].size),
                                          "seconds": round(time.perf_counter() - start, 3)}}
    row = {"provider": jobs[0].provider, "batch": jobs[0].batch, "threads": threads, "old_p50_ms": old_p50,
           "new_p50_ms": new_p50, "raw_ratio": new_p50 / old_p50,
           **paired_verdict(blocks[0], blocks[1], max_regression), "runs_old": int(pooled[0].size),
           "runs_new": int(pooled[1].size), "repetitions": len(samples[0]), "budget": budget_info,
           "old_block_p50_ms": [round(x / 1e6, 5) for x in blocks[0]],
           "new_block_p50_ms": [round(x / 1e6, 5) for x in blocks[1]]}
    if sides:
        for job, key, side in zip(jobs, ("old_row", "new_row"), samples):
            job.samples_ns, job.budget, job.settings = side, budget_info, settings
            row[key] = {k: v for k, v in job.row().items() if k != "samples_ms"}
    return row


def _reopen(job: Any) -> Any:
    from compress.bench.harness import ProviderUnavailable
    from compress.bench.providers import open_session

    session, reason = open_session(job.model_path, job.provider, job.threads,
                                   provider_options=job.settings.options_for(job.provider), edge=job.settings.edge)
    if session is None:
        raise ProviderUnavailable(job.provider, reason or "session could not be reopened")
    return session


def _alternate(runs: list[Callable[[], Any]], settings: Any,
               min_pairs: int = 0) -> tuple[list[np.ndarray], list[list[float]]]:
    """One repetition: warm-up, then ABBA-ordered blocks of block_seconds (>= 1 run) until both sides have
    min_runs and min_seconds, or max_seconds passed, and at least `min_pairs` pairs ran. Returns per side (samples
    in ns, block medians in ns)."""
    perf = time.perf_counter_ns
    samples: list[list[int]] = [[], []]
    blocks: list[list[float]] = [[], []]
    model_ns = [0, 0]
    block_ns, min_ns = int(settings.block_seconds * 1e9), int(settings.min_seconds * 1e9)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed call is noise, not model time
    try:
        for _ in range(settings.warmup_runs):
            for run in runs:
                run()
        hard_stop = perf() + int(settings.max_seconds * 1e9)
        pair = 0
        while True:
            for side in ((0, 1) if pair % 2 == 0 else (1, 0)):
                run, append, first = runs[side], samples[side].append, len(samples[side])
                block_start = perf()
                while True:
                    t0 = perf()
                    run()
                    t1 = perf()
                    append(t1 - t0)
                    if t1 - block_start >= block_ns:
                        break
                model_ns[side] += perf() - block_start
                blocks[side].append(float(np.median(samples[side][first:])))
            pair += 1
            enough = all(len(s) >= settings.min_runs for s in samples) and min(model_ns) >= min_ns
            if (enough or perf() >= hard_stop) and pair >= min_pairs:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return [np.asarray(s, dtype=np.float64) for s in samples], blocks


def paired_table(rows: list[dict[str, Any]], max_regression: float, old: str, new: str) -> str:
    """The `--against` table: both p50s, the paired ratio with its CI, and the verdict per row."""
    head = (f"{'provider':<28} {'batch':>5} {'thr':>3} {'pairs':>5} {'old p50':>9} {'new p50':>9} {'raw':>6} "
            f"{'paired':>7} {f'{CONFIDENCE:.0%} CI':>15}  verdict")
    lines = [f"paired: new {new} against old {old}, alternating blocks; budget +{max_regression:.0%}", head,
             "-" * len(head)]
    for r in rows:
        ci = f"[{r['ci_ratio'][0]:.3f}, {r['ci_ratio'][1]:.3f}]"
        lines.append(f"{r['provider']:<28} {r['batch']:>5} {r['threads']:>3} {r['pairs']:>5} {r['old_p50_ms']:>9.4f} "
                     f"{r['new_p50_ms']:>9.4f} {r['raw_ratio']:>6.3f} {r['ratio']:>7.3f} {ci:>15}  {r['verdict']}")
    return "\n".join(lines)
