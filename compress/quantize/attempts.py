"""One quantization attempt and the pieces around it: the remedy plan, pre-processing, checks of the data,
latency of an attempt on every provider. `compress.quantize.api.quantize` strings them together."""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compress.errors import CompressError, first_line
from compress.quantize.config import METHODS, QuantizeConfig
from compress.quantize.sensitivity import calibration_reader as _reader, rank_sensitive_nodes, samples_that_fit

# Ops that only move or select values: keeping one in float removes no rounding of its own.
_DATA_MOVEMENT_OPS: frozenset[str] = frozenset(
    {"Relu", "Clip", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split", "Pad", "Gather",
     "GatherElements", "MaxPool", "Resize", "TopK", "Where", "ArgMax"}
)


def remedy_plan(cfg: QuantizeConfig, *, saturates: bool = False) -> list[tuple[dict[str, Any], str]]:
    """Attempts before node exclusion, in order: configured, other calibration methods, per-channel flipped, and
    on a CPU whose u8s8 kernels saturate (x86 without VNNI, `saturates`) 7-bit weights (reduce_range)."""
    first = {"mode": cfg.mode, "per_channel": cfg.per_channel, "weight_type": cfg.weight_type,
             "reduce_range": cfg.reduce_range, "nodes_to_exclude": []}
    if cfg.mode == "static":
        first.update(calibration_method=cfg.calibration_method, quant_format=cfg.quant_format,
                     activation_type=cfg.activation_type)
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
    return plan


def exclusion_remedy(attempts: list[dict[str, Any]], attempt: Any, base: Path, x: np.ndarray, input_name: str,
                      cfg: QuantizeConfig, bar: Any, *, batch: int) -> dict[str, Any] | None:
    """Keep the most sensitive nodes in float, 1, 2, 4, ... up to max_float_nodes, on the best attempt so far."""
    tried = [a for a in attempts if a["accuracy"] is not None]
    if not tried:
        return None
    best = max(tried, key=lambda a: a["accuracy"])
    settings = dict(best["settings"])
    keep, _ = samples_that_fit(base, min(cfg.calibration_samples, len(x)), copies=3)  # both models' activations
    ranked = rank_sensitive_nodes(base, Path(best["path"]), x[:keep], input_name, _quantizable_ops(settings),
                                  batch=batch)
    names = [n for n, _ in ranked]
    counts = sorted({min(2 ** i, cfg.max_float_nodes, len(names)) for i in range(cfg.max_float_nodes.bit_length() + 1)})
    bar.total += len(counts)
    for count in counts:
        if count == 0:
            continue
        rec = attempt({**settings, "nodes_to_exclude": names[:count]},
                      f"remedy: {count} most sensitive node{'s' if count > 1 else ''} kept in float")
        bar.update(1)
        if rec["accepted"]:
            return rec
    return None


def quantize_once(base: Path, out: Path, settings: dict[str, Any], calib: np.ndarray | None, input_name: str,
                   batch: int) -> str:
    """One quantization of the pre-processed model with `settings`, written to `out`. Returns a note for the
    summary when the calibration used fewer samples than given (memory), else ''."""
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
        quantize_dynamic(base, out, per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                         weight_type=types[settings["weight_type"]], nodes_to_exclude=exclude,
                         use_external_data_format=large)
        return ""
    note = ""
    if calib is not None and settings["calibration_method"] in ("entropy", "percentile"):
        # ORT's histogram calibrators keep every activation of every calibration batch before they summarise
        # (a ResNet-50 at 224 px: ~100 MB a sample; 64 samples went past 21 GB): take what fits
        keep, note = samples_that_fit(base, len(calib), copies=4)
        calib = calib[:keep]
    with contextlib.redirect_stdout(io.StringIO()):  # histogram calibrators print progress over our tqdm bar
        _static(base, out, settings, calib, input_name, batch, large=large)
    return note


def _static(base: Path, out: Path, settings: dict[str, Any], calib: np.ndarray | None, input_name: str,
            batch: int, *, large: bool = False) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    exclude = list(settings["nodes_to_exclude"]) or None
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    quantize_static(base, out, _reader(input_name, calib, batch),
                    quant_format=QuantFormat.QDQ if settings["quant_format"] == "qdq" else QuantFormat.QOperator,
                    per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                    activation_type=types[settings["activation_type"]], weight_type=types[settings["weight_type"]],
                    nodes_to_exclude=exclude, calibrate_method=methods[settings["calibration_method"] or "minmax"],
                    use_external_data_format=large)


def is_large(path: Path) -> bool:
    """Whether the model at `path` (with its external data) is too big to go through one serialized protobuf:
    ORT's quantizer and pre-processor then write external data too. Half the limit leaves room for what they add."""
    from compress.onnx.graph import PROTOBUF_LIMIT, model_bytes

    return model_bytes(path) > PROTOBUF_LIMIT // 2


def save(model: Any, path: Path, *, large: bool) -> None:
    """onnx.save, with the weights in `<name>.data` beside the model when it is large."""
    import onnx

    if large:
        from compress.cache import usual_mode

        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}.data")
        usual_mode(path.with_name(f"{path.name}.data"))
    else:
        onnx.save(model, str(path))


QDQ_OPSET = 13
"""Static QDQ needs this opset: per-channel QuantizeLinear/DequantizeLinear (their `axis`) arrived in opset 13."""


def preprocess(src: Path, dst: Path, mode: str) -> str:
    """quant_pre_process (shape inference + ORT optimisation); fp16 only needs a plain copy. An old IR 3 graph
    first loses the inputs that are really its weights (or every attempt would ask for them as inputs), and a
    graph older than opset 13 is upgraded for static QDQ (per-channel scales need it; ORT writes an invalid model
    otherwise). Returns what was done, for the summary."""
    import onnx

    large = is_large(src)
    src, notes = _brought_up_to_date(src, dst.with_name(f"{dst.stem}.inputs.onnx"), mode, large)
    if large:
        notes.append("over 1 GB: weights kept as external data")
    if mode == "fp16":
        save(onnx.load(str(src)), dst, large=large) if large else shutil.copyfile(src, dst)
        return "; ".join(notes + ["copied (fp16 needs no pre-processing)"])
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
                          external_data_location=f"{dst.name}.data")
        return "; ".join(notes + ["quant_pre_process: shape inference + optimisation"])
    except Exception as exc:  # symbolic shape inference gives up on some graphs; quantization still works
        save(onnx.load(str(src)), dst, large=large) if large else shutil.copyfile(src, dst)
        return "; ".join(notes + [f"quant_pre_process failed ({first_line(exc)}); quantized the model as is"])


def _brought_up_to_date(src: Path, copy: Path, mode: str, large: bool) -> tuple[Path, list[str]]:
    """`src`, or `copy` written with the IR 3 weight inputs dropped and, for static QDQ, the opset raised to 13.
    The graph is parsed once, without its external weights; they are read only when a copy must be written (a 2 GB
    model held in memory here would sit beside every later step)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from compress.onnx.graph import default_opset, upgraded, without_initializer_inputs

    model = onnx.load(str(src), load_external_data=False)
    notes: list[str] = []
    changed = without_initializer_inputs(model)
    if changed:
        notes.append("weights dropped from the graph inputs (IR 3)")
    old_opset = default_opset(model)
    if not changed and not (mode == "static" and old_opset < QDQ_OPSET):
        return src, notes
    load_external_data_for_model(model, str(src.parent))  # the converter and the copy need every weight
    newer = upgraded(model, QDQ_OPSET, origin=str(src), why="static QDQ") if mode == "static" else None
    if newer is not None:
        notes.append(f"opset {old_opset} upgraded to {QDQ_OPSET} (onnx version converter)")
    save(newer if newer is not None else model, copy, large=large)
    return copy, notes


def _quantizable_ops(settings: dict[str, Any]) -> set[str] | None:
    """Op types worth keeping in float: those the quantizer touches, less pure data movement (no arithmetic)."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    if settings["mode"] == "dynamic":
        ops = set(IntegerOpsRegistry)
    elif settings["mode"] == "static":  # quantize_static's default op list is the union of both registries
        ops = set(QDQRegistry) | set(QLinearOpsRegistry)
    else:
        return None
    return ops - _DATA_MOVEMENT_OPS


def batch_of(sample: np.ndarray, b: int) -> np.ndarray:
    """`b` rows of `sample` (repeated when it has fewer), never a copy of the whole sample (it may be memory-mapped)."""
    return np.concatenate([sample[:b]] * -(-b // len(sample)))[:b]


def latency(path: Path, providers: list[str], batch_sizes: list[int], threads: int, input_name: str,
             sample: np.ndarray, settings: Any) -> dict[str, Any]:
    """p50 and friends on every provider and batch size via the project's harness; unavailable providers noted."""
    from compress.bench.harness import ProviderUnavailable, measure

    rows: list[dict[str, Any]] = []
    unavailable: list[dict[str, str]] = []
    for provider in providers:
        try:
            for b in batch_sizes:
                inputs = {input_name: batch_of(sample, b)}
                row = measure(path, provider, b, threads, inputs=inputs, settings=settings)
                row.pop("samples_ms", None)  # raw samples of every attempt would swamp report.json
                rows.append(row)
        except ProviderUnavailable as exc:
            unavailable.append({"provider": provider, "reason": exc.reason})
        except Exception as exc:  # e.g. a provider without kernels for this model's types: say so, keep going
            unavailable.append({"provider": provider, "reason": f"failed to run: {first_line(exc)}"})
    return {"rows": rows, "unavailable": unavailable}


def paired_latency(float_path: Path, quant_path: Path, providers: list[str], batch_sizes: list[int], threads: int,
                   feed: Callable[[int], dict[str, np.ndarray]], settings: Any) -> list[dict[str, Any]]:
    """Float and quantized timed in alternating blocks (compress.bench.paired), one row per provider and batch on
    `feed(batch)`: `ratio` is quantized / float with its CI. Providers that cannot run both are left out (latency()
    notes why, or the benchmark stage reports them)."""
    from compress.bench.paired import paired_bench

    rows: list[dict[str, Any]] = []
    for provider in providers:
        for b in batch_sizes:
            try:
                row = paired_bench(float_path, quant_path, provider, b, threads, settings, inputs=feed(b))
            except Exception:  # noqa: BLE001 - unavailable or failing providers are already reported by latency()
                break
            for key in ("old_block_p50_ms", "new_block_p50_ms"):
                row.pop(key)  # block lists of every pick would swamp report.json
            rows.append(row)
    return rows


def is_reduced(path: Path, mode: str) -> bool:
    """Whether the model still holds any int8/uint8 (or fp16) weights, i.e. quantization did something."""
    import onnx

    want = {onnx.TensorProto.FLOAT16} if mode == "fp16" else {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(init.data_type in want for init in graph.initializer)


def model_input(path: Path) -> tuple[str, tuple[int | None, ...]]:
    """The single float input's name and its per-item shape (None for symbolic dims)."""
    import onnx

    from compress.onnx.graph import single_input

    name, elem_type, dims = single_input(path, what="quantize")
    if elem_type != onnx.TensorProto.FLOAT:
        raise CompressError(f"{path}: quantize expects a float32 input, got {name!r} of type "
                            f"{onnx.TensorProto.DataType.Name(elem_type)}; export the model with a float input")
    return name, dims


def _check_items(x: np.ndarray, item_shape: tuple[int | None, ...], what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    shape = x.shape[1:]
    if len(shape) != len(item_shape) or any(e is not None and e != g for e, g in zip(item_shape, shape)):
        want = "x".join("?" if d is None else str(d) for d in item_shape)
        raise CompressError(f"quantize: {what} items must have shape {want} to match the model input, got "
                            f"{'x'.join(map(str, shape))}; check [data] against the exported model")
    return x


def check_val(val_x: np.ndarray, val_y: np.ndarray, item_shape: tuple[int | None, ...]) -> tuple[np.ndarray, np.ndarray]:
    if val_x is None or len(val_x) == 0 or val_y is None or len(val_y) != len(val_x):
        raise CompressError("quantize: the accuracy gate needs validation samples with one label each, got "
                            f"{0 if val_x is None else len(val_x)} samples and "
                            f"{0 if val_y is None else len(val_y)} labels; set data.val_fraction > 0")
    return _check_items(val_x, item_shape, "validation"), np.asarray(val_y).astype(np.int64).reshape(-1)


def check_calib(calib_x: np.ndarray | None, item_shape: tuple[int | None, ...], cfg: QuantizeConfig) -> np.ndarray:
    if calib_x is None or len(calib_x) == 0:
        raise CompressError("quantize.mode: 'static' needs calibration samples from the training data, got none; "
                            "provide training data in [data] or use mode = 'dynamic'")
    x = _check_items(calib_x, item_shape, "calibration")
    n = min(cfg.calibration_samples, len(x))
    idx = np.sort(np.random.default_rng(0).permutation(len(x))[:n])
    return x[idx]


def eval_provider(providers: list[str]) -> str:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return next((p for p in providers if p in available), "CPUExecutionProvider")


def attempt_name(index: int, s: dict[str, Any]) -> str:
    parts = [f"attempt-{index:02d}", s["mode"]]
    if s.get("calibration_method"):
        parts.append(s["calibration_method"])
    if "per_channel" in s:
        parts.append("pc" if s["per_channel"] else "pt")
    if s["nodes_to_exclude"]:
        parts.append(f"float{len(s['nodes_to_exclude'])}")
    return "-".join(parts)


def best_method(attempts: list[dict[str, Any]], default: str) -> str:
    tried = [a for a in attempts if a["accuracy"] is not None and a["settings"].get("calibration_method")]
    return max(tried, key=lambda a: a["accuracy"])["settings"]["calibration_method"] if tried else default


def best_drop(attempts: list[dict[str, Any]]) -> str:
    drops = [a["accuracy_drop"] for a in attempts if a["accuracy_drop"] is not None]
    return f"{min(drops) * 100:.2f} points" if drops else "none, every attempt failed to build"


def short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider").lower()
