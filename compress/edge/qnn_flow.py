"""The QNN edge target, in order: fixed shapes, QNN QDQ quantization, placement on HTP (measured), the EPContext
model and its parity, accuracy on the simulated NPU beside fp32 and int8 on ORT CPU, simulated latency.

Used by `compress edge MODEL --provider qnn` and by the pipeline's edge stage (`[export] edge_targets = ["qnn"]`).
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.cache import write_json
from compress.edge.qnn import (INSTALL, ActivationType, htp_session, placement, qnn_status, quantize_for_qnn,
                               runs_without_fallback)
from compress.edge.qnn_accuracy import accuracy_on_htp, budget_line, judge
from compress.edge.qnn_feeds import feeds_for, head, rows, run_batches, whole_batches
from compress.edge.ranges import float16_as_float32, for_htp

if TYPE_CHECKING:
    import numpy as np

SIMULATED = ("HTP simulator on this x86_64 machine (onnxruntime-qnn's libQnnHtp.so): not the phone's speed; "
             "never used to pick the final model")

# Usual fixes by what blocked a node: the QNN EP's reason text, then the op type.
_FIX_BY_REASON = (
    ("shape", "fix the shapes: [export] fixed_batch = 1 (or --fixed-batch 1); QNN compiles static graphs only"),
    ("mem_alloc", "HTP ran out of memory finalizing the graph for the simulator's default chip: name the phone's, "
                  "e.g. --qnn-option soc_model=60 (Snapdragon 8 Gen 3), which has more ([export] qnn_options = "
                  "{ soc_model = 60 } in a pipeline)"),
    ("failed to compile", "HTP accepted the nodes but could not compile the graph: try activation_type = 'uint16', "
                          "another opset, or keep the op on CPU (fallback enabled)"),
    ("fmod", "export the op differently (e.g. x - y * floor(x / y) instead of torch.fmod)"),
)
_FIX_BY_OP = {
    "Erf": "exact GELU exports Erf: use the tanh approximation (nn.GELU(approximate='tanh')); a torch.erf of the "
           "model's own has no HTP kernel: replace it or keep it on CPU",
    "Einsum": "rewrite the einsum as MatMul/Transpose in the model, or export with exporter = 'dynamo'",
    "NonZero": "data-dependent output shape: no NPU runs it; move it out of the model",
    "Loop": "control flow: unroll it in the model or move it out",
    "If": "control flow: bind the input its condition reads (compress edge --fix-input NAME=VALUE) and the "
          "branch taken is inlined, or move the branch out of the model",
}
QDQ = ("QuantizeLinear", "DequantizeLinear")

_DEFAULT_FIX = ("not supported by the QNN EP: export the op differently (another opset, exporter = 'dynamo'), "
                "replace it in the model, or let it run on CPU with fallback enabled")


def blockers(refused: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Refused nodes grouped by op type: [{"op_type", "nodes", "reason", "fix"}, with "with": the (de)quantize
    nodes refused only as part of that op's QDQ unit], most nodes first. The EP validates a unit (DQ -> Erf -> Q)
    whole, so the Q node carries the Erf's reason ('Operators of type `Erf` ...'): it joins Erf's group rather than
    reading as a QuantizeLinear that HTP refuses."""
    groups: dict[str, dict[str, Any]] = {}
    refused_ops = {node["op_type"] for node in refused}
    for node in refused:
        named = re.search(r"type `(\w+)`", node["reason"] or "")
        unit = node["op_type"] in QDQ and named is not None and named.group(1) in refused_ops - {node["op_type"]}
        op = named.group(1) if unit else node["op_type"]
        g = groups.setdefault(op, {"op_type": op, "nodes": 0, "reason": node["reason"]})
        if unit:
            g.setdefault("with", []).append(node["op_type"])
        else:
            g["nodes"] += 1
    for g in groups.values():
        reason = (g["reason"] or "").lower()
        g["fix"] = next((fix for key, fix in _FIX_BY_REASON if key in reason),
                        _FIX_BY_OP.get(g["op_type"], _DEFAULT_FIX))
    return sorted(groups.values(), key=lambda g: -g["nodes"])


def _context_check(context: Path, session: Any, x: "dict[str, np.ndarray]", batch: int, strict: bool,
                   provider_options: dict[str, str] | None, axes: dict[str, int | None]) -> dict[str, Any]:
    """Load the EPContext model on HTP and compare its outputs with the QDQ model's on HTP."""
    from compress.errors import first_line
    from compress.onnx.parity import compare

    try:
        ctx = htp_session(context, fallback=not strict, provider_options=provider_options)
    except Exception as exc:
        return {"path": str(context), "bytes": context.stat().st_size, "loads": False, "error": first_line(exc)}
    parity = compare(run_batches(session, x, batch, axes, every=True), run_batches(ctx, x, batch, axes, every=True),
                     atol=1e-6, rtol=0)
    return {"path": str(context), "bytes": context.stat().st_size, "loads": True, "error": None, "parity": parity}


def _latency(session: Any, sample: "dict[str, np.ndarray]", runs: int, batch: int) -> dict[str, Any]:
    import numpy as np

    for _ in range(3):
        session.run(None, sample)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, sample)
        times.append((time.perf_counter() - start) * 1e3)
    return {"simulated": True, "p50_ms": float(np.median(times)), "runs": runs, "batch": batch,
            "note": SIMULATED}


REWRITES = (("float16_as_float32", "float16 input(s), output(s) and weight(s) as float32"),
            ("finite_mask", "attention mask(s) made finite"),
            ("constants_as_initializers", "Constant node(s) as initializers"),
            ("bounded_tanh", "saturating tanh argument(s) clipped"),
            ("infinite_guards_dropped", "infinite Max/Min guard(s) dropped"),
            ("reciprocals_as_division", "Reciprocal(s) as Div (HTP's Reciprocal misreads inputs under 1)"))
"""compress.edge.ranges.for_htp's entries, as the summary names them."""


def prepare_qnn(onnx_path: Path, out_dir: Path, *, calibration: "np.ndarray | dict[str, np.ndarray]",
                val_x: "np.ndarray | dict[str, np.ndarray] | None" = None, val_y: "np.ndarray | None" = None,
                fixed_batch: int = 1, seq: int | None = None, activation_type: ActivationType = "uint8",
                provider_options: dict[str, str] | None = None, latency_runs: int = 20,
                max_accuracy_drop: float = 0.01, qdq: Path | None = None,
                logits: bool | None = None, reference: "np.ndarray | None" = None,
                outlier_ratio: float | None = 64.0,  # quantize's OUTLIER_RATIO
                per_channel: bool = True, batch_axes: dict[str, int | None] | None = None,
                rewrites: dict[str, list] | None = None, compile_unmet: bool = True) -> dict[str, Any]:
    """QNN HTP target for one model; returns the section (also written to `out_dir/qnn.json`).

    QNN not installed -> {"installed": False, "reason", "install"} (a fact about this machine, not the model).
    Writes `<stem>.batch<N>.onnx`, `<stem>.qnn.qdq.onnx` (the QDQ model) and `<stem>.qnn_ctx.onnx` (the EPContext
    model with the embedded context binary a phone app loads) into `out_dir`. `calibration` and `val_x` are one
    array (a one-input model) or {input name: rows} (token ids and a mask: every dimension named 'seq' is fixed to
    `seq`, as HTP compiles static shapes only); `val_y` labels give the accuracy rows, else the calibration data is
    used for agreement only. `qdq`: a QDQ model made for QNN already (quantization-aware training's), used instead
    of quantizing here. `logits`: whether the output is class logits (top-1 figures) or not (cosine); None: guessed
    from the outputs. `reference`: rows the outputs should match (a teacher's embeddings for `val_x`): each model's
    mean cosine to them is reported too (the embedding task's own figure). `per_channel`: convolution weights int8
    per output channel (quantize_for_qnn), else ORT's QNN default (uint8 per tensor). `batch_axes`: each input's
    sample axis where it is not 0 (an LSTM state [layers, N, hidden]: 1; None: fed whole, a scalar setting).
    `rewrites`: the float rewrites a given `qdq` was made with (the summary names them). `activation_type = "mixed"`:
    16 bits for the activations 8 bits damage most (compress.edge.mixed); with `compile_unmet` False, a mixed graph
    whose ORT CPU reading already misses the budget itself is not compiled for HTP (the section says so, "skipped").
    """
    from compress.edge.isolated import mark

    mark("register the QNN plugin")
    status = qnn_status()
    if not status["installed"]:
        return {"provider": "QNNExecutionProvider", "installed": False, "reason": status["reason"],
                "install": INSTALL}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(onnx_path).stem
    axes = dict(batch_axes or {})
    fixed, halved = _fixed(Path(onnx_path), out_dir / f"{stem}.batch{fixed_batch}.onnx", fixed_batch, seq, axes)
    calib = whole_batches(feeds_for(fixed, calibration, "calibration"), fixed_batch, axes)
    x, y = _validation(fixed, val_x, val_y, calib, fixed_batch, axes)
    mark("QNN QDQ quantization")
    settings = dict(activation_type=activation_type, outlier_ratio=outlier_ratio, per_channel=per_channel)
    if activation_type == "mixed":  # the judge of each round: ORT CPU's reading, on the data accuracy is read on
        settings["mixed"] = dict(x=x, y=y, logits=logits, budget=max_accuracy_drop)
    qdq, made = _qdq(fixed, out_dir, stem, calib, qdq, fixed_batch, seq, axes, settings)
    rewrites = {**(rewrites or {}), **made, **({"float16_as_float32": halved} if halved else {})}
    if "mixed" in made and not compile_unmet and not _within(made["mixed"]["best_cpu_drop"], max_accuracy_drop):
        return _unmet(out_dir, status, fixed, qdq, made["mixed"], max_accuracy_drop)
    mark("placement on HTP")
    placed, provider_options, chip = _placed(qdq, out_dir / f"{stem}.qnn_ctx.onnx", provider_options)
    mark("a session without CPU fallback")
    strict = runs_without_fallback(qdq, provider_options=provider_options)
    section: dict[str, Any] = {
        "provider": "QNNExecutionProvider", "installed": True, "onnxruntime_qnn": status["version"],
        "backend": "htp", "simulated": True, "onnx_path": str(fixed), "qdq_path": str(qdq),
        "activation_type": activation_type, "calibration_samples": rows(calib, axes), "placement": placed,
        "runs_without_fallback": strict["ok"], "fallback_error": strict["error"], "seq": seq,
        "provider_options": dict(provider_options or {}), "chip": chip,
        **{key: [] for key, _ in REWRITES}, **rewrites,
        "blockers": blockers(placed["refused"]), "accuracy": None, "budget": None, "context": None, "latency": None,
    }
    if placed["compile_error"] is None:
        mark("accuracy on HTP")
        session = htp_session(qdq, fallback=not strict["ok"], provider_options=provider_options)
        section["accuracy"] = accuracy_on_htp(fixed, qdq, session, x, y, fixed_batch, logits,
                                        None if reference is None else reference[: rows(x, axes)], axes)
        section["budget"] = judge(section["accuracy"], max_accuracy_drop, activation_type)
        if section["budget"]["lost_in"] == "htp":
            mark("where HTP parts from ORT CPU")  # HTP, not the codes, loses: name the node where it starts
            section["parts_at"] = _parts_at(qdq, head(x, fixed_batch, axes), out_dir / f"{stem}.parts.onnx",
                                            provider_options)
        if placed["context_path"]:
            mark("the EPContext model")
            section["context"] = _context_check(Path(placed["context_path"]), session,
                                                head(x, 8 * fixed_batch, axes), fixed_batch, strict["ok"],
                                                provider_options, axes)
        mark("latency on HTP")
        section["latency"] = _latency(session, head(x, fixed_batch, axes), latency_runs, fixed_batch)
    write_json(out_dir / "qnn.json", section)
    return section


def _validation(fixed: Path, val_x: Any, val_y: "np.ndarray | None", calib: "dict[str, np.ndarray]", batch: int,
                axes: dict[str, int | None]) -> "tuple[dict[str, np.ndarray], np.ndarray | None]":
    """The samples accuracy is read on, in whole batches, and their labels: the validation data, else the
    calibration data unlabelled."""
    x, y = (feeds_for(fixed, val_x, "validation"), val_y) if val_x is not None else (calib, None)
    x = whole_batches(x, batch, axes)
    return x, y[: rows(x, axes)] if y is not None else None


def _within(drop: float | None, budget: float) -> bool:
    """Whether a mixed search's best ORT CPU drop is within the budget (None: nothing was widened)."""
    return drop is not None and drop <= budget + 1e-9


def _unmet(out_dir: Path, status: dict[str, Any], fixed: Path, qdq: Path, mixed: dict[str, Any],
           budget: float) -> dict[str, Any]:
    """The section of a mixed-width graph not compiled: its search's best round missed the budget on ORT CPU, or
    there was no activation to widen."""
    best = mixed["best_cpu_drop"]
    most = max((r["sixteen_bit"] for r in mixed["tried"]), default=0)
    section = {"provider": "QNNExecutionProvider", "installed": True, "onnxruntime_qnn": status["version"],
               "onnx_path": str(fixed), "qdq_path": str(qdq), "activation_type": "mixed", "mixed": mixed,
               "skipped": "not compiled for HTP: " + (
                   f"with up to {most} of {mixed['activations']} activations at 16 bits, ORT CPU's reading lost "
                   f"{best:.4f} at best" if best is not None else "no 8-bit activation left to widen"),
               "budget": {"metric": None, "drop": None, "budget": budget, "ok": False, "int8_cpu_drop": best,
                          "lost_in": "codes", "where": None}}
    write_json(out_dir / "qnn.json", section)
    return section


def _qdq(fixed: Path, out_dir: Path, stem: str, calib: "dict[str, np.ndarray]", given: Path | None, batch: int,
         seq: int | None, axes: dict[str, int | None], settings: dict[str, Any]) -> tuple[Path, dict[str, list]]:
    """The QDQ model for HTP (the float graph rewritten where HTP misreads it, then quantized with QNN's settings)
    and the rewrites made; or `given` (quantization-aware training's QDQ model) with its batch and seq fixed."""
    from compress.edge.shapes import fix_batch, fix_dims, folded

    out = out_dir / f"{stem}.qnn.qdq.onnx"
    if given is None:
        source, rewrites = for_htp(fixed, out_dir, stem, calib, axes)
        if "mixed" in settings:
            from compress.edge.mixed import mixed_qdq

            judged = settings.pop("mixed")
            qdq, record = mixed_qdq(source, out, calib, fixed=fixed, batch=batch, axes=axes, settings=settings,
                                    **judged)
            return qdq, {**rewrites, "mixed": record}
        return quantize_for_qnn(source, out, calib, batch=batch, axes=axes, **settings), rewrites
    qdq = fix_batch(Path(given), out, batch, axes)
    return (folded(fix_dims(qdq, qdq, [("seq", None, seq)]), qdq) if seq is not None else qdq), {}


LARGER_CHIP = "60"
"""The simulator's chip for a graph its default one cannot finalize: Snapdragon 8 Gen 3 (SM8650)."""


def _placed(qdq: Path, context: Path, options: dict[str, str] | None) -> tuple[dict, dict | None, str | None]:
    """Placement on HTP; when the simulator's default chip runs out of memory finalizing the graph and no chip was
    named, again on a larger one (PP-OCRv4's detector and Silero VAD finalize on Snapdragon 8 Gen 3), said in the
    summary. Returns the placement, the provider options every later session uses, and that note (or None)."""
    placed = placement(qdq, context, provider_options=options)
    if "MEM_ALLOC" not in (placed["compile_error"] or "") or "soc_model" in (options or {}):
        return placed, options, None
    options = {**(options or {}), "soc_model": LARGER_CHIP}
    note = (f"the simulator's default chip ran out of memory finalizing the graph (QNN_COMMON_ERROR_MEM_ALLOC); "
            f"compiled for soc_model={LARGER_CHIP} (Snapdragon 8 Gen 3) instead: name your phone's chip with "
            "--qnn-option soc_model=N ([export] qnn_options)")
    return placement(qdq, context, provider_options=options), options, note


def _fixed(onnx_path: Path, out_path: Path, batch: int, seq: int | None,
           axes: dict[str, int | None]) -> tuple[Path, list[str]]:
    """The model with its batch (on each input's batch axis) and `seq` dimensions fixed, folded where shapes stay
    unknown, and float32 where it was float16 (QNN's quantizer reads float32 graphs; feeds_for casts the rows);
    and the tensors made float32."""
    from compress.edge.shapes import fix_batch, fix_dims, folded, shapes_static

    fixed = fix_batch(onnx_path, out_path, batch, axes)
    if seq is not None:
        fixed = fix_dims(fixed, fixed, [("seq", None, seq)])
    if seq is not None or not shapes_static(fixed):
        # shape arithmetic on the now fixed dimensions folds to constants (Google's Magika, a jax2tf graph: its
        # Shape -> Expand chains left QNN 0 of 276 nodes with the batch fixed, and all of them once folded)
        fixed = folded(fixed, fixed)
    return fixed, float16_as_float32(fixed, fixed)


def _parts_at(qdq: Path, feeds: "dict[str, np.ndarray]", scratch: Path,
              provider_options: dict[str, str] | None) -> dict[str, Any] | None:
    """compress.edge.parting.where_htp_parts, its scratch copy removed; a failure is a finding ({"error"})."""
    from compress.edge.parting import where_htp_parts
    from compress.errors import first_line

    try:
        return where_htp_parts(qdq, feeds, scratch, provider_options=provider_options)
    except Exception as exc:  # a diagnosis: the measured figures stand without it
        return {"failed": first_line(exc)}
    finally:
        scratch.unlink(missing_ok=True)


def readiness_entry(section: dict[str, Any]) -> dict[str, Any]:
    """The QNN row of a readiness section (compress.edge.readiness), from a measured prepare_qnn section."""
    if not section["installed"]:
        return {"provider": "QNNExecutionProvider", "available": False, "measured": False,
                "reason": f"onnxruntime-qnn {section['reason']}"}
    placed = section["placement"]
    total, taken = placed["nodes_total"], placed["nodes_on_htp"]
    return {
        "provider": "QNNExecutionProvider", "available": True, "measured": True,
        "rules": "measured: QNN EP HTP backend (x86_64 simulator)", "nodes_total": total, "nodes_taken": taken,
        "nodes_fallback": total - taken, "partitions": placed["partitions"],
        "suitability": "yes" if section["runs_without_fallback"] else ("maybe" if taken else "no"),
        "unsupported_ops": sorted({b["op_type"] for b in section["blockers"]}),
        "fallback_due_to_dynamic_shape": 0, "runs_without_fallback": section["runs_without_fallback"],
        "blockers": section["blockers"], "wants_fixed_shapes": True,
    }


def qnn_table(section: dict[str, Any]) -> str:
    """A few lines for the terminal: placement, blockers, accuracy, EPContext, simulated latency."""
    if not section["installed"]:
        return f"QNN (HTP): onnxruntime-qnn {section['reason']}"
    p = section["placement"]
    lines = [f"QNN HTP: {p['nodes_on_htp']}/{p['nodes_total']} nodes on HTP in {p['partitions']} partition(s); "
             f"runs with CPU fallback disabled: {'yes' if section['runs_without_fallback'] else 'no'}"]
    if section.get("chip"):
        lines.append(f"  chip: {section['chip']}")
    tried = section.get("activation_tried")
    if tried:
        lines.append("  activations: " + "; ".join(_tried(t, section["activation_type"]) for t in tried)
                     + " (the 8-bit graph itself lost, so wider activations were tried: slower on the NPU)")
    mixed = section.get("mixed")
    if mixed and mixed.get("tried"):
        lines.append(f"  mixed widths: {len(mixed['sixteen_bit'])} of {mixed['activations']} activations at 16 bits, "
                     "those 8 bits would damage most; ORT CPU drop by round: "
                     + ", ".join(f"{r['sixteen_bit']}: {r['int8_cpu_drop']:.4f}" for r in mixed["tried"]))
    for b in section["blockers"]:
        unit = f" and its {', '.join(sorted(set(b['with'])))}" if b.get("with") else ""
        lines.append(f"  blocked: {b['op_type']} x{b['nodes']}{unit} ({b['reason']}); fix: {b['fix']}")
    rewrites = [f"{len(section.get(key) or [])} {what}" for key, what in REWRITES if section.get(key)]
    if rewrites:
        lines.append(f"  float graph rewritten for HTP, its function kept: {', '.join(rewrites)}")
    a = section["accuracy"]
    if a and not a.get("outputs_look_like_logits", True):
        lines.append(f"  on {a['samples']} samples: cosine HTP vs fp32 CPU {a['cosine_htp_vs_fp32_cpu']:.4f}, "
                     f"SQNR {a['sqnr_db_htp_vs_fp32_cpu']:.1f} dB; the same QDQ graph on ORT CPU "
                     f"{a.get('cosine_int8_cpu_vs_fp32_cpu', float('nan')):.4f} (the outputs are not class logits)")
    elif a:
        line = (f"  on {a['samples']} samples: top-1 agreement HTP vs ORT CPU int8 "
                f"{a['top1_agreement_htp_vs_int8_cpu']:.3f}, vs fp32 {a['top1_agreement_htp_vs_fp32_cpu']:.3f}")
        if "accuracy_htp" in a:
            line += (f"; accuracy fp32 CPU {a['accuracy_fp32_cpu']:.4f}, int8 CPU {a['accuracy_int8_cpu']:.4f}, "
                     f"HTP {a['accuracy_htp']:.4f}")
        lines.append(line)
    if section.get("budget"):
        lines.append(f"  {budget_line(section['budget'])}")
    parts = section.get("parts_at", False)
    if parts and "failed" not in parts:
        where = f"{parts['node']} ({parts['op_type']})" if parts["node"] is not None else parts["tensor"]
        lines.append(f"  HTP parts from ORT CPU first at {where}: cosine "
                     f"{parts['cosine']:.4f}, relative error {parts['error']:.3f} (its inputs: cosine "
                     f"{parts['inputs_cosine'] if parts['inputs_cosine'] is not None else float('nan'):.4f}); "
                     "export that op differently or keep it off the NPU")
    elif parts is None:
        lines.append("  where HTP parts from ORT CPU: no quantized activation differs on the batch checked")
    elif parts:
        lines.append(f"  where HTP parts from ORT CPU: not found ({parts['failed']})")
    c = section["context"]
    if c:
        lines.append(f"  EPContext model: {c['path']} ({c['bytes']} bytes); loads on HTP and matches the QDQ model: "
                     f"{context_verdict(c)}")
    if section["latency"]:
        lines.append(f"  latency p50 {section['latency']['p50_ms']:.2f} ms (simulated: not the phone's speed)")
    return "\n".join(lines)


def context_verdict(c: dict[str, Any]) -> str:
    """'yes', or 'no' and why: the EPContext model did not load on HTP (the error's first line), or its outputs
    differ from the QDQ model's on HTP (by how much, against the 1e-6 it is held to: the same compiled graph)."""
    if not c["loads"]:
        return f"no: it does not load ({c.get('error') or 'no error given'})"
    parity = c["parity"]
    if parity["ok"]:
        return "yes"
    return (f"no: outputs differ by up to {parity['max_abs_diff']:.3g} (held to {parity['atol']:.0e}: the same "
            "compiled graph)")


def _tried(t: dict[str, Any], kept: str) -> str:
    """One width tried, for qnn_table's activations line."""
    name = f"{t['activation_type']}{f' ({n} at 16 bits)' if (n := t.get('sixteen_bit')) else ''}"
    if t.get("skipped"):
        cpu = t.get("int8_cpu_drop")
        return (f"mixed (up to {max(t['rounds'] or [0])} at 16 bits): "
                + (f"ORT CPU drop {cpu:.4f} at best" if cpu is not None else "nothing to widen") + ", not compiled")
    drop = f"drop {t['drop']:.4f}" if t.get("drop") is not None else "not measured on HTP"
    return f"{name} {drop} ({'met' if t['ok'] else 'missed'}{', kept' if t['activation_type'] == kept else ''})"
