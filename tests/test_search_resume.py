"""`compress search` stopped and run again: a trial stopped by Ctrl-C runs again with its values, and every run of
the finishing step (a second worker, a rerun) writes the same best.toml, whatever its own timings say."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_bad_inputs import assert_one_line_error, invoke
from tests.test_search import _folder

SMALL = {"trials = 4": "trials = 1", "finalists = 2": "finalists = 1", "short_epochs = 2": "short_epochs = 1",
         "epochs = 3": "epochs = 1"}


@pytest.mark.parametrize("signal_name", [None, "SIGTERM"])
def test_a_trial_stopped_by_ctrl_c_runs_again_with_its_values(tmp_path, monkeypatch, signal_name):
    # setup: a 1-trial study whose trial is stopped by Ctrl-C (or SIGTERM: a scheduler's time limit, `timeout`)
    # once its values are drawn. A SIGTERM'd trial was left RUNNING, and the resume counted it as a kill: the third
    # failed its values for good ("killed 3 times (out of memory?)")
    import signal

    import optuna

    import compress
    import compress.study.loop as study_loop
    from compress.errors import Stopped

    folder = _folder(tmp_path, **SMALL)
    real_run_trial = study_loop.run_trial

    def ctrl_c(*args, **kwargs):
        raise Stopped(getattr(signal, signal_name)) if signal_name else KeyboardInterrupt

    monkeypatch.setattr(study_loop, "run_trial", ctrl_c)
    # execute: the search stops with the usual line and exit code
    result = invoke(folder, "search", "s.toml", "--quiet")
    if signal_name:
        assert_one_line_error(result, folder, "stopped by SIGTERM", code=143)
        trials = optuna.load_study(study_name=None, storage=f"sqlite:///{folder}/runs/tiny/search/study.db").trials
        assert [t.state.name for t in trials] == ["FAIL", "WAITING"] and trials[0].user_attrs["ctrl_c"]
    else:
        assert_one_line_error(result, folder, "interrupted; run the same command again", code=130)
    assert not (folder / "runs/tiny/search/trials.jsonl").exists()  # no trial finished before the stop
    # execute: resumed, with a sampler that would draw other values (only a queued retry runs the same ones)
    monkeypatch.setattr(study_loop, "run_trial", real_run_trial)
    monkeypatch.setattr(study_loop, "sampler_for", lambda scfg, settled: optuna.samplers.RandomSampler(seed=99))
    section = compress.search(folder / "s.toml", progress=False)["search"]
    # assert: trial 0 is reported interrupted and queued again as trial 1, which ran its values in its folder; the
    # stopped trial did not count toward the budget of 1
    rows = section["trials"]
    stopped, retry = rows[0], rows[-1]
    assert stopped["state"] == "interrupted" and "queued again as trial 1" in stopped["reason"]
    assert f"stopped by {signal_name or 'Ctrl-C'}" in stopped["reason"]
    assert retry["number"] == 1 and retry["retry_of"] == 0 and retry["state"] == "complete"
    assert retry["params"] == stopped["params"] and len(stopped["params"]) == 3
    assert retry["run_dir"] == stopped["run_dir"]
    assert section["counts"]["trials"] == 1 and section["winner"]["trial"] == 1


def test_a_trial_whose_metric_is_nan_fails_with_its_reason(tmp_path, monkeypatch):
    # with metric_floor set, Optuna refused the NaN constraint ("NaN is not allowed"), which became the reason
    import compress
    import compress.study.loop as study_loop
    from compress.study.trial import Outcome

    folder = _folder(tmp_path, **{**SMALL, "latency_budget_ms = 1000.0": "latency_budget_ms = 1000.0\n"
                                                                          "metric_floor = 0.5"})
    monkeypatch.setattr(study_loop, "run_trial", lambda *a, **k: (
        Outcome(run_dir=str(folder), metric=float("nan"), p50_ms=0.1, bytes=1000), None))
    with pytest.raises(Exception):  # nothing feasible to finish with
        compress.search(folder / "s.toml", progress=False)
    rows = [json.loads(line) for line in (folder / "runs/tiny/search/trials.jsonl").read_text().splitlines()]
    assert rows[0]["state"] == "failed" and rows[0]["reason"] == ("the validation metric is NaN: training diverged "
                                                                  "(a lower distill.lr?)")


def test_attempts_stopped_by_ctrl_c_are_not_counted_as_kills():
    """A trial stopped by Ctrl-C twice and then killed is queued again: Ctrl-C is not a sign of its values
    killing the process (MAX_TRIES counts kills only)."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from compress.study.retries import fail_interrupted, requeue_stopped

    study = optuna.create_study()
    dist = {"x": CategoricalDistribution([1, 2])}
    trial = study.ask(dist)
    first = trial.params["x"]
    for _ in range(2):  # stopped by Ctrl-C: queued again, the stopped one failed
        requeue_stopped(trial)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        trial = study.ask(dist)
    # execute: the third attempt's process is killed (left RUNNING), then the search is resumed
    assert fail_interrupted(study) == 1
    # assert: queued a fourth time, with the first attempt's values
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == 0 and "reason" not in study.trials[2].user_attrs
    assert waiting[0].system_attrs["fixed_params"] == {"x": first} == trial.params


def _finalist(trial: int, metric: float, p50_ms: float, bytes_: int) -> dict:
    from compress.study.trial import Outcome

    return {"trial": trial, "outcome": Outcome(run_dir="", metric=metric, p50_ms=p50_ms, bytes=bytes_)}


@pytest.mark.parametrize("objective", ["max-metric", "min-latency"])
def test_a_tie_between_finalists_picks_the_same_winner_in_any_order(tmp_path, objective):
    from compress.config import load_config
    from compress.study.finish import choose

    replace = {} if objective == "max-metric" else {
        "latency_budget_ms = 1000.0": 'objective = "min-latency"\nmetric_floor = 0.0'}
    scfg = load_config(_folder(tmp_path, **replace) / "s.toml").search
    for finals, winner in (
            ([_finalist(5, 0.9, 1.0, 100), _finalist(2, 0.9, 1.0, 100)], 2),  # a full tie: the lower trial number
            ([_finalist(2, 0.9, 1.0, 200), _finalist(5, 0.9, 1.0, 100)], 5)):  # then the smaller file
        for order in (finals, finals[::-1]):
            p50 = {f"trial-{f['trial']}": f["outcome"].p50_ms for f in order}
            assert choose(order, p50, scfg, True)[0]["trial"] == winner


def test_every_finishing_run_writes_the_same_best_toml(tmp_path, monkeypatch):
    # setup: the fastest of 2 finalists wins; the first round times the lower-numbered trial faster, every later
    # round (a second worker's, a rerun's) the other one
    import compress
    import compress.study.report as study_report

    folder = _folder(tmp_path, **{**SMALL, "trials = 1": "trials = 2", "finalists = 1": "finalists = 2",
                                  "latency_budget_ms = 1000.0": 'objective = "min-latency"\nmetric_floor = 0.0'})
    rounds: list[list[str]] = []

    def timed(paths, *args, **kwargs):
        trials = sorted((name for name in paths if name.startswith("trial-")), key=lambda n: int(n[6:]))
        fast = trials[0] if not rounds else trials[-1]
        rounds.append(trials)
        return {name: 1.0 if name == fast else 2.0 for name in paths}

    monkeypatch.setattr(study_report, "time_together", timed)
    best = folder / "runs/tiny/search/best.toml"
    # execute
    first = compress.search(folder / "s.toml", progress=False)["search"]
    text = best.read_text()
    second = compress.search(folder / "s.toml", progress=False)["search"]
    # assert: two finalists; the second run took the first round's figures, so the same winner and best.toml
    # (the report lists the finalists in its own order; the round names them by trial number)
    assert len(first["finalists"]) == 2 and rounds[0] == sorted((f"trial-{f['trial']}" for f in first["finalists"]),
                                                                key=lambda n: int(n[6:]))
    assert first["winner"]["trial"] == int(rounds[0][0][6:])
    assert second["winner"]["trial"] == first["winner"]["trial"] and best.read_text() == text
    assert second["winner"]["p50_ms"] == first["winner"]["p50_ms"] == 1.0
    report = json.loads((folder / "runs/tiny/search/report.json").read_text())["search"]
    assert report["winner"]["trial"] == first["winner"]["trial"]
    assert not Path(folder / "runs/tiny/search/best-effort.toml").exists()


def test_trials_jsonl_holds_each_trial_as_it_finishes_so_a_stop_keeps_them(tmp_path, monkeypatch):
    # before: trials.jsonl was written when the search ended; Ctrl-C before then left none
    import compress.study.report as study_report

    folder = _folder(tmp_path, **SMALL)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C once the trials are done, before the finalists

    monkeypatch.setattr(study_report, "run_finalists", stopped)
    result = invoke(folder, "search", "s.toml", "--quiet")
    assert result.exit_code == 130, result.output
    rows = [json.loads(line) for line in (folder / "runs/tiny/search/trials.jsonl").read_text().splitlines()]
    assert [(r["number"], r["state"]) for r in rows] == [(0, "complete")] and rows[0]["metric"] is not None
