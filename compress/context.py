"""What a stage sees (StageContext) and what it hands back (StageResult). The runner owns both."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """A stage's output. `models` holds JSON-able records keyed by model name; they are merged into the run's."""

    artifacts: list[str] = field(default_factory=list)  # paths relative to the run directory
    models: dict[str, dict] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # e.g. "final", "gate_failure"
    info: dict[str, Any] = field(default_factory=dict)  # stage details for the report (histories, attempts, steps)

    def to_json(self) -> dict:
        return {"artifacts": self.artifacts, "models": self.models, "state": self.state, "info": self.info}

    @classmethod
    def from_json(cls, obj: dict) -> "StageResult":
        return cls(**{k: obj.get(k, v) for k, v in cls().to_json().items()})


@dataclass
class StageContext:
    """Inputs of one stage: the config, the run directory, the data and the model records so far."""

    cfg: Any  # PipelineConfig
    run_dir: Path
    stage: str
    models: dict[str, dict]
    state: dict[str, Any]
    data: Any  # DataBundle
    progress: bool = True

    @property
    def stage_dir(self) -> Path:
        d = self.run_dir / self.stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.run_dir))

    def origin(self, key: str) -> str:
        return f"{self.cfg.source_path}: {key}"

    def load_torch(self, name: str):
        """Rebuild the named model from its record and load its weights."""
        from compress.models import build_model, load_weights

        rec = self.models[name]
        model = build_model(rec["spec"]["model"], rec["spec"]["kwargs"], input_shape=self.data.input_shape,
                            num_classes=self.data.num_classes, base_dir=self.cfg.base_dir, origin=rec["origin"])
        path = self.run_dir / rec["torch"]
        if rec.get("pruned"):
            from compress.stages.prune import load_pruned

            return load_pruned(model, path, example_input=self.data.example(2)).eval()
        load_weights(model, path, rec["origin"])
        model.eval()
        return model

    def teacher_logits(self):
        """The teacher's logits on the training set, computed once by the teacher stage."""
        from safetensors.torch import load_file

        return load_file(str(self.run_dir / self.state["teacher_logits"]))["logits"]
