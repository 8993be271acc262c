"""QNN HTP (Snapdragon NPU, simulated by onnxruntime-qnn on x86_64) on the reference students.

For the digits CNN (`builtin:cnn-small`), the MobileNet-style net (`builtin:mobilenet`: depthwise, BN,
residual) and a 2-layer transformer encoder over the image rows (`tiny_transformer`): train briefly on the built-in digits, export (dynamic batch), then compress.edge.qnn_flow.prepare_qnn
(batch fixed to 1, QNN QDQ quantization calibrated on training images, placement measured on HTP, accuracy on
the whole validation split on HTP beside fp32 and int8 on ORT CPU, EPContext model load + parity). Prints one
line per model and writes the sections to <out>/bench_qnn.json. Targets: 100% of nodes on HTP, top-1 agreement
HTP vs ORT CPU int8 >= 99%, accuracy drop HTP vs fp32 <= 1 point, EPContext outputs == QDQ outputs on HTP.

    .venv/bin/python benchmarks/bench_qnn.py [--out runs/bench_qnn]
        [--epochs 8] [--calibration 256] [--activation-type uint8] [--per-tensor-weights]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _digits() -> dict:
    """The built-in digits (1x8x8 in [0, 1]), 359 validation images (20%, a seeded permutation), the rest train."""
    from importlib.resources import files

    import numpy as np

    with np.load(files("compress.data") / "digits.npz") as z:
        x, y = z["x"].astype(np.float32)[:, None] / 16.0, z["y"].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    val, train = order[:359], order[359:]
    return {"x_train": x[train], "y_train": y[train], "x_val": x[val], "y_val": y[val]}


def _train_and_export(name: str, factory, data: dict, epochs: int, out: Path) -> tuple[Path, float]:
    """A plain torch loop (Adam 1e-3, batch 64, `epochs`), then the ONNX export: the figures here are about HTP
    against fp32 on the same model, not about training."""
    import torch

    from compress.onnx.export import export_onnx

    torch.manual_seed(0)
    model = factory(input_shape=(1, 8, 8), num_classes=10)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(data["x_val"])).argmax(1).numpy() == data["y_val"]).mean())
    return export_onnx(model, torch.zeros(1, 1, 8, 8), out / f"{name}.onnx"), acc


def tiny_transformer(input_shape, num_classes, d: int = 32, heads: int = 4, layers: int = 2):
    """A transformer student on the digits: each image row is a token (8 tokens of 8 features), projected to d,
    plus a learned position embedding, `layers` encoder layers (GELU, LayerNorm, softmax attention), mean pool.

    Float input, so it goes through the same one-float-input QNN flow; a token-id input (Gather on an embedding
    table) waits for the transformers issue's students."""
    import torch

    rows, cols = input_shape[-2], input_shape[-1]

    class RowTransformer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(cols, d)
            self.position = torch.nn.Parameter(torch.zeros(1, rows, d))
            layer = torch.nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, activation="gelu",
                                                     batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = torch.nn.Linear(d, num_classes)

        def forward(self, x):
            tokens = self.embed(x.reshape(x.shape[0], rows, cols)) + self.position
            return self.head(self.encoder(tokens).mean(1))

    return RowTransformer()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_qnn"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--calibration", type=int, default=256, help="training images used to calibrate")
    parser.add_argument("--activation-type", choices=["uint8", "uint16"], default="uint8")
    parser.add_argument("--per-tensor-weights", action="store_true",
                        help="convolution weights per tensor, as ORT's QNN default (compress: per channel)")
    args = parser.parse_args()

    from compress.edge.qnn import qnn_status
    from compress.edge.qnn_flow import prepare_qnn, qnn_table
    from compress.zoo import cnn_small, mobilenet

    status = qnn_status()
    if not status["installed"]:
        print(f"QNN: {status['reason']}")
        return 2
    print(f"onnxruntime-qnn {status['version']}")
    args.out.mkdir(parents=True, exist_ok=True)
    data = _digits()
    calib = data["x_train"][: args.calibration]
    results = {}
    for name, factory in (("cnn-small", cnn_small), ("mobilenet", mobilenet), ("transformer", tiny_transformer)):
        path, torch_acc = _train_and_export(name, factory, data, args.epochs, args.out)
        section = prepare_qnn(path, args.out / name, calibration=calib, val_x=data["x_val"], val_y=data["y_val"],
                              activation_type=args.activation_type, latency_runs=100,
                              per_channel=not args.per_tensor_weights)
        section["torch_val_accuracy"] = torch_acc
        results[name] = section
        print(f"== {name} (torch val accuracy {torch_acc:.4f})")
        print(qnn_table(section))
        a, p, c = section["accuracy"], section["placement"], section["context"]
        print(f"SUMMARY {name}: on_htp={p['share_on_htp']:.3f} ({p['nodes_on_htp']}/{p['nodes_total']}) "
              f"no_fallback={section['runs_without_fallback']} "
              f"agree_htp_int8cpu={a['top1_agreement_htp_vs_int8_cpu']:.4f} "
              f"maxabs_htp_int8cpu={a['max_abs_diff_htp_vs_int8_cpu']:.3g} "
              f"acc fp32={a['accuracy_fp32_cpu']:.4f} int8cpu={a['accuracy_int8_cpu']:.4f} htp={a['accuracy_htp']:.4f} "
              f"drop={100 * a['accuracy_drop_htp_vs_fp32']:.2f}pt "
              f"ctx_loads={c and c['loads']} ctx_maxabs={c and c['parity']['max_abs_diff']:.3g} "
              f"sim_p50_ms={section['latency']['p50_ms']:.2f} samples={a['samples']}")
    (args.out / "bench_qnn.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
