"""`compress quantize MODEL.onnx --out OUT.onnx`: the pipeline's quantize stage on any ONNX file.

It calls the same function as the stage (compress.quantize.quantize) for every model, whatever its inputs: the same
modes, remedies and measured pick. The gate comes from what it is given, and the summary states which one it used:
accuracy with labelled `--data` (class-logits outputs); the user's `--metric module:function` with `--data` of any
targets; otherwise agreement with the fp32 model suited to the outputs (top-1 for class logits, per-output cosine
and SQNR for anything else, with a one-line warning). OUT holds the model to ship: the quantized one when it met the
budget and was picked, else the float one; nothing is written there when no attempt met the budget (the best effort
goes beside it, named as such, exit 1).
"""
from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from compress.cli.quantize_data import (calibration_batches, gate_from, input_names, latency_feed,
                                       read_inputs, remedy_rows)
from compress.cli.types import Number
from compress.errors import CompressError, GateFailed

log = logging.getLogger("compress")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Where the model to ship goes (quantized, or float when int8 is not faster).")
@click.option("--mode", type=click.Choice(["static", "dynamic", "fp16", "qat"]), default=None,
              help="static: int8 with calibrated ranges (QDQ); dynamic: int8 weights; fp16: half precision "
                   "(qat trains against a teacher: pipelines only). Default: static with --calibration, dynamic "
                   "without.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help=".npz of real model inputs: one array per input name (or 'x' / the only array for one input). "
                   "Dynamic calibrates nothing: its remedies read these rows, else the gate's.")
@click.option("--data", "data_npz", type=click.Path(path_type=Path), default=None,
              help=".npz of gate inputs (as --calibration) and targets ('y', or 'y_NAME' for several): accuracy "
                   "for class logits, or your --metric.")
@click.option("--metric", default=None, metavar="MODULE:FUNCTION",
              help="Your metric (def f(outputs: dict[str, ndarray], targets) -> dict[str, float]), found beside "
                   "the current folder; needs --data.")
@click.option("--primary", default=None, help="Which figure of --metric decides (default: the first returned).")
@click.option("--lower-is-better", is_flag=True, help="The --metric figure is better when lower (a loss, an error).")
@click.option("--output", "outputs", multiple=True, metavar="NAME",
              help="Judge only this output in the agreement gate (repeatable; default: every output).")
@click.option("--max-accuracy-drop", type=Number(0, 1), default=0.005, show_default=True,
              help="Budget of the accuracy or top-1 agreement gate, as a fraction.")
@click.option("--max-cosine-drop", type=Number(0, 2), default=0.01, show_default=True,
              help="Budget of the per-output cosine gate: largest drop of the mean cosine to fp32.")
@click.option("--max-metric-drop", type=Number(0), default=0.01, show_default=True,
              help="Budget of --metric, in the metric's own units.")
@click.option("--pick", type=click.Choice(["fastest", "quantized"]), default="fastest", show_default=True,
              help="fastest: ship int8 only when it is significantly faster; quantized: whenever it meets the budget.")
@click.option("--exclude", "exclude", multiple=True, metavar="NODE_OR_OP",
              help="Keep this node (by name) or every node of this op type in float (repeatable).")
@click.option("--max-memory", "max_memory_mb", type=Number(min=1), default=None, metavar="MB",
              help="Cap on the activations that calibration and the sensitivity ranking hold: their batches and "
                   "samples are sized to fit [default: half of the memory available]. It does not bound the model's "
                   "own copies (quantizing holds its weights about 4 times over); a cap below those is said before "
                   "quantizing starts.")
@click.option("--keep-attempts", "keep_dir", type=click.Path(path_type=Path), default=None,
              help="Keep every attempt's model in this folder, for your own evaluation.")
@click.option("--provider", "providers", multiple=True, default=("cpu",), show_default=True,
              help="Providers the float-vs-quantized pick is timed on (repeatable).")
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1,), show_default=True,
              help="Batch sizes the pick is timed at (repeatable).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
              help="Size of a named symbolic dimension (a transformer's seq=128), for generated inputs and timing.")
@click.option("--fix-dim", "fix", multiple=True, metavar="NAME=VALUE|INPUT:AXIS=VALUE",
              help="Fix a dimension in the model (by name, or by input and axis) before quantizing it.")
@click.option("--fix-input", "fix_inputs", multiple=True, metavar="NAME=VALUE",
              help="Bind an input to the value you deploy with (Silero VAD's sr=16000): the model no longer takes "
                   "it, and the If nodes it decides are inlined, so the quantizer reaches their branches.")
@click.option("--batch-axis", "batch_axes", multiple=True, metavar="INPUT:AXIS|INPUT:none",
              help="The axis of an input that --batch sets (none: the input has no batch axis). Default: 0, or "
                   "for an input whose axis 0 is fixed while another's is not, the axis named like that one, else "
                   "none.")
@click.option("--inputs", "inputs_npz", type=click.Path(path_type=Path), default=None,
              help=".npz of model inputs (one array per input name) for the agreement gate and the timing "
                   "(default: the --calibration inputs; --data takes over the gate).")
@click.option("--no-fallback", is_flag=True, help="Try the given settings only, no remedies.")
@click.option("--static-only", is_flag=True,
              help="No dynamic int8 remedy for a static search (for a target that runs static int8 only).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def quantize(model: Path, out_path: Path, mode: str | None, calibration: Path | None, data_npz: Path | None,
             metric: str | None, primary: str | None, lower_is_better: bool, outputs: tuple[str, ...],
             max_accuracy_drop: float, max_cosine_drop: float, max_metric_drop: float, pick: str,
             exclude: tuple[str, ...], max_memory_mb: float | None, keep_dir: Path | None, providers: tuple[str, ...],
             batches: tuple[int, ...],
             dims: tuple[str, ...], fix: tuple[str, ...], fix_inputs: tuple[str, ...], batch_axes: tuple[str, ...],
             inputs_npz: Path | None, no_fallback: bool, static_only: bool, quiet: bool) -> None:
    """Quantize MODEL (.onnx) to OUT, gated on accuracy, your metric or agreement with fp32, picked by latency.

    Writes OUT (the model to ship), and OUT's name with .json and .md: the gate, every attempt (settings, figures,
    drop, size, latency) and the pick. Exit 1 when no attempt meets the budget (the summary is still written, the
    best effort beside OUT as OUT.best-effort.onnx).
    """
    from compress.bench.inputs import check_dims_named, parse_dims
    from compress.bench.providers import check_model_file, resolve_provider
    from compress.quantize import QuantizeConfig, quantize as run_quantize
    from compress.onnx.graph import batch_axes_for
    from compress.onnx.skeleton import graph_of
    from compress.quantize.lean import release

    source = Path(model)  # the user's model, as named in the summary and errors (a link stays the link)
    model = check_model_file(model, onnx_reads_weights=True)
    for p in providers:
        resolve_provider(p)
    _check_options(model, out_path, metric, data_npz, static_only, mode or ("static" if calibration else "dynamic"),
                   outputs)
    dim_sizes = parse_dims(dims, batch_axes)
    check_dims_named(model, dim_sizes)
    with _workspace(out_path) as work, _named(work, source):
        specialised = None
        if fix or fix_inputs:
            model, specialised = _specialised(model, Path(work) / f"{model.stem}.onnx", fix, fix_inputs)
        model, raised = _runnable(model, source, Path(work) / f"{model.stem}.opset.onnx")
        dim_sizes.batch_axes = batch_axes_for(graph_of(model).graph, dim_sizes.batch_axes, source.name,
                                              {f.partition("=")[0] for f in fix_inputs})
        _check_batches(model, batches, dim_sizes)
        calib = read_inputs(model, calibration, "--calibration", dim_sizes.batch_axes) if calibration else None
        given = read_inputs(model, inputs_npz, "--inputs", dim_sizes.batch_axes) if inputs_npz else None
        by_default, mode = mode is None, mode or ("static" if calib is not None else "dynamic")
        if mode == "static" and calib is None:
            raise CompressError("--calibration: static quantization needs calibration inputs (.npz with an array "
                                "per model input, or 'x' for one input); pass one or use --mode dynamic")
        # --inputs, when given, are judged (inputs calibration never saw) and timed; else the calibration inputs
        gate, warning = gate_from(model, given if given is not None else calib, data_npz, metric, primary,
                                  not lower_is_better, outputs, dim_sizes,
                                  budgets=(max_accuracy_drop, max_cosine_drop, max_metric_drop),
                                  given="--inputs" if given is not None else None,
                                  origin=data_npz or (inputs_npz if given is not None else calibration),
                                  named=source.name)  # the user's model, not the scratch copy
        release()  # the fp32 session the gate ran is gone: its pages too, before quantization loads the model
        ops = _op_counts(model)
        from compress.onnx.control import bound_mismatches

        warnings = [w for w in (raised, warning, _already_quantized(source, ops)) if w] + bound_mismatches(
            fix_inputs, {"--calibration": calibration, "--inputs": inputs_npz, "--data": data_npz})
        for line in warnings:
            log.warning("%s", line)  # once now (stderr and the log), once in the summary
        cfg = QuantizeConfig(mode=mode, fallback=not no_fallback, pick=pick, exclude=exclude,
                             max_memory_mb=max_memory_mb, dynamic_remedy=not static_only)
        rows = remedy_rows(model, calib, given, data_npz, dim_sizes, dynamic=mode == "dynamic" and not no_fallback)
        result = run_quantize(model, Path(work), cfg, gate=gate,
                              calibration=calibration_batches(model, rows, dim_sizes),
                              feed=latency_feed(model, given if given is not None else calib, dim_sizes),
                              providers=providers, batch_sizes=batches, progress=not quiet)
        warnings += result.get("warnings", [])  # said as quantization started (a --max-memory below the model's copies)
        if result["chosen"] is None:  # the float model is the user's own file: nothing goes to --out
            result["why"] = result["why"].replace("; keeping the float model", "; nothing written to --out")
        written = _write(model, out_path, result, keep_dir)
        summary = _summary(source, written, gate, result, mode, warnings, inputs=input_names(model), fixed=fix)
        summary.update(specialised or {})
        summary["next"] = _static_pays(ops) if by_default and mode == "dynamic" and written["ships"] == "float" \
            else None
    from compress.cache import write_json, write_text

    write_json(out_path.with_suffix(".json"), summary)
    write_text(out_path.with_suffix(".md"), _markdown(summary))
    click.echo(_markdown(summary))
    if result["chosen"] is None:
        raise GateFailed(f"{source}: {result['why']} (summary: {out_path.with_suffix('.json')})")


def _check_options(model: Path, out_path: Path, metric: str | None, data_npz: Path | None, static_only: bool,
                   mode: str, outputs: tuple[str, ...]) -> None:
    """CompressError for options that cannot go together, before any work."""
    if mode == "qat":  # docs/qat.md: one line, not click's list of choices
        raise CompressError("--mode qat: quantization-aware training distils the model from its teacher, which "
                            "compress quantize does not have; use --mode static here, or [quantize] mode = 'qat' in "
                            "a pipeline (compress run)")
    if out_path.suffix != ".onnx":
        raise CompressError(f"--out: expected a path ending in .onnx, got {str(out_path)!r}")
    _not_the_model(model, out_path)
    if metric is not None and data_npz is None:
        raise CompressError("--metric: your metric compares outputs with targets: pass --data with the inputs and "
                            "their targets ('y' or 'y_NAME')")
    if metric is not None and outputs:  # it was ignored, a typo in it too
        raise CompressError(f"--output {outputs[0]}: picks what the agreement gate judges; --metric gates on your "
                            "metric, which reads every output: drop --output")
    if static_only and mode != "static":  # it shipped dynamic int8 (the default mode without --calibration)
        raise CompressError(f"--static-only: a target that runs static int8 only needs --calibration (real inputs "
                            f"to calibrate on) and static mode, got mode {mode}")


def _not_the_model(model: Path, out: Path) -> None:
    """--out, its summaries and its best-effort file must not be MODEL: the input was deleted (no attempt met the
    budget) or overwritten."""
    from compress.cache import same_file

    written = [out, out.with_suffix(".json"), out.with_suffix(".md"), out.with_name(f"{out.stem}.best-effort.onnx")]
    hit = next((p for p in written if same_file(p, model)), None)  # a hard link to MODEL too: the same file
    if hit is not None:
        raise CompressError(f"--out: {out} would write {hit}, which is MODEL itself ({model}); write the quantized "
                            "model to another path")


def _runnable(model: Path, source: Path, copy: Path) -> tuple[Path, str | None]:
    """`model`, or `copy` with its opset raised to 13 when it is older than ONNX Runtime runs (an opset-6 Gemm has
    no kernel: the fp32 gate could not even score it), and the line that says so."""
    import onnx

    from compress.bench.providers import ORT_OLDEST_OPSET, too_old_opset
    from compress.onnx.graph import upgraded

    have = too_old_opset(model)
    if have is None:
        return model, None
    onnx.save(upgraded(onnx.load(str(model)), 13, origin=str(source), why="ONNX Runtime"), str(copy))
    return copy, (f"note: {source.name}: opset {have} raised to 13 (ONNX Runtime runs opset {ORT_OLDEST_OPSET} and "
                  "up); a model written to --out is at opset 13")


@contextlib.contextmanager
def _workspace(out_path: Path) -> Iterator[str]:
    """A scratch folder beside --out (made with its parents), removed on exit; the parents made here are removed
    again when the command fails and leaves them empty (a rejected .npz left empty folders behind)."""
    import tempfile

    from compress.cache import made_folders, remove_folders

    made = made_folders(out_path.parent)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{out_path.stem}-", dir=out_path.parent) as work:
            yield work
    except BaseException:
        remove_folders(made)
        raise


@contextlib.contextmanager
def _named(work: str, source: Path) -> Iterator[None]:
    """A one-line error that names a file in `work` (the --fix-dim / --fix-input copy, deleted on exit) names the
    user's model instead."""
    try:
        yield
    except CompressError as exc:
        if work not in str(exc):
            raise
        raise type(exc)(re.sub(re.escape(work) + r"/[^\s:,;)]*", str(source), str(exc))) from None


def _specialised(model: Path, out: Path, fix: tuple[str, ...], fix_inputs: tuple[str, ...]) -> tuple[Path, Any]:
    """The model with --fix-input values bound and --fix-dim dimensions fixed (the If nodes they decide inlined),
    and what the summary records of it (None without --fix-input)."""
    from compress.edge.shapes import specialised
    from compress.onnx.control import specialised_summary

    model, bound, counts = specialised(model, out, fix, fix_inputs)
    return model, specialised_summary(bound, counts) if bound or counts[0] else None


def _write(model: Path, out: Path, result: dict[str, Any], keep_dir: Path | None) -> dict[str, Any]:
    """OUT := the model to ship (quantized when picked, else the float model); nothing there when no attempt met
    the budget, whose best effort goes to OUT.best-effort.onnx. Returns what went where."""
    from compress.onnx.graph import copy_model

    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
        for a in result["attempts"]:
            if a.get("path") and Path(a["path"]).is_file():
                copy_model(Path(a["path"]), keep_dir / Path(a["path"]).name)  # with its .data, if it has one
    if result["chosen"] is None:
        out.unlink(missing_ok=True)
        tried = [a for a in result["attempts"] if a.get("drop") is not None and a.get("quantized")]
        if not tried:
            return {"out": None, "ships": None, "best_effort": None}
        best = min(tried, key=lambda a: a["drop"])
        effort = out.with_name(f"{out.stem}.best-effort.onnx")
        copy_model(Path(best["path"]), effort)
        return {"out": None, "ships": None, "best_effort": str(effort), "best_effort_attempt": best["name"]}
    ships = "quantized" if result["final"] == "quantized" else "float"
    copy_model(Path(result["chosen"]) if ships == "quantized" else model, out)
    return {"out": str(out), "ships": ships, "best_effort": None}


def _summary(model: Path, written: dict[str, Any], gate: Any, result: dict[str, Any], mode: str,
             warnings: list[str], *, inputs: list[str], fixed: tuple[str, ...] = ()) -> dict[str, Any]:
    attempts = [{k: v for k, v in a.items() if k != "path"} for a in result["attempts"]]
    return {"schema": "compress.quantize/1", "model": str(model), **written, "mode": mode, "gate": gate.what,
            "gate_metric": gate.to_json(), "warnings": warnings, "inputs": inputs,
            "fixed_dims": list(fixed),
            "preprocess": result["preprocess"], "cpu_int8": result["cpu_int8"],
            "final": result["final"] if written["out"] else None,  # what went to OUT: nothing, when nothing met it
            "why": result["why"], "float": {k: v for k, v in result["float"].items() if k != "path"},
            "attempts": attempts, "pick": result.get("pick"), "accepted_mode": result.get("accepted_mode")}


def _markdown(summary: dict[str, Any]) -> str:
    from compress.quantize import attempts_table

    if summary["out"]:
        wrote = (f"{summary['out']} (the {summary['ships']} model" +
                 (": int8/fp16 met the budget but is not faster here)" if summary["ships"] == "float" else ")"))
    elif summary.get("best_effort"):
        wrote = (f"nothing at --out (no attempt met the budget); the best effort, {summary['best_effort_attempt']}, "
                 f"is {summary['best_effort']}")
    elif summary["why"].startswith("nothing could be quantized"):
        wrote = "nothing at --out (nothing could be quantized; the float model is the one given)"
    else:
        wrote = "nothing at --out (no attempt met the budget)"
    accepted = summary.get("accepted_mode")
    mode = summary["mode"] + (f"; the accepted attempt is {accepted}" if accepted not in (None, summary["mode"])
                              else "")
    lines = [f"# compress quantize: {Path(summary['model']).name} ({mode})", "",
             f"Gate: {summary['gate']}.", *[f"\n{w}" for w in summary["warnings"]], "",
             f"CPU: {summary['cpu_int8']}.", "", *attempts_table(summary["attempts"], summary["gate_metric"]),
             "", f"Pick: {summary['why']}", "", f"Wrote: {wrote}", *_bound_line(summary),
             *(["", f"Next: {summary['next']}"] if summary.get("next") else [])]
    return "\n".join(lines) + "\n"


def _bound_line(summary: dict[str, Any]) -> list[str]:
    """What --fix-input changed about the model's interface: the written model takes its inputs without those."""
    bound = summary.get("fixed_inputs")
    if not bound:
        return []
    flow = summary.get("control_flow") or {}
    return ["", f"Inputs bound: {', '.join(f'{k}={v}' for k, v in bound.items())}: the written model takes "
                f"{', '.join(summary['inputs'])} only; If/Loop/Scan nodes {flow.get('before')} -> {flow.get('after')}"]


QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                 "QLinearConv", "QLinearMatMul", "MatMulNBits", "DynamicQuantizeMatMul", "QGemm", "QAttention")


def _op_counts(model: Path) -> dict[str, int]:
    from compress.onnx.skeleton import graph_of

    counts: dict[str, int] = {}
    for node in graph_of(model).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _already_quantized(model: Path, counts: dict[str, int]) -> str | None:
    """A warning line when the model given (its op `counts`) is quantized already (its integer ops named and
    counted); a QDQ graph is a CompressError: ORT's quantizer adds its own pairs beside them and every attempt failed
    on two nodes of one name, read as a failed quantization."""
    found = sorted(((counts[op], op) for op in QUANTIZED_OPS if op in counts), reverse=True)
    if not found:
        return None
    named = ", ".join(f"{n} {op}" for n, op in found)
    if counts.get("QuantizeLinear") and counts.get("DequantizeLinear"):
        raise CompressError(f"{model}: quantized already, as a QDQ graph ({named}); compress quantize starts from "
                            "the float model: pass the one it came from (a pipeline's export/student.onnx)")
    return (f"warning: {model.name} is quantized already ({named}): those parts stay as they are and only its "
            "float ops can be quantized; start from the float model it came from, if you have it")


def _static_pays(counts: dict[str, int]) -> str | None:
    """What to do when default (dynamic) int8 of a model with convolutions (its op `counts`) was not faster than
    float."""
    convs = counts.get("Conv", 0) + counts.get("ConvTranspose", 0)
    if not convs:
        return None
    return (f"this model's {convs} convolutions are where int8 pays, statically: pass --calibration FILE.npz (a few "
            "dozen real inputs, one array per model input) for static int8. Without it compress quantizes "
            "dynamically, and ONNX Runtime quantizes each convolution's input as it runs (ConvInteger), which is "
            "slower than float on most CPUs")


def _check_batches(model: Path, batches: tuple[int, ...], dims: Any) -> None:
    """A --batch the model's fixed batch dimension cannot take is refused now, not timed as 'unavailable' later; so
    is a --dim that sizes the batch axis to another batch (it was timed at the --dim size, and the generated gate
    shrank to it)."""
    from compress.bench.identity import model_inputs
    from compress.bench.inputs import check_batch_dims
    from compress.onnx.graph import fixed_batch

    if dims:  # an ORT session for the shapes only when a --dim may size a batch axis (a large model loads seconds)
        check_batch_dims(model_inputs(model), dims, batches)
    fixed = fixed_batch(model, dims.batch_axes)
    wrong = [b for b in batches if fixed is not None and b != fixed]
    if wrong:
        raise CompressError(f"--batch: {model} fixes its batch dimension to {fixed}{_read_from(model, dims)}, so "
                            f"batch {wrong[0]} cannot be timed; use --batch {fixed}, or re-export with a dynamic "
                            "batch axis")


def _read_from(model: Path, dims: Any) -> str:
    """Where a model of several inputs has the fixed batch read, and how to say it is elsewhere (a state [2, 1, 8]
    listed first in a batch-1 copy); nothing for one input."""
    from compress.onnx.graph import batched_input, graph_inputs
    from compress.onnx.skeleton import graph_of

    graph = graph_of(model).graph
    if len(graph_inputs(graph)) < 2:
        return ""
    value, axis = batched_input(graph, dims.batch_axes)  # where fixed_batch read it
    name = value.name
    return f" (axis {axis} of input {name!r}: --batch-axis {name}:N or {name}:none when that is not its batch)"
