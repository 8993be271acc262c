"""report.json (schema compress.report/1), report.md, the summary table and the figure/latency/size plot. Every
model carries `metrics` (its figures on the test split), `metrics_val` and `metrics_torch`; `primary_metric` names the
figure that picked and gated, which the table and plot show. `accuracy` (classification) and `cosine` /
`neighbour_overlap@10` (embedding) stay where report/1 had them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.cache import write_json, write_text
from compress.records import ModelRecord, RunState, plain

SCHEMA = "compress.report/1"
ORDER = ["teacher", "control", "student", "student-pruned"]


def build_report(cfg: Any, models: dict[str, ModelRecord], state: RunState, stages: list[dict],
                 info: dict, data: Any = None) -> dict:
    """Assemble the report from the model records, stage statuses and stage details; `data` (a DataBundle) adds
    the models' inputs and the `data` section: the splits, which one the figures come from, class names, and a
    warning when the test split is too small."""
    from compress.bench.environment import environment

    ordered = sorted(models.values(), key=lambda r: ORDER.index(r.name) if r.name in ORDER else len(ORDER))
    report = {
        "schema": SCHEMA, "pipeline": cfg.pipeline.name, "final": state.final,
        "environment": environment(),
        "stages": stages,
        # the same shape `compress bench --json` records, so `compress compare` can tell two inputs apart
        "inputs": data.describe_inputs() if data is not None else None,
        "task": cfg.data.task,
        "primary_metric": _primary(cfg, info),
        "models": [_model_entry(r) for r in ordered if r.onnx or r.torch],
        "details": info,
    }
    if data is not None:
        report["data"] = data_section(data, report["models"], info)
    for key in ("final_reason", "gate_failure", "edge"):
        if getattr(state, key) is not None:
            report[key] = plain(getattr(state, key))
    return report


def _primary(cfg: Any, info: dict) -> dict:
    """{"name", "higher_is_better"} of the figure that picked and gated: what training recorded, else the task's."""
    from compress.tasks import evaluation_for

    if trained := ((info.get("distill") or {}).get("student") or {}).get("primary"):
        return dict(trained)
    first = cfg.evaluate and (cfg.evaluate.primary or f"first figure of {cfg.evaluate.metric}")  # none returned yet
    return evaluation_for(cfg.data.task, None).primary.to_json() if cfg.evaluate is None else \
        {"name": first, "higher_is_better": cfg.evaluate.higher_is_better}


def figure(model: dict, report: dict, split: str = "") -> float | None:
    """The model's primary figure (test split; `split` = '_val' for validation's)."""
    name = (report.get("primary_metric") or {}).get("name", "accuracy")
    return (model.get(f"metrics{split}") or {}).get(name, model.get(f"accuracy{split}") if name == "accuracy" else None)


def shown(value: float | None, name: str) -> str:
    """A figure as the tables show it: accuracy in percent, anything else to 4 decimals."""
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if name in ("accuracy", "top1_agreement") else f"{value:.4f}"


def _model_entry(rec: ModelRecord) -> dict:
    entry = {
        "name": rec.name,
        "role": rec.role,
        "path": rec.onnx or rec.torch,
        "format": "onnx" if rec.onnx else "torch",
        "params": rec.params,
        "bytes": rec.bytes,
        "accuracy": rec.accuracy,
        "accuracy_val": rec.accuracy_val,
        "accuracy_torch": rec.accuracy_torch,
        "parity": plain(rec.parity),
        "latency": plain(rec.latency),
        "unavailable": plain(rec.unavailable),
    }
    for extra in ("note", "quantization"):
        if getattr(rec, extra) is not None:
            entry[extra] = plain(getattr(rec, extra))
    entry["metrics"] = plain(rec.metrics or {})
    entry["metrics_val"] = plain(rec.metrics_val or {})
    entry["metrics_torch"] = plain(rec.metrics_torch or {})
    for key in ("cosine", "neighbour_overlap@10"):  # the embedding task's figures, where report/1 had them
        if key in (rec.metrics or {}) and "/" not in key:
            entry[key] = rec.metrics[key]
            entry[f"{key}_val"] = (rec.metrics_val or {}).get(key)
    return entry


MIN_ERRORS_APART = 10  # two models closer than this many examples on the test split are within its noise


def data_section(data: Any, models: list[dict], info: dict) -> dict:
    """The splits and where the figures come from; a warning for every compared pair of models whose test
    figures differ by fewer than MIN_ERRORS_APART examples (the split is too small to tell them apart)."""
    section = data.describe()
    if (info.get("distill") or {}).get("teacher_outputs"):
        section["teacher_outputs"] = info["distill"]["teacher_outputs"]
    n = section["splits"][section["evaluated_on"]]["size"]
    by_name = {m["name"]: m for m in models if m.get("accuracy") is not None}
    pairs = [("student", "control"), ("student", "teacher"), ("student-pruned", "pruned-control"),
             ("student-pruned", "student")]
    final = next((m for m in models if m["name"] != "student" and m["role"] == "quantized"), None)
    if final is not None:
        pairs.append((final["name"], final.get("quantization", {}).get("from") or "student"))
    from compress.tasks.embedding import small_split_warning

    warnings = small_split_warning(getattr(data, "task", None), section["evaluated_on"], n)
    for a, b in pairs:
        if a in by_name and b in by_name:
            apart = round(abs(by_name[a]["accuracy"] - by_name[b]["accuracy"]) * n)
            if apart < MIN_ERRORS_APART:
                warnings.append(f"{a} and {b} differ by {apart} of {n} {section['evaluated_on']} examples "
                                f"(fewer than {MIN_ERRORS_APART}): the split is too small to tell them apart")
    section["warnings"] = [*section.get("warnings", []), *warnings]  # the data's own first (compress.data)
    return section


def write_report(run_dir: Path, report: dict) -> None:
    """report.json, report.md and (when matplotlib is installed) report.png, each written atomically."""
    write_json(run_dir / "report.json", report)
    write_text(run_dir / "report.md", markdown(report))
    _plot(run_dir / "report.png", report)


def _headline_row(model: dict, batch: int = 1) -> dict | None:
    """The row at `batch` (headline_batch) at the fewest threads on the first measured provider (the edge-like
    number; token inputs: the first sequence length); None when the model has none at that batch."""
    rows = [r for r in model.get("latency") or [] if r["batch"] == batch]
    return min(rows, key=lambda r: (r["threads"], r["provider"] != "CPUExecutionProvider")) if rows else None


def headline_batch(report: dict) -> int:
    """The batch the table's and the plot's latency is at: 1, unless no model was timed at batch 1 (then the
    smallest batch timed)."""
    batches = {r["batch"] for m in report.get("models") or [] for r in m.get("latency") or []}
    return 1 if 1 in batches or not batches else min(batches)


def table_rows(report: dict) -> list[list[str]]:
    teacher = next((m for m in report["models"] if m["role"] == "teacher"), None)
    batch = headline_batch(report)
    t_row = _headline_row(teacher, batch) if teacher else None
    rows = []
    for m in report["models"]:
        row = _headline_row(m, batch)
        speedup = (f"{t_row['p50_ms'] / row['p50_ms']:.1f}x" if row and t_row and row["p50_ms"] > 0 else "-")
        rows.append([
            m["name"] + _made_from(m, report) + (" *" if m["name"] == report.get("final") else ""),
            f"{m['params']:,}" if m.get("params") is not None else "-",
            f"{m['bytes'] / 1024:.1f} KB" if m.get("bytes") else "-",
            shown(figure(m, report), report["primary_metric"]["name"]),
            f"{row['p50_ms']:.4f}" if row else "-",
            speedup,
        ])
    return rows


def _made_from(model: dict, report: dict) -> str:
    """' (from control)' after a fixed name (student-int8, student-pruned) made from another model than the
    student: the control won the distillation, and 'student 0.27 -> student-int8 0.46' read as int8 gaining."""
    quantized = (model.get("quantization") or {}).get("from") if model["role"] == "quantized" else None
    source = quantized or (((report.get("details") or {}).get("prune") or {}).get("from")
                           if model["role"] == "pruned" else None)
    return f" (from {source})" if source and source != "student" else ""


def headers(report: dict) -> list[str]:
    """The table's columns; the accuracy column names the split it was measured on."""
    split = (report.get("data") or {}).get("evaluated_on", "val")
    name = (report.get("primary_metric") or {}).get("name", "accuracy")
    return ["model", "params", "size", f"{name} (ORT, {split})", f"p50 ms (b{headline_batch(report)})", "vs teacher"]


def summary_table(report: dict) -> str:
    """The short table `compress run` prints: model, params, size, accuracy, p50 latency at batch 1."""
    rows = [headers(report)] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    final = report.get("final")
    lines.append(f"* final: {final}" + (f" ({report['final_reason']})" if report.get("final_reason") else ""))
    for stage in ("benchmark", "edge"):  # what was not timed; what the NPU took and how it read
        lines += ((report.get("details") or {}).get(stage) or {}).get("summary_lines", [])
    if report.get("gate_failure"):
        lines.append(f"GATE FAILED: {report['gate_failure']}")
    return "\n".join(lines)


def _placed(record: dict | None) -> str:
    """'12/14 (CPU: Det, Sigmoid)' for a non-CPU provider's placement; '-' for the CPU provider."""
    from compress.bench.placement import nodes_on_provider

    text = nodes_on_provider(record)
    return f"{text} (CPU: {', '.join(sorted(set(record['cpu_nodes'])))})" if record and record["cpu_nodes"] else text


def markdown(report: dict) -> str:
    """A human-readable report: summary, every latency row, stage statuses, stage details."""
    out = [f"# compress report: {report['pipeline']}", ""]
    out += ["| " + " | ".join(headers(report)) + " |", "|" + "---|" * len(headers(report))]
    out += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    out += ["", (f"Final model: **{report['final']}**" if report.get("final") else "Final model: none (the run "
            "stopped before one was picked)") + (f": {report['final_reason']}" if report.get("final_reason") else "")]
    if report.get("gate_failure"):
        out += ["", f"**Gate failed:** {report['gate_failure']}"]
    out += _data_markdown(report)
    out += ["", "## Latency (ONNX Runtime)", "",
            "| model | provider | batch | threads | runs | p50 ms | p90 ms | p99 ms | 95% CI of p50 | items/s "
            "| nodes on provider |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in report["models"]:
        for r in m.get("latency", []):
            lo, hi = r["ci95_p50_ms"]
            seq = f" (seq {r['seq_length']})" if r.get("seq_length") else ""  # token inputs: one row a length
            out.append(f"| {m['name']} | {r['provider']} | {r['batch']}{seq} | {r['threads']} | {r['runs']} | "
                       f"{r['p50_ms']:.4f} | {r['p90_ms']:.4f} | {r['p99_ms']:.4f} | {lo:.4f}-{hi:.4f} | "
                       f"{r['throughput_per_s']:.0f} | {_placed(r.get('placement'))} |")
        for u in m.get("unavailable", []):
            out.append(f"| {m['name']} | {u['provider']} | unavailable: {u['reason']} | | | | | | | | |")
    out += ["", "## Parity (torch vs ONNX Runtime, validation set; a quantized model vs the float one it came from)",
            ""]
    for m in report["models"]:
        if m.get("parity"):
            p = m["parity"]
            top1 = ("" if p.get("top1_agreement") is None or report.get("task", "classification") != "classification"
                    else f", top-1 agreement {100 * p['top1_agreement']:.2f}%")  # argmax means nothing elsewhere
            against = f" (vs {p['against']})" if p.get("against") else ""
            out.append(f"- {m['name']}{against}: max abs diff {p['max_abs_diff']:.2e}{top1}")
    distill = report.get("details", {}).get("distill", {})
    primary = report.get("primary_metric") or {"name": "accuracy", "higher_is_better": True}
    measured = {m["name"]: figure(m, report) for m in report["models"]}
    if "control" in distill:
        name = primary["name"]
        s, c = distill["student"][f"val_{name}"], distill["control"][f"val_{name}"]
        if measured.get("student") is not None and measured.get("control") is not None:
            s, c = measured["student"], measured["control"]  # the report's split (test), not the one that chose
        better = (s > c) if primary["higher_is_better"] else (s < c)
        verdict = "helped" if better else ("made no difference" if s == c else "did not help")
        gap = f"{100 * (s - c):+.2f} points" if name == "accuracy" else f"{s - c:+.4f}"
        out += ["", "## Did the teacher help?", "",
                f"Distilled student {shown(s, name)} vs control (labels only, same budget) {shown(c, name)} "
                f"({name}): the teacher {verdict} ({gap})."]
    for stage, details in report.get("details", {}).items():
        for line in details.get("markdown", []) if isinstance(details, dict) else []:
            out.append(line)
    out += _edge_markdown(report.get("edge"))
    out += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    out += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} |" for s in report["stages"]]
    env = report["environment"]
    out += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
    return "\n".join(out) + "\n"


def _data_markdown(report: dict) -> list[str]:
    """Which split the accuracy column is measured on, its size, validation's figures beside it, and warnings."""
    data = report.get("data")
    if not data:
        return []
    splits, on = data["splits"], data["evaluated_on"]
    sizes = ", ".join(f"{name} {v['size']:,}" + (f" ({v['how']})" if v.get("how") else "") for name, v in splits.items())
    name = (report.get("primary_metric") or {}).get("name", "accuracy")
    out = ["", "## Data", "", f"Splits: {sizes}. Figures are measured on **{on}** ({splits[on]['size']:,} examples)"
           + ("; validation picked the epochs, gates and the final model." if on == "test" else
              "; there is no test split, so these are the figures selection saw (optimistic).")]
    if data.get("teacher_outputs"):
        out.append(f"Teacher outputs during distillation: {data['teacher_outputs']}.")
    if data.get("class_names"):
        out.append(f"Classes: {', '.join(map(str, data['class_names']))}.")
    rows = [m for m in report["models"] if figure(m, report) is not None and figure(m, report, "_val") is not None]
    if rows and on == "test":
        out += ["", f"| model | {name}, test | {name}, validation |", "|---|---|---|"]
        out += [f"| {m['name']} | {shown(figure(m, report), name)} | {shown(figure(m, report, '_val'), name)} |"
                for m in rows]
    out += ["", *[f"- **Warning:** {w}." for w in data["warnings"]]] if data.get("warnings") else []
    return out


def _edge_markdown(edge: dict | None) -> list[str]:
    if not edge:
        return []
    p = edge["parity"]
    out = ["", f"## Edge readiness: {edge['model']}", "",
           f"ORT-format copy `{edge['ort']['ort_path']}`, operator config `{edge['ort']['config_path']}`; "
           f"max abs diff vs ONNX {p['max_abs_diff']:.2e} ({'ok' if edge['parity_ok'] else 'MISMATCH'}).", "",
           "| provider | nodes taken | partitions | unsupported ops | note |", "|---|---|---|---|---|"]
    for name, sec in edge["readiness"].get("providers", {}).items():
        if not sec.get("available", True) or "nodes_total" not in sec:
            out.append(f"| {name} | - | - | - | {sec.get('reason', 'no rules')} |")
            continue
        out.append(f"| {name} | {sec['nodes_taken']}/{sec['nodes_total']} | {sec['partitions']} | "
                   f"{', '.join(sec.get('unsupported_ops') or []) or '-'} | {sec.get('suitability', '')} |")
    if edge["readiness"].get("fix"):
        out += ["", f"Dynamic shapes: {edge['readiness']['fix']}"]
    if edge.get("qnn"):
        from compress.edge.qnn_accuracy import graphs_markdown
        from compress.edge.qnn_flow import qnn_table

        out += ["", "### Qualcomm NPU (QNN HTP backend, simulated here; latency not used for the pick)", "", "```",
                qnn_table(edge["qnn"]), "```", *(graphs_markdown(edge["qnn_graphs"]) if edge.get("qnn_graphs") else [])]
    return out


def _plot(path: Path, report: dict) -> None:
    """Accuracy vs batch-1 latency, marker area ~ file size. Models are numbered on the plot and named in a side
    table, so ten models with near-equal figures stay readable; the accuracy axis never runs past 100%."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    name = (report.get("primary_metric") or {}).get("name", "accuracy")
    scale = 100 if name == "accuracy" else 1
    points: list[tuple[str, float, float, float]] = []
    batch = headline_batch(report)
    for m in report["models"]:
        row, value = _headline_row(m, batch), figure(m, report)
        if row and value is not None:
            points.append((m["name"], row["p50_ms"], scale * value, m.get("bytes") or 1))
    if not points:
        return
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    biggest = max(p[3] for p in points)
    colors = plt.get_cmap("tab10").colors
    offsets = _label_offsets(points)
    for i, (label, ms, acc, size) in enumerate(points):
        color = colors[i % len(colors)]
        ax.scatter(ms, acc, s=40 + 600 * (size / biggest) ** 0.5, alpha=0.55, color=color, clip_on=False,
                   label=f"{i + 1}  {label}: {shown(acc / scale, name)}, {ms:.4f} ms, {size / 1024:.1f} KB")
        ax.annotate(str(i + 1), (ms, acc), textcoords="offset points", xytext=offsets[i], fontsize=8,
                    ha="center", va="center", fontweight="bold",
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.4"} if offsets[i] != (0, 0) else None)
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels on a short log axis overlap
    ax.margins(x=0.25)
    if scale == 100:
        ax.set_ylim(*_accuracy_limits([p[2] for p in points]))
    ax.set_xlabel(f"p50 latency, batch {batch} (ms, log scale)")
    ax.set_ylabel(f"{name} in ONNX Runtime{' (%)' if scale == 100 else ''}")
    ax.set_title(f"{report['pipeline']}: {name} vs latency (marker area ~ file size)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False, markerscale=0.4,
              handletextpad=0.3, borderaxespad=0.0)
    fig.tight_layout()
    from compress.cache import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _accuracy_limits(accuracies: list[float]) -> tuple[float, float]:
    """The data's range plus a little room, inside [0, 100]."""
    lo, hi = min(accuracies), max(accuracies)
    pad = max(0.15 * (hi - lo), 0.5)
    return max(0.0, lo - pad), min(100.0, hi + pad)


def _label_offsets(points: list[tuple[str, float, float, float]]) -> list[tuple[float, float]]:
    """Offsets (points) for the number labels: alone at a marker's centre; a cluster of near-equal models (within
    ~3% of the plot in both axes) fans its numbers out on a circle, so none covers another."""
    import math

    xs = [math.log10(max(p[1], 1e-9)) for p in points]
    ys = [p[2] for p in points]
    x_span = (max(xs) - min(xs)) or 1.0
    y_span = (max(ys) - min(ys)) or 1.0
    clusters: list[list[int]] = []
    for i in range(len(points)):
        for cluster in clusters:
            j = cluster[0]
            if abs(xs[i] - xs[j]) < 0.03 * x_span and abs(ys[i] - ys[j]) < 0.03 * y_span:
                cluster.append(i)
                break
        else:
            clusters.append([i])
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(points)
    for cluster in clusters:
        if len(cluster) == 1:
            continue
        radius = 14 + 2 * len(cluster)
        for k, i in enumerate(cluster):
            angle = math.pi / 2 + 2 * math.pi * k / len(cluster)
            out[i] = (radius * math.cos(angle), radius * math.sin(angle))
    return out


def load_report(path: Path) -> dict[str, Any]:
    import json

    return json.loads(Path(path).read_text())
