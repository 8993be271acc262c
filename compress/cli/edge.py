"""`compress edge MODEL.onnx`: ORT-format copy, reduced-operator config, parity check, edge readiness table."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from compress.cli.types import Number
from compress.errors import InputsRejected

if TYPE_CHECKING:
    import onnx


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: <model stem>_edge next to the model).")
@click.option("--fixed-batch", type=click.IntRange(min=1), default=None,
              help="Fix the batch dimension to N first (NNAPI, CoreML and QNN want fixed shapes).")
@click.option("--optimization", type=click.Choice(["disable", "basic", "extended", "all"]), default="basic",
              show_default=True, help="Graph optimization level baked into the ORT-format file.")
@click.option("--runtime-opt", is_flag=True,
              help="Save runtime optimizations in the ORT file (ORT's advice when NNAPI/CoreML take part).")
@click.option("--inputs", "inputs_npz", type=click.Path(path_type=Path), default=None,
              help=".npz with one array per model input for the parity check (default: seeded random).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
              help="Size of a named symbolic dimension (a transformer's seq=128) for the parity inputs.")
@click.option("--fix-dim", "fix", multiple=True, metavar="NAME=VALUE|INPUT:AXIS=VALUE",
              help="Fix a dimension in the model first, by name or by input and axis (mobile providers and QNN "
                   "want static shapes: height and width too, not only the batch).")
@click.option("--batch-axis", "batch_axes", multiple=True, metavar="INPUT:AXIS|INPUT:none",
              help="The axis of an input that is its batch (default 0; none: no batch axis).")
@click.option("--fix-input", "fix_inputs", multiple=True, metavar="NAME=VALUE",
              help="Bind an input to the value you deploy with (Silero VAD's sr=16000): the model no longer takes "
                   "it, and the If nodes it decides are inlined.")
@click.option("--provider", "targets", type=click.Choice(["qnn"]), multiple=True,
              help="Also measure this target on its own backend: qnn = QNN EP, HTP (Snapdragon NPU) backend, "
                   "simulated here (needs onnxruntime-qnn: pip install onnxruntime-qnn).")
@click.option("--calibration", "calibration_npz", type=click.Path(path_type=Path), default=None,
              help="qnn: .npz with the input array (named as the model input, or the only array) for calibration "
                   "and accuracy, or one array per input for a model with several (token ids and a mask, at the "
                   "length the model is fixed to); labels under 'y' add accuracy rows.")
@click.option("--activation-type", type=click.Choice(["auto", "uint8", "mixed", "uint16"]), default="auto",
              show_default=True,
              help="qnn: activation type of the QDQ model (uint16: more accurate, slower on the NPU; mixed: 16 bits "
                   "for the activations 8 bits damage most, as few as meet the budget; auto: uint8, then mixed, then "
                   "uint16, each only when the graph before it misses the budget on its own codes).")
@click.option("--qnn-option", "qnn_options", multiple=True, metavar="KEY=VALUE",
              help="qnn: QNN EP provider option, e.g. htp_arch=73 or soc_model=57 for the phone's chip.")
@click.option("--max-accuracy-drop", type=Number(0, 1), default=0.01, show_default=True,
              help="qnn: the NPU's budget: largest drop vs fp32 on the CPU of accuracy (with labels 'y'), else of "
                   "top-1 agreement (class logits) or cosine (other outputs); exit 1 past it.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the whole section (every node, every provider) here.")
def edge(model: Path, out_dir: Path | None, fixed_batch: int | None, optimization: str, runtime_opt: bool,
         inputs_npz: Path | None, dims: tuple[str, ...], fix: tuple[str, ...], batch_axes: tuple[str, ...],
         fix_inputs: tuple[str, ...], targets: tuple[str, ...], calibration_npz: Path | None,
         activation_type: str, qnn_options: tuple[str, ...], max_accuracy_drop: float, json_path: Path | None) -> None:
    """Prepare MODEL for phones and boards: ORT format, operator config, parity, per-provider readiness.

    Writes <out>/<stem>.<level>.ort, the required_operators config for a minimal ORT build, and edge.json.
    Exit 1 when the ORT-format outputs differ from the ONNX ones by more than 1e-5 + 1e-5 x |output|.
    With --provider qnn: the QNN QDQ model, the EPContext model (<stem>.qnn_ctx.onnx) and qnn.json too, measured
    in a child process (a native abort there is exit 1 with one line, edge.json kept); exit 1 when HTP cannot run
    the whole model without CPU fallback, misses --max-accuracy-drop, or the EPContext model differs from the QDQ
    one on HTP. (`compress run` with edge_targets = ["qnn"] reports the same, exit 0: the NPU is one target of many.)
    """
    from compress.cache import write_json
    from compress.edge import prepare, readiness_table

    inputs = None
    out = out_dir if out_dir is not None else model.with_name(model.stem + "_edge")
    _qnn_only(targets, {"--calibration": calibration_npz is not None, "--qnn-option": bool(qnn_options),
                        "--activation-type": activation_type != "auto"})
    from compress.bench.inputs import parse_batch_axes
    from compress.edge.shapes import specialised
    from compress.onnx.graph import batch_axes_for, load_model, model_home

    name, model, bound = model.stem, model_home(model, onnx_reads_weights=True), {}  # named as given, read at home
    if fix or fix_inputs:
        model, bound, _ = specialised(model, Path(out) / f"{name}.fixed.onnx", fix, fix_inputs)
    axes = batch_axes_for(load_model(model, weights=False).graph, parse_batch_axes(batch_axes), model.name, set(bound))
    # the QNN target's own limits first: a model it cannot take should not first be asked for parity inputs
    qnn = (_qnn_kwargs(model, calibration_npz, activation_type, qnn_options, axes, fixed_batch or 1)
           if "qnn" in targets else None)
    if (dims or batch_axes) and inputs_npz is None:
        from compress.bench.inputs import check_dims_named, parse_dims
        from compress.edge.ort_format import sample_inputs

        from compress.onnx.graph import fixed_batch as batch_of_graph

        check_dims_named(model, sizes := parse_dims(dims, batch_axes))
        sizes.batch_axes = axes  # what the graph shows too (a state [2, N, 64]), not only what --batch-axis said
        inputs = sample_inputs(model, batch=fixed_batch or batch_of_graph(model, axes) or 1, dims=sizes)
    if inputs_npz is not None:
        from compress.bench.inputs import load_npz
        from compress.bench.providers import open_session

        session, _ = open_session(model, "cpu", threads=1, strict=True)
        inputs = load_npz(inputs_npz, session)
    if qnn is not None:
        qnn["max_accuracy_drop"] = max_accuracy_drop
    from compress.onnx.control import bound_mismatches

    warnings = bound_mismatches(fix_inputs, {"--calibration": calibration_npz, "--inputs": inputs_npz})
    for line in warnings:  # now, before minutes on the NPU, and in edge.json
        click.echo(f"warning: {line}", err=True)
    try:
        section = prepare(model, out, fixed_batch=fixed_batch, inputs=inputs, optimization=optimization,
                          batch_axes=axes or None, warnings=warnings,
                          style="runtime" if runtime_opt else "fixed", targets=targets, qnn=qnn, name=name)
    except InputsRejected as exc:  # the user's file is what did not run (ids past the vocabulary)
        if inputs_npz is None:
            raise
        raise InputsRejected(exc.model, f"--inputs {inputs_npz}", exc.why) from None
    ort = section["ort"]
    parity = section["parity"]
    click.echo(f"ORT format: {ort['ort_path']} ({ort['bytes']} bytes, optimization {ort['optimization']})")
    if ort.get("note"):
        click.echo(f"note: {ort['note']}")
    click.echo(f"operator config for a minimal build: {ort['config_path']}")
    top1 = "" if parity.get("top1_agreement") is None else f", top-1 agreement {parity['top1_agreement']:.3f}"
    click.echo(f"parity vs ONNX: max abs diff {parity['max_abs_diff']:.3g}{top1}")
    click.echo(readiness_table(section["readiness"]))
    for note in section["readiness"]["notes"]:
        click.echo(f"note: {note}")
    if "qnn" in section:
        from compress.edge.qnn_flow import qnn_table

        click.echo(qnn_table(section["qnn"]))
    click.echo(f"wrote {Path(out) / 'edge.json'}")
    if json_path is not None:
        write_json(json_path, section)
    _npu_gate(model, section.get("qnn") or {})


def _qnn_only(targets: tuple[str, ...], given: dict[str, bool]) -> None:
    """Options that apply to the QNN target only ({option: given}): given without --provider qnn they would do
    nothing, unsaid."""
    from compress.errors import CompressError

    option = next((o for o, was in given.items() if was), None)
    if "qnn" not in targets and option:
        raise CompressError(f"{option}: applies to the QNN target; add --provider qnn, or drop it")


def _npu_gate(model: Path, qnn_section: dict) -> None:
    """Exit 1 when the NPU could not run the model whole, or missed its budget."""
    from compress.errors import GateFailed
    from compress.onnx.graph import load_model

    if qnn_section and not qnn_section.get("runs_without_fallback", True):
        # HTP took some nodes or none, and could not run the graph whole: nothing measured on the NPU, not a pass
        from compress.onnx.control import CONTROL_FLOW, resolve_hint

        graph = load_model(model, weights=False).graph
        fix = (f"; fix: {resolve_hint(graph)}" if any(n.op_type in CONTROL_FLOW for n in graph.node) else
               next((f"; fix: {b['fix']}" for b in qnn_section.get("blockers") or []), ""))
        raise GateFailed(f"{model}: provider qnn: the HTP backend cannot run the whole model with CPU fallback "
                         f"disabled ({qnn_section.get('fallback_error') or 'no reason given'}){fix}; edge.json lists "
                         "the nodes it refused and why")
    budget, placed = qnn_section.get("budget"), (qnn_section or {}).get("placement") or {}
    if placed.get("compile_error") and budget is None:  # a session opened, but nothing was measured on the NPU
        raise GateFailed(f"{model}: provider qnn: the HTP backend could not compile the graph "
                         f"({placed['compile_error']}); nothing was measured on the NPU; edge.json lists the nodes")
    if budget and not budget["ok"]:
        raise GateFailed(f"{model}: provider qnn: {budget['metric']} on the NPU dropped {budget['drop']:.4f} vs fp32 "
                         f"on the CPU, over --max-accuracy-drop {budget['budget']:g}; {budget.get('where')} "
                         "(edge.json has every figure)")
    context = qnn_section.get("context") if qnn_section else None
    if context and (not context["loads"] or not context["parity"]["ok"]):  # what a phone app loads is not what passed
        from compress.edge.qnn_flow import context_verdict

        raise GateFailed(f"{model}: provider qnn: the EPContext model {context['path']} does not match the QDQ model "
                         f"measured on HTP ({context_verdict(context).removeprefix('no: ')}); a phone app loads the "
                         "EPContext model: rebuild it, or ship the QDQ model (edge.json has every figure)")


def _qnn_kwargs(model: Path, calibration_npz: Path | None, activation_type: str, qnn_options: tuple[str, ...],
                batch_axes: "dict[str, int | None]", batch: int = 1) -> dict:
    """prepare_qnn's data and options from the command line; CompressError (exit 2) for bad ones."""
    import numpy as np

    from compress.errors import CompressError
    from compress.onnx.graph import graph_inputs, load_model

    if calibration_npz is None:
        raise CompressError("--provider qnn: needs --calibration DATA.npz (a few hundred real inputs, first axis "
                            "the sample) to quantize the model for the NPU")
    options = {}
    for item in qnn_options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompressError(f"--qnn-option {item!r}: expected KEY=VALUE, e.g. htp_arch=73")
        options[key.strip()] = value.strip()
        if key.strip() in ("soc_model", "htp_arch") and not value.strip().isdigit():
            raise CompressError(f"--qnn-option {item!r}: {key.strip()} takes a number (soc_model=60 is Snapdragon 8 "
                                f"Gen 3, htp_arch=75 its HTP), got {value.strip()!r}")
    graph = load_model(model, weights=False).graph
    declared = {i.name: i.type.tensor_type.elem_type for i in graph_inputs(graph)}
    names = list(declared)
    name = names[0]
    try:
        with np.load(calibration_npz, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # missing file, zip or format errors: all mean "not a usable npz"
        raise CompressError(f"{calibration_npz}: not a readable .npz ({type(exc).__name__}); save the inputs "
                            f"with numpy.savez(path, {name}=x, y=labels)") from None
    inputs = {k: v for k, v in arrays.items() if k not in ("y", "labels")}
    if len(names) == 1:
        x = inputs.get(name, next(iter(inputs.values())) if len(inputs) == 1 else None)
        feeds = None if x is None else {name: x}
    else:  # token ids and a mask: one array per input, each with its fixed length
        feeds = {n: inputs[n] for n in names} if all(n in inputs for n in names) else None
    if feeds is None:
        raise CompressError(f"{calibration_npz}: expected an array named after each model input "
                            f"({', '.join(names)}), got {sorted(arrays)}")
    _checked_for_qnn(model, graph, feeds, calibration_npz, batch_axes)
    from onnx import TensorProto

    wanted = {k: np.float16 if declared.get(k) == TensorProto.FLOAT16 else np.float32 for k in feeds}
    feeds = {k: v.astype(wanted[k]) if np.issubdtype(v.dtype, np.floating) else v for k, v in feeds.items()}
    y = arrays.get("y", arrays.get("labels"))
    samples = next((np.shape(v)[batch_axes.get(k, 0)] for k, v in feeds.items()
                    if np.ndim(v) and batch_axes.get(k, 0) is not None), None)
    if not samples or samples < batch:
        raise CompressError(f"{calibration_npz}: --calibration holds {samples or 0} samples, fewer than one batch of "
                            f"{batch} (the NPU model's fixed batch); save a few hundred real inputs")
    from compress.quantize.gate import not_one_label_each

    wrong = not_one_label_each(y, samples) if y is not None else None
    if wrong:
        raise CompressError(f"{calibration_npz}: 'y' must hold {wrong}")
    axes = {k: v for k, v in batch_axes.items() if k in feeds}  # not the inputs --fix-input bound away
    return {"calibration": feeds, "val_x": feeds, "val_y": y, "batch_axes": axes or None,
            "activation_type": activation_type, "provider_options": options or None}


def _checked_for_qnn(model: Path, graph: "onnx.GraphProto", feeds: dict, calibration_npz: Path,
                     batch_axes: "dict[str, int | None]") -> None:
    """Before the NPU's minutes: a model quantized already (QNN's QDQ tools quantize it again and fail on duplicate
    node names, read as the model's fault), calibration arrays of another shape (ORT's error named a copy in --out,
    cut) or holding NaN (read as "drop 50000000" at every activation width) are one line, exit 2."""
    from compress.cli.quantize import QUANTIZED_OPS
    from compress.cli.quantize_data import check_shapes, check_finite
    from compress.errors import CompressError
    from compress.onnx.graph import graph_inputs

    found = sorted({n.op_type for n in graph.node if n.op_type in QUANTIZED_OPS})
    if found:
        raise CompressError(f"{model}: quantized already ({', '.join(found)}); --provider qnn quantizes the float "
                            "model for HTP itself: pass the float model it came from (a pipeline's "
                            "export/student.onnx)")
    check_shapes(graph_inputs(graph), feeds, f"{calibration_npz}: --calibration", batch_axes)
    for name, array in feeds.items():
        check_finite(array, str(calibration_npz), f"array {name!r}", "--calibration", batch_axes.get(name, 0))

