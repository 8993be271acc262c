"""Classification: one (N, K) logits output. Hinton KD against the teacher, cross-entropy against the labels,
top-1 accuracy.

Loss (Hinton et al. 2015): alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T), where _T is
softmax at temperature T; the T^2 factor keeps the soft-target gradients on the scale of the hard ones when T
changes. Without a teacher (teacher training, the labels-only control) it is CE alone.
"""
from __future__ import annotations

from typing import Any, Mapping

from compress.errors import CompressError
from compress.tasks import Metric
from compress.tasks.base import LossFn, Task, rows, single


def kd_loss(student_logits, teacher_logits, labels, *, temperature: float, alpha: float, label_smoothing: float = 0.0):
    """alpha * CE(hard labels) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))."""
    import torch.nn.functional as F

    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha >= 1.0:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * hard + (1.0 - alpha) * soft


class Classification(Task):
    name = "classification"
    primary = Metric("accuracy", True)
    budget_key = "max_accuracy_drop"
    labels = "required"
    default_output = "logits"
    reads = frozenset({"temperature", "alpha", "label_smoothing"})

    def check_outputs(self, outputs: Mapping[str, Any], *, num_classes: int, teacher: Mapping[str, Any] | None,
                      origin: str, spec: str) -> None:
        out = single(outputs, self.name, origin, spec)
        if tuple(out.shape) != (2, num_classes):
            more = (f"; for a model with more classes than the labels show, give its factory a num_classes "
                    f"parameter and set num_classes = {out.shape[1]} in {origin.rpartition(': ')[2]}.kwargs"
                    if out.dim() == 2 and out.shape[1] > num_classes else "")
            raise CompressError(f"{origin}.model: {spec} outputs {tuple(out.shape)} for 2 examples; the data has "
                                f"{num_classes} classes, so expected (2, {num_classes}) logits{more}")
        theirs = next(iter(teacher.values())).shape[1] if teacher is not None else num_classes
        if theirs != num_classes:
            raise CompressError(f"{origin}.model: {spec} outputs {num_classes} classes, the teacher {theirs}; the "
                                f"student learns the teacher's class scores one by one, so set num_classes = {theirs} "
                                f"in {origin.rpartition(': ')[2]}.kwargs")

    def make_loss(self, settings: Any, *, teacher: bool, labels: bool, train_reference: Any = None,
                  base_dir: Any = None, seed: int = 0) -> LossFn:
        t, alpha, smoothing = settings.temperature, settings.alpha if teacher else 1.0, settings.label_smoothing

        def loss(student, teacher_out, target, index):
            logits = next(iter(student.values()))
            soft = next(iter(teacher_out.values())) if teacher_out is not None else None
            return kd_loss(logits, soft, target, temperature=t, alpha=alpha, label_smoothing=smoothing)

        return loss

    def metrics(self, outputs: Mapping[str, Any], targets: Any, reference: Mapping[str, Any]) -> dict[str, float]:
        import numpy as np

        logits = rows(next(iter(outputs.values())))
        predicted = np.where(np.isnan(logits).any(1), -1, logits.argmax(1))  # a skipped item's NaN row is wrong
        return {"accuracy": float(np.mean(predicted == np.asarray(targets).reshape(-1)))}

    def why_not(self, key: str) -> str:
        return "classification has no such setting"
