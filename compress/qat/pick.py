"""Post-training or quantization-aware: which quantized model is the candidate that the latency pick weighs
against the float model (compress.quantize.api)."""
from __future__ import annotations

from typing import Any

NOT_NEEDED = 0.001
"""A post-training model that loses less than this (0.1 points of a fraction such as accuracy or mAP; 0.001 of a
cosine) needs no quantization-aware training: it stays the candidate whatever QAT reaches."""


def pick_quantized(ptq: dict[str, Any] | None, qat: dict[str, Any], gate: Any) -> tuple[dict[str, Any] | None,
                                                                                           dict[str, Any]]:
    """(the candidate attempt or None, {"used": "ptq" | "qat" | None, "why", "ptq_drop", "qat_drop"}).

    `ptq` is the accepted post-training attempt (None when none met the budget), `qat` the gated QAT attempt. The
    PTQ model is kept when it loses under NOT_NEEDED; else QAT when it meets the budget and loses less than PTQ."""
    from compress.quantize.attempts import shown_drop

    def shown(a: dict[str, Any] | None) -> str:
        return "-" if a is None or a.get("drop") is None else shown_drop(gate, a["drop"])

    note = {"ptq_drop": None if ptq is None else ptq["drop"], "qat_drop": qat.get("drop"),
            "qat_seconds": qat.get("qat", {}).get("seconds"), "parity": qat.get("qat", {}).get("parity")}
    if ptq is not None and ptq["drop"] < NOT_NEEDED:
        return ptq, {**note, "used": "ptq", "why": "post-training quantization loses under "
                     f"{shown_drop(gate, NOT_NEEDED)} ({shown(ptq)}), so QAT is not needed and {ptq['name']} stays "
                     f"(QAT: {shown(qat)})"}
    if qat["accepted"] and (ptq is None or qat["drop"] < ptq["drop"]):
        versus = f"post-training {shown(ptq)}" if ptq is not None else "no post-training attempt met the budget"
        moved = "loses" if qat["drop"] >= 0 else "gains"  # a negative drop is a gain: never "loses -4.00"
        return qat, {**note, "used": "qat", "why": f"QAT {moved} {shown({'drop': abs(qat['drop'])})} ({versus}), so "
                     "the QAT model is the quantized candidate"}
    if ptq is not None:
        return ptq, {**note, "used": "ptq", "why": f"QAT ({shown(qat)}) is no better than post-training "
                     f"{ptq['name']} ({shown(ptq)}), which stays"}
    return None, {**note, "used": None, "why": f"neither post-training quantization nor QAT ({shown(qat)}) met the "
                  "budget"}


def side_by_side(result: dict[str, Any], split: str = "test", metric: str = "accuracy") -> dict[str, Any] | None:
    """PTQ and QAT beside each other (report.json's quantize.qat.side_by_side): for each, the metric and its drop
    against float on validation (what the gate saw) and on `split` (the report's figures), p50 per provider and
    batch, bytes; with QAT's training time and parity. None without QAT."""
    rows = [a for a in result["attempts"] if a.get("side_by_side")]
    if not rows:
        return None

    def entry(a: dict[str, Any]) -> dict[str, Any]:
        latency = {f"{r['provider']}/b{r['batch']}": r.get("p50_ms") for r in (a.get("latency") or {}).get("rows", [])}
        return {"attempt": a["name"], "score": a.get("score"), "drop": a.get("drop"), "bytes": a.get("bytes"),
                "split": split, f"score_{split}": (a.get(split) or {}).get(metric), f"drop_{split}":
                a.get(f"drop_{split}"), "p50_ms": latency, "accepted": a["accepted"]}

    ptq, qat = (entry(a) for a in rows) if len(rows) == 2 else (None, entry(rows[-1]))
    info, note = rows[-1].get("qat", {}), result.get("qat") or {}
    paired = [{"provider": r["provider"], "batch": r["batch"], "ratio": r["ratio"], "ci_ratio": r.get("ci_ratio")}
              for r in note.get("paired") or []]
    return {"ptq": ptq, "qat": qat, "train_seconds": info.get("seconds"), "parity": info.get("parity"),
            "epochs": info.get("epochs"), "used": note.get("used"), "same_kernels": info.get("same_kernels"),
            "distilled_from": info.get("distilled_from"), "paired_qat_over_ptq": paired,
            "best_epoch": info.get("best_epoch"), "val_before": info.get("val_before"),
            "val_best_epoch": info.get("val_best_epoch")}


def side_by_side_table(table: dict[str, Any], metric: str) -> list[str]:
    """The markdown of side_by_side: one row each for PTQ and QAT, figures shown as the attempts table shows them."""
    from compress.quantize.attempts import FRACTIONS

    share = metric in FRACTIONS

    def shown(v: float | None, points: bool = False) -> str:
        if v is None:
            return "-"
        return (f"{100 * v:.2f}" + (" pts" if points else "%")) if share else f"{v:.4f}"

    split = (table["qat"] or {}).get("split", "test")
    lines = [f"| model | {metric} (val) | drop (val) | {metric} ({split}) | drop ({split}) | p50 | size | accepted |",
             "|---|---|---|---|---|---|---|---|"]
    for label, e in (("PTQ", table["ptq"]), ("QAT", table["qat"])):
        if e is None:
            continue
        p50 = ", ".join(f"{k} {v:.3f} ms" for k, v in e["p50_ms"].items() if v is not None) or "-"
        size = "-" if not e["bytes"] else f"{e['bytes'] / 1024:.1f} KB"
        lines.append(f"| {label} ({e['attempt']}) | {shown(e['score'])} | {shown(e['drop'], True)} | "
                     f"{shown(e.get(f'score_{split}'))} | {shown(e.get(f'drop_{split}'), True)} | {p50} | {size} | "
                     f"{'yes' if e['accepted'] else 'no'} |")
    parity = table.get("parity") or {}
    paired = ", ".join(f"{r['provider']}/b{r['batch']} {r['ratio']:.3f}x" + (
        f" [{r['ci_ratio'][0]:.3f}, {r['ci_ratio'][1]:.3f}]" if r.get("ci_ratio") else "")
        for r in table.get("paired_qat_over_ptq") or [])
    source = table.get("distilled_from") or {}
    against = f" against the {source['model']} ({source['why']})" if source else ""
    lines += ["", f"QAT trained {table.get('epochs')} epochs{against} in {table.get('train_seconds')} s; parity: "
              f"{parity.get('what', '-')}; ONNX Runtime runs "
              f"{'the same' if table.get('same_kernels') else 'different'} kernels for both"
              + (f"; QAT / PTQ p50, paired: {paired}" if paired else "") + "."]
    if table.get("best_epoch") == 0:  # the QAT graph holds the post-training values: one model, shown twice
        lines += ["", f"No QAT epoch beat the post-training values on validation ({metric} "
                  f"{shown(table.get('val_before'))} before, {shown(table.get('val_best_epoch'))} "
                  "at QAT's best epoch), so the QAT graph keeps them: its rows are the post-training model's."]
    return lines
