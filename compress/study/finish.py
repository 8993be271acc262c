"""After the trials: the finalists trained with the file's own budget, timed again together on the target
(interleaved in one process), the winner picked, and the margins measured paired."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from compress.cache import digest
from compress.errors import GateFailed
from compress.study.config import SearchConfig
from compress.study.loop import constraints, constraints_of, state_of
from compress.study.trial import Outcome, outcome_of, run_trial, trial_raw


def write_trials(root: Path, rows: list[dict[str, Any]]) -> None:
    """trials.jsonl: one row a trial, written after each trial (a study stopped by Ctrl-C keeps what it measured)
    and at the end."""
    import json

    from compress.cache import write_text

    write_text(root / "trials.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows))


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """Every trial that counts (and the ones a killed worker left, as 'interrupted'), in number order."""
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if a.get("over_budget"):
            continue
        state = state_of(t)
        if state == "failed" and "reason" not in a and t.state == optuna.trial.TrialState.FAIL:
            state = "interrupted"
        rows.append({"number": t.number, "state": state, "params": dict(t.params),
                     "metric": a.get("metric"), "metric_test": a.get("metric_test"), "p50_ms": a.get("p50_ms"),
                     "ratio": a.get("ratio"), "alone_p50_ms": a.get("alone_p50_ms"),
                     "bytes": a.get("bytes"), "refused": a.get("refused") or [],
                     "reason": a.get("reason") or a.get("requeued"),
                     "seconds": a.get("seconds"), "run_dir": a.get("run_dir"), "teacher": a.get("teacher"),
                     "retry_of": a.get("retry_of"), "constraints": constraints_of(t) if a.get("constraints") else None,
                     "pruned_at_epoch": (max(t.intermediate_values) if t.intermediate_values else None)
                     if state == "pruned" else None})
    return rows


def better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def front(rows: list[dict[str, Any]], higher: bool) -> list[dict[str, Any]]:
    """The rows no other row beats on both metric and p50, by p50."""
    def dominated(r: dict) -> bool:
        return any((not better(r["metric"], o["metric"], higher)) and o["p50_ms"] <= r["p50_ms"]
                   and (better(o["metric"], r["metric"], higher) or o["p50_ms"] < r["p50_ms"]) for o in rows)

    return sorted((r for r in rows if not dominated(r)), key=lambda r: r["p50_ms"])


def pick_finalists(rows: list[dict[str, Any]], scfg: SearchConfig, higher: bool) -> tuple[list[dict], bool]:
    """The finalists (best feasible first), and whether they are only a best effort (nothing feasible)."""
    done = [r for r in rows if r["state"] in ("complete", "infeasible") and r["metric"] is not None
            and r["p50_ms"] is not None]
    feasible = [r for r in done if r["state"] == "complete"]
    k = scfg.finalists
    if feasible:
        if scfg.objective == "pareto":
            on_front = _unique(front(feasible, higher))
            # spread over the front, the most accurate point (its last) always in: the winner is the most accurate
            # finalist, and the even steps never reached that end
            n = len(on_front)
            picks = range(n) if n <= k else dict.fromkeys(round(n - 1 - i * (n - 1) / max(k - 1, 1)) for i in range(k))
            return [on_front[i] for i in sorted(picks)], False
        key = (lambda r: (-r["metric"] if higher else r["metric"], r["p50_ms"])) if scfg.objective == "max-metric" \
            else (lambda r: (r["p50_ms"], -r["metric"] if higher else r["metric"]))
        return _unique(sorted(feasible, key=key))[:k], False
    timed = [r for r in rows if r["state"] in ("complete", "infeasible") and r["p50_ms"] is not None]
    if not timed:
        return [], True
    # nothing met the constraints: the one closest to them (least scaled violation; also among architectures too
    # slow untrained, which were never trained) is the best effort, trained in full as the one finalist
    return [min(timed, key=lambda r: sum(max(c, 0.0) for c in r["constraints"] or [1.0]))], True


def _unique(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for r in rows:
        key = digest(r["params"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def run_finalists(finalists: list[dict[str, Any]], *, base: dict, scfg: SearchConfig, source: Path, root: Path,
                  store: Path, say: Callable[[str], None], progress: bool) -> list[dict[str, Any]]:
    """Each finalist's file, with the file's own budget, run to its end; its outcome and run directory."""
    out = []
    for i, row in enumerate(finalists, 1):
        run_dir = root / "finalists" / digest(row["params"])[:12]
        raw = trial_raw(base, row["params"], scfg, run_dir, short=False)
        epochs = raw.get("distill", {}).get("epochs", "default")
        say(f"finalist {i}/{len(finalists)} (trial {row['number']}): full budget ({epochs} distill epochs) in "
            f"{run_dir}")
        try:
            outcome, _ = run_trial(raw, source, scfg, store, progress=progress)
        except GateFailed:
            from compress.report import load_report

            outcome = outcome_of(load_report(run_dir / "report.json"), run_dir, scfg)
        out.append({"trial": row["number"], "params": row["params"], "raw": raw, "outcome": outcome,
                    "short": {"metric": row["metric"], "p50_ms": row["p50_ms"]}})
    return out


def time_together(paths: dict[str, Path], scfg: SearchConfig, feed: Callable[[int], Any] | None,
                  settings: Any, progress: bool) -> dict[str, float]:
    """p50 (ms) of each model on the target, their repetitions interleaved in one process."""
    from compress.bench.harness import bench_models

    t = scfg.target
    got = bench_models({k: str(v) for k, v in paths.items()}, [t.provider], [t.batch], [t.threads],
                       settings=settings, inputs_for_batch=feed, progress=progress)
    return {name: g["latency"][0]["p50_ms"] for name, g in got.items() if g["latency"]}


def choose(finals: list[dict[str, Any]], p50: dict[str, float], scfg: SearchConfig, higher: bool) -> tuple[dict, bool]:
    """The winner among the finalists with their full-budget metric and interleaved p50; best effort if none is
    feasible any more."""
    for f in finals:
        o: Outcome = f["outcome"]
        o.p50_ms = p50.get(f"trial-{f['trial']}", o.p50_ms)
        f["constraints"] = constraints(o, scfg, higher)
        f["feasible"] = all(c <= 0 for c in f["constraints"])
    timed = [f for f in finals if f["outcome"].metric is not None and f["outcome"].p50_ms is not None]
    feasible = [f for f in timed if f["feasible"]]
    pool = feasible or timed or finals[:1]
    if feasible:
        return min(pool, key=lambda f: rank(f, scfg, higher)), False
    return min(pool, key=lambda f: (sum(max(c, 0.0) for c in f["constraints"]), *rank(f, scfg, higher))), True


def rank(finalist: dict[str, Any], scfg: SearchConfig, higher: bool) -> tuple[float, float, float, int]:
    """A finalist's place, smaller first: the objective's figure, then the other one, then the smaller file, then
    the earlier trial; a tie never falls to the order the finalists came in."""
    o: Outcome = finalist["outcome"]
    metric = math.inf if o.metric is None else (-o.metric if higher else o.metric)
    p50 = math.inf if o.p50_ms is None else o.p50_ms
    first, second = (p50, metric) if scfg.objective == "min-latency" else (metric, p50)
    return first, second, math.inf if o.bytes is None else o.bytes, finalist["trial"]


ROUND = "finalists' round"
"""The study's user attribute recording its finalists' round: their trial numbers, p50s and winner."""


def agreed_round(study: Any, finals: list[dict[str, Any]], measure: Callable[[], dict[str, float]],
                 pick: Callable[[dict[str, float]], tuple[dict, bool]]) -> tuple[dict, bool, dict[str, float]]:
    """The winner, whether it is a best effort, and the p50s it was judged by, as the study records them: the first
    worker to finish these finalists times them (`measure`), picks (`pick`) and records that; every later one
    (another worker on the storage, a rerun) takes the record instead of timing again, so all write the same
    best.toml. Workers on one machine finish one at a time (finish.lock); across machines, two that finish the
    same moment may each keep their own."""
    numbers = [f["trial"] for f in finals]

    def recorded() -> dict[str, Any] | None:
        record = study.user_attrs.get(ROUND)
        return record if record and record.get("finalists") == numbers else None

    record = recorded()
    if record is None:
        p50 = measure()
        record = recorded()  # another worker's, recorded while this one timed: theirs stands
        if record is None:
            winner, best_effort = pick(p50)
            study.set_user_attr(ROUND, {"finalists": numbers, "p50": p50, "winner": winner["trial"]})
            return winner, best_effort, p50
    winner, best_effort = pick(record["p50"])
    winner = next((f for f in finals if f["trial"] == record["winner"]), winner)  # trained elsewhere: same pick
    return winner, best_effort, record["p50"]
