"""One quantization attempt and the pieces around it: the remedy plan, pre-processing, checks of the data, the
verdict on a drop. `compress.quantize.api.quantize` strings them together (timing: compress.quantize.timing)."""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compress.errors import CompressError
from compress.onnx.graph import fixed_batch
from compress.onnx.skeleton import graph_of
from compress.progress import step
from compress.quantize import calibrate, histograms
from compress.quantize.config import METHODS, WEIGHTED, QuantizeConfig
from compress.quantize.dynamic import DYNAMIC_WHY, OUTLIER_LAYERS_WHY, with_gemm_matmuls
from compress.quantize.lean import one_model_in_ort_quantizer, release
from compress.quantize.prepare import is_large, quiet_onnx_runtime, save
from compress.quantize.sensitivity import (FOLD_BYTES, RANK_BYTES, activation_bytes, feeding_outputs, feeds_reader as
                                          _reader, gate_checked, memory_cap, quantizable_ops, rank_sensitive_nodes,
                                          rows_that_fit, samples_that_fit)

log = logging.getLogger(__name__)

def remedy_plan(cfg: QuantizeConfig, *, saturates: bool = False, matmuls_only: bool = False,
                outlier_layers: Sequence[str] = ()) -> list[tuple[dict[str, Any], str]]:
    """Attempts before node exclusion, in order: configured, other calibration methods, per-channel flipped, on a
    CPU whose u8s8 kernels saturate (x86 without VNNI, `saturates`) 7-bit weights (reduce_range), the weighted ops
    alone; and last for a static plan on a graph whose weights are all MatMul or Gemm (`matmuls_only`: a
    transformer, an MLP), dynamic int8 (see DYNAMIC_WHY), then dynamic int8 with `outlier_layers` in float (the
    layers that write the activations the outlier check found: see OUTLIER_LAYERS_WHY); a dynamic plan takes that
    last attempt too, where the check ran (calibration rows given)."""
    first = {"mode": cfg.mode, "per_channel": cfg.per_channel, "weight_type": cfg.weight_type,
             "reduce_range": cfg.reduce_range, "nodes_to_exclude": []}
    if cfg.mode == "static":
        first.update(calibration_method=cfg.calibration_method, quant_format=cfg.quant_format,
                     activation_type=cfg.activation_type, bias_correction=cfg.bias_correction)
    if cfg.mode == "fp16":
        first = {"mode": "fp16", "nodes_to_exclude": []}
    plan = [(first, "configured settings")]
    if not cfg.fallback or cfg.mode == "fp16":
        return plan
    if cfg.mode == "static":
        for method in METHODS:
            if method != cfg.calibration_method:
                plan.append(({**first, "calibration_method": method}, f"remedy: calibration method {method}"))
    flip = "per-tensor" if cfg.per_channel else "per-channel"
    flipped = {**first, "per_channel": not cfg.per_channel}
    if cfg.mode == "static":
        flipped["calibration_method"] = None  # filled in with the most accurate method once those have run
    plan.append((flipped, f"remedy: {flip} weights"))
    if saturates and not cfg.reduce_range:
        plan.append(({**first, "reduce_range": True}, "remedy: 7-bit weights (reduce_range): this CPU has no VNNI, "
                     "so u8s8 products can saturate"))
    if cfg.mode == "static":
        plan.append(({**first, "calibration_method": None, "op_types": list(WEIGHTED)},
                     "remedy: only the ops with weights quantized (Conv, ConvTranspose, MatMul, Gemm), the ops between "
                     "them left float, so their roundings do not add up"))
    if cfg.mode == "dynamic" and outlier_layers:  # the outlier check ran on calibration rows (outliers.for_search)
        plan.append(({**first, "nodes_to_exclude": list(outlier_layers)}, _outlier_why(outlier_layers)))
    if cfg.mode == "static" and matmuls_only:
        dynamic = {"mode": "dynamic", "per_channel": cfg.per_channel, "weight_type": cfg.weight_type,
                   "reduce_range": cfg.reduce_range or saturates, "nodes_to_exclude": []}
        plan.append((dynamic, DYNAMIC_WHY))
        if outlier_layers:
            plan.append(({**dynamic, "nodes_to_exclude": list(outlier_layers)}, _outlier_why(outlier_layers)))
    return plan


def _outlier_why(layers: Sequence[str]) -> str:
    n = len(layers)
    return (f"remedy: dynamic int8 with the {n} layer{'s' if n != 1 else ''} that write{'s' * (n == 1)} "
            f"{OUTLIER_LAYERS_WHY}")


GATE_CHECKED = 4
"""How many of the SQNR ranking's worst nodes the gate itself scores (each alone in float) before the remedy keeps
nodes in float, with the layers that feed the outputs."""


STALLED = 0.1
"""The exclusion remedy stops doubling the nodes it keeps in float once a step wins back less than this share of
the best drop's excess over the budget (a PP-OCR detector: 1, 2, 4 and 8 nodes all left it where it was)."""


def exclusion_remedy(attempts: list[dict[str, Any]], attempt: Any, base: Path, calib: list[dict[str, np.ndarray]],
                     cfg: QuantizeConfig, bar: Any, gate: Any) -> dict[str, Any] | None:
    """Keep the most sensitive nodes in float, 1, 2, 4, ... up to max_float_nodes, on the best attempt so far. The
    order: the gate's own figure with each of a few candidates alone in float (the GATE_CHECKED worst by SQNR and
    the layers feeding the outputs), then the rest of the SQNR ranking. Only attempts of the configured mode are
    sources: the ranking and the node names it keeps in float are a QDQ graph's (ORT renames a dynamic graph's
    nodes, and its dynamic quantizer has no Gemm)."""
    tried = [a for a in attempts if a["score"] is not None and a.get("quantized")
             and a["settings"]["mode"] == cfg.mode]
    if not tried:
        return None
    best = max(tried, key=lambda a: -gate.drop(0.0, a["score"]))
    settings = dict(best["settings"])
    wanted = min(cfg.calibration_samples, sum(_rows(f) for f in calib))
    hard = memory_cap(cfg.max_memory_mb)
    keep, note = samples_that_fit(base, wanted, copies=3, cap=min(hard or RANK_BYTES, RANK_BYTES), hard=hard,
                                  feed=calib[0])  # both models' tensors
    if keep < 1:
        log.warning("quantize: sensitivity ranking skipped: %s", note)
        attempts[-1]["reason"] = f"{attempts[-1].get('reason') or ''}; sensitivity ranking skipped: {note}"
        return None
    ops = quantizable_ops(settings)
    ranked = rank_sensitive_nodes(base, Path(best["path"]), take_samples(calib, keep), ops)
    names = [n for n, _ in ranked]
    if not names:  # it ended without a word
        attempts[-1]["reason"] = f"{attempts[-1].get('reason') or ''}; no node to keep in float could be ranked"
        return None
    # the gate orders the likeliest few: SQNR's worst and the layers whose rounding reaches the outputs, each alone
    # in float in the best attempt (no recalibration); SQNR ranked a ResNet's fragile head fourth
    feeders = feeding_outputs(graph_of(base).graph, ops)
    pool = list(dict.fromkeys([*names[:GATE_CHECKED], *[n for n in feeders if n in names]]))
    checked = gate_checked(base, Path(best["path"]), pool, lambda p: -gate.drop(0.0, gate.score(p)[gate.metric.name]),
                           Path(best["path"]).parent)
    names = [n for n, _ in checked] + [n for n in names if n not in {c for c, _ in checked}]
    # a dynamic graph's candidates cannot be put back in float one at a time (with_node_in_float reads QDQ): SQNR alone
    why = (f" (ranked by the gate on {len(checked)} candidates" + (f"; SQNR on {note})" if note else ")")) if checked \
        else f" (ranked by SQNR{f' on {note}' if note else ''})"
    counts = sorted({min(2 ** i, cfg.max_float_nodes, len(names)) for i in range(cfg.max_float_nodes.bit_length() + 1)}
                    - {0})
    bar.total += len(counts)
    lowest = best["drop"]
    for count in counts:
        rec = attempt({**settings, "nodes_to_exclude": names[:count]},
                      f"remedy: {count} most sensitive node{'s' if count > 1 else ''} kept in float{why}")
        # the drop is not in a few nodes when a step wins back little: doubling them again would win as little
        stalled = (rec["drop"] is not None and count < counts[-1]
                   and lowest - rec["drop"] < STALLED * (lowest - gate.budget))
        step(bar, last=rec["accepted"] or stalled)
        if rec["accepted"]:
            return rec
        if stalled:
            rec["reason"] += (f"; {count} node{'s' if count > 1 else ''} in float won back under "
                              f"{STALLED:.0%} of the excess over the budget, so no more nodes were tried")
            return None
        lowest = min(lowest, rec["drop"] if rec["drop"] is not None else lowest)
    return None


def _rows(feed: dict[str, np.ndarray]) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if np.ndim(first) else 1


def take_samples(batches: list[dict[str, np.ndarray]], samples: int) -> list[dict[str, np.ndarray]]:
    """The first `samples` rows of a list of feed batches (the last batch cut)."""
    out, left = [], samples
    for feed in batches:
        if left <= 0:
            break
        n = _rows(feed)
        out.append(feed if n <= left else {k: v[:left] if np.ndim(v) else v for k, v in feed.items()})
        left -= n
    return out


def batched(arrays: dict[str, np.ndarray], batch: int,
            axes: dict[str, int | None] | None = None) -> list[dict[str, np.ndarray]]:
    """Whole input arrays (N rows each) as a list of feed batches of `batch` rows, cut along each input's batch axis
    (`axes`: 0 by default; None, and scalars, go whole in every batch: a recurrent state [2, N, 128] is cut on 1)."""
    axis = {k: None if not np.ndim(v) else (axes or {}).get(k, 0) for k, v in arrays.items()}
    first = next(((k, a) for k, a in axis.items() if a is not None), None)
    n = np.shape(arrays[first[0]])[first[1]] if first else 1
    return [{k: v if axis[k] is None else np.take(v, range(i, min(i + batch, n)), axis=axis[k])
             for k, v in arrays.items()} for i in range(0, n, batch)]


def smaller_batches(model: Path, calib: list[dict[str, np.ndarray]], cap: int | None,
                    most: int | None = None) -> list[dict[str, np.ndarray]]:
    """Calibration batches small enough that one holds at most FOLD_BYTES of activations (or the cap), and at most
    `most` rows, when the model's batch is free and every input has it on axis 0: MinMax folds between batches, never
    inside one."""
    rows = _rows(calib[0])
    arrays = [v for v in calib[0].values() if np.ndim(v)]
    if fixed_batch(model) or any(np.shape(v)[0] != rows for v in arrays):
        return calib
    one = {k: v[:1] if np.ndim(v) else v for k, v in calib[0].items()}
    fit = min(rows_that_fit(model, one, rows, cap, every_tensor=True), most or rows)  # calibrators keep every tensor
    if fit >= rows and all(_rows(f) <= fit for f in calib):
        return calib
    # each batch cut on its own: token batches have widths of their own (a batch is as long as its longest row)
    return [piece for f in calib for piece in batched(f, fit)]


def check_feeds(model: Path, feed: dict[str, np.ndarray], what: str) -> None:
    """The feed's names are the model's inputs and their per-sample shapes fit its fixed dimensions (one line
    naming the difference otherwise)."""
    from compress.onnx.graph import graph_inputs, shape_mismatch

    inputs = graph_inputs(graph_of(model).graph)
    names = [i.name for i in inputs]
    if sorted(names) != sorted(feed):
        raise CompressError(f"quantize: {what} inputs are named {', '.join(sorted(feed))}, the model's "
                            f"{', '.join(names)}; give one array per model input")
    wrong = shape_mismatch(inputs, feed)
    if wrong is not None:
        name, shape, want = wrong
        raise CompressError(f"quantize: {what} input {name!r} has shape {'x'.join(map(str, shape[1:]))} per sample, "
                            f"the model takes {want.partition('x')[2]}; check [data] against the exported model")


@quiet_onnx_runtime()  # ORT's quantizer logs through the root logger, into the user's terminal
def quantize_once(base: Path, out: Path, settings: dict[str, Any], calib: list[dict[str, np.ndarray]] | None,
                  cap: int | None = None) -> str:
    """One quantization of the pre-processed model with `settings`, written to `out`; static with
    `settings["bias_correction"]` then has its biases corrected (compress.quantize.bias). Returns a note for the
    summary: how calibration took its samples when in smaller pieces than given (to bound memory), and how many
    biases were corrected; '' when neither."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    mode, exclude = settings["mode"], list(settings["nodes_to_exclude"]) or None
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    large = is_large(base)
    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(base)), keep_io_types=True, node_block_list=exclude)
        save(model, out, large=large)
        return ""
    if mode == "dynamic":
        exclude = with_gemm_matmuls(graph_of(base).graph, exclude)
        # DefaultTensorType: a tensor whose type shape inference cannot tell (seen on transformer graphs) is float
        with one_model_in_ort_quantizer():  # the model's weights once, not three times (compress.quantize.lean)
            quantize_dynamic(base, out, per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                             weight_type=types[settings["weight_type"]], nodes_to_exclude=exclude,
                             use_external_data_format=large, extra_options={"DefaultTensorType": 1})
        release()
        return ""
    note, stride = "", None
    if calib:
        given = _rows(calib[0])
        per_sample_ranges = settings["calibration_method"] == "mean_minmax"  # one sample a batch: its own range
        # ORT's arena holds one batch's activations while it runs
        calib = smaller_batches(base, calib, cap, most=1 if per_sample_ranges else None)
        per_sample, rows = activation_bytes(base, calib[0]), _rows(calib[0])
        if settings["calibration_method"] in ("entropy", "percentile") and per_sample:
            # ORT's histogram calibrators keep every activation of what one collect_data call reads before they
            # fold it into histograms (a ResNet-50 at 224 px: ~100 MB a sample; 64 samples went past 21 GB):
            # ORT's CalibStridedMinMax reads the batches a stride at a time, and histograms merge across strides
            fit = max(1, int(min(cap or FOLD_BYTES, FOLD_BYTES) // (per_sample * 4 * rows)))
            stride = max(d for d in range(1, min(fit, len(calib)) + 1) if len(calib) % d == 0)
            stride = None if stride >= len(calib) else stride
        if (rows < given or stride) and not per_sample_ranges:
            note = (f"calibrated on all {sum(_rows(f) for f in calib)} samples, {(stride or 1) * rows} at a time "
                    "(to bound memory)")
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(divide="ignore", invalid="ignore"):
        # histogram calibrators print progress over our tqdm bar; an infinite range (kept in float below) warns
        _static(base, out, settings, calib, large=large, stride=stride)
    if not large:  # the quantized model read once, edited in memory, written once
        from compress.quantize.bias import correct_biases
        from compress.quantize.qdq import float_outputs, infinite_ranges_in_float, readable_scales, tensors_in_float

        model = onnx.load(str(out))
        infinite = infinite_ranges_in_float(model)
        changed = float_outputs(model) > 0 or bool(infinite)
        changed = bool(tensors_in_float(model, settings.get("float_activations") or ())) or changed
        changed = readable_scales(model) > 0 or changed
        if infinite:
            kept = f"{len(infinite)} tensors with an infinite calibrated range (an attention mask) kept in float"
            note = f"{note}; {kept}" if note else kept
        done = correct_biases(base, model, calib) if settings.get("bias_correction") else {"layers": 0}
        if done["layers"]:
            note = f"{note}; {done['note']}" if note else done["note"]
        if changed or done["layers"]:
            onnx.save(model, str(out))
    else:  # each edit reads the whole graph with its weights, past one protobuf's 2 GB
        skipped = ("over 1 GB: graph outputs, infinite ranges, outlier tensors and biases left as ORT's quantizer "
                   "wrote them")
        note = f"{note}; {skipped}" if note else skipped
    return note


def _static(base: Path, out: Path, settings: dict[str, Any], calib: list[dict[str, np.ndarray]] | None, *,
            large: bool = False, stride: int | None = None) -> None:
    cache, method = None, settings["calibration_method"]
    if calib and not large and method in calibrate.HISTOGRAMS and calibrate.supported():
        # ORT's histogram ranges, computed once per method and read back by the attempts after the first
        with calibrate.remembered_histograms(base, calib, method, stride, out.with_name(f".{out.name}.calib"),
                                             settings.get("op_types")) as path, histograms.faster():
            _quantize_static(base, out, settings, calib, large=large, stride=stride, cache=path)
        return
    if calib and not large and method in calibrate.METHODS and calibrate.supported():
        # the min-max family's ranges from one optimised pass, shared by the attempts (compress.quantize.calibrate)
        cache = calibrate.write_cache(base, calib, method, out.with_name(f".{out.name}.calib"))
    try:
        with histograms.flattened() if method in calibrate.HISTOGRAMS else contextlib.nullcontext():
            _quantize_static(base, out, settings, calib, large=large, stride=stride, cache=cache)
    finally:
        if cache is not None:
            cache.unlink(missing_ok=True)


def _quantize_static(base: Path, out: Path, settings: dict[str, Any], calib: list[dict[str, np.ndarray]] | None, *,
                     large: bool, stride: int | None, cache: Path | None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    exclude = list(settings["nodes_to_exclude"]) or None
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "mean_minmax": CalibrationMethod.MinMax,
               "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    # mean_minmax: each tensor's range is the mean of its per-batch minima and maxima, one sample a batch (NNCF's
    # default for activations): an outlier sample widens it by 1/N of its excess, not all of it
    mean = {"CalibMovingAverage": True} if settings["calibration_method"] == "mean_minmax" else {}
    # MinMax's augmented model outputs only each tensor's min and max, so it holds little; no
    # CalibMaxIntermediateOutputs: in ORT 1.32 it drops the batches it clears instead of folding them into ranges
    quantize_static(base, out, _reader(calib or []), op_types_to_quantize=settings.get("op_types"),
                    quant_format=QuantFormat.QDQ if settings["quant_format"] == "qdq" else QuantFormat.QOperator,
                    per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                    activation_type=types[settings["activation_type"]], weight_type=types[settings["weight_type"]],
                    nodes_to_exclude=exclude, calibrate_method=methods[settings["calibration_method"] or "minmax"],
                    use_external_data_format=large,
                    extra_options={"DefaultTensorType": 1, **mean,
                                   **({"CalibStridedMinMax": stride} if stride else {})},
                    **({"calibration_cache_path": cache} if cache is not None else {}))


def attempt_name(index: int, s: dict[str, Any]) -> str:
    parts = [f"attempt-{index:02d}", s["mode"]]
    if s.get("calibration_method"):
        parts.append(s["calibration_method"])
    if "per_channel" in s:
        parts.append("pc" if s["per_channel"] else "pt")
    if s.get("op_types"):
        parts.append("weighted")
    if s["nodes_to_exclude"]:
        parts.append(f"float{len(s['nodes_to_exclude'])}")
    return "-".join(parts)


def best_method(attempts: list[dict[str, Any]], default: str, gate: Any) -> str:
    tried = [a for a in attempts if a["score"] is not None and a["settings"].get("calibration_method")]
    return max(tried, key=lambda a: -gate.drop(0.0, a["score"]))["settings"]["calibration_method"] if tried else default


FRACTIONS = frozenset({"accuracy", "top1_agreement"})
"""Figures that are shares, shown as percent and their drops in points."""


def shown_drop(gate: Any, value: float) -> str:
    """A drop (or budget) as the summary shows it: points for shares, the figure's own units otherwise. `gate`: a
    Gate, or the name of its metric (what a report keeps of it)."""
    name = gate if isinstance(gate, str) else gate.metric.name
    return f"{value * 100:.2f} points" if name in FRACTIONS else f"{value:.4g}"


def verdict(gate: Any, drop: float) -> tuple[bool, str]:
    """Whether a drop meets the gate's budget, and the line that says so."""
    ok = drop <= gate.budget + 1e-9
    counted = gate.in_samples(drop)
    return ok, (f"{gate.metric.name} drop {shown_drop(gate, drop)}{counted} {'<=' if ok else '>'} budget "
                f"{shown_drop(gate, gate.budget)}")


def _drops(attempts: list[dict[str, Any]]) -> list[float]:
    """The drops of the attempts that quantized something and were scored."""
    return [a["drop"] for a in attempts if a.get("drop") is not None and a.get("quantized")]


def best_drop(attempts: list[dict[str, Any]], gate: Any) -> str:
    drops = _drops(attempts)
    if drops:
        return shown_drop(gate, min(drops))
    built = any(a.get("score") is not None for a in attempts)
    return "none: no attempt quantized a node" if built else "none, every attempt failed to build"


def budget_that_takes_it(attempts: list[dict[str, Any]], gate: Any) -> str:
    """'; KEY VALUE would take it': the smallest budget, at two significant digits, that the best quantized attempt
    meets, in the key's own units (a fraction for --max-accuracy-drop), for the user deciding whether to give it;
    '' when there is none."""
    import math

    drops = [d for d in _drops(attempts) if d > 0]
    if not drops or not gate.key:
        return ""
    best = min(drops)
    step = 10.0 ** (math.floor(math.log10(best)) - 1)
    value = float(f"{math.ceil(best / step - 1e-9) * step:.2g}")
    return f"; {gate.key}{' ' if gate.key.startswith('--') else ' = '}{value:g} would take it"


def short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider").lower()
