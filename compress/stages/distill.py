"""distill: train the student against the teacher (Hinton soft targets + hard labels); optionally a control."""
from __future__ import annotations

from pydantic import Field

from compress.context import StageContext, StageResult
from compress.training import TrainConfig


class DistillConfig(TrainConfig):
    """[distill]: the student's training. Optimiser/schedule keys are those of [teacher.train]."""

    epochs: int = Field(30, ge=1, le=100_000, description="Maximum epochs (early stopping on validation accuracy).")
    lr: float = Field(1e-2, gt=0, le=10, description="Peak learning rate; small students like a higher one.")
    patience: int = Field(30, ge=1, description="Epochs without a better validation accuracy before stopping.")
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature T of the soft targets (KL * T^2).")
    alpha: float = Field(0.3, ge=0, le=1, description="Weight of the hard-label loss; 1 - alpha weighs the teacher.")
    control: bool = Field(False, description="Also train the same student on labels only, with the same budget and "
                          "seed, so the report shows whether the teacher helped.")


def run(ctx: StageContext) -> StageResult:
    """Distil `student` (and train `control` when asked) and save their weights."""
    import torch

    from compress.models import build_model, count_params, save_weights
    from compress.training import evaluate, fit

    cfg, data, dcfg = ctx.cfg, ctx.data, ctx.cfg.distill
    teacher_logits = ctx.teacher_logits()
    result = StageResult()
    runs = [("student", teacher_logits)] + ([("control", None)] if dcfg.control else [])
    for name, logits in runs:
        torch.manual_seed(cfg.pipeline.seed)  # same initialisation for student and control
        model = build_model(cfg.student.model, cfg.student.kwargs, input_shape=data.input_shape,
                            num_classes=data.num_classes, base_dir=cfg.base_dir, origin=ctx.origin("student"))
        history = fit(model, (data.x_train, data.y_train), (data.x_val, data.y_val), dcfg, seed=cfg.pipeline.seed,
                      batch_size=cfg.data.batch_size, teacher_logits=logits, temperature=dcfg.temperature,
                      alpha=dcfg.alpha if logits is not None else 1.0, desc=name, progress=ctx.progress,
                      origin=ctx.origin("distill.lr"))
        path = ctx.stage_dir / f"{name}.safetensors"
        save_weights(model, path)
        result.artifacts.append(ctx.rel(path))
        result.models[name] = {
            "name": name, "role": name, "torch": ctx.rel(path), "origin": ctx.origin("student"),
            "spec": {"model": cfg.student.model, "kwargs": cfg.student.kwargs},
            "params": count_params(model), "accuracy_torch": evaluate(model, data.x_val, data.y_val),
        }
        result.info[name] = history
    result.state["final"] = "student"
    return result
