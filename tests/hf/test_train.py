"""compress.hf.train: the distillation loop's options (frozen token embeddings, bfloat16 autocast)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from compress.hf.metrics import cosine
from compress.hf.model import build_text_model, cut_layers
from compress.hf.text import tokenize
from compress.hf.train import TextDistillSettings, distill_text, predict
from tests.hf.conftest import ANIMALS, VEHICLES, sentence


@pytest.fixture(scope="module")
def texts(tokenizer):
    rng = random.Random(3)
    rows = [sentence(rng, rng.choice([ANIMALS, VEHICLES])) for _ in range(160)]
    return tokenize(tokenizer, rows[:128], max_length=16), tokenize(tokenizer, rows[128:], max_length=16)


def _distill(bert_dir, texts, **settings):
    torch.manual_seed(0)
    teacher = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    student = cut_layers(teacher, [0, 3], "t")
    with torch.no_grad():  # a random tiny teacher's layers barely move its output: start the student's layers off it
        for p in student.encoder.encoder.parameters():
            p.add_(0.5 * torch.randn_like(p))
    train, val = texts
    t_val = predict(teacher, val).numpy()
    start = cosine(predict(student, val).numpy(), t_val)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    history = distill_text(student, teacher, train, TextDistillSettings(epochs=6, lr=3e-3, batch_size=16, **settings),
                           task="embedding", evaluate=lambda m: cosine(predict(m, val).numpy(), t_val))
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
    assert history["best_score"] > start + 0.01


@pytest.mark.parametrize("hidden_weight", [0.0, 1.0])
def test_bf16_autocast_trains_the_student_towards_the_teacher(bert_dir, texts, hidden_weight):
    # execute: bfloat16 forward passes, with and without hidden-state KD (whose losses must come back in fp32)
    student, _, start, history = _distill(bert_dir, texts, precision="bf16", hidden_weight=hidden_weight,
                                          layer_map=(0, 3))
    # assert: fp32 weights; the student moved towards the teacher
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert all(h["loss"] == h["loss"] for h in history["history"])  # finite, not NaN
    assert history["best_score"] > start + 0.01


def test_bf16_on_a_cpu_without_bfloat16_instructions_is_a_warning(monkeypatch, caplog):
    from compress.hf.pipeline import warn_if_bf16_is_slow

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
