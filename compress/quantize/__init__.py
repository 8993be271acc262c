"""Quantization on ONNX Runtime: int8 static/dynamic or fp16, accuracy-gated, picked by measured latency.

`quantize` (api) is what both the pipeline's quantize stage and `compress quantize` call; `attempts` holds one
attempt's pieces; `outliers` finds the activations a few channels dominate, kept float in every static attempt;
`dynamic` holds the dynamic int8 remedies of a MatMul/Gemm graph (the last of them keeps the layers that write those
activations float); `sensitivity` ranks nodes for the keep-in-float remedy; `timing` measures the float and
quantized models and picks between them; `lean` keeps the model's copies and scratch files few.
"""
from __future__ import annotations

from compress.quantize.api import attempts_table, quantize, quantize_arrays
from compress.quantize.config import QuantizeConfig
from compress.quantize.timing import pick_final

__all__ = ["QuantizeConfig", "attempts_table", "pick_final", "quantize", "quantize_arrays"]
