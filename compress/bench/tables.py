"""The terminal table of `compress bench`: one line per latency row, the time budget above it."""
from __future__ import annotations

from typing import Any

from compress.bench.placement import nodes_on_provider


def latency_table(rows: list[dict[str, Any]], unavailable: list[dict[str, str]]) -> str:
    """The rows' p50/p90/p99, CI, throughput, CVs, score and placement; then the unavailable providers."""
    head = f"{'provider':<28} {'batch':>5} {'thr':>3} {'runs':>7} {'p50 ms':>9} {'95% CI p50':>19} " \
           f"{'p90 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'items/s':>10} {'cv p50':>7} {'score':>7} {'cv scr':>7} " \
           f"{'on provider':>11}"
    lines = [*budget_lines(rows), head, "-" * len(head)]
    for r in rows:
        ci = f"[{r['ci95_p50_ms'][0]:.4f}, {r['ci95_p50_ms'][1]:.4f}]"
        lines.append(
            f"{r['provider']:<28} {r['batch']:>5} {r['threads']:>3} {r['runs']:>7} {r['p50_ms']:>9.4f} {ci:>19} "
            f"{r['p90_ms']:>9.4f} {r['p99_ms']:>9.4f} {r['mean_ms']:>9.4f} {r['throughput_per_s']:>10.1f} "
            f"{r['cv_p50_across_repetitions']:>7.1%} {number(r.get('score'), '.3f'):>7} "
            f"{number(r.get('cv_score_across_repetitions'), '.1%'):>7} {nodes_on_provider(r.get('placement')):>11}"
        )
    for u in unavailable:
        lines.append(f"{u['provider']:<28} unavailable: {u['reason']}")
    return "\n".join(lines)


def budget_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The time budget above the table, and which rows it cut (to how many runs)."""
    budgets = [(r, r["budget"]) for r in rows if r.get("budget")]
    if not rows:  # every provider unavailable: nothing was timed, under a budget or not
        return []
    if not budgets:
        return ["time budget: none (--time-budget 0); every row ran the full settings"]
    lines = [f"time budget: {budgets[0][1]['seconds']:g} s per row (--time-budget SECONDS)"]
    for r, b in budgets:
        if b["cut"]:
            lines.append(f"  {r['provider']} batch {r['batch']} threads {r['threads']}: {b['probe_ms']:.1f} ms per "
                         f"run, cut to {b['repetitions']} x {b['runs_per_repetition']} runs ({b['warmup_runs']} warm-up), "
                         f"planned {b['planned_seconds']:.1f} s")
    return lines


def number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
