"""distill: train the student against the teacher (compress.train); optionally a labels-only control."""
from __future__ import annotations

from compress.context import StageContext
from compress.records import ModelRecord, ModelSpec, RunState, StageResult


def run(ctx: StageContext) -> StageResult:
    """Distil `student` (and train `control` when asked) and save their weights."""
    from compress.hf.pipeline import is_text

    if is_text(ctx.data):  # hf: models on text: keyword token inputs, task-aware figures
        from compress.hf.pipeline import distill_stage

        return distill_stage(ctx)
    import torch

    from compress.models import build_model, count_params, save_weights
    from compress.train import evaluate, train_student

    cfg, data, dcfg = ctx.cfg, ctx.data, ctx.cfg.distill
    teacher = ctx.teacher()
    records, artifacts, info = [], [], {"teacher_outputs": teacher.mode}
    runs = [("student", teacher)] + ([("control", None)] if dcfg.control else [])
    for name, source in runs:
        torch.manual_seed(cfg.pipeline.seed)  # same initialisation for student and control
        model = build_model(cfg.student.model, cfg.student.kwargs, input_shape=data.input_shape,
                            num_classes=data.num_classes, base_dir=cfg.base_dir, origin=ctx.origin("student"))
        info[name] = train_student(model, data, dcfg, teacher=source, seed=cfg.pipeline.seed,
                                   batch_size=cfg.data.batch_size, origin=ctx.origin("distill"), desc=name,
                                   progress=ctx.progress, launch=ctx.launch(cfg.student.model, cfg.student.kwargs,
                                                                            "student"))
        path = ctx.stage_dir / f"{name}.safetensors"
        save_weights(model, path)
        artifacts.append(ctx.rel(path))
        records.append(ModelRecord(name=name, role=name, spec=ModelSpec(cfg.student.model, cfg.student.kwargs),
                                   origin=ctx.origin("student"), torch=ctx.rel(path), params=count_params(model),
                                   accuracy_torch=evaluate(model, data.val, workers=data.workers)))
    return StageResult(artifacts=tuple(artifacts), models=tuple(records), state=RunState(final="student"), info=info)
