"""Qualcomm NPU (QNN execution provider, HTP backend), measured rather than guessed.

`onnxruntime-qnn` is a plugin execution provider for the onnxruntime we already use; its x86_64 Linux wheel ships
the HTP backend library, which simulates the Snapdragon NPU. Here: register the plugin, quantize with ONNX
Runtime's QNN settings (`get_qnn_qdq_config`), open sessions on HTP with or without CPU fallback, and read which
nodes HTP took from the provider itself: the EPContext model it writes keeps every node it refused as an ordinary
ONNX node, and its own validation log (ORT verbose level) says why each was refused.
The flow that strings these together is compress.edge.qnn_flow.
"""
from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from compress.errors import CompressError, first_line
from compress.progress import quiet_fd

log = logging.getLogger("compress")

if TYPE_CHECKING:
    import numpy as np

EP = "QNNExecutionProvider"
INSTALL = "pip install onnxruntime-qnn (the qnn extra: the QNN plugin for onnxruntime >= 1.24.2)"
"""The install line shown wherever QNN is not installed."""

ActivationType = Literal["uint8", "uint16", "mixed"]

_registered: dict[str, Any] = {}


def qnn_status() -> dict[str, Any]:
    """{"installed", "version", "library", "reason"}; registers the plugin with onnxruntime on first success.

    A missing `onnxruntime_qnn` is a fact about this machine, not a failure of the model: callers report it
    with the install line instead of raising.
    """
    if "status" in _registered:
        return dict(_registered["status"])
    try:
        import onnxruntime_qnn
    except ImportError:
        return {"installed": False, "version": None, "library": None, "reason": f"not installed; {INSTALL}"}
    import onnxruntime as ort

    library = onnxruntime_qnn.get_library_path()
    try:
        ort.register_execution_provider_library(EP, library)
    except Exception as exc:  # registered earlier in this process by someone else: fine
        if "already registered" not in str(exc):
            return {"installed": False, "version": onnxruntime_qnn.__version__, "library": library,
                    "reason": f"onnxruntime {ort.__version__} could not load the QNN plugin: {first_line(exc)}"}
    status = {"installed": True, "version": onnxruntime_qnn.__version__, "library": library, "reason": None}
    _registered["status"] = status
    return dict(status)


def require_qnn() -> dict[str, Any]:
    """qnn_status(), or CompressError with the install line when QNN cannot be used here."""
    status = qnn_status()
    if not status["installed"]:
        raise CompressError(f"provider qnn: onnxruntime-qnn is {status['reason']}")
    return status


def htp_session(model_path: Path, *, fallback: bool, provider_options: dict[str, str] | None = None,
                config: dict[str, str] | None = None, optimized: bool = True, log_level: int = 4) -> Any:
    """A session on QNN's HTP backend. Without `fallback`, creation fails unless HTP takes every node.

    `provider_options` go to the QNN EP (backend_type defaults to "htp"; e.g. htp_arch, soc_model for a phone's
    chip), `config` to the session config entries (ep.context_* ...). ORT exceptions propagate to the caller,
    who knows whether a refusal is a finding or an error.
    """
    import onnxruntime as ort

    require_qnn()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP]
    opts = ort.SessionOptions()
    opts.log_severity_level = log_level  # 4: refusals are findings here, the caller reports them
    if not optimized:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not fallback:
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, str(value))
    options = {"backend_type": "htp", **{str(k): str(v) for k, v in (provider_options or {}).items()}}
    opts.add_provider_for_devices(devices, options)
    with quiet_fd(1):  # the HTP library prints a banner on stdout when it loads
        return ort.InferenceSession(str(model_path), opts)


def quantize_for_qnn(onnx_path: Path, out_path: Path, calibration: "dict[str, np.ndarray] | list[dict]", *,
                     activation_type: ActivationType = "uint8", weight_type: Literal["uint8", "int8"] = "uint8",
                     per_channel: bool = True, batch: int = 1, outlier_ratio: float | None = 64.0,  # quantize's
                     axes: "dict[str, int | None] | None" = None, sixteen_bit: "list[str] | None" = None,
                     ranges: Path | None = None) -> Path:
    """QDQ model with ONNX Runtime's QNN settings (qnn_preprocess_model, get_qnn_qdq_config), calibrated on
    `calibration` ({input name: rows}, in batches of `batch` cut along each input's batch axis, `axes`: a
    fixed-shape model takes exactly its batch; or a list
    of such feeds, one batch each, for a model with dynamic shapes). Tensors
    whose calibrated range is infinite (a -inf attention mask) stay float (compress.quantize.qdq).

    Convolution weights are symmetric int8 per output channel by default (`per_channel`, PER_CHANNEL_AXIS), which
    HTP runs; other weights are `weight_type` per tensor, ORT's QNN default (which convolutions had too: PP-OCRv4's
    recogniser read cosine 0.78 to fp32 on HTP with it). A model whose opset is under 13 (DequantizeLinear's axis)
    is converted to 13 first; where that fails, its convolution weights stay per tensor. `sixteen_bit`: activations
    that take 16-bit codes besides the outliers (compress.edge.mixed; names the pre-processed graph no longer has are
    skipped). `ranges`: ORT's calibration cache for this model and data, written by the first call and read by the
    next (the ranges do not depend on the widths)."""
    import shutil

    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    import numpy as np

    from compress.onnx.skeleton import graph_of
    from compress.quantize.attempts import batched
    from compress.quantize.outliers import describe, outlier_activations
    from compress.quantize.sensitivity import feeds_reader

    types = {"uint8": QuantType.QUInt8, "uint16": QuantType.QUInt16, "int8": QuantType.QInt8}
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="compress-qnn-") as tmp:
        src, per_channel, props = prepared_for_qnn(Path(onnx_path), Path(tmp), per_channel)
        try:
            feeds = list(calibration) if isinstance(calibration, list) else batched(dict(calibration), batch, axes)
            wide = outlier_activations(src, feeds, outlier_ratio) if outlier_ratio and activation_type != "uint16" \
                else []
            overrides = {name: [{"quant_type": QuantType.QUInt16}] for name, _ in wide}
            if sixteen_bit:
                graph = graph_of(src).graph
                present = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
                overrides.update({name: [{"quant_type": QuantType.QUInt16}] for name in sixteen_bit
                                  if name in present})
            if per_channel:  # convolution weights only: ORT's per_channel would take Gemm and norms too
                overrides.update({name: [{"quant_type": QuantType.QInt8, "symmetric": True, "axis": axis}]
                                  for name, axis in conv_weights(src).items()})
            cfg = get_qnn_qdq_config(str(src), feeds_reader(feeds),
                                     activation_type=types[activation_type], weight_type=types[weight_type],
                                     init_overrides=overrides or None)
            if wide:
                log.info("quantize for QNN: 16-bit codes for %s", describe(wide))
            with quiet_fd(2), np.errstate(divide="ignore", invalid="ignore"):  # an infinite range: kept float
                _quantize(src, Path(tmp) / "qdq.onnx", cfg, ranges)
        except CompressError:
            raise
        except Exception as exc:
            raise CompressError(f"{onnx_path}: QNN QDQ quantization failed ({first_line(exc)}); check that the "
                                "model runs on ORT CPU with the calibration data") from None
        out_path.parent.mkdir(parents=True, exist_ok=True)
        _finite_ranges(Path(tmp) / "qdq.onnx")
        shutil.move(str(Path(tmp) / "qdq.onnx"), out_path)
    if props:
        from compress.onnx.graph import set_metadata

        set_metadata(out_path, props)
    return out_path


def prepared_for_qnn(onnx_path: Path, tmp: Path, per_channel: bool = True) -> tuple[Path, bool, dict[str, str]]:
    """The float graph ORT's QNN quantizer reads, written in `tmp`: metadata set aside, opset 13 for per-channel
    axes where needed, then ORT's qnn_preprocess_model (its fusions). Returns (path, whether per-channel weights
    are possible, the metadata to put back on the QDQ model)."""
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    # ORT's QNN helpers trip on metadata_props (a TypeError inside qnn_preprocess_model): set them aside on a copy
    bare, props = _without_metadata(Path(onnx_path), tmp / "bare.onnx")
    if per_channel:
        bare, per_channel = _opset_for_axes(bare, tmp / "opset13.onnx")
    pre = tmp / "pre.onnx"
    return (pre if qnn_preprocess_model(str(bare), str(pre)) else bare), per_channel, props


def _quantize(src: Path, out: Path, cfg: Any, ranges: Path | None) -> None:
    """ORT's quantize() for a StaticQuantConfig, with its calibration cache at `ranges` where this ORT has one."""
    from onnxruntime.quantization import quantize, quantize_static

    from compress.quantize.calibrate import supported

    if ranges is None or not supported():
        quantize(str(src), str(out), cfg)
        return
    quantize_static(str(src), str(out), cfg.calibration_data_reader, calibrate_method=cfg.calibrate_method,
                    quant_format=cfg.quant_format, activation_type=cfg.activation_type, weight_type=cfg.weight_type,
                    op_types_to_quantize=cfg.op_types_to_quantize, nodes_to_quantize=cfg.nodes_to_quantize,
                    nodes_to_exclude=cfg.nodes_to_exclude, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                    use_external_data_format=cfg.use_external_data_format,
                    calibration_providers=cfg.calibration_providers, extra_options=cfg.extra_options,
                    calibration_cache_path=str(ranges))


PER_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1}
"""The ops whose weights HTP takes per output channel, and that channel's axis. With ORT's own per_channel, its
quantizer writes Gemm and normalisation weights per channel too, as int8, which HTP refuses ("Failed to add node",
"Batchnorm unsupported datatype"): those keep ORT's QNN default, uint8 per tensor."""


def conv_weights(path: Path) -> dict[str, int]:
    """{weight initializer: its output-channel axis} for every Conv, and every ConvTranspose of one group (with
    more, its axis 1 holds C_out / group channels: HTP read such a model lower, or failed to finalize it), with a
    float weight that only such nodes of the same axis read (a weight also reshaped into a MatMul, or shared with
    a ConvTranspose, stays per tensor)."""
    import onnx

    from compress.onnx.skeleton import graph_of

    graph = graph_of(path).graph  # names, types and uses: no weight is read
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    axes: dict[str, set] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in floats:
                group = next((a.i for a in node.attribute if a.name == "group"), 1)
                eligible = k == 1 and node.op_type in PER_CHANNEL_AXIS and \
                    (node.op_type == "Conv" or group == 1)
                axes.setdefault(name, set()).add(PER_CHANNEL_AXIS[node.op_type] if eligible else None)
    return {name: next(iter(found)) for name, found in axes.items() if len(found) == 1 and None not in found}


def _opset_for_axes(path: Path, copy: Path) -> tuple[Path, bool]:
    """(`path` or a copy converted to opset 13, True) where per-channel DequantizeLinear (its axis, opset 13) can be
    written; (`path`, False) when the model's opset is lower and onnx's converter cannot raise it."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return path, True
    try:
        onnx.save(version_converter.convert_version(model, 13), str(copy))
    except Exception as exc:  # the converter has no adapter for some op: per tensor, as before
        log.info("quantize for QNN: weights per tensor (opset %d, not convertible to 13: %s)", opset, first_line(exc))
        return path, False
    return copy, True


def _finite_ranges(path: Path) -> None:
    """The QDQ model at `path` with tensors of infinite range kept in float and scales every implementation reads
    alike (compress.quantize.qdq.readable_scales), saved back when either changed it."""
    import onnx

    from compress.quantize.qdq import infinite_ranges_in_float, readable_scales

    model = onnx.load(str(path))
    infinite = infinite_ranges_in_float(model)
    if readable_scales(model) or infinite:
        onnx.save(model, str(path))


def _without_metadata(path: Path, copy: Path) -> tuple[Path, dict[str, str]]:
    """`path` itself when it has no metadata_props, else a copy without them, and the props that were set aside."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if not model.metadata_props:
        return path, {}
    props = {p.key: p.value for p in model.metadata_props}
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(copy))
    return copy, props


_SOURCE = ("EPContext model written by the QNN EP (refused nodes stay plain ONNX nodes) and the EP's verbose "
           "validation log (reasons)")
_NODE_LINE = re.compile(r"^\s*Operator type: (\S+) Node name: (.*) Node index: \d+\s*$")
_UNIT_LINE = re.compile(r"Validation (PASSED|FAILED) for \d+ nodes in OrtNodeUnit")


def parse_validation_log(text: str) -> dict[str, dict[str, Any]]:
    """{node name: {"op_type", "passed", "reason"}} from the QNN EP's verbose LogNodeSupport lines; a later
    capability pass (after the layout transform) overrides an earlier one."""
    found: dict[str, dict[str, Any]] = {}
    unit: list[str] = []
    passed = False
    for line in text.splitlines():
        head = _UNIT_LINE.search(line)
        if head:
            unit, passed = [], head.group(1) == "PASSED"
            continue
        node = _NODE_LINE.match(line)
        if node:
            found[node.group(2)] = {"op_type": node.group(1), "passed": passed, "reason": None}
            unit.append(node.group(2))
        elif line.strip().startswith("REASON :"):
            for name in unit:
                found[name]["reason"] = line.split("REASON :", 1)[1].strip()
    return found


def placement(model_path: Path, context_path: Path, *, provider_options: dict[str, str] | None = None) -> dict:
    """Which nodes of `model_path` the HTP backend takes, measured by the provider; also writes the EPContext
    model (the precompiled QNN context binary, embedded) to `context_path`.

    One session with CPU fallback allowed and graph optimizations off, so node names stay those of the file:
    every node left as a plain node in the EPContext model is one HTP refused (none written: it took nothing);
    the QNN EP's verbose validation log gives the reason per refused node. Graph I/O (de)quantization stays on
    HTP (offload_graph_io_quantization = 0), as it must when the phone app disables CPU fallback.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    nodes = {n.name or f"#{i}": n.op_type for i, n in enumerate(model.graph.node)}
    context_path = Path(context_path)
    context_path.unlink(missing_ok=True)
    config = {"ep.context_enable": "1", "ep.context_file_path": str(context_path), "ep.context_embed_mode": "1"}
    options = {"offload_graph_io_quantization": "0", **(provider_options or {})}
    with tempfile.TemporaryDirectory(prefix="compress-qnn-log-") as tmp:
        log_path = Path(tmp) / "ort.log"
        error = None
        try:
            with quiet_fd(2, into=log_path):
                htp_session(model_path, fallback=True, provider_options=options, config=config, optimized=False,
                            log_level=0)
        except Exception as exc:  # HTP validated nodes it then failed to compile: a finding about the model
            error = first_line(exc)
        validation = parse_validation_log(log_path.read_text(errors="replace"))
    if error is not None:
        context_path.unlink(missing_ok=True)
        claimed = [name for name, v in validation.items() if v["passed"] and name in nodes]
        return {"nodes_total": len(nodes), "nodes_on_htp": 0, "share_on_htp": 0.0, "partitions": 0, "taken": [],
                "refused": [{"name": n, "op_type": op, "reason": f"accepted, then the graph failed to compile: {error}"}
                            for n, op in nodes.items() if n in claimed]
                + [{"name": n, "op_type": op, "reason": (validation.get(n) or {}).get("reason")}
                   for n, op in nodes.items() if n not in claimed],
                "context_path": None, "compile_error": error, "source": _SOURCE}
    written = context_path.is_file()
    left = ({n.name for n in onnx.load(str(context_path), load_external_data=False).graph.node
             if n.op_type != "EPContext"} if written else set(nodes))
    partitions = (sum(n.op_type == "EPContext" for n in onnx.load(str(context_path),
                                                                  load_external_data=False).graph.node)
                  if written else 0)
    refused = [{"name": name, "op_type": op, "reason": (validation.get(name) or {}).get("reason")}
               for name, op in nodes.items() if name in left]
    return {
        "nodes_total": len(nodes),
        "nodes_on_htp": len(nodes) - len(refused),
        "share_on_htp": (len(nodes) - len(refused)) / len(nodes) if nodes else 0.0,
        "partitions": partitions,
        "taken": [{"name": name, "op_type": op} for name, op in nodes.items() if name not in left],
        "refused": refused,
        "context_path": str(context_path) if written else None,
        "compile_error": None,
        "source": _SOURCE,
    }


def runs_without_fallback(model_path: Path, *, provider_options: dict[str, str] | None = None) -> dict:
    """{"ok", "error"}: whether a session on HTP opens with CPU fallback disabled (what a phone app that wants
    the whole model on the NPU sets)."""
    try:
        htp_session(model_path, fallback=False, provider_options=provider_options)
    except Exception as exc:
        return {"ok": False, "error": first_line(exc)}
    return {"ok": True, "error": None}
