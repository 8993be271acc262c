"""Intermediate-layer distillation for transformers: hidden states through a layer map, attention distributions
(MiniLM / TinyBERT style). The task's own loss (logits, embeddings) comes from compress.tasks; these terms add to it.

A layer map pairs student layer i with teacher layer m[i] (0-based transformer blocks). For a student cut from its
teacher with `layers = [0, 2, 5]` the natural map is that list: each kept block learns to stay what it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


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


@dataclass(frozen=True)
class TransformerKD:
    """Hidden-state and attention KD between a TextModel student and teacher, through `layer_map`: run both on the
    same batch (the student through `net`, which may be DDP-wrapped, so gradients are averaged), return their
    outputs and the weighted intermediate losses."""

    layer_map: tuple[int, ...]
    hidden_weight: float = 0.0
    attention_weight: float = 0.0

    needs_teacher_model = True

    def __call__(self, net: Any, teacher: Any, inputs: dict) -> tuple[Any, Any, Any]:
        import torch

        from compress.hf.model import trim_padding

        ids, mask, types = trim_padding(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
        batch = {"input_ids": ids, "attention_mask": mask, **({"token_type_ids": types} if types is not None else {})}
        want_att = self.attention_weight > 0
        out, s_hidden, s_att = net(**batch, hidden=True, attentions=want_att)
        with torch.no_grad():
            t_out, t_hidden, t_att = teacher(**batch, hidden=True, attentions=want_att)
        extra = out.new_zeros(())
        if self.hidden_weight > 0:
            extra = extra + self.hidden_weight * hidden_loss(_float(s_hidden), _float(t_hidden), self.layer_map, mask)
        if want_att:
            extra = extra + self.attention_weight * attention_loss(_float(s_att), _float(t_att), self.layer_map, mask)
        return out, t_out, extra


def _float(states: Any) -> Any:
    return tuple(s.float() for s in states) if states else states
