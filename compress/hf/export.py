"""Transformer export: keyword token inputs named as the tokenizer names them, dynamic batch and sequence axes,
and parity against torch on real tokenized text with every module in eval mode.

Two traps measured by hand on MiniLM: the legacy exporter restores the module's training flag afterwards, so a
wrapper left in train mode silently runs dropout (outputs then differ by up to 6.4): the copy exported here and
the reference are both in eval mode. And padding positions differ by ~1e-4 between runtimes; masked pooling
ignores them, so parity is compared on the pooled output, on real tokens.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from compress.errors import CompressError, first_line


def export_text_model(model, example: dict, path: Path, *, opset: int = 18) -> Path:
    """Export a TextModel (deep copy, eval mode) with inputs `model.input_names` and output 'embedding' or
    'logits', batch and sequence axes symbolic ('batch', 'seq'). Atomic; checked by onnx.checker."""
    import copy
    import io
    import warnings

    import torch

    from compress.cache import atomic_path

    model = copy.deepcopy(model).eval()
    names = list(model.input_names)
    args = tuple(example[n] for n in names)
    output = "logits" if model.task == "classification" else "embedding"
    axes = {n: {0: "batch", 1: "seq"} for n in names}  # `compress bench --dim seq=128`
    axes[output] = {0: "batch"}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            buf = io.BytesIO()
            torch.onnx.export(model, args, buf, dynamo=False, opset_version=opset, input_names=names,
                              output_names=[output], dynamic_axes=axes)
            tmp.write_bytes(buf.getvalue())
        except Exception as exc:
            raise CompressError(f"{path.name}: torch.onnx.export failed: {type(exc).__name__}: "
                                f"{first_line(exc)}; try another [export] opset") from exc
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise CompressError(f"{path}: exported model fails the ONNX checker: {first_line(exc)}") from exc
    return path


def feeds(encoded: dict, names: Sequence[str], rows: Any = None) -> dict[str, Any]:
    """numpy int64 feeds for ONNX Runtime from tokenized tensors (optionally a subset of rows)."""
    import numpy as np

    out = {}
    for n in names:
        v = encoded[n] if rows is None else encoded[n][rows]
        out[n] = np.ascontiguousarray(v.numpy().astype(np.int64))
    return out


def run_ort(path: Path, encoded: dict, *, batch_size: int = 64, threads: int = 0):
    """The ONNX model's outputs on every row of `encoded`, batched by similar length with shared padding trimmed
    (fast, and the outputs are what a caller padding per batch gets)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CompressError(f"{path}: cannot be loaded by ONNX Runtime ({first_line(exc)})") from None
    names = [i.name for i in sess.get_inputs()]
    lengths = encoded["attention_mask"].sum(1)
    order = torch.argsort(lengths, stable=True)
    outs = []
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        width = max(int(lengths[idx].max()), 1)
        outs.append(sess.run(None, {n: encoded[n][idx, :width].numpy().astype(np.int64) for n in names})[0])
    result = np.concatenate(outs)
    restored = np.empty_like(result)
    restored[order.numpy()] = result
    return restored


def bench_feed(tokenizer: Any, texts: Sequence[str], names: Sequence[str], *, batch: int, seq_length: int):
    """Benchmark inputs of shape (batch, seq_length): real text (validation sentences run together until
    seq_length tokens are filled, so every id is inside the vocabulary and the mask is all real tokens)."""
    import numpy as np

    rows, k = [], 0
    for _ in range(batch):
        words: list[str] = []
        while len(tokenizer(" ".join(words))["input_ids"]) < seq_length and k < 10 * len(texts) + 100:
            words.append(texts[k % len(texts)])
            k += 1
        rows.append(" ".join(words))
    enc = tokenizer(rows, padding="max_length", truncation=True, max_length=seq_length, return_tensors="np")
    return {n: np.ascontiguousarray(enc[n].astype(np.int64)) for n in names}
