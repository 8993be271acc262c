"""export: every torch model so far to ONNX (compress.onnx.export), checked against torch by the parity rule."""
from __future__ import annotations

from compress.context import StageContext
from compress.errors import CompressError
from compress.records import StageResult


_PARITY_EXAMPLES = 2048  # the first validation examples parity runs on (all of a small set); bounds memory


def run(ctx: StageContext) -> StageResult:
    """Export every torch model (teacher, student, control, pruned) and check each against torch in ORT."""
    from compress.hf.pipeline import is_text

    if is_text(ctx.data):  # hf: models on text: keyword token inputs, task-aware figures
        from compress.hf.deploy import export_stage

        return export_stage(ctx)
    from compress.onnx.export import export_onnx
    from compress.onnx.parity import compare, run_cpu
    import json

    import torch

    from compress.onnx.graph import set_metadata
    from compress.train import predict_logits

    ecfg = ctx.cfg.export
    x_val, _ = ctx.data.arrays("val", limit=_PARITY_EXAMPLES)
    records, artifacts = [], []
    for name, rec in ctx.models.items():
        if rec.torch is None:
            continue
        model = ctx.load_torch(name)
        reference = predict_logits(model, torch.from_numpy(x_val))  # before export: export can mutate a live model
        path = export_onnx(model, ctx.data.example(2), ctx.stage_dir / f"{name}.onnx", opset=ecfg.opset,
                           exporter=ecfg.exporter)
        if ctx.data.class_names:  # an app reads the labels from the model itself
            set_metadata(path, {"class_names": json.dumps(ctx.data.class_names)})
        got = run_cpu(path, {"input": x_val}, batch_size=256)
        check = compare([reference.numpy()], got, atol=ecfg.parity_atol, rtol=ecfg.parity_rtol)
        if not check["ok"]:
            raise CompressError(f"{ctx.origin('export.parity_atol')}: {name}.onnx differs from torch by "
                                f"{check['max_abs_diff']:.3g} (relative {check['max_rel_diff']:.3g}; allowed "
                                f"{ecfg.parity_atol:g} + {ecfg.parity_rtol:g} x |output|) on the validation set; "
                                "the export is wrong, not just imprecise: try another exporter or opset")
        artifacts.append(ctx.rel(path))
        records.append(rec.but(onnx=ctx.rel(path), parity=check))
    return StageResult(artifacts=tuple(artifacts), models=tuple(records))
