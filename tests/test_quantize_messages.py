"""What `compress quantize` says: the verdict when no attempt could be built, no ONNX Runtime logger lines in the
terminal, progress counts that match the attempts run, and a slowdown called one."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from compress.cli import main
from compress.quantize import pick_final

from .stages.test_quantize import _data, _mlp


def _reduce_mean(tmp_path: Path) -> tuple[Path, Path]:
    """One ReduceMean in an IR 3, opset 6 graph (onnx's test_operator_reduced_mean): no weights, and every static
    attempt fails inside ORT's calibrator."""
    graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=1)], "mean",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    onnx.save(model, str(tmp_path / "mean.onnx"))
    np.savez(tmp_path / "mean.npz", x=np.random.default_rng(0).standard_normal((1, 3, 4)).astype(np.float32))
    return tmp_path / "mean.onnx", tmp_path / "mean.npz"


def _gemm_with_a_computed_bias(tmp_path: Path) -> tuple[Path, Path]:
    """x @ W + (x * s) @ W: ORT's pre-processing fuses the second MatMul and the Add into a Gemm whose bias is
    computed, and ORT's static quantizer logs 'Bias of Gemm node ... is not constant' through the root logger."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "s"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Mul", ["x", "s"], ["m"], name="scale"),
             helper.make_node("MatMul", ["m", "w"], ["h2"], name="fc2"),
             helper.make_node("Add", ["h", "h2"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "gemm.onnx"))
    np.savez(tmp_path / "gemm.npz", x=rng.standard_normal((16, 8)).astype(np.float32))
    return tmp_path / "gemm.onnx", tmp_path / "gemm.npz"


def _invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _counts(stderr: str, mode: str) -> list[tuple[int, int, bool]]:
    """(done, total, whether the line says the search is done) of each progress line."""
    return [(int(n), int(total), bool(last)) for n, total, last in
            re.findall(rf"^quantize \({mode}\): (\d+)/(\d+) attempt(, done)? \(", stderr, flags=re.MULTILINE)]


def test_a_run_where_no_attempt_could_be_built_says_nothing_could_be_quantized(tmp_path: Path):
    # setup
    model, calib = _reduce_mean(tmp_path)
    out = tmp_path / "q" / "mean.onnx"
    # execute
    result = _invoke("quantize", model, "--calibration", calib, "--out", out, "--quiet")
    # assert: the nothing-to-quantize path (exit 1, nothing at --out), naming why and the first attempt's error
    assert result.exit_code == 1, result.output
    summary = json.loads(out.with_suffix(".json").read_text())
    attempts = summary["attempts"]
    assert len(attempts) == 6 and all(a["reason"].startswith("failed: ") for a in attempts)
    assert all(a["seconds"] >= 0 for a in attempts)  # a failed attempt's time is counted too
    first = attempts[0]["reason"].removeprefix("failed: ")
    assert summary["why"] == (f"nothing could be quantized: no attempt could be built (all 6 failed; the first: "
                              f"{first}); nothing written to --out")
    assert "no quantized model met" not in result.output and "every attempt failed to build" not in result.output
    assert "Wrote: nothing at --out (nothing could be quantized; the float model is the one given)" in result.output
    assert result.stderr.splitlines()[-1].startswith(f"error: {model}: nothing could be quantized: no attempt could "
                                                     "be built (all 6 failed; the first: ")
    assert not out.exists()


@pytest.mark.parametrize("verbose", [False, True])
def test_onnx_runtime_logger_lines_stay_out_of_the_terminal(tmp_path: Path, monkeypatch, verbose: bool):
    # setup: a terminal's logging, as outside pytest: no handler on the root logger
    model, calib = _gemm_with_a_computed_bias(tmp_path)
    out = tmp_path / "q" / "gemm.onnx"
    with monkeypatch.context() as patched:
        patched.setattr(logging.getLogger(), "handlers", [])
        # execute
        result = _invoke(*(["-v"] if verbose else []), "quantize", model, "--calibration", calib, "--out", out,
                         "--quiet", "--pick", "quantized")
        configured = list(logging.getLogger().handlers)
    # assert: compress's own lines only, and ORT left no handler of its own on the root logger
    assert result.exit_code == 0, result.output
    assert "Bias of Gemm" not in result.stderr and "root" not in result.stderr, result.stderr
    assert len(configured) == (1 if verbose else 0)  # -v's own basicConfig, nothing from ORT's logging.warning


def test_compress_lines_still_reach_the_terminal_while_onnx_runtime_is_quiet(tmp_path: Path, monkeypatch, capsys):
    # setup: a model without ORT's pre-processing metadata, which quantize_dynamic warns about through the root logger
    from onnxruntime.quantization import quantize_dynamic

    from compress.quantize.prepare import quiet_onnx_runtime

    model = _mlp(tmp_path / "mlp.onnx", _data(8, seed=0)[2])
    ours = logging.getLogger("compress.quantize.test")
    with monkeypatch.context() as patched:
        patched.setattr(logging.getLogger(), "handlers", [])
        # execute
        with quiet_onnx_runtime():
            quantize_dynamic(model, tmp_path / "dyn.onnx")
            ours.warning("compress: inside")
        ours.warning("compress: after")
        quantize_dynamic(model, tmp_path / "dyn2.onnx")  # outside the block ORT speaks again
        left = list(logging.getLogger().handlers)
    # assert: compress's warnings as Python prints them with nothing configured; ORT's only after the block
    err = capsys.readouterr().err
    assert err.startswith("compress: inside\ncompress: after\n"), err
    assert "pre-processing" not in err.split("compress: after\n")[0] and "pre-processing" in err
    assert len(left) == 1  # the basicConfig ORT's own logging.warning made, outside the block only


def test_progress_counts_the_attempts_run(tmp_path: Path):
    # setup: an MLP whose first dynamic attempt meets the budget; a graph every static attempt fails on
    train_x, _, centroids = _data(64, seed=1)
    np.savez(tmp_path / "calib.npz", x=train_x)
    mlp = _mlp(tmp_path / "mlp.onnx", centroids)
    mean, mean_calib = _reduce_mean(tmp_path)
    # execute
    one = _invoke("quantize", mlp, "--calibration", tmp_path / "calib.npz", "--mode", "dynamic", "--out",
                  tmp_path / "q" / "mlp.onnx", "--pick", "quantized")
    failed = _invoke("quantize", mean, "--calibration", mean_calib, "--out", tmp_path / "q" / "mean.onnx")
    # assert: one line per attempt; a search that stops early says so on its last line and keeps the total (it
    # shrank to the count: "1/6 attempt" then "2/2 attempt" read as a second search)
    assert one.exit_code == 0, one.output
    assert len(json.loads((tmp_path / "q" / "mlp.json").read_text())["attempts"]) == 1
    [(n, total, last)] = _counts(one.stderr, "dynamic")
    assert (n, last) == (1, True) and total > 1, one.stderr
    assert failed.exit_code == 1, failed.output
    assert _counts(failed.stderr, "static") == [(n, 6, False) for n in range(1, 7)], failed.stderr


def _paired(ratio: float, low: float, high: float) -> list[dict]:
    return [{"provider": "CPUExecutionProvider", "batch": 1, "ratio": ratio, "ci_ratio": [low, high]}]


def test_a_slowdown_is_called_slower_and_a_tie_not_significantly_faster():
    # execute: Magika's dynamic int8 at 0.31x, paired; an interval either side of 1
    slower = pick_final([], [], prefer_quantized=True, paired=_paired(3.2, 3.1, 3.3))
    tie = pick_final([], [], prefer_quantized=True, paired=_paired(1.0, 0.9, 1.1))
    shipped_float = pick_final([], [], paired=_paired(3.2, 3.1, 3.3))
    # assert
    assert slower["final"] == "quantized" and slower["slower"]
    assert slower["why"].endswith("; it is slower (the 99% interval of quantized / float lies above 1), but pick = "
                                  "'quantized' keeps it")
    assert not tie["slower"] and tie["why"].endswith(
        "; it is not significantly faster, but pick = 'quantized' keeps it")
    assert shipped_float["final"] == "float" and shipped_float["why"].endswith(
        "; int8/fp16 is slower here (the 99% interval of quantized / float lies above 1), so the float model ships")


def test_separate_measurements_call_a_slowdown_only_when_every_interval_says_so():
    row = lambda ms, ci: {"provider": "CPUExecutionProvider", "batch": 1, "p50_ms": ms,  # noqa: E731
                          **({"ci95_p50_ms": ci} if ci else {})}
    apart = pick_final([row(1.0, [0.9, 1.1])], [row(3.0, [2.8, 3.2])], prefer_quantized=True)
    overlapping = pick_final([row(1.0, [0.9, 1.1])], [row(1.05, [1.0, 1.2])], prefer_quantized=True)
    unknown = pick_final([row(1.0, None)], [row(3.0, None)], prefer_quantized=True)
    assert apart["slower"] and "it is slower (disjoint 95% intervals)" in apart["why"]
    assert not overlapping["slower"] and "it is not significantly faster" in overlapping["why"]
    assert not unknown["slower"] and "it is not significantly faster" in unknown["why"]
