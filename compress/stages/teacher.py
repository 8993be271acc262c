"""teacher: load the teacher from its checkpoint, or train it; cache its logits on the training set."""
from __future__ import annotations

from compress.context import StageContext
from compress.records import ModelRecord, ModelSpec, RunState, StageResult


def run(ctx: StageContext) -> StageResult:
    """Load or train the teacher, save its weights and its training-set logits (reused by distill and prune)."""
    from compress.hf.pipeline import is_text

    if is_text(ctx.data):  # hf: models on text: keyword token inputs, task-aware figures
        from compress.hf.pipeline import teacher_stage

        return teacher_stage(ctx)
    import numpy as np
    import torch

    from compress.cache import atomic_path
    from compress.models import build_model, count_params, load_weights, save_weights
    from compress.train import evaluate, predict_logits, train_teacher

    cfg, data, section = ctx.cfg, ctx.data, ctx.cfg.teacher
    torch.manual_seed(cfg.pipeline.seed)
    model = build_model(section.model, section.kwargs, input_shape=data.input_shape, num_classes=data.num_classes,
                        base_dir=cfg.base_dir, origin=ctx.origin("teacher"))
    info: dict = {}
    if section.checkpoint:
        load_weights(model, cfg.resolve(section.checkpoint), ctx.origin("teacher.checkpoint"),
                     key=section.checkpoint_key)
        info["source"] = "checkpoint"
    else:
        history = train_teacher(model, data, section.train, seed=cfg.pipeline.seed, batch_size=cfg.data.batch_size,
                                progress=ctx.progress, origin=ctx.origin("teacher.train.lr"),
                                launch=ctx.launch(section.model, section.kwargs, "teacher"))
        info.update(source="trained", **history)
    weights = ctx.stage_dir / "teacher.safetensors"
    save_weights(model, weights)
    # one row per training example (no augmentation), memory-mapped by distill and prune; with augmentation the
    # teacher runs on each batch instead, but the file stays for a later run without it
    logits_path = ctx.stage_dir / "logits.npy"
    with atomic_path(logits_path) as tmp, open(tmp, "wb") as f:
        np.save(f, predict_logits(model, data.train_plain).numpy().astype(np.float32))
    record = ModelRecord(name="teacher", role="teacher", spec=ModelSpec(section.model, section.kwargs),
                         origin=ctx.origin("teacher"), torch=ctx.rel(weights), params=count_params(model),
                         accuracy_torch=evaluate(model, data.val))
    return StageResult(artifacts=(ctx.rel(weights), ctx.rel(logits_path)), models=(record,),
                       state=RunState(teacher_logits=ctx.rel(logits_path)), info=info)
