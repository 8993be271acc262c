"""How much a pipeline's headline figures move: the same file run with several seeds at each thread count, as a new
user would run it (`OMP_NUM_THREADS=N compress run FILE`), each run in its own process and folder.

Thread counts change float summation order (so the trained weights), seeds change the split, the initialisation and
the batch order; the spread over both is what a reader of the headline table should expect to see.

    PYTHONPATH=$PWD python benchmarks/bench_spread.py pipelines/digits.toml --seeds 0 1 2 --threads 1 2 \\
        --out /tmp/spread-digits
    PYTHONPATH=$PWD python benchmarks/bench_spread.py pipelines/topics.toml --seeds 0 --threads 2 --nproc 1 2 \\
        --out /tmp/topics-nproc

Writes results.json: every run's primary figure per model (test split) and the final model, then per thread count
the mean, min and max of each model's figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


RUN = """
import json, sys, tomllib
import compress
from compress.errors import GateFailed
raw = tomllib.loads(open(sys.argv[1]).read())
raw["pipeline"].update(seed=int(sys.argv[2]), threads=int(sys.argv[3]), output_dir=sys.argv[4])
try:
    compress.run(raw, force=True, progress=False, nproc=int(sys.argv[5]))
except GateFailed:
    pass  # the report is written; a missed quantization budget is a figure too
"""


def one_run(toml: Path, seed: int, threads: int, out: Path, nproc: int) -> dict:
    """Run `toml` with `seed` and `threads` in a fresh process (the file's folder as the working directory, so its
    relative paths and its own modules resolve as for `compress run`); return its figures."""
    run_dir = out / f"seed{seed}-t{threads}-n{nproc}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN, str(toml), str(seed), str(threads), str(run_dir), str(nproc)],
                          env=env, capture_output=True, text=True, cwd=toml.parent)
    if done.returncode != 0:
        raise SystemExit(f"{toml} seed {seed} threads {threads}: exit {done.returncode}: "
                         f"{done.stderr.strip()[-800:]}")
    report = json.loads((run_dir / "report.json").read_text())
    primary = report["primary_metric"]["name"]
    return {"seed": seed, "threads": threads, "nproc": nproc, "seconds": round(time.perf_counter() - started, 1),
            "load": os.getloadavg()[0], "final": report["final"], "final_reason": report.get("final_reason"),
            "primary": primary, "figures": {m["name"]: (m.get("metrics") or {}).get(primary)
                                            for m in report["models"]}}


def summarise(runs: list[dict]) -> dict:
    summary: dict = {}
    for nproc, threads in sorted({(r["nproc"], r["threads"]) for r in runs}):
        mine = [r for r in runs if r["threads"] == threads and r["nproc"] == nproc]
        per_model: dict = {}
        for name in mine[0]["figures"]:
            values = [r["figures"][name] for r in mine if r["figures"].get(name) is not None]
            if values:
                per_model[name] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                                   "values": values}
        summary[f"nproc={nproc} threads={threads}"] = {"models": per_model, "finals": [r["final"] for r in mine]}
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pipeline", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--nproc", type=int, nargs="+", default=[1], help="training processes (--nproc) to run each with")
    args = ap.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for nproc in args.nproc:
        for threads in args.threads:
            for seed in args.seeds:
                runs.append(one_run(args.pipeline.resolve(), seed, threads, args.out, nproc))
                print(json.dumps(runs[-1]), flush=True)
    result = {"pipeline": str(args.pipeline), "runs": runs, "summary": summarise(runs)}
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
