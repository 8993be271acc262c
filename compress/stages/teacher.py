"""teacher: load the teacher (a checkpoint, or an hf: folder's own weights) or train it; cache its outputs on every
split (compress.train.outputs; without augmentation, the training split too) for distill, prune and every figure."""
from __future__ import annotations

from compress.context import StageContext
from compress.records import ModelRecord, ModelSpec, RunState, StageResult


def run(ctx: StageContext) -> StageResult:
    """Load or train the teacher, save its weights and its outputs, and its figures on validation."""
    import torch

    from compress.families import family_of, spec_options
    from compress.models import count_params, save_weights
    from compress.tasks.base import output_names_of
    from compress.train import predict, train_teacher
    from compress.train.config import recipe, resolved
    from compress.train.outputs import save_outputs

    cfg, data, section = ctx.cfg, ctx.data, ctx.cfg.teacher
    family = family_of(section.model)
    spec = ModelSpec(section.model, dict(section.kwargs), spec_options(cfg, section))
    record = ModelRecord(name="teacher", role="teacher", spec=spec, origin=ctx.origin("teacher"))
    torch.manual_seed(cfg.pipeline.seed)
    model = family.build(spec, data=data, base_dir=cfg.base_dir, origin=ctx.origin("teacher"))
    info: dict = {"source": f"{family.name} folder"}
    if family.weights_in_spec and data.task == "classification":
        info["source"] += ", with its own classification head"
    if section.checkpoint:
        family.load_checkpoint(model, cfg.resolve(section.checkpoint), ctx.origin("teacher.checkpoint"),
                               key=section.checkpoint_key)
        info["source"] = "checkpoint"
    elif section.train is not None:
        settings = resolved(section.train, family, "teacher")
        history = train_teacher(model, data, settings, task=cfg.data.task, spec=section.model, seed=cfg.pipeline.seed,
                                batch_size=cfg.data.batch_size, origin=ctx.origin("teacher.train"),
                                base_dir=str(cfg.base_dir), evaluate=cfg.evaluate, hard_loss=cfg.distill.loss,
                                progress=ctx.progress, launch=ctx.launch(record, "teacher"))
        info.update(source="trained", settings=recipe(settings), **history)
    weights = ctx.stage_dir / "teacher.safetensors"
    save_weights(model, weights)
    with torch.inference_mode():
        from compress.data import forward

        names = output_names_of(forward(model.eval(), data.example(2)), ctx.evaluation.task.default_output)
    splits = [s for s in ("train", "val", "test") if data.split(s) is not None and len(data.split(s))]
    if data.augment:  # distill runs the teacher on each augmented batch: no training rows to cache
        splits.remove("train")
    outputs = {s: predict(model, data.split(s), inputs=data.inputs, names=names, workers=data.workers) for s in splits}
    path = ctx.stage_dir / "outputs.safetensors"
    save_outputs(path, outputs)
    figures = ctx.evaluation(outputs["val"], ctx.targets("val"), outputs["val"])
    record = record.but(torch=ctx.rel(weights), params=count_params(model), accuracy_torch=figures.get("accuracy"),
                        metrics_torch=figures)
    return StageResult(artifacts=(ctx.rel(weights), ctx.rel(path)), models=(record,),
                       state=RunState(teacher_outputs=ctx.rel(path)), info=info)

