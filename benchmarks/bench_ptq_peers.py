"""Post-training int8 side by side with NNCF, the strongest post-training quantizer a user would pick instead.

    .venv/bin/python benchmarks/bench_ptq_peers.py [--cases resnet50,mobilenet,digits] [--out /tmp/bench-ptq-peers]
                                                  [--nncf-venv /tmp/nncf-venv]

Each case is one float ONNX classifier and three sets of digits it never trained on, the same for both tools:
64 calibration images, the gate images (labelled; compress's `--data`) and the test images (the figures below).
- resnet50: `bench_resnet_int8.py`'s ResNet-50 (torchvision's architecture, data batch-norm statistics, a ridge
  probe on the pooled features), 3x224x224; calibration = its first 64 training images, gate = its 300 held-out
  images, test = the other 897 digits.
- mobilenet: compress's built-in MobileNet (depthwise-separable residual blocks, width 48, 6 blocks) on digits
  upsampled to 3x32x32, trained 12 epochs by `compress.train.fit`; split 900 train / 300 gate / 597 test.
- digits: the digits demo's teacher (cnn-large width 16, 8x8 digits) trained 12 epochs the same way.

compress: `compress quantize MODEL --calibration calib.npz --data gate.npz --keep-attempts DIR` with every default
(the accepted attempt is the int8 model compared, even where the pick ships the float one). NNCF: in its own venv
(`--nncf-venv`; made with `pip install nncf onnxruntime onnx` when missing), `nncf.quantize(model,
nncf.Dataset(calibration))` with every default, one calibration image per item. Tool time is each command's wall
clock as a process. Then, in this process: test accuracy of fp32 and both int8 models (ONNX Runtime CPU), of every
attempt compress wrote (accuracy, agreement with fp32, images lost and gained: what the gate's choice was worth),
how far the test set can tell the two int8 models apart (each one's agreement with fp32; the difference of their
drops with its paired 95% interval and McNemar's p on the images one gets right and the other wrong), and
paired latency of compress's int8 against NNCF's (compress.bench.paired: blocks interleaved, order reversed every
other round, 1 thread) at batch 1 and 8. Writes OUT/results.json and prints one row per case.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

NNCF_SCRIPT = """
import json, sys, time
import numpy as np
started = time.perf_counter()
import nncf, onnx
model = onnx.load(sys.argv[1])
calib = np.load(sys.argv[3])["x"]
name = model.graph.input[0].name
dataset = nncf.Dataset([{name: calib[i:i + 1]} for i in range(len(calib))])
begin = time.perf_counter()
quantized = nncf.quantize(model, dataset)
seconds = time.perf_counter() - begin
onnx.save(quantized, sys.argv[2])
print(json.dumps({"nncf": nncf.__version__, "quantize_seconds": seconds,
                  "process_seconds": time.perf_counter() - started}))
"""


def _digits(size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits, seeded permutation, scaled to 0-1, upsampled to size x size (bilinear) when size != 8,
    normalised, repeated to `channels`."""
    import torch

    with np.load(ROOT / "compress" / "data" / "digits.npz") as z:
        x, y = z["x"].astype(np.float32) / 16.0, z["y"].astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    t = torch.from_numpy(x[idx].reshape(-1, 1, 8, 8))
    if size != 8:
        t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
    t = ((t - 0.3) / 0.35).repeat(1, channels, 1, 1)
    return t.numpy().astype(np.float32), y[idx]


def _trained(model, x: np.ndarray, y: np.ndarray, epochs: int):
    import torch

    from compress.train import TrainConfig, fit

    torch.manual_seed(0)
    train, val = (torch.from_numpy(x[:800]), torch.from_numpy(y[:800])), (torch.from_numpy(x[800:900]),
                                                                           torch.from_numpy(y[800:900]))
    fit(model, train, val, TrainConfig(epochs=epochs), seed=0, progress=False)
    return model.eval()


def build(case: str, out: Path) -> dict:
    """The case's float model and its calib/gate/test npz files under out/case."""
    import torch

    from compress import zoo
    from compress.onnx.export import export_onnx

    folder = out / case
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "built.json").exists():
        return json.loads((folder / "built.json").read_text())
    if case == "resnet50":
        sys.path.insert(0, str(HERE))
        import bench_resnet_int8 as rn

        built = rn.build(folder)
        x, y = rn.digits_224(1797, seed=0)  # the same permutation and noise: rows 900: are the digits build() left
        np.savez(folder / "gate.npz", **np.load(folder / "test.npz"))
        np.savez(folder / "test_rest.npz", x=x[900:], y=y[900:])
        built = {"onnx": built["onnx"], "calib": str(folder / "calib.npz"), "gate": str(folder / "gate.npz"),
                 "test": str(folder / "test_rest.npz")}
    else:
        size, channels = (32, 3) if case == "mobilenet" else (8, 1)
        x, y = _digits(size, channels)
        torch.manual_seed(0)  # the same initial weights every build: the MobileNet's differed from run to run
        model = (zoo.mobilenet((channels, size, size), 10, width=48, blocks=6) if case == "mobilenet"
                 else zoo.cnn_large((channels, size, size), 10, width=16))
        model = _trained(model, x, y, epochs=12)
        path = export_onnx(model, torch.from_numpy(x[:2]), folder / f"{case}.onnx", opset=17)
        np.savez(folder / "calib.npz", x=x[:64])
        np.savez(folder / "gate.npz", x=x[900:1200], y=y[900:1200])
        np.savez(folder / "test_rest.npz", x=x[1200:], y=y[1200:])
        built = {"onnx": str(path), "calib": str(folder / "calib.npz"), "gate": str(folder / "gate.npz"),
                 "test": str(folder / "test_rest.npz")}
    (folder / "built.json").write_text(json.dumps(built))
    return built


def run_compress(built: dict, folder: Path) -> dict:
    attempts = folder / "compress-attempts"
    shutil.rmtree(attempts, ignore_errors=True)  # (on_test reads every attempt here: this run's only)
    cmd = [sys.executable, "-m", "compress", "quantize", built["onnx"], "--out", str(folder / "compress-out.onnx"),
           "--calibration", built["calib"], "--data", built["gate"], "--keep-attempts", str(attempts), "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - started
    summary = json.loads((folder / "compress-out.json").read_text())
    accepted = next((a for a in summary["attempts"] if a["accepted"]), None)
    path = attempts / f"{accepted['name']}.onnx" if accepted else None
    return {"exit": done.returncode, "seconds": round(seconds, 1), "attempts": len(summary["attempts"]),
            "accepted": accepted["name"] if accepted else None, "final": summary["final"],
            "why": summary.get("why"), "kept_float": accepted["settings"]["nodes_to_exclude"] if accepted else None,
            "path": str(path) if path else None, "last_line": (done.stdout or done.stderr).strip().splitlines()[-1:]}


def run_nncf(built: dict, folder: Path, venv: Path) -> dict:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "nncf", "onnxruntime", "onnx"], check=True)
    out = folder / "nncf-int8.onnx"
    started = time.perf_counter()
    done = subprocess.run([str(python), "-c", NNCF_SCRIPT, built["onnx"], str(out), built["calib"]],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"nncf failed: {done.stderr[-2000:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": round(seconds, 1), "quantize_seconds": round(info["quantize_seconds"], 1),
            "version": info["nncf"], "path": str(out)}


def predictions(path: str, x: np.ndarray) -> np.ndarray:
    from compress.onnx.parity import run_cpu
    from compress.onnx.graph import single_input

    name = single_input(Path(path), what="bench")[0]
    return run_cpu(Path(path), {name: x}, batch_size=50)[0].argmax(1)


def side_by_side(fp32: np.ndarray, ours: np.ndarray, theirs: np.ndarray, y: np.ndarray) -> dict:
    """How far the test set can tell the two int8 models apart. Each tool's top-1 agreement with fp32 (how
    faithful it is); the images one gets right and the other wrong (`compress_only`, `nncf_only`); the difference
    of test drops, compress's minus NNCF's, in points, with its 95% interval (paired, normal approximation) and the
    exact two-sided McNemar p-value on those discordant images. An interval across 0 means the test set cannot
    rank them."""
    from math import comb, sqrt

    n = len(y)
    a = int(((theirs == y) & (ours != y)).sum())  # NNCF right, compress wrong: compress's drop is larger
    b = int(((ours == y) & (theirs != y)).sum())
    diff = (a - b) / n
    half = 1.96 * sqrt(max(a + b - (a - b) ** 2 / n, 0.0)) / n
    tail = sum(comb(a + b, k) for k in range(min(a, b) + 1)) / 2 ** (a + b) if a + b else 1.0
    return {"agreement_fp32": {"compress": round(float((ours == fp32).mean()), 4),
                               "nncf": round(float((theirs == fp32).mean()), 4)},
            "compress_only": b, "nncf_only": a, "drop_difference_points": round(100 * diff, 2),
            "ci95_points": [round(100 * (diff - half), 2), round(100 * (diff + half), 2)],
            "mcnemar_p": round(min(1.0, 2 * tail), 3)}


def on_test(attempts: Path, x: np.ndarray, fp32: np.ndarray, y: np.ndarray) -> list[dict]:
    """Every attempt compress wrote (accepted or not) on the test images: accuracy, top-1 agreement with fp32, and
    the images it loses and gains against fp32: what the gate's choice among them was worth on other images."""
    rows = []
    for path in sorted(attempts.glob("attempt-*.onnx")):
        got = predictions(str(path), x)
        rows.append({"attempt": path.stem, "test": round(float((got == y).mean()), 4),
                     "agreement_fp32": round(float((got == fp32).mean()), 4),
                     "lost": int(((fp32 == y) & (got != y)).sum()), "gained": int(((fp32 != y) & (got == y)).sum())})
    return rows


def paired(nncf_path: str, ours: str, x: np.ndarray, batches: list[int]) -> list[dict]:
    """compress's int8 (new) against NNCF's (old): ratio < 1 means compress's is faster."""
    from compress.bench.config import BenchSettings
    from compress.bench.inputs import rows_of
    from compress.bench.paired import paired_bench
    from compress.onnx.graph import single_input

    name = single_input(Path(ours), what="bench")[0]
    rows = []
    for b in batches:
        row = paired_bench(nncf_path, ours, "cpu", b, 1, BenchSettings(), inputs={name: rows_of(x, b)})
        rows.append({"batch": b, "nncf_p50_ms": round(row["old_p50_ms"], 3), "compress_p50_ms":
                     round(row["new_p50_ms"], 3), "compress_over_nncf": round(row["ratio"], 3),
                     "ci99": [round(v, 3) for v in row["ci_ratio"]]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="resnet50,mobilenet,digits")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-ptq-peers"))
    parser.add_argument("--nncf-venv", type=Path, default=Path("/tmp/nncf-venv"))
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for case in args.cases.split(","):
        built = build(case, args.out)
        folder = args.out / case
        load = os.getloadavg()
        ours, theirs = run_compress(built, folder), run_nncf(built, folder, args.nncf_venv)
        test = np.load(built["test"])
        x, y = test["x"], test["y"]
        fp32, nncf = predictions(built["onnx"], x), predictions(theirs["path"], x)
        row = {"load_before": [round(v, 2) for v in load], "compress": ours, "nncf": theirs,
               "test_images": int(len(y)), "fp32_test": float((fp32 == y).mean()), "nncf_test": float((nncf == y).mean())}
        row["compress_test"] = None
        if ours["path"]:
            mine = predictions(ours["path"], x)
            row["compress_test"] = float((mine == y).mean())
            row["side_by_side"] = side_by_side(fp32, mine, nncf, y)
        for tool in ("compress", "nncf"):
            if row[f"{tool}_test"] is not None:
                row[f"{tool}_drop_points"] = round(100 * (row["fp32_test"] - row[f"{tool}_test"]), 2)
        row["attempts_on_test"] = on_test(folder / "compress-attempts", x, fp32, y)
        row["tool_time_ratio"] = round(ours["seconds"] / theirs["seconds"], 2)
        if ours["path"]:
            row["latency"] = paired(theirs["path"], ours["path"], test["x"], [int(b) for b in args.batches.split(",")])
        results[case] = row
        results_path.write_text(json.dumps(results, indent=1))
        print(f"{case}: fp32 {row['fp32_test']:.4f}; compress drop {row.get('compress_drop_points')} points in "
              f"{ours['seconds']} s ({ours['attempts']} attempts, {ours['accepted']}); NNCF {theirs['version']} drop "
              f"{row['nncf_drop_points']} points in {theirs['seconds']} s; p50 compress/NNCF "
              f"{[r['compress_over_nncf'] for r in row.get('latency', [])]}; test drop difference "
              f"{(row.get('side_by_side') or {}).get('drop_difference_points')} points, 95% interval "
              f"{(row.get('side_by_side') or {}).get('ci95_points')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
