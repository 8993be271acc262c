"""`compress search FILE`: the most accurate model under a latency budget (or the fastest over a metric floor, or
the front of both), measured on the target.

The file is an ordinary pipeline plus a [search] section. The hand-written pipeline runs first (its teacher is
published to the study's stage store, so no trial trains one; its own point goes on the plot). Then an Optuna
study draws trials: the file with the space's values, on a short budget, pruned epoch by epoch, each final model
exported and timed on the target. The best feasible trials are trained with the file's own budget and timed again
together; the winner's complete pipeline file is written as best.toml. Everything lives in runs/<name>/search/.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from compress.errors import CompressError, GateFailed

SCHEMA = "compress.search/1"


def search(source: str | Path, *, storage: str | None = None, trials: int | None = None,
           max_minutes: float | None = None, progress: bool = True, flags: bool = True) -> dict[str, Any]:
    """Run (or resume, or join with `storage`) the study of a pipeline file with a [search] section.

    Returns the search report (also runs/<name>/search/report.json). Raises CompressError for bad input (exit 2) and
    GateFailed (exit 1) when no model met the constraints, after writing the best-effort model's best-effort.toml.
    The data is loaded once for the space's checks, the hand-written run and every trial (compress.config.held).
    `flags`: bad `trials` or `max_minutes` are named as the command line's flags (else as keyword arguments).
    """
    import warnings

    from compress.config import held

    with held(), warnings.catch_warnings():
        # a list choice ([16, 16] hidden layers, as builtin:mlp takes) is stored and resumed as JSON, which is what
        # Optuna warns of for "persistent storage", four lines a trial, also under --quiet
        warnings.filterwarnings("ignore", message="Choices for a categorical distribution", category=UserWarning)
        return _search(source, storage=storage, trials=trials, max_minutes=max_minutes, progress=progress,
                       flags=flags)


def _search(source: str | Path, *, storage: str | None, trials: int | None, max_minutes: float | None,
            progress: bool, flags: bool) -> dict[str, Any]:
    import optuna

    from compress.study.config import SearchConfig, budget_from, with_overrides
    from compress.study.space import check_search, params_of
    from compress.study.finish import trial_rows, write_trials
    from compress.study.loop import Loop
    from compress.study.storage import redacted, storage_for

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours (search.log)
    path, raw, base_cfg = _load(source)
    scfg: SearchConfig = with_overrides(base_cfg.search, path, trials=trials, max_minutes=max_minutes, flags=flags)
    params = params_of(scfg.space)
    check_search(base_cfg, raw, path)
    base = {k: v for k, v in raw.items() if k != "search"}
    root = base_cfg.run_dir / "search"
    # the stage store beside every run folder: keys are content hashes, so any study (or two) may share it
    store, started = base_cfg.run_dir.parent / ".stages", time.time()
    with _search_lock(root, own=storage is None):
        rdb = storage_for(storage, root / "study.db", flags=flags)  # a bad URL is said before anything trains
        say = _sayer(root / "search.log", progress)
        baseline = _baseline(base, path, scfg, store, root, say, progress)
        kept = scfg.model_dump(mode="json", exclude={"trials", "max_minutes"})  # a rerun with more trials: same study
        scfg = budget_from(scfg, baseline.get("p50_ms"))  # a relative budget: the hand-written model's p50 times it
        if scfg.latency_budget is not None:
            say(f"latency budget: {scfg.latency_budget:g} x the hand-written model's p50 "
                f"{baseline.get('p50_ms') or float('nan'):.4f} ms = {scfg.latency_budget_ms or float('nan'):.4f} ms "
                "(the finalists are judged against it timed in their own round)")
        study_name = _open_study(rdb, f"{base_cfg.pipeline.name}-{_digest([base, kept])[:10]}", baseline, scfg,
                                 own=storage is None, say=say)
        # the clock starts with the trials: the hand-written pipeline (and the teacher it may train) is not the search's
        deadline = time.time() + 60 * scfg.max_minutes if scfg.max_minutes else None
        loop = Loop(study_name=study_name, storage=rdb, scfg=scfg, params=params, base=base, source=path,
                    root=root, store=store, higher_is_better=baseline["higher_is_better"], say=say, deadline=deadline,
                    finalist_seconds=scfg.finalists * baseline["full_seconds"],
                    reference={"onnx": baseline["onnx"], "p50_ms": baseline["p50_ms"]}
                    if scfg.latency_budget is not None and baseline.get("onnx") and baseline.get("p50_ms") else None,
                    on_trial=lambda study: write_trials(root, trial_rows(study)))
        say(f"study {study_name} in {redacted(storage or rdb.url)}: {scfg.objective}, {scfg.trials} trials, "
            f"sampler {scfg.sampler_name}, seed {scfg.seed}")
        _run_trials(loop, study_name, rdb, scfg, say, progress)
        from compress.study.report import finish

        section = finish(study=optuna.load_study(study_name=study_name, storage=rdb), scfg=scfg, base=base,
                         base_cfg=base_cfg, source=path, root=root, store=store, baseline=baseline, say=say,
                         progress=progress, extra={"study": study_name, "storage": redacted(storage or rdb.url),
                                                   "elapsed_s": round(time.time() - started, 1),
                                                   "stopped_by_clock": loop.stopped_by_clock})
    if section["best_effort"]:
        raise GateFailed(f"{path}: search: no model met the constraints in {section['counts']['measured']} measured "
                         f"trials{_clock_note(section)}; the closest is written as {section['winner']['toml']} "
                         "(best effort)")
    return {"schema": SCHEMA, "search": section}


def _digest(obj: Any) -> str:
    from compress.cache import digest

    return digest(obj)


def _open_study(rdb: Any, prefix: str, baseline: dict[str, Any], scfg: Any, *, own: bool,
                say: Callable[[str], None]) -> str:
    """The study's name (created, or loaded to resume): the file's hash and, after it, the hash of the stage keys of
    the hand-written run (its data, its models' code, the seed and compress's version): a study whose inputs changed
    starts again, said in one line, instead of reusing trials trained on other data or code."""
    import optuna

    from compress.study.loop import directions
    from compress.study.retries import fail_interrupted

    name = f"{prefix}-{_digest(baseline['inputs'])[:8]}"
    earlier = [s.study_name for s in optuna.get_all_study_summaries(storage=rdb, include_best_trial=False)]
    stale = [n for n in earlier if n.startswith(f"{prefix}-") and n != name]
    if stale and name not in earlier:
        say(f"warning: the data or the model code changed since study {stale[-1]}: starting study {name} (the "
            "earlier trials are not reused)")
    study = optuna.create_study(study_name=name, storage=rdb, directions=directions(scfg, baseline[
        "higher_is_better"]), load_if_exists=True)
    # the teacher stage's status in this worker's hand-written run: summed over workers in the report
    study.set_user_attr(f"hand-written teacher, worker {os.getpid()} at {time.time():.3f}", baseline["teacher"])
    if own and (left := fail_interrupted(study)):
        say(f"{left} trial(s) left running by a stopped search: queued again with their values")
    return name


def _run_trials(loop: Any, study_name: str, rdb: Any, scfg: Any, say: Callable[[str], None], progress: bool) -> None:
    """This worker's trials, then the queued ones other workers left, until the budget or the clock."""
    from compress.progress import progress as progress_bar

    bar = progress_bar(total=scfg.trials, desc="search", unit="trial", enabled=progress and _tty())
    try:
        while True:  # a trial of a dead worker, queued again while this one waited, is run here
            loop.run(bar)
            _wait_for_others(study_name, rdb, say)
            if loop.stopped_by_clock or not _waiting(study_name, rdb):
                break
    finally:
        bar.close()
    if loop.stopped_by_clock:
        say(f"max_minutes ({scfg.max_minutes}) stopped the trials before the budget of {scfg.trials}: the "
            "finalists come from the trials that ran")


def _clock_note(section: dict[str, Any]) -> str:
    """What the last line adds when the clock, not the budget, ended the trials."""
    if not section.get("stopped_by_clock"):
        return ""
    return f" (max_minutes stopped the trials at {section['counts']['trials']} of {section['budget_trials']})"


def _load(source: str | Path) -> tuple[Path, dict[str, Any], Any]:
    import tomllib

    from compress.config import load_config

    path = Path(source)
    cfg = load_config(path)
    if cfg.search is None:
        raise CompressError(f"{path}: search: no [search] section; add one (objective, latency_budget_ms, "
                            "[search.space]) or run the file with `compress run`")
    if cfg.search.target.seq is not None and not cfg.data.source.startswith("text:"):
        raise CompressError(f"{path}: search.target.seq: applies to token inputs (text: sources) only, and "
                            f"data.source is {cfg.data.source!r}; remove seq from the target")
    return path, tomllib.loads(path.read_text(encoding="utf-8")), cfg


def _baseline(base: dict, path: Path, scfg: Any, store: Path, root: Path, say: Callable[[str], None],
              progress: bool) -> dict[str, Any]:
    """The hand-written pipeline, run (or read from its cache) in its own run directory with the stage store: its
    teacher is the one every trial shares. Its figures, as a trial's."""
    from filelock import FileLock

    from compress.config import _check_files, parse_config
    from compress.report import load_report
    from compress.runner import run_pipeline
    from compress.study.trial import outcome_of

    cfg = parse_config(base, path)
    _check_files(cfg)
    root.mkdir(parents=True, exist_ok=True)
    say(f"hand-written pipeline: {cfg.run_dir}")
    with FileLock(str(root / "baseline.lock")):  # a second worker waits, then reads the cache
        try:
            report = run_pipeline(cfg, progress=progress, store=store)
        except GateFailed:
            report = load_report(cfg.run_dir / "report.json")
    outcome = outcome_of(report, cfg.run_dir, scfg)
    if outcome.p50_ms is None and outcome.onnx:  # its [benchmark] did not time the target: timed here, as a trial is
        from compress.study.trial import time_on_target

        outcome.p50_ms = time_on_target(Path(outcome.onnx), cfg, scfg)
    if outcome.p50_ms is None and scfg.latency_budget is not None:
        t = scfg.target
        raise CompressError(f"{path}: search.latency_budget: a relative budget needs the hand-written model's p50 on "
                            f"the target ({t.provider}, batch {t.batch}, threads {t.threads}), and it could not be "
                            "timed there; give latency_budget_ms instead")
    return {**outcome.to_json(), "full_seconds": _seconds_after_teacher(cfg.run_dir, report),
            "inputs": _stage_keys(cfg, cfg.run_dir, report),
            "higher_is_better": report["primary_metric"]["higher_is_better"],
            "metric_name": report["primary_metric"]["name"]}


def _seconds_after_teacher(run_dir: Path, report: dict[str, Any]) -> float:
    """What the hand-written pipeline's stages after the teacher took when they were computed (from their manifests,
    so a cached run still knows): a finalist's cost, as the clock estimates it."""
    import json

    total = 0.0
    for stage in report["stages"]:
        if stage["name"] == "teacher":
            continue
        try:
            total += float(json.loads((run_dir / stage["name"] / "manifest.json").read_text())["seconds"])
        except (OSError, ValueError, KeyError):
            total += float(stage.get("seconds") or 0.0)
    return total


def _stage_keys(cfg: Any, run_dir: Path, report: dict[str, Any]) -> list[str | None]:
    """What the hand-written run was made from, never what it made: the first stage's cache key (the data's
    fingerprint, the seed, compress's version and that stage's settings and code digests; it chains no artifact)
    and each later stage's settings and code digests. Later stages' own keys chain the bits of the models trained
    before them, which another machine (or a GPU) does not reproduce: workers sharing a study named it differently."""
    import json

    from compress.cache import digest
    from compress.stages import section_inputs

    keys: list[str | None] = []
    for i, stage in enumerate(report["stages"]):
        if i:
            keys.append(digest([stage["name"], section_inputs(cfg, stage["name"])]))
            continue
        try:
            keys.append(str(json.loads((run_dir / stage["name"] / "manifest.json").read_text())["key"]))
        except (OSError, ValueError, KeyError):
            keys.append(None)
    return keys


def _waiting(study_name: str, rdb: Any) -> bool:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=rdb)
    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def _wait_for_others(study_name: str, rdb: Any, say: Callable[[str], None], poll: float = 5.0) -> None:
    """Other workers' running trials finish (or go stale) before the finalists are chosen."""
    import optuna

    from compress.study.retries import fail_stale

    said = False
    while True:
        study = optuna.load_study(study_name=study_name, storage=rdb)
        fail_stale(study)
        running = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
        if not running:
            return
        if not said:
            say(f"waiting for trial(s) {running} of other workers")
            said = True
        time.sleep(poll)


@contextlib.contextmanager
def _search_lock(root: Path, *, own: bool) -> Iterator[None]:
    """With the default storage one worker owns the study (a second is told to use --storage)."""
    from compress.cache import exclusive

    root.mkdir(parents=True, exist_ok=True)
    if not own:
        yield
        return
    with exclusive(root / ".search.lock", f"{root}: another compress search is using this study; to run several "
                   "workers on one study, start each with the same --storage URL (e.g. sqlite:///study.db)"):
        yield


def _sayer(log_path: Path, progress: bool) -> Callable[[str], None]:
    import sys

    log_path.parent.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        if progress and _tty():
            from tqdm.auto import tqdm

            tqdm.write(f"search: {text}", file=sys.stderr)  # above the bar
        elif progress:
            print(f"search: {text}", file=sys.stderr, flush=True)

    return say


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()
