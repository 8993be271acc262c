"""quantize: the current final model through compress.quantize (the same function as `compress quantize`), gated on
the task's (or the user's) primary figure on the validation split."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.context import StageContext
from compress.records import ModelRecord, RunState, StageResult


def run(ctx: StageContext) -> StageResult:
    """Quantize the final model; `final` becomes the quantized one only if it meets the budget and is faster.

    When nothing meets the budget the stage still succeeds (the report must be written); it sets `gate_failure`,
    which the runner turns into exit code 1 after writing the report.
    """
    from compress.quantize import quantize
    from compress.quantize.gate import Gate

    data, qcfg, bcfg = ctx.data, ctx.cfg.quantize, ctx.cfg.benchmark
    base = ctx.final
    evaluation = ctx.evaluation
    key = evaluation.budget_key
    # the gate: validation, never the test split, streamed through ONNX Runtime (any size of split)
    gate = Gate(score=lambda path: ctx.figures_onnx(path, "val"), metric=evaluation.primary,
                budget=getattr(qcfg, key), key=f"quantize.{key}",
                what=f"{evaluation.primary.name} on the {len(data.val):,} validation examples",
                samples=len(data.val) if evaluation.primary.name == "accuracy" else None)  # a fraction: in samples
    calibration = list(data.feeds("train", rows=data.calibration_rows(qcfg.calibration_samples),
                                  batch_size=qcfg.calibration_batch))
    seq = data.inputs.seq_lengths(bcfg.seq_lengths)[0]
    qat = None
    if qcfg.mode == "qat":
        from compress.qat import train_qat

        def qat(src: Any, dst: Any) -> dict[str, Any]:
            return train_qat(src, dst, ctx, ctx.origin("quantize"))
    result = quantize(ctx.run_dir / base.onnx, ctx.stage_dir, qcfg, gate=gate, calibration=calibration,
                      feed=lambda b: data.inputs.bench_feed(data, b, seq), providers=bcfg.providers,
                      batch_sizes=bcfg.batch_sizes, threads=bcfg.threads[0], progress=ctx.progress,
                      provider_options=bcfg.provider_options, qat=qat,
                      dynamic_remedy="qnn" not in ctx.cfg.export.edge_targets)  # HTP runs static int8 only
    name = f"student-{'fp16' if qcfg.mode == 'fp16' else 'int8'}"  # DESIGN.md's fixed names, pruned or not
    models: tuple[ModelRecord, ...] = ()
    artifacts: tuple[str, ...] = ()
    why = _after(result["why"], ctx.state.final_reason)
    if result["chosen"] is not None:
        chosen = ctx.rel(result["chosen"])
        artifacts = (chosen,)
        models = (ModelRecord(name=name, role="quantized", spec=base.spec, origin=ctx.origin("quantize"),
                              onnx=chosen, params=base.params, parity=_parity(ctx, base, Path(result["chosen"])),
                              quantization={"mode": result.get("accepted_mode", qcfg.mode),
                                            "attempt": result.get("accepted_attempt"), "from": base.name}),)
        state = RunState(final=name if result["final"] == "quantized" else base.name, final_reason=why)
    else:
        if qcfg.mode == "static" and "nothing could be quantized" not in result["why"]:
            result["why"] += ("; [quantize] mode = 'qat' fine-tunes the int8 model against the teacher "
                              "(quantization-aware distillation, docs/qat.md)")
        why = _after(result["why"], ctx.state.final_reason)
        state = RunState(final=base.name, final_reason=why, gate_failure=f"quantize.{key}: {result['why']}")
    from compress.qat.pick import side_by_side

    if qcfg.mode == "qat" and "qnn" in ctx.cfg.export.edge_targets:  # the NPU's own QDQ graph, trained too
        from compress.qat.qnn import qnn_qat

        qnn = qnn_qat(ctx, calibration, gate, result["float"]["score"], ctx.origin("quantize"))
        graphs = {k: ctx.rel(Path(qnn[k]["path"])) for k in ("ptq", "qat")}
        artifacts += tuple(graphs.values())
        from compress.edge.qnn_flow import REWRITES

        state = state.merged(RunState(qnn_qdq={**graphs, "used": qnn["used"]},
                                      qnn_rewrites={k: qnn[k] for k, _ in REWRITES if qnn.get(k)}))
        result["qat"]["qnn"] = qnn
    _test_figures(ctx, result)
    table = side_by_side(result, ctx.data.eval_split, ctx.evaluation.primary.name)
    for entry in ((result.get("qat") or {}).get("qnn") or {}).values():
        if isinstance(entry, dict) and "path" in entry:
            entry["path"] = ctx.rel(Path(entry["path"]))
    for a in result["attempts"]:
        a.pop("path", None)  # attempt files are scratch; only the chosen model is an artifact
    info = {"why": result["why"], "final": result["final"], "attempts": result["attempts"], "gate": result["gate"],
            "preprocess": result["preprocess"], "outliers": result["outliers"],
            "float": {k: v for k, v in result["float"].items() if k != "path"},
            "markdown": _markdown(result, table, ctx.data.eval_split)}
    if result.get("qat") is not None:
        info["qat"] = {**result["qat"], "side_by_side": table}
    return StageResult(artifacts=artifacts, models=models, state=state, info=info)


PARITY_ROWS = 512
"""The first validation rows the quantized model is compared on with the float one it came from."""


def _parity(ctx: StageContext, base: Any, path: Path) -> dict[str, Any]:
    """The quantized model against the float ONNX model it came from, every output, on the first PARITY_ROWS
    validation rows: how far int8 moves the outputs (export's parity is torch against ONNX; no tolerance applies
    here, the gate judged the figures)."""
    from compress.onnx.parity import compare
    from compress.onnx.run import outputs_on

    names, rows = ctx.output_names, range(min(PARITY_ROWS, len(ctx.data.val)))
    reference = outputs_on(ctx.run_dir / base.onnx, ctx.data, "val", names=names, rows=rows)
    got = outputs_on(path, ctx.data, "val", names=names, rows=rows)
    check = compare([reference[n] for n in names], [got[n] for n in names], atol=1e-3)
    return {"against": base.name, **{k: check[k] for k in ("max_abs_diff", "top1_agreement", "samples")}}


def _test_figures(ctx: StageContext, result: dict[str, Any]) -> None:
    """mode = 'qat': the float model, the PTQ and QAT graphs (and the QNN ones) on the split the report's figures
    come from, so the side-by-side reads like every other figure of the report."""
    from compress.bench.providers import EXACT_MATMULS

    if result.get("qat") is None:
        return
    split = ctx.data.eval_split
    name = ctx.evaluation.primary.name
    graphs = [(a, None) for a in result["attempts"] if a.get("side_by_side")]
    qnn = result["qat"].get("qnn") or {}
    graphs += [(qnn[k], EXACT_MATMULS) for k in ("ptq", "qat") if k in qnn]  # read as HTP computes them
    reference = ctx.figures_onnx(ctx.run_dir / ctx.final.onnx, split)[name]
    result["qat"]["float_" + split] = reference
    for a, config in graphs:
        a[split] = figures = ctx.figures_onnx(Path(a["path"]), split, config=config)
        a[f"drop_{split}"] = ctx.evaluation.primary.drop(reference, figures[name])


def _markdown(result: dict[str, Any], table: dict[str, Any] | None, split: str) -> list[str]:
    from compress.qat.pick import side_by_side_table
    from compress.quantize import attempts_table

    qat = ["", "### Post-training vs quantization-aware", "",
           *side_by_side_table(table, result["gate"]["metric"]["name"])] if table else []
    qnn = (result.get("qat") or {}).get("qnn")
    if qnn:
        from compress.quantize.attempts import shown_drop

        metric = result["gate"]["metric"]["name"]  # points for shares
        on_split = (f" ({split}: post-training drop {shown_drop(metric, qnn['ptq'][f'drop_{split}'])}, QAT "
                    f"{shown_drop(metric, qnn['qat'][f'drop_{split}'])})")
        qat += ["", f"QNN graph ({qnn['activation_type']} activations, for the edge stage): post-training "
                f"{qnn['ptq']['reason']}; QAT {qnn['qat']['reason']}{on_split}; {qnn['why']}; the edge stage "
                f"places {qnn['used']}" + (f"; {len(qnn['float_nodes'])} node(s) stay in float"
                                           if qnn["float_nodes"] else "")
                + (f"; {len(qnn['sixteen_bit'])} tensor(s) at 16 bits, for activations whose outlier channels set "
                   "their range" if qnn.get("sixteen_bit") else "") + "."]
    return ["", "## Quantization attempts", "", f"Gate: {result['gate']['what']}.", "",
            f"Before the attempts: {result['preprocess']}.", "",
            *attempts_table(result["attempts"], result["gate"]), *qat, "", f"CPU: {result['cpu_int8']}.", "",
            f"Pick: {result['why']}"]


def _after(why: str, before: str | None) -> str:
    """The pick's reason, with the reason the model quantized was the final one (a control that won, a pruned
    model) kept after it."""
    return f"{why}; {before}" if before else why
