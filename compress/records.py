"""The typed records that pass between stages: one per model, one for the run's state, one per stage's result.

They are frozen: a stage that changes a model returns a new record (`record.but(...)`), and the runner merges it in.
The JSON form is what the stage cache stores and what report.json is built from, so a field added here is a field
every later run can rely on, and a misspelt one is an AttributeError at once, not a silent `null` in a report.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

Role = Literal["teacher", "student", "control", "pruned", "quantized"]


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model: the config's `model` string and its kwargs."""

    model: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    """Settings the family reads beside the factory's kwargs (hf: pooling, the attention implementation)."""


@dataclass(frozen=True)
class ModelRecord:
    """Everything the pipeline knows about one model. Paths are relative to the run directory."""

    name: str
    role: Role
    spec: ModelSpec
    origin: str
    """The config key that made it ('pipelines/x.toml: student'), so later errors can name it."""
    torch: str | None = None
    """safetensors weights."""
    pruned: bool = False
    """Weights have pruned shapes: rebuild by shrinking the spec's architecture to them."""
    onnx: str | None = None
    params: int | None = None
    bytes: int | None = None
    """Size of the ONNX file."""
    accuracy: float | None = None
    """Accuracy in ONNX Runtime on the test split (the validation split when there is none): the report's figure
    (classification; the same as metrics["accuracy"])."""
    accuracy_val: float | None = None
    """Accuracy in ONNX Runtime on the validation split (what selection and the gates saw)."""
    accuracy_torch: float | None = None
    metrics: Mapping[str, float] | None = None
    """Every figure of the task (and the user's metric) in ONNX Runtime on the test split (else validation)."""
    metrics_val: Mapping[str, float] | None = None
    """The same on the validation split."""
    metrics_torch: Mapping[str, float] | None = None
    """The same in torch on the validation split, when the model was trained or loaded (what selection saw)."""
    parity: Mapping[str, Any] | None = None
    """An exported model: torch vs ONNX Runtime (compress.onnx.parity.compare's result). A quantized model: against
    the float ONNX model it came from ("against"; max_abs_diff, top1_agreement, samples; no tolerance applies)."""
    latency: tuple[Mapping[str, Any], ...] = ()
    """One harness row per (provider, batch, threads)."""
    unavailable: tuple[Mapping[str, str], ...] = ()
    """Providers asked for that could not run here: {"provider", "reason"}."""
    quantization: Mapping[str, Any] | None = None
    note: str | None = None

    def but(self, **changes: Any) -> "ModelRecord":
        """A copy with `changes` applied (the record is frozen)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "ModelRecord":
        values = dict(obj)
        values["spec"] = ModelSpec(**values["spec"])
        values["latency"] = tuple(values.get("latency", ()))
        values["unavailable"] = tuple(values.get("unavailable", ()))
        return cls(**values)


@dataclass(frozen=True)
class RunState:
    """What the run has settled so far. A stage returns only the fields it sets; None means 'unchanged'."""

    final: str | None = None
    """Name of the model to deploy."""
    final_reason: str | None = None
    gate_failure: str | None = None
    """Set when a gate failed (exit 1 after the report is written): 'quantize.max_accuracy_drop: ...'."""
    teacher_outputs: str | None = None
    """safetensors file of the teacher's outputs, every output on every split it was run on (compress.train.outputs;
    no training split when augmentation makes the teacher run on each batch)."""
    edge: Mapping[str, Any] | None = None
    """The edge stage's section of the report."""
    qnn_qdq: Mapping[str, str] | None = None
    """QDQ models made for the QNN target by the quantize stage (mode = 'qat'): {"ptq": path, "qat": path, "used":
    the one the gate preferred}, which the edge stage places on HTP instead of quantizing the final model."""
    qnn_rewrites: Mapping[str, Any] | None = None
    """The float rewrites those graphs were made with (compress.edge.ranges.for_htp's entries), for the edge stage's
    summary, which is handed the finished graphs."""

    def merged(self, update: "RunState") -> "RunState":
        """This state with every field that `update` sets."""
        changes = {f.name: getattr(update, f.name) for f in dataclasses.fields(update)
                   if getattr(update, f.name) is not None}
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in plain(dataclasses.asdict(self)).items() if v is not None}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "RunState":
        return cls(**obj)


@dataclass(frozen=True)
class StageResult:
    """A stage's output: the files it wrote, the model records it adds or updates, state changes, report details."""

    artifacts: tuple[str, ...] = ()
    """Paths relative to the run directory; the cache hashes each one."""
    models: tuple[ModelRecord, ...] = ()
    state: RunState = RunState()
    info: Mapping[str, Any] = field(default_factory=dict)
    """Stage details for the report (histories, attempts, steps); a 'markdown' list of lines goes in report.md."""

    def to_json(self) -> dict[str, Any]:
        return {"artifacts": list(self.artifacts), "models": [m.to_json() for m in self.models],
                "state": self.state.to_json(), "info": plain(self.info)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "StageResult":
        return cls(artifacts=tuple(obj["artifacts"]), models=tuple(ModelRecord.from_json(m) for m in obj["models"]),
                   state=RunState.from_json(obj["state"]), info=obj["info"])


def plain(value: Any) -> Any:
    """JSON-able copy: tuples become lists, mappings dicts."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
