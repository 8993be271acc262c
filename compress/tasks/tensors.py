"""Tensors: any number of outputs of any shape (a detector's boxes and scores, a depth map, a regression value).

KD loss: for each output, the MSE between student and teacher normalised by the teacher's mean square on the batch
(so outputs of different scales weigh alike), averaged with `[distill] output_weights` (1 each by default).
With labels (npz `y`, or `y_NAME` for several targets; any shape and dtype) the hard loss is the same normalised
MSE on every output whose shape a label matches (by name for `y_NAME`, by shape for a single `y`), or the user's
`[distill] loss = "module:function"` (`def loss(outputs: dict[str, Tensor], targets) -> Tensor`); with both, the
loss is alpha * hard + (1 - alpha) * KD.

Figures, per output, against the teacher's outputs on the same examples: `cosine/NAME` (mean over examples of
the cosine between the flattened outputs) and `sqnr_db/NAME` (signal-to-noise ratio in dB, capped at 80), their
mean `cosine` (the primary figure unless the user gives a metric) and the worst `sqnr_db`; `mse/NAME` against
a matching label.
"""
from __future__ import annotations

from typing import Any, Mapping

from compress.errors import CompressError
from compress.tasks import Metric
from compress.tasks.base import LossFn, Task, check_batch_first, rows

SQNR_CAP_DB = 80.0


def relative_error(sqnr_db: float) -> float:
    """|out - ref| / |ref| (L2) from an SQNR in dB (the `sqnr_db` figures here), bounded at 1e15 (an all-zero
    reference gives an SQNR of thousands of dB below zero)."""
    return float(10 ** (min(-sqnr_db, 300.0) / 20))


def normalised_mse(student, reference):
    """MSE scaled by the reference's mean square on the batch (1.0 = as far off as predicting zeros)."""
    ref = reference.float()
    return (student.float() - ref).pow(2).mean() / ref.pow(2).mean().clamp(min=1e-12)


def matched_labels(names: tuple[str, ...], shapes: Mapping[str, tuple], targets: Any) -> dict[str, str]:
    """{output name: target key} for every output a label fits: `y_NAME` by name (and shape), a single `y` by
    shape. Shapes are batch-first, of the same batch (or split) as `targets`: an array, or a dict of arrays."""
    if targets is None:
        return {}
    if isinstance(targets, Mapping):
        return {n: n for n in names if n in targets and tuple(targets[n].shape) == tuple(shapes[n])}
    fits = [n for n in names if tuple(targets.shape) == tuple(shapes[n])]
    return {fits[0]: ""} if fits else {}


def _target(targets: Any, key: str) -> Any:
    return targets if key == "" else targets[key]


class Tensors(Task):
    name = "tensors"
    primary = Metric("cosine", True)
    budget_key = "max_metric_drop"
    labels = "optional"
    default_output = "output"
    reads = frozenset({"output_weights", "alpha"})
    losses = ("mse",)
    user_loss = True

    def check_outputs(self, outputs: Mapping[str, Any], *, num_classes: int, teacher: Mapping[str, Any] | None,
                      origin: str, spec: str) -> None:
        check_batch_first(outputs, origin, spec)
        if teacher is None:
            return
        mine = {n: tuple(v.shape) for n, v in outputs.items()}
        theirs = {n: tuple(v.shape) for n, v in teacher.items()}
        if list(mine.items()) != list(theirs.items()):  # in order too: the export names outputs by position
            raise CompressError(f"{origin}.model: {spec} returns outputs {_shapes(mine)} for 2 examples, the teacher "
                                f"{_shapes(theirs)}; the student learns each teacher output, so names and shapes "
                                "must match (return a dict with the same keys, in the same order)")

    def make_loss(self, settings: Any, *, teacher: bool, labels: bool, train_reference: Any = None,
                  base_dir: Any = None, seed: int = 0) -> LossFn:
        weights = dict(settings.output_weights or {})
        user = None
        if labels and settings.loss not in (None, "mse"):
            from compress.imports import import_object

            user = import_object(settings.loss, base_dir, "distill.loss")
        alpha = settings.alpha if (teacher and labels) else (0.0 if teacher else 1.0)

        def loss(student, teacher_out, target, index):
            total = 0.0
            if teacher_out is not None and alpha < 1.0:
                w = [weights.get(n, 1.0) for n in student]
                kd = sum(wi * normalised_mse(student[n], teacher_out[n]) for wi, n in zip(w, student)) / max(sum(w),
                                                                                                         1e-12)
                total = total + (1.0 - alpha) * kd
            if target is not None and alpha > 0.0:
                total = total + alpha * _hard(student, target, user)
            return total

        return loss

    def metrics(self, outputs: Mapping[str, Any], targets: Any, reference: Mapping[str, Any]) -> dict[str, float]:
        import numpy as np

        figures: dict[str, float] = {}
        cosines, sqnrs = [], []
        for name, out in outputs.items():
            cos, noise, signal = _agreement(out, reference[name])
            if not (np.isfinite(noise) and np.isfinite(signal)):  # a NaN or inf output: the worst, not the cap
                sqnr = -SQNR_CAP_DB
            else:
                sqnr = SQNR_CAP_DB if noise == 0 else min(SQNR_CAP_DB, 10 * np.log10(max(signal, 1e-300) / noise))
            figures[f"cosine/{name}"], figures[f"sqnr_db/{name}"] = float(np.mean(cos)), float(sqnr)
            cosines.append(float(np.mean(cos)))
            sqnrs.append(float(sqnr))
        figures["cosine"], figures["sqnr_db"] = float(np.mean(cosines)), float(min(sqnrs))
        shapes = {n: np.shape(v) for n, v in outputs.items()}
        arrays = ({k: np.asarray(v) for k, v in targets.items()} if isinstance(targets, Mapping)
                  else None if targets is None else np.asarray(targets))
        for name, key in matched_labels(tuple(outputs), shapes, arrays).items():
            label = np.asarray(_target(arrays, key), dtype=np.float64)
            figures[f"mse/{name}"] = float(np.mean((np.asarray(outputs[name], dtype=np.float64) - label) ** 2))
        return figures

    def why_not(self, key: str) -> str:
        if key in ("temperature", "label_smoothing"):
            return "the tensors task compares raw outputs (normalised MSE), not class probabilities"
        if key.startswith("relation"):
            return "relational KD is for the embedding task"
        return super().why_not(key)


CHUNK_VALUES = 1 << 22
"""Values of an output compared at a time in float64: a detector's 64 x 640 x 640 map compared whole took 2 s a
scoring in copies and page faults (a quarter of a gated quantize run's scoring time)."""


def _agreement(out: Any, ref: Any) -> tuple[Any, float, float]:
    """Per-row cosine of `out` to `ref` (batch-first arrays), the summed squared difference and the summed square
    of `ref`, in float64, a few rows at a time. An output of one value a sample (a regressor's, Silero VAD's speech
    probability) is compared as one vector over the batch: the cosine of a single value is its sign, and an 8-bit
    output that rounds a small probability to 0 read 0 there."""
    import numpy as np

    if not np.ndim(out) or not np.ndim(ref) or int(np.prod(np.shape(out)[1:])) == 1:
        out, ref = np.reshape(out, (1, -1)), np.reshape(ref, (1, -1))
    step = max(1, CHUNK_VALUES // max(1, int(np.prod(np.shape(out)[1:]))))
    cos, noise, signal = [], 0.0, 0.0
    for start in range(0, len(out), step):
        a, b = rows(out[start:start + step]), rows(ref[start:start + step])
        norms = np.sqrt(np.einsum("ij,ij->i", a, a)) * np.sqrt(np.einsum("ij,ij->i", b, b))
        cos.append(np.where(norms > 0, np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-300),
                            np.all(a == b, axis=1).astype(np.float64)))
        d = a - b  # (rows() may hand back the caller's own float64 array: never written to)
        noise += float(np.einsum("ij,ij->", d, d))
        signal += float(np.einsum("ij,ij->", b, b))
    return np.concatenate(cos), noise, signal


def _hard(student: Mapping[str, Any], target: Any, user: Any) -> Any:
    if user is not None:
        try:
            value = user(student, target)
        except CompressError:
            raise
        except Exception as exc:
            raise CompressError(f"distill.loss: {getattr(user, '__name__', user)} raised {type(exc).__name__}: "
                                f"{exc}") from exc
        _check_user_loss(value, student)
        return value
    shapes = {n: tuple(v.shape) for n, v in student.items()}
    matched = matched_labels(tuple(student), shapes, target)
    if not matched:
        raise CompressError("distill.loss: no label matches an output's shape; give [distill] loss = "
                            "'module:function' to compare your outputs with your targets")
    return sum(normalised_mse(student[n], _target(target, k)) for n, k in matched.items()) / len(matched)


def _check_user_loss(value: Any, student: Mapping[str, Any]) -> None:
    """The user's loss is a scalar tensor with a gradient when the outputs have one: added to the distillation
    term (alpha < 1), a number or a detached tensor trained the student on the teacher alone, without a word."""
    import torch

    grad = torch.is_grad_enabled() and any(getattr(v, "requires_grad", False) for v in student.values())
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or (grad and not value.requires_grad):
        from compress.errors import LossNotScalar

        raise LossNotScalar(value)


def _shapes(shapes: Mapping[str, tuple]) -> str:
    return "{" + ", ".join(f"{n}: {tuple(s)}" for n, s in shapes.items()) + "}"
