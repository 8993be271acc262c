"""`text:` files as people write them (found by a new-user pass): quoted CSV fields with line breaks, a .tsv with
quote marks, U+2028 inside a text, an upper-case suffix, integer labels, the training split's description."""
from __future__ import annotations

import json

from compress.hf.data import label_order
from compress.hf.text import read_text_file


def test_a_quoted_csv_field_keeps_its_line_break_and_later_rows_their_line_numbers(tmp_path):
    # before: csv read raw.splitlines(), so the break was deleted ("witha newline") and line numbers were row numbers
    (tmp_path / "a.csv").write_text('text,label\n"a text with\na newline",pos\n,neg\nplain,neg\n')
    rows = read_text_file(tmp_path / "a.csv", "o", label_column="label")
    assert rows.texts == ["a text with\na newline", "plain"] and rows.labels == ["pos", "neg"]
    assert rows.first_bad == {"empty texts": 4}  # the empty row starts on line 4 of the file


def test_a_tsv_quote_mark_is_text_and_cannot_swallow_the_rows_after_it(tmp_path):
    # before: CSV quoting on a .tsv: the quotes were dropped, and an unbalanced one joined 3 rows into one bad row
    (tmp_path / "q.tsv").write_text('text\tlabel\n"Hello," she said.\tpos\nan "unbalanced quote\tneg\n'
                                    'one\tpos\ntwo\tneg\nthree\tpos\n')
    rows = read_text_file(tmp_path / "q.tsv", "o", label_column="label")
    assert rows.texts == ['"Hello," she said.', 'an "unbalanced quote', "one", "two", "three"]
    assert rows.labels == ["pos", "neg", "pos", "neg", "pos"] and not rows.bad


def test_a_tsv_written_with_csv_quoting_is_read_with_it(tmp_path):
    # Python's csv module and pandas quote a .tsv field holding a quote mark or a tab
    import csv

    with open(tmp_path / "p.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerows([["text", "label"], ['I said "great" movie', "pos"], ["tab\tinside", "neg"], ["plain", "neg"]])
    rows = read_text_file(tmp_path / "p.tsv", "o", label_column="label")
    assert rows.texts == ['I said "great" movie', "tab\tinside", "plain"] and rows.labels == ["pos", "neg", "neg"]


def test_a_row_with_more_fields_than_the_header_is_a_bad_row(tmp_path):
    (tmp_path / "x.tsv").write_text("text\tlabel\none\tpos\ntwo\tneg\textra\nthree\tneg\n")
    rows = read_text_file(tmp_path / "x.tsv", "o", label_column="label")
    assert rows.texts == ["one", "three"] and rows.bad == {"unparsable rows": 1} and rows.first_bad == {
        "unparsable rows": 3}


def test_a_line_separator_or_form_feed_inside_a_text_does_not_split_it(tmp_path):
    # before: str.splitlines() split at U+2028 (JSON written with ensure_ascii=False) and at a form feed
    records = [{"text": "first\u2028still the first", "y": "a"}, {"text": "second", "y": "b"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n",
                                      encoding="utf-8")
    rows = read_text_file(tmp_path / "a.jsonl", "o", label_column="y")
    assert rows.texts == ["first\u2028still the first", "second"] and not rows.bad
    (tmp_path / "a.txt").write_text("page one\fpage two\r\nnext\n")
    assert read_text_file(tmp_path / "a.txt", "o").texts == ["page one\fpage two", "next"]


def test_an_upper_case_suffix_is_read(tmp_path):
    (tmp_path / "A.CSV").write_text("text,label\nx,1\ny,0\n")
    assert read_text_file(tmp_path / "A.CSV", "o", label_column="label").labels == ["1", "0"]


def test_integer_labels_are_numbered_by_value():
    # before: string order, so output 2 was label "10" for labels 0..11
    assert label_order([str(i) for i in range(12)][::-1]) == tuple(str(i) for i in range(12))
    assert label_order(["pos", "neg", "10"]) == ("10", "neg", "pos")  # not all integers: string order
    assert label_order(["1", "01", "0"]) == label_order(["01", "0", "1"]) == ("0", "01", "1")  # ties: fixed


def test_the_training_split_says_it_is_the_rest(tmp_path, bert_dir):
    from compress.data import DataConfig
    from compress.hf.data import load_text
    from tests.hf.conftest import write_labelled

    write_labelled(tmp_path / "t.tsv", 60)
    data = load_text(DataConfig(source="text:t.tsv", label_column="label", max_length=16), seed=0,
                     base_dir=tmp_path, origin="o", tokenizer_spec=f"hf:{bert_dir}", cache_dir=None)
    assert data.describe()["splits"]["train"]["how"] == "the rest of t.tsv"


def test_a_label_too_rare_for_the_test_split_is_named_by_its_name(tmp_path, bert_dir, caplog):
    # before: 'rare' (2 texts) went to train and validation only, without a word
    import logging

    from compress.data import DataConfig
    from compress.hf.data import load_text

    rows = [f"text number {i} about {'cats' if i % 2 else 'dogs'}\t{'pets' if i % 2 else 'farm'}" for i in range(40)]
    (tmp_path / "t.tsv").write_text("text\tlabel\n" + "\n".join(rows + ["a rare one\trare", "another rare\trare"]))
    with caplog.at_level(logging.WARNING, logger="compress"):
        load_text(DataConfig(source="text:t.tsv", label_column="label", max_length=16), seed=0,
                  base_dir=tmp_path, origin="o", tokenizer_spec=f"hf:{bert_dir}", cache_dir=None)
    assert [m for m in caplog.messages if "classes a split does not show" in m] == [
        "warning: o: classes a split does not show: rare (2 examples: not in test); accuracy on them is not measured "
        "there: add examples (a class of 3 or more gets at least one in every split)"]


def test_the_token_cache_key_ignores_workers_and_follows_the_tokenizer_files(tmp_path):
    # workers = 1 re-tokenized and reran every stage; a vocab.json or *.model tokenizer was not in the key
    from compress.data import DataConfig
    from compress.hf.data import _key

    (tmp_path / "t.txt").write_text("one\ntwo\n")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "spiece.model").write_bytes(b"a")
    plain = _key(tmp_path / "t.txt", tmp_path / "tok", DataConfig(source="text:t.txt"), 0)
    assert _key(tmp_path / "t.txt", tmp_path / "tok", DataConfig(source="text:t.txt", workers=2), 0) == plain
    (tmp_path / "tok" / "spiece.model").write_bytes(b"b")
    assert _key(tmp_path / "t.txt", tmp_path / "tok", DataConfig(source="text:t.txt"), 0) != plain


def test_blank_line_spacing_in_a_txt_is_skipped_and_json_numbers_are_one_class(tmp_path):
    # a .txt with two blank lines after each sentence was refused ("600 of 900 rows are bad ... check
    # data.text_column", a key a .txt cannot have); JSON's 2 and 2.0 became two classes
    import pytest

    from compress.errors import CompressError

    (tmp_path / "dbl.txt").write_text("".join(f"sentence {i}\n\n\n" for i in range(5)))
    assert read_text_file(tmp_path / "dbl.txt", "o").texts == [f"sentence {i}" for i in range(5)]
    (tmp_path / "none.txt").write_text("\n  \n")
    with pytest.raises(CompressError, match=r"none.txt: no texts in it; check the file$"):
        read_text_file(tmp_path / "none.txt", "o")
    (tmp_path / "n.jsonl").write_text("".join(json.dumps({"text": f"t {i}", "y": y}) + "\n"
                                              for i, y in enumerate([2, 2.0, 1, 1.0, 0.5])))
    assert read_text_file(tmp_path / "n.jsonl", "o", label_column="y").labels == ["2", "2", "1", "1", "0.5"]


def test_a_folder_or_no_path_after_text_is_named_as_such(tmp_path):
    # "text:../textdir" and "text:" said "file not found" of a folder that is there
    import pytest

    from compress.errors import CompressError

    with pytest.raises(CompressError, match=r"^o: .* is a folder; text: takes one .txt, .csv, .tsv, .jsonl file"):
        read_text_file(tmp_path, "o")


def test_the_token_cache_key_of_a_file_that_never_set_workers_is_the_one_it_had():
    # dropping workers from the key re-tokenized every cached text run (and reran its stages) after the upgrade
    import hashlib
    from pathlib import Path

    from compress.data import DataConfig
    from compress.hf.data import LABEL_ORDER, _key

    here = Path(__file__)
    cfg = DataConfig(source="text:t.txt")
    before = hashlib.sha256(here.read_bytes())  # the key as c06e842 computed it, for a folder with no tokenizer file
    before.update(json.dumps([cfg.model_dump(mode="json"), 0, LABEL_ORDER], sort_keys=True).encode())
    assert _key(here, here.parent / "no-such-folder", cfg, 0) == before.hexdigest()


def test_the_rows_of_a_repeated_text_land_in_one_split(tmp_path, caplog):
    # before: each row was split alone, so 3 copies of a text went to train and test alike (scored on what it learned)
    import logging

    import numpy as np

    from compress.data.arrays import stratified_split
    from compress.hf.data import _split

    texts = [f"text {i % 30}" for i in range(90)]
    labels = np.asarray([i % 30 % 2 for i in range(90)], dtype=np.int64)
    with caplog.at_level(logging.WARNING, logger="compress"):
        parts, grouped = _split(labels, 0.2, 0.2, 0, "o", ("a", "b"), texts=texts, path=tmp_path / "t.tsv")
    seen: dict[str, set] = {}
    for name, rows in parts.items():
        for i in rows.tolist():
            seen.setdefault(texts[i], set()).add(name)
    assert all(len(s) == 1 for s in seen.values()) and len(seen) == 30
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(90))
    assert {name: len(rows) for name, rows in parts.items()} == {"train": 54, "val": 18, "test": 18}
    assert grouped and caplog.messages == [
        f"warning: o: {tmp_path / 't.tsv'}: 30 texts appear more than once (90 rows); each text's rows are kept in one "
        "split, so none is both trained on and scored, and the split counts 30 distinct texts"]
    # without repeats, the rows of the plain split
    unique = [f"text {i}" for i in range(90)]
    plain = stratified_split(labels, 0.2, 0.2, 0)
    got, grouped = _split(labels, 0.2, 0.2, 0, "o", ("a", "b"), texts=unique)
    assert not grouped and all(np.array_equal(a, b) for a, b in zip(plain, got.values()))
    # too few distinct texts: the line says so (it counted the 40 rows of 2 texts), after the repeats warning
    import pytest

    from compress.errors import CompressError

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="compress"), pytest.raises(CompressError) as few:
        _split(np.asarray([0, 1] * 20), 0.2, 0.2, 0, "o", ("a", "b"), texts=["x", "y"] * 20)
    assert str(few.value) == "o: too few texts (40, 2 distinct) to hold out validation and test splits"
    assert caplog.messages[0].startswith("warning: o: None: 2 texts appear more than once (40 rows)")


def test_the_token_key_changes_for_a_file_whose_split_grouped_repeats(tmp_path):
    # the rows of a file with repeats split otherwise since they are grouped: stages trained on the old split were
    # reused (the key was the same); a file without repeats keeps its key
    from compress.data import DataConfig
    from compress.hf.data import _key

    (tmp_path / "t.txt").write_text("a\nb\n")
    cfg = DataConfig(source="text:t.txt")
    assert _key(tmp_path / "t.txt", tmp_path, cfg, 0, grouped=True) != _key(tmp_path / "t.txt", tmp_path, cfg, 0)


def test_a_label_only_on_repeats_of_another_labels_text_is_named(caplog):
    # its rows split with the text's first label: "zzz" had no training row, and no line said so
    import logging

    import numpy as np

    from compress.hf.data import _split

    from compress.data.arrays import stratified_split

    held = int(stratified_split(np.asarray([i % 2 for i in range(40)]), 0.2, 0.2, 0)[2][0])  # a text test takes
    texts = [f"text {i}" for i in range(40)] + [f"text {held}"]
    labels = np.asarray([i % 2 for i in range(40)] + [2])
    with caplog.at_level(logging.WARNING, logger="compress"):
        parts, _ = _split(labels, 0.2, 0.2, 0, "o", ("a", "b", "zzz"), texts=texts)
    assert 40 in parts["test"].tolist()  # the zzz row went with its text to test: zzz has no training row
    said = [m for m in caplog.messages if "classes a split does not show" in m]
    assert said and "zzz (1 example: not in train" in said[0], caplog.messages
