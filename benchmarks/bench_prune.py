"""Benchmark the prune stage on the digits data: does channel pruning make a student smaller and faster on
ONNX Runtime, does distillation recover the accuracy, and does it beat a same-size student trained from scratch?

    python benchmarks/bench_prune.py [--student mobilenet|cnn-small] [--amount 0.5] [--seed 0] [--out FILE.json]
    python benchmarks/bench_prune.py --pipeline pipelines/digits-prune.toml [--seeds 0 1 2]

The second form runs the real pipeline (`compress run`, prune.control = true) once per seed (a copy of the file
with that seed and output_dir runs/<name>-seed<N>, so reruns hit the cache) and prints one table: seed, unpruned
student, pruned+recovered and same-size-from-scratch accuracy (ONNX Runtime, validation set), params, ORT p50
at batch 32; the issue's "at least as accurate as a same-size student from scratch" is checked per seed.

Steps: train a cnn-large teacher; distil the student from it; prune `amount` of its channels in `steps`, each
step followed by distillation; export unpruned and pruned students to ONNX and time both with the shared harness
(CPU provider, batch 32, 1 thread, real digits inputs). Control: the same architecture at the pruned width
(same parameter count), distilled from scratch for the same total epochs.
Targets (issue 5): params <= 60% of unpruned, ORT latency at batch 32 <= 0.8x, accuracy within 1.5 points.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from compress import zoo
from compress.bench.harness import measure
from compress.data import DataConfig, load_data
from compress.models import count_params
from compress.onnx.export import export_onnx
from compress.prune import PruneConfig, prune
from compress.train import TrainConfig, evaluate, fit, predict_logits

STUDENTS = {"mobilenet": (zoo.mobilenet, "width", 32), "cnn-small": (zoo.cnn_small, "width", 16)}


def _latency_ms(model: torch.nn.Module, x32: torch.Tensor, workdir: Path, name: str) -> float:
    path = export_onnx(model, x32, workdir / f"{name}.onnx")
    return float(measure(path, "cpu", 32, 1, inputs={"input": x32.numpy()})["p50_ms"])


def _p50_b32(model: dict) -> float:
    rows = [r for r in model.get("latency", []) if r["batch"] == 32 and r["provider"] == "CPUExecutionProvider"]
    return rows[0]["p50_ms"] if rows else float("nan")


def pipeline_table(toml: Path, seeds: list[int], out: Path | None) -> None:
    """Run `toml` once per seed through the real pipeline and print the pruning-vs-control table."""
    import tomllib

    import compress

    text = toml.read_text()
    name = tomllib.loads(text)["pipeline"]["name"]
    rows = []
    for seed in seeds:
        run_dir = (Path("runs") / f"{name}-seed{seed}").resolve()
        copy = text.replace("seed = ", f"seed = {seed}  # was: ", 1)
        copy = "\n".join(f'output_dir = "{run_dir}"' if line.startswith("output_dir") else line
                         for line in copy.splitlines())
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / toml.name
            path.write_text(copy)
            print(f"seed {seed}: compress run ({run_dir}) ...", flush=True)
            report = compress.run(path, progress=False)
        models = {m["name"]: m for m in report["models"]}
        s, p, c = models["student"], models["student-pruned"], models["pruned-control"]
        rows.append({"seed": seed, "student_accuracy": s["accuracy"], "pruned_accuracy": p["accuracy"],
                     "control_accuracy": c["accuracy"], "student_params": s["params"], "pruned_params": p["params"],
                     "control_params": c["params"], "student_p50_ms_b32": _p50_b32(s),
                     "pruned_p50_ms_b32": _p50_b32(p), "control_p50_ms_b32": _p50_b32(c),
                     "pruned_at_least_control": p["accuracy"] >= c["accuracy"]})
    print(f"\n{toml} (accuracy: ONNX Runtime on the validation set; latency: CPU, 1 thread, batch 32)")
    print("| seed | unpruned student | pruned+recovered | same-size from scratch | params (student / pruned) "
          "| ORT p50 ms b32 (student / pruned / control) | pruned >= control |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {100 * r['student_accuracy']:.2f}% | {100 * r['pruned_accuracy']:.2f}% | "
              f"{100 * r['control_accuracy']:.2f}% | {r['student_params']:,} / {r['pruned_params']:,} | "
              f"{r['student_p50_ms_b32']:.4f} / {r['pruned_p50_ms_b32']:.4f} / {r['control_p50_ms_b32']:.4f} | "
              f"{'yes' if r['pruned_at_least_control'] else 'NO'} |")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("student_accuracy", "pruned_accuracy", "control_accuracy")}
    print(f"| mean | {100 * mean['student_accuracy']:.2f}% | {100 * mean['pruned_accuracy']:.2f}% | "
          f"{100 * mean['control_accuracy']:.2f}% | | | {'yes' if all(r['pruned_at_least_control'] for r in rows) else 'NO'} |")
    if out:
        out.write_text(json.dumps({"pipeline": str(toml), "rows": rows, "mean": mean}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", type=Path, help="run this pipeline file per seed and print the control table")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--importance", choices=["l1", "l2", "taylor"], default=PruneConfig.model_fields["importance"].default)
    ap.add_argument("--student", choices=sorted(STUDENTS), default="mobilenet")
    ap.add_argument("--amount", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--finetune-epochs", type=int, default=20)
    ap.add_argument("--distill-epochs", type=int, default=40)
    ap.add_argument("--teacher-epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.pipeline:
        pipeline_table(args.pipeline, args.seeds, args.out)
        return
    t0 = time.time()
    print("loading data, training the teacher ...", flush=True)

    data = load_data(DataConfig(), seed=args.seed, base_dir=Path("."))
    train, val = (data.x_train, data.y_train), (data.x_val, data.y_val)
    shape, classes = data.input_shape, data.num_classes

    torch.manual_seed(args.seed)
    teacher = zoo.cnn_large(shape, classes)
    fit(teacher, train, val, TrainConfig(epochs=args.teacher_epochs), seed=args.seed, batch_size=args.batch_size,
        desc="teacher")
    soft = predict_logits(teacher, data.x_train)

    def distill(model: torch.nn.Module, epochs: int, seed: int) -> dict:
        return fit(model, train, val, TrainConfig(epochs=epochs, patience=epochs), seed=seed,
                   batch_size=args.batch_size, teacher_logits=soft, temperature=4.0, alpha=0.3, desc="distill",
                   progress=False)

    factory, width_key, width = STUDENTS[args.student]
    torch.manual_seed(args.seed)
    student = factory(shape, classes)
    distill(student, args.distill_epochs, args.seed)
    print(f"teacher and student ready ({time.time() - t0:.0f} s); pruning ...", flush=True)

    cfg = PruneConfig(amount=args.amount, steps=args.steps, finetune_epochs=args.finetune_epochs,
                      importance=args.importance)
    batches = [(data.x_train[i:i + args.batch_size], data.y_train[i:i + args.batch_size])
               for i in range(0, 4 * args.batch_size, args.batch_size)]
    pruned, history = prune(student, cfg, example_input=data.example(32), taylor_batches=batches,
                            finetune=lambda m, e: distill(m, e, args.seed + 1),
                            evaluate=lambda m: evaluate(m, *val), progress=True)

    # Control: same architecture at the pruned width, distilled from scratch for the same total epochs.
    torch.manual_seed(args.seed)
    control = factory(shape, classes, **{width_key: round(width * (1 - args.amount))})
    distill(control, args.distill_epochs + args.steps * args.finetune_epochs, args.seed)

    x32 = data.example(32)
    with tempfile.TemporaryDirectory() as tmp:
        lat = {name: _latency_ms(m, x32, Path(tmp), name)
               for name, m in [("student", student), ("pruned", pruned), ("control", control)]}
    rows = {
        "teacher": {"params": count_params(teacher), "accuracy": evaluate(teacher, *val)},
        "student": {"params": count_params(student), "accuracy": evaluate(student, *val), "p50_ms_b32": lat["student"]},
        "pruned": {"params": count_params(pruned), "accuracy": evaluate(pruned, *val), "p50_ms_b32": lat["pruned"]},
        "control": {"params": count_params(control), "accuracy": evaluate(control, *val), "p50_ms_b32": lat["control"]},
    }
    ratios = {"params": rows["pruned"]["params"] / rows["student"]["params"],
              "latency_b32": lat["pruned"] / lat["student"],
              "accuracy_drop_points": 100 * (rows["student"]["accuracy"] - rows["pruned"]["accuracy"])}
    checks = {"params <= 0.60x": ratios["params"] <= 0.60, "latency <= 0.80x": ratios["latency_b32"] <= 0.80,
              "accuracy within 1.5 points": ratios["accuracy_drop_points"] <= 1.5,
              "pruned >= same-size control": rows["pruned"]["accuracy"] >= rows["control"]["accuracy"]}
    result = {"student": args.student, "amount": args.amount, "importance": args.importance, "seed": args.seed, "models": rows, "ratios": ratios,
              "checks": checks, "steps": history, "seconds": round(time.time() - t0, 1)}

    print(f"\n{args.student}, amount {args.amount}, {args.importance}, {args.steps} steps x {args.finetune_epochs} epochs, "
          f"seed {args.seed}")
    print(f"{'model':8} {'params':>7} {'accuracy':>9} {'p50 ms b32':>11}")
    for name, r in rows.items():
        print(f"{name:8} {r['params']:>7} {100 * r['accuracy']:>8.2f}% {r.get('p50_ms_b32', float('nan')):>11.3f}")
    print("steps: " + "; ".join(f"{h['step']}: {h['params']} params, {100 * h['accuracy_before_finetune']:.1f}% -> "
                                f"{100 * h['accuracy']:.1f}%" for h in history))
    print(f"params {ratios['params']:.2f}x, latency {ratios['latency_b32']:.2f}x, "
          f"accuracy drop {ratios['accuracy_drop_points']:+.2f} points")
    for k, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISS'}] {k}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
