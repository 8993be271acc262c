"""Models with several named inputs (a python: dataset whose items are ({name: tensor}, y)), as a new user brings
them: an image with a metadata vector, token ids with a mask. What the data holds is checked at load, item by item,
and named there: each input's shape and type, NaN, ids past the model's vocabulary; a wrong layout of the inputs is
one line that says which layout works."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compress.cli import main

MODELS = '''
import torch
import torch.nn as nn


class ImgMeta(nn.Module):
    def __init__(self, num_classes, width=8):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.meta = nn.Linear(4, width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, image, meta):
        return self.head(torch.cat([self.conv(image), self.meta(meta)], 1))


class Bag(nn.Module):
    def __init__(self, num_classes, vocab=50):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


class Keywords(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, **inputs):
        return self.head((self.emb(inputs["ids"]) * inputs["mask"][..., None]).mean(1))


class ImgCat(nn.Module):
    """uint8 pixels (not ids: they reach no embedding) and a category id that does."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.cat = nn.Embedding(10, 4)
        self.head = nn.Linear(8, num_classes)

    def forward(self, image, cat):
        return self.head(torch.cat([self.conv(image.float() / 255), self.cat(cat)], 1))


def imgcat(num_classes):
    return ImgCat(num_classes)


def imgmeta(num_classes, width=8):
    return ImgMeta(num_classes, width)


def bag(num_classes):
    return Bag(num_classes)


def keywords(num_classes):
    return Keywords(num_classes)
'''

DATA = '''
import numpy as np
import torch

BREAK = "{breaks}"


class Items(torch.utils.data.Dataset):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.y = rng.integers(0, 2, 120)
        self.image = rng.standard_normal((120, 1, 8, 8)).astype(np.float32)
        self.meta = rng.standard_normal((120, 4)).astype(np.float32)
        self.ids = rng.integers(0, 50, (120, 6))
        if BREAK == "nan":
            self.meta[7, 2] = np.nan
        if BREAK == "oov":
            self.ids[5, 0] = 80

    def __len__(self):
        return 120

    def __getitem__(self, i):
        y = int(self.y[i])
        if BREAK == "pixels":
            return {{"image": torch.from_numpy((self.image[i] * 40 + 128).clip(0, 255).astype(np.uint8)),
                     "cat": torch.tensor(i % 10)}}, y
        if BREAK in ("ids", "oov"):
            return {{"ids": torch.from_numpy(self.ids[i])}}, y
        if BREAK == "tensor-ids":
            return torch.from_numpy(self.ids[i]), y
        if BREAK in ("keywords", "dynamo"):
            return {{"ids": torch.from_numpy(self.ids[i]), "mask": torch.ones(6)}}, y
        image, meta = torch.from_numpy(self.image[i]), torch.from_numpy(self.meta[i])
        if BREAK == "ragged" and i >= 60:
            meta = meta[:3]
        if BREAK == "tuple":
            return (image, meta), y
        return {{"image": image, "meta": meta}}, y


def make():
    return Items()
'''


def _folder(tmp_path: Path, breaks: str, model: str, extra: str = "") -> Path:
    (tmp_path / "mymodels.py").write_text(MODELS)
    (tmp_path / "mydata.py").write_text(DATA.format(breaks=breaks))
    (tmp_path / "p.toml").write_text(textwrap.dedent(f"""
        [pipeline]
        name = "n"
        [data]
        source = "python:mydata:make"
        [teacher]
        model = "mymodels:{model}"
        [teacher.train]
        epochs = 1
        [student]
        model = "mymodels:{model}"
        [distill]
        epochs = 1
        """) + extra)
    return tmp_path / "p.toml"


def _validate(toml: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["validate", str(toml)])
    return result.exit_code, result.output.strip()


@pytest.mark.parametrize("breaks, model, says", [
    # a traceback from torch's stack ("stack expects each tensor to be equal size"), after the teacher stage
    ("ragged", "imgmeta", "train example 60: input 'meta' has shape (3,), the first example's (4,); every example "
                          "needs one shape per input (pad or cut them to one length)"),
    # "distill.lr: student loss became nan at epoch 1 ...; lower the learning rate"
    ("nan", "imgmeta", "the train dataset's input 'meta' holds NaN at index "),
    # numpy's "setting an array element with a sequence ... inhomogeneous shape"
    ("tuple", "imgmeta", "train example 0: x is a tuple of 2 tensors; give several inputs as a dict named after "
                         "forward's parameters ({'image': ..., 'meta': ...} for forward(self, image, meta))"),
])
def test_what_named_inputs_hold_is_named_at_load(tmp_path: Path, breaks: str, model: str, says: str):
    code, line = _validate(_folder(tmp_path, breaks, model))
    assert code == 2, line
    assert line.startswith("error: ") and says in line, line
    assert "Traceback" not in line and not (tmp_path / "runs").exists()


def test_an_id_past_the_vocabulary_is_named_at_validate(tmp_path: Path):
    # validate said ok; run stopped in the teacher stage on torch's "IndexError: index out of range in self"
    toml = _folder(tmp_path, "oov", "bag")
    code, line = _validate(toml)
    assert code == 2 and line == (f"error: {toml}: teacher.model: input 'ids' holds the id 80 (train example 5 of "
                                  "the data), and the nn.Embedding of mymodels:bag it feeds has 50 rows; ids must be "
                                  "below the vocabulary size (raise it in the model, or map the ids into it)")
    # uint8 pixels up to 255 reach no embedding: not ids (every image model with an embedding was refused)
    code, line = _validate(_folder(tmp_path, "pixels", "imgcat"))
    assert code == 0 and line.endswith("ok (teacher, distill, export, benchmark)"), line


def test_ids_given_as_one_tensor_say_how_to_keep_them_integers(tmp_path: Path):
    # the line blamed the model: "Expected tensor for argument #1 'indices' ... got torch.FloatTensor"
    code, line = _validate(_folder(tmp_path, "tensor-ids", "bag"))
    assert code == 2 and line.endswith(
        "; one x is read as float32, and nn.Embedding takes integer ids: a python: dataset's named input keeps them so "
        "(items ({'ids': LongTensor}, y))"), line
    assert _validate(_folder(tmp_path, "ids", "bag"))[0] == 0  # the way it names


def test_keyword_inputs_are_exported_by_name_and_described_with_their_types(tmp_path: Path):
    from compress.config import load_config
    from compress.data import load_data

    cfg = load_config(_folder(tmp_path, "keywords", "keywords"))
    data = load_data(cfg.data, seed=0, base_dir=cfg.base_dir)
    # report.json said tensor(float) for int64 ids, which `compare` then held against the model's own inputs
    assert data.inputs.describe(data.input_shape) == {"ids": {"shape": ["batch", 6], "type": "tensor(int64)"},
                                                      "mask": {"shape": ["batch", 6], "type": "tensor(float)"}}
    cfg = load_config(_folder(tmp_path, "", "imgmeta"))
    assert load_data(cfg.data, seed=0, base_dir=cfg.base_dir).input_shape == (1, 8, 8)  # the first input's; was (8, 8)


def test_a_forward_of_keyword_arguments_says_to_name_them(tmp_path: Path):
    # it said "KeyError: 'ids'; try [export] exporter = 'dynamo'", which validate then passed and export refused
    code, line = _validate(_folder(tmp_path, "keywords", "keywords"))
    assert code == 2 and line.endswith("name each input as a parameter of forward (forward(self, ids, mask)): "
                                       "forward(**kwargs) cannot be traced with named inputs"), line
    toml = _folder(tmp_path, "dynamo", "imgmeta", "[export]\nexporter = \"dynamo\"\n")
    (tmp_path / "mydata.py").write_text(DATA.format(breaks=""))
    code, line = _validate(toml)
    assert code == 2 and "cannot be exported with export.exporter = 'dynamo', found before training: 'dynamo' is " \
                         "used here for models with one tensor input" in line, line


def test_an_npz_of_named_inputs_says_where_several_inputs_come_from(tmp_path: Path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_image=rng.standard_normal((40, 1, 8, 8)).astype(np.float32),
             x_meta=rng.standard_normal((40, 4)).astype(np.float32), y=rng.integers(0, 2, 40))
    toml = _folder(tmp_path, "", "imgmeta")
    toml.write_text(toml.read_text().replace('"python:mydata:make"', '"npz:d.npz"'))
    code, line = _validate(toml)
    assert code == 2 and line.endswith("; an npz holds one input: several named inputs come from a python: dataset "
                                       "whose items are ({'image': ..., 'meta': ...}, y)"), line


def test_a_dataset_that_mixes_named_and_plain_inputs_says_so():
    # it said "train example 1 has shape (3,), the first had {'a': (3,)}", which reads as a shape fault
    from compress.data.scan import scan
    from compress.errors import CompressError

    import torch

    for items, says in (([({"a": torch.zeros(3)}, 0), (torch.zeros(3), 1)], "x is one tensor, the first example's a "
                                                                                "dict of named inputs"),
                        ([(torch.zeros(3), 0), ({"a": torch.zeros(3)}, 1)], "x is a dict of named inputs, the first "
                                                                            "example's one tensor")):
        with pytest.raises(CompressError) as err:
            scan(items, "train", "where")
        assert str(err.value) == f"where: train example 1: {says}; every example's x needs the same form"
