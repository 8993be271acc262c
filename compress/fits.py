"""Whether a pipeline's keys fit its task and its model families, checked once, when the file loads.

A key the task or a family cannot use is an error naming the key and why (no key is silently ignored), and every
combination of mode, task and family is checked here, before any training. Only the file's own keys count: a
default never trips a check.
"""
from __future__ import annotations

from typing import Any

from compress.errors import CompressError


def check_fits(cfg: Any, path: Any) -> None:
    """Raise CompressError `path: key: why` for the first key this pipeline cannot use."""
    from compress.families import family_of
    from compress.tasks import TASKS, task_named

    task = task_named(cfg.data.task)
    teacher = family_of(cfg.teacher.model)
    student = teacher if cfg.student.from_teacher is not None else family_of(cfg.student.model or "")

    def fail(key: str, why: str) -> None:
        raise CompressError(f"{path}: {key}: {why}")

    _check_data(cfg, task, fail)
    distill = cfg.distill
    set_keys = distill.model_fields_set
    others = {k for name in TASKS if name != task.name for k in task_named(name).reads} - set(task.reads)
    for key in sorted(set_keys & others):
        fail(f"distill.{key}", f"{task.why_not(key)}; remove it (data.task = {task.name!r})")
    if distill.loss is not None:
        custom = ":" in distill.loss
        if not task.losses and not task.user_loss:
            fail("distill.loss", f"the {task.name} task has its own loss; remove the key")
        if (custom and not task.user_loss) or (not custom and distill.loss not in task.losses):
            allowed = " or ".join(repr(v) for v in task.losses) + (" or 'module:function'" if task.user_loss else "")
            fail("distill.loss", f"the {task.name} task takes {allowed}, got {distill.loss!r}")
    for key in sorted(set_keys & {"hidden_weight", "attention_weight", "layer_map"}):
        if getattr(distill, key) and not (key in teacher.kd_keys and key in student.kd_keys):
            fail(f"distill.{key}", "intermediate-layer KD needs an hf: (transformer) teacher and student; "
                 f"{cfg.teacher.model!r} and {cfg.student.model or 'from_teacher'!r} have no such layers")
    if distill.control and task.labels == "none":
        fail("distill.control", f"the {task.name} task has no labels to train a labels-only control on")
    if cfg.student.from_teacher is not None and not teacher.can_cut:
        fail("student.from_teacher", f"a layer cut needs an hf: (transformer) teacher, got {cfg.teacher.model!r}")
    for role, section, family in (("teacher", cfg.teacher, teacher), ("student", cfg.student, student)):
        if "pooling" in section.model_fields_set and not family.can_cut:
            fail(f"{role}.pooling", "pooling applies to hf: text models (their pooled sentence embedding)")
        if "pooling" in section.model_fields_set and task.name == "classification":  # it was read by nothing
            fail(f"{role}.pooling", "applies to the embedding task (the pooled sentence embedding); a text "
                 "classifier's head reads the first token ([CLS]): remove the key")
    if cfg.teacher.train is not None and task.labels == "none":
        fail("teacher.train", f"the {task.name} task has no labels to train a teacher on; give a checkpoint or an "
             "hf: folder with its weights")
    _check_stages(cfg, task, teacher, student, fail)


def _check_data(cfg: Any, task: Any, fail: Any) -> None:
    source = cfg.data.source
    text = source.startswith("text:")
    set_keys = cfg.data.model_fields_set
    for key in sorted(set_keys & {"text_column", "label_column", "pair_column", "labels", "max_length"}):
        if not text:
            fail(f"data.{key}", "applies to text: sources only")
    if "labels" in set_keys and cfg.data.label_column is None:  # a .txt embedding file: it closed nothing
        fail("data.labels", "closes the set of data.label_column's values, and the file sets no label_column")
    if "seq_lengths" in cfg.benchmark.model_fields_set and not text:
        fail("benchmark.seq_lengths", "applies to token inputs (text: sources) only")
    if cfg.search is not None and cfg.search.target.seq is not None and not text:
        fail("search.target.seq", "applies to token inputs (text: sources) only")
    if text and not cfg.teacher.model.startswith("hf:"):
        fail("teacher.model", f"text: data is tokenized with the teacher's tokenizer, so the teacher must be an hf: "
             f"folder, got {cfg.teacher.model!r}")
    if text and cfg.student.from_teacher is None and not (cfg.student.model or "").startswith("hf:"):
        fail("student.model", f"text data needs an hf: student (or from_teacher), got {cfg.student.model!r}")
    if text and task.name == "tensors":
        fail("data.task", "text models (hf: TextModel) give logits or a pooled embedding: use 'classification' or "
             "'embedding'")
    if (source.startswith("images:") or source == "digits") and task.name != "classification":
        fail("data.task", f"{source.split(':')[0]} data carries class labels: use 'classification'")


def _check_stages(cfg: Any, task: Any, teacher: Any, student: Any, fail: Any) -> None:
    if cfg.prune is not None:
        if not student.can_prune:
            fail("prune", "channel pruning is not built for hf: (transformer) models; remove [prune] (cut layers "
                 "with [student] from_teacher instead)")
        if cfg.prune.importance == "taylor" and task.name != "classification":
            fail("prune.importance", "'taylor' ranks channels by the gradient of the classification loss; use "
                 "'l1' or 'l2' for the {task.name} task".replace("{task.name}", task.name))
    if cfg.export.optimize == "transformer" and not student.can_optimize:
        fail("export.optimize", "ONNX Runtime's transformer optimizer is for hf: (transformer) models")
    if cfg.quantize is not None:
        budget = "max_metric_drop" if cfg.evaluate is not None else task.budget_key
        for key in sorted(cfg.quantize.model_fields_set & {"max_accuracy_drop", "max_cosine_drop", "max_metric_drop"}):
            if key != budget:
                what = f"your metric {cfg.evaluate.metric}" if cfg.evaluate is not None else \
                    f"{task.primary.name} (the {task.name} task)"
                fail(f"quantize.{key}", f"this pipeline's gate is on {what}; set quantize.{budget} instead")
