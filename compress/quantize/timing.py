"""Timing inside quantize: the float model and a quantized candidate measured with the project's harness, alone or
paired (compress.bench.paired: alternating blocks in one process), and the float-vs-quantized pick on those
measurements (pick_final)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import first_line


def latency(path: Path, providers: list[str], batch_sizes: list[int], threads: int,
            feed: Callable[[int], dict[str, np.ndarray]], settings: Any) -> dict[str, Any]:
    """p50 and friends on every provider and batch size via the project's harness (inputs `feed(batch)`);
    unavailable providers noted."""
    from compress.bench.harness import ProviderUnavailable, measure

    rows: list[dict[str, Any]] = []
    unavailable: list[dict[str, str]] = []
    for provider in providers:
        try:
            for b in batch_sizes:
                row = measure(path, provider, b, threads, inputs=feed(b), dims=_axes(feed), settings=settings)
                row.pop("samples_ms", None)  # raw samples of every attempt would swamp report.json
                rows.append(row)
        except ProviderUnavailable as exc:
            unavailable.append({"provider": provider, "reason": exc.reason})
        except Exception as exc:  # e.g. a provider without kernels for this model's types: say so, keep going
            unavailable.append({"provider": provider, "reason": f"failed to run: {first_line(exc)}"})
    return {"rows": rows, "unavailable": unavailable}


def paired_latency(float_path: Path, quant_path: Path, providers: list[str], batch_sizes: list[int], threads: int,
                   feed: Callable[[int], dict[str, np.ndarray]], settings: Any, *, sides: bool = False,
                   settled: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """Float and quantized timed in alternating blocks (compress.bench.paired), one row per provider and batch on
    `feed(batch)`: `ratio` is quantized / float with its CI (with `sides`, each model's own row too; `settled`
    may stop a row after a repetition). Providers that cannot run both are left out (latency() notes why, or the
    benchmark stage reports them)."""
    return [row for _, row in _paired_rows(float_path, quant_path, providers, batch_sizes, threads, feed, settings,
                                           sides=sides, settled=settled)]


def _paired_rows(float_path: Path, quant_path: Path, providers: list[str], batch_sizes: list[int], threads: int,
                 feed: Callable[[int], dict[str, np.ndarray]], settings: Any, *, sides: bool,
                 settled: Callable[[dict[str, Any]], bool] | None) -> list[tuple[tuple[str, int], dict[str, Any]]]:
    """paired_latency's rows, each with the (provider, batch) asked for (a row's own batch is its feed's first
    axis, which an input batched on another axis does not give)."""
    from compress.bench.paired import paired_bench

    rows: list[tuple[tuple[str, int], dict[str, Any]]] = []
    for provider in providers:
        for b in batch_sizes:
            try:
                row = paired_bench(float_path, quant_path, provider, b, threads, settings, inputs=feed(b),
                                   dims=_axes(feed), sides=sides, settled=settled)
            except Exception:  # noqa: BLE001 - unavailable or failing providers are already reported by latency()
                break
            for key in ("old_block_p50_ms", "new_block_p50_ms"):
                row.pop(key)  # block lists of every pick would swamp report.json
            rows.append(((provider, b), row))
    return rows


@dataclass(frozen=True)
class Feed:
    """The inputs latency is timed on at a batch size (`make(batch)`), with the axes each input is batched on
    (compress quantize's latency_feed): a row's batch and throughput are read on them (a state [2, N, 64] listed
    first was read as batch 2, twice the items). Any callable taking a batch size serves as a feed on axis 0."""

    make: Callable[[int], dict[str, np.ndarray]]
    batch_axes: dict[str, int | None] | None = None

    def __call__(self, batch: int) -> dict[str, np.ndarray]:
        return self.make(batch)


def _axes(feed: Callable[[int], dict[str, np.ndarray]]) -> Any:
    """The feed's batch axes for the harness (a `Feed`'s; axis 0 for any other callable)."""
    from compress.bench.inputs import Dims

    return Dims(batch_axes=feed.batch_axes if isinstance(feed, Feed) else None)


def timed_together(float_path: Path, quant_path: Path, providers: list[str], batch_sizes: list[int], threads: int,
                   feed: Callable[[int], dict[str, np.ndarray]], settings: Any, threshold: float) \
        -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(paired rows, the float model's latency, the quantized model's) from one paired measurement: each model is
    timed once, and its p50 is the one its ratio comes from. A row stops after a repetition once its ratio's CI
    lies wholly on one side of `threshold` (quantized / float: the pick's "significantly faster" ratio), since
    more pairs would not change the pick. A (provider, batch) the pair could not run is measured alone, so
    latency() says why (an unavailable provider, a missing kernel)."""
    def settled(verdict: dict[str, Any]) -> bool:
        low, high = verdict["ci_ratio"]
        return high < threshold or low > threshold

    asked = _paired_rows(float_path, quant_path, providers, batch_sizes, threads, feed, settings, sides=True,
                         settled=settled)
    paired, done = [row for _, row in asked], {key for key, _ in asked}
    timed = [{"rows": [r.pop(key) for r in paired], "unavailable": []} for key in ("old_row", "new_row")]
    for provider in providers:
        for b in batch_sizes:
            if (provider, b) not in done:
                for path, side in zip((float_path, quant_path), timed):
                    alone = latency(path, [provider], [b], threads, feed, settings)
                    side["rows"] += alone["rows"]
                    side["unavailable"] += [u for u in alone["unavailable"] if u not in side["unavailable"]]
    return paired, timed[0], timed[1]


MIN_SPEEDUP = 1.03
"""The smallest speedup that ships int8 over float: a paired 1.00-1.01x once read as "significantly faster"."""


def pick_final(float_rows: list[dict[str, Any]], quant_rows: list[dict[str, Any]], *,
               prefer_quantized: bool = False, paired: list[dict[str, Any]] | None = None,
               sizes: tuple[int | None, int | None] | None = None) -> dict[str, Any]:
    """Choose between the float model and an accepted quantized one; the float model unless int8/fp16 is
    significantly faster.

    With `paired` rows (compress.bench.paired: both models timed in alternating blocks, `ratio` = quantized /
    float with its 99% CI `ci_ratio`), the speedup per (provider, batch) is 1 / ratio and the decider is their
    geometric mean; it counts as significant when the geometric mean of the per-row CI upper bounds of the
    ratio is below 1 / MIN_SPEEDUP (every row's evidence pooled, conservatively: a bound of a mean is tighter than
    the mean of bounds): at least MIN_SPEEDUP faster at 99% confidence, not merely faster. Without paired rows,
    the harness rows' p50s give the speedups and they are significant when every row's 95% CIs of p50 are
    disjoint and the geometric mean reaches MIN_SPEEDUP (rows without CIs count as disjoint, as before).
    Ties and insignificant speedups go to the float model: it is the simpler one (the graph as exported, no
    accuracy drop), and a noisy 1.4x on two equal models must not decide; int8 is usually smaller in bytes, and
    pick = 'quantized' is how a user says size matters more; where it decides, the reason compares `sizes` (float,
    quantized bytes) when given: on a tiny model the QDQ nodes outweigh the bytes int8 saves. The quantized model is
    called slower, whichever ships, when the evidence says so the other way: the geometric mean of the ratio's CI
    lower bounds above 1 (paired), or every row with CIs, disjoint the other way (separate): a 0.31x is not a tie.
    Returns {"final", "why", "speedup", "speedups": {"provider/bBATCH": speedup}, "significant", "slower", "paired"}.
    """
    speedups, significant, slower = _speedups(float_rows, quant_rows, paired)
    detail = ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items())
    if not speedups:
        final = "quantized" if prefer_quantized else "float"
        size = _size(sizes)
        said = f"; {size[0]}: {size[1]}" if size else ""
        return {"final": final, "speedup": None, "speedups": {}, "significant": False, "slower": False,
                "paired": bool(paired), "why": f"{final}: no provider measured both models, so speed could not decide"
                + (f" (pick = 'quantized'{said})" if prefer_quantized else "; kept the float model")}
    gmean = math.exp(sum(math.log(s) for s in speedups.values()) / len(speedups))
    significant, slower = significant and gmean >= MIN_SPEEDUP, slower and gmean < 1.0
    rule = (f"significant means at least {MIN_SPEEDUP:.2f}x at 99% confidence" if paired else
            f"significant means disjoint 95% intervals and at least {MIN_SPEEDUP:.2f}x")
    slow = "the 99% interval of quantized / float lies above 1" if paired else "disjoint 95% intervals"
    if gmean > 1.0 and significant:
        final, verdict = "quantized", f"it is significantly faster ({rule})"
    elif prefer_quantized:
        final, verdict = "quantized", _kept(f"it is slower ({slow})" if slower else "it is not significantly faster",
                                            sizes)
    elif gmean > 1.0:
        final, verdict = "float", (f"the speedup is within the measurement's noise ({rule}), so the simpler float "
                                   "model ships")
    else:
        final, verdict = "float", (f"int8/fp16 is {f'slower here ({slow})' if slower else 'not faster here'}, "
                                   "so the float model ships")
    how = "paired, alternating blocks" if paired else "separate measurements"
    return {"final": final, "speedup": gmean, "speedups": speedups, "significant": significant, "slower": slower,
            "paired": bool(paired),
            "why": f"{final}: quantized vs float speedup {gmean:.2f}x (geometric mean of {detail}; {how}); {verdict}"}


def _kept(speed: str, sizes: tuple[int | None, int | None] | None) -> str:
    """Why pick = 'quantized' ships a model that is not significantly faster (`speed`), true of the files' `sizes`."""
    size = _size(sizes)
    if size is None:
        return f"{speed}, but pick = 'quantized' keeps it"  # sizes unknown: nothing said of them
    said, shown = size
    if said == "smaller file":
        return f"{speed}, but pick = 'quantized' keeps it ({said}: {shown})"
    return f"{speed} and {said} ({shown}), but pick = 'quantized' keeps it"


def _size(sizes: tuple[int | None, int | None] | None) -> tuple[str, str] | None:
    """('smaller file', 'its file is larger' or 'its file is the same size'; '2.9 KB vs 1.3 KB float') from the
    (float, quantized) bytes, or None when either is unknown."""
    if sizes is None or None in sizes:
        return None
    float_bytes, quant_bytes = sizes
    said = ("smaller file" if quant_bytes < float_bytes else
            f"its file is {'larger' if quant_bytes > float_bytes else 'the same size'}")
    return said, f"{_bytes(quant_bytes)} vs {_bytes(float_bytes)} float"


def _bytes(n: int) -> str:
    return f"{n / 1024:.1f} KB" if n < 2**20 else f"{n / 2**20:.1f} MB"


def _speedups(float_rows: list[dict[str, Any]], quant_rows: list[dict[str, Any]],
              paired: list[dict[str, Any]] | None) -> tuple[dict[str, float], bool, bool]:
    """{"provider/bBATCH": float / quantized}, whether the speedup is significant and whether the quantized model is
    significantly slower (see pick_final)."""
    from compress.quantize.attempts import short

    if paired:
        speedups = {f"{short(r['provider'])}/b{r['batch']}": 1.0 / r["ratio"] for r in paired}
        upper = math.exp(sum(math.log(r["ci_ratio"][1]) for r in paired) / len(paired))
        lower = math.exp(sum(math.log(r["ci_ratio"][0]) for r in paired) / len(paired))
        return speedups, upper < 1.0 / MIN_SPEEDUP, lower > 1.0
    f = {(r["provider"], r["batch"]): r for r in float_rows if r.get("p50_ms")}
    q = {(r["provider"], r["batch"]): r for r in quant_rows if r.get("p50_ms")}
    common = sorted(set(f) & set(q))
    speedups = {f"{short(p)}/b{b}": f[(p, b)]["p50_ms"] / q[(p, b)]["p50_ms"] for p, b in common}
    known = [k for k in common if f[k].get("ci95_p50_ms") and q[k].get("ci95_p50_ms")]
    faster = all(q[k]["ci95_p50_ms"][1] < f[k]["ci95_p50_ms"][0] for k in known)
    slower = bool(common) and len(known) == len(common) and all(
        q[k]["ci95_p50_ms"][0] > f[k]["ci95_p50_ms"][1] for k in known)
    return speedups, faster, slower
