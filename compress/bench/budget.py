"""The time budget of one latency row: a quick probe of the model's speed scales warm-up, runs and repetitions.

Why: the run counts that give a 1 ms model a tight p50 (20 warm-up + at least 100 runs, 5 repetitions) cost a
76 ms model about a minute per row. A slow model needs far fewer runs for the same CI of p50, because its
per-run spread is small next to its p50 (a preemption costs the same milliseconds whatever the model's length).
So, when the default plan would overrun `BenchSettings.time_budget_seconds`, the row gets 3 repetitions (still
interleaved with the other rows), a short warm-up (~0.2 s of runs, at most a fifth of a repetition, at least 2)
and as many timed runs as fit; a wall-clock stop per repetition keeps a machine that slows down mid-run inside
the budget too. Measured: a 79 ms conv stack, 67 s with the full settings, 11 s cut (docs/results-bench.md).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.bench.config import BenchSettings
    from compress.bench.harness import _Job

USABLE_FRACTION = 0.85
"""Share of the budget planned for timed and warm-up runs: session opening and the probe take the rest."""
CUT_REPETITIONS = 3
"""Repetitions of a row that had to be cut: enough fresh sessions to see session-to-session spread."""
MIN_RUNS_PER_REPETITION = 5
"""A repetition never times fewer runs than this (the harness's own floor)."""


def estimate_seconds(settings: BenchSettings, seconds_per_run: float, reference: bool) -> float:
    """What `settings` cost for a model taking `seconds_per_run`, warm-up included (sessions not counted)."""
    per_run = seconds_per_run * _overhead(settings, seconds_per_run, reference)
    timed = max(settings.min_runs * per_run, settings.min_seconds * per_run / seconds_per_run)
    return settings.repetitions * (settings.warmup_runs * seconds_per_run + timed)


def plan(settings: BenchSettings, seconds_per_run: float, reference: bool,
         spent_seconds: float = 0.0) -> tuple[BenchSettings, dict[str, Any]]:
    """Settings that fit the row into settings.time_budget_seconds, and the row's `budget` record.

    Unchanged settings when the plan already fits (or there is no budget); otherwise fewer repetitions, a short
    warm-up and as many runs as fit, min_seconds cut to the share of the budget a repetition has, and a
    per-repetition wall-clock stop (max_seconds). `spent_seconds` (the probe) is taken off the budget.
    """
    budget = settings.time_budget_seconds
    full = estimate_seconds(settings, seconds_per_run, reference)
    info: dict[str, Any] = {"seconds": budget, "probe_ms": round(seconds_per_run * 1e3, 4), "cut": False,
                            "planned_seconds": round(full, 2)}
    if not budget or full <= budget * USABLE_FRACTION - spent_seconds:
        return settings, info
    usable = max(budget * USABLE_FRACTION - spent_seconds, 0.0)
    per_run = seconds_per_run * _overhead(settings, seconds_per_run, reference)
    reps = min(settings.repetitions, CUT_REPETITIONS)
    # ~0.2 s of warm-up settles a slow model's allocations; never more than a fifth of a repetition's share
    warmup = min(settings.warmup_runs, max(2, math.ceil(min(0.2, usable / reps / 5) / seconds_per_run)))
    while reps > 1 and reps * (warmup * seconds_per_run + MIN_RUNS_PER_REPETITION * per_run) > usable:
        reps -= 1
    runs = int((usable / reps - warmup * seconds_per_run) / per_run)
    runs = max(MIN_RUNS_PER_REPETITION, min(runs, settings.min_runs))
    # a fast model whose full plan overran on min_seconds keeps timing for the share that fits (min_seconds 0 left it
    # min_runs: a 7 us model got 3 x 100 runs under a 4 s budget, and 369,457 under 5 s)
    fits = max(usable / reps - warmup * seconds_per_run, 0.0) * seconds_per_run / per_run
    cut = settings.model_copy(update={"warmup_runs": warmup, "min_runs": runs,
                                      "min_seconds": min(settings.min_seconds, fits),
                                      "repetitions": reps,
                                      "max_seconds": min(settings.max_seconds, max(usable / reps, 1e-3))})
    info.update(cut=True, planned_seconds=round(estimate_seconds(cut, seconds_per_run, reference), 2),
                repetitions=reps, runs_per_repetition=runs, warmup_runs=warmup)
    return cut, info


def fit(job: _Job) -> None:
    """Probe the job's first session (a few untimed-for-the-row runs) and apply `plan` to the job's settings."""
    if not job.settings.time_budget_seconds or job.session is None:
        return
    start = time.perf_counter()
    seconds_per_run = probe_seconds(job._runner(job.session))
    job.settings, job.budget = plan(job.settings, seconds_per_run, job.uses_reference,
                                    spent_seconds=time.perf_counter() - start)


def probe_seconds(run: Callable[[], Any]) -> float:
    """Median seconds per call of `run`: one untimed call, then 3 to 20 timed ones (about 0.05 s)."""
    run()  # the first run allocates and picks kernels: not the model's speed
    times: list[float] = []
    while len(times) < 3 or (len(times) < 20 and sum(times) < 0.05):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _overhead(settings: BenchSettings, seconds_per_run: float, reference: bool) -> float:
    """Wall time per model second: each model block (>= one run) is followed by a reference block."""
    if not reference:
        return 1.0
    return 1.0 + settings.reference_block_seconds / max(settings.block_seconds, seconds_per_run)
