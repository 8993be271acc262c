"""Transformer export: tokenizer-named inputs, dynamic batch and sequence axes, parity on real tokens in eval mode,
benchmark feeds inside the vocabulary, dynamic int8 per-channel."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from compress.hf.export import bench_feed, export_text_model, run_ort
from compress.hf.model import build_text_model
from compress.hf.text import tokenize
from compress.hf.train import predict

TEXTS = ["the cat runs near the river .", "a bus .", "the old red truck stops again and again with a dog ."]


def test_export_names_inputs_like_the_tokenizer_and_keeps_both_axes_dynamic(tmp_path, bert_dir, tokenizer):
    # setup: a model left in train mode (dropout on) must still export and compare in eval mode
    model = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t").train()
    enc = tokenize(tokenizer, TEXTS, max_length=20)
    example = {k: v[:2].long() for k, v in enc.items()}
    # execute
    path = export_text_model(model, example, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # assert: names and symbolic axes
    inputs = {i.name: i.shape for i in sess.get_inputs()}
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert inputs["input_ids"] == ["batch", "seq"]
    assert sess.get_outputs()[0].name == "embedding"
    # parity on real tokens, through a batch size and lengths other than the example's
    got = run_ort(path, enc, batch_size=3)
    expected = predict(model, enc).numpy()
    assert np.abs(got - expected).max() <= 1e-4


def test_classifier_exports_logits_and_benchmark_feed_is_real_text(tmp_path, bert_dir, tokenizer):
    model = build_text_model(f"hf:{bert_dir}", task="classification", num_classes=2, base_dir=Path("."),
                             origin="t")
    enc = tokenize(tokenizer, TEXTS, max_length=16)
    path = export_text_model(model, {k: v[:2].long() for k, v in enc.items()}, tmp_path / "c.onnx")
    assert np.abs(run_ort(path, enc) - predict(model, enc).numpy()).max() <= 1e-4
    feed = bench_feed(tokenizer, TEXTS, ["input_ids", "attention_mask", "token_type_ids"], batch=2, seq_length=24)
    assert feed["input_ids"].shape == (2, 24) and feed["input_ids"].dtype == np.int64
    assert feed["attention_mask"].all()  # filled with real text, no padding
    assert feed["input_ids"].max() < tokenizer.vocab_size and (feed["input_ids"] != tokenizer.unk_token_id).all()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.run(None, feed)[0].shape == (2, 2)


def test_dynamic_int8_per_channel_keeps_the_embedding(tmp_path, bert_dir, tokenizer):
    from compress.hf.quantize import _quantize_once
    from compress.hf.metrics import cosine
    from compress.quantize.config import QuantizeConfig

    model = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    enc = tokenize(tokenizer, TEXTS * 4, max_length=20)
    path = export_text_model(model, {k: v[:2].long() for k, v in enc.items()}, tmp_path / "m.onnx")
    for mode in ("dynamic", "static"):
        q = tmp_path / f"{mode}.onnx"
        _quantize_once(path, q, QuantizeConfig(mode=mode, calibration_samples=8, calibration_batch=4),
                       {"per_channel": True, "reduce_range": False}, enc)
        assert cosine(run_ort(q, enc), run_ort(path, enc)) > 0.99, mode


def test_compress_bench_feeds_ids_inside_a_tiny_vocabulary(tmp_path, bert_dir, tokenizer):
    # setup: a 42-token vocabulary, so the old [0, 100) ids would index past the embedding table
    from click.testing import CliRunner

    from compress.bench.inputs import index_bounds, make_inputs
    from compress.cli import main

    model = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    enc = tokenize(tokenizer, TEXTS, max_length=12)
    path = export_text_model(model, {k: v[:2].long() for k, v in enc.items()}, tmp_path / "m.onnx")
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
    path = export_text_model(model, {k: v[:2].long() for k, v in enc.items()}, tmp_path / "m.onnx")
    out = tmp_path / "q" / "m-int8.onnx"
    # execute
    result = CliRunner().invoke(main, ["quantize", str(path), "--out", str(out), "--dim", "seq=16", "--batch", "1",
                                       "--max-cosine-drop", "0.05", "--provider", "cpu"])
    # assert: dynamic by default, gated on cosine to fp32, and the summary says so
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["mode"] == "dynamic" and summary["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert summary["gate"].startswith("mean cosine similarity of the outputs to the fp32 model's on 64 seeded")
    accepted = [a for a in summary["attempts"] if a["accepted"]]
    assert accepted and accepted[0]["score"] > 0.95
    assert summary["out"] == str(out) and onnx_has_int8(out)


def onnx_has_int8(path: Path) -> bool:
    import onnx

    return any(i.data_type == onnx.TensorProto.INT8 for i in onnx.load(str(path)).graph.initializer)


def test_compress_quantize_refuses_static_on_a_model_with_several_inputs(tmp_path, bert_dir, tokenizer):
    from click.testing import CliRunner

    from compress.cli import main

    model = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    enc = tokenize(tokenizer, TEXTS, max_length=12)
    path = export_text_model(model, {k: v[:2].long() for k, v in enc.items()}, tmp_path / "m.onnx")
    result = CliRunner().invoke(main, ["quantize", str(path), "--out", str(tmp_path / "q.onnx"), "--mode", "static"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: --mode: {path} has several inputs (a transformer?); compress quantize takes it with --mode dynamic "
        "(int8 weights, the usual choice for transformers on CPU), got 'static'")


def test_compress_edge_takes_a_transformer_with_a_symbolic_sequence_axis(tmp_path, bert_dir, tokenizer):
    import json

    from click.testing import CliRunner

    from compress.cli import main

    model = build_text_model(f"hf:{bert_dir}", task="embedding", base_dir=Path("."), origin="t")
    enc = tokenize(tokenizer, TEXTS, max_length=12)
    path = export_text_model(model, {k: v[:2].long() for k, v in enc.items()}, tmp_path / "m.onnx")
    result = CliRunner().invoke(main, ["edge", str(path), "--out", str(tmp_path / "e"), "--dim", "seq=16"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e" / "edge.json").read_text())["parity"]["ok"]
