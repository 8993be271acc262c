"""torch -> ONNX: a deep copy of the model exported with its inputs' names and dynamic axes and the task's output
names, atomically, checked by onnx."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from pydantic import Field, model_validator

from compress.errors import CompressError, first_line
from compress.section import Section


class ExportConfig(Section):
    """[export]: how models become ONNX, and how closely ONNX Runtime must agree with torch."""

    opset: int = Field(18, ge=13, le=23, description="ONNX opset version.")
    exporter: Literal["torchscript", "dynamo"] = Field("torchscript", description="torch.onnx.export path: the "
                                                       "TorchScript exporter (fast, mature) or the dynamo exporter.")
    parity_atol: float = Field(1e-4, gt=0, description="Absolute tolerance of torch vs ORT over the validation "
                               "set: |ort - torch| <= parity_atol + parity_rtol * |torch| everywhere, or the "
                               "stage fails.")
    parity_rtol: float = Field(1e-5, ge=0, description="Relative tolerance of the same check (fp32 rounding grows "
                               "with the outputs' magnitude).")
    ort_format: bool = Field(False, description="Also write an ORT-format copy of the final model with its "
                             "reduced-operator config, and an edge-readiness section in the report.")
    fixed_batch: int | None = Field(None, ge=1, description="Fix the batch dimension of the edge copy (mobile "
                                    "providers such as NNAPI and CoreML want static shapes).")
    edge_targets: tuple[Literal["qnn"], ...] = Field((), description="Edge targets measured on their own backend "
                                                     "in the edge stage: 'qnn' = QNN EP, HTP (Snapdragon NPU) "
                                                     "backend, simulated by onnxruntime-qnn (the qnn "
                                                     "extra): placement, accuracy, EPContext model. "
                                                     "Needs ort_format = true.")
    optimize: Literal["none", "transformer"] = Field("none", description="Text models: 'transformer' runs ONNX "
                                                     "Runtime's transformer optimizer (fused attention, LayerNorm, "
                                                     "GELU) on each export and keeps the result only where it "
                                                     "measures faster than the plain graph (with a parity check).")
    qnn_activation_type: Literal["uint8", "uint16"] = Field("uint8", description="Activation type of the QNN QDQ "
                                                            "model (uint16: more accurate, slower on the NPU).")
    qnn_options: dict[str, str | int] = Field(default_factory=dict, description="QNN EP provider options for the "
                                              "qnn edge target: the phone's chip, e.g. { soc_model = 60 } "
                                              "(Snapdragon 8 Gen 3) or { htp_arch = 73 }. The simulator's default "
                                              "chip has the least memory: a large graph may not finalize on it.")
    qnn_samples: int = Field(1000, ge=1, description="Examples of the evaluation split the QNN target's accuracy "
                             "rows run on (the HTP backend is simulated on x86 here, one example at a time, and "
                             "slow: a 3-layer MiniLM at 128 tokens takes a sizeable fraction of a second each).")

    @model_validator(mode="after")
    def _targets_need_edge_stage(self) -> "ExportConfig":
        if self.edge_targets and not self.ort_format:
            raise ValueError("edge_targets run in the edge stage: set ort_format = true as well")
        return self


def export_onnx(model, example_input, path: Path, *, opset: int = 18, exporter: str = "torchscript", inputs=None,
                output_names: Sequence[str] = ("logits",), params: bool = True) -> Path:
    """Export a deep copy of `model` (export may mutate a live module) to `path`, atomically, in eval mode.

    `inputs` (compress.data.inputs; one tensor named 'input' by default) gives the input names, the export's
    arguments and the dynamic axes (batch; and sequence for token ids); `output_names` names the outputs in the
    order forward returns them (a dict's keys, a tuple's items), each with a dynamic batch axis. `params=False`
    (TorchScript only) leaves the weights out: the graph alone, as a trial of whether it exports."""
    import copy
    import io
    import warnings

    import torch

    from compress.cache import atomic_path
    from compress.data.inputs import TensorInputs

    inputs = inputs or TensorInputs()
    names = list(output_names)
    model = copy.deepcopy(model).eval()
    axes = {**inputs.dynamic_axes(), **{n: {0: "batch"} for n in names}}
    if exporter == "dynamo" and inputs.kind != "tensor":
        raise CompressError(f"{path.name}: export.exporter: 'dynamo' is used here for models with one tensor input; "
                            "keyword inputs (token ids, named tensors) export with 'torchscript'")
    with atomic_path(path) as tmp, warnings.catch_warnings(), _native_output():
        warnings.simplefilter("ignore")
        try:
            if exporter == "dynamo":
                import inspect

                arg = next(iter(inspect.signature(model.forward).parameters))
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                program = torch.onnx.export(model, (example_input,), dynamo=True, opset_version=opset,
                                            input_names=list(inputs.names), output_names=names,
                                            dynamic_shapes={arg: {0: batch}}, verbose=False)
                program.save(str(tmp))
            else:
                buf = io.BytesIO()
                torch.onnx.export(model, inputs.export_args(example_input), buf, dynamo=False, opset_version=opset,
                                  input_names=list(inputs.names), output_names=names, dynamic_axes=axes,
                                  export_params=params)
                tmp.write_bytes(buf.getvalue())
        except CompressError:
            raise
        except Exception as exc:
            raise CompressError(f"{path.name}: torch.onnx.export ({exporter}) failed: {type(exc).__name__}: "
                                f"{first_line(exc).split(' [Caused by ')[0]}; {_export_advice(model, inputs)}") from exc
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise CompressError(f"{path}: exported model fails the ONNX checker: {first_line(exc)}") from exc
    return path


@contextlib.contextmanager
def _native_output() -> Iterator[None]:
    """What torch's exporter prints past Python (the TorchScript IR of the whole graph, dozens of lines, before an
    unsupported op's exception) kept off the terminal; on an exception it goes to the debug log (-v)."""
    import tempfile

    from compress.progress import quiet_fd

    with tempfile.TemporaryDirectory(prefix="compress-export-") as tmp:
        logs = (Path(tmp) / "stdout.txt", Path(tmp) / "stderr.txt")
        try:
            with quiet_fd(1, into=logs[0]), quiet_fd(2, into=logs[1]):
                yield
        except BaseException:
            said = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
            logging.getLogger(__name__).debug("torch.onnx.export printed: %s", said)
            raise


def _export_advice(model: Any, inputs: Any) -> str:
    """What to try after a failed export: a forward(**kwargs) with named inputs cannot be traced (the inputs need
    names of their own); the dynamo exporter takes one tensor input only here."""
    import inspect

    if inputs.kind != "tensor":
        params = inspect.signature(model.forward).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return (f"name each input as a parameter of forward (forward(self, {', '.join(inputs.names)})): "
                    "forward(**kwargs) cannot be traced with named inputs")
        return "try another opset ('dynamo' takes models with one tensor input only)"
    return "try [export] exporter = 'dynamo' or another opset"


def trial_export(model: Any, data: Any, cfg: ExportConfig, output_names: Sequence[str], origin: str, *,
                 params: bool = False) -> Any:
    """Export the model as the export stage will (the configured exporter and opset, the data's inputs, two rows),
    before any training: an op the exporter cannot take (torch.stft's complex output, Python control flow the
    tracer refuses) is found in a second by `compress validate`, not after the teacher and student have trained.
    The TorchScript exporter only: the dynamo exporter takes seconds even on a tiny model, and its failures are
    rarer (the user chose it, usually because TorchScript failed). Returns the graph (a ModelProto whose weights
    are graph inputs; with `params`, its initializers), or None where nothing was tried."""
    import tempfile

    import onnx

    if cfg.exporter == "dynamo" and getattr(data.inputs, "kind", "tensor") != "tensor":  # what export would refuse
        raise CompressError(f"{origin} cannot be exported with export.exporter = 'dynamo', found before training: "
                            "'dynamo' is used here for models with one tensor input; keyword inputs (token ids, "
                            "named tensors) export with 'torchscript'")
    if cfg.exporter != "torchscript":
        return None
    with tempfile.TemporaryDirectory(prefix="compress-trial-export-") as tmp:
        try:
            export_onnx(model, data.example(2), Path(tmp) / "trial.onnx", opset=cfg.opset, exporter=cfg.exporter,
                        inputs=data.inputs, output_names=output_names, params=params)  # the graph, by default
        except CompressError as exc:
            raise CompressError(f"{origin} cannot be exported to ONNX, found before training: "
                                f"{str(exc).partition(': ')[2]}") from exc
        return onnx.load(str(Path(tmp) / "trial.onnx"), load_external_data=False)
