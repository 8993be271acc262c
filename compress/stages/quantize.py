"""quantize: the current final model through compress.quantize (the same function as `compress quantize`)."""
from __future__ import annotations

import tempfile
from typing import Any

from compress.context import StageContext
from compress.records import ModelRecord, RunState, StageResult


def run(ctx: StageContext) -> StageResult:
    """Quantize the final model; `final` becomes the quantized one only if it meets the budget and is faster.

    When nothing meets the budget the stage still succeeds (the report must be written); it sets `gate_failure`,
    which the runner turns into exit code 1 after writing the report.
    """
    from compress.hf.pipeline import is_text
    from compress.quantize import quantize

    if is_text(ctx.data):  # hf: models on text: gated on cosine (embedding) or accuracy
        from compress.hf.deploy import quantize_stage

        return quantize_stage(ctx)
    data, qcfg, bcfg = ctx.data, ctx.cfg.quantize, ctx.cfg.benchmark
    base = ctx.final
    calib_x, _ = data.arrays("train", rows=data.calibration_rows(qcfg.calibration_samples))
    with tempfile.TemporaryDirectory(dir=ctx.stage_dir, prefix=".scratch-") as scratch:
        # the gate: validation, never the test split; memory-mapped from scratch, so any size of split fits
        val_x, val_y = data.arrays("val", spill=scratch)
        result = quantize(ctx.run_dir / base.onnx, ctx.stage_dir, qcfg, calib_x=calib_x,
                          val_x=val_x, val_y=val_y, providers=bcfg.providers,
                          batch_sizes=bcfg.batch_sizes, threads=bcfg.threads[0], progress=ctx.progress,
                          provider_options=bcfg.settings().provider_options)
        del val_x
    name = f"student-{'fp16' if qcfg.mode == 'fp16' else 'int8'}"  # DESIGN.md's fixed names, pruned or not
    models: tuple[ModelRecord, ...] = ()
    artifacts: tuple[str, ...] = ()
    if result["chosen"] is not None:
        chosen = ctx.rel(result["chosen"])
        artifacts = (chosen,)
        models = (ModelRecord(name=name, role="quantized", spec=base.spec, origin=ctx.origin("quantize"),
                              onnx=chosen, params=base.params,
                              quantization={"mode": qcfg.mode, "attempt": result.get("accepted_attempt"),
                                            "from": base.name}),)
        state = RunState(final=name if result["final"] == "quantized" else base.name, final_reason=result["why"])
    else:
        state = RunState(final=base.name, final_reason=result["why"],
                         gate_failure=f"quantize.max_accuracy_drop: {result['why']}")
    for a in result["attempts"]:
        a.pop("path", None)  # attempt files are scratch; only the chosen model is an artifact
    info = {"why": result["why"], "final": result["final"], "attempts": result["attempts"],
            "float": {k: v for k, v in result["float"].items() if k != "path"}, "markdown": _markdown(result)}
    return StageResult(artifacts=artifacts, models=models, state=state, info=info)


def _markdown(result: dict[str, Any]) -> list[str]:
    from compress.quantize import attempts_table

    return ["", "## Quantization attempts", "", *attempts_table(result["attempts"]), "",
            f"CPU: {result['cpu_int8']}.", "", f"Pick: {result['why']}"]
