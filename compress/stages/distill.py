"""distill: train the student against the teacher (compress.train); optionally a labels-only control. When the
control beats the student on validation, the control ships (same architecture, same cost) and the report says why."""
from __future__ import annotations

from typing import Any

from compress.context import StageContext
from compress.records import ModelRecord, ModelSpec, RunState, StageResult


def run(ctx: StageContext) -> StageResult:
    """Distil `student` (and train `control` when asked), save their weights, settle the final model."""
    import torch

    from compress.families import family_of, spec_options
    from compress.models import count_params, save_weights
    from compress.train import Teacher, train_student
    from compress.train.config import recipe, resolved

    cfg, data, dcfg = ctx.cfg, ctx.data, ctx.cfg.distill
    cut = cfg.student.from_teacher is not None
    family = family_of(cfg.teacher.model if cut else cfg.student.model)
    settings = resolved(dcfg, family, "student")
    kd = any(getattr(dcfg, k) for k in family.kd_keys if k.endswith("_weight"))  # the teacher's hidden states
    teacher_model = ctx.load_torch("teacher") if (cut or kd) else None
    source = Teacher(model=teacher_model) if kd else ctx.teacher()
    reference = str(ctx.run_dir / ctx.state.teacher_outputs)
    records, artifacts = [], []
    info: dict[str, Any] = {"teacher_outputs": source.mode, "settings": recipe(settings)}
    for name, teacher in [("student", source)] + ([("control", None)] if dcfg.control else []):
        torch.manual_seed(cfg.pipeline.seed)  # same initialisation for student and control
        if cut:
            model, spec, kept = family.cut(teacher_model, ctx.models["teacher"].spec, cfg.student,
                                           ctx.origin("student"))
        else:
            spec, kept = ModelSpec(cfg.student.model, dict(cfg.student.kwargs), spec_options(cfg, cfg.student)), None
            model = family.build(spec, data=data, base_dir=cfg.base_dir, origin=ctx.origin("student"))
        record = ModelRecord(name=name, role=name, spec=spec, origin=ctx.origin("student"))
        info[name] = train_student(model, data, settings, task=cfg.data.task, spec=spec.model, reference=reference,
                                   teacher=teacher, seed=cfg.pipeline.seed, batch_size=cfg.data.batch_size,
                                   origin=ctx.origin("distill"), desc=name, base_dir=str(cfg.base_dir),
                                   evaluate=cfg.evaluate, kept=kept, progress=ctx.progress,
                                   launch=ctx.launch(record, "student"))
        if kept is not None:
            info[name]["kept_layers"] = kept
        path = ctx.stage_dir / f"{name}.safetensors"
        save_weights(model, path)
        artifacts.append(ctx.rel(path))
        figures = info[name]["val"]
        records.append(record.but(torch=ctx.rel(path), params=count_params(model),
                                  accuracy_torch=figures.get("accuracy"), metrics_torch=figures))
    final, why = _pick(ctx, records)
    return StageResult(artifacts=tuple(artifacts), models=tuple(records), state=RunState(final=final,
                                                                                         final_reason=why), info=info)


def _pick(ctx: StageContext, records: list[ModelRecord]) -> tuple[str, str | None]:
    """The student, unless the labels-only control beat it on validation: then the control (same architecture and
    cost), with one line naming the teacher's own figure against the control's."""
    by_name = {r.name: r for r in records}
    if "control" not in by_name:
        return "student", None
    metric = ctx.evaluation.primary
    s, c = (by_name[n].metrics_torch[metric.name] for n in ("student", "control"))
    if not metric.better(c, s):
        return "student", None
    t = (ctx.models["teacher"].metrics_torch or {}).get(metric.name)
    if ctx.evaluation.user is None and ctx.evaluation.task.name != "classification":
        t = None  # the task's figure is agreement with the teacher's own outputs: the teacher's is 1 by definition
    shown = _shown(metric.name, c, s)
    why = (f"control: the labels-only control beat the distilled student on validation {metric.name} "
           f"({shown(c)} vs {shown(s)}), so it ships (same architecture, same cost)")
    if t is not None and not metric.better(t, c):
        why += (f"; the teacher's own {metric.name} is {shown(t)}, no better than the control's: a teacher no better "
                "than the control has nothing to teach: train it longer or bigger")
    else:
        knobs = [k for k in ("temperature", "alpha") if k in ctx.evaluation.task.reads]
        why += (f"; the teacher ({shown(t)}) is better than both" if t is not None else "") + f": try {_advice(knobs)}"
    return "control", why


def _shown(name: str, *values: float):
    """How a metric's values print in one line: accuracy as a percentage with 2 decimals, others with 4; more where
    the values differ only further on (a control that won by 0.00001 must not read '0.8188 vs 0.8188')."""
    scale, suffix = (100, "%") if name == "accuracy" else (1, "")
    digits = 2 if suffix else 4
    while digits < 8 and len({f"{scale * v:.{digits}f}" for v in values}) < len(set(values)):
        digits += 1
    return lambda v: f"{scale * v:.{digits}f}{suffix}"


def _advice(knobs: list[str]) -> str:
    """'another temperature, alpha or more epochs': what [distill] offers this task to try."""
    return f"another {', '.join(knobs)} or more epochs" if knobs else "more epochs"
