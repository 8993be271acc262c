"""int8 for transformer graphs: dynamic (weights int8, activations quantized at run time: the usual choice for
transformers on CPU) or static QDQ calibrated on training texts; gated on the task's figure; float vs int8 picked
by paired latency (compress.quantize.pick_final), as for every model.

Per-channel weights matter for transformers: by hand on MiniLM-L6, dynamic int8 kept cosine 0.963 per-tensor and
0.993 per-channel at the same speed (reduce_range: 0.879). So per-channel is tried first (the section's default)
and per-tensor is the remedy, not the other way round.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from compress.errors import CompressError, first_line


def quantize_text(onnx_path: Path, out_dir: Path, cfg: Any, *, task: str, score: Callable[[Path], dict],
                  calibration: dict, feed: Callable[[int], dict], providers: list[str], batch_sizes: list[int],
                  threads: int = 1, provider_options: Any = None) -> dict[str, Any]:
    """Quantize `onnx_path` in `out_dir`; `score(path)` gives the task's figures (cosine or accuracy)."""
    from compress.bench.config import PICK_PROFILE
    from compress.quantize.api import pick_final
    from compress.quantize.attempts import paired_latency

    out_dir.mkdir(parents=True, exist_ok=True)
    metric = "cosine" if task == "embedding" else "accuracy"
    budget = cfg.max_cosine_drop if task == "embedding" else cfg.max_accuracy_drop
    float_score = score(onnx_path)[metric]
    plan = [{"per_channel": cfg.per_channel, "reduce_range": cfg.reduce_range}]
    if cfg.fallback:
        plan.append({"per_channel": not cfg.per_channel, "reduce_range": cfg.reduce_range})
    attempts, accepted = [], None
    for i, settings in enumerate(plan, 1):
        name = f"{i}-{cfg.mode}-{'pc' if settings['per_channel'] else 'pt'}"
        path = out_dir / f"{name}.onnx"
        rec: dict[str, Any] = {"name": name, "settings": {"mode": cfg.mode, **settings}}
        try:
            _quantize_once(onnx_path, path, cfg, settings, calibration)
            got = score(path)[metric]
        except CompressError:
            raise
        except Exception as exc:  # ORT rejects some graphs for some settings; the next attempt may work
            rec.update(score=None, drop=None, accepted=False, reason=f"failed: {first_line(exc)}")
        else:
            drop = float_score - got
            ok = drop <= budget + 1e-9
            rec.update(score=got, drop=drop, bytes=path.stat().st_size, accepted=ok,
                       reason=f"{metric} drop {drop:.4f} {'<=' if ok else '>'} budget {budget:g}", path=str(path))
        attempts.append(rec)
        if rec["accepted"]:
            accepted = rec
            break
    result: dict[str, Any] = {"metric": metric, "float_score": float_score, "budget": budget, "attempts": attempts,
                              "table": _table(attempts, metric)}
    if accepted is None:
        result.update(chosen=None, final="float", why=f"no int8 model kept {metric} within {budget:g} of the float "
                      f"model's {float_score:.4f}; keeping the float model")
        return result
    chosen = out_dir / "model-int8.onnx"
    shutil.copyfile(accepted["path"], chosen)
    settings = PICK_PROFILE.settings(provider_options=provider_options)
    paired = paired_latency(onnx_path, chosen, providers, batch_sizes, threads, feed, settings)
    decision = pick_final([], [], prefer_quantized=cfg.pick == "quantized", paired=paired)
    for a in attempts:
        a.pop("path", None)
    result.update(chosen=str(chosen), final=decision["final"], why=decision["why"], pick=decision,
                  accepted_attempt=accepted["name"], paired=paired)
    return result


def _quantize_once(src: Path, dst: Path, cfg: Any, settings: dict, calibration: dict) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    weight = QuantType.QInt8 if cfg.weight_type == "int8" else QuantType.QUInt8
    if cfg.mode == "dynamic":
        quantize_dynamic(str(src), str(dst), per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                         weight_type=weight, extra_options={"DefaultTensorType": 1})
        return
    if cfg.mode != "static":
        raise CompressError(f"quantize.mode: text models support 'dynamic' and 'static', got {cfg.mode!r}")
    act = QuantType.QUInt8 if cfg.activation_type == "uint8" else QuantType.QInt8
    quantize_static(str(src), str(dst), _Reader(calibration, cfg.calibration_samples, cfg.calibration_batch),
                    quant_format=QuantFormat.QDQ if cfg.quant_format == "qdq" else QuantFormat.QOperator,
                    per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                    activation_type=act, weight_type=weight, extra_options={"DefaultTensorType": 1})


class _Reader:
    """Calibration batches of training texts (a fixed subset), padding trimmed per batch."""

    def __init__(self, encoded: dict, samples: int, batch: int) -> None:
        import torch

        n = min(samples, len(encoded["input_ids"]))
        idx = torch.randperm(len(encoded["input_ids"]), generator=torch.Generator().manual_seed(0))[:n]
        self.batches = []
        for i in range(0, n, batch):
            rows = idx[i:i + batch]
            width = max(int(encoded["attention_mask"][rows].sum(1).max()), 1)
            self.batches.append({k: v[rows, :width].numpy().astype("int64") for k, v in encoded.items()})
        self.it = iter(self.batches)

    def get_next(self):
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = iter(self.batches)


def _table(attempts: list[dict], metric: str) -> list[str]:
    lines = [f"| attempt | {metric} | drop | size | accepted | note |", "|---|---|---|---|---|---|"]
    for a in attempts:
        s = "-" if a.get("score") is None else f"{a['score']:.4f}"
        d = "-" if a.get("drop") is None else f"{a['drop']:.4f}"
        size = f"{a['bytes'] / 1e6:.1f} MB" if a.get("bytes") else "-"
        lines.append(f"| {a['name']} | {s} | {d} | {size} | {'yes' if a['accepted'] else 'no'} | {a['reason']} |")
    return lines
