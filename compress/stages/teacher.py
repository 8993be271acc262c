"""teacher: load the teacher from its checkpoint, or train it; cache its logits on the training set (when the
training data has no augmentation)."""
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
    artifacts, state = [ctx.rel(weights)], RunState()
    if not data.augment:  # with augmentation distill runs the teacher on each batch: no cache to write
        # one row per training example, memory-mapped by distill and prune and looked up by index
        logits_path = ctx.stage_dir / "logits.npy"
        with atomic_path(logits_path) as tmp, open(tmp, "wb") as f:
            np.save(f, predict_logits(model, data.train_plain, workers=data.workers).numpy().astype(np.float32))
        artifacts.append(ctx.rel(logits_path))
        state = RunState(teacher_logits=ctx.rel(logits_path))
    record = ModelRecord(name="teacher", role="teacher", spec=ModelSpec(section.model, section.kwargs),
                         origin=ctx.origin("teacher"), torch=ctx.rel(weights), params=count_params(model),
                         accuracy_torch=evaluate(model, data.val, workers=data.workers))
    return StageResult(artifacts=tuple(artifacts), models=(record,), state=state, info=info)
