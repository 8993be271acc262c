"""What a stage sees: the config, the run directory, the data, and the typed records of earlier stages."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from compress.records import ModelRecord, RunState

if TYPE_CHECKING:
    from compress.config import PipelineConfig
    from compress.data import DataBundle


@dataclass(frozen=True)
class StageContext:
    """Inputs of one stage. Stages return a StageResult; they never change the context."""

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
        """Rebuild the named model from its record and load its weights (pruned shapes included)."""
        from compress.models import build_model, load_weights

        rec = self.models[name]
        model = build_model(rec.spec.model, dict(rec.spec.kwargs), input_shape=self.data.input_shape,
                            num_classes=self.data.num_classes, base_dir=self.cfg.base_dir, origin=rec.origin)
        path = self.run_dir / rec.torch
        if rec.pruned:
            from compress.prune.weights import load_pruned

            return load_pruned(model, path, example_input=self.data.example(2)).eval()
        load_weights(model, path, rec.origin)
        return model.eval()

    def launch(self, model: str, kwargs: Mapping[str, Any], key: str, *, pruned: bool = False) -> Any:
        """Where a training run of this stage goes: a compress.dist.launch.Launch (torchrun workers rebuild the
        model from `model`/`kwargs`, errors name config key `key`), or None to train in this process."""
        if self.dist is None or not self.dist.distributed:
            return None
        from compress.dist.launch import Launch

        rec = self.models.get("teacher")
        teacher = None if rec is None or rec.torch is None else {
            "model": rec.spec.model, "kwargs": dict(rec.spec.kwargs), "origin": rec.origin,
            "weights": str(self.run_dir / rec.torch)}
        return Launch(settings=self.dist, cfg=self.cfg, fingerprint=self.data.fingerprint, workdir=self.stage_dir,
                      model=model, kwargs=dict(kwargs), origin=self.origin(key), pruned=pruned, teacher=teacher)

    def teacher_logits(self) -> Any:
        """The teacher's logits on the training split (one row per example, by index), memory-mapped from the file
        the teacher stage wrote."""
        import numpy as np

        return np.load(self.run_dir / self.state.teacher_logits, mmap_mode="r")

    def teacher(self) -> Any:
        """The teacher's outputs for distillation: the cached logits, or (with augmentation) the teacher model run on
        each augmented batch (compress.train.teacher_outputs)."""
        from compress.train import teacher_outputs

        return teacher_outputs(self.data, load_logits=self.teacher_logits, load_model=lambda: self.load_torch("teacher"))
