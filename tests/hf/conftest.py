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


def token_dataset(encoded, labels=None):
    """A Dataset of (index, token inputs, target) over tokenized rows (targets -1 without labels)."""
    import torch

    from compress.hf.text import text_dataset

    n = len(encoded["input_ids"])
    return text_dataset(encoded, torch.as_tensor(labels) if labels is not None else torch.full((n,), -1))


def token_inputs(encoded, folder, max_length: int = 16):
    """compress.data.inputs.TokenInputs for tokenized rows (the tokenizer in `folder`)."""
    from compress.data.inputs import TokenInputs

    return TokenInputs(tuple(encoded), texts=["the cat runs ."], tokenizer_dir=str(folder), max_length=max_length)


def torch_outputs(model, encoded, folder):
    """The model's single output on every row, in order (numpy), as the pipeline predicts it."""
    from compress.train import predict

    return next(iter(predict(model, token_dataset(encoded), inputs=token_inputs(encoded, folder)).values()))


def export_text(model, encoded, path, folder):
    """Export a TextModel as the export stage does: token inputs, 'embedding' or 'logits' as the output."""
    from compress.onnx.export import export_onnx

    example = {k: v[:2].long() for k, v in encoded.items()}
    output = "logits" if model.task == "classification" else "embedding"
    return export_onnx(model, example, path, inputs=token_inputs(encoded, folder), output_names=(output,))


def ort_outputs(path, encoded, *, batch_size: int = 64):
    """The ONNX model's first output on every row, fed in batches trimmed of shared padding."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    out = []
    for i in range(0, len(encoded["input_ids"]), batch_size):
        mask = encoded["attention_mask"][i:i + batch_size]
        width = max(int(mask.sum(1).max()), 1)
        out.append(sess.run(None, {n: encoded[n][i:i + batch_size, :width].numpy().astype(np.int64)
                                   for n in names})[0])
    return np.concatenate(out)
