"""Training loops: plain supervised training and Hinton distillation, one readable loop for both.

Distillation loss (Hinton et al. 2015): alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T),
where _T is softmax at temperature T. The T^2 factor keeps the soft-target gradients on the same scale as the hard ones
when T changes. Teacher logits are computed once (the teacher is the slow part) and reused every epoch: the
training data carries no augmentation, so they never change.
"""
from __future__ import annotations

import math
from typing import Any

from compress.errors import CompressError
from compress.train.config import TrainConfig


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


def predict_logits(model, x, *, batch_size: int = 512):
    """Eval-mode logits for all of x, in batches, without gradients."""
    import torch

    model.eval()
    with torch.inference_mode():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate(model, x, y, *, batch_size: int = 512) -> float:
    """Top-1 accuracy of model on (x, y). In a process group each process scores its share and the counts are
    summed, so every process gets the same figure as one process would."""
    from compress.dist.group import current

    world = current()
    if not world.distributed:
        logits = predict_logits(model, x, batch_size=batch_size)
        return float((logits.argmax(1) == y).float().mean())
    part = world.shard(len(x))
    logits = predict_logits(model, x[part].to(world.device), batch_size=batch_size)
    correct, total = world.sum([float((logits.argmax(1).cpu() == y[part]).sum()), float(len(y[part]))])
    return correct / total


def fit(model, train: tuple[Any, Any], val: tuple[Any, Any], cfg: TrainConfig, *, seed: int, batch_size: int = 64,
        teacher_logits=None, temperature: float = 4.0, alpha: float = 1.0, desc: str = "train",
        progress: bool = True, origin: str | None = None) -> dict:
    """Train `model` in place; keep the weights of the best validation epoch. Returns the history.

    With `teacher_logits` (one row per training example) the loss is `kd_loss`; without, plain cross-entropy.
    A non-finite loss stops with an error that names the epoch and batch, prefixed with `origin` (the config key
    to change, e.g. 'pipeline.toml: distill.lr').
    """
    import copy

    import torch
    from compress.dist.group import current
    from compress.progress import progress as progress_bar

    x, y = train
    xv, yv = val
    world = current()  # in a process group: DDP, this rank's share of each batch (README "Several processes")
    torch.manual_seed(seed + world.rank)  # dropout differs across ranks, as their examples do
    model.to(world.device)
    net = world.wrap(model)
    batch_size //= world.size
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(x) / world.size) / batch_size)
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    best = {"accuracy": -1.0, "epoch": -1, "state": copy.deepcopy(model.state_dict())}
    history: list[dict] = []
    bar = progress_bar(range(cfg.epochs), desc=desc, unit="epoch", enabled=progress)
    for epoch in bar:
        model.train()
        order = world.order(len(x), seed=seed, epoch=epoch)
        total_loss = 0.0
        for b, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start:start + batch_size]
            logits = net(x[idx].to(world.device))
            tl = teacher_logits[idx].to(world.device) if teacher_logits is not None else None
            loss = kd_loss(logits, tl, y[idx].to(world.device), temperature=temperature, alpha=alpha,
                           label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise CompressError(f"{origin or desc}: {desc} loss became {loss.item()} at epoch {epoch + 1}, "
                                    f"batch {b + 1}; lower the learning rate (lr = {cfg.lr:g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        acc = evaluate(model, xv, yv)  # the same figure on every rank, so every rank stops at the same epoch
        total_loss, seen = world.sum([total_loss, float(len(order))])
        history.append({"epoch": epoch + 1, "loss": total_loss / seen, "val_accuracy": acc})
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", val=f"{acc:.4f}")
        if acc > best["accuracy"]:
            best = {"accuracy": acc, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
        elif epoch + 1 - best["epoch"] >= cfg.patience:
            break
    model.load_state_dict(best["state"])
    world.broadcast_weights(model)
    model.cpu().eval()
    return {"best_epoch": best["epoch"], "val_accuracy": best["accuracy"], "epochs_run": len(history),
            "history": history}
