"""export: torch -> ONNX with a dynamic batch axis, checked against torch in ONNX Runtime on real inputs."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.context import StageContext, StageResult
from compress.errors import CompressError
from compress.section import Section


class ExportConfig(Section):
    """[export]: how models become ONNX, and how closely ONNX Runtime must agree with torch."""

    opset: int = Field(18, ge=13, le=23, description="ONNX opset version.")
    exporter: Literal["torchscript", "dynamo"] = Field("torchscript", description="torch.onnx.export path: the "
                                                       "TorchScript exporter (fast, mature) or the dynamo exporter.")
    parity_atol: float = Field(1e-4, gt=0, description="Largest allowed |torch - ORT| over the validation set; "
                               "a larger difference fails the stage.")
    ort_format: bool = Field(False, description="Also write an ORT-format copy of the final model with its "
                             "reduced-operator config, and an edge-readiness section in the report.")
    fixed_batch: int | None = Field(None, ge=1, description="Fix the batch dimension of the edge copy (mobile "
                                    "providers such as NNAPI and CoreML want static shapes).")


def export_onnx(model, example_input, path: Path, *, opset: int = 18, exporter: str = "torchscript") -> Path:
    """Export a deep copy of `model` (export may mutate a live module) to `path`, atomically, batch axis dynamic."""
    import copy
    import io
    import warnings

    import torch

    from compress.cache import atomic_path

    model = copy.deepcopy(model).eval()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if exporter == "dynamo":
                import inspect

                arg = next(iter(inspect.signature(model.forward).parameters))
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                program = torch.onnx.export(model, (example_input,), dynamo=True, opset_version=opset,
                                            input_names=["input"], output_names=["logits"],
                                            dynamic_shapes={arg: {0: batch}}, verbose=False)
                program.save(str(tmp))
            else:
                buf = io.BytesIO()
                torch.onnx.export(model, (example_input,), buf, dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
                tmp.write_bytes(buf.getvalue())
        except CompressError:
            raise
        except Exception as exc:
            msg = " ".join(str(exc).split())[:300]
            raise CompressError(f"{path.name}: torch.onnx.export ({exporter}) failed: {type(exc).__name__}: {msg}; "
                                "try [export] exporter = 'dynamo' or another opset") from exc
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise CompressError(f"{path}: exported model fails the ONNX checker: {exc}") from exc
    return path


def parity(onnx_path: Path, reference, x) -> dict:
    """Compare ORT (CPU) outputs with torch `reference` logits on inputs `x`: max abs diff and top-1 agreement."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    xs = x.numpy()
    out = np.concatenate([sess.run(None, {name: xs[i:i + 256]})[0] for i in range(0, len(xs), 256)])
    ref = reference.numpy()
    return {"max_abs_diff": float(np.max(np.abs(out - ref))),
            "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))), "samples": int(len(xs))}


def run(ctx: StageContext) -> StageResult:
    """Export every torch model so far (teacher, student, control, pruned) and check each against torch."""
    from compress.training import predict_logits

    ecfg = ctx.cfg.export
    result = StageResult()
    for name, rec in ctx.models.items():
        if "torch" not in rec:
            continue
        model = ctx.load_torch(name)
        reference = predict_logits(model, ctx.data.x_val)  # before export: export can mutate a live model
        path = export_onnx(model, ctx.data.example(2), ctx.stage_dir / f"{name}.onnx", opset=ecfg.opset,
                           exporter=ecfg.exporter)
        check = parity(path, reference, ctx.data.x_val)
        if not check["max_abs_diff"] <= ecfg.parity_atol:
            raise CompressError(f"{ctx.origin('export.parity_atol')}: {name}.onnx differs from torch by "
                                f"{check['max_abs_diff']:.3g} (allowed {ecfg.parity_atol:g}) on the validation set; "
                                "the export is wrong, not just imprecise: try another exporter or opset")
        result.artifacts.append(ctx.rel(path))
        result.models[name] = {**rec, "onnx": ctx.rel(path), "parity": check}
    return result
