"""How hard to measure (`TimingProfile`), and the pipeline's [benchmark] section built on it.

One profile type serves the benchmark stage, quantize's float-vs-int8 pick and prune's per-step latency; only the
numbers differ, and those are named here so each caller's choice is visible in one place.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from compress.section import Section


class TimingProfile(Section):
    """Warm-up, run counts and repetitions of one latency measurement (see compress.bench.harness)."""

    warmup_runs: int = Field(20, ge=0, description="Untimed runs on each fresh session.")
    min_runs: int = Field(100, ge=1, description="Timed runs per repetition, at least.")
    min_seconds: float = Field(0.4, ge=0, description="Timed seconds per repetition, at least.")
    repetitions: int = Field(3, ge=1, description="Fresh-session repetitions per row, interleaved across rows.")
    time_budget_seconds: float = Field(12.0, ge=0, description="Seconds per row: a slow model's runs and "
                                       "repetitions are cut to fit (compress/bench/budget.py); 0 = no budget.")

    def settings(self, **extra: Any) -> Any:
        """The harness's BenchSettings for this profile; `extra` sets its other fields (strict, provider_options)."""
        from compress.bench.harness import BenchSettings

        return BenchSettings(warmup_runs=self.warmup_runs, min_runs=self.min_runs, min_seconds=self.min_seconds,
                             repetitions=self.repetitions, max_seconds_per_row=self.time_budget_seconds or None, **extra)


PICK_PROFILE = TimingProfile(warmup_runs=10, min_runs=50, min_seconds=0.3, repetitions=3)
"""quantize's pick times the float model and every accepted attempt: lighter than a benchmark row."""

STEP_PROFILE = TimingProfile(warmup_runs=10, min_runs=30, min_seconds=0.2, repetitions=3)
"""prune times every step and every bisection probe of a latency target: lighter still."""


class BenchmarkConfig(TimingProfile):
    """[benchmark]: providers, shapes and how hard to measure. Unavailable providers are reported, never swapped."""

    providers: tuple[str, ...] = Field(("cpu",), min_length=1, description="cpu, cuda, tensorrt, openvino, "
                                       "xnnpack, nnapi, coreml, qnn, dml (or full ORT names).")
    batch_sizes: tuple[int, ...] = Field((1, 32), min_length=1, description="Batch sizes timed.")
    threads: tuple[int, ...] = Field((1,), min_length=1, description="intra-op thread counts timed.")
    seq_lengths: tuple[int, ...] = Field((128,), min_length=1, description="Text models: sequence lengths timed "
                                         "(real validation text run together to fill each; rows carry "
                                         "seq_length).")
    provider_options: dict[str, dict[str, str | int | float | bool]] = Field(
        default_factory=dict, description="Options per provider in `providers`, e.g. {cuda = {device_id = 0}}.")
    strict: bool = Field(False, description="Fail when a requested provider is unavailable here (checked by "
                         "`compress validate` and before any training), or when it leaves any node to the CPU "
                         "provider (checked before a model is timed).")

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

    @field_validator("provider_options")
    @classmethod
    def _options_for_requested(cls, v: dict[str, dict[str, Any]], info: ValidationInfo) -> dict[str, dict[str, Any]]:
        requested = {_resolve(p) for p in info.data.get("providers", ())}
        for key in v:
            if _resolve(key) not in requested:
                raise ValueError(f"options for {key!r}, which is not in providers "
                                 f"{list(info.data.get('providers', ()))}; add it there or remove its options")
        return v

    def settings(self, **extra: Any) -> Any:
        options = {k: {kk: str(vv).lower() if isinstance(vv, bool) else str(vv) for kk, vv in o.items()}
                   for k, o in self.provider_options.items()}
        return super().settings(strict=self.strict, provider_options=options, **extra)


def _resolve(name: str) -> str:
    """The ORT name of a provider; ValueError (which pydantic turns into a keyed message) for an unknown one."""
    from compress.bench.providers import resolve_provider
    from compress.errors import CompressError

    try:
        return resolve_provider(name)
    except CompressError as exc:
        raise ValueError(str(exc).removeprefix("provider: ")) from None
