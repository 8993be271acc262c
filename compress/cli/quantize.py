"""`compress quantize MODEL.onnx --out OUT.onnx`: the pipeline's quantize stage on any ONNX file.

It calls the same function as the stage (compress.quantize.quantize): the same modes, remedies, accuracy gate and
measured pick. With labelled data (`--data`) the gate is on accuracy; without, on top-1 agreement with the fp32
model, which the summary says.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from compress.errors import CompressError, GateFailed


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="Where the quantized model goes.")
@click.option("--mode", type=click.Choice(["static", "dynamic", "fp16"]), default=None,
              help="static: int8 with calibrated ranges (QDQ); dynamic: int8 weights; fp16: half precision. "
                   "Default: static for a one-input model, dynamic for several inputs (a transformer).")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help=".npz of model inputs for calibration (array 'x', or the only array); static mode needs it.")
@click.option("--data", "data_npz", type=click.Path(path_type=Path), default=None,
              help=".npz with labelled validation data ('x', 'y'): gate on accuracy instead of agreement.")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1), default=0.005, show_default=True,
              help="Budget: largest drop of accuracy (or of top-1 agreement with fp32), as a fraction.")
@click.option("--provider", "providers", multiple=True, default=("cpu",), show_default=True,
              help="Providers the float-vs-quantized pick is timed on (repeatable).")
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1,), show_default=True,
              help="Batch sizes the pick is timed at (repeatable).")
@click.option("--max-cosine-drop", type=click.FloatRange(0, 2), default=0.01, show_default=True,
              help="Budget for a model with several inputs: largest drop of the outputs' mean cosine similarity to "
                   "the fp32 model's.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
              help="Size of a named symbolic dimension (a transformer's seq=128), for the gate and the timing.")
@click.option("--no-fallback", is_flag=True, help="Try the given settings only, no remedies.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def quantize(model: Path, out_path: Path, mode: str | None, calibration: Path | None, data_npz: Path | None,
             max_accuracy_drop: float, providers: tuple[str, ...], batches: tuple[int, ...], max_cosine_drop: float,
             dims: tuple[str, ...], no_fallback: bool, quiet: bool) -> None:
    """Quantize MODEL (.onnx) to OUT, gated on accuracy or agreement, picked by measured latency.

    Writes OUT, and OUT's name with .json and .md: every attempt (settings, accuracy, drop, size, latency), the
    gate, and the pick. Exit 1 when no attempt meets the budget (the summary is still written).
    """
    import tempfile

    from compress.bench.providers import check_model_file, resolve_provider
    from compress.cache import write_json, write_text
    from compress.onnx.graph import copy_model
    from compress.quantize import QuantizeConfig, quantize as run_quantize

    check_model_file(model)
    for p in providers:
        resolve_provider(p)
    _check_batches(model, batches)
    if out_path.suffix != ".onnx":
        raise CompressError(f"--out: expected a path ending in .onnx, got {str(out_path)!r}")
    if _input_count(model) > 1:  # a transformer: token ids, mask, token types
        from compress.bench.inputs import parse_dims
        from compress.cli.quantize_several import quantize_several

        summary = quantize_several(model, out_path, mode=mode or "dynamic", max_cosine_drop=max_cosine_drop,
                                   providers=providers, batches=batches, dims=parse_dims(dims),
                                   no_fallback=no_fallback)
        if summary["out"] is None:
            raise GateFailed(f"{model}: {summary['why']} (summary: {out_path.with_suffix('.json')})")
        return
    mode = mode or "static"
    calib = _read_x(calibration, "--calibration") if calibration is not None else None
    if mode == "static" and calib is None:
        raise CompressError("--calibration: static quantization needs calibration inputs (.npz with an array 'x' "
                            "of real model inputs); pass one or use --mode dynamic")
    val_x, val_y, gate = _gate_data(model, data_npz, calib)
    cfg = QuantizeConfig(mode=mode, max_accuracy_drop=max_accuracy_drop, fallback=not no_fallback)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.stem}-", dir=out_path.parent) as work:
        result = run_quantize(model, Path(work), cfg, calib_x=calib, val_x=val_x, val_y=val_y, providers=providers,
                              batch_sizes=batches, progress=not quiet)
        if result["chosen"] is not None:
            copy_model(Path(result["chosen"]), out_path)
    summary = _summary(model, out_path, gate, result)
    write_json(out_path.with_suffix(".json"), summary)
    write_text(out_path.with_suffix(".md"), _markdown(summary))
    click.echo(_markdown(summary))
    if result["chosen"] is None:
        raise GateFailed(f"{model}: {result['why']} (summary: {out_path.with_suffix('.json')})")


def _read_x(path: Path, option: str) -> Any:
    import numpy as np

    arrays = _read_npz(path, option)
    if "x" not in arrays and len(arrays) != 1:
        raise CompressError(f"{path}: {option} expects an array 'x' (or a single array), got {sorted(arrays)}")
    return np.asarray(arrays.get("x", next(iter(arrays.values()))), dtype=np.float32)


def _read_npz(path: Path, option: str) -> dict[str, Any]:
    from compress.bench.inputs import read_npz

    return read_npz(path, expects=f"{option} expects an .npz")

def _gate_data(model: Path, data_npz: Path | None, calib: Any) -> tuple[Any, Any, str]:
    """(x, y, what the gate measures): labelled data when given, else the fp32 model's own top-1 as labels."""
    import numpy as np

    if data_npz is not None:
        arrays = _read_npz(data_npz, "--data")
        if "x" not in arrays or "y" not in arrays:
            raise CompressError(f"{data_npz}: --data expects arrays 'x' and 'y', got {sorted(arrays)}")
        return np.asarray(arrays["x"], dtype=np.float32), np.asarray(arrays["y"]), \
            f"accuracy on {len(arrays['y'])} labelled samples from {data_npz.name}"
    from compress.onnx.graph import fixed_batch, single_input
    from compress.onnx.parity import run_cpu, top1_of

    name, _, _ = single_input(model, what="quantize")
    step = fixed_batch(model)
    if calib is None:
        from compress.edge import sample_inputs

        chunks = [sample_inputs(model, batch=step or 64, seed=seed)[name] for seed in range(64 // (step or 64))]
        calib_x, source = np.concatenate(chunks), "64 seeded random inputs (pass --data for a real gate)"
    else:
        calib_x, source = calib, f"{len(calib)} calibration inputs"
    labels = top1_of(run_cpu(model, {name: calib_x}, batch_size=step or 256)[0])
    return calib_x, labels, f"top-1 agreement with the fp32 model on {source}"


def _summary(model: Path, out: Path, gate: str, result: dict[str, Any]) -> dict[str, Any]:
    attempts = [{k: v for k, v in a.items() if k != "path"} for a in result["attempts"]]
    return {"schema": "compress.quantize/1", "model": str(model), "out": str(out) if result["chosen"] else None,
            "mode": result["mode"], "gate": gate, "preprocess": result["preprocess"], "cpu_int8": result["cpu_int8"],
            "final": result["final"],
            "why": result["why"], "float": {k: v for k, v in result["float"].items() if k != "path"},
            "attempts": attempts, "pick": result.get("pick")}


def _markdown(summary: dict[str, Any]) -> str:
    from compress.quantize import attempts_table

    lines = [f"# compress quantize: {Path(summary['model']).name} ({summary['mode']})", "",
             f"Gate: {summary['gate']}.", "", f"CPU: {summary['cpu_int8']}.", "",
             *attempts_table(summary["attempts"], score="score"),
             "", f"Pick: {summary['why']}", "", f"Wrote: {summary['out'] or 'nothing (no attempt met the budget)'}"]
    return "\n".join(lines) + "\n"


def _input_count(model: Path) -> int:
    import onnx

    from compress.onnx.graph import graph_inputs

    return len(graph_inputs(onnx.load(str(model), load_external_data=False).graph))


def _check_batches(model: Path, batches: tuple[int, ...]) -> None:
    """A --batch the model's fixed batch dimension cannot take is refused now, not timed as 'unavailable' later."""
    from compress.onnx.graph import fixed_batch

    fixed = fixed_batch(model)
    wrong = [b for b in batches if fixed is not None and b != fixed]
    if wrong:
        raise CompressError(f"--batch: {model} fixes its batch dimension to {fixed}, so batch {wrong[0]} cannot be "
                            f"timed; use --batch {fixed}, or re-export with a dynamic batch axis")
