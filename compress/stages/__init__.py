"""The stage registry: every stage, in pipeline order, with the config it reads and when it runs.

This is the one place the list of stages is written. The runner takes the order from it, the cache key of each stage
from `reads` (plus the key of the stage before, so a change re-runs that stage and everything after it), and the
config's `stage_names()` from `enabled`. A stage module holds `run(ctx) -> StageResult` and nothing else: its
algorithm lives in a package named by concern (compress.train, compress.prune, compress.onnx, ...), and its config
section's class lives beside that algorithm, so the CLI can call the same function without the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from compress.config import PipelineConfig


def _always(cfg: "PipelineConfig") -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One pipeline stage."""

    module: str
    """Module that holds `run(ctx)`."""
    reads: tuple[str, ...]
    """Config sections ('prune'), single keys ('export.opset') or a list key's one value ('benchmark.seq_lengths[0]')
    whose values decide the stage's output."""
    enabled: Callable[["PipelineConfig"], bool] = _always
    """Whether this pipeline runs the stage (optional sections switch theirs on by being present)."""
    files: Callable[["PipelineConfig"], dict[str, Any]] | None = None
    """Input files beyond the config (a checkpoint, the user's model code), as digests for the cache key."""
    trains: bool = False
    """It trains models (in torchrun workers under --nproc/--nnodes); machines other than node 0 run only these."""

    def run(self, ctx: Any) -> Any:
        import importlib

        return importlib.import_module(self.module).run(ctx)


def _user_code(cfg: "PipelineConfig") -> dict[str, Any]:
    """Digests of the user's own metric and loss modules beside the TOML (editing them re-runs what used them)."""
    from compress.cache import source_digest

    code = {}
    if cfg.evaluate is not None:
        code["metric"] = source_digest(cfg.base_dir, cfg.evaluate.metric)
    if cfg.distill.loss and ":" in cfg.distill.loss:
        code["loss"] = source_digest(cfg.base_dir, cfg.distill.loss)
    return code


def _teacher_files(cfg: "PipelineConfig") -> dict[str, Any]:
    from compress.cache import file_sha256
    from compress.families import family_of

    return {"checkpoint": file_sha256(cfg.resolve(cfg.teacher.checkpoint)) if cfg.teacher.checkpoint else None,
            "code": family_of(cfg.teacher.model).digest(cfg.teacher.model, cfg.base_dir), **_user_code(cfg)}


def _student_files(cfg: "PipelineConfig") -> dict[str, Any]:
    from compress.families import family_of

    spec = cfg.student.model or cfg.teacher.model
    return {"code": family_of(spec).digest(spec, cfg.base_dir), **_user_code(cfg)}


STAGES: dict[str, Stage] = {
    # distill.attention_weight: attention KD makes the hf: teacher use eager attention (outputs differ in last bits);
    # distill.loss is the tensors task's hard loss, which [teacher.train] trains with too
    "teacher": Stage("compress.stages.teacher", reads=("teacher", "distill.attention_weight", "distill.loss",
                                                       "evaluate"), files=_teacher_files, trains=True),
    "distill": Stage("compress.stages.distill", reads=("student", "distill", "evaluate"), files=_student_files,
                     trains=True),
    # prune exports each step to time it in ONNX Runtime, at the export settings
    "prune": Stage("compress.stages.prune", reads=("prune", "distill", "evaluate", "export.opset", "export.exporter"),
                   enabled=lambda cfg: cfg.prune is not None, files=_user_code, trains=True),
    "export": Stage("compress.stages.export", reads=("export.opset", "export.exporter", "export.parity_atol",
                                                      "export.parity_rtol", "export.optimize",
                                                      "benchmark.seq_lengths[0]")),
    # the pick between float and quantized is timed on the benchmark's providers, batch sizes and threads
    "quantize": Stage("compress.stages.quantize", reads=("quantize", "evaluate", "benchmark.providers",
                                                          "benchmark.batch_sizes", "benchmark.threads",
                                                          "benchmark.provider_options", "benchmark.seq_lengths[0]",
                                                          # QAT trains the NPU's own QDQ graph at its width
                                                          "export.edge_targets", "export.qnn_activation_type"),
                      enabled=lambda cfg: cfg.quantize is not None, files=_user_code),
    "benchmark": Stage("compress.stages.benchmark", reads=("benchmark", "evaluate"), files=_user_code),
    "edge": Stage("compress.stages.edge", reads=("export", "quantize.outlier_ratio"),
                  enabled=lambda cfg: cfg.export.ort_format),
}


def stage_names(cfg: "PipelineConfig") -> list[str]:
    """The stages this pipeline runs, in order."""
    return [name for name, stage in STAGES.items() if stage.enabled(cfg)]


def section_inputs(cfg: "PipelineConfig", name: str) -> dict[str, Any]:
    """What stage `name`'s output depends on besides earlier stages: the config it reads and its input files."""
    stage = STAGES[name]
    values: dict[str, Any] = {}
    for path in stage.reads:
        section, _, key = path.partition(".")
        key, _, index = key.removesuffix("]").partition("[")  # 'benchmark.seq_lengths[0]': its first value only
        obj = getattr(cfg, section)
        dumped = obj.model_dump(mode="json") if obj is not None else None
        value = dumped[key] if key and dumped is not None else dumped
        values[path] = (value[int(index)] if len(value) > int(index) else None) if index and value else value
    if stage.files is not None:
        values["files"] = stage.files(cfg)
    return values
