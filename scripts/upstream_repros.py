"""Minimal reproductions of the upstream defects compress works around, ready to file (this machine cannot reach
GitHub), and a check of whether the installed versions still have them (then the workaround can go).

    .venv/bin/python scripts/upstream_repros.py [--only NAME,...] [--markdown]

Each case builds a graph of a few nodes with onnx.helper in a temporary folder, runs the upstream tool as a user would,
compares with the result the ONNX semantics give (numpy), and prints one line: `reproduces` or `fixed`, with the
figures; `--markdown` prints each as an issue body (title, versions, script, expected, observed) instead. Exit 0 in
both cases: a fixed bug is news, not a failure. The workaround each one has in compress is named in its docstring.
"""
from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _model(nodes: list, inputs: list, outputs: list, inits: list, opset: int = 17) -> Any:
    import onnx
    from onnx import helper

    model = helper.make_model(helper.make_graph(nodes, "repro", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def gemm_bias_per_channel(folder: Path) -> dict:
    """onnxruntime.quantization.quantize_static fails on a Gemm whose bias has shape (1, N) with per_channel=True.

    Exporters write (1, N) biases (jax2tf: Google's Magika), and ORT's own pre-processing fuses MatMul + Add into
    such a Gemm. Workaround: compress.quantize.prepare.flat_gemm_biases reshapes them to (N,)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(1, 4)).astype(np.float32), "C")]
    model = _model([helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="gemm")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], inits)
    onnx.save(model, folder / "gemm.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{"x": rng.normal(size=(4, 8)).astype(np.float32)} for _ in range(2)])

        def get_next(self) -> dict | None:
            return next(self.rows, None)

    flat = onnx.load(folder / "gemm.onnx")
    flat.graph.initializer[1].dims[:] = [4]  # the same bias as (4,)
    onnx.save(flat, folder / "flat.onnx")
    quantize_static(str(folder / "flat.onnx"), str(folder / "flat-int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True)  # quantizes
    try:
        quantize_static(str(folder / "gemm.onnx"), str(folder / "gemm-int8.onnx"), Reader(),
                        quant_format=QuantFormat.QDQ, per_channel=True)
    except Exception as exc:  # noqa: BLE001 - what the bug raises is the observation
        return {"reproduces": True, "observed": f"{type(exc).__name__}: {exc}",
                "expected": "a QDQ model, as with the same bias stored as (4,) (quantized in the same script)"}
    return {"reproduces": False, "observed": "quantized", "expected": "a QDQ model"}


def qlinear_softmax_floor(folder: Path) -> dict:
    """ORT CPU's fused QLinearSoftmax requantizes with floor(1 / y_scale) instead of 1 / y_scale.

    ORT's quantizer itself gives a Softmax output the scale float32(1/255), whose float32 reciprocal is 254.99998, so
    the kernel multiplies by 254: outputs come out one step low where the QDQ graph says otherwise (3.6% of a MiniLM's
    attention probabilities). Workaround: compress.quantize.qdq.pinned_softmax_scales picks the largest float32 scale
    whose reciprocal floors to 255."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    scale = np.float32(1 / 255)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(scale, "ys"), numpy_helper.from_array(np.uint8(0), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("Softmax", ["xd"], ["p"], axis=-1),
             helper.make_node("QuantizeLinear", ["p", "ys", "yz"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "ys", "yz"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])], inits)
    x = np.random.default_rng(0).normal(0, 2, (256, 16)).astype(np.float32)
    plain = ort.SessionOptions()  # the graph as written: no fusion into QLinearSoftmax
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = ort.InferenceSession(model.SerializeToString(), plain, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    low = float(np.mean(np.round((want - got) / scale) >= 1))
    return {"reproduces": low > 0.001, "observed": f"{100 * low:.1f}% of the outputs one or more steps (1/255) "
            "lower than the same graph run with ORT_DISABLE_ALL",
            "expected": "the values of the graph as written (ORT_DISABLE_ALL): round(p / y_scale) * y_scale"}


def htp_reciprocal_small_range(folder: Path) -> dict:
    """QNN's HTP Reciprocal (onnxruntime-qnn, simulated HTP) misreads a uint8 input whose range ends under about 1.

    With an input scale of 0.0005 (Magika's 1 / sqrt(variance + eps): range 0 to 0.13) it returns about 255 / code,
    as if the scale were 1/255; ORT CPU and HTP's Div(1, x) read the same graph right. Workaround:
    compress.edge.ranges.reciprocals_as_division writes each Reciprocal(x) as Div(1, x)."""
    import onnx
    import onnxruntime as ort

    from compress.edge.qnn import htp_session, quantize_for_qnn

    if "QNNExecutionProvider" not in ort.get_available_providers():
        try:
            import onnxruntime_qnn  # noqa: F401 - the plugin registers the provider
        except ImportError:
            return {"reproduces": None, "observed": "onnxruntime-qnn is not installed", "expected": "-"}
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Mul", ["x", "x"], ["v"]), helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]), helper.make_node("Reciprocal", ["s"], ["y"], name="recip")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                   [numpy_helper.from_array(np.array(1e-3, np.float32), "eps")])
    onnx.save(model, folder / "rsqrt.onnx")
    x = np.random.default_rng(2).normal(0, 0.05, (24, 16)).astype(np.float32)
    qdq = quantize_for_qnn(folder / "rsqrt.onnx", folder / "rsqrt.qdq.onnx", {"x": x})
    cpu = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    htp = htp_session(qdq, fallback=False)
    on_cpu = np.concatenate([cpu.run(None, {"x": r[None]})[0] for r in x])
    on_htp = np.concatenate([htp.run(None, {"x": r[None]})[0] for r in x])
    ratio = float(np.median(on_htp / np.where(on_cpu == 0, 1, on_cpu)))
    return {"reproduces": abs(ratio - 1) > 0.2,
            "observed": f"HTP / ORT CPU on the same QDQ graph: median ratio {ratio:.3f} (max |diff| "
                        f"{np.abs(on_htp - on_cpu).max():.2f}, outputs up to {np.abs(on_cpu).max():.1f})",
            "expected": "the values ORT CPU computes from the same QDQ graph (ratio 1)"}


CASES: dict[str, tuple[str, str, Callable[[Path], dict]]] = {
    "gemm-bias": ("microsoft/onnxruntime", "quantize_static(per_channel=True) fails on a Gemm with a (1, N) bias",
                  gemm_bias_per_channel),
    "qlinear-softmax": ("microsoft/onnxruntime", "QLinearSoftmax (CPU) requantizes with floor(1 / y_scale): "
                        "ORT's own 1/255 scale reads as 1/254", qlinear_softmax_floor),
    "htp-reciprocal": ("microsoft/onnxruntime (QNN EP) / Qualcomm QAIRT", "HTP Reciprocal misreads a uint8 input "
                       "whose range ends under 1", htp_reciprocal_small_range),
}


def _versions() -> str:
    import onnx
    import onnxruntime as ort

    parts = [f"onnxruntime {ort.__version__}", f"onnx {onnx.__version__}", f"Python {sys.version.split()[0]}"]
    try:
        from importlib.metadata import version

        parts.append(f"onnxruntime-qnn {version('onnxruntime-qnn')}")
    except Exception:  # noqa: BLE001 - not installed
        pass
    return ", ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--markdown", action="store_true", help="print each case as an issue body")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"error: --only: no case {unknown[0]!r}; the cases are {', '.join(CASES)}", file=sys.stderr)
        return 2
    versions = _versions()
    for name in names:
        project, title, case = CASES[name]
        with tempfile.TemporaryDirectory(prefix=f"repro-{name}-") as tmp:
            got = case(Path(tmp))
        state = {True: "reproduces", False: "fixed", None: "not run"}[got["reproduces"]]
        if not args.markdown:
            print(f"{name}: {state}: {got['observed']}")
            continue
        source = textwrap.dedent(inspect.getsource(case))
        print(f"## {title}\n\nProject: {project}. Versions: {versions}. Status here: {state}.\n\n"
              f"{inspect.cleandoc(case.__doc__ or '')}\n\nExpected: {got['expected']}.\n\n"
              f"Observed: {got['observed']}.\n\nReproduction (with `_model` from scripts/upstream_repros.py: "
              f"onnx.helper.make_model, opset 17):\n\n```python\n{source}```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
