"""benchmark: every ONNX model on every requested provider, through the one harness (compress.bench)."""
from __future__ import annotations

from compress.context import StageContext
from compress.records import StageResult


def run(ctx: StageContext) -> StageResult:
    """Accuracy in ORT, file size and latency rows for every model that has an ONNX file."""
    from compress.bench.evaluate import accuracy_on
    from compress.bench.harness import bench_models

    bcfg, data = ctx.cfg.benchmark, ctx.data
    paths = {name: ctx.run_dir / rec.onnx for name, rec in ctx.models.items() if rec.onnx is not None}
    # all models' repetitions interleaved: student and control of one architecture see the same machine
    measured = bench_models(paths, list(bcfg.providers), list(bcfg.batch_sizes), list(bcfg.threads),
                            settings=bcfg.settings(), inputs_for_batch=lambda b: {"input": data.example(b).numpy()},
                            progress=ctx.progress)
    records = []
    for name, path in paths.items():
        rec, rows = ctx.models[name], measured[name]
        # the figure is measured on the test split (no choice saw it); validation's beside it, for comparison
        on = {split: accuracy_on(path, ((x, y) for _, x, y in data.batches(split))) for split in {"val", data.eval_split}}
        records.append(rec.but(bytes=path.stat().st_size, accuracy=on[data.eval_split], accuracy_val=on["val"],
                               latency=tuple(rows["latency"]), unavailable=tuple(rows["unavailable"])))
    return StageResult(models=tuple(records))
