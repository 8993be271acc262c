"""Training loops: plain supervised training and Hinton distillation, one readable loop for both.

Distillation loss (Hinton et al. 2015): alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T),
where _T is softmax at temperature T. The T^2 factor keeps the soft-target gradients on the same scale as the hard ones
when T changes. Without augmentation the teacher's logits are computed once per training example (the teacher is
the slow part) and looked up by index every epoch; with augmentation each batch is new, so the teacher runs on the
same augmented batch as the student (`Teacher`).
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


def as_loader(data: Any, *, batch_size: int, shuffle: bool = False, seed: int = 0, workers: int = 0) -> Any:
    """A DataLoader of `(index, inputs, target)` batches from a DataLoader (as it is), a Dataset, or an (x, y) pair of
    tensors (tests and scripts that hold their data in memory)."""
    from torch.utils.data import DataLoader

    from compress.data import loader

    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)):
        from compress.data.datasets import TensorPairs

        data = TensorPairs(*data)
    return loader(data, batch_size=batch_size, shuffle=shuffle, seed=seed, workers=workers)


def predict_logits(model, x, *, batch_size: int = 512, workers: int = 0):
    """Eval-mode logits for every example of x (a Tensor, a Dataset or a DataLoader), in order, without gradients."""
    import torch

    from compress.data import forward

    model.eval()
    with torch.inference_mode():
        if isinstance(x, torch.Tensor):
            return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        return torch.cat([forward(model, inputs) for _, inputs, _ in as_loader(x, batch_size=batch_size,
                                                                               workers=workers)])


def evaluate(model, x, y=None, *, batch_size: int = 512, workers: int = 0) -> float:
    """Top-1 accuracy of model on (x, y) tensors, or on a Dataset/DataLoader of `(index, inputs, target)` items."""
    if y is not None:
        logits = predict_logits(model, x, batch_size=batch_size)
        return float((logits.argmax(1) == y).float().mean())
    correct, total = count_correct(model, as_loader(x, batch_size=batch_size, workers=workers))
    return correct / max(total, 1)


def count_correct(model, batches, *, device: str = "cpu") -> tuple[int, int]:
    """(top-1 hits, examples) of model over `(index, inputs, target)` batches."""
    import torch

    from compress.data import forward
    from compress.dist.group import to_device

    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for _, inputs, target in batches:
            correct += int((forward(model, to_device(inputs, device)).argmax(1).cpu() == target).sum())
            total += len(target)
    return correct, total


class Teacher:
    """Where distillation's teacher outputs come from: a per-index cache (`logits`, rows of the training split,
    possibly memory-mapped) or a model run on the same (augmented) batch as the student (`model`)."""

    def __init__(self, *, logits: Any = None, model: Any = None):
        self.logits, self.model = logits, model

    @property
    def mode(self) -> str:
        return "cached" if self.model is None else "on-the-fly"

    def __call__(self, index: Any, inputs: Any) -> Any:
        import numpy as np
        import torch

        from compress.data import forward

        if self.model is not None:
            with torch.inference_mode():
                return forward(self.model.eval(), inputs).clone()
        if isinstance(self.logits, torch.Tensor):
            return self.logits[index]
        return torch.from_numpy(np.asarray(self.logits[index.numpy()], dtype=np.float32))


def fit(model, train: Any, val: Any, cfg: TrainConfig, *, seed: int, batch_size: int = 64,
        teacher_logits=None, teacher: "Teacher | None" = None, temperature: float = 4.0, alpha: float = 1.0,
        desc: str = "train", progress: bool = True, origin: str | None = None, workers: int = 0) -> dict:
    """Train `model` in place; keep the weights of the best validation epoch. Returns the history.

    `train` and `val` are DataLoaders, Datasets of `(index, inputs, target)` items, or (x, y) tensor pairs. With a
    `teacher` (or `teacher_logits`: one row per training example) the loss is `kd_loss`; without, cross-entropy.
    A non-finite loss stops with an error that names the epoch and batch, prefixed with `origin` (the config key
    to change, e.g. 'pipeline.toml: distill.lr').
    """
    import copy

    import torch
    from compress.data import forward
    from compress.dist.group import current, to_device
    from compress.progress import progress as progress_bar

    if teacher is None and teacher_logits is not None:
        teacher = Teacher(logits=teacher_logits)
    world = current()  # in a process group: DDP and this rank's share of every batch (README "Several processes")
    torch.manual_seed(seed + world.rank)  # dropout differs across ranks, as their examples do
    model.to(world.device)
    net = world.wrap(model)
    train_loader = _train_loader(train, batch_size=batch_size, seed=seed, workers=workers, world=world)
    val_loader = as_loader(world.share(val), batch_size=512, workers=workers)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_loader)
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
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # a DistributedSampler reshuffles per epoch
        model.train()
        total_loss, seen = 0.0, 0
        for b, (index, inputs, target) in enumerate(train_loader):
            inputs, target = to_device(inputs, world.device), target.to(world.device)
            tl = to_device(teacher(index, inputs), world.device) if teacher is not None else None
            logits = forward(net, inputs)
            loss = kd_loss(logits, tl, target, temperature=temperature, alpha=alpha,
                           label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise CompressError(f"{origin or desc}: {desc} loss became {loss.item()} at epoch {epoch + 1}, "
                                    f"batch {b + 1}; lower the learning rate (lr = {cfg.lr:g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(target)
            seen += len(target)
        # every rank scores its share and the counts are summed: one figure, so every rank picks the same epoch
        correct, counted, total_loss, seen = world.sum([*count_correct(model, val_loader, device=world.device),
                                                        total_loss, seen])
        acc = correct / max(counted, 1)
        history.append({"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "val_accuracy": acc})
        bar.set_postfix(loss=f"{total_loss / max(seen, 1):.4f}", val=f"{acc:.4f}")
        if acc > best["accuracy"]:
            best = {"accuracy": acc, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
        elif epoch + 1 - best["epoch"] >= cfg.patience:
            break
    model.load_state_dict(best["state"])
    world.broadcast_weights(model)  # every rank holds rank 0's bits: what rank 0 writes is what all trained
    model.cpu().eval()
    return {"best_epoch": best["epoch"], "val_accuracy": best["accuracy"], "epochs_run": len(history),
            "history": history}


def _train_loader(data: Any, *, batch_size: int, seed: int, workers: int, world: Any) -> Any:
    """The training batches of this process: DistributedSampler with the run's seed (one process too), and
    batch_size / world size examples per step, so step k of N processes covers the examples of step k of one.
    A DataLoader passed in is used as it is."""
    from torch.utils.data import DataLoader, DistributedSampler

    from compress.data import loader

    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)):
        from compress.data.datasets import TensorPairs

        data = TensorPairs(*data)
    sampler = DistributedSampler(data, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed)
    return loader(data, batch_size=batch_size // world.size, shuffle=False, seed=seed, workers=workers,
                  sampler=sampler)
