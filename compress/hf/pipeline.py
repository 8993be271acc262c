"""The teacher and distill stages for text data (`text:` sources, hf: models): build, cut, train, record.

Models are rebuilt from their record: the hf: folder's config with the record's overrides (a cut student is the
teacher's config with num_hidden_layers = len(layers), whose fresh state_dict has exactly the cut model's keys),
then the run's safetensors weights. Task and pooling come from the config (pooling by role: the teacher's own
for the teacher, the student's for every other model).
"""
from __future__ import annotations

from typing import Any

from compress.errors import CompressError
from compress.records import ModelRecord, ModelSpec, RunState, StageResult


def is_text(data: Any) -> bool:
    return getattr(data, "kind", None) == "text"


def build_teacher(cfg: Any, data: Any, origin: str, *, fresh: bool = False):
    from compress.hf.model import build_text_model

    return build_text_model(cfg.teacher.model, task=data.task, num_classes=data.num_classes,
                            pooling=cfg.teacher.pooling, kwargs=cfg.teacher.kwargs, base_dir=cfg.base_dir,
                            origin=origin, from_scratch=fresh, attention=_attention(cfg), class_names=data.class_names)


def _attention(cfg: Any) -> str | None:
    """Attention KD needs the attention maps, which only the eager implementation returns."""
    return "eager" if getattr(cfg.distill, "attention_weight", 0) > 0 else None


def build_student(cfg: Any, data: Any, teacher: Any, origin: str) -> tuple[Any, ModelSpec, list[int] | None]:
    """The student, the spec that rebuilds it, and the teacher layers it kept (None unless cut)."""
    from compress.hf.model import build_text_model, choose_layers, cut_layers, num_layers

    section = cfg.student
    if section.from_teacher is not None:
        if not cfg.teacher.model.startswith("hf:"):
            raise CompressError(f"{origin}.from_teacher: needs an hf: teacher, got {cfg.teacher.model!r}")
        total = num_layers(teacher)
        cut = section.from_teacher
        try:
            layers = list(cut.layers) if cut.layers is not None else choose_layers(total, cut.num_layers)
        except ValueError as exc:
            raise CompressError(f"{origin}.from_teacher: {exc} (the teacher has {total} layers)") from None
        student = cut_layers(teacher, layers, f"{origin}.from_teacher")
        student.pooling = section.pooling
        spec = ModelSpec(cfg.teacher.model, {**cfg.teacher.kwargs, "num_hidden_layers": len(layers)})
        return student, spec, layers
    if not (section.model or "").startswith("hf:"):
        raise CompressError(f"{origin}.model: text data needs an hf: student (or from_teacher), got {section.model!r}")
    student = build_text_model(section.model, task=data.task, num_classes=data.num_classes, pooling=section.pooling,
                               kwargs=section.kwargs, base_dir=cfg.base_dir, origin=origin, attention=_attention(cfg),
                               class_names=data.class_names)
    return student, ModelSpec(section.model, dict(section.kwargs)), None


def load_text_model(ctx: Any, name: str):
    """Rebuild the named model from its record and load the run's weights (eval mode)."""
    from compress.hf.model import build_text_model
    from compress.models import load_weights

    rec = ctx.models[name]
    pooling = ctx.cfg.teacher.pooling if rec.role == "teacher" else ctx.cfg.student.pooling
    model = build_text_model(rec.spec.model, task=ctx.data.task, num_classes=ctx.data.num_classes, pooling=pooling,
                             kwargs=dict(rec.spec.kwargs), base_dir=ctx.cfg.base_dir, origin=rec.origin,
                             from_scratch=True, class_names=ctx.data.class_names)
    load_weights(model, ctx.run_dir / rec.torch, rec.origin)
    return model.eval()


def check_text_models(cfg: Any, data: Any) -> None:
    """What `compress validate` (and every run, cached or not) checks for text pipelines without importing the
    model code (transformers' modeling modules take seconds to import): the extra is installed, the folders and
    their config.json and weights exist, a layer cut fits the teacher, a classification head will be trained."""
    import importlib.util
    import json

    from compress.hf.model import choose_layers, folder_head_order, resolve_dir

    origin = f"{cfg.source_path}: teacher"
    if cfg.prune is not None:
        raise CompressError(f"{cfg.source_path}: prune: channel pruning is not built for hf: text models; remove "
                            "[prune] (cut layers with [student] from_teacher instead)")
    if importlib.util.find_spec("transformers") is None:
        raise CompressError(f"{origin}.model: hf: models need the 'transformers' package: pip install 'compress[hf]'")
    if not cfg.teacher.model.startswith("hf:"):
        raise CompressError(f"{origin}.model: text data needs an hf: teacher, got {cfg.teacher.model!r}")
    folder = resolve_dir(cfg.teacher.model, cfg.base_dir, f"{origin}.model")
    if not cfg.teacher.kwargs and not any((folder / n).is_file() for n in ("model.safetensors", "pytorch_model.bin",
                                                                           "model.safetensors.index.json")):
        raise CompressError(f"{origin}: {folder}/model.safetensors not found (no weights in the hf folder)")
    if not cfg.teacher.checkpoint and data.task == "classification" and cfg.teacher.train is None and \
            folder_head_order(json.loads((folder / "config.json").read_text()), data.class_names) is None:
        raise CompressError(f"{origin}: {folder} has no classification head for the labels {data.class_names}, so "
                            "one must be trained: add [teacher.train] (or a checkpoint of the whole wrapped model)")
    cut = cfg.student.from_teacher
    if cut is not None:
        total = int(cfg.teacher.kwargs.get("num_hidden_layers")
                    or json.loads((folder / "config.json").read_text()).get("num_hidden_layers", 0))
        try:
            layers = list(cut.layers) if cut.layers is not None else choose_layers(total, cut.num_layers)
        except ValueError as exc:
            raise CompressError(f"{cfg.source_path}: student.from_teacher: {exc} (the teacher has {total} "
                                "layers)") from None
        if any(not 0 <= i < total for i in layers) or len(set(layers)) != len(layers):
            raise CompressError(f"{cfg.source_path}: student.from_teacher.layers must be distinct indices "
                                f"0..{total - 1}, got {layers}")
    elif not (cfg.student.model or "").startswith("hf:"):
        raise CompressError(f"{cfg.source_path}: student.model: text data needs an hf: student (or from_teacher), "
                            f"got {cfg.student.model!r}")
    else:
        resolve_dir(cfg.student.model, cfg.base_dir, f"{cfg.source_path}: student.model")


def settings_from(dcfg: Any, batch_size: int, layer_map: Any, *, seconds: float | None = None) -> Any:
    from compress.hf.train import TextDistillSettings

    return TextDistillSettings(
        epochs=dcfg.epochs, lr=dcfg.lr, batch_size=batch_size, weight_decay=dcfg.weight_decay,
        warmup_fraction=min(0.5, dcfg.warmup_epochs / max(dcfg.epochs, 1)), loss=dcfg.loss,
        hidden_weight=dcfg.hidden_weight, attention_weight=dcfg.attention_weight,
        relation_weight=dcfg.relation_weight, relation_temperature=dcfg.relation_temperature,
        relation_bank=dcfg.relation_bank, layer_map=tuple(layer_map) if layer_map is not None else None,
        temperature=dcfg.temperature, freeze_embeddings=dcfg.freeze_embeddings,
        precision=dcfg.precision,
        alpha=dcfg.alpha, max_seconds=seconds if seconds is not None else (dcfg.max_minutes or 0) * 60 or None)


def scorer(data: Any, teacher_val: Any):
    """evaluate(model) -> the task's validation score: cosine to the teacher, or accuracy."""
    from compress.hf.metrics import cosine
    from compress.hf.train import predict

    def evaluate(model) -> float:
        out = predict(model, data.encoded["val"])
        if data.task == "embedding":
            return cosine(out.numpy(), teacher_val)
        return float((out.argmax(1) == data.targets["val"]).float().mean())

    return evaluate


def scores_of(data: Any, outputs: Any, teacher_ref: Any, split: str = "val") -> dict[str, float]:
    """The figures a record carries on `split`: cosine and neighbour_overlap@10 to the teacher's outputs
    `teacher_ref` on the same texts, or accuracy."""
    import numpy as np

    from compress.hf.metrics import embedding_metrics

    if data.task == "embedding":
        return embedding_metrics(outputs, teacher_ref)
    return {"accuracy": float(np.mean(np.asarray(outputs).argmax(1) == data.targets[split].numpy()))}


def teacher_stage(ctx: Any) -> StageResult:
    """Build the hf: teacher (train its head when asked), save it and its outputs on train and validation."""
    import torch
    from safetensors.torch import save_file

    from compress.cache import atomic_path
    from compress.hf.train import distill_text, predict
    from compress.models import count_params, load_weights, save_weights

    cfg, data, section = ctx.cfg, ctx.data, ctx.cfg.teacher
    torch.manual_seed(cfg.pipeline.seed)
    model = build_teacher(cfg, data, ctx.origin("teacher"))
    info: dict = {"source": "hf folder"}
    if section.checkpoint:
        load_weights(model, cfg.resolve(section.checkpoint), ctx.origin("teacher.checkpoint"), key=section.checkpoint_key)
        info["source"] = "checkpoint"
    elif data.task == "classification" and model.folder_head and section.train is None:
        info["source"] = "hf folder, with its own classification head"
    elif data.task == "classification":
        tcfg = section.train
        settings = settings_from(ctx.cfg.distill.model_copy(update={**tcfg.model_dump(), "hidden_weight": 0.0,
                                                                      "attention_weight": 0.0, "max_minutes": None}),
                                 cfg.data.batch_size, None)
        history = distill_text(model, None, data.encoded["train"], settings, task="classification",
                               evaluate=scorer(data, None), labels=data.targets["train"], seed=cfg.pipeline.seed,
                               origin=ctx.origin("teacher.train"))
        info.update(source="trained", **history)
    weights = ctx.stage_dir / "teacher.safetensors"
    save_weights(model, weights)
    outputs = {"logits": predict(model, data.encoded["train"]).contiguous()}
    for split in data.encoded:  # val (selection, gates) and test (the report's figures)
        if split != "train":
            outputs[split] = predict(model, data.encoded[split]).contiguous()
    out_path = ctx.stage_dir / "logits.safetensors"
    with atomic_path(out_path) as tmp:
        save_file(outputs, str(tmp))
    scores = scores_of(data, outputs["val"].numpy(), outputs["val"].numpy())
    record = ModelRecord(name="teacher", role="teacher", spec=ModelSpec(section.model, dict(section.kwargs)),
                         origin=ctx.origin("teacher"), torch=ctx.rel(weights), params=count_params(model),
                         accuracy_torch=scores.get("accuracy"), scores=scores)
    return StageResult(artifacts=(ctx.rel(weights), ctx.rel(out_path)), models=(record,),
                       state=RunState(teacher_logits=ctx.rel(out_path)), info=info)


def teacher_outputs(ctx: Any, split: str = "val") -> tuple[Any, Any]:
    """The teacher's outputs on (train, `split`), saved by the teacher stage."""
    from safetensors.torch import load_file

    saved = load_file(str(ctx.run_dir / ctx.state.teacher_logits))
    return saved["logits"], saved[split]


def warn_if_bf16_is_slow(precision: str, origin: str) -> bool:
    """Warn (and say so) when bf16 autocast was asked for on a CPU without bfloat16 instructions."""
    import torch

    if precision != "bf16" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    import logging

    logging.getLogger("compress").warning(
        "warning: %s: precision = \"bf16\": this CPU has no bfloat16 instructions (AMX, AVX-512 BF16), so training "
        "will be slower than in fp32", origin)
    return True


def distill_stage(ctx: Any) -> StageResult:
    """Distil the student (and, for classification, a labels-only control with the same budget and seed)."""
    import torch

    from compress.hf.losses import default_layer_map
    from compress.hf.model import num_layers
    from compress.hf.train import distill_text, predict
    from compress.models import count_params, save_weights

    cfg, data, dcfg = ctx.cfg, ctx.data, ctx.cfg.distill
    warn_if_bf16_is_slow(dcfg.precision, ctx.origin("distill.precision"))
    t_train, t_val = teacher_outputs(ctx)
    teacher = load_text_model(ctx, "teacher")
    runs = [("student", teacher)] + ([("control", None)] if dcfg.control and data.task == "classification" else [])
    records, artifacts, info = [], [], {}
    for name, tmodel in runs:
        torch.manual_seed(cfg.pipeline.seed)  # same initialisation for student and control
        model, spec, kept = build_student(cfg, data, teacher, ctx.origin("student"))
        layer_map = dcfg.layer_map or default_layer_map(num_layers(model), num_layers(teacher), kept)
        if len(layer_map) != num_layers(model) or max(layer_map) >= num_layers(teacher):
            raise CompressError(f"{ctx.origin('distill.layer_map')}: needs {num_layers(model)} teacher layer indices "
                                f"in 0..{num_layers(teacher) - 1}, got {list(layer_map)}")
        settings = settings_from(dcfg, cfg.data.batch_size, layer_map)
        info[name] = distill_text(model, tmodel, data.encoded["train"], settings, task=data.task,
                                  evaluate=scorer(data, t_val.numpy()),
                                  teacher_outputs=t_train if tmodel is not None else None,
                                  labels=data.targets["train"] if data.task == "classification" else None,
                                  seed=cfg.pipeline.seed, origin=ctx.origin("distill"))
        info[name].update(kept_layers=kept, layer_map=list(layer_map))
        info[name]["val_accuracy" if data.task == "classification" else "val_cosine"] = info[name]["best_score"]
        path = ctx.stage_dir / f"{name}.safetensors"
        save_weights(model, path)
        artifacts.append(ctx.rel(path))
        scores = scores_of(data, predict(model, data.encoded["val"]).numpy(), t_val.numpy())
        records.append(ModelRecord(name=name, role=name, spec=spec, origin=ctx.origin("student"), torch=ctx.rel(path),
                                   params=count_params(model), accuracy_torch=scores.get("accuracy"), scores=scores))
    return StageResult(artifacts=tuple(artifacts), models=tuple(records), state=RunState(final="student"), info=info)
