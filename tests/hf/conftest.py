"""Tiny BERT-style models and texts built in tmp_path: nothing is downloaded, every test runs in seconds."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ANIMALS = ["cat", "dog", "horse", "bird", "fish", "cow", "sheep", "goat"]
VEHICLES = ["car", "bus", "train", "truck", "bike", "boat", "plane", "tram"]
FILLER = ["the", "a", "big", "small", "old", "new", "red", "blue", "runs", "stops", "near", "house", "road",
          "river", "today", "again", "very", "quite", "and", "with"]
WORDS = ANIMALS + VEHICLES + FILLER


def make_bert(folder: Path, *, layers: int = 4, hidden: int = 32, seed: int = 0) -> Path:
    """A random BertModel (safetensors) with a word-level vocab.txt tokenizer in `folder`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]
    BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True).save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS) + 6, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    return folder


def make_bert_classifier(folder: Path, *, id2label: dict[int, str], train_on: Path | None = None,
                         layers: int = 4, hidden: int = 32) -> Path:
    """A BertForSequenceClassification folder (labels `id2label`), trained a few epochs on a labelled .tsv written
    by write_labelled when `train_on` is given, so its own head is a real classifier."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    make_bert(folder, layers=layers, hidden=hidden)
    tok = BertTokenizerFast.from_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(str(folder), num_labels=len(id2label), id2label=id2label,
                                        label2id={v: k for k, v in id2label.items()})
    model = BertForSequenceClassification(config)
    if train_on is not None:
        rows = [line.split("\t") for line in train_on.read_text().splitlines()[1:]]
        enc = tok([r[0] for r in rows], padding=True, return_tensors="pt")
        y = torch.tensor([config.label2id[r[1]] for r in rows])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(6):
            for i in range(0, len(y), 16):
                loss = model(**{k: v[i:i + 16] for k, v in enc.items()}, labels=y[i:i + 16]).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.eval().save_pretrained(str(folder))
    return folder


def sentence(rng: random.Random, topic: list[str]) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))]
    for _ in range(rng.randint(1, 2)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(topic))
    return " ".join(words) + " ."


def write_texts(path: Path, n: int = 240, *, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.write_text("\n".join(sentence(rng, rng.choice([ANIMALS, VEHICLES])) for _ in range(n)) + "\n")
    return path


def write_labelled(path: Path, n: int = 240, *, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["animal", "vehicle"])
        rows.append(f"{sentence(rng, ANIMALS if label == 'animal' else VEHICLES)}\t{label}")
    path.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("hf") / "tiny-bert")


@pytest.fixture(scope="session")
def tokenizer(bert_dir):
    from compress.hf.model import load_tokenizer

    return load_tokenizer(bert_dir, "test")
