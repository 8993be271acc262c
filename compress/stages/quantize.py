"""Quantize stage: ONNX Runtime int8 (static QDQ with calibration, or dynamic) or fp16, gated on accuracy,
and a final pick by measured latency, so that a slower int8 model is never shipped just because it is int8.

Flow: pre-process (shape inference + ORT optimisation) -> first attempt with the configured settings ->
if the accuracy drop exceeds the budget, cheaper remedies in order (other calibration methods, per-channel
flipped, then the most sensitive nodes kept in float, 1, 2, 4, ... of them) -> latency of the float model and
of every attempt through the project's harness -> `final` is the fastest model that meets the budget.
"""
from __future__ import annotations

import contextlib
import io
import math
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from compress.errors import CompressError, first_line as _first_line
from compress.quant_sensitivity import calibration_reader as _reader, rank_sensitive_nodes
from compress.section import Section

Method = Literal["minmax", "entropy", "percentile"]
METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")

# Providers that run fp16 kernels natively; on the others an fp16 model mostly pays for casts.
FP16_PROVIDERS: frozenset[str] = frozenset(
    {"CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider"}
)

# Ops that only move or select values: keeping one in float removes no rounding of its own.
_DATA_MOVEMENT_OPS: frozenset[str] = frozenset(
    {"Relu", "Clip", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split", "Pad", "Gather",
     "GatherElements", "MaxPool", "Resize", "TopK", "Where", "ArgMax"}
)



class QuantizeConfig(Section):
    """The [quantize] section. Defaults are what measured best on an x86 CPU with AVX-512 VNNI / AMX:
    static QDQ, uint8 activations with int8 weights, per-channel weights, no range reduction."""

    mode: Literal["static", "dynamic", "fp16"] = Field(
        "static",
        description="'static': int8 with calibrated activation ranges (QDQ), best for conv nets; 'dynamic': "
        "int8 weights, activation ranges computed at run time, for Linear/MatMul-heavy models; 'fp16': half "
        "precision, for GPU providers.",
    )
    max_accuracy_drop: float = Field(
        0.005,
        ge=0.0,
        le=1.0,
        description="Largest allowed drop in validation accuracy, absolute fraction (0.005 = 0.5 points), "
        "measured in ONNX Runtime against the float model.",
    )
    calibration_method: Method = Field(
        "minmax", description="How static quantization turns calibration activations into ranges; tried first."
    )
    calibration_samples: int = Field(
        256, gt=0, description="Training samples used for calibration (a fixed random subset, seed 0)."
    )
    calibration_batch: int = Field(32, gt=0, description="Batch size for calibration and sensitivity runs.")
    per_channel: bool = Field(
        True, description="One weight scale per output channel (more accurate; about 2% slower than per-tensor)."
    )
    quant_format: Literal["qdq", "qoperator"] = Field(
        "qdq", description="'qdq' (QuantizeLinear/DequantizeLinear pairs, what ORT's CPU kernels are tuned for) "
        "or 'qoperator' (QLinearConv and friends)."
    )
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="Activation integer type for static mode; uint8 is the fast path on x86 (u8s8)."
    )
    weight_type: Literal["int8", "uint8"] = Field("int8", description="Weight integer type.")
    reduce_range: bool = Field(
        False, description="7-bit weights; only helps on x86 CPUs without VNNI, which saturate 8-bit products."
    )
    fallback: bool = Field(
        True, description="When the first attempt misses the budget, try the remedies in order automatically."
    )
    max_float_nodes: int = Field(
        8, ge=0, description="Most nodes the last remedy may leave in float (tried as 1, 2, 4, ... up to this)."
    )
    pick: Literal["fastest", "quantized"] = Field(
        "fastest",
        description="'fastest': final is the fastest model within budget, the float one included; "
        "'quantized': final is the quantized model whenever it meets the budget, even if slower (for size).",
    )


def quantize(
    onnx_path: Path,
    out_dir: Path,
    cfg: QuantizeConfig,
    *,
    calib_x: np.ndarray | None,
    val_x: np.ndarray,
    val_y: np.ndarray,
    providers: list[str],
    batch_sizes: list[int],
    threads: int = 1,
    progress: bool = True,
    bench_settings: Any = None,
) -> dict[str, Any]:
    """Quantize `onnx_path` into `out_dir`, gate every attempt on accuracy, and pick float or quantized by latency.

    Returns {"attempts": [{"name", "settings", "path", "accuracy", "accuracy_drop", "bytes", "latency",
    "accepted", "reason"}], "float": {"path", "accuracy", "bytes", "latency"}, "chosen": path of the quantized
    model that met the budget or None, "final": "float" | "quantized", "why": one sentence, "pick": details}.
    `latency` is {"rows": harness rows, "unavailable": [{"provider", "reason"}]}. When nothing meets the budget,
    chosen is None and final is "float"; the caller decides whether that fails the run. `bench_settings` (a
    compress.bench.harness.BenchSettings) defaults to a lighter profile than the harness's, since every attempt
    is timed: 10 warm-up runs, 3 repetitions of at least 0.3 s.
    """
    from tqdm import tqdm

    from compress.bench.harness import BenchSettings, accuracy
    from compress.bench.providers import resolve_provider

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise CompressError(f"{onnx_path}: no such model; run the export stage first")
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise CompressError(f"benchmark.batch_sizes: expected positive integers, got {batch_sizes!r}")
    ort_providers = [resolve_provider(p) for p in providers] or ["CPUExecutionProvider"]
    if cfg.mode == "fp16" and cfg.pick == "quantized" and not FP16_PROVIDERS.intersection(ort_providers):
        raise CompressError(
            f"quantize.mode: 'fp16' with pick = 'quantized' needs a GPU provider (cuda, tensorrt, dml, coreml), "
            f"got {providers!r}; add one to benchmark.providers or use mode = 'static' or 'dynamic'"
        )
    input_name, item_shape = _model_input(onnx_path)
    val_x, val_y = _check_val(val_x, val_y, item_shape)
    if cfg.mode == "static" or (calib_x is not None and len(calib_x)):
        calib = _check_calib(calib_x, item_shape, cfg)
    else:
        calib = None
    eval_provider = _eval_provider(ort_providers)
    out_dir.mkdir(parents=True, exist_ok=True)

    float_acc = accuracy(onnx_path, val_x, val_y, provider=eval_provider)
    base = out_dir / "preprocessed.onnx"
    preprocess_note = _preprocess(onnx_path, base, cfg.mode)
    sample = val_x

    bench = bench_settings or BenchSettings(warmup_runs=10, min_runs=50, min_seconds=0.3, repetitions=3)

    def measure(path: Path) -> dict[str, Any]:
        return _latency(path, ort_providers, batch_sizes, threads, input_name, sample, bench)

    attempts: list[dict[str, Any]] = []

    def attempt(settings: dict[str, Any], why: str) -> dict[str, Any]:
        name = _attempt_name(len(attempts) + 1, settings)
        path = out_dir / f"{name}.onnx"
        record: dict[str, Any] = {"name": name, "settings": settings, "path": str(path), "why_tried": why}
        try:
            _quantize_once(base, path, settings, calib, input_name, cfg.calibration_batch)
            acc = accuracy(path, val_x, val_y, provider=eval_provider)
        except CompressError:
            raise
        except Exception as exc:  # ORT rejects some op/type combinations; that attempt fails, the next may not
            record.update(accuracy=None, accuracy_drop=None, bytes=None, latency=None, accepted=False,
                          reason=f"failed: {_first_line(exc)}")
        else:
            drop, reduced = float_acc - acc, _is_reduced(path, settings["mode"])
            ok = reduced and drop <= cfg.max_accuracy_drop + 1e-9
            reason = (f"accuracy drop {drop * 100:.2f} points {'<=' if ok else '>'} budget "
                      f"{cfg.max_accuracy_drop * 100:.2f}" if reduced
                      else "nothing was left quantized (every candidate node kept in float)")
            record.update(accuracy=acc, accuracy_drop=drop, bytes=path.stat().st_size, latency=None, accepted=ok,
                          reason=reason)
        attempts.append(record)
        return record

    plan = _remedy_plan(cfg)
    bar = tqdm(total=len(plan) + 1, desc=f"quantize ({cfg.mode})", disable=not progress, leave=False)
    accepted: dict[str, Any] | None = None
    for settings, why in plan:
        if settings.get("calibration_method", "") is None:  # the flip reuses the most accurate method so far
            settings = {**settings, "calibration_method": _best_method(attempts, cfg.calibration_method)}
        rec = attempt(settings, why)
        bar.update(1)
        if rec["accepted"] or not cfg.fallback:
            accepted = rec if rec["accepted"] else None
            break
    if accepted is None and cfg.fallback and cfg.max_float_nodes > 0:
        accepted = _exclusion_remedy(attempts, attempt, base, calib if calib is not None else val_x,
                                     input_name, cfg, bar)
    bar.update(1)
    bar.close()

    float_latency = measure(onnx_path)
    for rec in attempts:
        if rec["accuracy"] is not None:
            rec["latency"] = measure(Path(rec["path"]))
    float_info = {"path": str(onnx_path), "accuracy": float_acc, "bytes": onnx_path.stat().st_size,
                  "latency": float_latency}
    result: dict[str, Any] = {"mode": cfg.mode, "accuracy_provider": eval_provider, "preprocess": preprocess_note,
                              "attempts": attempts, "float": float_info}
    if accepted is None:
        tried = len(attempts)
        result.update(chosen=None, final="float", pick=None,
                      why=f"no quantized model met the accuracy budget of {cfg.max_accuracy_drop * 100:.2f} points "
                      f"after {tried} attempt{'s' if tried != 1 else ''} (best drop "
                      f"{_best_drop(attempts)}); keeping the float model")
        return result
    chosen = out_dir / f"model-{'fp16' if cfg.mode == 'fp16' else 'int8'}.onnx"
    shutil.copyfile(accepted["path"], chosen)
    decision = pick_final(float_latency["rows"], accepted["latency"]["rows"], prefer_quantized=cfg.pick == "quantized")
    result.update(chosen=str(chosen), final=decision["final"], why=decision["why"], pick=decision,
                  accepted_attempt=accepted["name"])
    return result


def pick_final(float_rows: list[dict[str, Any]], quant_rows: list[dict[str, Any]], *,
               prefer_quantized: bool = False) -> dict[str, Any]:
    """Choose between the float model and an accepted quantized one from harness rows (provider, batch, p50_ms).

    The decider is the geometric mean of the per-(provider, batch) speedups float_p50 / quant_p50, so every
    batch size the pipeline asked for counts equally. Ties go to the float model (same speed, no accuracy risk).
    Returns {"final", "why", "speedup", "speedups": {"provider/bBATCH": speedup}}.
    """
    f = {(r["provider"], r["batch"]): r["p50_ms"] for r in float_rows if r.get("p50_ms")}
    q = {(r["provider"], r["batch"]): r["p50_ms"] for r in quant_rows if r.get("p50_ms")}
    common = sorted(set(f) & set(q))
    speedups = {f"{_short(p)}/b{b}": f[(p, b)] / q[(p, b)] for p, b in common}
    detail = ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items())
    if not common:
        final = "quantized" if prefer_quantized else "float"
        return {"final": final, "speedup": None, "speedups": {},
                "why": f"{final}: no provider measured both models, so speed could not decide"
                + (" (pick = 'quantized')" if prefer_quantized else "; kept the float model")}
    gmean = math.exp(sum(math.log(s) for s in speedups.values()) / len(speedups))
    if prefer_quantized and gmean <= 1.0:
        final, verdict = "quantized", "it is not faster, but pick = 'quantized' keeps it (smaller file)"
    elif gmean > 1.0:
        final, verdict = "quantized", "it is faster"
    else:
        final, verdict = "float", "int8/fp16 is not faster here, so the float model ships"
    return {"final": final, "speedup": gmean, "speedups": speedups,
            "why": f"{final}: quantized vs float speedup {gmean:.2f}x (geometric mean of {detail}); {verdict}"}


# ---------------------------------------------------------------------------------------------------------------
# internals


def _remedy_plan(cfg: QuantizeConfig) -> list[tuple[dict[str, Any], str]]:
    """Attempts before node exclusion, in order: configured, other calibration methods, per-channel flipped."""
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
    return plan


def _exclusion_remedy(attempts: list[dict[str, Any]], attempt: Any, base: Path, x: np.ndarray, input_name: str,
                      cfg: QuantizeConfig, bar: Any) -> dict[str, Any] | None:
    """Keep the most sensitive nodes in float, 1, 2, 4, ... up to max_float_nodes, on the best attempt so far."""
    tried = [a for a in attempts if a["accuracy"] is not None]
    if not tried:
        return None
    best = max(tried, key=lambda a: a["accuracy"])
    settings = dict(best["settings"])
    ranked = rank_sensitive_nodes(base, Path(best["path"]), x[: cfg.calibration_samples], input_name,
                                  _quantizable_ops(settings), batch=cfg.calibration_batch)
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


def _quantize_once(base: Path, out: Path, settings: dict[str, Any], calib: np.ndarray | None, input_name: str,
                   batch: int) -> None:
    """One quantization of the pre-processed model with `settings`, written to `out`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    mode, exclude = settings["mode"], list(settings["nodes_to_exclude"]) or None
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(base)), keep_io_types=True, node_block_list=exclude)
        onnx.save(model, str(out))
        return
    if mode == "dynamic":
        quantize_dynamic(base, out, per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                         weight_type=types[settings["weight_type"]], nodes_to_exclude=exclude)
        return
    with contextlib.redirect_stdout(io.StringIO()):  # histogram calibrators print progress over our tqdm bar
        _static(base, out, settings, calib, input_name, batch)


def _static(base: Path, out: Path, settings: dict[str, Any], calib: np.ndarray | None, input_name: str,
            batch: int) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    exclude = list(settings["nodes_to_exclude"]) or None
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    quantize_static(base, out, _reader(input_name, calib, batch),
                    quant_format=QuantFormat.QDQ if settings["quant_format"] == "qdq" else QuantFormat.QOperator,
                    per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                    activation_type=types[settings["activation_type"]], weight_type=types[settings["weight_type"]],
                    nodes_to_exclude=exclude, calibrate_method=methods[settings["calibration_method"] or "minmax"])


def _preprocess(src: Path, dst: Path, mode: str) -> str:
    """quant_pre_process (shape inference + ORT optimisation); fp16 only needs a plain copy."""
    if mode == "fp16":
        shutil.copyfile(src, dst)
        return "copied (fp16 needs no pre-processing)"
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
        return "quant_pre_process: shape inference + optimisation"
    except Exception as exc:  # symbolic shape inference gives up on some graphs; quantization still works
        shutil.copyfile(src, dst)
        return f"quant_pre_process failed ({_first_line(exc)}); quantized the exported model as is"


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


def _latency(path: Path, providers: list[str], batch_sizes: list[int], threads: int, input_name: str,
             sample: np.ndarray, settings: Any) -> dict[str, Any]:
    """p50 and friends on every provider and batch size via the project's harness; unavailable providers noted."""
    from compress.bench.harness import ProviderUnavailable, measure

    rows: list[dict[str, Any]] = []
    unavailable: list[dict[str, str]] = []
    for provider in providers:
        try:
            for b in batch_sizes:
                reps = -(-b // len(sample))
                inputs = {input_name: np.concatenate([sample] * reps)[:b]}
                row = measure(path, provider, b, threads, inputs=inputs, settings=settings)
                row.pop("samples_ms", None)  # raw samples of every attempt would swamp report.json
                rows.append(row)
        except ProviderUnavailable as exc:
            unavailable.append({"provider": provider, "reason": exc.reason})
        except Exception as exc:  # e.g. a provider without kernels for this model's types: say so, keep going
            unavailable.append({"provider": provider, "reason": f"failed to run: {_first_line(exc)}"})
    return {"rows": rows, "unavailable": unavailable}


def _is_reduced(path: Path, mode: str) -> bool:
    """Whether the model still holds any int8/uint8 (or fp16) weights, i.e. quantization did something."""
    import onnx

    want = {onnx.TensorProto.FLOAT16} if mode == "fp16" else {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(init.data_type in want for init in graph.initializer)


def _model_input(path: Path) -> tuple[str, tuple[int | None, ...]]:
    """The single float input's name and its per-item shape (None for symbolic dims)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        got = [(i.name, i.type.tensor_type.elem_type) for i in inputs]
        raise CompressError(f"{path}: quantize expects one float32 input (batch first), got {got}; "
                            "export the model with a single float input")
    dims = inputs[0].type.tensor_type.shape.dim
    return inputs[0].name, tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[1:])


def _check_items(x: np.ndarray, item_shape: tuple[int | None, ...], what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    shape = x.shape[1:]
    if len(shape) != len(item_shape) or any(e is not None and e != g for e, g in zip(item_shape, shape)):
        want = "x".join("?" if d is None else str(d) for d in item_shape)
        raise CompressError(f"quantize: {what} items must have shape {want} to match the model input, got "
                            f"{'x'.join(map(str, shape))}; check [data] against the exported model")
    return x


def _check_val(val_x: np.ndarray, val_y: np.ndarray, item_shape: tuple[int | None, ...]) -> tuple[np.ndarray, np.ndarray]:
    if val_x is None or len(val_x) == 0 or val_y is None or len(val_y) != len(val_x):
        raise CompressError("quantize: the accuracy gate needs validation samples with one label each, got "
                            f"{0 if val_x is None else len(val_x)} samples and "
                            f"{0 if val_y is None else len(val_y)} labels; set data.val_fraction > 0")
    return _check_items(val_x, item_shape, "validation"), np.asarray(val_y).astype(np.int64).reshape(-1)


def _check_calib(calib_x: np.ndarray | None, item_shape: tuple[int | None, ...], cfg: QuantizeConfig) -> np.ndarray:
    if calib_x is None or len(calib_x) == 0:
        raise CompressError("quantize.mode: 'static' needs calibration samples from the training data, got none; "
                            "provide training data in [data] or use mode = 'dynamic'")
    x = _check_items(calib_x, item_shape, "calibration")
    n = min(cfg.calibration_samples, len(x))
    idx = np.sort(np.random.default_rng(0).permutation(len(x))[:n])
    return x[idx]


def _eval_provider(providers: list[str]) -> str:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return next((p for p in providers if p in available), "CPUExecutionProvider")


def _attempt_name(index: int, s: dict[str, Any]) -> str:
    parts = [f"attempt-{index:02d}", s["mode"]]
    if s.get("calibration_method"):
        parts.append(s["calibration_method"])
    if "per_channel" in s:
        parts.append("pc" if s["per_channel"] else "pt")
    if s["nodes_to_exclude"]:
        parts.append(f"float{len(s['nodes_to_exclude'])}")
    return "-".join(parts)


def _best_method(attempts: list[dict[str, Any]], default: str) -> str:
    tried = [a for a in attempts if a["accuracy"] is not None and a["settings"].get("calibration_method")]
    return max(tried, key=lambda a: a["accuracy"])["settings"]["calibration_method"] if tried else default


def _best_drop(attempts: list[dict[str, Any]]) -> str:
    drops = [a["accuracy_drop"] for a in attempts if a["accuracy_drop"] is not None]
    return f"{min(drops) * 100:.2f} points" if drops else "none, every attempt failed to build"


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider").lower()


# ---------------------------------------------------------------------------------------------------------------
# pipeline stage


def run(ctx: Any) -> Any:
    """Quantize the current final model; `final` becomes the quantized one only if it meets the budget and is faster.

    When nothing meets the budget the stage still succeeds (the report must be written); it sets `gate_failure`,
    which the runner turns into exit code 1 after writing the report.
    """
    from compress.context import StageResult

    cfg, data, qcfg = ctx.cfg, ctx.data, ctx.cfg.quantize
    base_name = ctx.state.get("final", "student")
    base = ctx.models[base_name]
    result = quantize(ctx.run_dir / base["onnx"], ctx.stage_dir, qcfg, calib_x=data.x_train.numpy(),
                      val_x=data.x_val.numpy(), val_y=data.y_val.numpy(), providers=cfg.benchmark.providers,
                      batch_sizes=cfg.benchmark.batch_sizes, threads=cfg.benchmark.threads[0],
                      progress=ctx.progress)
    out = StageResult(state={"final_reason": result["why"]})
    name = f"student-{'fp16' if qcfg.mode == 'fp16' else 'int8'}"  # DESIGN.md's fixed names, pruned or not
    if result["chosen"] is not None:
        chosen = Path(result["chosen"])
        out.artifacts.append(ctx.rel(chosen))
        out.models[name] = {"name": name, "role": "quantized", "onnx": ctx.rel(chosen), "params": base.get("params"),
                            "quantization": {"mode": qcfg.mode, "attempt": result.get("accepted_attempt"),
                                             "from": base_name}}
        out.state["final"] = name if result["final"] == "quantized" else base_name
    else:
        out.state["final"] = base_name
        out.state["gate_failure"] = f"quantize.max_accuracy_drop: {result['why']}"
    lines = ["", "## Quantization attempts", "",
             "| attempt | why tried | accuracy | drop (points) | size | accepted | note |", "|---|---|---|---|---|---|---|"]
    for a in result["attempts"]:
        acc = "-" if a["accuracy"] is None else f"{100 * a['accuracy']:.2f}%"
        drop = "-" if a.get("accuracy_drop") is None else f"{100 * a['accuracy_drop']:.2f}"
        size = "-" if not a.get("bytes") else f"{a['bytes'] / 1024:.1f} KB"
        lines.append(f"| {a['name']} | {a.get('why_tried', '')} | {acc} | {drop} | {size} | "
                     f"{'yes' if a['accepted'] else 'no'} | {a.get('reason') or ''} |")
    lines += ["", f"Pick: {result['why']}"]
    for a in result["attempts"]:
        a.pop("path", None)  # attempt files are scratch; only the chosen model is an artifact
    out.info = {"why": result["why"], "final": result["final"], "attempts": result["attempts"],
                "float": {k: v for k, v in result["float"].items() if k != "path"}, "markdown": lines}
    return out
