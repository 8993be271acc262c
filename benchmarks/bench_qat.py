"""Post-training vs quantization-aware int8, same student, same calibration data, figures on the test split.

Each case is a shipped pipeline run as a user would (`compress run FILE`), with `[quantize] mode = "qat"`:

  detect  pipelines/detect.toml: static int8 on ORT CPU, mAP@0.5 drop vs the fp32 student
  topics  pipelines/topics.toml: static int8 with QNN settings (uint8 activations; edge target qnn): accuracy drop
          of the QNN graph on ORT CPU and on the HTP simulator, and of the ORT CPU graph
  minilm  pipelines/minilm.toml: static int8, cosine to the teacher's embeddings: drop vs the fp32 student on ORT
          CPU (CPU graph and QNN graph) and on the HTP simulator; nodes on HTP

For each: the fp32 student's figure; PTQ's and QAT's figure and drop; recovery = 1 - QAT drop / PTQ drop; QAT's
training time; QAT / PTQ p50 at batch 1 on ORT CPU, paired; parity of the torch fake-quant model with the QDQ model.

    PYTHONPATH=$PWD python benchmarks/bench_qat.py --out /tmp/bench-qat --cases detect topics minilm \\
        [--distill-epochs N] [--qat-epochs N] [--qat-steps N] [--qat-lr LR] [--qat-teacher auto|teacher|student]
        [--qnn-samples N] [--keep]

--distill-epochs shortens distillation (the shipped epochs otherwise); every change to a file is listed in
results.json. Writes results.json and results.md in --out.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"detect": "pipelines/detect.toml", "topics": "pipelines/topics.toml", "minilm": "pipelines/minilm.toml"}
QNN = {"ort_format": True, "fixed_batch": 1, "edge_targets": ["qnn"], "qnn_activation_type": "uint8"}


def pipeline(case: str, out: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """The case's file with mode = 'qat' (and the QNN target for the text cases), written into `out`."""
    from compress.study.outputs import toml_text

    source = ROOT / CASES[case]
    raw = tomllib.loads(source.read_text())
    changes: dict = {"quantize.mode": "qat", "quantize.qat_epochs": args.qat_epochs}
    raw["pipeline"].update(output_dir=str(out / "run"), base_dir=str(source.parent))
    raw.setdefault("quantize", {}).update(mode="qat", qat_epochs=args.qat_epochs)
    for key in ("qat_steps", "qat_lr", "qat_teacher"):
        if getattr(args, key) is not None:
            raw["quantize"][key] = changes[f"quantize.{key}"] = getattr(args, key)
    if case == "detect":
        raw["distill"]["control"] = False  # the control is the distillation issue's figure, not this one's
        changes["distill.control"] = False
    if case in ("topics", "minilm"):
        raw.setdefault("export", {}).update(QNN, qnn_samples=args.qnn_samples)
        changes.update({f"export.{k}": v for k, v in QNN.items()}, **{"export.qnn_samples": args.qnn_samples})
    if args.distill_epochs:
        raw["distill"]["epochs"] = args.distill_epochs
        changes["distill.epochs"] = args.distill_epochs
    path = out / "pipeline.toml"
    path.write_text(toml_text(raw, header=f"{CASES[case]} for benchmarks/bench_qat.py"))
    return path, changes


def figures(report: dict) -> dict:
    """What the issue's table needs, from report.json."""
    q = report["details"]["quantize"]
    qat = q["qat"]
    split = report["data"].get("evaluated_on", "test")
    table = qat.get("side_by_side") or {"ptq": None, "qat": None, "paired_qat_over_ptq": [], "same_kernels": None,
                                        "parity": None, "train_seconds": None}
    fp32 = qat.get(f"float_{split}")

    def row(entry: dict | None) -> dict | None:
        if entry is None:
            return None
        return {"score": entry.get(f"score_{split}"), "drop": entry.get(f"drop_{split}"), "val_drop": entry["drop"],
                "bytes": entry["bytes"], "p50_ms": entry["p50_ms"], "accepted": entry["accepted"]}

    out = {"split": split, "metric": report["primary_metric"], "fp32_student": fp32, "cpu": {
        "ptq": row(table["ptq"]), "qat": row(table["qat"]), "paired_qat_over_ptq": table["paired_qat_over_ptq"],
        "same_kernels": table["same_kernels"], "parity": table["parity"], "train_seconds": table["train_seconds"],
        "used": qat.get("used"), "why": qat.get("why")}}
    out["cpu"]["recovery"] = recovery(out["cpu"]["ptq"], out["cpu"]["qat"])
    qnn = qat.get("qnn")
    if qnn:
        out["qnn"] = {k: {"score": qnn[k].get(split, {}).get(out["metric"]["name"] if isinstance(out["metric"], dict)
                                                             else out["metric"]),
                          "drop": qnn[k].get(f"drop_{split}"), "val_drop": qnn[k]["drop"]} for k in ("ptq", "qat")}
        out["qnn"].update(used=qnn["used"], why=qnn["why"], float_nodes=qnn["float_nodes"],
                          train_seconds=qnn["train_seconds"], parity=qnn["parity"],
                          recovery=recovery(out["qnn"]["ptq"], out["qnn"]["qat"]))
        graphs = (report.get("edge") or {}).get("qnn_graphs") or {}
        out["htp"] = {k: htp(graphs[k]) for k in ("ptq", "qat") if k in graphs}
    out["final"], out["final_reason"] = report["final"], report["final_reason"]
    return out


def htp(entry: dict) -> dict:
    """Placement and figures on the HTP simulator: the task's figure on HTP and fp32 on CPU, on the same rows."""
    acc = entry.get("accuracy") or {}
    row = {"nodes_on_htp": entry["nodes_on_htp"], "nodes_total": entry["nodes_total"],
           "runs_without_fallback": entry["runs_without_fallback"], "samples": acc.get("samples")}
    for figure in ("accuracy", "cosine_to_reference"):
        if f"{figure}_htp" in acc:
            row.update({"figure": figure, "fp32_cpu": acc[f"{figure}_fp32_cpu"], "int8_cpu": acc[f"{figure}_int8_cpu"],
                        "htp": acc[f"{figure}_htp"], "drop": acc[f"{figure}_fp32_cpu"] - acc[f"{figure}_htp"]})
            break
    return row


def recovery(ptq: dict | None, qat: dict | None) -> float | None:
    """The share of PTQ's drop QAT wins back (1.0: all of it; None when PTQ lost nothing to recover)."""
    if not ptq or not qat or ptq.get("drop") is None or qat.get("drop") is None or ptq["drop"] <= 0:
        return None
    return 1.0 - qat["drop"] / ptq["drop"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--distill-epochs", type=int, default=None)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--qat-steps", type=int, default=None, help="[quantize] qat_steps: steps per QAT epoch")
    parser.add_argument("--qat-lr", type=float, default=None, help="[quantize] qat_lr")
    parser.add_argument("--qat-teacher", choices=["auto", "teacher", "student"], default=None,
                        help="[quantize] qat_teacher")
    parser.add_argument("--qnn-samples", type=int, default=500)
    parser.add_argument("--keep", action="store_true", help="reuse the run folder's cached stages (no --force)")
    args = parser.parse_args()
    results = {}
    for case in args.cases:
        out = args.out / case
        out.mkdir(parents=True, exist_ok=True)
        path, changes = pipeline(case, out, args)
        started = time.time()
        with open(out / "log.txt", "w") as log:  # written as the run goes: its progress can be followed
            proc = subprocess.run([sys.executable, "-m", "compress", "run", str(path),
                                   *([] if args.keep else ["--force"])], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        entry = {"file": CASES[case], "changes": changes, "exit_code": proc.returncode,
                 "wall_seconds": round(time.time() - started, 1)}
        report = out / "run" / "report.json"
        if report.is_file():
            entry.update(figures(json.loads(report.read_text())))
        else:
            entry["error"] = (out / "log.txt").read_text().strip().splitlines()[-1:]
        results[case] = entry
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        print(json.dumps({case: entry}, indent=2), flush=True)


if __name__ == "__main__":
    main()
