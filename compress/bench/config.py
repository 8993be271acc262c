"""How hard to measure: `BenchSettings`, the one settings type of the harness, and the pipeline's [benchmark]
section built on it.

Every caller uses this type; only the numbers differ, and the named profiles below put each caller's choice in one
place: `compress bench` (the defaults), the pipeline's benchmark stage ([benchmark], lighter), quantize's
float-vs-int8 pick and prune's per-step latency (lighter still).
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import Field, ValidationError, field_validator, model_validator

from compress.section import Section


class BenchSettings(Section):
    """How latency is measured (compress.bench.harness). The defaults are `compress bench`'s: they keep the p50 of
    a ~1 ms model within a few % run to run on 2 cores."""

    warmup_runs: int = Field(20, ge=0, description="Untimed runs on each fresh session before timing starts.")
    min_runs: int = Field(100, ge=1, description="Timed runs per repetition, at least.")
    min_seconds: float = Field(0.6, ge=0, description="Timed seconds per repetition, at least (both minimums "
                               "must be met).")
    max_seconds: float = Field(30.0, gt=0, description="Stop a repetition after this many seconds even if "
                               "min_runs is not reached (slow models), once 5 ran.")
    repetitions: int = Field(5, ge=1, description="Independent repetitions, each on a fresh session, interleaved "
                             "across rows; samples from all are pooled.")
    time_budget_seconds: float = Field(12.0, ge=0, description="Seconds per row: a slow model's runs and "
                                       "repetitions are cut to fit (compress/bench/budget.py); 0 = no budget.")
    io_binding: bool | None = Field(None, description="Bind inputs/outputs on the device once so host copies are "
                                    "not timed; None = on for CUDA/TensorRT.")
    provider_options: dict[str, dict[str, str | int | float | bool]] = Field(
        default_factory=dict, description="Options per provider, e.g. {cuda = {device_id = 0}}.")
    edge: bool = Field(False, description="Edge profile: no thread spinning (bench_model also forces batch 1 and "
                       "1 thread).")
    strict: bool = Field(False, description="Fail when a requested provider is unavailable here, or when it leaves "
                         "any node to the CPU provider (checked before a model is timed).")
    max_samples_kept: int = Field(2000, ge=10, description="Raw samples kept per row (evenly subsampled): enough "
                                  "for Mann-Whitney, small JSON.")
    seed: int = Field(0, ge=0, description="Seed of generated inputs, so two runs feed the same data.")
    reference: bool = Field(True, description="Interleave a fixed reference workload (CPU-side providers) and "
                            "report `score` (compress.bench.stats.gate_score).")
    block_seconds: float = Field(0.05, gt=0, description="Model time per block between reference blocks.")
    reference_block_seconds: float = Field(0.02, gt=0, description="Reference time per block.")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:  # settings made in code: one line naming the field, as for a config key
            from compress.errors import CompressError

            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise CompressError(f"bench settings: {key}: out of range, got {err.get('input')!r} "
                                f"({err['msg']})") from None

    def options_for(self, provider: str) -> dict[str, str]:
        """Provider options for one ORT provider name, whichever way the key was spelled; booleans as ORT wants
        them ('true' / 'false')."""
        from compress.bench.providers import resolve_provider

        for key, opts in (self.provider_options or {}).items():
            if resolve_provider(key) == provider:
                return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in opts.items()}
        return {}

    def with_options(self, provider_options: Mapping[str, Mapping[str, Any]] | None) -> "BenchSettings":
        """These settings with `provider_options` (a [benchmark] section's) when given."""
        return self.model_copy(update={"provider_options": dict(provider_options)}) if provider_options else self

    def timing(self) -> "BenchSettings":
        """The timing part alone, as the harness's own BenchSettings (a [benchmark] section drops its extra keys)."""
        return BenchSettings(**{k: getattr(self, k) for k in BenchSettings.model_fields})


PICK_PROFILE = BenchSettings(warmup_runs=10, min_runs=50, min_seconds=0.3, repetitions=3, time_budget_seconds=6.0)
"""quantize's pick times the float model and the accepted attempt together (paired): lighter than a benchmark row,
and half its time budget, since a pick needs a ratio past a threshold, not a p50 to a few %."""

STEP_PROFILE = BenchSettings(warmup_runs=10, min_runs=30, min_seconds=0.2, repetitions=3)
"""prune times every step and every bisection probe of a latency target: lighter still."""


class BenchmarkConfig(BenchSettings):
    """[benchmark]: providers, shapes and how hard to measure (BenchSettings' keys, lighter defaults than `compress
    bench`: every model of a run is timed). Unavailable providers are reported, never swapped."""

    min_seconds: float = Field(0.4, ge=0, description="Timed seconds per repetition, at least.")
    repetitions: int = Field(3, ge=1, description="Fresh-session repetitions per row, interleaved across rows.")
    providers: tuple[str, ...] = Field(("cpu",), min_length=1, description="cpu, cuda, tensorrt, openvino, "
                                       "xnnpack, nnapi, coreml, qnn, dml (or full ORT names).")
    batch_sizes: tuple[int, ...] = Field((1, 32), min_length=1, description="Batch sizes timed.")
    threads: tuple[int, ...] = Field((1,), min_length=1, description="intra-op thread counts timed.")
    seq_lengths: tuple[int, ...] = Field((128,), min_length=1, description="Token inputs (text: data): sequence "
                                         "lengths timed (real validation text run together to fill each; rows carry "
                                         "seq_length).")
    models: Literal["all", "final"] = Field("all", description="Models the benchmark stage measures (latency, and "
                                            "the ONNX Runtime figures on the test split): all of the run's, or the "
                                            "final one alone (a search's trials; a CI job that watches one model), "
                                            "the others' rows then blank in the report.")

    def __init__(self, **values: Any) -> None:
        Section.__init__(self, **values)  # a config section: pydantic's keyed errors (config.py words them)

    @field_validator("providers")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            _resolve(name)
        return v

    @field_validator("batch_sizes", "threads", "seq_lengths")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(n < 1 for n in v):
            raise ValueError(f"every value must be >= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _options_for_requested(self) -> "BenchmarkConfig":
        requested = {_resolve(p) for p in self.providers}
        for key in self.provider_options:
            try:
                name = _resolve(key)
            except ValueError as exc:
                raise ValueError(f"provider_options: {exc}") from None
            if name not in requested:
                raise ValueError(f"provider_options: options for {key!r}, which is not in providers "
                                 f"{list(self.providers)}; add it there or remove its options")
        return self

    def settings(self) -> BenchSettings:
        """The harness settings this section asks for."""
        return self.timing()


def _resolve(name: str) -> str:
    """The ORT name of a provider; ValueError (which pydantic turns into a keyed message) for an unknown one."""
    from compress.bench.providers import resolve_provider
    from compress.errors import CompressError

    try:
        return resolve_provider(name)
    except CompressError as exc:
        raise ValueError(str(exc).removeprefix("provider: ")) from None
