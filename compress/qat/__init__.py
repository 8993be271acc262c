"""Quantization-aware distillation (`[quantize] mode = "qat"`): the post-training QDQ model fine-tuned against the
teacher, with the fake quantization ONNX Runtime will run.

The quantize stage runs post-training quantization first (static QDQ with its remedies, compress.quantize); the
best QDQ graph it wrote is the start. `train_qat` runs that graph in torch (compress.qat.graph.QDQModule: weights
and biases fake-quantized by ORT's own rules, activation scales learned from their calibrated values), trains it with
the task's distillation loss against the teacher (or the fp32 student's own outputs: `qat_teacher`) through the
one training loop (torchrun workers too: the module is restored from its record by compress.families.rebuild),
freezes the activation ranges for the last epochs (batch norm is already folded into the convolutions of the graph,
so its statistics cannot drift), and writes the same graph with the trained values. `parity` then says how
closely ORT's int8 kernels follow the torch model.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

PARITY = {"classification": ("top1_agreement", 0.995), "embedding": ("cosine", 0.999)}
"""Per task: what the torch fake-quant model and the exported QDQ model must agree on, and how closely; any other
task (and a user metric) compares the primary figure, within METRIC_PARITY."""
METRIC_PARITY = 0.001
"""The primary figure within 0.1 points (an absolute 0.001 of a fraction) between torch and ONNX Runtime."""


def train_qat(src: Path, dst: Path, ctx: Any, origin: str) -> dict[str, Any]:
    """Fine-tune the QDQ graph at `src` against the teacher for `[quantize] qat_epochs`; write it to `dst`.
    The post-training values count as epoch 0: when no epoch beats them on validation they are what is written
    (best_epoch 0). Returns {"path", "parity", "seconds", "epochs", "best_epoch", "val_before", "val_best_epoch",
    "lr", "freeze_after", "examples_per_epoch", "distilled_from" (compress.qat.distilled_from), "same_kernels",
    "kernels"}."""
    import onnx

    from compress.families import family_of
    from compress.qat.graph import QDQModule
    from compress.records import ModelRecord
    from compress.train import train_student
    from compress.train.config import resolved

    cfg, data, qcfg = ctx.cfg, ctx.data, ctx.cfg.quantize
    base = ctx.final
    family = family_of(base.spec.model)
    settings = resolved(cfg.distill, family, "student")
    epochs = qcfg.qat_epochs
    freeze_after = max(epochs - qcfg.qat_freeze_epochs, 0)
    update = {"epochs": epochs, "lr": qcfg.qat_lr if qcfg.qat_lr is not None else settings.lr / 10,
              "warmup_epochs": 0.0, "patience": epochs, "freeze_embeddings": False, "max_minutes": None,
              "steps_per_epoch": qcfg.qat_steps,
              "precision": "fp32",  # bf16 matmuls would train a model ORT's int8 kernels do not compute
              **{k: 0.0 for k in family.kd_keys if k.endswith("_weight")}}  # the graph has no hidden states to match
    settings = settings.model_copy(update=update)
    module = QDQModule(onnx.load(str(src)), origin)
    module.freeze_at = freeze_after
    module.epoch_end(0)  # qat_freeze_epochs = qat_epochs: the calibrated ranges, never learned
    record = ModelRecord(name="student-qat", role="student", spec=base.spec, origin=origin,
                         quantization={"qat_graph": str(Path(src).resolve()), "freeze_at": freeze_after})
    start, before = {k: v.clone() for k, v in module.state_dict().items()}, _val_figure(module, ctx)
    reference, teacher, source = distilled_from(ctx, qcfg.qat_teacher)
    started = time.perf_counter()
    history = train_student(module, data, settings, task=cfg.data.task, spec=base.spec.model,
                            reference=reference, teacher=teacher,
                            seed=cfg.pipeline.seed, batch_size=cfg.data.batch_size, origin=origin, desc="qat",
                            base_dir=str(cfg.base_dir), evaluate=cfg.evaluate, progress=ctx.progress,
                            launch=ctx.launch(record, "quantize"))
    seconds = time.perf_counter() - started
    primary = ctx.evaluation.primary
    after = history.get(f"val_{primary.name}")
    kept = after is None or not primary.better(after, before)
    if kept:  # the post-training values are epoch 0 of the selection: no epoch beat them, so they stay
        module.load_state_dict(start)
    module.export(Path(dst))
    ptq_ops, qat_ops = kernels(Path(src)), kernels(Path(dst))
    return {"path": str(dst), "seconds": round(seconds, 1), "epochs": history.get("epochs_run"),
            "best_epoch": 0 if kept else history.get("best_epoch"), "val_before": before, "val_best_epoch": after,
            "lr": settings.lr, "freeze_after": freeze_after,
            "examples_per_epoch": [h["examples"] for h in history.get("history", [])], "distilled_from": source,
            "parity": parity(module, Path(dst), ctx), "same_kernels": ptq_ops == qat_ops,
            "kernels": {k: [ptq_ops.get(k, 0), qat_ops.get(k, 0)] for k in sorted(set(ptq_ops) | set(qat_ops))
                        if ptq_ops.get(k, 0) != qat_ops.get(k, 0)}}


def distilled_from(ctx: Any, choice: str) -> tuple[str, Any, dict[str, Any]]:
    """(outputs file, compress.train.Teacher, what was chosen and why) for QAT: the teacher's cached outputs, or the
    fp32 student's own on the training rows (the file keeps the teacher's validation and test rows, which figures
    compare with). 'auto' takes the student where its validation figure beats its teacher's: QAT is there to win
    back what int8 cost the student, and a weaker teacher's outputs aim below the student's own figure (the QAD
    recipe distils from the unquantized model). For embeddings, whose figure is the cosine to the teacher's own
    outputs, 'auto' takes the student: the comparison cannot favour it, and on the MiniLM student 20 QAT steps
    against the teacher lost validation cosine (0.9369 -> 0.9353) where 20 against the student gained (0.9374). A
    run that augments its data, or keeps no training rows, distils from the teacher."""
    from compress.train import Teacher, predict
    from compress.train.outputs import open_outputs, save_outputs

    teacher_file = str(ctx.run_dir / ctx.state.teacher_outputs)
    if choice == "teacher" or ctx.data.augment or "train" not in ctx.teacher_outputs:
        why = "as configured" if choice == "teacher" else \
            "the run augments its data, so the teacher runs on each batch and no training rows are kept"
        return teacher_file, ctx.teacher(), {"model": "teacher", "why": why}
    relative = ctx.evaluation.task.name == "embedding"  # the figure is the cosine to the teacher's own outputs
    cached = ctx.__dict__.get("_qat_reference")
    if cached is None:
        primary, split = ctx.evaluation.primary, ctx.teacher_outputs["val"]
        teacher_val = ctx.evaluation(split, ctx.targets("val"), split)[primary.name]
        student = ctx.load_torch(ctx.final.name)
        student_val = ctx.figures_torch(student, "val")[primary.name]
        cached = {"student_val": student_val, "teacher_val": teacher_val, "path": None}
        if choice == "student" or relative or primary.better(student_val, teacher_val):
            names, data = ctx.output_names, ctx.data
            train = predict(student, data.train, inputs=data.inputs, names=names, workers=data.workers)
            path = ctx.stage_dir / "qat-reference.safetensors"
            save_outputs(path, {"train": train, **{s: v for s, v in ctx.teacher_outputs.items() if s != "train"}})
            cached["path"] = str(path)
        ctx.__dict__["_qat_reference"] = cached
    figures = (f"{ctx.evaluation.primary.name} on validation: student {cached['student_val']:.4f}, teacher "
               f"{cached['teacher_val']:.4f}")
    if cached["path"] is None:
        return teacher_file, ctx.teacher(), {"model": "teacher",
                                             "why": f"the teacher reads at least as well ({figures})"}
    if choice == "student":
        why = "as configured"
    elif relative:
        why = "the task's figure is the cosine to the teacher's own embeddings, which the teacher meets by construction"
    else:
        why = "the student reads better than its teacher"
    return cached["path"], Teacher(outputs=open_outputs(Path(cached["path"]))["train"], source=cached["path"]), \
        {"model": "student", "why": f"{why} ({figures})"}


def _val_figure(module: Any, ctx: Any) -> float:
    """The primary figure of the torch fake-quant model on the validation split, before training (epoch 0)."""
    from compress.train import predict

    data = ctx.data
    got = predict(module, data.val, inputs=data.inputs, names=tuple(ctx.output_names), workers=data.workers)
    return float(ctx.evaluation(got, ctx.targets("val"), ctx.teacher_outputs["val"])[ctx.evaluation.primary.name])


def kernels(path: Path) -> dict[str, int]:
    """How many nodes of each type ONNX Runtime's CPU session runs after its graph optimisations (QDQ groups fused
    into QLinearConv, QLinearMatMul, ...): equal counts for the PTQ and the QAT graph mean the same int8 kernels
    (a bias scale that is not input scale x weight scale, for one, leaves a Conv in float)."""
    import collections
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="compress-qat-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return dict(collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node))


def parity(module: Any, path: Path, ctx: Any) -> dict[str, Any]:
    """The torch fake-quant model against the exported QDQ model in ONNX Runtime on the validation split: top-1
    agreement (classification), mean cosine (embeddings), else the primary figure's difference."""
    from compress.bench.providers import EXACT_MATMULS
    from compress.onnx.run import outputs_on
    from compress.train import predict

    data, evaluation = ctx.data, ctx.evaluation
    names = tuple(ctx.output_names)
    torch_out = predict(module, data.val, inputs=data.inputs, names=names, workers=data.workers)
    ort_out = outputs_on(path, data, "val", names=names, config=EXACT_MATMULS)  # W8A16 MatMuls as HTP runs them
    task = evaluation.task.name
    kind, threshold = PARITY.get(task, ("metric", METRIC_PARITY))
    if evaluation.user is not None:
        kind, threshold = "metric", METRIC_PARITY
    a, b = (np.asarray(next(iter(o.values()))) for o in (torch_out, ort_out))
    if kind == "top1_agreement":
        from compress.onnx.parity import top1_agreement

        value = top1_agreement(a, b)  # a tie is no disagreement
        ok = value >= threshold
    elif kind == "cosine":
        a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        value = float(cos.mean())
        ok = value >= threshold
    else:
        targets, reference = ctx.targets("val"), ctx.teacher_outputs["val"]
        name = evaluation.primary.name
        t, o = evaluation(torch_out, targets, reference)[name], evaluation(ort_out, targets, reference)[name]
        value = abs(float(t) - float(o))
        ok = value <= threshold
    what = {"top1_agreement": "top-1 agreement", "cosine": "mean cosine",
            "metric": f"|{evaluation.primary.name} torch - ORT|"}[kind]
    return {"kind": kind, "value": value, "threshold": threshold, "ok": bool(ok),
            "what": f"{what} of the torch fake-quant model and the QDQ model in ONNX Runtime on the "
                    f"{len(data.val):,} validation examples: {value:.4f} ({'meets' if ok else 'misses'} "
                    f"{'<=' if kind == 'metric' else '>='} {threshold})"}
