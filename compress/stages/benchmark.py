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
    # models = "final": the others are not timed nor scored, but their files are on disk and have a size
    records += [rec.but(bytes=(ctx.run_dir / rec.onnx).stat().st_size) for name, rec in ctx.models.items()
                if rec.onnx is not None and name not in paths and (ctx.run_dir / rec.onnx).is_file()]
    lines = _not_timed(rows)
    return StageResult(models=tuple(records), info={"summary_lines": lines} if lines else {})


def _not_timed(rows: dict[str, dict[str, list]]) -> list[str]:
    """The summary's lines on what was not timed: each provider that timed nothing and why (naming the models when
    not all of them), then, when no provider timed anything, that every p50 is '-' and how to make that an error."""
    why: dict[tuple[str, str], list[str]] = {}
    for name, got in rows.items():
        for u in got["unavailable"]:
            names = why.setdefault((u["provider"], u["reason"]), [])
            names += [] if name in names else [name]
    lines = [f"not timed on {provider}: {reason}" + ("" if len(names) == len(rows) else f" ({', '.join(names)})")
             for (provider, reason), names in why.items()]
    if why and not any(got["latency"] for got in rows.values()):
        lines.append("no latency was measured (p50 '-'): no provider in [benchmark] providers could run here; set "
                     "[benchmark] strict = true to make this an error")
    return lines
