"""The one training loop on a transformer student: frozen token embeddings, bfloat16 autocast, hidden-state KD."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from compress.hf.model import build_text_model, cut_layers
from compress.hf.text import tokenize
from compress.tasks import Metric
from compress.tasks.embedding import Embedding, cosine
from compress.train import Objective, Teacher, TrainConfig, fit
from tests.hf.conftest import ANIMALS, VEHICLES, sentence, token_dataset, token_inputs, torch_outputs


@pytest.fixture(scope="module")
def texts(tokenizer):
    rng = random.Random(3)
    rows = [sentence(rng, rng.choice([ANIMALS, VEHICLES])) for _ in range(160)]
    return tokenize(tokenizer, rows[:128], max_length=16), tokenize(tokenizer, rows[128:], max_length=16)


def _distill(bert_dir, texts, *, freeze_embeddings=False, precision="fp32", hidden_weight=0.0):
    from types import SimpleNamespace

    from compress.families.hf import HFFamily
    from compress.hf.losses import TransformerKD

    torch.manual_seed(0)
    teacher = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    student = cut_layers(teacher, [0, 3], "t")
    with torch.no_grad():  # a random tiny teacher's layers barely move its output: start the student's layers off it
        for p in student.encoder.encoder.parameters():
            p.add_(0.5 * torch.randn_like(p))
    train, val = texts
    t_val = torch_outputs(teacher, val, bert_dir)
    start = cosine(torch_outputs(student, val, bert_dir), t_val)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    loss = Embedding().make_loss(SimpleNamespace(loss="cosine", relation_weight=0.0), teacher=True, labels=False)
    kd = TransformerKD((0, 3), hidden_weight) if hidden_weight else None
    source = Teacher(model=teacher) if kd else Teacher(outputs={"embedding": torch_outputs(teacher, train, bert_dir)})
    objective = Objective(loss, ("embedding",), teacher=source, kd_terms=kd, targets=False)
    cfg = TrainConfig(epochs=6, lr=3e-3, weight_decay=0.01, warmup_epochs=0.36, grad_clip=1.0, precision=precision,
                      freeze_embeddings=freeze_embeddings)
    frozen = HFFamily().embedding_parameters(student) if freeze_embeddings else []
    history = fit(student, token_dataset(train), None, cfg, seed=0, batch_size=16, objective=objective,
                  evaluate=lambda m: {"cosine": cosine(torch_outputs(m, val, bert_dir), t_val)},
                  primary=Metric("cosine"), inputs=token_inputs(train, bert_dir), frozen=frozen, progress=False)
    return student, before, start, history


def test_frozen_token_embeddings_stay_the_teachers_and_the_rest_learns(bert_dir, texts):
    # execute
    student, before, start, history = _distill(bert_dir, texts, freeze_embeddings=True)
    # assert: word embeddings untouched (and trainable again afterwards); layers changed; closer to the teacher
    words = student.encoder.get_input_embeddings().weight
    assert torch.equal(words, before["encoder.embeddings.word_embeddings.weight"])
    assert words.requires_grad
    assert not torch.equal(student.state_dict()["encoder.encoder.layer.0.attention.self.query.weight"],
                           before["encoder.encoder.layer.0.attention.self.query.weight"])
    assert history["val_cosine"] > start + 0.01


@pytest.mark.parametrize("hidden_weight", [0.0, 1.0])
def test_bf16_autocast_trains_the_student_towards_the_teacher(bert_dir, texts, hidden_weight):
    # execute: bfloat16 forward passes, with and without hidden-state KD (whose losses must come back in fp32)
    student, _, start, history = _distill(bert_dir, texts, precision="bf16", hidden_weight=hidden_weight)
    # assert: fp32 weights; the student moved towards the teacher
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert all(h["loss"] == h["loss"] for h in history["history"])  # finite, not NaN
    assert history["val_cosine"] > start + 0.01 and history["precision"] == "bf16"


def test_bf16_on_a_cpu_without_bfloat16_instructions_is_a_warning(monkeypatch, caplog):
    from compress.train import warn_if_bf16_is_slow

    # setup: a CPU that lacks AMX / AVX-512 BF16
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    # execute
    with caplog.at_level("WARNING", logger="compress"):
        warned = warn_if_bf16_is_slow("bf16", "p.toml: distill.precision")
        quiet = warn_if_bf16_is_slow("fp32", "p.toml: distill.precision")
    # assert: one line naming the key; fp32 says nothing
    assert warned and not quiet
    assert [r.getMessage() for r in caplog.records] == [
        'warning: p.toml: distill.precision: precision = "bf16": this CPU has no bfloat16 instructions (AMX, '
        'AVX-512 BF16), so training will be slower than in fp32']
