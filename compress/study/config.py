"""[search]: what `compress search FILE` looks for, under which constraints, in which space, with what budget.

The rest of the file is the hand-written pipeline: `compress run FILE` runs it as it is (and ignores [search]); the
search starts from it, changes the keys of [search.space] per trial, and puts its own point on the Pareto plot.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from compress.section import Section

OBJECTIVES = ("max-metric", "min-latency", "pareto")
SET_BY_TRIALS = {
    "distill.epochs": "a trial trains [search] short_epochs, a finalist the file's own epochs",
    "distill.control": "trials never train the labels-only control",
    "prune.finetune_epochs": "a trial recovers [search] short_epochs / prune.steps epochs a step (at least 1), a "
                             "finalist the file's own",
    "prune.control": "trials never train the pruned model's control",
    "benchmark": "a trial times its final model on [search] target alone; choose where with target",
    "export.ort_format": "trials set it (the QNN flow needs it, the others skip the conversion)",
    "export.edge_targets": "trials set it (QNN placement when all_nodes_on = 'qnn', else none)",
}
"""key paths (or sections) a trial's file sets itself, whatever the space says: why searching them means nothing."""


class Target(Section):
    """Where latency is measured: one provider, batch and thread count (and a sequence length for text)."""

    provider: str = Field("cpu", description="cpu, openvino, qnn, ... (as in [benchmark] providers).")
    batch: int = Field(1, ge=1, description="Batch size timed.")
    threads: int = Field(1, ge=1, description="intra-op threads.")
    seq: int | None = Field(None, ge=1, description="Token inputs: the sequence length timed.")

    @field_validator("provider")
    @classmethod
    def _known(cls, v: str) -> str:
        from compress.bench.config import _resolve

        _resolve(v)
        return v


class Range(Section):
    """A numeric range: { low = 0.0, high = 0.6 }, optionally log-scaled or stepped; integers when both ends are."""

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.high < self.low:
            raise ValueError(f"high ({self.high:g}) is below low ({self.low:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true needs low > 0, got {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("give log = true or a step, not both (Optuna samples one or the other)")
        return self


class SearchConfig(Section):
    """[search]: the study. The space is any config key path with a list of choices or a { low, high } range."""

    objective: Literal["max-metric", "min-latency", "pareto"] = Field(
        "max-metric", description="max-metric: the task's primary metric, maximised (minimised when lower is "
        "better), with p50 <= latency_budget_ms; min-latency: p50 minimised with the metric at metric_floor or "
        "better; pareto: the front of both.")
    latency_budget_ms: float | None = Field(None, gt=0, description="max-metric: the p50 every feasible model "
                                            "meets on the target (and optional for pareto).")
    latency_budget: float | None = Field(
        None, gt=0, description="Instead of latency_budget_ms: the budget as a fraction of the hand-written model's "
        "p50 on the target (0.5 = twice as fast). It moves with the machine: trials are judged against the "
        "hand-written model's p50 from its own run, the finalists against the hand-written model timed in the same "
        "interleaved round.")
    metric_floor: float | None = Field(None, description="min-latency: the primary metric every feasible model "
                                       "reaches on validation (optional for the others).")
    target: Target = Field(default_factory=Target, description="{ provider, batch, threads, seq }: where p50 "
                           "is measured (the harness's pick profile, placement audited).")
    max_bytes: int | None = Field(None, ge=1, description="Optional: the ONNX file's size limit.")
    all_nodes_on: str | None = Field(None, description="Optional: infeasible unless this provider takes every "
                                     "node (measured by the provider itself, as `compress edge` does).")
    trials: int = Field(40, ge=1, le=10_000, description="Short-budget trials in the study (every worker together).")
    max_minutes: float | None = Field(None, gt=0, description="Wall clock of one `compress search` worker's "
                                      "trials and finalists (the hand-written pipeline before them is not counted); "
                                      "no trial starts once it and the finalists (estimated from the hand-written "
                                      "pipeline's own time) would not fit.")
    short_epochs: int = Field(5, ge=1, description="[distill] epochs of a trial; finalists train with the "
                              "file's own epochs.")
    finalists: int = Field(3, ge=1, le=20, description="Best feasible trials (or the front's, at most this many) "
                           "trained with the full budget and timed together, interleaved.")
    sampler: Literal["tpe", "nsga2", "random"] | None = Field(
        None, description="Optuna sampler: tpe (default; constrained), nsga2 (default for pareto), random (the "
        "baseline to beat).")
    pruner: Literal["halving", "hyperband", "none"] = Field(
        "halving", description="Stops hopeless trials from their epoch-by-epoch validation metric (max-metric; "
        "the other objectives do not prune): successive halving against the feasible trials only (default), or "
        "Optuna's Hyperband, which compares with every trial, so models too slow to ship can stop fast ones.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="The study's seed: the same file and seed give the same "
                      "study.")
    space: dict[str, list[Any] | Range] = Field(description="Config key path -> [choices] or { low, high, log, "
                                                "step }, e.g. \"student.kwargs.width\" = [8, 16, 32].")

    @field_validator("space", mode="before")
    @classmethod
    def _ranges(cls, v: Any) -> Any:
        """A table is a range: its own error ('high (0.2) is below low (0.8)'), not the union's 'should be a valid
        list' that pydantic reports first."""
        from pydantic import ValidationError

        if not isinstance(v, dict):
            return v
        out = {}
        for path, spec in v.items():
            if not isinstance(spec, (dict, list)):  # pydantic's union said "list[any]: input should be a valid list"
                raise ValueError(f"{path}: expected a list of choices ([{spec!r}] for one) or a range "
                                 f"{{ low = ..., high = ... }}, got {spec!r}")
            try:
                out[path] = Range.model_validate(spec) if isinstance(spec, dict) else spec
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(map(str, first["loc"]))
                raise ValueError(f"{path}: {where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}")
        return out

    @field_validator("space")
    @classmethod
    def _not_empty(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("give at least one key path to search")
        for path, choices in v.items():
            if isinstance(choices, list) and not choices:
                raise ValueError(f"{path}: an empty list of choices")
            if path.split(".")[0] in ("pipeline", "search", "data", "teacher"):
                raise ValueError(f"{path}: [{path.split('.')[0]}] is the study's, not a trial's: search the "
                                 "student, distill, prune, quantize or export settings")
            fixed = next((k for k in SET_BY_TRIALS if path == k or path.startswith(k + ".")), None)
            if fixed is not None:
                raise ValueError(f"{path}: not searchable: {SET_BY_TRIALS[fixed]}")
        return v

    @field_validator("all_nodes_on")
    @classmethod
    def _provider(cls, v: str | None) -> str | None:
        if v is not None:
            from compress.bench.config import _resolve

            _resolve(v)
        return v

    @model_validator(mode="after")
    def _objective_needs(self) -> "SearchConfig":
        if self.latency_budget_ms is not None and self.latency_budget is not None:
            raise ValueError("latency_budget: give latency_budget_ms (milliseconds) or latency_budget (a fraction of "
                             "the hand-written model's p50), not both")
        if self.objective == "max-metric" and self.latency_budget_ms is None and self.latency_budget is None:
            raise ValueError("latency_budget_ms: objective 'max-metric' needs a budget (ms, or latency_budget: a "
                             "fraction of the hand-written model's p50)")
        if self.objective == "min-latency" and self.metric_floor is None:
            raise ValueError("metric_floor: objective 'min-latency' needs a floor for the primary metric")
        return self

    @property
    def sampler_name(self) -> str:
        return self.sampler or ("nsga2" if self.objective == "pareto" else "tpe")


def budget_from(scfg: SearchConfig, hand_written_p50: float | None) -> SearchConfig:
    """`scfg` with latency_budget_ms worked out from a relative latency_budget and the hand-written model's p50 (as
    measured now); unchanged when the budget is absolute or the hand-written model has no p50."""
    if scfg.latency_budget is None or hand_written_p50 is None:
        return scfg
    return scfg.model_copy(update={"latency_budget_ms": scfg.latency_budget * hand_written_p50})


def with_overrides(scfg: SearchConfig, path: Any, *, trials: int | None = None, max_minutes: float | None = None,
                   flags: bool = True) -> SearchConfig:
    """`scfg` with the command line's --trials and --max-minutes (or compress.search's trials= and max_minutes=:
    not `flags`), checked as the file's own values are (a copy with model_copy(update=...) would skip the checks)."""
    import math

    from compress.errors import CompressError

    def named(key: str) -> str:
        return f"--{key.replace('_', '-')}" if flags else f"search({key}=...)"

    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= 10_000):
        raise CompressError(f"{path}: {named('trials')}: expected a whole number from 1 to 10000, got {trials!r}")
    if max_minutes is not None and (isinstance(max_minutes, bool) or not isinstance(max_minutes, (int, float))
                                    or not math.isfinite(max_minutes) or max_minutes <= 0):
        raise CompressError(f"{path}: {named('max_minutes')}: expected a number of minutes above 0, got "
                            f"{max_minutes!r}")
    updates = {k: v for k, v in {"trials": trials, "max_minutes": max_minutes}.items() if v is not None}
    return scfg.model_copy(update=updates)
