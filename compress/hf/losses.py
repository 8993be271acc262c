"""Distillation losses for transformers: pooled embeddings (MSE or cosine), hidden states through a layer map,
attention distributions (MiniLM / TinyBERT style).

A layer map pairs student layer i with teacher layer m[i] (0-based transformer blocks). For a student cut from its
teacher with `layers = [0, 2, 5]` the natural map is that list: each kept block learns to stay what it was.
"""
from __future__ import annotations

from typing import Literal, Sequence

EmbeddingLoss = Literal["mse", "cosine"]


def embedding_loss(student, teacher, kind: EmbeddingLoss = "cosine"):
    """Loss between pooled sentence embeddings: `cosine` = mean(1 - cos), `mse` = mean squared error scaled by the
    teacher's mean square (so it reads the same whatever the embeddings' scale)."""
    import torch.nn.functional as F

    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    return F.mse_loss(student, teacher) / teacher.pow(2).mean().clamp(min=1e-12)


def relation_loss(student, teacher, bank, temperature: float = 0.05, exclude=None):
    """KL(teacher || student) of each text's similarity distribution over a fixed bank of teacher embeddings
    (CompRess-style relational KD): softmax over cosine similarities to the bank at `temperature`. It teaches which
    texts are near each other, which `neighbour_overlap@k` asks and a per-text cosine loss does not. `exclude`
    (batch, bank) bool marks bank rows that are the text itself."""
    import torch.nn.functional as F

    bank = F.normalize(bank, dim=-1)
    s = F.normalize(student, dim=-1) @ bank.T / temperature
    t = F.normalize(teacher, dim=-1) @ bank.T / temperature
    if exclude is not None:
        s, t = s.masked_fill(exclude, -1e4), t.masked_fill(exclude, -1e4)
    return F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="batchmean")


def hidden_loss(student_hidden: Sequence, teacher_hidden: Sequence, layer_map: Sequence[int], attention_mask,
                projection=None):
    """Mean over mapped layers of the MSE between student and teacher token states, on unmasked tokens only,
    each normalised by the teacher layer's mean square. `*_hidden` are HF `hidden_states` tuples (index 0 is the
    embedding output, so block i's output is i + 1). `projection` maps student width to teacher width."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(student_hidden[0].dtype)
    tokens = mask.sum().clamp(min=1)
    total = 0.0
    for s_idx, t_idx in enumerate(layer_map):
        s = student_hidden[s_idx + 1]
        t = teacher_hidden[t_idx + 1][:, : s.shape[1]]
        if projection is not None:
            s = projection(s)
        err = ((s - t) ** 2 * mask).sum() / (tokens * s.shape[-1])
        total = total + err / ((t ** 2 * mask).sum() / (tokens * t.shape[-1])).clamp(min=1e-12)
    return total / max(len(layer_map), 1) if layer_map else torch.zeros(())


def attention_loss(student_att: Sequence, teacher_att: Sequence, layer_map: Sequence[int], attention_mask):
    """KL(teacher || student) of the attention distributions, per query token, averaged over unmasked queries and
    mapped layers. Head counts may differ: both sides are then averaged over heads first."""
    import torch

    mask = attention_mask.to(student_att[0].dtype)
    total = 0.0
    for s_idx, t_idx in enumerate(layer_map):
        s, t = student_att[s_idx], teacher_att[t_idx][..., : student_att[s_idx].shape[-2], : student_att[s_idx].shape[-1]]
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        kl = (t * (t.clamp(min=1e-9).log() - s.clamp(min=1e-9).log())).sum(-1)  # (batch, heads, queries)
        total = total + (kl.mean(1) * mask).sum() / mask.sum().clamp(min=1)
    return total / max(len(layer_map), 1) if layer_map else torch.zeros(())


def default_layer_map(student_layers: int, teacher_layers: int, kept: Sequence[int] | None = None) -> list[int]:
    """The layers a student mimics: those it was cut from, else evenly spaced ending at the teacher's last."""
    if kept is not None and len(kept) == student_layers:
        return list(kept)
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]
