"""The [quantize] section: what to try first, the accuracy budget, and how the final model is picked."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compress.section import Section

Method = Literal["mean_minmax", "minmax", "entropy", "percentile"]
METHODS: tuple[str, ...] = ("mean_minmax", "minmax", "entropy", "percentile")

OUTLIER_RATIO = 64.0
"""[quantize] outlier_ratio's default (compress.quantize.outliers): at 64x the median channel spans under 4 of 255
codes. compress.edge.qnn and compress.edge.qnn_flow repeat it as their own default, to stay light to import."""

# Providers that run fp16 kernels natively; on the others an fp16 model mostly pays for casts.
FP16_PROVIDERS: frozenset[str] = frozenset(
    {"CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider"}
)


WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")
"""The weighted-ops remedy's op types (`op_types_to_quantize`). By default a PP-OCR detector quantizes 292 tensors,
most of them inside HardSwish chains and Adds, which ORT CPU runs in float anyway (NNCF's graph of it quantizes
125); with only these quantized its cosine drop went from 0.049 to 0.032, the recogniser's from 0.035 to 0.019."""


class QuantizeConfig(Section):
    """The [quantize] section. Defaults are what measured best on an x86 CPU with AVX-512 VNNI / AMX:
    static QDQ, uint8 activations with int8 weights, per-channel weights, no range reduction."""

    mode: Literal["static", "dynamic", "fp16", "qat"] = Field(
        "static",
        description="'static': int8 with calibrated activation ranges (QDQ), best for conv nets; 'dynamic': "
        "int8 weights, activation ranges computed at run time, for Linear/MatMul-heavy models; 'fp16': half "
        "precision, for GPU providers; 'qat' (pipelines only): 'static', then the same QDQ graph fine-tuned against "
        "the teacher with fake quantization that matches ONNX Runtime's (quantization-aware distillation), both "
        "gated and shown side by side.",
    )
    qat_epochs: int = Field(
        3, ge=1, description="mode = 'qat': epochs of quantization-aware distillation (the task's loss against the "
        "teacher), the best validation epoch kept."
    )
    qat_steps: int | None = Field(
        None, ge=1, description="mode = 'qat': optimiser steps per QAT epoch, at most (each epoch a new shuffled "
        "subset of the training rows, validated after it); default: a whole pass. Fine-tuning from the post-training "
        "values needs a fraction of distillation's steps, and a QAT step costs several float ones."
    )
    qat_lr: float | None = Field(
        None, gt=0, description="mode = 'qat': learning rate of the fine-tuning (cosine decay, no warm-up); default: "
        "a tenth of the student's distillation rate."
    )
    qat_teacher: Literal["auto", "teacher", "student"] = Field(
        "auto", description="mode = 'qat': what QAT distils from: 'teacher' (the pipeline's), 'student' (the fp32 "
        "student's own outputs on the training rows: QAT then wins back what int8 cost the student) or 'auto': the "
        "student where it reads better than its teacher on validation (a weaker teacher's outputs aim below the "
        "student's own figure), else the teacher; for embeddings (a cosine to the teacher's outputs) the student. A "
        "run that augments its data distils from the teacher."
    )
    qat_freeze_epochs: int = Field(
        1, ge=0, description="mode = 'qat': the last epochs train with the activation ranges frozen (the learned "
        "scales stop moving; batch norm is already folded into the graph's convolutions)."
    )
    outlier_ratio: float | None = Field(
        OUTLIER_RATIO, gt=1, description="Static int8: an activation whose largest |x| is at least this many times "
        "its median channel's (a transformer's residual stream, where a few hidden channels reach 100+) stays float "
        "on ORT CPU (its MatMul then runs as int8 products with a float result) and takes 16-bit codes on the QNN "
        "target; one 8-bit scale would leave the other channels a few codes (64: under 4 of 255). Measured on "
        "calibration rows before quantizing; rank-3 activations only. None: never."
    )
    max_accuracy_drop: float = Field(
        0.005,
        ge=0.0,
        le=1.0,
        description="Largest allowed drop in validation accuracy, absolute fraction (0.005 = 0.5 points), "
        "measured in ONNX Runtime against the float model.",
    )
    max_cosine_drop: float = Field(
        0.02,
        ge=0.0,
        le=2.0,
        description="Embedding task (text: data): largest allowed drop of the mean cosine similarity to the "
        "teacher's embeddings on the validation texts, quantized vs float (0.02: a 0.95 student must stay >= 0.93).",
    )
    max_metric_drop: float = Field(
        0.01,
        ge=0.0,
        description="Tensors task, or your own [evaluate] metric: largest allowed drop of the primary figure, in its "
        "own units (the direction comes from the metric), quantized vs float on the validation split.",
    )
    calibration_method: Method = Field(
        "mean_minmax", description="How static quantization turns calibration activations into ranges; tried "
        "first. 'mean_minmax': the mean of each sample's minimum and maximum (NNCF's default for activations: one "
        "outlier sample cannot stretch a range), and for a tensor of under 10,000 values a sample, whose per-sample "
        "extremes are its typical values, their extremes with the most extreme 5% of samples left out (all of them "
        "under 20 samples; ORT's own calibrator, used where onnxruntime has no calibration cache, takes the mean); "
        "'minmax': the extremes over all samples; 'entropy', 'percentile': histograms (slower)."
    )
    bias_correction: bool = Field(
        True, description="Static: after quantizing, take each Conv and Gemm layer's mean output shift (measured on "
        "the calibration samples, the layer fed float inputs) out of its bias, as NNCF's fast bias correction does."
    )
    calibration_samples: int = Field(
        256, gt=0, description="Training samples used for calibration (a fixed random subset, seed 0)."
    )
    calibration_batch: int = Field(32, gt=0, description="Batch size for calibration and sensitivity runs.")
    per_channel: bool = Field(
        True, description="One weight scale per output channel (more accurate; about 2% slower than per-tensor)."
    )
    quant_format: Literal["qdq", "qoperator"] = Field(
        "qdq", description="'qdq' (QuantizeLinear/DequantizeLinear pairs, what ORT's CPU kernels are tuned for) "
        "or 'qoperator' (QLinearConv and friends)."
    )
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="Activation integer type for static mode; uint8 is the fast path on x86 (u8s8)."
    )
    weight_type: Literal["int8", "uint8"] = Field("int8", description="Weight integer type.")
    reduce_range: bool = Field(
        False, description="7-bit weights; only helps on x86 CPUs without VNNI, which saturate 8-bit products."
    )
    fallback: bool = Field(
        True, description="When the first attempt misses the budget, try the remedies in order automatically: the "
                          "other calibration methods, per-tensor weights, only the ops with weights quantized, "
                          "dynamic int8 (a static search on a graph whose weights are all MatMul or Gemm, unless the "
                          "edge targets include qnn), then the most sensitive nodes in float."
    )
    dynamic_remedy: bool = Field(
        True, description="A static search (mode = 'static') on a graph whose weights are all MatMul or Gemm (a "
                          "transformer, an MLP) tries dynamic int8 after the static remedies: the usual int8 of "
                          "transformers on a CPU. Off: static int8 only, as a target that runs nothing else needs "
                          "(the pipeline turns it off itself when its edge targets include qnn)."
    )
    max_memory_mb: float | None = Field(
        None, gt=0, description="Memory cap of calibration and the sensitivity ranking, which keep activations: "
        "the histogram calibrators and the ranking take the samples that fit, MinMax folds batches into ranges "
        "as it goes; each says what it took. Default: half of the memory available when quantization starts."
    )
    exclude: tuple[str, ...] = Field(
        (), description="Nodes to keep in float in every attempt, by node name or op type (e.g. a detector's head "
        "Concat); the remedies may keep more."
    )
    max_float_nodes: int = Field(
        8, ge=0, description="Most nodes the last remedy may leave in float (tried as 1, 2, 4, ... up to this; it "
                             "stops early once a step wins back under a tenth of the drop's excess over the budget)."
    )
    pick: Literal["fastest", "quantized"] = Field(
        "fastest",
        description="'fastest': final is the fastest model within budget, the float one included; "
        "'quantized': final is the quantized model whenever it meets the budget, even if slower (for size).",
    )

    @model_validator(mode="after")
    def _qat_settings_agree(self) -> "QuantizeConfig":
        """mode = 'qat' contradictions, said when the file loads instead of after training: QAT trains and writes a
        QDQ graph, and ranges frozen for more epochs than QAT runs would never learn. ONNX Runtime's one type pair it
        cannot quantize to (int8 activations with uint8 weights) is said here for every mode: every attempt failed on
        it after training."""
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise ValueError("weight_type: ONNX Runtime does not quantize int8 activations with uint8 weights; use "
                             "weight_type = 'int8' (the default) with activation_type = 'int8', or activation_type = "
                             "'uint8'")
        if self.mode != "qat":
            return self
        if self.quant_format != "qdq":
            raise ValueError("quant_format: mode = 'qat' trains the QDQ graph (QuantizeLinear/DequantizeLinear) and "
                             f"writes one; got '{self.quant_format}': use quant_format = 'qdq' (the default)")
        if self.qat_freeze_epochs > self.qat_epochs:
            raise ValueError(f"qat_freeze_epochs: {self.qat_freeze_epochs} frozen epochs of qat_epochs = "
                             f"{self.qat_epochs} would leave the activation ranges never learned; use at most "
                             f"{self.qat_epochs} (equal: the calibrated ranges kept as they are)")
        return self
