"""`compress search` measured: the demo's two studies, TPE against random sampling, a study killed and resumed, two
workers on one study, and a study constrained to run whole on the QNN HTP simulator.

    PYTHONPATH=$PWD python benchmarks/bench_search.py demo --minutes 30 --out /tmp/bench-search
    PYTHONPATH=$PWD python benchmarks/bench_search.py resolution --out /tmp/bench-search
    PYTHONPATH=$PWD python benchmarks/bench_search.py samplers --trials 12 --seeds 0 1 2 --out /tmp/bench-search
    PYTHONPATH=$PWD python benchmarks/bench_search.py kill --out /tmp/bench-search
    PYTHONPATH=$PWD python benchmarks/bench_search.py workers --out /tmp/bench-search
    PYTHONPATH=$PWD python benchmarks/bench_search.py qnn --out /tmp/bench-search

demo: runs the hand-written pipeline of pipelines/search.toml, reads its student's p50 (CPU, batch 1, 1 thread), then
one study under half the hand-written model's p50 and one under that p50 (`latency_budget = 0.5` and `1.0`: relative
budgets, judged in the final round against the hand-written model timed beside the finalists), each for --minutes;
prints the winner's test mAP against the hand-written student's and whether the front dominates the hand-written
point. resolution: after demo, with the same --out, each winner's test mAP minus the hand-written student's with a
paired bootstrap interval over the test images (what the test split can tell apart). The others use a small digits
study (fast trials) where the claim is about the study's mechanics, not the model. Each writes <out>/<mode>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress.study.outputs import toml_text  # noqa: E402


def _variant(raw: dict, out: Path, name: str, base_dir: Path, **search) -> Path:
    """A copy of a study file under `out` with its own run folder (the stage store beside it is shared)."""
    doc = json.loads(json.dumps(raw))
    doc["pipeline"].update(name=name, output_dir=str(out / "runs" / name),
                           base_dir=os.path.relpath(base_dir, out))
    if "latency_budget" in search or "latency_budget_ms" in search:  # one kind of budget: the variant's
        doc["search"].pop("latency_budget", None)
        doc["search"].pop("latency_budget_ms", None)
    doc["search"].update(search)
    path = out / f"{name}.toml"
    path.write_text(toml_text(doc))
    return path


def _search(path: Path, *args: str, check: bool = True) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "compress", "search", str(path), "--quiet", *args], env=env,
                          capture_output=True, text=True)
    if check and done.returncode not in (0, 1):
        raise SystemExit(f"{path}: exit {done.returncode}: {done.stderr.strip()[-1500:]}")
    raw = tomllib.loads(path.read_text())
    out = raw["pipeline"].get("output_dir") or f"runs/{raw['pipeline']['name']}"
    run_dir = (path.parent / raw["pipeline"].get("base_dir", ".") / out).resolve()
    report = json.loads((run_dir / "search" / "report.json").read_text())["search"]
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["exit"] = done.returncode
    return report


def _dominated(point: dict, rows: list[dict], higher: bool) -> bool:
    def at_least(a: float, b: float) -> bool:
        return a >= b if higher else a <= b

    return any(at_least(r["metric"], point["metric"]) and r["p50_ms"] <= point["p50_ms"]
               and (r["metric"] != point["metric"] or r["p50_ms"] < point["p50_ms"])
               for r in rows if r["metric"] is not None and r["p50_ms"] is not None)


def demo(args: argparse.Namespace) -> dict:
    import compress

    source = ROOT / "pipelines" / "search.toml"
    raw = tomllib.loads(source.read_text())
    out = args.out / "demo"
    out.mkdir(parents=True, exist_ok=True)
    hand = _variant(raw, out, "search-hand", source.parent)
    started = time.perf_counter()
    report = compress.run(hand, progress=False)
    student = next(m for m in report["models"] if m["name"] == report["final"])
    p50 = next(r["p50_ms"] for r in student["latency"] if r["batch"] == 1 and r["threads"] == 1)
    hand_test = student["metrics"]["map50"]
    result = {"hand_written": {"p50_ms": p50, "map50_test": hand_test, "map50_val": student["metrics_val"]["map50"],
                               "bytes": student["bytes"], "seconds": round(time.perf_counter() - started, 1)},
              "studies": {}}
    for label, factor in (("half", 0.5), ("same", 1.0)):
        # relative: each study's budget is factor x the hand-written model's p50, judged in the finalists' own
        # round against that model timed beside them (an absolute budget drifted with the VM: docs/results.md)
        path = _variant(raw, out, f"search-{label}", source.parent, latency_budget=factor,
                        max_minutes=args.minutes, trials=args.trials)
        s = _search(path)
        w = s["winner"]
        measured = [r for r in s["trials"] if r["state"] == "complete"]
        finals = [{"metric": f["metric"], "p50_ms": f["p50_ms"]} for f in s["finalists"]]
        result["studies"][label] = {
            "budget": s["latency_budget"], "budget_ms": s["latency_budget_ms"],
            "final_budget_ms": s["final_budget_ms"], "counts": s["counts"], "wall_s": s["wall_s"], "exit": s["exit"],
            "winner": {k: w[k] for k in ("trial", "params", "metric", "metric_test", "p50_ms", "bytes")},
            "baseline_interleaved": s["baseline"], "paired_vs_hand_written": s["paired_vs_hand_written"],
            "teacher_trained": s["teacher_trained"], "stopped_by_clock": s["stopped_by_clock"],
            "winner_minus_hand_test_points": round(100 * (w["metric_test"] - hand_test), 2),
            "hand_written_dominated": _dominated(s["baseline"], measured + finals, s["higher_is_better"])}
        print(json.dumps({label: result["studies"][label]}, indent=1), flush=True)
    return result


SMALL = '''
[pipeline]
name = "small"
seed = 0
[data]
source = "npz:small.npz"
val_fraction = 0.25
batch_size = 32
[teacher]
model = "builtin:cnn-small"
kwargs = { width = 24 }
[teacher.train]
epochs = 6
lr = 2e-2
[student]
model = "builtin:cnn-small"
kwargs = { width = 8 }
[distill]
epochs = 6
lr = 2e-2
[benchmark]
providers = ["cpu"]
batch_sizes = [1]
threads = [1]
min_seconds = 0.1
repetitions = 1
[search]
latency_budget_ms = 0.03
trials = 12
short_epochs = 3
finalists = 1
[search.space]
"student.kwargs.width" = [2, 4, 6, 8, 12, 16, 24]
"distill.temperature" = { low = 1.0, high = 8.0, log = true }
"distill.alpha" = { low = 0.1, high = 0.9 }
"distill.lr" = { low = 3e-3, high = 5e-2, log = true }
'''


def _small(folder: Path, **search) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(ROOT / "compress" / "data" / "digits.npz") as z:
        np.savez(folder / "small.npz", x=z["x"][:800].astype(np.float32)[:, None] / 16.0, y=z["y"][:800])
    raw = tomllib.loads(SMALL)
    raw["search"].update(search)
    path = folder / "small.toml"
    path.write_text(toml_text({**raw, "pipeline": {**raw["pipeline"], "base_dir": "."}}))
    return path


def samplers(args: argparse.Namespace) -> dict:
    """TPE against random sampling: the same file, trial budget and seed; the best feasible validation metric."""
    rows = []
    for seed in args.seeds:
        got = {}
        for sampler in ("tpe", "random"):
            path = _small(args.out / "samplers" / f"{sampler}-{seed}", sampler=sampler, seed=seed, trials=args.trials)
            s = _search(path)
            feasible = [r["metric"] for r in s["trials"] if r["state"] == "complete"]
            got[sampler] = {"best_feasible": max(feasible) if feasible else None, "counts": s["counts"],
                            "wall_s": s["wall_s"]}
        got["tpe_wins"] = (got["tpe"]["best_feasible"] or 0) > (got["random"]["best_feasible"] or 0)
        rows.append({"seed": seed, **got})
        print(json.dumps(rows[-1]), flush=True)
    return {"trials": args.trials, "rows": rows, "tpe_wins": sum(r["tpe_wins"] for r in rows)}


def kill(args: argparse.Namespace) -> dict:
    """kill -9 in the middle of a study, rerun; against an uninterrupted study of the same file and seed."""
    whole = _search(_small(args.out / "kill" / "whole"))
    path = _small(args.out / "kill" / "killed")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "compress", "search", str(path), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = path.parent / "runs" / "small" / "search" / "search.log"
    while proc.poll() is None and (not log.is_file() or log.read_text().count("trial ") < args.kill_after):
        time.sleep(0.2)
    time.sleep(args.kill_delay)  # inside the next trial
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = _search(path)
    done = [r for r in resumed["trials"] if r["state"] != "interrupted"]
    params = [json.dumps(r["params"], sort_keys=True) for r in done]
    return {"killed_after_trials": args.kill_after,
            "interrupted": [r["number"] for r in resumed["trials"] if r["state"] == "interrupted"],
            "trials_counted": resumed["counts"]["trials"], "duplicates": len(params) - len(set(params)),
            "same_values_as_uninterrupted": sorted(params) == sorted(json.dumps(r["params"], sort_keys=True)
                                                                     for r in whole["trials"]),
            "same_pick": resumed["winner"]["params"] == whole["winner"]["params"],
            "winner": resumed["winner"]["params"], "uninterrupted_winner": whole["winner"]["params"]}


def workers(args: argparse.Namespace) -> dict:
    """Two worker processes on one SQLite study against one worker with the same file and seed."""
    one = _search(_small(args.out / "workers" / "one"))
    path = _small(args.out / "workers" / "two")
    url = f"sqlite:///{path.parent / 'shared.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "compress", "search", str(path), "--quiet", "--storage", url],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = [p.wait() for p in procs]
    two = json.loads((path.parent / "runs" / "small" / "search" / "report.json").read_text())["search"]
    params = [json.dumps(r["params"], sort_keys=True) for r in two["trials"]]
    return {"exit": codes, "wall_s_two": round(time.perf_counter() - started, 1), "wall_s_one": one["wall_s"],
            "trials": len(two["trials"]), "budget": two["budget_trials"], "duplicates": len(params) - len(set(params)),
            "teacher_trained": two["teacher_trained"],
            "same_winner": two["winner"]["params"] == one["winner"]["params"],
            "winner_two": two["winner"]["params"], "winner_one": one["winner"]["params"]}


QNN_ZOO = '''
import torch
import torch.nn as nn


class DetTerm(nn.Module):
    """Adds the determinant of a 2x2 summary of the features (ONNX Det, which the QNN HTP backend refuses)."""

    def forward(self, x):
        m = x.mean(dim=(2, 3))[:, :4].reshape(-1, 2, 2)
        return x + 1e-3 * torch.det(m)[:, None, None, None]


def net(input_shape=(1, 8, 8), num_classes=10, width=8, det=False):
    """A small CNN; with det = true one layer the HTP backend cannot run."""
    layers = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()] + ([DetTerm()] if det else [])
    layers += [nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(2 * width, num_classes)]
    return nn.Sequential(*layers)
'''


def qnn(args: argparse.Namespace) -> dict:
    """Every candidate must run whole on the QNN HTP simulator: the ones that do not are infeasible, named."""
    folder = args.out / "qnn"
    path = _small(folder, all_nodes_on="qnn", trials=args.trials, latency_budget_ms=10.0)
    (folder / "zoo.py").write_text(QNN_ZOO)
    raw = tomllib.loads(path.read_text())
    raw["student"] = {"model": "zoo:net", "kwargs": {"width": 8}}
    raw["search"]["space"] = {"student.kwargs.det": [False, True], "student.kwargs.width": [4, 8, 16]}
    path.write_text(toml_text(raw))
    s = _search(path)
    return {"counts": s["counts"], "exit": s["exit"],
            "trials": [{k: r[k] for k in ("number", "state", "params", "refused", "reason")} for r in s["trials"]],
            "winner": (s.get("winner") or {}).get("params")}


def _scored(out: dict, data) -> tuple[list, np.ndarray]:
    """Per class: (confidence, true positive, image) of a model's detections `out` on `data`, and each image's
    ground-truth count per class (detect.matches, what detect.map50 is computed from): what a bootstrap over images
    re-weights."""
    from detect import matches

    return matches(out, {"boxes": data.boxes, "classes": data.classes})


def _weighted_map(scored: list, counts: np.ndarray, weight: np.ndarray) -> float:
    """mAP@0.5 with each image counted `weight` times (detect.map50 when every weight is 1)."""
    from detect import _average_precision

    aps = []
    for c, rows in enumerate(scored):
        total = float(counts[c] @ weight)
        if total == 0:
            continue
        rows = rows[np.argsort(-rows[:, 0], kind="stable")]
        w = weight[rows[:, 2].astype(int)]
        tp, seen = np.cumsum(w * rows[:, 1]), np.cumsum(w)
        keep = w > 0
        aps.append(_average_precision((tp / total)[keep], (tp / np.maximum(seen, 1e-12))[keep]))
    return float(np.mean(aps))


def resolution(args: argparse.Namespace) -> dict:
    """How far apart two models' test mAP must be for the demo's test split to tell them apart: the paired bootstrap
    over test images (2,000 resamples) of each study's winner minus the hand-written student, from a finished
    `demo` run in --out. Images share source digits (297 digits in 1,000 canvases), so the interval is, if anything,
    too narrow."""
    sys.path.insert(0, str(ROOT / "pipelines"))
    from detect import make_datasets, map50

    test = make_datasets()[2]
    runs = args.out / "demo" / "runs"
    truth = {"boxes": test.boxes, "classes": test.classes}
    hand = _scored(_outputs(runs / "search-hand" / "export" / "student.onnx", test), test)
    rng = np.random.default_rng(0)
    weights = np.stack([np.bincount(rng.integers(0, len(test), len(test)), minlength=len(test))
                        for _ in range(2000)]).astype(float)
    result = {"hand_written": _weighted_map(*hand, np.ones(len(test))), "studies": {}}
    hand_resampled = np.array([_weighted_map(*hand, w) for w in weights])  # the same for every study
    for label in ("half", "same"):
        winner = runs / f"search-{label}" / "search" / "winner.onnx"
        if not winner.exists():
            continue
        out = _outputs(winner, test)
        mine = _scored(out, test)
        full = _weighted_map(*mine, np.ones(len(test)))
        session_check = map50(out, truth)["map50"]  # the demo's own metric agrees with the re-weighting
        diffs = np.array([_weighted_map(*mine, w) for w in weights]) - hand_resampled
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        result["studies"][label] = {"winner": full, "check_map50": session_check,
                                    "minus_hand_points": round(100 * (full - result["hand_written"]), 2),
                                    "interval_points": [round(100 * lo, 2), round(100 * hi, 2)],
                                    "share_above_minus_half_point": float(np.mean(diffs >= -0.005))}
        print(json.dumps({label: result["studies"][label]}), flush=True)
    return result


def _outputs(path: Path, data) -> dict:
    """{output name: array} of the ONNX model at `path` on the canvases of `data`, on ORT's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: data.x})))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["demo", "resolution", "samplers", "kill", "workers", "qnn"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-search"))
    parser.add_argument("--minutes", type=float, default=30.0, help="demo: max_minutes of each study")
    parser.add_argument("--trials", type=int, default=None, help="trial budget (demo: 30, samplers: 12, qnn: 6)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kill-after", type=int, default=4, help="kill: trials logged before the kill")
    parser.add_argument("--kill-delay", type=float, default=1.0, help="kill: seconds into the next trial")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.trials = args.trials or {"demo": 30, "samplers": 12, "qnn": 6}.get(args.mode, 12)
    started = time.perf_counter()
    result = {"demo": demo, "resolution": resolution, "samplers": samplers, "kill": kill, "workers": workers,
              "qnn": qnn}[args.mode](args)
    result.update(mode=args.mode, seconds=round(time.perf_counter() - started, 1),
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load=os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.mode}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
