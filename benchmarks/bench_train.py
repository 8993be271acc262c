"""Training speed and precision: bf16 autocast against fp32 on the image CNNs, step time alternated in one run and
accuracy after a whole training on the shipped digits.

    PYTHONPATH=$PWD python benchmarks/bench_train.py precision --out /tmp/bench-train

Step time: the model's training step (forward under autocast when bf16, cross-entropy, backward, AdamW) on one
batch of 64 digits, blocks of 20 steps alternating fp32 / bf16 (order reversed every round), medians of the block
means. Accuracy: the model trained by compress's own loop (`compress.train.fit`, [teacher.train] defaults, 15
epochs) in fp32 and in bf16 on the digits' seeded split, test accuracy of each. Writes results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

MODELS = {"cnn-large w64": ("builtin:cnn-large", {"width": 64}), "mobilenet": ("builtin:mobilenet", {})}


def _model(spec: str, kwargs: dict, data) -> object:
    from compress.families import family_of
    from compress.records import ModelSpec

    return family_of(spec).build(ModelSpec(spec, kwargs), data=data, base_dir=Path("."), origin="bench")


def step_times(spec: str, kwargs: dict, data, *, rounds: int, steps: int) -> dict:
    import torch

    x, y = data.example(64), torch.as_tensor(data.targets("val")[:64])
    y = torch.cat([y] * (64 // len(y) + 1))[:64] if len(y) < 64 else y
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    models = {}
    for precision in times:
        torch.manual_seed(0)
        model = _model(spec, kwargs, data).train()
        models[precision] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))

    def block(precision: str) -> float:
        model, opt = models[precision]
        start = time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(x)
            loss = torch.nn.functional.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / steps * 1e3

    for p in times:  # warm-up: first steps allocate and pick kernels
        block(p)
    for r in range(rounds):
        for p in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            times[p].append(block(p))
    med = {p: statistics.median(v) for p, v in times.items()}
    return {"step_ms": med, "bf16_over_fp32": med["bf16"] / med["fp32"], "blocks": times}


def accuracy(spec: str, kwargs: dict, data, precision: str, epochs: int) -> float:
    import torch

    from compress.onnx.export import export_onnx  # noqa: F401  (the same modules the pipeline loads)
    from compress.train import TrainConfig, fit, predict

    torch.manual_seed(0)
    model = _model(spec, kwargs, data)
    fit(model, data.train, data.val, TrainConfig(epochs=epochs, precision=precision), seed=0, progress=False)
    logits = next(iter(predict(model, data.test).values()))
    return float((logits.argmax(1) == data.targets("test")).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["precision"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from compress.data import DataConfig, load_data
    from compress.train.loop import bf16_supported

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_data(DataConfig(), seed=0, base_dir=Path("."))
    result = {"cpu_has_bf16": bf16_supported(), "threads": args.threads, "load_before": os.getloadavg(),
              "models": {}}
    for name, (spec, kwargs) in MODELS.items():
        row = step_times(spec, kwargs, data, rounds=args.rounds, steps=args.steps)
        row["test_accuracy"] = {p: accuracy(spec, kwargs, data, p, args.epochs) for p in ("fp32", "bf16")}
        row["accuracy_gap_points"] = 100 * (row["test_accuracy"]["bf16"] - row["test_accuracy"]["fp32"])
        result["models"][name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "blocks"}), flush=True)
    result["load_after"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
