"""--nproc figures: one process vs two on a pipeline (accuracy, wall clock), and kill -9 of one rank, rerun, 5 times.

    python benchmarks/bench_ddp.py compare [--pipeline pipelines/digits.toml] [--nproc 2]
        the pipeline run from scratch with --nproc 1 and with --nproc N (same seed, same epochs): every model's
        accuracy (ONNX Runtime) and the wall clock of each `compress run`, with the load average around each
    python benchmarks/bench_ddp.py kill [--pipeline pipelines/digits.toml | tiny] [--trials 5] [--short]
        one uninterrupted --nproc 2 run; then per trial a fresh run where one rank is SIGKILLed mid-epoch (a
        different stage, job, epoch and rank each time), which must exit 1 with one line naming the rank; a rerun
        must exit 0 and report figures (accuracy, params, bytes, parity, final pick) equal to the uninterrupted run's

Each run is a real `python -m compress run` subprocess in a scratch copy of the pipeline (output_dir inside it).
Add --json OUT to keep the numbers. Linux only (the killer finds workers in /proc: tests/dist_kill.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.dist_kill import kill_rank_after  # noqa: E402

# (stage, job, epochs finished before the kill, rank): five different moments of a --nproc 2 run
KILLS = [("teacher", "teacher", 1, 1), ("distill", "student", 1, 1), ("distill", "control", 3, 0),
         ("distill", "student", 4, 0), ("teacher", "teacher", 2, 0)]
SHORT = {"teacher.train": 3, "distill": 6}  # --short: epochs per section, so the kill loop's 11 runs take minutes


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def tiny(where: Path) -> Path:
    """The tests' tiny pipeline (tests/conftest.py: 400 digits, two small MLPs) in `where`: --pipeline tiny."""
    import textwrap

    import numpy as np

    from tests.conftest import TINY_TOML, TINY_ZOO

    where.mkdir(parents=True, exist_ok=True)
    with np.load(ROOT / "compress" / "data" / "digits.npz") as z:
        np.savez(where / "tiny.npz", x=z["x"][:400].astype(np.float32)[:, None] / 16.0, y=z["y"][:400])
    (where / "zoo.py").write_text(TINY_ZOO)
    path = where / "tiny.toml"
    path.write_text(textwrap.dedent(TINY_TOML).replace('output_dir = "runs/tiny"', f'output_dir = "{where / "run"}"'))
    return path


def scratch(pipeline: Path, where: Path, short: bool = False) -> Path:
    """A copy of the pipeline file in `where`, with output_dir inside it and a relative npz:/images: source made
    absolute (model code beside the pipeline file would not follow the copy); `short` sets the epochs of SHORT.
    For the image-folder comparison: `compare --pipeline FOLDER/pipeline.toml` on a pipeline whose source is
    `images:DIR` (benchmarks/bench_data.py writes such folders)."""
    if pipeline.name == "tiny":
        return tiny(where)
    text = pipeline.read_text()
    # a data source relative to the pipeline's folder (npz:, images:) is made absolute so the copy still finds it
    text = re.sub(r'(?m)^source = "(npz|images):(?!/)([^"]*)"',
                  lambda m: f'source = "{m.group(1)}:{(pipeline.parent / m.group(2)).resolve()}"', text)
    text = re.sub(r'(?m)^output_dir\s*=.*\n', "", text).replace("[pipeline]\n", f'[pipeline]\noutput_dir = "{where / "run"}"\n', 1)
    if short:
        for section, epochs in SHORT.items():
            text = re.sub(rf'(?ms)(^\[{re.escape(section)}\]\n(?:(?!\[).*\n)*?)epochs = \d+', rf'\g<1>epochs = {epochs}',
                          text)
    where.mkdir(parents=True, exist_ok=True)
    path = where / pipeline.name
    path.write_text(text)
    return path


def run(toml: Path, *args: str, kill: tuple | None = None) -> dict:
    run_dir = Path(re.search(r'(?m)^output_dir = "(.*)"$', toml.read_text()).group(1))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    before = load()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "compress", "run", str(toml), "--quiet", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = None
    if kill is not None:
        stage, desc, epoch, rank = kill
        killer = threading.Thread(target=kill_rank_after, args=(run_dir / stage, desc, epoch),
                                  kwargs={"rank": rank}, daemon=True)
        killer.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    return {"code": proc.returncode, "stderr": err.strip(), "seconds": round(seconds, 1), "load_before": before,
            "load_after": load(), "run_dir": run_dir}


def figures(run_dir: Path) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    return {"final": report["final"],
            "models": {m["name"]: {k: m.get(k) for k in ("params", "bytes", "accuracy", "accuracy_torch", "parity")}
                       for m in report["models"]}}


def compare(pipeline: Path, nproc: int) -> dict:
    out = {}
    for n in (1, nproc):
        with tempfile.TemporaryDirectory() as tmp:
            r = run(scratch(pipeline, Path(tmp)), "--nproc", str(n))
            assert r["code"] == 0, r["stderr"]
            acc = {k: v["accuracy"] for k, v in figures(r["run_dir"])["models"].items()}
            out[f"nproc{n}"] = {"seconds": r["seconds"], "load": [r["load_before"], r["load_after"]],
                                "accuracy": acc}
            print(f"--nproc {n}: {r['seconds']} s (load {r['load_before']} -> {r['load_after']}) "
                  + ", ".join(f"{k} {100 * v:.2f}%" for k, v in acc.items()), flush=True)
    one, many = out["nproc1"]["accuracy"], out[f"nproc{nproc}"]["accuracy"]
    out["max_points_apart"] = round(max(abs(100 * (one[k] - many[k])) for k in one), 2)
    print(f"largest accuracy difference: {out['max_points_apart']} points", flush=True)
    return out


def kill_loop(pipeline: Path, trials: int, short: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        clean = run(scratch(pipeline, base / "baseline", short), "--nproc", "2")
        assert clean["code"] == 0, clean["stderr"]
        expected = figures(clean["run_dir"])
        print(f"uninterrupted --nproc 2: {clean['seconds']} s (load {clean['load_after']})", flush=True)
        results = []
        for i, kill in enumerate((KILLS * trials)[:trials]):
            toml = scratch(pipeline, base / f"trial{i}", short)
            killed = run(toml, "--nproc", "2", kill=kill)
            resumed = run(toml, "--nproc", "2")
            stage, desc, epoch, rank = kill
            line_ok = (killed["code"] == 1 and len(killed["stderr"].splitlines()) == 1
                       and f"rank {rank} of 2" in killed["stderr"] and "SIGKILL" in killed["stderr"])
            same = resumed["code"] == 0 and figures(resumed["run_dir"]) == expected
            results.append({"kill": kill, "exit": killed["code"], "line": killed["stderr"], "line_ok": line_ok,
                            "rerun_exit": resumed["code"], "rerun_seconds": resumed["seconds"], "identical": same})
            print(f"trial {i + 1}: kill rank {rank} in {stage}/{desc} after epoch {epoch}: exit {killed['code']}, "
                  f"line ok {line_ok}; rerun exit {resumed['code']} in {resumed['seconds']} s, figures identical "
                  f"{same}", flush=True)
            if not line_ok:
                print(f"  stderr: {killed['stderr']}", flush=True)
        ok = sum(r["line_ok"] and r["identical"] for r in results)
        print(f"kill -9 one rank, rerun: {ok}/{len(results)} completed with identical figures", flush=True)
        return {"baseline_seconds": clean["seconds"], "trials": results, "passed": ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["compare", "kill"])
    parser.add_argument("--pipeline", type=Path, default=ROOT / "pipelines" / "digits.toml")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--short", action="store_true", help=f"kill: epochs {SHORT} (digits: minutes, not an hour)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"load before: {load()}", flush=True)
    pipeline = args.pipeline if str(args.pipeline) == "tiny" else args.pipeline.resolve()
    result = compare(pipeline, args.nproc) if args.what == "compare" else kill_loop(pipeline, args.trials, args.short)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
