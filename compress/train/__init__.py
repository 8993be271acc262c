"""Training: one loop (`fit`), and the two entries every stage and torchrun worker calls.

`train_student` (distillation, the labels-only control, prune recovery) and `train_teacher` ([teacher.train]) build
the task's loss, the family's KD terms and the validation figures from plain, encodable arguments, so the same
call runs here or, with `launch`, in torchrun workers with DDP.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.train.config import DistillConfig, TrainConfig
from compress.train.objective import blame_for
from compress.train.loop import (Objective, Teacher, as_loader, evaluate, fit, predict, predict_logits,
                                 warn_if_bf16_is_slow)
from compress.tasks.classification import kd_loss

if TYPE_CHECKING:
    from compress.data import DataBundle

__all__ = ["DistillConfig", "Objective", "Teacher", "TrainConfig", "as_loader", "evaluate", "fit", "kd_loss",
           "predict", "predict_logits", "train_student", "train_teacher"]


def train_student(model: Any, data: "DataBundle", settings: Any, *, task: str, spec: str, reference: str,
                  teacher: Teacher | None, seed: int, batch_size: int, origin: str, desc: str, base_dir: str,
                  evaluate: Any = None, kept: list | None = None, progress: bool = True, epochs: int | None = None,
                  patience: int | None = None, warmup_epochs: float | None = None, launch: Any = None) -> dict:
    """Train `model` in place with the resolved [distill] `settings` on `data`'s train split; return fit's history.

    With a `teacher` (cached outputs per training example, or the teacher model run on each batch) the loss is the
    task's distillation loss (plus the family's intermediate-layer terms when the teacher runs); with None it is the
    labels-only control. `reference` is the teacher outputs file (validation figures compare with it); `evaluate` the
    [evaluate] section. `epochs`, `patience` and `warmup_epochs` override the settings for short runs such as prune
    recovery. With `launch` (compress.dist.launch.Launch) the same call runs in torchrun workers with DDP and
    `model` ends with their weights.
    """
    if launch is not None:
        return launch.call("compress.train:train_student", model, data, settings, task=task, spec=spec,
                           reference=reference, teacher=teacher, seed=seed, batch_size=batch_size, origin=origin,
                           desc=desc, base_dir=base_dir, evaluate=evaluate, kept=kept, progress=progress,
                           epochs=epochs, patience=patience, warmup_epochs=warmup_epochs)
    from compress.families import family_of
    from compress.tasks import evaluation_for
    from compress.train.outputs import open_outputs

    overrides = {k: v for k, v in {"epochs": epochs, "patience": patience, "warmup_epochs": warmup_epochs}.items()
                 if v is not None}
    settings = settings.model_copy(update=overrides) if overrides else settings
    evaluation = evaluation_for(task, evaluate, base_dir=base_dir, origin=origin.rsplit(":", 1)[0] + ": evaluate")
    outputs = open_outputs(reference)
    names = tuple(outputs["val"])
    loss = evaluation.task.make_loss(settings, teacher=teacher is not None, labels=data.has_targets,
                                     train_reference=outputs.get("train"), base_dir=base_dir, seed=seed)
    family = family_of(spec)
    kd = family.kd_terms(settings, model, teacher.model, kept, origin) if teacher is not None and \
        teacher.model is not None else None
    frozen = _embeddings(family, model, settings, origin, spec)
    blame = blame_for(origin, "student", spec, evaluation.task, settings.loss)
    objective = Objective(loss, names, teacher=teacher, kd_terms=kd, targets=data.has_targets, blame=blame)
    targets = data.targets("val")

    def figures(m: Any) -> dict:
        device = str(next(m.parameters()).device)
        got = predict(m, data.val, inputs=data.inputs, names=names, workers=data.workers, device=device)
        return evaluation(got, targets, outputs["val"])

    warn_if_bf16_is_slow(settings.precision, f"{origin}.precision")
    history = fit(model, data.train, None, settings, objective=objective, evaluate=figures,
                  primary=lambda: evaluation.primary, seed=seed, batch_size=batch_size, desc=desc, progress=progress,
                  origin=f"{origin}.lr", workers=data.workers, inputs=data.inputs, frozen=frozen)
    if kd is not None:
        history["layer_map"] = list(kd.layer_map)
    return history


def train_teacher(model: Any, data: "DataBundle", settings: Any, *, task: str, spec: str, seed: int, batch_size: int,
                  origin: str, base_dir: str, evaluate: Any = None, hard_loss: str | None = None, desc: str = "teacher",
                  progress: bool = True, launch: Any = None) -> dict:
    """Train the teacher in place on labels ([teacher.train], resolved); return fit's history. The best epoch is
    picked by the user's metric when given, else accuracy (classification), else the validation loss. `origin`
    names the section ('pipelines/x.toml: teacher.train'); `hard_loss` is [distill] loss (the tensors task's loss
    against labels). With `launch`, in torchrun workers as for train_student."""
    if launch is not None:
        return launch.call("compress.train:train_teacher", model, data, settings, task=task, spec=spec, seed=seed,
                           batch_size=batch_size, origin=origin, base_dir=base_dir, evaluate=evaluate,
                           hard_loss=hard_loss, desc=desc, progress=progress)
    from compress.families import family_of
    from compress.tasks import Metric, evaluation_for
    from compress.tasks.base import output_names_of

    import torch

    from compress.data import forward

    evaluation = evaluation_for(task, evaluate, base_dir=base_dir, origin=origin.rsplit(":", 1)[0] + ": evaluate")
    with torch.inference_mode():
        names = output_names_of(forward(model.eval(), data.example(2)), evaluation.task.default_output)
    from types import SimpleNamespace

    keys = SimpleNamespace(temperature=1.0, alpha=1.0, label_smoothing=settings.label_smoothing, loss=hard_loss,
                           output_weights=None, relation_weight=0.0)  # labels only: no teacher terms
    loss = evaluation.task.make_loss(keys, teacher=False, labels=data.has_targets, base_dir=base_dir, seed=seed)
    objective = Objective(loss, names, targets=data.has_targets,
                          blame=blame_for(origin, "teacher", spec, evaluation.task, hard_loss))
    targets = data.targets("val")

    def figures(m: Any) -> dict:
        device = str(next(m.parameters()).device)
        got = predict(m, data.val, inputs=data.inputs, names=names, workers=data.workers, device=device)
        out = evaluation.task.metrics(got, targets, got) if evaluation.task.labels == "required" else {}
        if evaluation.user is not None:
            out.update(evaluation.user(got, targets))
        out["val_loss"] = _loss_on(m, data, objective, device)
        return out

    def primary() -> Any:
        if evaluation.user is not None or evaluation.task.labels == "required":
            return evaluation.primary
        return Metric("val_loss", higher_is_better=False)

    frozen = _embeddings(family_of(spec), model, settings, origin, spec)
    warn_if_bf16_is_slow(settings.precision, f"{origin}.precision")
    return fit(model, data.train, None, settings, objective=objective, evaluate=figures, primary=primary, seed=seed,
               batch_size=batch_size, desc=desc, progress=progress, origin=f"{origin}.lr", workers=data.workers,
               inputs=data.inputs, frozen=frozen)


def _embeddings(family: Any, model: Any, settings: Any, origin: str, spec: str) -> list:
    """The parameters `freeze_embeddings` keeps fixed (none when it is off); a model without any is refused."""
    if not settings.freeze_embeddings:
        return []
    found = family.embedding_parameters(model)
    if not found:
        raise CompressError(f"{origin}.freeze_embeddings: {spec} has no nn.Embedding layers to freeze; remove the "
                            "key, or name parameters in freeze = [...]")
    return found


def _loss_on(model: Any, data: Any, objective: Objective, device: str) -> float:
    """The labels-only loss on the validation split (what a teacher without an accuracy is picked by)."""
    import torch

    from compress.dist.group import to_device

    total, seen = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for index, x, target in data.batches("val"):
            loss = objective(model, index, to_device(x, device), to_device(target, device), device)
            total += float(loss) * len(index)
            seen += len(index)
    return total / max(seen, 1)
