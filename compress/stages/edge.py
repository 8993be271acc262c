"""edge: ORT-format copy of the final model, its reduced-operator config, parity, and edge readiness
(compress.edge.prepare). Runs when `[export] ort_format = true`, after the benchmark stage settled the final model."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from compress.context import StageContext
from compress.records import RunState, StageResult


def run(ctx: StageContext) -> StageResult:
    """Prepare the final model for a mobile/minimal ONNX Runtime build."""
    from compress.edge import prepare
    from compress.quantize.config import OUTLIER_RATIO

    final = ctx.final
    onnx_path = ctx.run_dir / final.onnx
    batch = ctx.cfg.export.fixed_batch
    inputs = ctx.data.inputs.as_feed(ctx.data.example(batch or 1))  # real validation inputs
    targets = ctx.cfg.export.edge_targets
    with tempfile.TemporaryDirectory(dir=ctx.stage_dir, prefix=".scratch-") as scratch:
        qnn = None
        graphs = dict(ctx.state.qnn_qdq or {})
        if "qnn" in targets:  # calibration: training data; accuracy: the split the report's figures come from
            val_x, val_y = ctx.data.arrays(ctx.data.eval_split, limit=ctx.cfg.export.qnn_samples, spill=scratch)
            seq = ctx.data.inputs.seq_lengths(ctx.cfg.benchmark.seq_lengths or (ctx.cfg.data.max_length,))[0]
            qnn = {"calibration": _at(ctx.data.arrays("train", limit=256)[0], seq), "val_x": _at(val_x, seq),
                   "val_y": val_y if ctx.evaluation.task.name == "classification" else None, "seq": seq,
                   "logits": ctx.evaluation.task.name == "classification" if ctx.evaluation.user is None else None,
                   "activation_type": ctx.cfg.export.qnn_activation_type, "reference": _reference(ctx),
                   "provider_options": {k: str(v) for k, v in ctx.cfg.export.qnn_options.items()} or None,
                   "qdq": ctx.run_dir / graphs[graphs["used"]] if graphs else None,
                   "rewrites": dict(ctx.state.qnn_rewrites or {}) if graphs else None,
                   "outlier_ratio": ctx.cfg.quantize.outlier_ratio if ctx.cfg.quantize else OUTLIER_RATIO,
                   **_budget(ctx)}
        section = prepare(onnx_path, ctx.stage_dir, fixed_batch=batch, inputs=inputs, targets=targets, qnn=qnn)
        if qnn is not None and graphs:  # the other of the quantize stage's two QNN graphs, for the comparison
            section["qnn_graphs"] = _both(ctx, onnx_path, batch, qnn, graphs, section.get("qnn") or {})
        qnn = val_x = None
    section = _relative(ctx, {"model": final.name, **section})
    artifacts = [p for p in (section["ort"].get("ort_path"), section["ort"].get("config_path")) if isinstance(p, str)]
    artifacts.append(ctx.rel(ctx.stage_dir / "edge.json"))
    if batch is not None:
        artifacts.append(section["onnx_path"])
    qnn_done = section.get("qnn") or {}
    artifacts += [qnn_done[k] for k in ("qdq_path",) if qnn_done.get(k)]
    if (qnn_done.get("placement") or {}).get("context_path"):
        artifacts.append(qnn_done["placement"]["context_path"])
    return StageResult(artifacts=tuple(artifacts), state=RunState(edge=section),
                       info=_summary(qnn_done, ctx.data.eval_split, (ctx.state.qnn_qdq or {"used": True})["used"]))


def _budget(ctx: StageContext) -> dict:
    """The NPU's budget where it judges what the quantize gate judges: the accuracy drop (labels) or the cosine
    drop (embeddings) of [quantize]; else prepare_qnn's own (0.01 of cosine to the float model: a metric of the
    user's or the tensors task's, in its own units, is not what HTP's reading is judged by)."""
    key = ctx.evaluation.budget_key
    if ctx.cfg.quantize is None or key not in ("max_accuracy_drop", "max_cosine_drop"):
        return {}
    return {"max_accuracy_drop": getattr(ctx.cfg.quantize, key)}


def _summary(qnn: dict, split: str, used: Any) -> dict:
    """The QNN target's placement and budget lines for the terminal summary (report.md has the whole section):
    HTP's reading on `split`, and a word when the quantize stage's QNN graphs (`used`: the one picked, None when
    neither post-training nor QAT met the budget on validation) missed it, which the HTP line alone hid."""
    from compress.edge.qnn_accuracy import budget_line
    from compress.edge.qnn_flow import qnn_table

    if not qnn:
        return {}
    lines = [qnn_table(qnn).splitlines()[0]]
    if qnn.get("budget"):
        lines.append(f"QNN HTP ({split}) {budget_line(qnn['budget'])}")
    if used is None:
        lines.append("QNN graph: neither post-training quantization nor QAT met the budget on validation "
                     "(report.md, quantize)")
    return {"summary_lines": lines}


def _both(ctx: StageContext, onnx_path: Path, batch: int | None, qnn: dict, graphs: dict, used: dict) -> dict:
    """Post-training and quantization-aware QNN graphs on HTP, side by side: the one placed above, and the other
    placed and measured the same way in a folder of its own."""
    from compress.edge.isolated import run_isolated

    out: dict[str, Any] = {"used": graphs["used"]}
    for name in ("ptq", "qat"):
        if name not in graphs:
            continue
        section = used if name == graphs["used"] else run_isolated(
            "compress.edge.qnn_flow:prepare_qnn", {"onnx_path": onnx_path, "out_dir": ctx.stage_dir / f"qnn-{name}",
                                                   "fixed_batch": batch or 1, **{**qnn, "qdq": ctx.run_dir /
                                                                                 graphs[name]}},
            out_dir=ctx.stage_dir / f"qnn-{name}", name="qnn", provider="QNNExecutionProvider")
        placed = section.get("placement") or {}
        out[name] = {"graph": graphs[name], "nodes_on_htp": placed.get("nodes_on_htp"),
                     "nodes_total": placed.get("nodes_total"),
                     "runs_without_fallback": section.get("runs_without_fallback"),
                     "accuracy": section.get("accuracy"), "budget": section.get("budget")}
    return out


def _reference(ctx: StageContext) -> Any:
    """The embedding task's reference rows for the QNN accuracy: the teacher's embeddings of the evaluation split
    (the first qnn_samples); None for other tasks."""
    import numpy as np

    if ctx.evaluation.task.name != "embedding" or ctx.evaluation.user is not None:
        return None
    outputs = ctx.teacher_outputs.get(ctx.data.eval_split) or {}
    if len(outputs) != 1:
        return None
    return np.asarray(next(iter(outputs.values()))[: ctx.cfg.export.qnn_samples], dtype=np.float32)


def _at(arrays: dict, seq: int | None) -> dict:
    """{input name: rows} for the QNN target; token inputs padded (zeros: the pad id, a masked position) or cut to
    the fixed sequence length `seq` HTP compiles for."""
    import numpy as np

    if seq is None:
        return arrays
    out = {}
    for name, a in arrays.items():
        a = np.asarray(a)[:, :seq]
        out[name] = np.pad(a, [(0, 0), (0, seq - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) if a.shape[1] < seq else a
    return out


def _relative(ctx: StageContext, value: Any) -> Any:
    """Paths inside the run directory, made relative to it (the report must survive moving the folder)."""
    if isinstance(value, str) and Path(value).is_absolute() and ctx.run_dir in Path(value).parents:
        return ctx.rel(Path(value))
    if isinstance(value, dict):
        return {k: _relative(ctx, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(ctx, v) for v in value]
    return value
