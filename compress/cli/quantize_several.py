"""`compress quantize` on a model with several inputs (a transformer: token ids, attention mask, token types).

Dynamic int8, the usual choice for transformers on CPU, through compress.hf.quantize (per-channel first, per-tensor
as the remedy, the float-vs-int8 pick by paired latency). There are no labels here, so the gate is the mean cosine
similarity of each sample's outputs to the fp32 model's, on seeded inputs that are valid for the graph: token ids
inside the vocabulary (read from the embedding table) and masks of ones (compress.bench.inputs.make_inputs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from compress.errors import CompressError

SAMPLES = 64


def quantize_several(model: Path, out_path: Path, *, mode: str, max_cosine_drop: float, providers: tuple[str, ...],
                     batches: tuple[int, ...], dims: dict[str, int], no_fallback: bool) -> dict[str, Any]:
    """Quantize `model` to `out_path`; returns the summary (also written beside `out_path` as .json and .md)."""
    import tempfile

    from compress.cache import write_json, write_text
    from compress.edge.ort_format import sample_inputs
    from compress.hf.quantize import quantize_text
    from compress.onnx.graph import copy_model
    from compress.quantize import QuantizeConfig

    if mode != "dynamic":
        raise CompressError(f"--mode: {model} has several inputs (a transformer?); compress quantize takes it with "
                            f"--mode dynamic (int8 weights, the usual choice for transformers on CPU), got {mode!r}")
    def feed(batch: int) -> dict:
        return sample_inputs(model, batch=batch, dims=dims)  # ids inside the vocabulary, masks of ones

    gate_inputs = feed(SAMPLES)
    reference = _outputs(model, gate_inputs)

    def score(path: Path) -> dict:
        return {"cosine": _cosine(reference, _outputs(path, gate_inputs))}

    cfg = QuantizeConfig(mode="dynamic", max_cosine_drop=max_cosine_drop, fallback=not no_fallback)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.stem}-", dir=out_path.parent) as work:
        result = quantize_text(model, Path(work), cfg, task="embedding", score=score, calibration={}, feed=feed,
                               providers=list(providers), batch_sizes=list(batches))
        if result["chosen"] is not None:  # the accepted int8 model, written whatever the pick (as for one input)
            copy_model(Path(result["chosen"]), out_path)
    gate = (f"mean cosine similarity of the outputs to the fp32 model's on {SAMPLES} seeded valid inputs "
            f"(token ids inside the vocabulary, masks of ones); budget: a drop of at most {max_cosine_drop:g}")
    summary = {"schema": "compress.quantize/1", "model": str(model),
               "out": str(out_path) if out_path.exists() else None, "mode": mode, "gate": gate,
               "inputs": list(gate_inputs), "final": result["final"], "why": result["why"],
               "float": {"cosine": result["float_score"]}, "attempts": result["attempts"], "pick": result.get("pick")}
    write_json(out_path.with_suffix(".json"), summary)
    write_text(out_path.with_suffix(".md"), _markdown(summary, result["table"]))
    click.echo(_markdown(summary, result["table"]))
    return summary


def _outputs(path: Path, feed: dict) -> list:
    from compress.onnx.parity import run_cpu

    return run_cpu(path, feed, batch_size=16)


def _cosine(reference: list, got: list) -> float:
    """Mean over samples of the cosine between each sample's outputs (all outputs, flattened) and the reference's."""
    import numpy as np

    from compress.hf.metrics import cosine

    def rows(outputs: list) -> "np.ndarray":
        return np.concatenate([np.asarray(o, dtype=np.float64).reshape(len(o), -1) for o in outputs], axis=1)

    return cosine(rows(got), rows(reference))


def _markdown(summary: dict[str, Any], table: list[str]) -> str:
    lines = [f"# compress quantize: {Path(summary['model']).name} ({summary['mode']}, inputs "
             f"{', '.join(summary['inputs'])})", "", f"Gate: {summary['gate']}.", "", *table, "",
             f"Pick: {summary['why']}", "", f"Wrote: {summary['out'] or 'nothing (the float model stays)'}"]
    return "\n".join(lines) + "\n"
