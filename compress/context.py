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
