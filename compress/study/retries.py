"""A study's trials stopped on the way: a worker that stopped beating (Optuna's heartbeat), a search stopped by
Ctrl-C or a signal, a process killed (out of memory?), trials queued past the budget. Their values are queued again
(a retry of the first attempt, in its folder) or failed, so a resumed study runs what an uninterrupted one would."""
from __future__ import annotations

from typing import Any

MAX_TRIES = 3
"""A trial whose process was killed this many times is failed, not queued again."""


def fail_stale(study: Any) -> None:
    """Optuna's heartbeat check: a trial whose worker stopped beating is failed (and retried by the callback)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def requeue(study: Any, trial: Any, why: str) -> None:
    """Queue a trial's values again (a retry of its first attempt, in that attempt's folder) and say so on it (its
    `requeued` note): it fails without a `reason`, so it does not count and the retry runs in its place."""
    original = trial.user_attrs.get("retry_of", trial.number)  # every retry names the first attempt
    study.enqueue_trial(trial.params, user_attrs={"retry_of": original})
    # another worker may already have taken the retry (RUNNING): the newest trial that names the same first attempt
    number = max(t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("retry_of") == original)
    study._storage.set_trial_user_attr(trial._trial_id, "requeued", f"{why}; queued again as trial {number}")


def requeue_stopped(trial: Any, why: str = "stopped by Ctrl-C") -> None:
    """A trial (still running) that Ctrl-C or a signal stopped: its values queued again, its attempt not counted as
    a kill."""
    trial.set_user_attr("ctrl_c", True)
    requeue(trial.study, trial, why)


def fail_interrupted(study: Any) -> int:
    """With the study's default storage (one worker, under the search lock), a RUNNING trial was left by a killed
    search: fail it and queue its values again. Returns how many."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    left = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    for t in left:
        original = t.user_attrs.get("retry_of", t.number)
        # attempts stopped by Ctrl-C say nothing about the values killing the process: not counted
        tries = sum((x.number == original or x.user_attrs.get("retry_of") == original)
                    and not x.user_attrs.get("ctrl_c") for x in trials)
        if tries >= MAX_TRIES:  # its values may be what kills the process (memory): counted as failed, not retried
            study._storage.set_trial_user_attr(t._trial_id, "reason", f"the process running it was killed "
                                               f"{tries} times (out of memory?)")
        else:
            requeue(study, t, "left running by a stopped search")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(left)


def drop_waiting(study: Any) -> int:
    """Trials queued (WAITING) once the budget is met are past it: failed as over_budget, so neither the report nor
    the loop that runs queued trials waits for them. Returns how many."""
    import optuna

    dropped = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        if study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.RUNNING):  # not taken
            study._storage.set_trial_user_attr(t._trial_id, "over_budget", True)
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            dropped += 1
    return dropped
