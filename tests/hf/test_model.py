"""compress.hf.model: hf: folders offline, the keyword-input wrapper, pooling, layer cutting, config overrides."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from compress.errors import CompressError
from compress.hf.model import build_text_model, choose_layers, cut_layers, num_layers, resolve_dir


def _enc(tokenizer, texts, length=16):
    return dict(tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"))


def test_embedding_is_the_mean_of_real_tokens_and_ignores_padding(bert_dir, tokenizer):
    # setup
    model = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    short, long_ = _enc(tokenizer, ["the cat runs ."], 8), _enc(tokenizer, ["the cat runs ."], 24)
    # execute
    with torch.no_grad():
        a, b = model(**short), model(**long_)
        states = model.encoder(**{k: v for k, v in short.items()}).last_hidden_state
    # assert: padding changes nothing; the embedding is the masked mean of the token states
    assert a.shape == (1, 32)
    assert torch.allclose(a, b, atol=1e-5)
    mask = short["attention_mask"][0].bool()
    assert torch.allclose(a[0], states[0][mask].mean(0), atol=1e-5)


def test_cls_pooling_and_classification_head(bert_dir, tokenizer):
    enc = _enc(tokenizer, ["the dog .", "a red bus stops ."])
    cls = build_text_model(f"hf:{bert_dir}", task="embedding", pooling="cls", base_dir=Path("."), origin="t")
    clf = build_text_model(f"hf:{bert_dir}", task="classification", num_classes=3, base_dir=Path("."), origin="t")
    with torch.no_grad():
        assert torch.allclose(cls(**enc), cls.encoder(**enc).last_hidden_state[:, 0], atol=1e-6)
        assert clf(**enc).shape == (2, 3)


def test_a_folders_own_classification_head_is_used_in_the_datas_label_order(tmp_path, tokenizer):
    from transformers import BertForSequenceClassification

    from tests.hf.conftest import make_bert_classifier

    # setup: the folder's labels are in the opposite order to the data's (sorted) class names
    folder = make_bert_classifier(tmp_path / "clf", id2label={0: "vehicle", 1: "animal"})
    enc = _enc(tokenizer, ["the dog .", "a red bus stops .", "the old cow near the river ."])
    # execute
    model = build_text_model(f"hf:{folder}", task="classification", num_classes=2, class_names=["animal", "vehicle"],
                             base_dir=Path("."), origin="t")
    other = build_text_model(f"hf:{folder}", task="classification", num_classes=3, class_names=["a", "b", "c"],
                             base_dir=Path("."), origin="t")
    student = cut_layers(model, [0, 3], "t")
    # assert: the folder's logits, columns in the data's order; other labels get a new head; cutting still works
    hf = BertForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        assert model.folder_head and torch.allclose(model(**enc), hf(**enc).logits[:, [1, 0]], atol=1e-5)
        assert not other.folder_head and other(**enc).shape == (3, 3)
        assert num_layers(student) == 2 and student(**enc).shape == (3, 2)


def test_cut_keeps_the_named_layers_and_choose_keeps_first_and_last(bert_dir, tokenizer):
    # setup
    teacher = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    enc = _enc(tokenizer, ["the cat and the car ."])
    # execute
    student = cut_layers(teacher, [0, 3], "t")
    # assert: two layers, copies of teacher layers 0 and 3; the teacher is untouched
    assert num_layers(student) == 2 and num_layers(teacher) == 4
    assert torch.equal(student.encoder.encoder.layer[1].output.dense.weight,
                       teacher.encoder.encoder.layer[3].output.dense.weight)
    with torch.no_grad():
        assert student(**enc).shape == teacher(**enc).shape
    assert choose_layers(6, 3) == [0, 2, 5] and choose_layers(4, 2) == [0, 3] and choose_layers(6, 1) == [5]
    with pytest.raises(CompressError, match="distinct indices 0..3"):
        cut_layers(teacher, [0, 4], "t")


def test_kwargs_override_the_config_and_start_from_scratch(bert_dir):
    model = build_text_model(f"hf:{bert_dir}", task="embedding", kwargs={"num_hidden_layers": 1},
                             base_dir=Path("."), origin="t")
    assert num_layers(model) == 1
    with pytest.raises(CompressError, match="'hidden_sise' is not a setting of"):
        build_text_model(f"hf:{bert_dir}", task="embedding", kwargs={"hidden_sise": 8}, base_dir=Path("."),
                         origin="t")


def test_missing_folder_file_or_package_is_named(tmp_path, bert_dir):
    with pytest.raises(CompressError, match="hf directory not found: .*nowhere"):
        resolve_dir("hf:nowhere", tmp_path, "p.toml: teacher")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompressError, match="config.json not found"):
        resolve_dir("hf:empty", tmp_path, "p.toml: teacher")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((bert_dir / "config.json").read_text())
    with pytest.raises(CompressError, match="model.safetensors not found"):
        build_text_model("hf:no-weights", task="embedding", base_dir=tmp_path, origin="t")
    with pytest.raises(CompressError, match="no installed package 'not_a_pkg_xyz'"):
        resolve_dir("hf:package:not_a_pkg_xyz/model", tmp_path, "t")


def test_without_transformers_the_error_names_the_extra(monkeypatch):
    from compress.hf.model import require_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(CompressError, match=r"pip install transformers tokenizers \(the hf extra\)"):
        require_transformers("p.toml: teacher")
