"""The end of a search: finalists, winner, and what is written (report.json's `search` section, trials.jsonl,
report.md, pareto.png, best.toml or best-effort.toml, winner.onnx)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from compress.cache import atomic_path, write_json
from compress.study.config import budget_from
from compress.study.finish import (agreed_round, choose, front, pick_finalists, run_finalists, time_together,
                                   trial_rows, write_trials)
from compress.study.outputs import plot, relative_output, toml_text, write_markdown


def finish(*, study: Any, scfg: Any, base: dict, base_cfg: Any, source: Path, root: Path, store: Path,
           baseline: dict[str, Any], say: Callable[[str], None], progress: bool, extra: dict[str, Any]) -> dict:
    """Finalists trained with the full budget, timed together with the hand-written model, the winner picked and
    written; the report's `search` section."""
    from filelock import FileLock

    higher = baseline["higher_is_better"]
    with FileLock(str(root / "finish.lock")):  # one worker at a time; the second finds the finalists cached
        rows = trial_rows(study)
        finalists, _ = pick_finalists(rows, scfg, higher)  # with no feasible trial, the closest: it may be, in full
        section = _section(scfg, rows, baseline, extra)
        if not finalists:
            section.update(best_effort=True, winner=None, finalists=[])
            for stale in WINNER_FILES:  # an earlier study's winner beside a report that says "winner": null
                (root / stale).unlink(missing_ok=True)
            _write(root, section, rows, baseline, [], scfg)
            from compress.errors import GateFailed

            clock = " (max_minutes stopped the trials)" if extra.get("stopped_by_clock") else ""
            raise GateFailed(f"{source}: search: no trial was measured ({section['counts']}){clock}; see "
                             f"{root / 'search.log'}")
        finals = run_finalists(finalists, base=base, scfg=scfg, source=source, root=root, store=store, say=say,
                               progress=progress)
        # a relative budget is judged against the hand-written model timed in this same round: the machine's
        # speed in this minute moves both sides alike; the finalists' own figures decide
        winner, best_effort, p50 = agreed_round(
            study, finals, lambda: _timed(finals, baseline, scfg, base_cfg, progress),
            lambda p50: choose(finals, p50, budget_from(scfg, p50.get("hand-written")), higher))
        final = budget_from(scfg, p50.get("hand-written"))
        section["final_budget_ms"] = final.latency_budget_ms
        baseline["p50_ms"] = p50.get("hand-written", baseline.get("p50_ms"))
        section["baseline"] = _public(baseline)
        section["finalists"] = [_finalist(f) for f in finals]
        section["best_effort"] = best_effort
        section["winner"] = _write_winner(root, winner, best_effort, base_cfg.base_dir)  # before anything can fail
        section["paired_vs_hand_written"] = _paired(baseline, winner, scfg, base_cfg)
        section["hand_written_ahead"] = hand_written_ahead(baseline, section["winner"], final, higher, best_effort)
        section["teacher_trained"] = _teacher_runs(rows, finals, study)
        _write(root, section, rows, baseline, finals, scfg)
    w = section["winner"]
    say(f"{'best effort' if best_effort else 'winner'}: trial {w['trial']}: {section['metric']} {w['metric']:.4f} "
        f"(validation), p50 {w['p50_ms']:.4f} ms, {w['bytes']:,} bytes -> {w['toml']}")
    if section["hand_written_ahead"]:
        say(f"the hand-written pipeline meets the same constraints and is at least as good on the objective "
            f"({section['metric']} {baseline['metric']:.4f} against the winner's {w['metric']:.4f}, p50 "
            f"{baseline['p50_ms']:.4f} against {w['p50_ms']:.4f} ms): the search found nothing better than the file "
            "as written")
    return section


def hand_written_ahead(baseline: dict[str, Any], winner: dict[str, Any] | None, scfg: Any, higher: bool,
                       best_effort: bool) -> bool:
    """Whether the hand-written model, judged as the winner was (the final round's budget, max_bytes; placement is
    not measured for it), is feasible and at least as good on the objective: max-metric by its validation metric,
    min-latency by its p50. Never for a Pareto front or a best effort."""
    from compress.study.loop import constraints
    from compress.study.trial import Outcome

    if not winner or best_effort or scfg.objective == "pareto" or scfg.all_nodes_on is not None:
        return False
    hand = Outcome(run_dir="", metric=baseline.get("metric"), p50_ms=baseline.get("p50_ms"),
                   bytes=baseline.get("bytes"))
    if hand.metric is None or hand.p50_ms is None or any(c > 0 for c in constraints(hand, scfg, higher)):
        return False
    if scfg.objective == "min-latency":
        return hand.p50_ms <= winner["p50_ms"]
    return hand.metric >= winner["metric"] if higher else hand.metric <= winner["metric"]


def _section(scfg: Any, rows: list[dict], baseline: dict, extra: dict) -> dict[str, Any]:
    states = ("complete", "infeasible", "pruned", "failed", "interrupted")
    counts = {s: sum(r["state"] == s for r in rows) for s in states}
    counts["measured"] = counts["complete"] + counts["infeasible"]
    counts["trials"] = sum(r["state"] != "interrupted" for r in rows)
    return {**extra, "objective": scfg.objective, "metric": baseline["metric_name"],
            "higher_is_better": baseline["higher_is_better"], "latency_budget_ms": scfg.latency_budget_ms,
            "latency_budget": scfg.latency_budget,
            "metric_floor": scfg.metric_floor, "max_bytes": scfg.max_bytes, "all_nodes_on": scfg.all_nodes_on,
            "target": scfg.target.model_dump(mode="json"), "space": scfg.model_dump(mode="json")["space"],
            "sampler": scfg.sampler_name, "pruner": scfg.pruner, "seed": scfg.seed, "budget_trials": scfg.trials,
            "short_epochs": scfg.short_epochs, "counts": counts, "trials": rows}


def _timed(finals: list[dict], baseline: dict, scfg: Any, base_cfg: Any, progress: bool) -> dict[str, float]:
    """Every finalist's final model and the hand-written one, timed on the target, interleaved."""
    from compress.config import check_before_training
    from compress.study.trial import target_seq

    paths = {f"trial-{f['trial']}": Path(f["outcome"].onnx) for f in finals if f["outcome"].onnx}
    if baseline.get("onnx"):
        paths["hand-written"] = Path(baseline["onnx"])
    data = check_before_training(base_cfg)
    seq = target_seq(data, base_cfg, scfg)  # as the trials
    return time_together(paths, scfg, lambda b: data.inputs.bench_feed(data, b, seq),
                         base_cfg.benchmark.settings(), progress)


def _paired(baseline: dict, winner: dict, scfg: Any, base_cfg: Any) -> dict[str, Any] | None:
    """The winner against the hand-written model, paired (alternating blocks, one process): ratio and its CI."""
    if not baseline.get("onnx"):
        return None
    from compress.bench.paired import paired_bench
    from compress.errors import CompressError

    t = scfg.target
    new = winner["outcome"].onnx
    try:
        row = paired_bench(baseline["onnx"], new, t.provider, t.batch, t.threads, base_cfg.benchmark.settings())
    except Exception as exc:  # e.g. other inputs (a fixed batch): said, not fatal (best.toml is written)
        from compress.errors import first_line

        return {"error": first_line(exc) if not isinstance(exc, CompressError) else str(exc)}
    return {k: row[k] for k in ("old_p50_ms", "new_p50_ms", "ratio", "ci_ratio", "pairs", "verdict")}


def _public(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: outcome.get(k) for k in ("run_dir", "final", "metric", "metric_test", "p50_ms", "bytes", "refused",
                                        "teacher", "onnx")}


def _finalist(f: dict[str, Any]) -> dict[str, Any]:
    return {"trial": f["trial"], "params": f["params"], "short_budget": f["short"], "feasible": f["feasible"],
            "constraints": f["constraints"], **_public(f["outcome"].to_json())}


WINNER_FILES = ("best.toml", "best-effort.toml", "winner.onnx", "best-effort.onnx")
"""What a study writes of its verdict: a CI step reads them, so none outlives the study that wrote it."""


def _write_winner(root: Path, winner: dict[str, Any], best_effort: bool, base_dir: Path) -> dict[str, Any]:
    """best.toml and winner.onnx beside it; best-effort.toml and best-effort.onnx when nothing was feasible (a CI
    step that looks for winner.onnx must not find one then)."""
    name, model = ("best-effort.toml", "best-effort.onnx") if best_effort else ("best.toml", "winner.onnx")
    toml_path = root / name
    for stale in set(WINNER_FILES) - {name, model}:
        (root / stale).unlink(missing_ok=True)  # the other verdict's files, from an earlier round
    o = winner["outcome"]
    header = (f"compress search: the {'best effort (nothing met the constraints)' if best_effort else 'winner'}, "
              f"trial {winner['trial']}: {winner['params']}\n`compress run {name}` reproduces it (cached in its "
              "output_dir; --force trains it again)")
    text = toml_text(relative_output(winner["raw"], toml_path, base_dir), header)
    with atomic_path(toml_path) as tmp:
        tmp.write_text(text, encoding="utf-8")  # TOML is UTF-8, whatever this machine's locale
    from compress.onnx.graph import copy_model

    copy_model(Path(o.onnx), root / model)  # with its external data, if it has any
    return {"trial": winner["trial"], "params": winner["params"], "toml": str(toml_path),
            **_public(o.to_json()), "onnx": str(root / model)}  # the copy, not the finalist's file


def _teacher_runs(rows: list[dict], finals: list[dict], study: Any) -> int:
    """How many runs of the study trained (or loaded) the teacher themselves: 1 when the store worked (0 when an
    earlier study or `compress run` had already put it in the store)."""
    hand = [v for k, v in study.user_attrs.items() if k.startswith("hand-written teacher")]
    statuses = [r.get("teacher") for r in rows] + [f["outcome"].teacher for f in finals] + hand
    return sum(s == "done" for s in statuses)


def _write(root: Path, section: dict, rows: list[dict], baseline: dict, finals: list[dict], scfg: Any) -> None:
    write_trials(root, rows)
    measured = [r for r in rows if r["state"] == "complete" and r["metric"] is not None]
    section["front"] = [r["number"] for r in front(measured, section["higher_is_better"])] if measured else []
    if plot(root / "pareto.png", rows, metric=section["metric"], baseline=baseline, finals=finals,
            budget=scfg.latency_budget_ms, floor=scfg.metric_floor):
        section["plot"] = str(root / "pareto.png")
    write_json(root / "report.json", {"schema": "compress.search/1", "search": section})
    write_markdown(root / "report.md", section)
