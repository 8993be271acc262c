"""Accuracy of an ONNX classifier in ONNX Runtime: the figure every report shows."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

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
    if len(x) != len(y) or len(x) == 0:
        path = check_model_file(model_path)
        raise CompressError(f"{path}: accuracy needs as many labels as samples (>0), got {len(x)} and {len(y)}")
    return accuracy_on(model_path, ((x[s:s + batch], y[s:s + batch]) for s in range(0, len(x), batch)),
                       provider=provider)


def accuracy_on(model_path: str | Path, batches: Iterable[tuple[Any, Any]], *,
                provider: str = "CPUExecutionProvider") -> float:
    """Top-1 accuracy over `(inputs, labels)` batches (numpy or torch), streamed: a data set of any size."""
    path = check_model_file(model_path)
    session, _ = open_session(path, provider, threads=os.cpu_count() or 1, strict=True)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise CompressError(f"{path}: accuracy needs a single-input model, got inputs {[i.name for i in inputs]}")
    fixed = inputs[0].shape[0] if inputs[0].shape else None
    fixed = fixed if isinstance(fixed, int) and fixed > 0 else None
    name = inputs[0].name
    from compress.bench.inputs import ORT_DTYPES

    dtype = ORT_DTYPES.get(inputs[0].type, np.float32)
    correct = total = 0
    for xb, yb in batches:
        xb, yb = np.asarray(xb, dtype=dtype), np.asarray(yb)
        steps = [(s, xb[s:s + fixed]) for s in range(0, len(xb), fixed)] if fixed else [(0, xb)]
        for start, chunk in steps:
            n = len(chunk)
            if fixed and n < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), dtype=dtype)])
            logits = session.run(None, {name: chunk})[0][:n]
            correct += int((top1_of(logits) == yb[start:start + n]).sum())
            total += n
    if total == 0:
        raise CompressError(f"{path}: accuracy needs at least one labelled example, got none")
    return correct / total
