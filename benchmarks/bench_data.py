"""Issue 12's data numbers: image folders streamed from disk.

    python benchmarks/bench_data.py make        [--root /tmp/compress-images]   # the 5k and 50k folders (+ npz)
    python benchmarks/bench_data.py memory      # peak RSS (process tree) of `compress run`, 50k vs 5k images
    python benchmarks/bench_data.py memory --heap trim,fixed-8mb,glibc --rounds 3   # heap settings, alternated
    python benchmarks/bench_data.py throughput  # images/s in distill: 2 decoding workers vs the npz path
    python benchmarks/bench_data.py augment     # distilled student, crop+jitter & teacher on the fly vs none, 3 seeds
    python benchmarks/bench_data.py             # all of the above, in that order

The folders are the UCI digits (1,797 8x8 images) upsampled to 32x32 (bilinear), shifted by up to 2 pixels and
given Gaussian noise (sigma 24 of 255), written as grayscale PNG (read as RGB), one sub-folder per digit, under
--root (never in the repo). `img5000.npz` holds the same 5,000 images decoded and normalised as the image source
does it (float32, 3x32x32), for the in-memory comparison. Results go to --out (JSON) and stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def make(root: Path, sizes: list[int]) -> None:
    """Write root/img<N>/<digit>/<i>.png for each N (skipped when the folder is complete), and img5000.npz."""
    import numpy as np
    from PIL import Image

    with np.load(ROOT / "compress" / "data" / "digits.npz") as z:
        x8, y8 = z["x"], z["y"]
    for n in sizes:
        folder = root / f"img{n}"
        if folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) == n:
            continue
        rng = np.random.default_rng(n)
        started = time.perf_counter()
        for d in range(10):
            (folder / str(d)).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            k = i % len(x8)
            big = Image.fromarray((x8[k] * 15).astype(np.uint8)).resize((36, 36), Image.BILINEAR)
            dy, dx = rng.integers(0, 5, 2)
            a = np.asarray(big, dtype=np.float32)[dy:dy + 32, dx:dx + 32] + rng.normal(0, 24, (32, 32))
            Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(folder / str(y8[k]) / f"{i:06d}.png")
        print(f"{folder}: {n} PNGs in {time.perf_counter() - started:.1f} s")
    npz = root / "img5000.npz"
    if not npz.exists():
        from compress.data import DataConfig, load_data

        data = load_data(DataConfig(source=f"images:{root / 'img5000'}", test_fraction=0.0, val_fraction=0.01),
                         seed=0, base_dir=root)
        xs, ys = [], []
        for part in (data.train_plain, data.val):
            for i in range(len(part)):
                _, x, y = part[i]
                xs.append(x.numpy())
                ys.append(y)
        np.savez(npz, x=np.stack(xs), y=np.asarray(ys))
        print(f"{npz}: {len(xs)} images, mean/std {data.details['mean']} / {data.details['std']}")


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0:3].__repr__()


PIPELINE = '''
[pipeline]
name = "{name}"
output_dir = "{out}"
seed = {seed}

[data]
source = "{source}"
val_fraction = {val}
test_fraction = {test}
batch_size = 64
workers = {workers}
{extra}

[teacher]
model = "{teacher_model}"
kwargs = {teacher_kwargs}
{teacher}

[student]
model = "{student}"
kwargs = {student_kwargs}

[distill]
epochs = {epochs}
lr = 3e-3
control = false

[benchmark]
providers = ["cpu"]
batch_sizes = [1]
threads = [1]
warmup_runs = 5
min_runs = 20
min_seconds = 0.0
repetitions = 1
'''


def write_pipeline(path: Path, **kw) -> Path:
    defaults = {"seed": 0, "val": 0.1, "test": 0.1, "workers": 2, "extra": "", "epochs": 1,
                "student": "builtin:cnn-small", "student_kwargs": "{ width = 8 }",
                "teacher_model": "builtin:cnn-large", "teacher_kwargs": "{ width = 16 }",
                "teacher": "[teacher.train]\nepochs = 1\nlr = 3e-3"}
    path.write_text(textwrap.dedent(PIPELINE.format(**{**defaults, **kw})))
    return path


def _tree(pid: int) -> list[int]:
    """pid and every descendant (from /proc/*/stat parent links)."""
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def _kb(pid: int, path: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(args: list[str], env: dict | None = None) -> dict:
    """Run a command; poll its process tree every 0.2 s: peak summed RSS and PSS (shared pages split), in MB, over
    the whole run and per stage (a stage's samples are those before the line that reports it finished)."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"rss": 0, "pss": 0, "main_rss": 0, "procs": 0}
    samples: list[tuple[float, int, int]] = []  # (seconds, main RSS kB, tree PSS kB)
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            pids = _tree(proc.pid)
            rss = sum(_kb(p, "status", "VmRSS:") for p in pids)
            pss = sum(_kb(p, "smaps_rollup", "Pss:") for p in pids)
            main = _kb(proc.pid, "status", "VmRSS:")
            samples.append((time.perf_counter() - started, main, pss))
            peak.update(rss=max(peak["rss"], rss), pss=max(peak["pss"], pss), procs=max(peak["procs"], len(pids)),
                        main_rss=max(peak["main_rss"], main))
            done.wait(0.2)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    lines: list[tuple[float, str]] = []
    for line in proc.stdout:
        lines.append((time.perf_counter() - started, line.rstrip()))
    proc.wait()
    done.set()
    t.join()
    if proc.returncode != 0:
        print("\n".join(text for _, text in lines[-40:]))
        raise SystemExit(f"{' '.join(args)}: exit {proc.returncode}")
    return {"peak_tree_rss_mb": round(peak["rss"] / 1024, 1), "peak_tree_pss_mb": round(peak["pss"] / 1024, 1),
            "peak_main_rss_mb": round(peak["main_rss"] / 1024, 1), "max_processes": peak["procs"],
            "seconds": round(time.perf_counter() - started, 1), "per_stage": _per_stage(samples, lines)}


def _per_stage(samples: list[tuple[float, int, int]], lines: list[tuple[float, str]]) -> dict:
    """Peak main RSS and tree PSS (MB) between consecutive 'compress: <stage>: <status>' log lines."""
    import re

    from compress.stages import STAGES

    found = [(t, re.match(r"compress: (\w+): (done|cached)", text)) for t, text in lines]
    ends = [(t, m.group(1)) for t, m in found if m and m.group(1) in STAGES]
    out, begin = {}, 0.0
    for end, stage in ends + [(float("inf"), "after")]:
        inside = [s for s in samples if begin <= s[0] < end]
        if inside:
            out[stage] = {"main_rss_mb": round(max(s[1] for s in inside) / 1024, 1),
                          "tree_pss_mb": round(max(s[2] for s in inside) / 1024, 1)}
        begin = end
    return out


MEMORY_TEACHER = '[teacher.train]\nepochs = 1\nlr = 3e-3'


JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
HEAP_MODES = {"trim": {}, "fixed-8mb": {"COMPRESS_MMAP_THRESHOLD": "8388608"}, "glibc": {"COMPRESS_LOW_MEMORY": "0"},
              "jemalloc": {"COMPRESS_LOW_MEMORY": "0", "LD_PRELOAD": JEMALLOC}}
"""compress/heap.py's settings: the default (trim when a pass grows), the former 8 MB fixed threshold, glibc left
alone, and jemalloc preloaded where installed (Debian: libjemalloc2)."""


def memory(root: Path, work: Path, modes: list[str] = ("trim",), rounds: int = 1) -> dict:
    """`compress run` (teacher cnn-small trained 1 epoch, distill 1 epoch, export, benchmark; 2 workers) on the 5k
    and the 50k folder, for each heap setting of `modes`, `rounds` times, settings alternated (order reversed every
    other round). One epoch each and a small teacher: the machine is shared, and memory does not depend on the
    number of epochs."""
    runs: dict[str, list] = {m: [] for m in modes}
    for r in range(rounds):
        for mode in (modes if r % 2 == 0 else list(reversed(modes))):
            row = {}
            for n in (5000, 50000):
                toml = write_pipeline(work / f"mem{n}.toml", name=f"mem{n}", out=str(work / f"mem{n}"),
                                      source=f"images:{root / f'img{n}'}", teacher=MEMORY_TEACHER,
                                      teacher_model="builtin:cnn-small")
                before = load()
                row[n] = {**run_measured([PY, "-m", "compress", "-v", "run", str(toml), "--quiet", "--force"],
                                         env={"COMPRESS_LOW_MEMORY": "", "COMPRESS_MMAP_THRESHOLD": "",
                                              **HEAP_MODES[mode]}),
                          "load_before": before, "load_after": load()}
            for key in ("main_rss", "tree_rss", "tree_pss"):
                row[f"ratio_{key}"] = round(row[50000][f"peak_{key}_mb"] / row[5000][f"peak_{key}_mb"], 3)
            print(f"memory {mode} round {r}: main RSS {row[5000]['peak_main_rss_mb']} -> "
                  f"{row[50000]['peak_main_rss_mb']} MB ({row['ratio_main_rss']}x), tree RSS {row['ratio_tree_rss']}x, "
                  f"tree PSS {row['ratio_tree_pss']}x, {row[5000]['seconds']} / {row[50000]['seconds']} s, "
                  f"load {row[50000]['load_after']}", flush=True)
            runs[mode].append(row)
    return {"runs": runs, "worst_ratio_main_rss": {m: max(r["ratio_main_rss"] for r in v) for m, v in runs.items()},
            "worst_ratio_tree_rss": {m: max(r["ratio_tree_rss"] for r in v) for m, v in runs.items()}}


def throughput(root: Path, rounds: int = 3, epochs: int = 2) -> dict:
    """Images/s of the distill loop (student cnn-small, cached teacher logits) on the 5,000 images: the folder
    with 2 decoding workers vs img5000.npz (the same images, decoded once; memory-mapped, page-cached), alternated."""
    import numpy as np
    import torch

    from compress import zoo
    from compress.data import DataConfig, load_data
    from compress.train import DistillConfig, Teacher, train_student

    torch.set_num_threads(1)  # the workers get the other core; both paths train with the same one thread
    cfgs = {"images_2_workers": DataConfig(source=f"images:{root / 'img5000'}", workers=2, test_fraction=0.0,
                                           val_fraction=0.01),
            "npz_in_process": DataConfig(source=f"npz:{root / 'img5000.npz'}", workers=0, test_fraction=0.0,
                                         val_fraction=0.01)}
    bundles = {k: load_data(c, seed=0, base_dir=root) for k, c in cfgs.items()}
    rates: dict[str, list[float]] = {k: [] for k in cfgs}
    for r in range(rounds):
        for name, data in (bundles.items() if r % 2 == 0 else reversed(bundles.items())):
            logits = np.zeros((len(data.train), 10), dtype=np.float32)
            torch.manual_seed(0)
            model = zoo.cnn_small(input_shape=data.input_shape, num_classes=10, width=8)
            cfg = DistillConfig(epochs=epochs, patience=epochs, lr=3e-3)
            started = time.perf_counter()
            train_student(model, data, cfg, teacher=Teacher(logits=logits), seed=0, batch_size=64,
                          origin="bench", desc=name, progress=False)
            rates[name].append(epochs * len(data.train) / (time.perf_counter() - started))
            print(f"throughput {name} round {r}: {rates[name][-1]:.0f} images/s (load {load()})")
    med = {k: float(np.median(v)) for k, v in rates.items()}
    return {"images_per_s": rates, "median": med, "ratio": round(med["images_2_workers"] / med["npz_in_process"], 3),
            "train_images": len(bundles["npz_in_process"].train), "epochs_per_measure": epochs}


def augment(root: Path, work: Path, seeds: tuple[int, ...] = (0, 1, 2), epochs: int = 10, n: int = 1500,
            teacher_epochs: int = 10, teacher_augment: str = "", student: str = "builtin:cnn-small",
            student_kwargs: str = "{ width = 8 }", teacher_model: str = "builtin:cnn-large",
            teacher_kwargs: str = "{ width = 16 }") -> dict:
    """On an n-image folder (60% train / 20% val / 20% test): one teacher (`teacher_model` with `teacher_kwargs`,
    default cnn-large width 16, trained here for `teacher_epochs`, with `teacher_augment` when given, saved), then per
    seed a student (`student`, TOML inline table `student_kwargs`) distilled `epochs` epochs with augment = ["crop",
    "jitter"] (the teacher runs on each batch) and one without (cached logits); test accuracy of each."""
    make(root, [n])
    source = f"images:{root / f'img{n}'}"
    tag = "".join(f"-{model.split(':')[-1]}{''.join(c for c in kw if c.isalnum() or c == '-')}"
                  for model, kw, default in ((teacher_model, teacher_kwargs, ("builtin:cnn-large", "{ width = 16 }")),
                                             (student, student_kwargs, ("builtin:cnn-small", "{ width = 8 }")))
                  if (model, kw) != default)
    work = work / f"aug{n}-t{teacher_epochs}{teacher_augment.replace(',', '-')}-s{epochs}{tag}"
    work.mkdir(parents=True, exist_ok=True)
    teacher_toml = write_pipeline(work / "aug-teacher.toml", name="aug-teacher", out=str(work / "aug-teacher"),
                                  source=source, teacher=f"[teacher.train]\nepochs = {teacher_epochs}\nlr = 3e-3",
                                  epochs=1, val=0.2, test=0.2, workers=0,
                                  extra=(f"augment = {json.dumps(teacher_augment.split(','))}" if teacher_augment
                                         else ""), teacher_model=teacher_model, teacher_kwargs=teacher_kwargs)
    run_measured([PY, "-m", "compress", "run", str(teacher_toml), "--quiet"])
    ckpt = work / "aug-teacher" / "teacher" / "teacher.safetensors"
    rows = []
    for seed in seeds:
        row = {"seed": seed}
        for name, extra in (("none", ""), ("crop+jitter", 'augment = ["crop", "jitter"]')):
            out = work / f"aug-{name.replace('+', '-')}-{seed}"
            toml = write_pipeline(work / f"aug-{name}-{seed}.toml", name=f"aug{seed}", seed=seed, val=0.2, test=0.2,
                                  out=str(out), epochs=epochs, source=source, extra=extra, workers=0,
                                  teacher=f'checkpoint = "{ckpt}"', student=student, student_kwargs=student_kwargs,
                                  teacher_model=teacher_model, teacher_kwargs=teacher_kwargs)
            stats = run_measured([PY, "-m", "compress", "run", str(toml), "--quiet"])
            report = json.loads((out / "report.json").read_text())
            models = {m["name"]: m for m in report["models"]}
            row[name] = {"student_test": models["student"]["accuracy"], "student_val": models["student"]["accuracy_val"],
                         "teacher_test": models["teacher"]["accuracy"], "teacher_outputs":
                         report["data"].get("teacher_outputs"), "seconds": stats["seconds"], "load": load()}
        print(f"augment seed {seed}: {row}")
        rows.append(row)
    return {"rows": rows, "epochs": epochs, "images": n, "teacher_epochs": teacher_epochs,
            "teacher_augment": teacher_augment, "teacher_model": teacher_model, "teacher_kwargs": teacher_kwargs,
            "student": student, "student_kwargs": student_kwargs,
            "test_size": report["data"]["splits"]["test"]["size"],
            "augment_ge_none": all(r["crop+jitter"]["student_test"] >= r["none"]["student_test"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="*", default=["make", "memory", "throughput", "augment"])
    parser.add_argument("--root", type=Path, default=Path("/tmp/compress-images"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/compress-images/bench_data.json"))
    parser.add_argument("--aug-images", type=int, default=1500, help="augment: images in the folder")
    parser.add_argument("--aug-epochs", type=int, default=10, help="augment: student distill epochs")
    parser.add_argument("--teacher-epochs", type=int, default=10, help="augment: teacher training epochs")
    parser.add_argument("--teacher-augment", default="", help="augment: the teacher's own augmentations, e.g. crop")
    parser.add_argument("--teacher", default="builtin:cnn-large", help="augment: the teacher model")
    parser.add_argument("--teacher-kwargs", default="{ width = 16 }", help="augment: its kwargs (TOML inline table)")
    parser.add_argument("--student", default="builtin:cnn-small", help="augment: the student model")
    parser.add_argument("--student-kwargs", default="{ width = 8 }", help="augment: its kwargs (TOML inline table)")
    parser.add_argument("--heap", default="trim", help=f"memory: heap settings to compare, comma-separated, of "
                        f"{', '.join(HEAP_MODES)} (compress/heap.py)")
    parser.add_argument("--rounds", type=int, default=1, help="memory: rounds, settings alternated")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    work = args.root / "work"
    work.mkdir(exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["cpu_count"] = os.cpu_count()
    for what in args.what:
        if what == "make":
            make(args.root, [5000, 50000])
            continue
        results[what] = {"memory": lambda: memory(args.root, work, args.heap.split(","), args.rounds), "throughput": lambda: throughput(args.root),
                         "augment": lambda: augment(args.root, work, epochs=args.aug_epochs, n=args.aug_images,
                                                   teacher_epochs=args.teacher_epochs,
                                                   teacher_augment=args.teacher_augment, student=args.student,
                                                   student_kwargs=args.student_kwargs, teacher_model=args.teacher,
                                                   teacher_kwargs=args.teacher_kwargs)}[what]()
        args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items()}, indent=1)[:4000])


if __name__ == "__main__":
    main()
