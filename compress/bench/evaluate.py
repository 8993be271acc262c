"""Accuracy of an ONNX classifier in ONNX Runtime: the figure every report shows."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from compress.bench.providers import check_model_file, open_session
from compress.errors import CompressError
from compress.onnx.parity import top1_of


def accuracy(
    model_path: str | Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    provider: str = "CPUExecutionProvider",
    batch: int = 256,
) -> float:
    """Top-1 accuracy of a single-input classifier on (x, y), run through ONNX Runtime in batches.

    The prediction is the argmax of each row of the first output (compress.onnx.parity.top1_of). A model with a fixed batch dimension
    is run at that batch size (the last batch is zero-padded and the padding dropped).
    """
    path = check_model_file(model_path)
    session, _ = open_session(path, provider, threads=os.cpu_count() or 1, strict=True)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise CompressError(f"{path}: accuracy needs a single-input model, got inputs {[i.name for i in inputs]}")
    if len(x) != len(y) or len(x) == 0:
        raise CompressError(f"{path}: accuracy needs as many labels as samples (>0), got {len(x)} and {len(y)}")
    fixed = inputs[0].shape[0] if inputs[0].shape else None
    step = fixed if isinstance(fixed, int) and fixed > 0 else batch
    name = inputs[0].name
    from compress.bench.inputs import ORT_DTYPES

    dtype = ORT_DTYPES.get(inputs[0].type, np.float32)
    correct = 0
    for start in range(0, len(x), step):
        chunk = np.asarray(x[start:start + step], dtype=dtype)
        n = len(chunk)
        if n < step and step == fixed:
            pad = np.zeros((step - n, *chunk.shape[1:]), dtype=dtype)
            chunk = np.concatenate([chunk, pad])
        logits = session.run(None, {name: chunk})[0][:n]
        correct += int((top1_of(logits) == np.asarray(y[start:start + n])).sum())
    return correct / len(x)
