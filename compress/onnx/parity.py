"""The one parity rule: every comparison of two models' outputs (export vs torch, ORT format vs ONNX, fixed batch
vs dynamic, quantized vs float agreement) goes through `compare`.

A pair of values agrees when |got - expected| <= atol + rtol * |expected|, as numpy.allclose has it. The relative
term is what keeps a good model from failing on rounding: fp32 carries about 7 significant digits, and a graph
optimiser that reorders a sum changes the last one or two, so logits of magnitude 30 differ by ~1e-5 between two
correct runtimes (seen on the digits student's ORT-format copy: 1.34e-5, a relative error of 4e-7).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from compress.errors import CompressError, InputsRejected, first_line

if TYPE_CHECKING:
    import numpy as np

RTOL = 1e-5
"""Default relative tolerance: ~100 fp32 ulps, room for reordered sums and fused kernels."""


def compare(expected: Sequence["np.ndarray"], got: Sequence["np.ndarray"], *, atol: float,
            rtol: float = RTOL) -> dict[str, Any]:
    """Compare output lists elementwise; top-1 agreement compares the argmax of each row of the first output
    (its trailing axes flattened, so a [N, 1000, 1, 1] classifier head counts like [N, 1000]).

    Returns {"ok", "max_abs_diff", "max_rel_diff", "top1_agreement" (None when the first output has one value a
    sample), "samples", "outputs", "atol", "rtol"}; max_rel_diff is |got - expected| / max(|expected|, atol), so
    values near zero do not blow it up. Equal non-finite values agree; a non-finite value on one side only is an
    infinite difference.
    """
    import numpy as np

    if len(expected) != len(got):
        raise CompressError(f"parity: the models have {len(expected)} and {len(got)} outputs")
    ok, max_abs, max_rel = True, 0.0, 0.0
    for ref, out in zip(expected, got):
        ref, out = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            raise CompressError(f"parity: output shape {out.shape} differs from the reference's {ref.shape}")
        if not ref.size:
            continue
        # the same non-finite value on both sides agrees (a masked -inf logit, a skipped item's NaN row); one
        # side's alone is an infinite difference, not a NaN that max() would read as 0
        same = (ref == out) | (np.isnan(ref) & np.isnan(out))
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.nan_to_num(np.abs(out - ref), nan=np.inf))
            rel = np.where(same, 0.0, np.nan_to_num(diff / np.maximum(np.abs(ref), atol), nan=np.inf))
        ok = ok and bool(np.all(diff <= atol + rtol * np.nan_to_num(np.abs(ref), nan=0.0, posinf=0.0)))
        max_abs, max_rel = max(max_abs, float(diff.max())), max(max_rel, float(rel.max()))
    first_ref, first_out = np.asarray(expected[0]), np.asarray(got[0])
    if first_ref.ndim >= 2 and first_ref.size and first_ref.reshape(len(first_ref), -1).shape[1] > 1:
        top1 = float(np.mean(top1_of(first_ref) == top1_of(first_out)))  # ties not forgiven: int8 vs fp32 here
    else:  # one value a sample (a regressor, a probability): no class to agree on
        top1 = None
    return {"ok": ok, "max_abs_diff": max_abs, "max_rel_diff": max_rel, "top1_agreement": top1,
            "samples": int(first_ref.shape[0]) if first_ref.ndim else 1, "outputs": len(expected),
            "atol": atol, "rtol": rtol}


def top1_agreement(expected: "np.ndarray", got: "np.ndarray") -> float:
    """The share of rows whose predicted class agrees, a tie counting as agreement, for two runs of one graph (QAT's
    torch and ORT; compare() and the NPU's gates judge int8 against float, where a tie is a lost distinction): a row
    agrees when either side's class holds the other side's top value, tied among a few classes (int8 logits tie
    exactly often; argmax then picks the first of the tied classes, and one such row read as a miss of QAT's
    parity). A row whose values collapsed to one (most classes tied) is no agreement."""
    import numpy as np

    a = np.asarray(expected).reshape(len(expected), -1)
    b = np.asarray(got).reshape(len(got), -1)
    ia, ib, rows = a.argmax(1), b.argmax(1), np.arange(len(a))

    def few_tied(m: np.ndarray) -> np.ndarray:  # a row collapsed to one value (int8 Relu outputs all 0) agrees never
        return (m == m.max(1, keepdims=True)).sum(1) <= max(2, m.shape[1] // 4)

    agree = (ia == ib) | ((a[rows, ib] == a.max(1)) & few_tied(a)) | ((b[rows, ia] == b.max(1)) & few_tied(b))
    return float(np.mean(agree)) if len(a) else 1.0


def top1_of(logits: "np.ndarray") -> "np.ndarray":
    """The predicted class of each row: argmax over everything after the batch axis."""
    import numpy as np

    logits = np.asarray(logits)
    return logits.reshape(len(logits), -1).argmax(1)


def run_cpu(path: Path, feed: dict[str, "np.ndarray"], *, ort_format: bool = False,
            batch_size: int | None = None, optimization: str | None = None,
            config: dict[str, str] | None = None, axes: dict[str, int | None] | None = None) -> list["np.ndarray"]:
    """Outputs of the model at `path` on ORT's CPU provider; with `batch_size`, fed in chunks along each input's
    batch axis (`axes`, 0 by default; outputs joined on axis 0, a 0-d output stacked one value per chunk); with
    `optimization` (disable, basic, extended, all), at that graph optimization level (default: all); `config`:
    session config entries (compress.bench.providers.EXACT_MATMULS)."""
    import numpy as np
    import onnxruntime as ort

    from compress.bench.providers import quiet_run

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if optimization is not None:  # the mapping ORT's own ORT-format converter uses
        from onnxruntime.tools.onnx_model_utils import get_optimization_level

        opts.graph_optimization_level = get_optimization_level(optimization)
    if ort_format:
        opts.add_session_config_entry("session.load_model_format", "ORT")
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    quiet = quiet_run()  # a failed run is the one line below
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        if batch_size is None:
            return sess.run(None, feed, quiet)
        from compress.quantize.attempts import batched

        chunks = [sess.run(None, part, quiet) for part in batched(feed, batch_size, axes)]
    except Exception as exc:
        raise InputsRejected(path, "the sample inputs", first_line(exc)) from None
    if len(chunks) == 1:
        return chunks[0]
    # a 0-d output (a sum over the batch) has no axis to join on: one value per chunk, in order
    return [np.concatenate([c[j] for c in chunks]) if np.ndim(chunks[0][j]) else np.stack([c[j] for c in chunks])
            for j in range(len(chunks[0]))]
