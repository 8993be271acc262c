"""benchmark: every ONNX model on every requested provider, through the one harness (compress.bench)."""
from __future__ import annotations

from compress.context import StageContext
from compress.records import StageResult


def run(ctx: StageContext) -> StageResult:
    """Accuracy in ORT, file size and latency rows for every model that has an ONNX file."""
    from compress.hf.pipeline import is_text

    if is_text(ctx.data):  # hf: models on text: keyword token inputs, task-aware figures
        from compress.hf.deploy import benchmark_stage

        return benchmark_stage(ctx)
    from compress.bench.evaluate import accuracy
    from compress.bench.harness import bench_models

    bcfg, data = ctx.cfg.benchmark, ctx.data
    x_val, y_val = data.x_val.numpy(), data.y_val.numpy()
    paths = {name: ctx.run_dir / rec.onnx for name, rec in ctx.models.items() if rec.onnx is not None}
    # all models' repetitions interleaved: student and control of one architecture see the same machine
    measured = bench_models(paths, list(bcfg.providers), list(bcfg.batch_sizes), list(bcfg.threads),
                            settings=bcfg.settings(), inputs_for_batch=lambda b: {"input": data.example(b).numpy()},
                            progress=ctx.progress)
    records = []
    for name, path in paths.items():
        rec, rows = ctx.models[name], measured[name]
        records.append(rec.but(bytes=path.stat().st_size, accuracy=accuracy(path, x_val, y_val),
                               latency=tuple(rows["latency"]), unavailable=tuple(rows["unavailable"])))
    return StageResult(models=tuple(records))
