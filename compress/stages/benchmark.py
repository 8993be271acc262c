"""benchmark: every ONNX model on every requested provider, through the one harness (compress.bench), and every
model's figures in ONNX Runtime on the test split (validation's beside them)."""
from __future__ import annotations

from compress.context import StageContext
from compress.records import StageResult


def run(ctx: StageContext) -> StageResult:
    """Figures in ORT, file size and latency rows for every model that has an ONNX file."""
    from compress.bench.harness import bench_models

    bcfg, data = ctx.cfg.benchmark, ctx.data
    paths = {name: ctx.run_dir / rec.onnx for name, rec in ctx.models.items() if rec.onnx is not None
             and (bcfg.models == "all" or name == ctx.final.name)}
    rows: dict[str, dict[str, list]] = {name: {"latency": [], "unavailable": []} for name in paths}
    for seq in data.inputs.seq_lengths(bcfg.seq_lengths):  # one pass, or one per sequence length (token ids)
        feeds = {b: data.inputs.bench_feed(data, b, seq) for b in bcfg.batch_sizes}
        # all models' repetitions interleaved: student and control of one architecture see the same machine
        measured = bench_models(paths, list(bcfg.providers), list(bcfg.batch_sizes), list(bcfg.threads),
                                settings=bcfg.settings(), inputs_for_batch=lambda b: feeds[b], progress=ctx.progress)
        for name, got in measured.items():
            rows[name]["latency"] += [{**r, "seq_length": seq} if seq else r for r in got["latency"]]
            rows[name]["unavailable"] = got["unavailable"]
    records = []
    for name, path in paths.items():
        # the figures are measured on the test split (no choice saw it); validation's beside them, for comparison
        on = {split: ctx.figures_onnx(path, split) for split in {"val", data.eval_split}}
        test, val = on[data.eval_split], on["val"]
        records.append(ctx.models[name].but(bytes=path.stat().st_size, metrics=test, metrics_val=val,
                                            accuracy=test.get("accuracy"), accuracy_val=val.get("accuracy"),
                                            latency=tuple(rows[name]["latency"]),
                                            unavailable=tuple(rows[name]["unavailable"])))
    return StageResult(models=tuple(records))
