"""export: every torch model so far to ONNX (compress.onnx.export), checked against torch by the parity rule on real
validation inputs, every output; the family's post-export optimizer when asked for."""
from __future__ import annotations

from compress.context import StageContext
from compress.errors import CompressError
from compress.records import StageResult

_PARITY_EXAMPLES = 2048  # the first validation examples parity runs on (all of a small set); bounds memory


def run(ctx: StageContext) -> StageResult:
    """Export every torch model (teacher, student, control, pruned) and check each against torch in ORT."""
    import json

    from compress.families import family_of
    from compress.onnx.export import export_onnx
    from compress.onnx.graph import TASK_KEY, set_metadata
    from compress.onnx.parity import compare
    from compress.onnx.run import outputs_on
    from compress.train import predict

    ecfg, data, names = ctx.cfg.export, ctx.data, ctx.output_names
    rows = range(min(_PARITY_EXAMPLES, len(data.val)))
    records, artifacts, info = [], [], {}
    for name, rec in ctx.models.items():
        if rec.torch is None:
            continue
        model = ctx.load_torch(name)
        # before export: export can mutate a live model
        reference = predict(model, _subset(data.val, rows), inputs=data.inputs, names=names, workers=data.workers)
        path = export_onnx(model, data.example(2), ctx.stage_dir / f"{name}.onnx", opset=ecfg.opset,
                           exporter=ecfg.exporter, inputs=data.inputs, output_names=names)
        # what the outputs mean, for `compress quantize` and `edge` on this file; an app reads the labels from it
        set_metadata(path, {TASK_KEY: ctx.evaluation.task.name,
                            **({"class_names": json.dumps(data.class_names)} if data.class_names else {})})
        got = outputs_on(path, data, "val", names=names, rows=rows)
        check = compare([reference[n] for n in names], [got[n] for n in names], atol=ecfg.parity_atol,
                        rtol=ecfg.parity_rtol)
        if not check["ok"]:
            raise CompressError(f"{ctx.origin('export.parity_atol')}: {name}.onnx differs from torch by "
                                f"{check['max_abs_diff']:.3g} (relative {check['max_rel_diff']:.3g}; allowed "
                                f"{ecfg.parity_atol:g} + {ecfg.parity_rtol:g} x |output|) on the validation set; "
                                "the export is wrong, not just imprecise: try another exporter or opset")
        if ecfg.optimize != "none":
            info[name] = family_of(rec.spec.model).optimize_export(
                path, model, data=data, reference=reference, export_cfg=ecfg,
                seq_length=int(ctx.cfg.benchmark.seq_lengths[0]))
        artifacts.append(ctx.rel(path))
        records.append(rec.but(onnx=ctx.rel(path), parity=check))
    if info:  # whether the optimized graph was kept, and why, in report.md too (it was in report.json alone)
        info["markdown"] = ["", f"## Export: `optimize = \"{ecfg.optimize}\"`", "",
                            *[f"- {name}: {r['why']}" for name, r in info.items()]]
    return StageResult(artifacts=tuple(artifacts), models=tuple(records), info=info)


def _subset(dataset, rows):
    import torch

    return torch.utils.data.Subset(dataset, list(rows))
