"""hf: folders at their edges: a left-padding tokenizer, a tokenizer without a pad token, a max_length past the
position table, DistilBERT's config keys, a negative layer_map entry, a CSV with a byte-order mark."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.hf.model import build_text_model, load_tokenizer, trim_padding
from compress.hf.text import tokenize
from tests.hf.conftest import make_bert

TEXTS = ["the cat runs .", "a big old red bus stops near the house today again ."]


def _left_padding_bert(folder: Path) -> Path:
    make_bert(folder, layers=2)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    return folder


# ---------------------------------------------------------------- left padding

def test_a_left_padding_tokenizer_keeps_every_rows_tokens(tmp_path):
    # setup
    folder = _left_padding_bert(tmp_path / "left")
    model = build_text_model(f"hf:{folder}", task="embedding", base_dir=Path("."), origin="t")
    enc = tokenize(load_tokenizer(folder, "t"), TEXTS, max_length=16)
    # execute: the short row, batched with a long one, must embed as it does alone
    with torch.no_grad():
        batched = model(**{k: v.long() for k, v in enc.items()})
        alone = torch.cat([model(**{k: v[i:i + 1].long() for k, v in enc.items()}) for i in range(2)])
    # assert
    assert enc["attention_mask"][0, 0] == 1  # real tokens first
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_trimming_keeps_the_columns_a_left_padded_row_uses():
    from tests.hf.conftest import token_inputs

    # setup: row 0 padded on the left, row 1 on the right; the last column is real in row 0
    ids = torch.tensor([[0, 0, 7, 8], [7, 8, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0]])
    # execute
    kept_ids, kept_mask, _ = trim_padding(ids, mask)
    feed = token_inputs({"input_ids": ids, "attention_mask": mask}, "unused", max_length=4).as_feed(
        {"input_ids": ids, "attention_mask": mask})
    # assert: nothing real is cut; right padding shared by every row still is
    assert kept_mask.shape == (2, 4) and feed["attention_mask"].shape == (2, 4)
    right = torch.tensor([[7, 8, 9, 0, 0], [7, 0, 0, 0, 0]])
    assert trim_padding(right, right.ne(0).long())[1].shape == (2, 3)
    assert np.array_equal(feed["input_ids"], ids.numpy())


# ---------------------------------------------------------------- bad folders and settings, found by validate

def _validate(tmp_path: Path, teacher: str, *, max_length: int = 16, layers: int = 2, extra: str = ""):
    from click.testing import CliRunner

    from compress.cli import main
    from tests.hf.conftest import write_texts

    write_texts(tmp_path / "corpus.txt", 40)
    toml = tmp_path / "p.toml"
    toml.write_text(f'[pipeline]\nname = "t"\nthreads = 1\n[data]\nsource = "text:corpus.txt"\ntask = "embedding"\n'
                    f'max_length = {max_length}\n[teacher]\nmodel = "hf:{teacher}"\n[student]\n'
                    f'from_teacher = {{ num_layers = {layers} }}\n{extra}')
    return CliRunner().invoke(main, ["validate", str(toml)])


def test_a_max_length_past_the_position_table_is_refused_at_validate(tmp_path):
    make_bert(tmp_path / "bert", layers=2)  # max_position_embeddings = 64
    result = _validate(tmp_path, "bert", max_length=128)
    assert result.exit_code == 2, result.output
    assert "p.toml: data.max_length: expected at most 64 (the teacher hf:bert has position embeddings for 64 " \
        "tokens), got 128" in result.output
    assert "Traceback" not in result.output
    assert _validate(tmp_path, "bert", max_length=64).exit_code == 0


def test_a_tokenizer_without_a_pad_token_pads_with_unk_and_says_so(tmp_path, caplog):
    # setup
    folder = make_bert(tmp_path / "nopad", layers=2)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": None}))
    # execute
    with caplog.at_level("WARNING", logger="compress"):
        result = _validate(tmp_path, "nopad")
        tok = load_tokenizer(folder, "t")
    # assert
    assert result.exit_code == 0, result.output
    assert tok.pad_token == "[UNK]"
    assert "the tokenizer in" in caplog.text and "has no pad token; padding with '[UNK]'" in caplog.text


def test_a_distilbert_teacher_can_be_cut(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    # setup: DistilBERT stores its depth as n_layers, not num_hidden_layers
    folder = make_bert(tmp_path / "distil", layers=2)
    config = DistilBertConfig(vocab_size=len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]),
                              dim=32, n_layers=4, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    DistilBertModel(config).save_pretrained(str(folder))
    # execute
    result = _validate(tmp_path, "distil")
    too_many = _validate(tmp_path, "distil", layers=9)
    # assert: the teacher has 4 layers, not 0
    assert result.exit_code == 0, result.output
    assert too_many.exit_code == 2 and "student.from_teacher: num_layers must be 1..4, got 9" in too_many.output


# ---------------------------------------------------------------- layer_map and a byte-order mark

def test_a_negative_layer_map_entry_is_refused(monkeypatch):
    from types import SimpleNamespace

    import compress.hf.model as hf_model
    from compress.errors import CompressError
    from compress.families.hf import HFFamily

    # setup: a 2-layer student, a 4-layer teacher; -1 used to pass and index the teacher's last layer
    monkeypatch.setattr(hf_model, "num_layers", lambda m: m.layers)
    settings = SimpleNamespace(hidden_weight=1.0, attention_weight=0.0, layer_map=(-1, 3))
    # execute / assert
    with pytest.raises(CompressError, match=r"t.layer_map: needs 2 teacher layer indices in 0..3, got \[-1, 3\]"):
        HFFamily().kd_terms(settings, SimpleNamespace(layers=2), SimpleNamespace(layers=4), None, "t")


def test_a_csv_with_a_byte_order_mark_reads_its_header(tmp_path):
    from compress.hf.text import read_text_file

    path = tmp_path / "topics.tsv"
    path.write_text("text\tlabel\nthe cat runs .\tanimal\na red bus .\tvehicle\n", encoding="utf-8-sig")
    rows = read_text_file(path, "t", text_column="text", label_column="label")
    assert rows.texts == ["the cat runs .", "a red bus ."] and rows.labels == ["animal", "vehicle"]


def test_a_folder_without_tokenizer_files_is_refused_at_validate(tmp_path):
    # transformers built a 5-token stand-in: every word [UNK], and the run reported figures on nothing, exit 0
    folder = make_bert(tmp_path / "notok", layers=2)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    result = _validate(tmp_path, "notok")
    assert result.exit_code == 2, result.output
    assert f"p.toml: teacher.model: the tokenizer in {folder} has 5 tokens, so every word reads as unknown: the " \
        "folder lacks the model's tokenizer files (tokenizer.json, vocab.txt, vocab.json or a SentencePiece " \
        "*.model)" in result.output


def test_a_byte_level_tokenizer_without_a_vocabulary_file_loads(tmp_path):
    # ByT5's tokenizer saves no vocabulary file: the check must be the tokenizer's size, not the file names
    from transformers import ByT5Tokenizer

    ByT5Tokenizer().save_pretrained(str(tmp_path / "byt5"))
    assert len(load_tokenizer(tmp_path / "byt5", "t")("hello")["input_ids"]) == 6


@pytest.mark.parametrize("student, says", [
    ("kwargs = { hidden_size = 48 }", "student.kwargs: hidden_size 48 makes 48-wide embeddings, and the embedding "
                                      "task compares them with the teacher's 32-wide ones; keep hidden_size = 32"),
    ("kwargs = { hidden_size = 33 }", "student.kwargs: hidden_size 33 is not a multiple of num_attention_heads 2; set "
                                      "num_attention_heads too (one that divides 33)")])
def test_a_student_config_that_cannot_distil_is_refused_at_validate(tmp_path, student, says):
    # both passed validate and failed in the first training step, in torch's or transformers' words
    from click.testing import CliRunner

    from compress.cli import main
    from tests.hf.conftest import write_texts

    make_bert(tmp_path / "bert", layers=2)
    write_texts(tmp_path / "corpus.txt", 40)
    toml = tmp_path / "p.toml"
    toml.write_text('[pipeline]\nname = "t"\n[data]\nsource = "text:corpus.txt"\ntask = "embedding"\nmax_length = 16\n'
                    f'[teacher]\nmodel = "hf:bert"\n[student]\nmodel = "hf:bert"\n{student}\n')
    result = CliRunner().invoke(main, ["validate", str(toml)])
    assert result.exit_code == 2 and f"p.toml: {says}" in result.output, result.output


def test_a_benchmark_sequence_past_the_position_table_is_refused_at_validate(tmp_path):
    make_bert(tmp_path / "bert", layers=2)  # max_position_embeddings = 64
    result = _validate(tmp_path, "bert", extra="[benchmark]\nseq_lengths = [16, 128]\n")
    assert result.exit_code == 2 and "p.toml: benchmark.seq_lengths: expected at most 64 (the models have position " \
        "embeddings for 64 tokens), got 128" in result.output, result.output
    assert _validate(tmp_path, "bert", extra="[benchmark]\nseq_lengths = [16, 64]\n").exit_code == 0


def test_a_classification_teacher_without_a_head_for_the_labels_is_refused_at_validate(tmp_path):
    # said "has no classification head for the labels" of a teacher whose head predicts other labels
    from click.testing import CliRunner

    from compress.cli import main
    from tests.hf.conftest import write_labelled

    make_bert(tmp_path / "bert", layers=2)  # an encoder only: no head at all
    write_labelled(tmp_path / "t.tsv", 40)
    toml = tmp_path / "p.toml"
    toml.write_text('[pipeline]\nname = "t"\n[data]\nsource = "text:t.tsv"\nlabel_column = "label"\nmax_length = 16\n'
                    '[teacher]\nmodel = "hf:bert"\n[student]\nfrom_teacher = { num_layers = 1 }\n')
    result = CliRunner().invoke(main, ["validate", str(toml)])
    assert result.exit_code == 2, result.output
    assert "p.toml: teacher: hf:bert has no classification head that predicts the data's labels [" in result.output
    assert "(its config.json's id2label names other labels, or none), so one must be trained: add " \
        "[teacher.train]" in result.output
