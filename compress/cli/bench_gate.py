"""`compress bench --baseline` and `compress compare`: what makes two results comparable, and the verdict (exit 1 on
a regression). Split from compress/cli/bench.py, which times the rows."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from compress.errors import CompressError, GateFailed


def gate(rows: list[dict[str, Any]], max_regression: float, what: str, strict: bool) -> None:
    """Exit 1 on a regressed row; a baseline row the new run lacks is a warning (with --strict: exit 2)."""
    from compress.bench.compare import missing, regressions

    gone = missing(rows)
    if gone and not strict:
        click.echo(f"warning: {what}: {len(gone)} baseline row(s) not measured, so not judged: {'; '.join(gone)}",
                   err=True)
    bad = regressions(rows)
    if bad:
        worst = max(bad, key=lambda r: r["ratio"])
        raise GateFailed(
            f"{what}: {len(bad)} of {len(rows)} latency rows regressed beyond +{max_regression:.0%} "
            f"(worst {worst['provider']} batch {worst['batch']} threads {worst['threads']}: x{worst['ratio']:.3f})"
        )
    if gone and strict:
        raise CompressError(f"{what}: {len(gone)} baseline row(s) not measured, so not judged: {'; '.join(gone)}; "
                            "measure the same providers, batches and threads, or drop --strict")


def check_comparable(base_doc: dict[str, Any], new_doc: dict[str, Any], strict: bool, warn: str, error: str) -> None:
    """The checks `compare` and `bench --baseline` share: model identity (with --strict: exit 2) and the machines.
    `warn` starts each warning line, `error` the --strict error."""
    from compress.bench.identity import cpu_notes, mismatches

    differ = mismatches(base_doc, new_doc)
    if differ and strict:
        raise CompressError(f"{error} are not comparable: {differ[0]}; compare two results of the same pipeline and "
                            "model, or drop --strict to see the rows anyway")
    for what in differ:
        click.echo(f"warning: {warn}: {what}; their rows may compare unrelated models", err=True)
    for what in cpu_notes(base_doc, new_doc):
        click.echo(f"warning: {warn}: {what}", err=True)


def baseline_rows(base_doc: dict[str, Any], baseline: Path, given: Path, model: Path, names: list[str],
                   shapes: dict[str, Any], strict: bool) -> dict[Any, dict[str, Any]]:
    """The baseline's rows, after the checks `compare` makes (same model, inputs, providers, fixed dimensions;
    the machines), run on what is about to be timed, before a single run. `names`: the providers this machine has (one
    it lacks is not measured, so it is no "different provider")."""
    from compress.bench.compare import rows_of
    from compress.bench.environment import environment
    from compress.bench.identity import model_inputs

    planned = {"inputs": model_inputs(model), "environment": environment(), **shapes,  # fixed dims, --dim sizes
               "latency": [{"provider": name} for name in names]}
    check_comparable(base_doc, planned, strict, f"--baseline {baseline}", f"--baseline {baseline} and {given}")
    return rows_of(base_doc, baseline)


def some_row_matches(base_rows: dict[Any, dict[str, Any]], baseline: Path, names: list[str], batches: list[int],
                      threads: list[int]) -> None:
    """Before a run is timed: a baseline none of whose rows this run will time is refused now (it was said after
    every row had been timed). `names`: the providers this machine has."""
    from compress.bench.compare import describe

    planned = {(p, b, t) for p in names for b in batches for t in threads}
    if planned and not any((key[1], key[2], key[3]) in planned for key in base_rows):
        shown = "; ".join(describe(k) for k in list(base_rows)[:3])
        raise CompressError(f"--baseline {baseline}: none of its rows ({shown}) is among the rows this run times "
                            "(rows match on provider, batch and threads); time the same ones")


def baseline_gate(model: Path, baseline: Any, base_rows: dict[Any, dict[str, Any]], result: dict[str, Any],
                   max_regression: float, strict: bool) -> None:
    """`bench MODEL --baseline OLD.json`: the verdict table and the gate (exit 1 on a regression)."""
    from compress.bench.compare import compare, key_of, machine_warnings, table

    new_rows = {key_of("", r): r for r in result["latency"]}  # (a run that timed nothing stopped before: bench)
    verdicts = compare(base_rows, new_rows, max_regression, names=(str(baseline), f"this run of {model}"))
    rechecked = [r for r in result["latency"] if r.get("rechecked")]
    if rechecked:
        click.echo(f"re-measured {len(rechecked)} row(s) that looked more than {max_regression / 2:.0%} slower; "
                   "verdicts use both looks")
    click.echo("")
    click.echo(table(verdicts, max_regression))
    for line in machine_warnings(verdicts):
        click.echo(line, err=True)
    gate(verdicts, max_regression, f"{model} vs {baseline}", strict)


def looks_slower(base_rows: dict[Any, dict[str, Any]], max_regression: float) -> Any:
    """recheck(row) for bench_model: True when the row's ratio to its baseline exceeds half the budget.

    Half, not the full budget: a first look just under the line can be the lucky one, and a second look costs
    seconds only for the rows near or past it (A/A under load: benchmarks/bench_aa_ab.py, README).
    """
    from compress.bench.compare import compare, key_of

    def recheck(row: dict[str, Any]) -> bool:
        try:
            verdict = compare(base_rows, {key_of("", row): row}, max_regression)
        except CompressError:  # no baseline row to look at: the gate says so once every row is timed
            return False
        return any(v["ratio"] is not None and v["ratio"] > 1.0 + max_regression / 2 for v in verdict)

    return recheck
