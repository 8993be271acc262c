"""Training settings: the optimiser and schedule of any run, and distillation's loss on top of it."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.section import Section


class TrainConfig(Section):
    """Optimiser and schedule for one training run (teacher training, distillation, control, fine-tuning)."""

    epochs: int = Field(30, ge=1, le=100_000, description="Maximum number of passes over the training set.")
    lr: float = Field(3e-3, gt=0, le=10, description="Peak learning rate (cosine-decayed to ~0 over `epochs`).")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="AdamW, or SGD with Nesterov momentum 0.9.")
    weight_decay: float = Field(1e-4, ge=0, description="Decoupled weight decay (AdamW) / L2 (SGD).")
    warmup_epochs: int = Field(1, ge=0, description="Linear warm-up epochs before the cosine decay.")
    patience: int = Field(10, ge=1, description="Early stopping: stop after this many epochs without a better "
                          "validation accuracy; the best epoch's weights are kept.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the hard-label loss.")
class DistillConfig(TrainConfig):
    """[distill]: the student's training. Optimiser/schedule keys are those of [teacher.train]."""

    epochs: int = Field(30, ge=1, le=100_000, description="Maximum epochs (early stopping on validation accuracy).")
    lr: float = Field(1e-2, gt=0, le=10, description="Peak learning rate; small students like a higher one.")
    patience: int = Field(30, ge=1, description="Epochs without a better validation accuracy before stopping.")
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature T of the soft targets (KL * T^2).")
    alpha: float = Field(0.3, ge=0, le=1, description="Weight of the hard-label loss; 1 - alpha weighs the teacher.")
    loss: Literal["mse", "cosine"] = Field("cosine", description="Embedding task: the loss between student and "
                                           "teacher pooled embeddings (cosine = mean of 1 - cos; mse scaled by the "
                                           "teacher's mean square).")
    hidden_weight: float = Field(0.0, ge=0, description="hf: models: weight of intermediate-layer KD on hidden "
                                 "states (student layer i learns teacher layer layer_map[i]; MSE on real tokens).")
    attention_weight: float = Field(0.0, ge=0, description="hf: models: weight of KD on attention distributions "
                                    "(KL per query token, MiniLM/TinyBERT style) through the same layer map; needs "
                                    "the slower eager attention.")
    relation_weight: float = Field(0.0, ge=0, description="hf: models, embedding task: weight of relational KD: "
                                   "each text's similarity distribution over a bank of teacher embeddings of "
                                   "training texts (KL at relation_temperature), which teaches the teacher's "
                                   "neighbours (neighbour_overlap@10).")
    relation_temperature: float = Field(0.05, gt=0, le=10, description="Softmax temperature of relational KD over "
                                        "cosine similarities (lower: only the nearest texts count).")
    relation_bank: int = Field(4096, ge=16, le=1_000_000, description="Training texts whose teacher embeddings form "
                               "relational KD's bank (chosen with the seed, computed once).")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="hf: models: 'bf16' runs training's forward "
                                               "passes under torch.autocast in bfloat16 (weights, optimiser state "
                                               "and losses stay fp32). About 1.5x faster steps on CPUs with AMX or "
                                               "AVX-512 BF16 (MiniLM student, this machine); slower on CPUs "
                                               "without them.")
    freeze_embeddings: bool = Field(False, description="hf: models: keep the student's token embeddings fixed "
                                    "(no gradient, no optimiser state): for a student cut from the teacher, whose "
                                    "embeddings are the teacher's. On MiniLM they are 2/3 of the student's weights, "
                                    "and a training step is about a quarter faster without them.")
    layer_map: tuple[int, ...] | None = Field(None, description="Teacher layer (0-based) each student layer "
                                              "learns from; default: the layers a from_teacher student kept, else "
                                              "evenly spaced ending at the teacher's last.")
    max_minutes: float | None = Field(None, gt=0, description="hf: models: stop training after this many minutes "
                                      "of wall clock (the learning-rate schedule then decays over that time); the "
                                      "best validation epoch is kept.")
    control: bool = Field(False, description="Also train the same student on labels only, with the same budget and "
                          "seed, so the report shows whether the teacher helped.")
