"""The Optuna study: storage, sampler, pruner, constraints, and the trial loop every worker runs.

Determinism: each trial's sampler is seeded from the study's seed and the number of trials that count before it, so
a study killed and resumed samples what an uninterrupted one would have (the killed trial, or one stopped by Ctrl-C,
is run again with its values). Several workers on one storage share the budget: a trial whose number lies past it
stops at once.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from compress.errors import CompressError, GateFailed
from compress.study.config import SearchConfig
from compress.study.retries import drop_waiting, fail_stale, requeue_stopped
from compress.study.space import Param
from compress.study.trial import Outcome, architecture_key, latency_first, run_dir_for, run_trial, trial_raw

log = logging.getLogger("compress.search")

CONSTRAINT_NAMES = ("latency", "bytes", "placement", "metric_floor")
EARLY_MARGIN = 1.1
"""An untrained architecture whose p50 exceeds the budget by this factor is infeasible without training (the
measurement's noise is a few percent)."""
NEAR_MARGIN = 1.25
"""An untrained p50 over budget x EARLY_MARGIN but under this factor of it is near enough that noise (a busy
machine, another worker beside it) may have put it there: the architecture is timed again the next time it is
drawn, up to UNTRAINED_TRIES times, and the fastest reading decides."""
UNTRAINED_TRIES = 3
N_CONSTRAINTS = len(CONSTRAINT_NAMES)  # p50 over budget, bytes over max_bytes, operators refused, metric short


class OverBudget(Exception):
    """A trial numbered past the study's budget (another worker took the last one): stop without running it."""


def sampler_for(scfg: SearchConfig, settled: int) -> Any:
    """The study's sampler for the next trial, seeded by the study's seed and the trials that count before it."""
    import optuna

    seed = (scfg.seed * 1_000_003 + settled) % (2**31 - 1)
    legacy = {} if hasattr(optuna.trial.Trial, "set_constraint") else {"constraints_func": constraints_of}
    if scfg.sampler_name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if scfg.sampler_name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, scfg.trials // 4)), **legacy)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, scfg.trials // 4)), **legacy)


def pruner_for(scfg: SearchConfig) -> Any:
    """Successive halving that judges a trial against the feasible ones only (default), Optuna's Hyperband (which
    sees every trial), or none. Only max-metric prunes: the other objectives are not the metric alone."""
    import optuna

    if scfg.pruner == "none" or scfg.objective != "max-metric":
        return optuna.pruners.NopPruner()
    if scfg.pruner == "halving":
        # a third go on at each rung (Optuna's default keeps a quarter); no bootstrap: Optuna's stops every trial
        # until that many have reached a rung
        return FeasibleOnly(optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=scfg.short_epochs)


class _FeasibleView:
    """A study as a pruner should see it: finished trials that missed a constraint left out, so a fast model is
    never stopped for being less accurate, early on, than models too slow to ship."""

    def __init__(self, study: Any) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list:
        import optuna

        done = optuna.trial.TrialState.COMPLETE
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
                if not (t.state == done and any(c > 0 for c in constraints_of(t)))]

    @property
    def trials(self) -> list:
        return self.get_trials()


class FeasibleOnly:
    """Wraps an Optuna pruner so that it compares a trial with the feasible trials only (see _FeasibleView)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def prune(self, study: Any, trial: Any) -> bool:
        return self.inner.prune(_FeasibleView(study), trial)


def constraints_of(trial: Any) -> list[float]:
    """Optuna's constraints: <= 0 is feasible. A pruned or failed trial has none measured: zeros."""
    return list(trial.user_attrs.get("constraints") or [0.0] * N_CONSTRAINTS)


def constraints(outcome: Outcome, scfg: SearchConfig, higher_is_better: bool) -> list[float]:
    """Each constraint's violation, scaled (<= 0: met)."""
    p50 = outcome.p50_ms
    budget = scfg.latency_budget_ms
    over = -1.0 if budget is None else (1.0 if p50 is None else (p50 - budget) / budget)
    size = -1.0 if scfg.max_bytes is None else ((outcome.bytes or 0) - scfg.max_bytes) / scfg.max_bytes
    placed = -1.0 if scfg.all_nodes_on is None else (float(len(outcome.refused)) if outcome.refused else -1.0)
    floor, metric = scfg.metric_floor, outcome.metric
    if floor is None:
        short = -1.0
    elif metric is None:
        short = 1.0
    else:
        short = (floor - metric if higher_is_better else metric - floor) / max(abs(floor), 1e-9)
    return [over, size, placed, short]


def objective_values(outcome: Outcome, scfg: SearchConfig, higher: bool = True) -> float | tuple[float, float]:
    if outcome.early:  # not trained: infeasible by its p50; its metric the worst (constrained samplers rank by that)
        worst = 0.0 if higher else 1e9
        return {"max-metric": worst, "min-latency": outcome.p50_ms, "pareto": (worst, outcome.p50_ms)}[scfg.objective]
    if outcome.metric is None or outcome.p50_ms is None or outcome.metric != outcome.metric:
        raise CompressError(f"{outcome.run_dir}: the final model has no validation metric or no p50 on the target")
    if scfg.objective == "max-metric":
        return outcome.metric
    if scfg.objective == "min-latency":
        return outcome.p50_ms
    return outcome.metric, outcome.p50_ms


def directions(scfg: SearchConfig, higher_is_better: bool) -> list[str]:
    metric = "maximize" if higher_is_better else "minimize"
    return {"max-metric": [metric], "min-latency": ["minimize"], "pareto": [metric, "minimize"]}[scfg.objective]


def counts(trial: Any) -> bool:
    """Whether a trial counts toward the budget: run, running or waiting; not one a dead worker left (it is run
    again) and not one started past the budget."""
    import optuna

    state, attrs = trial.state, trial.user_attrs
    if attrs.get("over_budget"):
        return False
    if state == optuna.trial.TrialState.FAIL:
        return "reason" in attrs  # failed by its own error; a killed worker's trial has no reason and is retried
    return True


class Loop:
    """One worker's trials: draw, run, record, until the budget, the clock or a stop."""

    def __init__(self, *, study_name: str, storage: Any, scfg: SearchConfig, params: list[Param], base: dict,
                 source: Path, root: Path, store: Path, higher_is_better: bool, say: Callable[[str], None],
                 deadline: float | None, finalist_seconds: float, reference: dict[str, Any] | None = None,
                 on_trial: Callable[[Any], None] | None = None) -> None:
        self.study_name, self.storage, self.scfg, self.params = study_name, storage, scfg, params
        # a relative budget: each trial's model is timed paired with the hand-written one ({"onnx", "p50_ms"})
        self.reference, self.feeds = reference, {}
        self.untrained: dict[str, list[float | None]] = {}  # architecture_key -> its untrained p50 readings
        self.base, self.source, self.root, self.store = base, source, root, store
        self.higher, self.say, self.deadline = higher_is_better, say, deadline
        self.finalist_seconds, self.on_trial = finalist_seconds, on_trial  # on_trial(study): after each trial
        self.seconds: list[float] = []
        self.last: int | None = None
        self.stopped_by_clock = False

    def study(self, settled: int) -> Any:
        import optuna

        return optuna.load_study(study_name=self.study_name, storage=self.storage,
                                 sampler=sampler_for(self.scfg, settled), pruner=pruner_for(self.scfg))

    def run(self, bar: Any = None) -> None:
        """Trials until the budget, the clock or a stop; `bar` (a progress bar over the budget) moves per trial."""
        import optuna

        while True:
            study = self.study(0)
            fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            # a waiting trial (queued again after a killed worker) is run by the next optimize call, not skipped
            settled = sum(counts(t) for t in trials if t.state != optuna.trial.TrialState.WAITING)
            if settled >= self.scfg.trials:
                drop_waiting(study)  # queued again by a resume with a smaller budget: nobody would ever run them
                return
            if self._out_of_time():
                self.stopped_by_clock = True
                return
            study = self.study(settled)
            study.optimize(self.objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            mine = next((t for t in study.get_trials(deepcopy=False) if t.number == self.last), None)
            if mine is None or mine.user_attrs.get("over_budget"):
                return
            self.say(line(mine, self.scfg, settled + 1))
            if self.on_trial is not None:
                self.on_trial(study)
            if bar is not None:
                bar.update(1)

    def _out_of_time(self) -> bool:
        if self.deadline is None:
            return False
        mean = sum(self.seconds) / len(self.seconds) if self.seconds else 0.0
        return time.time() + mean + self.finalist_seconds > self.deadline  # one more trial, then the finalists

    def objective(self, trial: Any) -> Any:
        import optuna

        self.last = trial.number
        earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
        if sum(counts(t) for t in earlier) >= self.scfg.trials:
            trial.set_user_attr("over_budget", True)
            raise OverBudget(f"trial {trial.number} is past the budget of {self.scfg.trials}")
        started = time.perf_counter()
        try:
            return self._trial(trial, started)
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            for name in CONSTRAINT_NAMES if hasattr(trial, "set_constraint") else ():
                trial.set_constraint(name, 0.0)  # nothing measured: the sampler learns from its metric alone
            raise
        except BaseException as exc:
            stopped = type(exc).__name__ == "Stopped"  # SIGTERM, SIGHUP (compress.errors): Optuna leaves it RUNNING
            if (isinstance(exc, KeyboardInterrupt) or stopped) and trial.params:
                # Optuna never runs a stopped trial again: its values are queued for the resume (or another worker),
                # and the stop is not counted as a kill (fail_interrupted); a signal's trial is failed here too
                requeue_stopped(trial, f"stopped by {exc.name}" if stopped else "stopped by Ctrl-C")
                if stopped:
                    trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)) or stopped:
                raise
            from compress.errors import first_line

            trial.set_user_attr("reason", first_line(exc) or type(exc).__name__)  # counted: the study goes on
            raise

    def _trial(self, trial: Any, started: float) -> Any:
        values = {p.path: p.suggest(trial) for p in self.params}
        # per study: two studies in one run folder numbered their trials alike, and the later overwrote the earlier's
        run_dir = run_dir_for(self.root / "trials" / self.study_name, trial.user_attrs.get("retry_of", trial.number))
        trial.set_user_attr("run_dir", str(run_dir))
        raw = trial_raw(self.base, values, self.scfg, run_dir, short=True)
        outcome = self._too_slow(raw, run_dir)
        if outcome is None:
            try:
                outcome, _ = run_trial(raw, self.source, self.scfg, self.store, report=self._reporter(trial))
            except GateFailed:  # the report is written; the final model is what it says (float when int8 missed)
                outcome = self._after_gate(run_dir)
        if outcome.metric is not None and outcome.metric != outcome.metric:  # Optuna refused the NaN constraint
            raise ValueError("the validation metric is NaN: training diverged (a lower distill.lr?)")
        self._paired(outcome, raw)
        self.seconds.append(time.perf_counter() - started)
        outcome.seconds = round(time.perf_counter() - started, 2)
        cons = constraints(outcome, self.scfg, self.higher)
        for key, value in {**outcome.to_json(), "constraints": cons}.items():
            trial.set_user_attr(key, value)
        if hasattr(trial, "set_constraint"):  # Optuna 5; 4 reads constraints_func
            for name, value in zip(CONSTRAINT_NAMES, cons):
                trial.set_constraint(name, value)
        return objective_values(outcome, self.scfg, self.higher)

    def _paired(self, outcome: Outcome, raw: dict) -> None:
        """With a relative budget, the trial's p50 as its paired ratio to the hand-written model times that model's
        p50 the budget came from: a machine that is slower during this trial slows both alike (alone, one
        architecture's trials measured 0.051 and 0.075 ms minutes apart)."""
        if self.reference is None or outcome.early or not outcome.onnx or outcome.p50_ms is None:
            return
        from compress.study.trial import paired_ratio

        ratio = paired_ratio(Path(self.reference["onnx"]), Path(outcome.onnx), raw, self.source, self.scfg,
                             self.feeds)
        if ratio is not None:
            outcome.ratio, outcome.alone_p50_ms = ratio, outcome.p50_ms
            outcome.p50_ms = ratio * self.reference["p50_ms"]

    def _reporter(self, trial: Any) -> Callable[[int, float], None] | None:
        """What the training loop calls after each epoch: the metric to the pruner, which may stop the trial."""
        if self.scfg.objective != "max-metric" or self.scfg.pruner == "none":
            return None
        import optuna

        def report(epoch: int, score: float) -> None:
            trial.report(score, step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: validation {score:.4f} is among the worst at this budget")

        return report

    def _too_slow(self, raw: dict, run_dir: Path) -> Outcome | None:
        """An Outcome without a metric when the untrained architecture is already far over the latency budget."""
        budget = self.scfg.latency_budget_ms
        if budget is None or self.scfg.objective == "min-latency":
            return None
        # TPE draws an architecture again and again: its latency does not change, so it is timed once, unless a
        # reading just over the line may be noise (then again, and the fastest reading counts)
        seen, line = self.untrained.setdefault(architecture_key(raw), []), budget * EARLY_MARGIN
        if not seen or (None not in seen and line < min(seen) < line * NEAR_MARGIN and len(seen) < UNTRAINED_TRIES):
            seen.append(latency_first(raw, self.source, self.scfg, self.reference, self.feeds))
        p50 = None if None in seen else min(seen)
        if p50 is None or p50 <= line:
            return None
        return Outcome(run_dir=str(run_dir), p50_ms=p50, early=True)

    def _after_gate(self, run_dir: Path) -> Outcome:
        from compress.report import load_report
        from compress.study.trial import outcome_of

        report = load_report(run_dir / "report.json")
        return outcome_of(report, run_dir, self.scfg)


def state_of(trial: Any) -> str:
    """complete, infeasible, pruned, failed, running or waiting."""
    import optuna

    s = trial.state
    if s == optuna.trial.TrialState.COMPLETE:
        return "complete" if all(c <= 0 for c in constraints_of(trial)) else "infeasible"
    return {optuna.trial.TrialState.PRUNED: "pruned", optuna.trial.TrialState.FAIL: "failed",
            optuna.trial.TrialState.RUNNING: "running", optuna.trial.TrialState.WAITING: "waiting"}[s]


def line(trial: Any, scfg: SearchConfig, index: int) -> str:
    """One log line per trial."""
    a = trial.user_attrs
    state = state_of(trial)
    values = "  ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    figures = ""
    if a.get("metric") is not None:
        figures = f"  metric {a['metric']:.4f}  p50 {a.get('p50_ms') or float('nan'):.3f} ms  {a.get('bytes') or 0:,} B"
    if state == "infeasible" and a.get("refused"):
        figures += f"  refused by {scfg.all_nodes_on}: {', '.join(a['refused'])}"
    if a.get("early"):
        figures = f"  p50 {a.get('p50_ms'):.3f} ms untrained: over the budget, not trained"
    if state == "failed":
        figures += f"  ({a.get('reason', 'interrupted')})"
    return f"trial {trial.number} ({index}/{scfg.trials}): {state}{figures}  [{values}]"


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
