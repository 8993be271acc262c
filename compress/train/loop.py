"""The one training loop, for every model family and task: `fit`.

Each step: the student's outputs, the teacher's (cached rows looked up by index, or the teacher run on the same
batch when the data is augmented or intermediate-layer KD needs its hidden states), the task's loss (plus the
family's KD terms), then AdamW or SGD with a linear warm-up and a cosine decay that follows the epochs or, with
`max_minutes`, the wall clock. Optional: bf16 autocast, gradient clipping, frozen parameters. After every epoch
the validation figures (the task's, plus the user's metric) pick the best epoch and stop early; one line per
epoch goes to a log (a bar in a terminal). Under torchrun every process runs this same loop with DDP.
"""
from __future__ import annotations

import contextvars
import copy
import math
import time
from typing import Any, Callable

from compress.errors import CompressError
from compress.tasks import Metric
from compress.tasks.base import as_outputs, batch_first_advice, output_names_of
from compress.train.config import TrainConfig
from compress.train.objective import (Objective, Position, Teacher,  # Objective, Teacher: importable from here too
                                      classification_objective, step_loss)


EPOCH_HOOK: contextvars.ContextVar[Callable[[str, int, float], None] | None] = contextvars.ContextVar(
    "compress_epoch_hook", default=None)
"""Called after every epoch with (desc, epoch, the primary validation figure): a search reports it to its pruner,
which may stop the run by raising (compress.study). None outside a search."""


def predict(model: Any, data: Any, *, inputs: Any = None, names: tuple[str, ...] | None = None,
            batch_size: int = 256, workers: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Eval-mode outputs of `model` on every example of `data` (a Dataset of `(index, inputs, target)` items, a
    DataLoader, or a Tensor), in order, as {output name: numpy array}. Token rows are read sorted by length (a batch
    costs its longest row) and put back in order."""
    import numpy as np
    import torch

    from compress.data import forward
    from compress.data.inputs import in_order, in_place, item_indices
    from compress.dist.group import to_device
    from compress.heap import Watch

    model.eval()
    order = inputs.order(data) if inputs is not None and not isinstance(data, torch.Tensor) else None
    if isinstance(data, torch.Tensor):
        batches: Any = ((None, data[i:i + batch_size], None) for i in range(0, len(data), batch_size))
    else:
        source = torch.utils.data.Subset(data, order) if order is not None else data
        batches = as_loader(source, batch_size=batch_size, workers=workers)
    parts: dict[str, list] = {}
    seen: list = []
    growth = Watch()
    with torch.inference_mode():
        for index, x, _ in batches:
            out = forward(model, to_device(x, device))
            names = names or output_names_of(out, "logits")
            for name, value in as_outputs(out, names).items():
                _check_batch_first(name, value, len(index) if index is not None else len(x))
                parts.setdefault(name, []).append(value.float().cpu().numpy())
            seen += [np.asarray(index)] if index is not None else []  # skipped items leave their rows out
            del out
            growth.check()  # freed activations go back to the system once the pass grows (compress/heap.py)
    outputs = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    if isinstance(data, torch.utils.data.Dataset) and seen and sum(map(len, seen)) != len(data):
        outputs = in_place(outputs, np.concatenate(seen), item_indices(source))
    return in_order(outputs, order)



def _check_batch_first(name: str, value: Any, examples: int) -> None:
    """Rows are joined on axis 0: an output with the batch elsewhere ([T, B, C]) would be mixed up or refused by
    numpy (validate checks the same on 2 examples, compress.tasks.base.check_batch_first)."""
    if value.dim() == 0 or value.shape[0] != examples:
        raise CompressError(f"output {name!r} has shape {tuple(value.shape)} for a batch of {examples} examples; "
                            f"{batch_first_advice(examples)}")


def predict_logits(model, x, *, batch_size: int = 512, workers: int = 0):
    """Eval-mode logits (a Tensor) of a single-output model on every example of `x`, in order."""
    import torch

    return torch.from_numpy(next(iter(predict(model, x, batch_size=batch_size, workers=workers).values())))


def evaluate(model, x, y=None, *, batch_size: int = 512, workers: int = 0) -> float:
    """Top-1 accuracy of a classifier on (x, y) tensors, or on a Dataset/DataLoader of `(index, inputs, target)`."""
    import numpy as np

    if y is None:
        from compress.data.datasets import stack_targets

        loader = as_loader(x, batch_size=batch_size, workers=workers)
        y = stack_targets([t for _, _, t in loader])
        x = loader.dataset
    logits = next(iter(predict(model, x, batch_size=batch_size, workers=workers).values()))
    return float(np.mean(logits.argmax(1) == np.asarray(y)))


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


def lr_factor(step: int, total_steps: int, warmup_steps: float, elapsed: float = 0.0,
              max_seconds: float | None = None) -> float:
    """The learning rate's multiplier: linear warm-up over `warmup_steps`, then a cosine to zero. Progress is steps
    over all epochs or, with a time budget, whichever is further along, steps or seconds, so the rate has decayed
    when the budget ends instead of being cut off at its peak (or still warming up)."""
    total = max(1, total_steps)
    warm = min(warmup_steps, total) / total
    done = step / total
    if max_seconds:
        done = max(done, elapsed / max_seconds)
    if done < warm:
        return (step + 1) / warmup_steps if not max_seconds else max(done / warm, 1 / total)
    return 0.5 * (1 + math.cos(math.pi * min((done - warm) / max(1e-9, 1 - warm), 1.0)))


def bf16_supported(device: str = "cpu") -> bool:
    """Whether this CPU (AMX or AVX-512 BF16) or GPU has bfloat16 instructions."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_if_bf16_is_slow(precision: str, origin: str) -> bool:
    """Warn (and say so) when bf16 autocast was asked for on a CPU without bfloat16 instructions."""
    if precision != "bf16" or bf16_supported():
        return False
    import logging

    logging.getLogger("compress").warning(
        "warning: %s: precision = \"bf16\": this CPU has no bfloat16 instructions (AMX, AVX-512 BF16), so training "
        "will be slower than in fp32", origin)
    return True


def fit(model, train: Any, val: Any, cfg: TrainConfig, *, seed: int, batch_size: int = 64,
        objective: Objective | None = None, evaluate: Callable[[Any], dict] | None = None,
        primary: "Metric | Callable[[], Metric] | None" = None, teacher_logits: Any = None,
        teacher: Teacher | None = None, temperature: float = 4.0, alpha: float = 1.0, desc: str = "train",
        progress: bool = True, origin: str | None = None, workers: int = 0, inputs: Any = None,
        frozen: list | None = None) -> dict:
    """Train `model` in place; keep the weights of the best validation epoch. Returns the history.

    `train` is a Dataset of `(index, inputs, target)` items (or an (x, y) tensor pair); `objective` what a step
    minimises (default: classification KD with `teacher` / `teacher_logits`, or cross-entropy). `evaluate(model)`
    gives the validation figures and `primary` the one that picks the best epoch (default: accuracy on `val`; a
    callable when its name is known only once figures exist, as for a user's metric's first figure).
    `cfg` holds every setting (compress.train.config.resolved fills the family's defaults); `frozen`: parameters kept
    fixed besides cfg.freeze. A failing step (the user's forward or loss raising, a loss that is not a finite scalar
    tensor) stops with one line naming the model or the loss (objective.blame), the epoch and the batch; a loss that
    turns non-finite after training began names `origin` (the lr key).
    """
    import torch

    from compress.dist.group import current, to_device
    from compress.progress import progress as progress_bar

    cfg = _with_defaults(cfg)
    if objective is None:
        if teacher is None and teacher_logits is not None:
            teacher = Teacher(logits=teacher_logits)
        objective = classification_objective(teacher, temperature=temperature, alpha=alpha,
                                             label_smoothing=cfg.label_smoothing)
    if evaluate is None:
        evaluate, primary = _accuracy_on(val, workers), Metric("accuracy", True)
    fixed_metric = primary or Metric("accuracy", True)
    metric_of = primary if callable(primary) else (lambda: fixed_metric)
    world = current()  # in a process group: DDP and this rank's share of every batch (README "Several processes")
    torch.manual_seed(seed + world.rank)  # dropout differs across ranks, as their examples do
    fixed = _freeze(model, cfg, frozen or [])
    net = world.wrap(model.to(world.device))
    loader = _train_loader(train, batch_size=batch_size, seed=seed, workers=workers, world=world, inputs=inputs)
    stepper = _Stepper(cfg, [p for p in model.parameters() if p.requires_grad], len(loader), world)
    precision = _precision(cfg.precision, world.device)
    best = {"score": metric_of().worst(), "epoch": -1, "figures": {}, "state": copy.deepcopy(model.state_dict())}
    history: list[dict] = []
    bar = progress_bar(total=cfg.epochs, desc=desc, unit="epoch", enabled=progress)
    for epoch in range(cfg.epochs):
        for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)  # a DistributedSampler or length-grouped batches reshuffle per epoch
        model.train()
        total_loss, seen = 0.0, 0
        for b, (index, x, target) in enumerate(loader):
            batch = (index, to_device(x, world.device), to_device(target, world.device))
            loss = step_loss(objective, net, batch, world.device, bf16=precision == "bf16", origin=origin or desc,
                             lr=cfg.lr, position=Position(desc, epoch + 1, b + 1, stepper.steps))
            total_loss, seen = total_loss + loss.item() * len(index), seen + len(index)
            if stepper.step(loss) or b + 1 >= stepper.steps_per_epoch:
                break
        total_loss, seen = world.sum([total_loss, seen])
        figures, primary = evaluate(model), metric_of()
        score = world.broadcast_value(float(figures[primary.name]))  # one figure: every rank picks the same epoch
        history.append({"epoch": epoch + 1, "loss": total_loss / max(seen, 1), f"val_{primary.name}": score,
                        "val": figures, "examples": int(seen), **stepper.clocks()})
        bar.set_postfix(loss=f"{total_loss / max(seen, 1):.4f}", **{primary.name: f"{score:.4f}"})
        bar.update(1)  # one line per epoch in a log, the last one too (a time budget ends the loop early)
        _epoch_end(model, desc, epoch + 1, score)
        if primary.better(score, best["score"]) or best["epoch"] < 0:
            best = {"score": score, "epoch": epoch + 1, "figures": figures, "state": copy.deepcopy(model.state_dict())}
        elif epoch + 1 - best["epoch"] >= cfg.patience:
            break
        if stepper.stopped:
            break
    bar.close()
    model.load_state_dict(best["state"])  # then every rank holds rank 0's bits: what rank 0 writes is what all trained
    world.broadcast_weights(model)
    for p in fixed:
        p.requires_grad_(True)
    model.cpu().eval()
    primary = metric_of()
    return {"best_epoch": best["epoch"], f"val_{primary.name}": best["score"], "primary": primary.to_json(),
            "val": best["figures"], "epochs_run": len(history), "stopped_by_time": stepper.stopped,
            "precision": precision, "train_seconds": stepper.clocks()["seconds"], "history": history}


def _epoch_end(model: Any, desc: str, epoch: int, score: float) -> None:
    """After each epoch: the search's hook (EPOCH_HOOK) hears the figure, and a model with `epoch_end` (the QAT
    graph, compress.qat, which freezes its ranges for the last epochs) hears the epoch."""
    (EPOCH_HOOK.get() or (lambda *_: None))(desc, epoch, score)
    getattr(model, "epoch_end", lambda _: None)(epoch)


class _Stepper:
    """The optimiser (AdamW or SGD with Nesterov momentum), gradient clipping, and the learning-rate schedule of one
    fit, which follows the steps or, with max_minutes, rank 0's clock (every process decays alike and stops at the
    same step)."""

    def __init__(self, cfg: TrainConfig, params: list, steps_per_epoch: int, world: Any) -> None:
        import torch

        self.cfg, self.params, self.world = cfg, params, world
        # steps_per_epoch caps an epoch; equal shards, so every rank stops at the same step
        steps_per_epoch = self.steps_per_epoch = min(steps_per_epoch, cfg.steps_per_epoch or steps_per_epoch)
        if cfg.optimizer == "adamw":
            self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
        total, warm = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
        self.max_seconds = cfg.max_minutes * 60 if cfg.max_minutes else None
        self.elapsed, self.stopped, self.steps = 0.0, False, 0
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: lr_factor(step, total, warm, self.elapsed, self.max_seconds))
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        from compress.heap import StepWatch

        self.heap = StepWatch()  # a heap that fragments past the working set is trimmed (compress/heap.py)

    def step(self, loss: Any) -> bool:
        """Backward, clip, step, schedule; True when the time budget is spent."""
        import torch

        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.steps += 1
        if self.max_seconds is not None:
            self.elapsed = self.world.broadcast_value(time.perf_counter() - self.start)
            self.stopped = self.elapsed > self.max_seconds
        self.sched.step()
        self.heap.step()
        return self.stopped

    def clocks(self) -> dict[str, float]:
        return {"seconds": round(time.perf_counter() - self.start, 1),
                "cpu_seconds": round(time.process_time() - self.cpu_start, 1)}


def _with_defaults(cfg: TrainConfig) -> TrainConfig:
    """Settings a caller left unresolved (fit used on its own) take the plain torch recipe: the defaults of
    compress.families for a teacher run (TrainConfig) or a student run (DistillConfig)."""
    from compress.families import Family
    from compress.train.config import DistillConfig, resolved

    return resolved(cfg, Family(), "student" if isinstance(cfg, DistillConfig) else "teacher")


def _precision(asked: str, device: str) -> str:
    """'auto' -> bf16 where the hardware has it, else fp32."""
    if asked == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return asked


def _freeze(model: Any, cfg: TrainConfig, extra: list) -> list:
    """Turn off gradients for cfg.freeze's name patterns and `extra` parameters; returns what was frozen."""
    import fnmatch

    fixed = [p for name, p in model.named_parameters() if any(fnmatch.fnmatch(name, pat) for pat in cfg.freeze)]
    fixed += [p for p in extra if all(p is not q for q in fixed)]
    for p in fixed:
        p.requires_grad_(False)
    return fixed


def _accuracy_on(val: Any, workers: int) -> Callable[[Any], dict]:
    def figures(model: Any) -> dict:
        x, y = val if isinstance(val, (tuple, list)) else (val, None)
        return {"accuracy": evaluate(model, x, y, workers=workers)}

    return figures


def _train_loader(data: Any, *, batch_size: int, seed: int, workers: int, world: Any, inputs: Any = None) -> Any:
    """The training batches of this process: length-grouped batches for token inputs, else DistributedSampler with
    the run's seed (one process too) and batch_size / world size examples per step, so step k of N processes covers
    the examples of step k of one. A DataLoader passed in is used as it is.

    A last batch of a single example is dropped: BatchNorm cannot train on one (it raised "Expected more than 1 value
    per channel") and one example makes a noisy step anyway. Dropped, not merged into the batch before: the loader's
    own drop_last keeps its length known (the schedule counts steps). Whether to drop is decided on one process's
    count (the data's size against the whole batch), so N processes take the steps one takes; DistributedSampler
    pads every rank's share to the same length, so every rank drops alike. Under DDP a rank's last batch can still
    hold one example where one process's holds more (66 rows, batch 32, 2 processes: 16, 16, 1 a rank): every rank
    then moves one example from its batch before into it (16, 15, 2: each example once, the same steps as one
    process; _NoLoneBatch), or, at 2 examples a rank, adds its first example of the epoch. The sampler reshuffles
    each epoch, so a different example sits out each time."""
    from torch.utils.data import DataLoader, DistributedSampler

    from compress.data import loader

    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)):
        from compress.data.datasets import TensorPairs

        data = TensorPairs(*data)
    batches = inputs.batch_sampler(data, batch_size=batch_size, seed=seed, world=world) if inputs is not None else None
    if batches is not None:
        return loader(data, batch_size=1, shuffle=False, seed=seed, workers=workers, batch_sampler=batches)
    sampler = DistributedSampler(data, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed)
    per_rank = batch_size // world.size
    lone = len(data) > batch_size and len(data) % batch_size == 1  # one process's count: as many steps on N
    if not lone and per_rank > 1 and len(sampler) % per_rank == 1:  # this rank's last batch alone holds one
        return loader(data, batch_size=1, shuffle=False, seed=seed, workers=workers,
                      batch_sampler=_NoLoneBatch(sampler, per_rank))
    return loader(data, batch_size=per_rank, shuffle=False, seed=seed, workers=workers, sampler=sampler,
                  drop_last=lone)


class _NoLoneBatch:
    """A rank's batches of `per_rank` examples from its sampler, whose last would hold a single example: it takes one
    from the batch before (16, 15, 2), or at 2 a batch the rank's first example of the epoch (BatchNorm needs two
    different examples: one fed twice has no variance, and trained nothing before it)."""

    def __init__(self, sampler: Any, per_rank: int) -> None:
        self.sampler, self.per_rank = sampler, per_rank

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.per_rank)

    def __iter__(self) -> Any:
        indices = list(self.sampler)
        batches = [indices[k:k + self.per_rank] for k in range(0, len(indices), self.per_rank)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            if self.per_rank > 2:
                batches[-1].insert(0, batches[-2].pop())
            else:
                batches[-1].append(indices[0])
        yield from batches
