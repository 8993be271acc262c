"""What a training step minimises (`Objective`, with the teacher's outputs from `Teacher`), and what can go wrong in
one, as one line naming what failed: the user's forward or loss raising, a loss that is not a scalar tensor, a loss
that is not finite (`step_loss`). KeyboardInterrupt and compress's own errors pass through as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from compress.errors import PEER_LOST, CompressError, LossNotScalar, first_line, shorten
from compress.tasks.base import as_outputs


class Teacher:
    """Where distillation's teacher outputs come from: a per-index cache (`outputs`: {name: rows of the training
    split}, possibly memory-mapped) or a model run on the same (augmented) batch as the student (`model`)."""

    def __init__(self, *, outputs: Mapping[str, Any] | None = None, model: Any = None, logits: Any = None,
                 source: str | None = None):
        self.outputs = dict(outputs) if outputs is not None else ({"logits": logits} if logits is not None else None)
        self.model = model
        self.source = source
        """The outputs file the rows come from (compress.train.outputs), so torchrun workers map the same file."""

    @property
    def mode(self) -> str:
        return "cached" if self.model is None else "on-the-fly"

    def __call__(self, index: Any, inputs: Any) -> Any:
        """The teacher's raw outputs for a batch: a dict of cached rows, or whatever its forward returns."""
        import numpy as np
        import torch

        from compress.data import forward

        if self.model is not None:
            with torch.inference_mode():
                out = forward(self.model.eval(), inputs)
            return {k: v.clone() for k, v in out.items()} if isinstance(out, Mapping) else (
                tuple(v.clone() for v in out) if isinstance(out, (tuple, list)) else out.clone())
        rows = index.numpy()
        return {name: torch.from_numpy(np.asarray(table[rows], dtype=np.float32)) for name, table in
                self.outputs.items()}


@dataclass(frozen=True)
class Blame:
    """Who a failing training step names, each as 'file: key: spec' where known."""

    model: str = "the model"
    """The model being trained ('p.toml: student.model: nets:small')."""
    teacher: str = "the teacher"
    """The teacher whose outputs the step reads."""
    loss: str = "the loss"
    """The loss ('p.toml: distill.loss: losses:ctc' for the user's own, else the section that sets it)."""
    user_loss: bool = False
    """Whether the loss calls the user's `[distill] loss` function (its errors arrive wrapped by the task)."""


class StepFailed(CompressError):
    """The user's code (a forward, a loss) raised inside a training step: `what` failed with `cause`. `fit` adds the
    epoch and batch; elsewhere (a validation loss) the line stands as it is."""

    def __init__(self, what: str, cause: BaseException) -> None:
        self.what, self.cause = what, cause
        super().__init__(f"{what} raised {type(cause).__name__}: {first_line(cause)}")

    def at(self, position: "Position") -> str:
        return f"{self.what} raised {type(self.cause).__name__} in training ({position}): {first_line(self.cause)}"


@dataclass(frozen=True)
class Position:
    """Where in a fit a step is: `desc` (teacher, student, control...), 1-based epoch and batch, and how many
    optimiser steps were taken before it."""

    desc: str
    epoch: int
    batch: int
    steps: int

    def __str__(self) -> str:
        return f"{self.desc}, epoch {self.epoch}, batch {self.batch}"


class Objective:
    """What a training step minimises: `loss_fn(student outputs, teacher outputs or None, targets, index)` over the
    outputs named `names`, plus the family's intermediate-layer terms (`kd_terms`) when given. `blame` names the
    model and the loss when either fails."""

    def __init__(self, loss_fn: Callable, names: tuple[str, ...], *, teacher: Teacher | None = None,
                 kd_terms: Any = None, targets: bool = True, blame: Blame | None = None) -> None:
        self.loss_fn, self.names, self.teacher, self.kd_terms, self.targets = loss_fn, names, teacher, kd_terms, targets
        self.blame = blame or Blame()

    def __call__(self, net: Any, index: Any, inputs: Any, target: Any, device: str) -> Any:
        from compress.data import forward
        from compress.dist.group import to_device

        extra = None
        if self.kd_terms is not None and self.teacher is not None:
            raw, t_raw, extra = _guarded(f"{self.blame.model}'s forward", self.kd_terms, net, self.teacher.model,
                                         inputs)
        else:
            raw = _guarded(f"{self.blame.model}'s forward", forward, net, inputs)
            t_raw = None if self.teacher is None else self.teacher(index, inputs) if self.teacher.model is None \
                else _guarded(f"{self.blame.teacher}'s forward", self.teacher, index, inputs)
        student = {k: v.float() for k, v in as_outputs(raw, self.names).items()}
        teacher = None if t_raw is None else {k: to_device(v, device).float()
                                              for k, v in as_outputs(t_raw, self.names).items()}
        try:
            loss = self.loss_fn(student, teacher, target if self.targets else None, index)
        except CompressError as exc:
            cause = exc.__cause__
            if self.blame.user_loss and isinstance(cause, Exception) and not isinstance(cause, CompressError):
                raise StepFailed(self.blame.loss, cause) from cause  # the task's wrapper names no file
            raise
        except Exception as exc:
            if not_the_users(exc):
                raise
            raise StepFailed(self.blame.loss, exc) from exc
        return loss + extra if extra is not None else loss

    def outputs_finite(self, net: Any, index: Any, inputs: Any) -> tuple[bool, bool]:
        """Whether the trained model's outputs and the teacher's on this batch are all finite (run again, without
        gradients: only to explain a loss that is not). DDP's wrapper is left out: its forward talks to the other
        ranks, which are not running this one."""
        import torch

        from compress.data import forward

        def finite(raw: Any) -> bool:
            return all(bool(torch.isfinite(v.float()).all()) for v in as_outputs(raw, self.names).values())

        plain = net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net
        with torch.no_grad():
            mine = finite(forward(plain, inputs))
            theirs = self.teacher is None or finite(self.teacher(index, inputs))
        return mine, theirs


def classification_objective(teacher: Teacher | None, *, temperature: float = 4.0, alpha: float = 1.0,
                             label_smoothing: float = 0.0) -> Objective:
    """The classification task's loss (Hinton KD, or cross-entropy alone without a teacher) on one logits output."""
    from types import SimpleNamespace

    from compress.tasks.classification import Classification

    keys = SimpleNamespace(temperature=temperature, alpha=alpha, label_smoothing=label_smoothing)
    return Objective(Classification().make_loss(keys, teacher=teacher is not None, labels=True), ("logits",),
                     teacher=teacher)


def blame_for(origin: str, role: str, spec: str, task: Any, loss: str | None) -> Blame:
    """Who a failing step of a pipeline's training names: `origin` is its section ('p.toml: distill'), `role`
    'student' or 'teacher' (the model's key), `loss` the [distill] loss setting (a user's when it is not one of
    the task's own)."""
    file = origin.rsplit(": ", 1)[0] + ": " if ": " in origin else ""
    user = bool(task.user_loss and loss is not None and loss not in task.losses)
    return Blame(model=f"{file}{role}.model: {spec}", teacher=f"{file}teacher.model",
                 loss=f"{file}distill.loss: {loss}" if user else f"{origin}: the loss", user_loss=user)


def step_loss(objective: Objective, net: Any, batch: tuple, device: str, *, bf16: bool, position: Position,
              origin: str, lr: float) -> Any:
    """One step's loss, checked: a scalar tensor with a gradient, finite. A failure of the user's code, or a loss
    that is none of those, is one line naming the model or the loss, the epoch and the batch."""
    import torch

    index, x, target = batch
    try:
        with torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = objective(net, index, x, target, device)
    except StepFailed as failed:
        raise CompressError(failed.at(position)) from failed.cause
    except LossNotScalar as bad:  # the user's part of a sum, checked where the task adds it
        _check_scalar(bad.value, objective.blame.loss, position)
        raise
    _check_scalar(loss, objective.blame.loss, position)
    if not torch.isfinite(loss):
        raise CompressError(_not_finite(objective, net, batch, float(loss.item()), position, origin, lr))
    return loss


def _guarded(what: str, fn: Callable, *args: Any) -> Any:
    """fn(*args); an exception from it becomes StepFailed naming `what`, unless it is not the user's code's to answer
    for: ours, an interrupt, memory running out, or the process group failing (under DDP the wrapped forward talks to
    the other ranks: a dead peer's 'Connection closed by peer' must reach compress.dist.failure as it is)."""
    try:
        return fn(*args)
    except CompressError:
        raise
    except Exception as exc:
        if not_the_users(exc):
            raise
        raise StepFailed(what, exc) from exc


def not_the_users(exc: BaseException) -> bool:
    """Whether an exception from inside the user's forward is the machine's or the process group's, not the code's."""
    import torch

    machine = (torch.OutOfMemoryError, MemoryError, getattr(torch.distributed, "DistError", ()))
    return isinstance(exc, machine) or any(m in str(exc) for m in PEER_LOST)


def _check_scalar(loss: Any, what: str, position: Position) -> None:
    """A loss is a tensor of one value that depends on the outputs; a float or an unreduced tensor is refused."""
    import torch

    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        if loss.requires_grad or not torch.is_grad_enabled():
            return
        raise CompressError(f"{what} returned a tensor without a gradient in training ({position}); compute it "
                            "from the outputs with torch operations (not .item(), .detach() or numpy)")
    if isinstance(loss, torch.Tensor):
        got = f"a tensor of shape {tuple(loss.shape)}"
    else:
        got = f"{type(loss).__name__} {shorten(repr(loss), 60)}"
    raise CompressError(f"{what} returned {got} in training ({position}); expected a scalar tensor computed from the "
                        "outputs (reduce it, e.g. with .mean())")


def _not_finite(objective: Objective, net: Any, batch: tuple, value: float, position: Position, origin: str,
                lr: float) -> str:
    """Why the loss is NaN/inf. Before the first optimiser step no weight has moved, so the learning rate cannot be
    the cause: the model's outputs, the teacher's, or the loss on finite outputs."""
    if position.steps > 0:
        return (f"{origin}: {position.desc} loss became {value} at epoch {position.epoch}, batch {position.batch}; "
                f"lower the learning rate (lr = {lr:g})")
    index, x, _ = batch
    mine, theirs = objective.outputs_finite(net, index, x)
    blame = objective.blame
    if not mine:
        return (f"{blame.model} outputs NaN/inf on the first training batch, before any optimiser step changed a "
                f"weight ({position.desc} loss {value}); check the model's forward or its inputs")
    if not theirs:
        return (f"{blame.teacher}'s outputs for the first training batch hold NaN/inf ({position.desc} loss {value} "
                "before any optimiser step); check the teacher or its inputs")
    return (f"{blame.loss} returned {value} on the first training batch from finite outputs, before any optimiser "
            f"step ({position}); check the loss and the targets")
