"""Distilling a transformer student from a transformer teacher, both tasks, with a wall-clock budget.

One loop: the student's output (pooled embedding or logits) learns the teacher's (embedding: cosine or MSE;
classification: Hinton KD at temperature T plus alpha x cross-entropy), optionally plus hidden states through a
layer map and attention distributions (`hidden_weight`, `attention_weight`). Batches are grouped by length and the
model trims shared padding, so a batch of short sentences costs what its longest one does, not max_length.
Validation after every epoch keeps the best weights (by cosine to the teacher, or by accuracy).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from compress.errors import CompressError
from compress.hf.losses import attention_loss, embedding_loss, hidden_loss, relation_loss


@dataclass(frozen=True)
class TextDistillSettings:
    """The recipe (the pipeline fills it from [distill]; benchmarks build it directly)."""

    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 32
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    loss: str = "cosine"
    """Embedding task: 'cosine' or 'mse' on pooled embeddings."""
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    layer_map: tuple[int, ...] | None = None
    temperature: float = 4.0
    alpha: float = 0.3
    relation_weight: float = 0.0
    """Embedding task: weight of the relational loss over a bank of teacher embeddings (losses.relation_loss)."""
    relation_temperature: float = 0.05
    relation_bank: int = 4096
    """Training texts in that bank (chosen with the seed; their teacher embeddings are computed once)."""
    precision: str = "fp32"
    """'bf16': forward passes under torch.autocast (bfloat16 matmuls; weights, optimiser and losses stay fp32)."""
    freeze_embeddings: bool = False
    """Keep the student's token embeddings as they are (no gradient, no optimiser state)."""
    max_seconds: float | None = None
    """Stop training after this many seconds (checked between batches; the last epoch is then evaluated)."""
    extra: dict = field(default_factory=dict)


def length_batches(lengths, batch_size: int, generator) -> list:
    """Random batches of similar lengths: shuffle, sort within chunks of 50 batches, shuffle the batch order."""
    import torch

    order = torch.randperm(len(lengths), generator=generator)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[torch.argsort(lengths[part], stable=True)]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def lr_factor(step: int, total_steps: int, elapsed: float, max_seconds: float | None, warmup_fraction: float) -> float:
    """The learning rate's multiplier: linear warm-up over the first `warmup_fraction` of training, then a cosine to
    zero. Progress is steps over all epochs or, with a time budget, whichever is further along, steps or seconds,
    so the rate has decayed when the budget ends instead of being cut off at its peak (or still warming up)."""
    done = step / max(1, total_steps)
    if max_seconds:
        done = max(done, elapsed / max_seconds)
    if done < warmup_fraction:
        return max(done / warmup_fraction, 1 / max(1, total_steps))
    return 0.5 * (1 + math.cos(math.pi * min((done - warmup_fraction) / max(1e-9, 1 - warmup_fraction), 1.0)))


def predict(model, encoded: dict, *, batch_size: int = 128):
    """Eval-mode outputs of `model` on every row of `encoded` (rows sorted by length for speed, then restored)."""
    import torch

    model.eval()
    lengths = encoded["attention_mask"].sum(1)
    order = torch.argsort(lengths, stable=True)
    outs = []
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            outs.append(model(**{k: v[idx].long() for k, v in encoded.items()}))
    result = torch.cat(outs)
    restored = torch.empty_like(result)
    restored[order] = result
    return restored


def distill_text(student, teacher, train: dict, settings: TextDistillSettings, *, task: str, evaluate: Callable,
                 teacher_outputs=None, labels=None, seed: int = 0, origin: str = "distill",
                 progress: Callable[[str], None] | None = None) -> dict:
    """Train `student` in place. `train` holds the tokenized training rows; `teacher_outputs` their teacher
    outputs (computed here when None and needed); `labels` (classification) int64 labels or None for a
    teacher-only or labels-only run (`teacher=None`). `evaluate(student) -> float` scores an epoch (higher is
    better). Returns the history with the best epoch, whose weights the student ends with."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    need_states = teacher is not None and (settings.hidden_weight > 0 or settings.attention_weight > 0)
    if teacher is not None and teacher_outputs is None and not need_states:
        teacher_outputs = predict(teacher, train)
    if teacher is not None:
        teacher.eval()
    bank = _relation_bank(teacher, train, settings, seed) if task == "embedding" else None
    if settings.freeze_embeddings:
        student.encoder.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    lengths = train["attention_mask"].sum(1)
    steps_per_epoch = math.ceil(len(lengths) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    start, cpu_start = time.perf_counter(), time.process_time()

    def lr_at(step: int) -> float:
        return lr_factor(step, total, time.perf_counter() - start, settings.max_seconds, settings.warmup_fraction)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    best = {"score": -math.inf, "epoch": 0, "state": copy.deepcopy(student.state_dict())}
    history: list[dict] = []
    stopped = False
    for epoch in range(settings.epochs):
        student.train()
        total_loss, seen = 0.0, 0
        for b, idx in enumerate(length_batches(lengths, settings.batch_size, gen)):
            batch = {k: v[idx].long() for k, v in train.items()}
            loss = _batch_loss(student, teacher, batch, idx, settings, task=task, teacher_outputs=teacher_outputs,
                               labels=labels, need_states=need_states, bank=bank)
            if not torch.isfinite(loss):
                raise CompressError(f"{origin}.lr: loss became {loss.item()} at epoch {epoch + 1}, batch {b + 1}; "
                                    f"lower the learning rate (lr = {settings.lr:g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
            seen += len(idx)
            if settings.max_seconds is not None and time.perf_counter() - start > settings.max_seconds:
                stopped = True
                break
        score = float(evaluate(student))
        history.append({"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "score": score, "examples": seen,
                        "seconds": round(time.perf_counter() - start, 1),
                        "cpu_seconds": round(time.process_time() - cpu_start, 1)})
        if progress:
            progress(f"epoch {epoch + 1}: loss {total_loss / max(seen, 1):.4f}, score {score:.4f}, "
                     f"{time.perf_counter() - start:.0f} s")
        if score > best["score"]:
            best = {"score": score, "epoch": epoch + 1, "state": copy.deepcopy(student.state_dict())}
        if stopped:
            break
    student.load_state_dict(best["state"])
    student.eval()
    if settings.freeze_embeddings:
        student.encoder.get_input_embeddings().weight.requires_grad_(True)
    return {"best_epoch": best["epoch"], "best_score": best["score"], "epochs_run": len(history),
            "stopped_by_time": stopped, "train_seconds": round(time.perf_counter() - start, 1), "history": history}


def _relation_bank(teacher, train: dict, settings: TextDistillSettings, seed: int):
    """(bank row indices, their teacher embeddings) for the relational loss, or None when it is off."""
    import torch

    if teacher is None or settings.relation_weight <= 0:
        return None
    n = len(train["attention_mask"])
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[: min(settings.relation_bank, n)]
    return rows, predict(teacher, {k: v[rows] for k, v in train.items()})


def _batch_loss(student, teacher, batch: dict, idx, settings: TextDistillSettings, *, task: str, teacher_outputs,
                labels, need_states: bool, bank=None):
    import torch
    import torch.nn.functional as F

    from compress.train import kd_loss

    from compress.hf.model import trim_padding

    ids, mask, types = trim_padding(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    batch = {"input_ids": ids, "attention_mask": mask, **({"token_type_ids": types} if types is not None else {})}
    want_att = settings.attention_weight > 0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
        out, s_hidden, s_att = _fp32(student.features(**batch, hidden=need_states, attentions=want_att))
        t_out = t_hidden = t_att = None
        if need_states:
            with torch.no_grad():
                t_out, t_hidden, t_att = _fp32(teacher.features(**batch, hidden=True, attentions=want_att))
    if not need_states and teacher_outputs is not None:
        t_out = teacher_outputs[idx]
    if task == "embedding":
        loss = embedding_loss(out, t_out, settings.loss)
        if bank is not None:
            rows, embeddings = bank
            exclude = idx.unsqueeze(1) == rows.unsqueeze(0)
            loss = loss + settings.relation_weight * relation_loss(out, t_out, embeddings,
                                                                   settings.relation_temperature, exclude)
    else:
        y = labels[idx]
        loss = kd_loss(out, t_out, y, temperature=settings.temperature, alpha=settings.alpha if t_out is not None
                       else 1.0) if t_out is not None else F.cross_entropy(out, y)
    if need_states:
        layer_map = settings.layer_map or ()
        if settings.hidden_weight > 0:
            loss = loss + settings.hidden_weight * hidden_loss(s_hidden, t_hidden, layer_map, mask)
        if want_att:
            loss = loss + settings.attention_weight * attention_loss(s_att, t_att, layer_map, mask)
    return loss


def _fp32(features: tuple) -> tuple:
    """(output, hidden states, attentions) in float32, for losses computed outside autocast's bfloat16."""
    out, hidden, att = features
    return (out.float(), hidden and tuple(h.float() for h in hidden), att and tuple(a.float() for a in att))


def layer_map_for(kept: Sequence[int] | None, student_layers: int, teacher_layers: int) -> tuple[int, ...]:
    from compress.hf.losses import default_layer_map

    return tuple(default_layer_map(student_layers, teacher_layers, kept))
