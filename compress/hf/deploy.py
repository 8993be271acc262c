"""The export, quantize and benchmark stages for text models: keyword token inputs, task-aware figures.

- export: every torch model to ONNX (inputs named as the tokenizer names them, batch and sequence axes dynamic),
  parity against torch on the real validation texts, `[export] optimize = "transformer"` kept only if faster.
- quantize: dynamic int8 (per-channel by default) or static QDQ calibrated on training texts, gated on the task's
  figure (cosine to the teacher with `max_cosine_drop`, or accuracy with `max_accuracy_drop`), then float vs
  int8 picked by paired latency at the first benchmark sequence length, as for every other model.
- benchmark: every ONNX model at every `[benchmark] seq_lengths` (real text filling each length, so ids are inside
  the vocabulary and the attention mask is real), plus its figures in ONNX Runtime on the validation texts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.records import ModelRecord, RunState, StageResult


def export_stage(ctx: Any) -> StageResult:
    from compress.hf.export import export_text_model, run_ort
    from compress.hf.pipeline import load_text_model
    from compress.hf.train import predict
    from compress.onnx.parity import compare

    ecfg, data = ctx.cfg.export, ctx.data
    records, artifacts, info = [], [], {}
    for name, rec in ctx.models.items():
        if rec.torch is None:
            continue
        model = load_text_model(ctx, name)
        reference = predict(model, data.encoded["val"]).numpy()
        path = export_text_model(model, data.example(2), ctx.stage_dir / f"{name}.onnx", opset=ecfg.opset)
        check = compare([reference], [run_ort(path, data.encoded["val"])], atol=ecfg.parity_atol, rtol=ecfg.parity_rtol)
        if not check["ok"]:
            raise CompressError(f"{ctx.origin('export.parity_atol')}: {name}.onnx differs from torch by "
                                f"{check['max_abs_diff']:.3g} on the validation texts (allowed {ecfg.parity_atol:g} "
                                f"+ {ecfg.parity_rtol:g} x |output|); the export is wrong, not just imprecise")
        if ecfg.optimize == "transformer":
            from compress.hf.optimize import optimize_if_faster

            info[name] = optimize_if_faster(path, model, data, reference, ecfg, seq_length=_seq(ctx))
        artifacts.append(ctx.rel(path))
        records.append(rec.but(onnx=ctx.rel(path), parity=check))
    return StageResult(artifacts=tuple(artifacts), models=tuple(records), info=info)


def _seq(ctx: Any) -> int:
    return int(ctx.cfg.benchmark.seq_lengths[0])


def feed_for(ctx: Any, batch: int, seq_length: int) -> dict:
    """Benchmark inputs: validation texts run together to fill `seq_length` tokens in each of `batch` rows."""
    from compress.hf.export import bench_feed
    from compress.hf.model import load_tokenizer

    tok = load_tokenizer(Path(ctx.data.tokenizer_dir), ctx.origin("teacher.model"))
    return bench_feed(tok, ctx.data.texts["val"], ctx.data.input_names, batch=batch, seq_length=seq_length)


def figures(ctx: Any, path: Path, split: str = "val") -> dict[str, float]:
    """The model's task figures in ONNX Runtime on `split`'s texts (val for gates, the eval split for the report)."""
    from compress.hf.export import run_ort
    from compress.hf.pipeline import scores_of, teacher_outputs

    _, t_ref = teacher_outputs(ctx, split)
    return scores_of(ctx.data, run_ort(path, ctx.data.encoded[split]), t_ref.numpy(), split)


def quantize_stage(ctx: Any) -> StageResult:
    from compress.hf.quantize import quantize_text

    qcfg, bcfg = ctx.cfg.quantize, ctx.cfg.benchmark
    base = ctx.final
    result = quantize_text(ctx.run_dir / base.onnx, ctx.stage_dir, qcfg, task=ctx.data.task,
                           score=lambda p: figures(ctx, Path(p)), calibration=ctx.data.encoded["train"],
                           feed=lambda b: feed_for(ctx, b, _seq(ctx)), providers=list(bcfg.providers),
                           batch_sizes=list(bcfg.batch_sizes), threads=bcfg.threads[0],
                           provider_options=bcfg.settings().provider_options)
    name = "student-int8"
    models: tuple[ModelRecord, ...] = ()
    artifacts: tuple[str, ...] = ()
    if result["chosen"] is not None:
        chosen = ctx.rel(Path(result["chosen"]))
        artifacts = (chosen,)
        models = (ModelRecord(name=name, role="quantized", spec=base.spec, origin=ctx.origin("quantize"), onnx=chosen,
                              params=base.params, quantization={"mode": qcfg.mode, "attempt": result["accepted_attempt"],
                                                                "from": base.name}),)
        state = RunState(final=name if result["final"] == "quantized" else base.name, final_reason=result["why"])
    else:
        key = "max_cosine_drop" if ctx.data.task == "embedding" else "max_accuracy_drop"
        state = RunState(final=base.name, final_reason=result["why"], gate_failure=f"quantize.{key}: {result['why']}")
    info = {k: v for k, v in result.items() if k != "chosen"}
    info["markdown"] = ["", "## Quantization attempts", "", *result["table"], "", f"Pick: {result['why']}"]
    return StageResult(artifacts=artifacts, models=models, state=state, info=info)


def benchmark_stage(ctx: Any) -> StageResult:
    from compress.bench.harness import bench_models

    bcfg = ctx.cfg.benchmark
    paths = {name: ctx.run_dir / rec.onnx for name, rec in ctx.models.items() if rec.onnx is not None}
    rows: dict[str, dict[str, list]] = {name: {"latency": [], "unavailable": []} for name in paths}
    for seq in bcfg.seq_lengths:
        feeds = {b: feed_for(ctx, b, seq) for b in bcfg.batch_sizes}
        measured = bench_models(paths, list(bcfg.providers), list(bcfg.batch_sizes), list(bcfg.threads),
                                settings=bcfg.settings(), inputs_for_batch=lambda b: feeds[b], progress=ctx.progress)
        for name, got in measured.items():
            rows[name]["latency"] += [{**r, "seq_length": int(seq)} for r in got["latency"]]
            rows[name]["unavailable"] = got["unavailable"]
    records = []
    for name, path in paths.items():
        # the report's figures on the test split (no choice saw it), validation's beside them
        scores, on_val = figures(ctx, path, ctx.data.eval_split), figures(ctx, path, "val")
        scores.update({f"{k}_val": v for k, v in on_val.items() if k != "accuracy"})
        records.append(ctx.models[name].but(bytes=path.stat().st_size, accuracy=scores.get("accuracy"),
                                            accuracy_val=on_val.get("accuracy"), scores=scores,
                                            latency=tuple(rows[name]["latency"]),
                                            unavailable=tuple(rows[name]["unavailable"])))
    return StageResult(models=tuple(records))
