"""`compress search FILE`: an Optuna study over the pipeline's [search.space], measured on the target."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--storage", default=None, metavar="URL", help="Optuna RDB storage shared by several workers, e.g. "
              "sqlite:///study.db on one machine or postgresql://user:pass@host/db across machines; default: a "
              "SQLite file in runs/<name>/search/ (one worker).")
@click.option("--trials", type=int, default=None, help="Override [search] trials.")
@click.option("--max-minutes", type=float, default=None, help="Override [search] max_minutes (this worker).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def search(file: Path, storage: str | None, trials: int | None, max_minutes: float | None, quiet: bool) -> None:
    """Search FILE's [search.space] for the best model under its constraints; write best.toml (exit 1 when nothing
    met them: the closest is written as best-effort.toml). Rerun to resume; several workers share --storage."""
    from compress.study import search as run_search

    report = run_search(file, storage=storage, trials=trials, max_minutes=max_minutes, progress=not quiet)
    s = report["search"]
    w = s["winner"]
    click.echo(f"{s['counts']['trials']} trials ({s['counts']['complete']} feasible, {s['counts']['infeasible']} "
               f"infeasible, {s['counts']['pruned']} pruned, {s['counts']['failed']} failed)")
    if s.get("stopped_by_clock"):
        click.echo(f"max_minutes stopped the trials at {s['counts']['trials']} of {s['budget_trials']}: the winner "
                   "comes from those")
    click.echo(f"winner: trial {w['trial']} {w['params']}: {s['metric']} {w['metric']:.4f} (validation), p50 "
               f"{w['p50_ms']:.4f} ms, {w['bytes']:,} bytes")
    b = s.get("baseline") or {}
    if b.get("metric") is not None and b.get("p50_ms") is not None:
        click.echo(f"hand-written: {s['metric']} {b['metric']:.4f}, p50 {b['p50_ms']:.4f} ms, {b['bytes']:,} bytes")
    click.echo(f"wrote {w['toml']}, {Path(w['toml']).parent / 'report.json'}")
