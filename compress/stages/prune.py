"""prune: remove channels of the student for real (compress.prune), recovering by distillation after each step;
optionally a same-size control trained from scratch."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from compress.context import StageContext
from compress.records import ModelRecord, RunState, StageResult

log = logging.getLogger("compress")


def run(ctx: StageContext) -> StageResult:
    """Prune the current final model; latency per step is ONNX Runtime's at batch `latency_batch`, 1 thread."""
    from compress.families import family_of
    from compress.prune import CONTROL_NAME, CONTROL_RECIPES, MAGNITUDE_NOTE, prune, train_control
    from compress.prune.control import collapse_warning
    from compress.prune.mechanics import nonzero_params
    from compress.train import train_student
    from compress.train.config import resolved

    cfg, data = ctx.cfg, ctx.data
    pcfg = cfg.prune.model_copy(update={"importance": cfg.prune.ranking(cfg.data.task)})  # the task's default
    base = ctx.final
    settings = resolved(cfg.distill, family_of(base.spec.model), "student")
    teacher = ctx.teacher()
    metric = ctx.evaluation.primary
    recovery_epochs: list[int] = []  # what the pruned model really got, so the control gets the same budget
    name = "student-pruned"  # DESIGN.md's fixed name, whichever model it came from (the control may have won)
    moving = base.but(name=name, pruned=True, torch=None)

    def train(model: Any, epochs: int, *, desc: str, source: Any = teacher, recovery: bool = True,
              minutes: float | None = None) -> dict:
        if epochs < 1:
            return {"epochs_run": 0}
        if recovery:
            recovery_epochs.append(epochs)
        run_settings = settings if minutes is None else settings.model_copy(update={"max_minutes": minutes})
        return train_student(model, data, run_settings, task=cfg.data.task, spec=base.spec.model,
                      reference=str(ctx.run_dir / ctx.state.teacher_outputs), teacher=source, seed=cfg.pipeline.seed,
                      batch_size=cfg.data.batch_size, origin=ctx.origin("distill"), desc=desc,
                      base_dir=str(cfg.base_dir), evaluate=cfg.evaluate, progress=ctx.progress, epochs=epochs,
                      patience=epochs if recovery else max(cfg.distill.patience, epochs),
                      warmup_epochs=0 if recovery else None, launch=ctx.launch(moving, "student"))

    batches = [(inputs, target) for _, (_, inputs, target) in
               zip(range(8), data.batches("train", cfg.data.batch_size))]
    pruned, steps = prune(ctx.load_torch(base.name), pcfg, example_input=data.example(8),
                          finetune=lambda m, e: train(m, e, desc="prune: recover"),
                          evaluate=lambda m: ctx.figures_torch(m)[metric.name],
                          latency_ms=_latency_fn(ctx),
                          taylor_batches=batches, progress=ctx.progress)
    record = _save(ctx, pruned, name, "pruned", base)
    if pcfg.method == "magnitude":
        record = record.but(note=MAGNITUDE_NOTE)
    records, info = [record], {"steps": steps, "from": base.name, "importance": pcfg.importance}
    if pcfg.control:
        # The pruned model had one distillation and len(recovery_epochs) recoveries, each with its own epochs and,
        # under max_minutes, its own clock: the control gets the sum of both.
        epochs = cfg.distill.epochs + sum(recovery_epochs)
        minutes = settings.max_minutes * (1 + len(recovery_epochs)) if settings.max_minutes else None
        ran: dict = {}
        # magnitude: the control keeps the pruned model's zeros, so it is as sparse (a dense one would be bigger)
        control = train_control(pruned, epochs=epochs, seed=cfg.pipeline.seed, sparse=pcfg.method == "magnitude",
                                train_fn=lambda m, e: ran.update(train(m, e, desc="prune: control", recovery=False,
                                                                       minutes=minutes)))
        records.append(_save(ctx, control, CONTROL_NAME, "control", base))
        info["control"] = {"epochs": ran.get("epochs_run", epochs), "epochs_budget": epochs, "minutes_budget": minutes,
                           "pruned_accuracy": record.metrics_torch[metric.name],
                           "control_accuracy": records[-1].metrics_torch[metric.name], "params": records[-1].params,
                           "made": CONTROL_RECIPES[pcfg.method]}
        if pcfg.method == "magnitude":  # the pruned model's own count is its last step's nonzero_params
            info["control"]["nonzero_params"] = nonzero_params(control)
    info["markdown"] = _markdown(pcfg, steps, record, info.get("control"), metric,
                                 notes=_notes(pcfg, cfg.prune.importance is None, cfg.data.task, pruned))
    warning = collapse_warning(steps, metric)  # compress.prune.control
    if warning:
        log.warning(warning)
        info["markdown"] += ["", f"**{warning.removeprefix('warning: ')}**"]
    final, why = _pick(name, info.get("control"), metric, _reason(base.name, ctx.state.final_reason))
    return StageResult(artifacts=tuple(r.torch for r in records), models=tuple(records),
                       state=RunState(final=final, final_reason=why), info=info)


def _pick(name: str, control: dict | None, metric: Any, why: str) -> tuple[str, str]:
    """The pruned model, or the same-size control when it is better on validation: the same rule as distillation's
    labels-only control (same size, same cost), so the final model is the best by the report's own figures."""
    from compress.prune import CONTROL_NAME
    from compress.report import shown

    if not control or not metric.better(control["control_accuracy"], control["pruned_accuracy"]):
        return name, why
    c, p = (shown(control[k], metric.name) for k in ("control_accuracy", "pruned_accuracy"))
    return CONTROL_NAME, (f"{CONTROL_NAME}: the same-size model trained from scratch beat the pruned one on "
                          f"validation {metric.name} ({c} vs {p}), so it ships (same size, same cost); {why}")


def _latency_fn(ctx: StageContext) -> Any:
    """ORT p50 of a model at batch `latency_batch`, 1 thread: export to a scratch file, time it."""
    import tempfile

    from compress.bench.config import STEP_PROFILE
    from compress.bench.harness import measure
    from compress.onnx.export import export_onnx

    cfg, data = ctx.cfg, ctx.data
    batch = cfg.prune.latency_batch

    def latency_ms(model: Any) -> float:
        with tempfile.TemporaryDirectory(dir=ctx.stage_dir) as tmp:
            path = export_onnx(model, data.example(2), Path(tmp) / "step.onnx", opset=cfg.export.opset,
                               exporter=cfg.export.exporter, inputs=data.inputs, output_names=ctx.output_names)
            row = measure(path, "cpu", batch, 1, inputs=data.inputs.bench_feed(data, batch),
                          settings=STEP_PROFILE)
        return row["p50_ms"]

    return latency_ms


def _save(ctx: StageContext, model: Any, name: str, role: str, base: ModelRecord) -> ModelRecord:
    """Save a pruned-architecture model (rebuilt by shape later) and describe it."""
    from compress.models import count_params
    from compress.prune import save_pruned

    path = ctx.stage_dir / f"{name}.safetensors"
    save_pruned(model, path)
    figures = ctx.figures_torch(model)
    return ModelRecord(name=name, role=role, spec=base.spec, origin=base.origin, torch=ctx.rel(path), pruned=True,
                       params=count_params(model), accuracy_torch=figures.get("accuracy"), metrics_torch=figures)


def _removed(pcfg: Any, step: dict, first: dict) -> str:
    """The share a step removed: of the prunable layers' channels as measured, with the amount asked beside it
    where they differ (a layer keeps one channel at least: amount = 0.99 of 8 channels removes 7, 88%)."""
    asked = f"{100 * step.get('amount', 0):.0f}%"
    if pcfg.method != "channel" or not step.get("channels") or not first.get("channels"):
        return asked
    done = f"{100 * (1 - step['channels'] / first['channels']):.0f}%"
    return done if done == asked else f"{done} (asked {asked})"


def _reason(base: str, before: str | None) -> str:
    """Why the pruned model is the final one: pruned from the model that was, which keeps its own reason."""
    return f"pruned from {base}" + (f"; {before}" if before else "")


def _notes(pcfg: Any, default: bool, task: str, pruned: Any) -> list[str]:
    """What the report says of how channels were chosen: the importance (and whether it was the task's default),
    and the recurrent layers left as they are."""
    from compress.prune.tracing import recurrent_layers

    if pcfg.method != "channel":
        return []
    if not default:
        notes = [f"Channels ranked by prune.importance = '{pcfg.importance}'."]
    elif pcfg.importance == "taylor":
        notes = ["Channels ranked by 'taylor' (the default for classification: |weight x gradient| of the loss on "
                 "training batches)."]
    else:
        notes = [f"Channels ranked by '{pcfg.importance}', the norm of their weights: the default for the {task} task "
                 "('taylor' needs the gradient of a classification loss)."]
    recurrent = [f"'{name}' ({type(m).__name__})" for name, m in recurrent_layers(pruned)]
    if recurrent:
        notes.append(f"Left as they are: {', '.join(recurrent)}, with the channels they read (Torch-Pruning has no "
                     "rule for recurrent layers).")
    return notes


def _markdown(pcfg: Any, steps: list[dict], record: ModelRecord, control: dict | None, metric: Any, *,
              notes: Sequence[str] = ()) -> list[str]:
    """The pruning section: how channels were chosen (`notes`), each step's primary figure (`metric`, shown as the
    report's tables show it) and the same-size control's verdict in the metric's own direction."""
    from compress.report import shown

    name = metric.name
    lines = ["", f"## Pruning ({pcfg.method})", "", "Figures in torch on the validation split, which the steps and the "
             "control were judged on (the models table reads the test split in ONNX Runtime, where there is one).", "",
             f"| step | removed | params | weight bytes | {name} before recovery | {name} | ORT p50 ms (b"
             f"{pcfg.latency_batch}) |", "|---|---|---|---|---|---|---|"]
    if notes:
        lines[3:3] = [" ".join(notes), ""]
    for s in steps:
        lat = f"{s['latency_ms']:.4f}" if s.get("latency_ms") is not None else "-"
        lines.append(f"| {s['step']} | {_removed(pcfg, s, steps[0])} | {s['params']:,} | {s['bytes']:,} | "
                     f"{shown(s['accuracy_before_finetune'], name)} | {shown(s['accuracy'], name)} | {lat} |")
    if record.note:
        lines += ["", record.note]
    if control:
        p, c = control["pruned_accuracy"], control["control_accuracy"]
        verdict = "beats" if metric.better(p, c) else ("matches" if p == c else "falls short of")
        gap = f"{100 * (p - c):+.2f} points" if name == "accuracy" else f"{name} {p - c:+.4f}"
        nonzero = f", {control['nonzero_params']:,} nonzero" if "nonzero_params" in control else ""
        lines += ["", f"pruned+recovered {shown(p, name)} vs same-size from scratch {shown(c, name)} "
                  f"({control['params']:,} params{nonzero}: {control['made']}, distilled for {control['epochs']} "
                  "epochs, same seed): "
                  f"pruning {verdict} training that size from scratch ({gap})."]
    return lines
