"""Timing inside quantize: the float model and a quantized candidate measured with the project's harness, alone or
paired (compress.bench.paired: alternating blocks in one process), for the float-vs-quantized pick."""
from __future__ import annotations

from collections.abc import Callable
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
                row = measure(path, provider, b, threads, inputs=feed(b), settings=settings)
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
                                   sides=sides, settled=settled)
            except Exception:  # noqa: BLE001 - unavailable or failing providers are already reported by latency()
                break
            for key in ("old_block_p50_ms", "new_block_p50_ms"):
                row.pop(key)  # block lists of every pick would swamp report.json
            rows.append(((provider, b), row))
    return rows


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
