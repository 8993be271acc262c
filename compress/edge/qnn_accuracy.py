"""Accuracy on the simulated NPU beside fp32 and the same QDQ graph on ORT CPU, and the NPU's budget: whether it is
met, and where a miss is lost (the graph's codes, or HTP's reading of them)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.edge.qnn_feeds import run_batches
from compress.edge.qnn_feeds import rows

if TYPE_CHECKING:
    import numpy as np


def accuracy_on_htp(fixed: Path, qdq: Path, session: Any, x: "dict[str, np.ndarray]", y: "np.ndarray | None",
                    batch: int, logits: bool | None = None, reference: "np.ndarray | None" = None,
                    axes: dict[str, int | None] | None = None) -> dict[str, Any]:
    """fp32 and int8 (the same QDQ model) on ORT CPU and the QDQ model on HTP, on the same samples: top-1 agreement
    and accuracy (with labels) for class logits; cosine and SQNR to fp32 for any other output."""
    import numpy as np

    from compress.bench.providers import EXACT_MATMULS
    from compress.onnx.parity import compare, run_cpu
    from compress.onnx.graph import declared_task
    from compress.quantize.gate import looks_like_logits
    from compress.tasks.tensors import Tensors

    fp32s = run_cpu(fixed, x, batch_size=batch, axes=axes)
    int8s = run_cpu(qdq, x, batch_size=batch, config=EXACT_MATMULS, axes=axes)  # W8A16 MatMuls as HTP computes
    htps = run_batches(session, x, batch, axes, every=True)
    fp32, int8, htp = fp32s[0], int8s[0], htps[0]
    vs_int8 = compare([int8], [htp], atol=1e-3)
    vs_fp32 = compare([fp32], [htp], atol=1e-3)
    logits = looks_like_logits({"output": fp32}, declared_task(fixed)) if logits is None else logits
    out: dict[str, Any] = {
        "samples": rows(x, axes), "outputs_look_like_logits": logits,
        "top1_agreement_htp_vs_int8_cpu": vs_int8["top1_agreement"],
        "max_abs_diff_htp_vs_int8_cpu": vs_int8["max_abs_diff"],
        "top1_agreement_htp_vs_fp32_cpu": vs_fp32["top1_agreement"],
        "max_abs_diff_htp_vs_fp32_cpu": vs_fp32["max_abs_diff"],
    }
    figures = Tensors().metrics({"output": htp}, None, {"output": fp32})
    out["cosine_htp_vs_fp32_cpu"], out["sqnr_db_htp_vs_fp32_cpu"] = figures["cosine"], figures["sqnr_db"]
    # the same QDQ graph on ORT CPU against fp32: does the 8-bit graph lose, or HTP's reading of it?
    out.update(int8_figures(fp32, int8, y, logits))
    if reference is not None:  # the task's own figure: mean cosine to the reference rows
        r = np.asarray(reference, np.float64).reshape(len(reference), -1)
        for k, v in (("fp32_cpu", fp32), ("int8_cpu", int8), ("htp", htp)):
            v = np.asarray(v, np.float64).reshape(len(v), -1)
            cos = (v * r).sum(1) / np.maximum(np.linalg.norm(v, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
            out[f"cosine_to_reference_{k}"] = float(cos.mean())
    if y is not None and logits:
        out["accuracy_htp"] = _accuracy(htp, y)
        out["accuracy_drop_htp_vs_fp32"] = out["accuracy_fp32_cpu"] - out["accuracy_htp"]
    names = [o.name for o in session.get_outputs()]
    if len(htps) > 1:  # every other output (a recurrent state, a second head) judged too, by cosine and SQNR
        out["other_outputs"] = {name: _agreement(f, i, h) for name, f, i, h in
                                zip(names[1:], fp32s[1:], int8s[1:], htps[1:])}
    return out


def _agreement(fp32: "np.ndarray", int8: "np.ndarray", htp: "np.ndarray") -> dict[str, float]:
    """One more output's cosine and SQNR to fp32, on HTP and for the QDQ graph on ORT CPU."""
    from compress.tasks.tensors import Tensors

    on_htp = Tensors().metrics({"o": htp}, None, {"o": fp32})
    on_cpu = Tensors().metrics({"o": int8}, None, {"o": fp32})
    return {"cosine_htp_vs_fp32_cpu": on_htp["cosine"], "sqnr_db_htp_vs_fp32_cpu": on_htp["sqnr_db"],
            "cosine_int8_cpu_vs_fp32_cpu": on_cpu["cosine"], "sqnr_db_int8_cpu_vs_fp32_cpu": on_cpu["sqnr_db"]}


def int8_figures(fp32: "np.ndarray", int8: "np.ndarray", y: "np.ndarray | None", logits: bool) -> dict[str, Any]:
    """The QDQ graph on ORT CPU against fp32, as accuracy_on_htp records it: top-1 agreement, cosine and SQNR, and
    with labels on class logits each one's accuracy."""
    from compress.onnx.parity import compare
    from compress.tasks.tensors import Tensors

    on_cpu = Tensors().metrics({"output": int8}, None, {"output": fp32})
    out = {"outputs_look_like_logits": logits,
           "top1_agreement_int8_cpu_vs_fp32_cpu": compare([fp32], [int8], atol=1e-3)["top1_agreement"],
           "cosine_int8_cpu_vs_fp32_cpu": on_cpu["cosine"], "sqnr_db_int8_cpu_vs_fp32_cpu": on_cpu["sqnr_db"]}
    if y is not None and logits:
        out["accuracy_fp32_cpu"], out["accuracy_int8_cpu"] = _accuracy(fp32, y), _accuracy(int8, y)
    return out


def _accuracy(outputs: "np.ndarray", y: "np.ndarray") -> float:
    import numpy as np

    return float(np.mean(outputs.reshape(len(outputs), -1).argmax(-1) == np.asarray(y).reshape(-1)))


def judge(accuracy: dict[str, Any] | None, budget: float, activation_type: str = "uint8") -> dict[str, Any] | None:
    """The NPU's budget: accuracy drop vs fp32 with labels; else the drop of top-1 agreement (class logits) or, for
    anything else, the larger of 1 - cosine and half the squared relative error (_tensor_drop); a model's other
    outputs by _tensor_drop too, the worst of all deciding. Returns {"metric",
    "drop", "budget", "ok", "int8_cpu_drop" (the same figure for ORT CPU's reading of the same QDQ graph), "lost_in"
    (None when met; "codes" when ORT CPU's reading misses too, the graph's own codes lose; "htp" when only HTP
    does), "where" (that, and what to try)}."""
    if not accuracy:
        return None
    if "accuracy_drop_htp_vs_fp32" in accuracy:
        metric, drop = "accuracy", accuracy["accuracy_drop_htp_vs_fp32"]
    elif accuracy.get("outputs_look_like_logits"):
        metric, drop = "top-1 agreement with fp32", 1.0 - accuracy["top1_agreement_htp_vs_fp32_cpu"]
    else:
        metric, drop = _tensor_drop(accuracy["cosine_htp_vs_fp32_cpu"], accuracy.get("sqnr_db_htp_vs_fp32_cpu"))
    on_cpu = int8_drop(accuracy)
    for name, other in (accuracy.get("other_outputs") or {}).items():  # the worst output decides
        kind, there = _tensor_drop(other["cosine_htp_vs_fp32_cpu"], other["sqnr_db_htp_vs_fp32_cpu"])
        if there > drop:
            metric, drop = f"{kind} (output {name})", there
        on_cpu = max(on_cpu, int8_drop({k: v for k, v in other.items() if "int8" in k}))
    ok = drop <= budget + 1e-9
    lost_in = None if ok else "codes" if on_cpu > budget + 1e-9 else "htp"
    if lost_in is None:
        where = None
    elif lost_in == "codes" and activation_type != "uint16":
        where = (f"the QDQ graph loses on ORT CPU too (drop {on_cpu:.4f}): its 8-bit codes, not HTP; try 16-bit "
                 "activations (--activation-type uint16, [export] qnn_activation_type)")
    elif lost_in == "codes":
        where = (f"the QDQ graph loses on ORT CPU too (drop {on_cpu:.4f}), with 16-bit activations: its quantization, "
                 "not HTP; calibrate on data like the deployment's, or train for it ([quantize] mode = \"qat\")")
    else:
        where = (f"the same QDQ graph on ORT CPU is within the budget (drop {on_cpu:.4f}): HTP computes it "
                 f"differently (an HTP kernel), not its {'16' if activation_type == 'uint16' else '8'}-bit codes")
    return {"metric": metric, "drop": drop, "budget": budget, "ok": ok, "int8_cpu_drop": on_cpu, "lost_in": lost_in,
            "where": where}


def int8_drop(figures: dict[str, Any]) -> float:
    """judge's figure for ORT CPU's reading of the QDQ graph (int8_figures' keys): the accuracy drop with labels, else
    the drop of top-1 agreement (class logits) or _tensor_drop's."""
    if "accuracy_int8_cpu" in figures:
        return figures["accuracy_fp32_cpu"] - figures["accuracy_int8_cpu"]
    if figures.get("outputs_look_like_logits"):
        return 1.0 - figures.get("top1_agreement_int8_cpu_vs_fp32_cpu", 1.0)
    return _tensor_drop(figures.get("cosine_int8_cpu_vs_fp32_cpu", 1.0), figures.get("sqnr_db_int8_cpu_vs_fp32_cpu"))[1]


def worst_int8_drop(fp32s: "list[np.ndarray]", int8s: "list[np.ndarray]", y: "np.ndarray | None",
                    logits: bool) -> float:
    """judge's figure for ORT CPU's reading of a QDQ graph over every output, the worst deciding: the first by
    int8_drop (accuracy, agreement or _tensor_drop), every other one by _tensor_drop, as judge reads them on HTP."""
    from compress.tasks.tensors import Tensors

    drop = int8_drop(int8_figures(fp32s[0], int8s[0], y, logits))
    for fp32, int8 in zip(fp32s[1:], int8s[1:]):
        figures = Tensors().metrics({"o": int8}, None, {"o": fp32})
        drop = max(drop, _tensor_drop(figures["cosine"], figures["sqnr_db"])[1])
    return drop


def _tensor_drop(cosine: float, sqnr_db: float | None) -> tuple[str, float]:
    """(metric, drop) for outputs that are not class logits: 1 - cosine, or half the squared error relative to fp32
    where that is larger. The two agree when the norms do (|a - b|^2 = 2 (1 - cos) |a|^2); a cosine alone does not
    see a wrong scale (HTP's Reciprocal read a seventh of the value at cosine 1.0 on a test graph)."""
    from compress.tasks.tensors import relative_error

    scale = 0.5 * relative_error(sqnr_db) ** 2 if sqnr_db is not None else 0.0
    drop = max(1.0 - cosine, scale)
    if scale > 2 * (1.0 - cosine) + 1e-3:  # named by what sets it: the two agree within rounding when norms do
        return "error relative to fp32 (half its square; the scale is off)", drop
    return "cosine to fp32", drop


def budget_line(b: dict[str, Any]) -> str:
    """The NPU budget's verdict in one line: accuracy and top-1 agreement in points, as the quantize gate says them
    ('budget: accuracy drop 0.33 points <= 0.50 points'), a cosine as the fraction it is ('... 0.0033 <= 0.01')."""
    sign = "<=" if b["ok"] else ">"
    if b["metric"] in ("accuracy", "top-1 agreement with fp32"):
        verdict = f"{100 * b['drop']:.2f} points {sign} {100 * b['budget']:.2f} points"
    else:
        verdict = f"{b['drop']:.4f} {sign} {b['budget']:g}"
    return f"budget: {b['metric']} drop {verdict}" + ("" if b["ok"] else f" (MISSED): {b.get('where')}")


def graphs_markdown(graphs: dict[str, Any]) -> list[str]:
    """report.md's rows for the post-training and the quantization-aware QNN graphs placed on HTP side by side
    (the edge stage's qnn_graphs; the one the quantize stage picked is marked)."""
    lines = ["", "Post-training and quantization-aware QNN graphs, each placed and read on HTP:", "",
             "| graph | nodes on HTP | runs with CPU fallback disabled | on HTP |", "|---|---|---|---|"]
    for name, label in (("ptq", "post-training"), ("qat", "quantization-aware")):
        g = graphs.get(name)
        if not g:
            continue
        used = " (picked)" if graphs.get("used") == name else ""
        placed = f"{g['nodes_on_htp']}/{g['nodes_total']}" if g.get("nodes_total") else "-"
        fallback = {True: "yes", False: "no"}.get(g.get("runs_without_fallback"), "-")
        lines.append(f"| {label}{used}: `{g['graph']}` | {placed} | {fallback} | "
                     f"{budget_line(g['budget']) if g.get('budget') else '-'} |")
    return lines
