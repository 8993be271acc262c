"""edge: ORT-format copy of the final model, its reduced-operator config, parity, and edge readiness.

Runs when `[export] ort_format = true`, after the benchmark stage has settled which model is final.
"""
from __future__ import annotations

from compress.context import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    """Prepare the final model for a mobile/minimal ONNX Runtime build (compress.edge.prepare)."""
    from pathlib import Path

    from compress.edge import prepare

    final = ctx.state["final"]
    onnx_path = ctx.run_dir / ctx.models[final]["onnx"]
    batch = ctx.cfg.export.fixed_batch
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    name = next(i.name for i in graph.input if i.name not in initializers)
    inputs = {name: ctx.data.example(batch or 1).numpy()}
    section = prepare(onnx_path, ctx.stage_dir, fixed_batch=batch, inputs=inputs)

    def rel(value):
        if isinstance(value, str) and Path(value).is_absolute() and ctx.run_dir in Path(value).parents:
            return ctx.rel(Path(value))
        if isinstance(value, dict):
            return {k: rel(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rel(v) for v in value]
        return value

    section = rel({"model": final, **section})
    artifacts = [p for p in (section["ort"].get("ort_path"), section["ort"].get("config_path"))
                 if isinstance(p, str)]
    artifacts.append(ctx.rel(ctx.stage_dir / "edge.json"))
    if batch is not None:
        artifacts.append(section["onnx_path"])
    return StageResult(artifacts=artifacts, state={"edge": section})
