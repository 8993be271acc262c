"""Training: one readable loop (`fit`) and one entry for every student run (`train_student`).

Distillation, prune recovery and every control go through `train_student`, so they all pass the same arguments
and a non-finite loss always names the config key to change.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compress.train.config import DistillConfig, TrainConfig
from compress.train.loop import Teacher, as_loader, evaluate, fit, kd_loss, predict_logits

if TYPE_CHECKING:
    from compress.data import DataBundle

__all__ = ["DistillConfig", "Teacher", "TrainConfig", "as_loader", "evaluate", "fit", "kd_loss", "predict_logits",
           "train_student", "train_teacher"]


def train_student(model: Any, data: "DataBundle", cfg: DistillConfig, *, teacher: "Teacher | None", seed: int,
                  batch_size: int, origin: str, desc: str, progress: bool = True, epochs: int | None = None,
                  patience: int | None = None, warmup_epochs: int | None = None, launch: Any = None) -> dict:
    """Train `model` in place with the [distill] recipe on `data`'s train split; return fit's history.

    With a `teacher` (cached logits per training example, or the teacher model run on each batch) the loss is
    distillation (T, alpha); with None it is the labels-only control (alpha = 1). `epochs`, `patience` and
    `warmup_epochs` override the section's for short runs such as prune recovery. `origin` is the file and section
    ('pipelines/x.toml: distill'); a non-finite loss names its `lr` key. With `launch` (a
    compress.dist.launch.Launch) the same call runs in torchrun workers with DDP and `model` ends with their weights.
    """
    if launch is not None:
        return launch.call("compress.train:train_student", model, data, cfg, teacher=teacher, seed=seed,
                           batch_size=batch_size, origin=origin, desc=desc, progress=progress, epochs=epochs,
                           patience=patience, warmup_epochs=warmup_epochs)
    overrides = {k: v for k, v in {"epochs": epochs, "patience": patience, "warmup_epochs": warmup_epochs}.items()
                 if v is not None}
    settings = cfg.model_copy(update=overrides) if overrides else cfg
    return fit(model, data.train, data.val, settings, seed=seed, batch_size=batch_size, teacher=teacher,
               temperature=cfg.temperature, alpha=cfg.alpha if teacher is not None else 1.0, desc=desc,
               progress=progress, origin=f"{origin}.lr", workers=data.workers)


def train_teacher(model: Any, data: "DataBundle", cfg: TrainConfig, *, seed: int, batch_size: int, origin: str,
                  desc: str = "teacher", progress: bool = True, launch: Any = None) -> dict:
    """Train the teacher in place on labels ([teacher.train]); return fit's history. `origin` names the `lr` key
    ('pipelines/x.toml: teacher.train.lr'). With `launch`, in torchrun workers as for train_student."""
    if launch is not None:
        return launch.call("compress.train:train_teacher", model, data, cfg, seed=seed, batch_size=batch_size,
                           origin=origin, desc=desc, progress=progress)
    return fit(model, data.train, data.val, cfg, seed=seed, batch_size=batch_size, desc=desc, progress=progress,
               origin=origin, workers=data.workers)


def teacher_outputs(data: "DataBundle", *, load_logits: Any, load_model: Any) -> Teacher:
    """How distillation gets the teacher's outputs: with augmentation, the teacher model (`load_model()`) runs on
    the same augmented batch as the student (cached outputs would belong to other pixels); without, its cached
    per-example logits (`load_logits()`) are looked up by index."""
    if data.augment:
        return Teacher(model=load_model())
    return Teacher(logits=load_logits())
