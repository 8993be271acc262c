"""Transformer export: tokenizer-named inputs, dynamic batch and sequence axes, parity on real tokens in eval mode,
benchmark feeds inside the vocabulary, dynamic int8 per-channel."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from compress.hf.model import build_text_model
from compress.hf.text import bench_feed, tokenize
from tests.hf.conftest import export_text, ort_outputs, torch_outputs

TEXTS = ["the cat runs near the river .", "a bus .", "the old red truck stops again and again with a dog ."]


def test_export_names_inputs_like_the_tokenizer_and_keeps_both_axes_dynamic(tmp_path, bert_dir, tokenizer):
    # setup: a model left in train mode (dropout on) must still export and compare in eval mode
    model = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t").train()
    enc = tokenize(tokenizer, TEXTS, max_length=20)
    # execute
    path = export_text(model, enc, tmp_path / "m.onnx", bert_dir)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # assert: names and symbolic axes
    inputs = {i.name: i.shape for i in sess.get_inputs()}
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert inputs["input_ids"] == ["batch", "seq"]
    assert sess.get_outputs()[0].name == "embedding"
    # parity on real tokens, through a batch size and lengths other than the example's
    got = ort_outputs(path, enc, batch_size=3)
    expected = torch_outputs(model.eval(), enc, bert_dir)
    assert np.abs(got - expected).max() <= 1e-4


def test_classifier_exports_logits_and_benchmark_feed_is_real_text(tmp_path, bert_dir, tokenizer):
    model = build_text_model(f"hf:{bert_dir}", task="classification", num_classes=2, base_dir=Path("."),
                             origin="t")
    enc = tokenize(tokenizer, TEXTS, max_length=16)
    path = export_text(model, enc, tmp_path / "c.onnx", bert_dir)
    assert np.abs(ort_outputs(path, enc) - torch_outputs(model, enc, bert_dir)).max() <= 1e-4
    feed = bench_feed(tokenizer, TEXTS, ["input_ids", "attention_mask", "token_type_ids"], batch=2, seq_length=24)
    assert feed["input_ids"].shape == (2, 24) and feed["input_ids"].dtype == np.int64
    assert feed["attention_mask"].all()  # filled with real text, no padding
    assert feed["input_ids"].max() < tokenizer.vocab_size and (feed["input_ids"] != tokenizer.unk_token_id).all()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.run(None, feed)[0].shape == (2, 2)


def test_dynamic_int8_per_channel_keeps_the_embedding(tmp_path, bert_dir, tokenizer):
    from compress.quantize.attempts import quantize_once
    from compress.tasks.embedding import cosine

    model = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    enc = tokenize(tokenizer, TEXTS * 4, max_length=20)
    path = export_text(model, enc, tmp_path / "m.onnx", bert_dir)
    calib = [{k: v[i:i + 4].numpy().astype(np.int64) for k, v in enc.items()} for i in range(0, 8, 4)]
    for mode in ("dynamic", "static"):
        q = tmp_path / f"{mode}.onnx"
        settings = {"mode": mode, "per_channel": True, "reduce_range": False, "weight_type": "int8",
                    "nodes_to_exclude": [], "calibration_method": "minmax", "quant_format": "qdq",
                    "activation_type": "uint8"}
        quantize_once(path, q, settings, calib)
        assert cosine(ort_outputs(q, enc), ort_outputs(path, enc)) > 0.99, mode


def test_compress_bench_feeds_ids_inside_a_tiny_vocabulary(tmp_path, bert_dir, tokenizer):
    # setup: a 42-token vocabulary, so the old [0, 100) ids would index past the embedding table
    from click.testing import CliRunner

    from compress.bench.inputs import index_bounds, make_inputs
    from compress.cli import main

    model = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    enc = tokenize(tokenizer, TEXTS, max_length=12)
    path = export_text(model, enc, tmp_path / "m.onnx", bert_dir)
    # execute
    bounds = index_bounds(path)
    feed = make_inputs(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), 2, {"seq": 32},
                       bounds=bounds)
    result = CliRunner().invoke(main, ["bench", str(path), "--dim", "seq=32", "--batch", "1", "--time-budget", "1"])
    # assert
    assert bounds == {"input_ids": tokenizer.vocab_size, "token_type_ids": 2}
    assert feed["input_ids"].max() < tokenizer.vocab_size and feed["attention_mask"].all()
    assert result.exit_code == 0, result.output


def test_compress_quantize_takes_a_transformer_with_three_inputs(tmp_path, bert_dir, tokenizer):
    # setup: an exported BERT (input_ids, attention_mask, token_type_ids): no labels, int64 inputs, a seq axis
    import json

    from click.testing import CliRunner

    from compress.cli import main

    model = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    enc = tokenize(tokenizer, TEXTS, max_length=12)
    path = export_text(model, enc, tmp_path / "m.onnx", bert_dir)
    out = tmp_path / "q" / "m-int8.onnx"
    # execute
    result = CliRunner().invoke(main, ["quantize", str(path), "--out", str(out), "--dim", "seq=16", "--batch", "1",
                                       "--max-cosine-drop", "0.05", "--provider", "cpu", "--pick", "quantized"])
    # assert: dynamic without calibration data, gated on cosine to fp32 (an embedding is not class logits), the
    # summary says so, and the same quantize function ran as for any other model
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["mode"] == "dynamic" and summary["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert summary["gate"].startswith("mean cosine to the fp32 model's outputs (embedding; SQNR per output beside "
                                      "it) on 64 seeded random inputs")
    assert "do not look like class logits" in summary["warnings"][0]
    accepted = [a for a in summary["attempts"] if a["accepted"]]
    assert accepted and accepted[0]["score"] > 0.95 and "sqnr_db/embedding" in accepted[0]["figures"]
    assert summary["out"] == str(out) and summary["ships"] == "quantized" and onnx_has_int8(out)


def onnx_has_int8(path: Path) -> bool:
    import onnx

    return any(i.data_type == onnx.TensorProto.INT8 for i in onnx.load(str(path)).graph.initializer)


def test_compress_quantize_static_on_several_inputs_needs_and_takes_their_calibration(tmp_path, bert_dir,
                                                                                     tokenizer):
    import json

    from click.testing import CliRunner

    from compress.cli import main

    model = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    enc = tokenize(tokenizer, TEXTS * 4, max_length=12)
    path = export_text(model, enc, tmp_path / "m.onnx", bert_dir)
    # without calibration inputs: one line, exit 2
    result = CliRunner().invoke(main, ["quantize", str(path), "--out", str(tmp_path / "q.onnx"), "--mode", "static"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --calibration: static quantization needs calibration inputs (.npz with an array per model input, "
        "or 'x' for one input); pass one or use --mode dynamic")
    # with one array per input name: static QDQ through the same function, gated on cosine to fp32
    np.savez(tmp_path / "calib.npz", **{k: v.numpy().astype(np.int64) for k, v in enc.items()})
    out = tmp_path / "static.onnx"
    result = CliRunner().invoke(main, ["quantize", str(path), "--out", str(out), "--calibration",
                                       str(tmp_path / "calib.npz"), "--max-cosine-drop", "0.05", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["mode"] == "static" and summary["gate"].endswith("on 12 calibration inputs")
    assert out.is_file() and summary["ships"] in ("float", "quantized")


def test_compress_edge_takes_a_transformer_with_a_symbolic_sequence_axis(tmp_path, bert_dir, tokenizer):
    import json

    from click.testing import CliRunner

    from compress.cli import main

    model = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    enc = tokenize(tokenizer, TEXTS, max_length=12)
    path = export_text(model, enc, tmp_path / "m.onnx", bert_dir)
    result = CliRunner().invoke(main, ["edge", str(path), "--out", str(tmp_path / "e"), "--dim", "seq=16"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e" / "edge.json").read_text())["parity"]["ok"]
