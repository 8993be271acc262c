"""Mixed activation widths for the NPU: 16-bit codes for the activations 8 bits damage most, 8 bits for the rest.

HTP runs 8- and 16-bit activations side by side (QNN's quantizer inserts the conversions). A graph whose 8-bit codes
miss the budget need not take 16 bits everywhere, which doubles the bytes of every activation: the activations are
ranked by the signal-to-noise ratio 8-bit codes over each one's calibrated range would give it (noisy_activations,
one pass of the float graph), and the lowest take 16 bits, a few more each round (SCHEDULE), until ORT CPU's
reading of the QDQ graph, computed as HTP computes it, is within HEADROOM of the budget. The graph kept is then
placed on HTP and measured as any other; under `--activation-type auto` a search that misses on ORT CPU is not
compiled, and 16 bits throughout are tried next.

It pays where a few activations carry the loss. On the real models measured (2026-12-07, docs/results.md) the loss
is spread: with half their activations at 16 bits PP-OCRv4's recogniser still lost 0.0125 of cosine on ORT CPU
(0.036 at 8 bits), its detector 0.025, Google's Magika 0.44 of top-1 agreement. Charging each node with the SQNR it
loses against the float graph (an 8-bit QDQ run beside it) instead ranked worse on the recogniser (0.018 at half)
and better on Magika (0.22), and missed on both: not kept.
"""
from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

SCHEDULE = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
"""Fractions of the activations given 16 bits, round by round (at least one tensor more each round). Past half,
the graph is all but a 16-bit one, which `--activation-type uint16` makes without the search."""

HEADROOM = 0.75
"""The CPU reading must be within this share of the budget: HTP's own reading of a QDQ graph loses a little more
than ORT CPU's (PP-OCRv4's detector at 16 bits: cosine drop 0.008 on CPU, 0.011 on HTP)."""

ROWS = 8
"""Calibration batches the ranking is measured on (of the fixed batch, 1 for HTP)."""


def noisy_activations(model_path: Path, feeds: list[dict[str, np.ndarray]], rows: int = ROWS,
                      skip: "list[str] | tuple[str, ...]" = ()) -> list[tuple[str, float]]:
    """(tensor, dB) for each float activation ORT's QNN quantizer quantizes in the model at `model_path` (but
    `skip`, those 16 bits are given already): the signal-to-noise ratio 8-bit codes spanning its range (with zero,
    as ORT's asymmetric codes do) would give it, on the first `rows` batches of `feeds`; lowest first. One ORT
    pass; each tensor is reduced to four numbers in the graph, so a 640x640 detector's activations are never held
    whole."""
    from onnxruntime.quantization.execution_providers.qnn.quant_config import OP_TYPES_TO_EXCLUDE
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    from compress.quantize.calibrate import reduced, selected_tensors

    model = load_model_with_shape_infer(Path(model_path))
    # every op type but ORT's exclusions, as get_qnn_qdq_config quantizes (Sub, Div, Exp of a written-out norm too)
    ops = sorted({n.op_type for n in model.graph.node} - set(OP_TYPES_TO_EXCLUDE))
    skipped = set(skip)
    names = [n for n in selected_tensors(model, ops) or [] if n not in skipped]
    if not names or not feeds:
        return []
    values = reduced(model, names, ("ReduceMin", "ReduceMax", "ReduceSumSquare", "Size"), feeds[:rows])
    # over the samples; fmin/fmax skip the NaN of an empty tensor without a warning
    low, high = np.fmin.reduce(values[:, :, 0], axis=0), np.fmax.reduce(values[:, :, 1], axis=0)
    square, count = np.nansum(values[:, :, 2], axis=0), values[:, :, 3].sum(axis=0)
    ranked = []
    for i, name in enumerate(names):
        if not count[i] or not np.isfinite(low[i]) or not np.isfinite(high[i]):
            continue  # never computed, or an infinite range (a -inf mask), which stays float anyway
        noise = ((max(high[i], 0.0) - min(low[i], 0.0)) / 255) ** 2 / 12
        signal = square[i] / count[i]
        ranked.append((name, round(10 * math.log10(signal / noise), 2) if noise > 0 and signal > 0 else math.inf))
    return sorted(ranked, key=lambda r: r[1])


def counts(total: int) -> list[int]:
    """How many of `total` ranked activations take 16 bits in each round: SCHEDULE's fractions, rising by one at
    least, never past its last (a small graph's rounds go one tensor at a time)."""
    out: list[int] = []
    most = math.ceil(SCHEDULE[-1] * total)
    for share in SCHEDULE:
        k = min(most, max(math.ceil(share * total), (out[-1] + 1) if out else 1))
        if k and (not out or k > out[-1]):
            out.append(k)
    return out


def search(ranked: list[tuple[str, float]], quantized: Callable[[list[str]], Path],
           drop_of: Callable[[Path], float], budget: float) -> tuple[Path | None, dict[str, Any]]:
    """The smallest round of `ranked` (noisiest first) whose QDQ graph, `quantized(sixteen_bit)`, ORT CPU reads
    within HEADROOM x `budget` (`drop_of(qdq)`); else the round that lost least. Returns (its QDQ path, the record:
    every round's count and drop, the tensors kept at 16 bits, whether the headroom was met, and the kept round's
    drop, "best_cpu_drop")."""
    import time

    tried: list[dict[str, Any]] = []
    best: tuple[float, Path, list[str]] | None = None
    for k in counts(len(ranked)):
        chosen = [name for name, _ in ranked[:k]]
        started = time.perf_counter()
        qdq = quantized(chosen)
        drop = float(drop_of(qdq))
        tried.append({"sixteen_bit": k, "int8_cpu_drop": drop, "seconds": round(time.perf_counter() - started, 1)})
        log.info("mixed widths: %d of %d activations at 16 bits, drop on ORT CPU %.4f", k, len(ranked), drop)
        if best is None or drop < best[0]:
            best = (drop, qdq, chosen)
        if drop <= HEADROOM * budget + 1e-12:
            break
    if best is None:
        return None, {"activations": 0, "tried": [], "sixteen_bit": [], "met": False, "best_cpu_drop": None}
    drop, qdq, chosen = best
    if tried[-1]["sixteen_bit"] != len(chosen):  # the file holds the last round's graph: write the best one again
        qdq = quantized(chosen)
    return qdq, {"activations": len(ranked), "tried": tried, "sixteen_bit": chosen,
                 "met": drop <= HEADROOM * budget + 1e-12, "best_cpu_drop": drop}


def mixed_qdq(source: Path, out: Path, calib: dict[str, np.ndarray], *, fixed: Path, batch: int,
              axes: dict[str, int | None], settings: dict[str, Any], x: dict[str, np.ndarray],
              y: np.ndarray | None, logits: bool | None, budget: float) -> tuple[Path, dict[str, Any]]:
    """The QNN QDQ model of `source` (the float graph as HTP takes it) with mixed widths, written to `out`: the
    activations of the graph ORT's QNN quantizer reads ranked by noisy_activations, then the search; each graph
    quantized with QNN's settings (`settings`; one calibration, its ranges cached) and read on ORT CPU as HTP
    computes it, on `x` (and labels `y`) against `fixed`, the float model. Returns the path and the search's record
    ("ranked_s": the seconds the ranking took)."""
    import time

    from compress.bench.providers import EXACT_MATMULS
    from compress.edge.qnn import prepared_for_qnn, quantize_for_qnn
    from compress.edge.qnn_accuracy import worst_int8_drop
    from compress.onnx.parity import run_cpu
    from compress.quantize.attempts import batched
    from compress.onnx.graph import declared_task
    from compress.quantize.gate import looks_like_logits
    from compress.quantize.outliers import outlier_activations

    fp32s = run_cpu(fixed, x, batch_size=batch, axes=axes)
    logits = looks_like_logits({"output": fp32s[0]}, declared_task(fixed)) if logits is None else logits
    with tempfile.TemporaryDirectory(prefix="compress-mixed-") as tmp:
        ranges = Path(tmp) / "ranges.json"

        def quantized(names: list[str]) -> Path:
            return quantize_for_qnn(source, out, calib, batch=batch, axes=axes, sixteen_bit=names, ranges=ranges,
                                    **{**settings, "activation_type": "uint8"})

        def drop_of(qdq: Path) -> float:
            # every output, the worst deciding, as the NPU's judge reads them (a second head can lose alone)
            int8s = run_cpu(qdq, x, batch_size=batch, config=EXACT_MATMULS, axes=axes)
            return worst_int8_drop(fp32s, int8s, y, logits)

        started = time.perf_counter()
        # ranked on the graph the quantizer reads (its fusions renamed or removed some tensors)
        src = prepared_for_qnn(source, Path(tmp), settings.get("per_channel", True))[0]
        feeds = batched(dict(calib), batch, axes)
        ratio = settings.get("outlier_ratio")  # the outlier channels' tensors take 16 bits in every round already
        wide = [name for name, _ in outlier_activations(src, feeds, ratio)] if ratio else []
        ranked = noisy_activations(src, feeds, skip=wide)
        ranked_s = round(time.perf_counter() - started, 1)
        qdq, record = search(ranked, quantized, drop_of, budget)
        if qdq is None:  # nothing to rank: every activation 8-bit
            qdq = quantized([])
    return qdq, {**record, "ranked_s": ranked_s}
