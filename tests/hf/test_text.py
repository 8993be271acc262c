"""compress.hf.text and compress.hf.data: text files in, bad rows counted, tokenized Datasets out."""
from __future__ import annotations

import json

import pytest

from compress.errors import CompressError
from compress.hf.text import read_text_file, text_dataset, tokenize


def test_each_format_reads_texts_labels_and_pairs(tmp_path):
    (tmp_path / "a.txt").write_text("first line .\n\nsecond line .\n")
    (tmp_path / "a.csv").write_text('text,label\n"a cat, here",animal\na bus,vehicle\n')
    (tmp_path / "a.tsv").write_text("q\tp\tlabel\na cat\tthe dog\tyes\na bus\tthe cow\tno\n")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in
                                                [{"text": "a cat", "y": 1}, {"text": "a bus", "y": 0}]) + "\n")
    txt = read_text_file(tmp_path / "a.txt", "o")
    assert txt.texts == ["first line .", "second line ."] and txt.bad == {}  # a blank line is spacing, not a row
    assert read_text_file(tmp_path / "a.csv", "o", label_column="label").labels == ["animal", "vehicle"]
    tsv = read_text_file(tmp_path / "a.tsv", "o", text_column="q", pair_column="p", label_column="label")
    assert tsv.pairs == ["the dog", "the cow"] and tsv.labels == ["yes", "no"]
    assert read_text_file(tmp_path / "a.jsonl", "o", label_column="y").labels == ["1", "0"]


def test_bad_rows_are_counted_and_a_mostly_bad_file_is_refused(tmp_path):
    good = "".join(f"text {i}\tpos\n" for i in range(6))
    (tmp_path / "some.tsv").write_text("text\tlabel\n" + good + "\tpos\nlonely\t\nodd\tmaybe\n")
    rows = read_text_file(tmp_path / "some.tsv", "o", label_column="label", labels=["pos", "neg"])
    assert len(rows.texts) == 6
    assert rows.bad == {"empty texts": 1, "missing labels": 1, "unknown labels": 1}
    (tmp_path / "bad.tsv").write_text("text\tlabel\n\tpos\n\tneg\nok\tpos\n")
    with pytest.raises(CompressError, match=r"bad.tsv: 2 of 3 rows are bad \(2 empty texts \(first at line 2\)\)"):
        read_text_file(tmp_path / "bad.tsv", "p.toml: data.source", label_column="label")


def test_missing_column_file_and_wrong_suffix_are_named(tmp_path):
    (tmp_path / "a.csv").write_text("sentence,label\nx,y\n")
    with pytest.raises(CompressError, match="no column 'text' in the header \\(columns: sentence, label\\)"):
        read_text_file(tmp_path / "a.csv", "o", label_column="label")
    with pytest.raises(CompressError, match="file not found"):
        read_text_file(tmp_path / "nope.txt", "o")
    (tmp_path / "a.xml").write_text("<x/>")
    with pytest.raises(CompressError, match="expected a .txt, .csv, .tsv, .jsonl file"):
        read_text_file(tmp_path / "a.xml", "o")


def test_tokenized_dataset_items_follow_the_data_contract(tokenizer):
    enc = tokenize(tokenizer, ["the cat runs .", "a bus ."], max_length=12)
    import torch

    ds = text_dataset(enc, torch.tensor([-1, -1]))
    index, inputs, target = ds[1]
    assert index == 1 and int(target) == -1
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert inputs["input_ids"].dtype == torch.int64 and inputs["input_ids"].shape == (12,)
    assert int(inputs["attention_mask"].sum()) == 5  # [CLS] a bus . [SEP]


def test_load_text_splits_tokenizes_once_and_caches(tmp_path, bert_dir):
    from compress.data import DataConfig
    from compress.hf.data import load_text
    from tests.hf.conftest import write_labelled

    write_labelled(tmp_path / "t.tsv", 100)
    cfg = DataConfig(source="text:t.tsv", label_column="label", max_length=16, val_fraction=0.2, test_fraction=0.1)
    kw = dict(seed=0, base_dir=tmp_path, origin="p.toml: data.source", tokenizer_spec=f"hf:{bert_dir}",
              cache_dir=tmp_path / "tokens")
    first = load_text(cfg, **kw)
    assert first.num_classes == 2 and first.class_names == ["animal", "vehicle"]
    assert (len(first.val), len(first.test), len(first.train)) == (20, 10, 70)
    assert first.eval_split == "test" and first.describe()["splits"]["test"]["size"] == 10
    assert len(list((tmp_path / "tokens").glob("tokens-*.safetensors"))) == 1
    again = load_text(cfg, **kw)
    assert again.fingerprint == first.fingerprint
    first_val, again_val = first.arrays("val")[0], again.arrays("val")[0]
    assert (again_val["input_ids"] == first_val["input_ids"]).all() and first.inputs.kind == "tokens"
    assert list(first_val) == ["input_ids", "attention_mask", "token_type_ids"]
    # read back from the cache in the same order: the inputs are exported and fed positionally in it (safetensors
    # sorts its keys; a rerun exported the mask as the token ids and failed export parity)
    assert list(again_val) == list(first_val) and tuple(again.inputs.names) == tuple(first.inputs.names)
    assert first.inputs.texts and first.targets("val").tolist() == again.targets("val").tolist()
    with pytest.raises(CompressError, match="needs labels: set data.label_column"):
        load_text(DataConfig(source="text:t.tsv"), **kw)


def test_length_grouped_batches_share_every_batch_and_refuse_fewer_rows_than_processes():
    # step k of 2 processes covers the rows of step k of one; 1 row cannot feed 2 processes (it ran 0 steps, exit 0)
    import pytest
    import torch

    from compress.data.inputs import LengthGroupedBatches
    from compress.errors import CompressError

    lengths = torch.tensor([5, 3, 9, 4, 7, 2, 8, 6])
    one = list(LengthGroupedBatches(lengths, 4, seed=0))
    two = [list(LengthGroupedBatches(lengths, 4, seed=0, rank=r, size=2)) for r in range(2)]
    assert [sorted(a + b) for a, b in zip(*two)] == [sorted(b) for b in one]
    with pytest.raises(CompressError, match="data: 1 training row cannot give each of the 2 processes one"):
        LengthGroupedBatches(torch.tensor([5]), 4, seed=0, rank=0, size=2)
