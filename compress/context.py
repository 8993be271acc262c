"""What a stage sees: the config, the run directory, the data, the typed records of earlier stages, and the few
questions every stage asks of them (rebuild a model, the teacher's outputs, a model's figures), answered the same way
for every task, input kind and model family."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from compress.records import ModelRecord, RunState

if TYPE_CHECKING:
    from compress.config import PipelineConfig
    from compress.data import DataBundle
    from compress.tasks import Evaluation


@dataclass(frozen=True)
class StageContext:
    """Inputs of one stage. Stages return a StageResult; they never change the context (what it caches aside: its
    cached properties, and compress.qat's QAT reference, derived from what it holds)."""

    cfg: "PipelineConfig"
    run_dir: Path
    stage: str
    models: Mapping[str, ModelRecord]
    state: RunState
    data: "DataBundle"
    progress: bool = True
    dist: Any = None
    """compress.dist.settings.DistSettings when training goes to torchrun workers (--nproc/--nnodes), else None."""

    @property
    def stage_dir(self) -> Path:
        d = self.run_dir / self.stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.run_dir))

    def origin(self, key: str) -> str:
        """'pipelines/x.toml: distill': what errors name so the user knows which key to change."""
        return f"{self.cfg.source_path}: {key}"

    @property
    def final(self) -> ModelRecord:
        """The model earlier stages settled on (the distilled student until prune or quantize says otherwise)."""
        return self.models[self.state.final or "student"]

    def load_torch(self, name: str) -> Any:
        """Rebuild the named model from its record (compress.families.rebuild) with the run's weights."""
        from compress.families import rebuild

        return rebuild(self.models[name], data=self.data, base_dir=self.cfg.base_dir, run_dir=self.run_dir)

    @functools.cached_property
    def evaluation(self) -> "Evaluation":
        """How every model of this run is judged: the task's figures and the user's metric."""
        from compress.tasks import evaluation_for

        evaluation = evaluation_for(self.cfg.data.task, self.cfg.evaluate, base_dir=self.cfg.base_dir,
                                    origin=self.origin("evaluate"))
        if evaluation.user is not None and evaluation.user.primary_name is None and self.state.teacher_outputs:
            reference = self.teacher_outputs["val"]  # the user's first figure is primary: learn its name once
            evaluation(reference, self.targets("val"), reference)
        return evaluation

    @functools.cached_property
    def teacher_outputs(self) -> dict[str, dict[str, Any]]:
        """{split: {output name: memory-mapped rows}} from the file the teacher stage wrote."""
        from compress.train.outputs import open_outputs

        return open_outputs(self.run_dir / self.state.teacher_outputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The run's output names (the teacher's): ONNX output names, keys of every outputs mapping."""
        return tuple(self.teacher_outputs["val"])

    def targets(self, split: str) -> Any:
        return _targets(self.data, split)

    def figures_torch(self, model: Any, split: str = "val") -> dict[str, float]:
        """The model's figures in torch on `split` (the teacher's outputs on it as the reference)."""
        from compress.train import predict

        got = predict(model, self.data.split(split), inputs=self.data.inputs, names=self.output_names,
                      workers=self.data.workers)
        return self.evaluation(got, self.targets(split), self.teacher_outputs[split])

    def figures_onnx(self, path: Path, split: str = "val", config: dict[str, str] | None = None) -> dict[str, float]:
        """The ONNX model's figures in ONNX Runtime on `split` (`config`: session config entries)."""
        from compress.onnx.run import outputs_on

        got = outputs_on(path, self.data, split, names=self.output_names, config=config)
        return self.evaluation(got, self.targets(split), self.teacher_outputs[split])

    def launch(self, record: ModelRecord, key: str) -> Any:
        """Where a training run of this stage goes: a compress.dist.launch.Launch (torchrun workers rebuild the
        model from `record` and the weights it has when the call is made; errors name config key `key`), or None
        to train in this process."""
        if self.dist is None or not self.dist.distributed:
            return None
        from compress.dist.launch import Launch

        teacher = self.models.get("teacher")
        return Launch(settings=self.dist, cfg=self.cfg, fingerprint=self.data.fingerprint, workdir=self.stage_dir,
                      record=record.to_json(), origin=self.origin(key),
                      teacher=None if teacher is None else {**teacher.to_json(),
                                                            "weights": str(self.run_dir / teacher.torch)})

    def teacher(self) -> Any:
        """The teacher's outputs for distillation: its cached training rows, or (with augmentation) the teacher model
        run on each batch."""
        from compress.train import Teacher

        if self.data.augment or "train" not in self.teacher_outputs:
            return Teacher(model=self.load_torch("teacher"))
        return Teacher(outputs=self.teacher_outputs["train"], source=str(self.run_dir / self.state.teacher_outputs))


def _targets(data: Any, split: str) -> Any:
    cache = data.__dict__.setdefault("_targets_cache", {})
    if split not in cache:
        cache[split] = data.targets(split)
    return cache[split]
