"""Latency statistics on raw samples: percentiles, a distribution-free CI of the median, CV, and the verdict.

Pure numpy (scipy only for Mann-Whitney U). The verdict needs *both* statistical significance and a slowdown
larger than the allowed budget: with thousands of samples any 1% shift is significant, and on a noisy machine a
12% shift can be luck, so each condition alone misfires.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_TEST_SAMPLES = 4000
"""Mann-Whitney U runs on at most this many samples per side (evenly strided); plenty for power, fast."""


def percentiles_ms(samples_ms: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """{'p50_ms': .., 'p90_ms': .., ...} for the given percentiles (linear interpolation)."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("percentiles of an empty sample")
    values = np.percentile(arr, list(qs))
    return {f"p{q:g}_ms": float(v) for q, v in zip(qs, values)}


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics.

    The number of samples below the true median is Binomial(n, 1/2); the interval [x_(j), x_(k)] uses the
    normal approximation of that binomial (exact enough for n >= 10; below that it returns [min, max]).
    """
    arr = np.sort(np.asarray(samples, dtype=np.float64))
    n = arr.size
    if n == 0:
        raise ValueError("confidence interval of an empty sample")
    if n < 10:
        return float(arr[0]), float(arr[-1])
    z = _z(confidence)
    half = z * math.sqrt(n) / 2.0
    lo = max(0, int(math.floor(n / 2.0 - half)) - 1)  # 1-based rank -> 0-based index
    hi = min(n - 1, int(math.ceil(n / 2.0 + half)))
    return float(arr[lo]), float(arr[hi])


def cv(samples: Sequence[float]) -> float:
    """Coefficient of variation: sample standard deviation / mean (0.0 for fewer than two samples)."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size < 2 or arr.mean() == 0:
        return 0.0
    return float(arr.std(ddof=1) / arr.mean())


def subsample(samples: Sequence[float], max_count: int) -> list[float]:
    """At most `max_count` samples, evenly strided so time order (and slow drifts) stay represented."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size <= max_count:
        return arr.tolist()
    idx = np.linspace(0, arr.size - 1, max_count).round().astype(np.int64)
    return arr[idx].tolist()


def block_medians(samples: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Median of each block of `samples`; block i is samples[ends[i-1]:ends[i]] (ends[-1] = len(samples))."""
    out = np.empty(len(ends))
    start = 0
    for i, end in enumerate(ends):
        out[i] = np.median(samples[start:end])
        start = end
    return out


def quiet_score(model_block_p50: Sequence[float], reference_block_p50: Sequence[float]) -> float:
    """Model speed in units of the reference: fastest model block median / fastest reference block median.

    Why minima, not the median of per-block ratios: on an oversubscribed machine the model and the reference do
    not slow down by the same factor (a 0.8 ms run is preempted 5x as often as a 0.16 ms one, and the reference
    has a +12% mode of its own), so a per-block ratio drifts by +-10% with the load. A block cannot run faster
    than the machine's quiet speed, so each side's fastest block estimates that quiet speed, and their ratio is
    what stays put when both sides did see quiet moments. More blocks only make both minima more reliable, which
    is why a re-measurement pools its blocks with the first one's. The gate uses it through gate_score.
    """
    m = np.asarray(model_block_p50, dtype=np.float64)
    r = np.asarray(reference_block_p50, dtype=np.float64)
    if m.size == 0 or r.size == 0 or r.min() <= 0:
        raise ValueError("quiet_score needs model and reference block medians")
    return float(m.min() / r.min())


def gate_score(model_block_p50: Sequence[float], reference_block_p50: Sequence[float]) -> float:
    """The score the regression gate compares: geometric mean of quiet_score and the median of block ratios.

    Each of the two drifts with the load in its own way: the quiet score when one side never saw a quiet block,
    the median of per-block ratios when the load slows the model more than the reference. Their errors partly
    cancel: on 64 loaded A (5 conv) / B (6 conv) runs, all baseline/new pairs, the spread of the A/A log-ratio was
    0.045 (quiet), 0.087 (median of ratios), 0.042 (this), and the worst A/A / A/B ratios 1.18 / 1.00 (quiet),
    1.25 / 1.05 (median), 1.12 / 1.10 (this), for a true 1.24.
    """
    m = np.asarray(model_block_p50, dtype=np.float64)
    r = np.asarray(reference_block_p50, dtype=np.float64)
    return float(math.sqrt(quiet_score(m, r) * float(np.median(m / r))))


def mann_whitney_slower(base: Sequence[float], new: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value for 'new is stochastically slower (larger) than base'."""
    from scipy.stats import mannwhitneyu

    a = np.asarray(subsample(base, MAX_TEST_SAMPLES))
    b = np.asarray(subsample(new, MAX_TEST_SAMPLES))
    if a.size == 0 or b.size == 0:
        return 1.0
    if np.all(a == a[0]) and np.all(b == a[0]):
        return 1.0  # identical constant samples: no evidence of anything
    return float(mannwhitneyu(b, a, alternative="greater").pvalue)


def verdict(
    base_samples: Sequence[float] | None,
    new_samples: Sequence[float] | None,
    max_regression: float,
    *,
    base_p50_ms: float | None = None,
    new_p50_ms: float | None = None,
    base_ci95: Sequence[float] | None = None,
    new_ci95: Sequence[float] | None = None,
    base_reference_ms: float | None = None,
    new_reference_ms: float | None = None,
    alpha: float = 0.01,
) -> dict[str, Any]:
    """Decide whether `new` is a latency regression against `base`.

    ratio = new p50 / base p50 (the rows' p50 when given, else medians of the samples). Significant when the
    one-sided Mann-Whitney U p-value < alpha on the raw samples, or the 95% CIs of p50 do not overlap (used
    when no samples were kept). Regressed only when significant AND ratio > 1 + max_regression. Faster is the
    mirror case. With both reference p50s (the harness's interleaved reference workload), every latency is
    first divided by its side's reference p50, so a machine that was slower as a whole does not count as the
    model being slower; `raw_ratio` keeps the undivided ratio. Returns {ratio, raw_ratio, p_value,
    ci_disjoint, significant, regressed, verdict, normalized}.
    """
    if max_regression < 0:
        raise ValueError(f"max_regression must be >= 0, got {max_regression}")
    base_p50 = base_p50_ms if base_p50_ms is not None else _median(base_samples)
    new_p50 = new_p50_ms if new_p50_ms is not None else _median(new_samples)
    if base_p50 is None or new_p50 is None or base_p50 <= 0:
        raise ValueError("verdict needs a p50 or samples on both sides")
    raw_ratio = new_p50 / base_p50
    normalized = bool(base_reference_ms and new_reference_ms)
    if normalized:
        bs, ns = float(base_reference_ms), float(new_reference_ms)
        base_samples = None if base_samples is None else np.asarray(base_samples, dtype=np.float64) / bs
        new_samples = None if new_samples is None else np.asarray(new_samples, dtype=np.float64) / ns
        base_ci95 = None if base_ci95 is None else [float(c) / bs for c in base_ci95]
        new_ci95 = None if new_ci95 is None else [float(c) / ns for c in new_ci95]
        ratio = raw_ratio * bs / ns
    else:
        ratio = raw_ratio

    p_value: float | None = None
    if base_samples is not None and new_samples is not None and len(base_samples) and len(new_samples):
        p_value = mann_whitney_slower(base_samples, new_samples)
        p_faster = mann_whitney_slower(new_samples, base_samples)
    else:
        p_faster = None
    base_ci = _ci(base_ci95, base_samples)
    new_ci = _ci(new_ci95, new_samples)
    slower_disjoint = bool(base_ci and new_ci and new_ci[0] > base_ci[1])
    faster_disjoint = bool(base_ci and new_ci and new_ci[1] < base_ci[0])

    slower_sig = (p_value is not None and p_value < alpha) or slower_disjoint
    faster_sig = (p_faster is not None and p_faster < alpha) or faster_disjoint
    regressed = bool(slower_sig and ratio > 1.0 + max_regression)
    faster = bool(faster_sig and ratio < 1.0 / (1.0 + max_regression))
    label = "REGRESSED" if regressed else ("faster" if faster else "ok")
    return {
        "ratio": float(ratio),
        "raw_ratio": float(raw_ratio),
        "normalized": normalized,
        "base_p50_ms": float(base_p50),
        "new_p50_ms": float(new_p50),
        "p_value": p_value,
        "ci_disjoint": slower_disjoint,
        "significant": bool(slower_sig),
        "regressed": regressed,
        "verdict": label,
    }


def _median(samples: Sequence[float] | None) -> float | None:
    if samples is None or len(samples) == 0:
        return None
    return float(np.median(np.asarray(samples, dtype=np.float64)))


def _ci(given: Sequence[float] | None, samples: Sequence[float] | None) -> tuple[float, float] | None:
    if given is not None and len(given) == 2:
        return float(given[0]), float(given[1])
    if samples is not None and len(samples):
        return median_ci(samples)
    return None


def _z(confidence: float) -> float:
    """Two-sided normal quantile, without scipy: bisection on erf is exact enough here."""
    target = confidence
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2.0
        if math.erf(mid / math.sqrt(2.0)) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0
