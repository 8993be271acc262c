"""What a search writes beside its trials: best.toml (a complete pipeline file), the Pareto plot, report.md."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from compress.cache import atomic_path, write_text

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_text(doc: dict[str, Any], header: str = "") -> str:
    """TOML for a pipeline dict: scalars and lists of scalars, nested tables, inline tables inside lists. TOML has no
    null: a None anywhere is refused (CompressError naming its key), never dropped."""
    lines = [f"# {h}" for h in header.splitlines()] + ([""] if header else [])
    _table(doc, [], lines)
    return "\n".join(lines).strip() + "\n"


def _table(doc: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines += ["", f"[{'.'.join(_key(p) for p in path)}]"]
    lines += [f"{_key(k)} = {_value(v, '.'.join([*path, k]))}" for k, v in scalars.items()]
    for k, v in tables.items():
        _table(v, [*path, k], lines)


def _key(k: str) -> str:
    return k if _BARE.match(k) else _string(k)


def _string(text: str) -> str:
    """A TOML basic string: UTF-8 as it is (a character outside the BMP too, where JSON would write a surrogate
    pair TOML refuses); quote, backslash and the control characters TOML forbids escaped."""
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return '"' + "".join(escapes.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in text) + '"'


def _value(v: Any, where: str) -> str:
    if v is None:
        from compress.errors import CompressError

        raise CompressError(f"{where}: None has no TOML form (an absent key is the default, which may differ)")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x, f"{where}[{i}]") for i, x in enumerate(v)) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x, f'{where}.{k}')}" for k, x in v.items()) + " }"
    raise TypeError(f"{where}: cannot write {type(v).__name__} as TOML")


def relative_output(raw: dict[str, Any], toml_path: Path, base_dir: Path) -> dict[str, Any]:
    """The dict written at `toml_path`, resolving as the original file did: [pipeline] base_dir points back to
    the original's folder (its data, checkpoint and model code), output_dir is relative to that."""
    import os

    out = dict(raw)
    run_dir = Path(raw["pipeline"]["output_dir"])
    out["pipeline"] = {**raw["pipeline"], "base_dir": os.path.relpath(base_dir, toml_path.parent.resolve()),
                       "output_dir": os.path.relpath(run_dir, base_dir)}
    return out


def plot(path: Path, rows: list[dict[str, Any]], *, metric: str, baseline: dict[str, Any] | None,
         finals: list[dict[str, Any]], budget: float | None, floor: float | None) -> bool:
    """Metric vs p50 (log) of every measured trial, marker area ~ bytes, the front's finalists ringed, the
    hand-written pipeline as a star. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    measured = [r for r in rows if r.get("metric") is not None and r.get("p50_ms") is not None]
    sizes = [r.get("bytes") or 1 for r in measured] + [(baseline or {}).get("bytes") or 1]
    biggest = max(sizes)
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    colors = {"complete": "tab:blue", "infeasible": "tab:gray"}
    for state, color in colors.items():
        pts = [r for r in measured if r["state"] == state]
        if pts:
            ax.scatter([r["p50_ms"] for r in pts], [r["metric"] for r in pts], color=color, alpha=0.55,
                       s=[30 + 400 * ((r.get("bytes") or 1) / biggest) ** 0.5 for r in pts],
                       label=f"{state} trials ({len(pts)})")
    for f in finals:
        o = f["outcome"]
        if o.metric is not None and o.p50_ms is not None:
            ax.scatter([o.p50_ms], [o.metric], facecolors="none", edgecolors="tab:red", s=220, linewidths=1.5,
                       label="finalists, full budget" if f is finals[0] else None)
    if baseline and baseline.get("metric") is not None and baseline.get("p50_ms") is not None:
        ax.scatter([baseline["p50_ms"]], [baseline["metric"]], marker="*", color="tab:orange", s=260,
                   label="hand-written pipeline")
    if budget is not None:
        ax.axvline(budget, color="tab:red", ls="--", lw=0.8, label=f"budget {budget:g} ms")
    if floor is not None:
        ax.axhline(floor, color="tab:green", ls="--", lw=0.8, label=f"floor {floor:g}")
    ax.set_xscale("log")
    ax.set_xlabel("p50 on the target (ms, log scale)")
    ax.set_ylabel(f"{metric} (validation)")
    ax.set_title("search: metric vs latency (marker area ~ file size)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def markdown(section: dict[str, Any]) -> str:
    """report.md: the winner, the finalists and every trial."""
    s = section
    w = s.get("winner") or {}
    out = [f"# search: {s['study']}", "",
           f"objective {s['objective']} on {s['target']['provider']} batch {s['target']['batch']} threads "
           f"{s['target']['threads']}; {s['counts']}", ""]
    if s.get("latency_budget") is not None:
        final = s.get("final_budget_ms")
        trials = s.get("latency_budget_ms")
        out += [f"budget: {s['latency_budget']:g} x the hand-written model's p50: "
                + ("not applied (the hand-written model has no p50 on the target)" if trials is None else
                   f"{trials:.4f} ms for the trials (its p50 in its own run)")
                + ("" if final is None else f", {final:.4f} ms for the finalists (their round)"), ""]
    if w:
        tag = " (best effort: nothing met the constraints)" if s.get("best_effort") else ""
        out += [f"**winner**{tag}: trial {w['trial']}, {s['metric']} {w['metric']:.4f} (validation), "
                f"{w.get('metric_test') if w.get('metric_test') is None else round(w['metric_test'], 4)} (test), "
                f"p50 {w['p50_ms']:.4f} ms, {w['bytes']:,} bytes; `{w['toml']}`", ""]
    if s.get("hand_written_ahead"):
        out += ["The hand-written pipeline meets the same constraints and is at least as good on the objective: the "
                "search found nothing better than the file as written.", ""]
    out += _finalists_lines(s)
    out += [f"Every trial (metric: {s['metric']} on validation after the short budget, {s.get('short_epochs')} "
            "epochs; p50: on the target):", "",
            "| trial | state | metric | p50 ms | bytes | params |", "|---|---|---|---|---|---|"]
    for r in s["trials"]:
        metric = "-" if r["metric"] is None else f"{r['metric']:.4f}"
        p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.4f}"
        note = r.get("reason") or (", ".join(r["refused"]) if r.get("refused") else "") or (
            "over the budget untrained: not trained" if r["state"] == "infeasible" and r["metric"] is None else "")
        out.append(f"| {r['number']} | {r['state']}{' (' + note + ')' if note else ''} | {metric} | {p50} | "
                   f"{r['bytes'] or '-'} | {json.dumps(r['params'])} |")
    return "\n".join(out) + "\n"


def _finalists_lines(s: dict[str, Any]) -> list[str]:
    """The finalists at the full budget, the hand-written model beside them, and the winner paired with it."""
    def cell(value: Any, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"

    rows = [(f"trial {f['trial']}", f) for f in s.get("finalists") or []]
    rows += [("hand-written", s["baseline"])] if s.get("baseline") else []
    if not rows:
        return []
    out = [f"Finalists, trained with the file's full budget, and the hand-written pipeline ({s['metric']}; p50 from "
           "their round, timed together):", "", "| model | feasible | validation | test | p50 ms | bytes |",
           "|---|---|---|---|---|---|"]
    for name, f in rows:
        feasible = "-" if "feasible" not in f else ("yes" if f["feasible"] else "no")
        out.append(f"| {name} | {feasible} | {cell(f.get('metric'))} | {cell(f.get('metric_test'))} | "
                   f"{cell(f.get('p50_ms'))} | {cell(f.get('bytes'))} |")
    paired = s.get("paired_vs_hand_written") or {}
    if paired.get("ratio") is not None:
        low, high = paired.get("ci_ratio") or (None, None)
        out += ["", f"The winner against the hand-written model, paired: {paired['ratio']:.3f}x its p50"
                + (f" [{low:.3f}, {high:.3f}]" if low is not None else "") + f" ({paired.get('verdict', '-')})."]
    return out + [""]


def write_markdown(path: Path, section: dict[str, Any]) -> None:
    write_text(path, markdown(section))
