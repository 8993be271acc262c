"""Training settings: the optimiser, schedule and precision of any run, and distillation's loss on top of it.

Keys left out of the file take the model family's defaults (compress.families): a transformer student gets a
transformer's learning rate, warm-up, weight decay, clipping and bf16 autocast; a CNN the small-CNN recipe.
`resolved(section, family, role)` fills them in, and the report records the values a run used.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from compress.section import Section

Precision = Literal["fp32", "bf16", "auto"]


class TrainConfig(Section):
    """Optimiser, schedule and precision for one training run (teacher training, distillation, control,
    fine-tuning). Keys set to None take the model family's default (listed in docs/config.md)."""

    epochs: int = Field(30, ge=1, le=100_000, description="Maximum number of passes over the training set.")
    lr: float | None = Field(None, gt=0, le=10, description="Peak learning rate (linear warm-up, then a cosine "
                             "decay to ~0 over `epochs` or `max_minutes`). Default by family: 3e-3 to train a CNN "
                             "teacher, 1e-2 to distil a CNN student, 1e-4 / 3e-4 for a transformer.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="AdamW, or SGD with Nesterov momentum 0.9.")
    weight_decay: float | None = Field(None, ge=0, description="Decoupled weight decay (AdamW) / L2 (SGD). "
                                       "Default by family: 1e-4 (CNN), 0.01 (transformer).")
    warmup_epochs: float | None = Field(None, ge=0, description="Linear warm-up, in epochs (fractions allowed), "
                                        "before the cosine decay. Default by family: 1 (CNN), 6% of `epochs` "
                                        "(transformer).")
    patience: int = Field(10, ge=1, description="Early stopping: stop after this many epochs without a better "
                          "validation figure (the task's primary metric); the best epoch's weights are kept.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Classification: label smoothing of the "
                                   "hard-label loss.")
    grad_clip: float | None = Field(None, ge=0, description="Clip the gradients' global norm to this (0: off). "
                                    "Default by family: off (CNN), 1.0 (transformer).")
    precision: Precision | None = Field(None, description="'bf16' runs forward passes under torch.autocast in "
                                        "bfloat16 (weights, optimiser state and losses stay fp32); 'auto' = bf16 "
                                        "where the CPU (AMX, AVX-512 BF16) or GPU has bfloat16 instructions, else "
                                        "fp32. Default by family: fp32 (CNN), auto (transformer). bf16 on a CPU "
                                        "without those instructions is slower: a one-line warning says so.")
    steps_per_epoch: int | None = Field(None, ge=1, description="Optimiser steps per epoch, at most: each epoch "
                                        "then trains on a new shuffled subset of the training rows (validation "
                                        "after each). Default: a whole pass over them.")
    max_minutes: float | None = Field(None, gt=0, description="Stop training after this many minutes of wall clock "
                                      "(the learning-rate schedule then follows the clock); the best validation "
                                      "epoch is kept.")
    freeze: tuple[str, ...] = Field((), description="Parameter names to keep fixed (glob patterns over "
                                    "model.named_parameters(), e.g. ['features.0.*']).")
    freeze_embeddings: bool = Field(False, description="Keep the token embeddings fixed (no gradient, no optimiser "
                                    "state): for a student cut from its teacher, whose embeddings are the "
                                    "teacher's. On MiniLM they are 2/3 of the student's weights and a step is "
                                    "about a quarter faster without them. A model without nn.Embedding layers "
                                    "is refused.")


class DistillConfig(TrainConfig):
    """[distill]: the student's training. Optimiser/schedule keys are those of [teacher.train]; the loss keys
    apply to the task named (others are refused at load)."""

    epochs: int = Field(30, ge=1, le=100_000, description="Maximum epochs (early stopping on the validation "
                        "figure).")
    patience: int = Field(30, ge=1, description="Epochs without a better validation figure before stopping.")
    temperature: float = Field(4.0, gt=0, le=100, description="Classification: softmax temperature T of the soft "
                               "targets (KL * T^2).")
    alpha: float = Field(0.3, ge=0, le=1, description="Classification, and tensors with labels: weight of the "
                         "hard (label) loss; 1 - alpha weighs the teacher.")
    loss: str | None = Field(None, description="Embedding task: 'cosine' (mean of 1 - cos, the default) or 'mse' "
                             "(scaled by the teacher's mean square). Tensors task: the hard loss against labels, "
                             "'mse' (normalised MSE on every output a label's shape matches, the default) or "
                             "'module:function' (def loss(outputs: dict[str, Tensor], targets) -> Tensor).")
    output_weights: dict[str, float] | None = Field(None, description="Tensors task: weight of each output's KD "
                                                    "term by output name (1 each by default).")
    hidden_weight: float = Field(0.0, ge=0, description="hf: models: weight of intermediate-layer KD on hidden "
                                 "states (student layer i learns teacher layer layer_map[i]; MSE on real tokens).")
    attention_weight: float = Field(0.0, ge=0, description="hf: models: weight of KD on attention distributions "
                                    "(KL per query token, MiniLM/TinyBERT style) through the same layer map; needs "
                                    "the slower eager attention.")
    relation_weight: float = Field(0.0, ge=0, description="Embedding task: weight of relational KD: each example's "
                                   "similarity distribution over a bank of teacher embeddings of training examples "
                                   "(KL at relation_temperature), which teaches the teacher's neighbours "
                                   "(neighbour_overlap@10).")
    relation_temperature: float = Field(0.05, gt=0, le=10, description="Embedding task: softmax temperature of "
                                        "relational KD over cosine similarities.")
    relation_bank: int = Field(4096, ge=16, le=1_000_000, description="Embedding task: training examples whose "
                               "teacher embeddings form relational KD's bank (chosen with the seed).")
    layer_map: tuple[int, ...] | None = Field(None, description="hf: models: teacher layer (0-based) each student "
                                              "layer learns from; default: the layers a from_teacher student kept, "
                                              "else evenly spaced ending at the teacher's last.")
    control: bool = Field(False, description="Also train the same student on labels only, with the same budget and "
                          "seed, so the report shows whether the teacher helped; when the control beats the "
                          "student on validation, the control ships (same architecture, same cost).")

    @field_validator("loss")
    @classmethod
    def _loss_form(cls, v: str | None) -> str | None:
        if v is not None and v not in ("cosine", "mse") and (":" not in v or v.startswith(":") or v.endswith(":")):
            raise ValueError(f"expected 'cosine', 'mse' or 'module:function', got {v!r}")
        return v


RESOLVED = ("lr", "weight_decay", "warmup_epochs", "grad_clip", "precision")
"""The keys whose default comes from the model family."""


def resolved(section: Any, family: Any, role: str) -> Any:
    """`section` with every key the file left out (None) set to the family's default for `role`."""
    defaults = family.defaults(role, section.epochs)
    update = {k: defaults[k] for k in RESOLVED if getattr(section, k) is None}
    return section.model_copy(update=update) if update else section


def recipe(settings: Any) -> dict[str, Any]:
    """What the report records of the settings a run trained with."""
    keys = ("epochs", "optimizer", "patience", "label_smoothing", "max_minutes", *RESOLVED)
    return {k: getattr(settings, k) for k in keys}
