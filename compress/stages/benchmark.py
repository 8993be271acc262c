"""benchmark: every ONNX model on every requested provider, through the one harness (compress.bench.harness)."""
from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from compress.context import StageContext, StageResult
from compress.section import Section


class BenchmarkConfig(Section):
    """[benchmark]: providers, shapes and how hard to measure. Unavailable providers are reported, never swapped."""

    providers: list[str] = Field(default_factory=lambda: ["cpu"], min_length=1, description="cpu, cuda, tensorrt, "
                                 "openvino, xnnpack, nnapi, coreml, qnn, dml (or full ORT names).")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32], min_length=1, description="Batch sizes timed.")
    threads: list[int] = Field(default_factory=lambda: [1], min_length=1, description="intra-op thread counts timed.")
    warmup_runs: int = Field(20, ge=0, description="Untimed runs on each fresh session.")
    min_runs: int = Field(100, ge=1, description="Timed runs per repetition, at least.")
    min_seconds: float = Field(0.4, ge=0, description="Timed seconds per repetition, at least.")
    repetitions: int = Field(3, ge=1, description="Fresh-session repetitions per row, interleaved across rows.")
    provider_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Options per provider, "
                                                       "e.g. {cuda = {device_id = 0}}.")
    strict: bool = Field(False, description="Fail the run when a requested provider is unavailable here.")

    @field_validator("providers")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from compress.bench.providers import resolve_provider

        for name in v:
            try:
                resolve_provider(name)
            except Exception as exc:
                raise ValueError(str(exc).removeprefix("provider: ")) from None
        return v

    @field_validator("batch_sizes", "threads")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError(f"every value must be >= 1, got {v}")
        return v

    def settings(self):
        from compress.bench.harness import BenchSettings

        return BenchSettings(warmup_runs=self.warmup_runs, min_runs=self.min_runs, min_seconds=self.min_seconds,
                             repetitions=self.repetitions, strict=self.strict,
                             provider_options={k: {kk: str(vv) for kk, vv in o.items()}
                                               for k, o in self.provider_options.items()})


def run(ctx: StageContext) -> StageResult:
    """Accuracy in ORT, file size and latency rows for every model that has an ONNX file."""
    from compress.bench.harness import accuracy, bench_model

    bcfg = ctx.cfg.benchmark
    x_val, y_val = ctx.data.x_val.numpy(), ctx.data.y_val.numpy()

    def inputs_for_batch(batch: int) -> dict:
        return {"input": ctx.data.example(batch).numpy()}

    result = StageResult()
    for name, rec in ctx.models.items():
        if "onnx" not in rec:
            continue
        path = ctx.run_dir / rec["onnx"]
        rows = bench_model(path, bcfg.providers, bcfg.batch_sizes, bcfg.threads, settings=bcfg.settings(),
                           inputs_for_batch=inputs_for_batch, progress=ctx.progress)
        result.models[name] = {**rec, "bytes": path.stat().st_size, "accuracy": accuracy(path, x_val, y_val),
                               "latency": rows["latency"], "unavailable": rows["unavailable"]}
    return result
