"""Edge and mobile prep: ORT-format copy, per-provider operator coverage, fixed batch, on-device bench kit.

Everything here leans on ONNX Runtime's own tooling (`onnxruntime.tools`): the ORT-format converter writes the
model and the reduced-operator config a minimal build needs; the mobile usability checker decides which nodes
NNAPI and CoreML would take. Where ONNX Runtime ships no rules for a provider (XNNPACK, QNN) we say so instead of
guessing with a hand-written operator list.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from compress.errors import CompressError, GateFailed
from compress.kit import make_kit

__all__ = ["fix_batch", "make_kit", "ort_parity", "prepare", "readiness", "readiness_table", "to_ort_format"]

if TYPE_CHECKING:
    import numpy as np
    import onnx

Optimization = Literal["disable", "basic", "extended", "all"]


def load_model(onnx_path: Path) -> "onnx.ModelProto":
    """Load and check an ONNX file; a missing, truncated or invalid file is a one-line CompressError."""
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise CompressError(f"{onnx_path}: expected an ONNX model file, got nothing there; check the path")
    try:
        model = onnx.load(str(onnx_path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...: all mean "not a usable model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompressError(
            f"{onnx_path}: expected a valid ONNX model, got {type(exc).__name__}: {first}; re-export the model"
        ) from None
    return model


# ---------------------------------------------------------------------------------------------- ORT format


def to_ort_format(
    onnx_path: Path,
    out_dir: Path,
    *,
    optimization: Optimization = "basic",
    style: Literal["fixed", "runtime"] = "fixed",
    target_platform: Literal["arm", "amd64"] | None = "arm",
    enable_type_reduction: bool = False,
) -> dict:
    """Convert `onnx_path` to ORT format with `onnxruntime.tools.convert_onnx_models_to_ort`.

    Returns {"ort_path", "config_path", "optimization", "style", "bytes", "log"}. `config_path` is the
    reduced-operator configuration to pass to a minimal ORT build (`build.sh --minimal_build
    --include_ops_by_config <config_path>`). `optimization` is the graph level baked into the file ("basic" keeps
    the graph portable across CPUs; "all" may bake in x86-only layouts). `style="runtime"` saves optimizations
    to be replayed at load time, which ORT recommends when NNAPI or CoreML will take part of the graph.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    load_model(onnx_path)  # one clear error for bad input before the converter's own
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The converter works on a directory or a single .onnx file; give it a private copy so a sibling
    # `*.optimized.onnx` or other models next to the user's file never get converted too.
    with tempfile.TemporaryDirectory(prefix="compress-ort-") as tmp:
        src = Path(tmp) / (Path(onnx_path).stem + ".onnx")
        shutil.copyfile(onnx_path, src)
        data = Path(onnx_path).with_suffix(".onnx.data")
        if data.exists():  # external weights travel with the model
            shutil.copyfile(data, Path(tmp) / data.name)
        log = io.StringIO()
        tool_log = logging.getLogger("ort_format_model.utils")  # INFO lines on stderr otherwise
        tool_level = tool_log.level
        tool_log.setLevel(logging.WARNING)
        # The tool reads the level from this environment variable only; set it for this call and put it back.
        key = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"
        previous = os.environ.get(key)
        os.environ[key] = optimization
        try:
            with contextlib.redirect_stdout(log):
                convert_onnx_models_to_ort(
                    src,
                    output_dir=out_dir,
                    optimization_styles=[OptimizationStyle.Fixed if style == "fixed" else OptimizationStyle.Runtime],
                    target_platform=target_platform,
                    enable_type_reduction=enable_type_reduction,
                )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CompressError(
                f"{onnx_path}: ONNX Runtime could not convert the model to ORT format ({first}); "
                "check that it loads with onnxruntime"
            ) from None
        finally:
            tool_log.setLevel(tool_level)
            if previous is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = previous
    suffix = (f".{optimization}" if optimization != "all" else "") + (".with_runtime_opt" if style == "runtime" else "")
    ort_path = out_dir / f"{src.stem}{suffix}.ort"
    config_name = "required_operators_and_types" if enable_type_reduction else "required_operators"
    config_path = out_dir / f"{src.stem}.{config_name}{suffix}.config"
    if not ort_path.is_file() or not config_path.is_file():
        raise CompressError(f"{onnx_path}: ORT conversion wrote no {ort_path.name} or {config_path.name}; see log")
    return {
        "ort_path": str(ort_path),
        "config_path": str(config_path),
        "optimization": optimization,
        "style": style,
        "target_platform": target_platform,
        "bytes": ort_path.stat().st_size,
        "log": log.getvalue(),
    }


def sample_inputs(model_path: Path, *, batch: int = 1, seed: int = 0) -> dict[str, "np.ndarray"]:
    """Seeded random inputs that fit the model's inputs (symbolic dim 0 -> `batch`), as `compress bench` makes them."""
    from compress.bench.inputs import make_inputs
    from compress.bench.providers import open_session

    session, _ = open_session(model_path, "cpu", threads=1, strict=True)
    return make_inputs(session, batch, seed=seed)


def _session(path: Path, *, ort_format: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if ort_format:
        so.add_session_config_entry("session.load_model_format", "ORT")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def ort_parity(onnx_path: Path, ort_path: Path, inputs: dict[str, "np.ndarray"]) -> dict:
    """Run the ONNX and the ORT-format model on the same inputs (CPU EP); compare every output.

    Returns {"max_abs_diff": largest elementwise |a-b| over all outputs, "top1_agreement": fraction of rows
    whose argmax over the last axis of the first output agrees, "outputs": number compared}.
    """
    import numpy as np

    try:
        reference = _session(Path(onnx_path)).run(None, inputs)
        candidate = _session(Path(ort_path), ort_format=True).run(None, inputs)
    except CompressError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise CompressError(f"{ort_path}: the ORT-format model did not run on the sample inputs ({first})") from None
    max_diff = 0.0
    for ref, got in zip(reference, candidate):
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.shape != got.shape:
            raise CompressError(f"{ort_path}: output shape {got.shape} differs from the ONNX model's {ref.shape}")
        if ref.size:
            max_diff = max(max_diff, float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)))))
    first_ref, first_got = np.asarray(reference[0]), np.asarray(candidate[0])
    if first_ref.ndim >= 1 and first_ref.size:
        top1 = float(np.mean(np.argmax(first_ref, axis=-1) == np.argmax(first_got, axis=-1)))
    else:
        top1 = 1.0 if np.array_equal(first_ref, first_got) else 0.0
    return {"max_abs_diff": max_diff, "top1_agreement": top1, "outputs": len(reference)}


# ----------------------------------------------------------------------------------------------- fixed batch


def dynamic_inputs(model: "onnx.ModelProto") -> list[dict]:
    """Graph inputs whose shape is not fully fixed: [{"name", "shape"}] with symbolic dims as strings."""
    from onnxruntime.tools.onnx_model_utils import is_fixed_size_tensor

    initializers = {init.name for init in model.graph.initializer}
    found = []
    for value in model.graph.input:
        if value.name in initializers or is_fixed_size_tensor(value):
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                for d in value.type.tensor_type.shape.dim]
        found.append({"name": value.name, "shape": dims})
    return found


def fix_batch(onnx_path: Path, out_path: Path, batch: int = 1) -> Path:
    """Write a copy of the model with the first (batch) dimension of every input fixed to `batch`.

    Uses `onnxruntime.tools.onnx_model_utils` (the helpers behind `make_dynamic_shape_fixed`): a symbolic batch
    dim is replaced throughout the graph, an unnamed one on the input; output shapes are re-inferred. Other
    dynamic dimensions are left alone (readiness still reports them).
    """
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed, make_input_shape_fixed

    if batch < 1:
        raise CompressError(f"fixed_batch: expected an integer >= 1, got {batch}; use 1 for on-device inference")
    model = load_model(onnx_path)
    initializers = {init.name for init in model.graph.initializer}
    for value in list(model.graph.input):
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if not dims:
            continue
        first = dims[0]
        if first.HasField("dim_value") and first.dim_value > 0:
            if first.dim_value != batch:
                raise CompressError(
                    f"{onnx_path}: input '{value.name}' already has a fixed batch of {first.dim_value}, "
                    f"not {batch}; re-export with a dynamic batch or use fixed_batch = {first.dim_value}"
                )
            continue
        if first.HasField("dim_param") and first.dim_param:
            make_dim_param_fixed(model.graph, first.dim_param, batch)
        else:
            shape = [batch] + [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims[1:]]
            if any(d < 1 for d in shape):  # other unnamed dims: only the batch dim can be set on the input
                first.Clear()
                first.dim_value = batch
            else:
                make_input_shape_fixed(model.graph, value.name, shape)
    fix_output_shapes(model)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path


# -------------------------------------------------------------------------------------------------- readiness

# (report key, ORT provider, rules file shipped in onnxruntime/tools/mobile_helpers). The rules and the
# partitioning logic are ONNX Runtime's; we only call them and list the outcome node by node.
_CHECKED_PROVIDERS = (
    ("NNAPI", "NnapiExecutionProvider", "nnapi_supported_ops.md"),
    ("CoreML-MLProgram", "CoreMLExecutionProvider", "coreml_supported_mlprogram_ops.md"),
    ("CoreML-NeuralNetwork", "CoreMLExecutionProvider", "coreml_supported_neuralnetwork_ops.md"),
)

_UNCHECKED_PROVIDERS = {
    "XNNPACK": {
        "provider": "XnnpackExecutionProvider",
        "available": False,
        "reason": "onnxruntime.tools ships no XNNPACK operator rules, so which nodes it takes is not known here. "
                  "XNNPACK runs on the CPU: nodes it does not take run on the CPU EP with no device copy, so "
                  "partitions cost little. Measure on the device: bench kit with --provider xnnpack.",
        "wants_fixed_shapes": None,
    },
    "QNN": {
        "provider": "QNNExecutionProvider",
        "available": False,
        "reason": "onnxruntime.tools ships no QNN operator rules (onnxruntime.tools.qnn only preprocesses models). "
                  "The QNN EP needs fixed input shapes, and its HTP (NPU) backend a quantized QDQ model. "
                  "Check on the device with onnxruntime-qnn: bench kit with --provider qnn --strict.",
        "wants_fixed_shapes": True,
    },
}


def _all_graphs(graph: "onnx.GraphProto"):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_graphs(attr.g)
            for sub in attr.graphs:
                yield from _all_graphs(sub)


def _check_provider(model: "onnx.ModelProto", rules_file: str, require_fixed: bool):
    from onnxruntime.tools.mobile_helpers import usability_checker as uc

    if rules_file.startswith("nnapi"):
        return uc.check_nnapi_partitions(model, require_fixed)
    return uc.check_coreml_partitions(model, require_fixed, rules_file)


def _provider_section(model: "onnx.ModelProto", provider: str, rules_file: str, has_dynamic: bool) -> dict:
    from onnxruntime.tools.onnx_model_utils import is_fixed_size_tensor

    info = _check_provider(model, rules_file, require_fixed=True)
    if_fixed = _check_provider(model, rules_file, require_fixed=False) if has_dynamic else None
    partition_of = {id(node): i for i, group in enumerate(info.supported_groups) for node in group}
    taken_if_fixed = ({id(node) for group in if_fixed.supported_groups for node in group}
                      if if_fixed is not None else None)

    shapes = {}
    fixed_names: set[str] = set()
    for graph in _all_graphs(model.graph):
        for value in (*graph.input, *graph.output, *graph.value_info):
            shapes[value.name] = value
        fixed_names.update(init.name for init in graph.initializer)

    def is_fixed(name: str) -> bool:
        if name in shapes:
            return is_fixed_size_tensor(shapes[name])
        return name in fixed_names

    nodes = []
    index = 0
    for graph in _all_graphs(model.graph):
        for node in graph.node:
            entry: dict[str, Any] = {"name": node.name or f"{node.op_type}_{index}", "op_type": node.op_type,
                                     "domain": node.domain or "ai.onnx", "taken": id(node) in partition_of,
                                     "partition": partition_of.get(id(node))}
            if not entry["taken"]:
                # Same order of tests as the checker: operator, then input shapes, then input rank.
                if not info.supported_ops_checker.is_op_supported(node):
                    entry["reason"] = f"operator {entry['domain']}:{node.op_type} not in the {provider} rules"
                elif not all(is_fixed(i) for i in node.input if i):
                    entry["reason"] = "an input has a dynamic shape"
                else:
                    entry["reason"] = "an input's rank is above what the provider supports"
            if taken_if_fixed is not None:
                entry["taken_if_shapes_fixed"] = id(node) in taken_if_fixed
            nodes.append(entry)
            index += 1

    section: dict[str, Any] = {
        "provider": provider,
        "available": True,
        "rules": f"onnxruntime.tools.mobile_helpers/{rules_file}",
        "nodes_total": info.num_nodes,
        "nodes_taken": info.num_supported_nodes,
        "nodes_fallback": info.num_nodes - info.num_supported_nodes,
        "partitions": info.num_partitions,
        "partition_sizes": [len(group) for group in info.supported_groups],
        "suitability": info.suitability().name.lower(),
        "unsupported_ops": sorted(info.unsupported_ops),
        "fallback_due_to_dynamic_shape": info.nodes_unsupported_due_to_dynamic_input,
        "caveats": info.supported_ops_checker.get_caveats(),
        "wants_fixed_shapes": True,
        "nodes": nodes,
    }
    if if_fixed is not None:
        section["if_shapes_fixed"] = {"nodes_taken": if_fixed.num_supported_nodes,
                                      "partitions": if_fixed.num_partitions,
                                      "suitability": if_fixed.suitability().name.lower()}
    return section


def _shape_inferred(onnx_path: Path, optimization: Optimization | None) -> "onnx.ModelProto":
    """The model optimized by ONNX Runtime at `optimization` (None: as is), with ONNX shape inference run."""
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, get_optimization_level, optimize_model

    with tempfile.TemporaryDirectory(prefix="compress-ready-") as tmp:
        analysed = onnx_path
        if optimization is not None:
            analysed = Path(tmp) / onnx_path.name
            optimize_model(onnx_path, analysed, level=get_optimization_level(optimization))
        try:
            return ModelProtoWithShapeInfo(analysed).model_with_shape_info
        except Exception as exc:
            first = str(exc).strip().splitlines()[0]
            raise CompressError(f"{onnx_path}: ONNX shape inference failed ({first}); re-export the model") from None


def readiness(onnx_path: Path, *, optimization: Optimization | None = "basic") -> dict:
    """Edge readiness of a model: per provider, which nodes it takes, which fall back, and in how many partitions.

    The graph analysed is the model optimized at `optimization` (the level `to_ort_format` bakes into the
    ORT-format file, so the nodes listed are the ones the device sees); None analyses the file as is. NNAPI and
    both CoreML formats use ONNX Runtime's mobile usability checker and its shipped operator rules; XNNPACK and
    QNN have no rules in onnxruntime.tools and come back as {"available": False, "reason"}. Inputs with dynamic
    shapes are listed, with what each provider would take if they were fixed (`fix_batch`, `[export] fixed_batch`).
    """
    import onnxruntime as ort
    from onnxruntime.tools.mobile_helpers import usability_checker as uc

    load_model(onnx_path)
    notes = []
    analysed = f"{optimization}-optimized graph (as in the ORT-format file)" if optimization else "as exported"
    model = _shape_inferred(Path(onnx_path), optimization)
    contrib = sorted({f"{n.domain}:{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if optimization in ("extended", "all") and (contrib or (len(model.graph.node) > 1 and not model.graph.value_info)):
        # ORT fused nodes into its own contrib ops, which ONNX shape inference cannot type and NNAPI/CoreML never
        # take; the checker needs shapes, so analyse the basic graph and say why.
        notes.append(f"the {optimization}-optimized graph holds ONNX Runtime contrib ops ({', '.join(contrib)}) "
                     "that NNAPI/CoreML do not take; analysed the basic-optimized graph instead. For NNAPI/CoreML "
                     "convert with optimization='basic' or the runtime optimization style")
        analysed = f"basic-optimized graph (the {optimization} one holds contrib ops)"
        model = _shape_inferred(Path(onnx_path), "basic")
    quiet = logging.getLogger("compress.edge.usability")
    quiet.setLevel(logging.ERROR)
    dynamic = dynamic_inputs(model)
    _, num_dynamic_values = uc.check_shapes(model.graph, quiet)

    providers: dict[str, dict] = {}
    for key, provider, rules_file in _CHECKED_PROVIDERS:
        if not (Path(uc.__file__).parent / rules_file).is_file():
            providers[key] = {"provider": provider, "available": False,
                              "reason": f"onnxruntime {ort.__version__} ships no {rules_file}"}
            continue
        providers[key] = _provider_section(model, provider, rules_file, has_dynamic=bool(dynamic))
    providers.update({key: dict(value) for key, value in _UNCHECKED_PROVIDERS.items()})

    if not hasattr(uc, "check_model_can_use_ort_mobile_pkg"):
        notes.append(f"onnxruntime {ort.__version__} no longer ships check_model_can_use_ort_mobile_pkg (the "
                     "pre-built ORT Mobile package is retired): ship the full onnxruntime-android/-objc package, "
                     "or a minimal build from the ORT-format required_operators config")
    return {
        "model": str(onnx_path),
        "onnxruntime": ort.__version__,
        "analysed": analysed,
        "nodes": len(model.graph.node),
        "dynamic_inputs": dynamic,
        "dynamic_values": num_dynamic_values,
        "fix": ("set [export] fixed_batch = 1 (or `compress edge MODEL --fixed-batch 1`) to fix the batch dimension"
                if dynamic else None),
        "providers": providers,
        "notes": notes,
    }


def readiness_table(section: dict) -> str:
    """A short text table of a readiness section: one line per provider."""
    lines = [f"{'provider':<22}{'taken':>9}{'partitions':>12}  {'suits':<6} falls back"]
    for key, p in section["providers"].items():
        if not p["available"]:
            lines.append(f"{key:<22}{'-':>9}{'-':>12}  {'?':<6} no rules in onnxruntime.tools (see reason)")
            continue
        fallback = ", ".join(op.split(":")[-1] for op in p["unsupported_ops"]) or "-"
        if p["fallback_due_to_dynamic_shape"]:
            fallback += f" (+{p['fallback_due_to_dynamic_shape']} nodes: dynamic shapes)"
        taken = f"{p['nodes_taken']}/{p['nodes_total']}"
        lines.append(f"{key:<22}{taken:>9}{p['partitions']:>12}  {p['suitability']:<6} {fallback}")
        if "if_shapes_fixed" in p:
            f = p["if_shapes_fixed"]
            lines.append(f"{'  if shapes fixed':<22}{str(f['nodes_taken']) + '/' + str(p['nodes_total']):>9}"
                         f"{f['partitions']:>12}  {f['suitability']:<6}")
    if section["dynamic_inputs"]:
        shown = ", ".join(f"{d['name']}{d['shape']}" for d in section["dynamic_inputs"])
        lines.append(f"dynamic inputs: {shown}; {section['fix']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- the flow


def prepare(
    onnx_path: Path,
    out_dir: Path,
    *,
    fixed_batch: int | None = None,
    inputs: dict[str, "np.ndarray"] | None = None,
    optimization: Optimization = "basic",
    style: Literal["fixed", "runtime"] = "fixed",
    max_abs_diff: float = 1e-5,
) -> dict:
    """Everything `compress edge` and `[export] ort_format = true` do, in order; returns the report section.

    1. optionally fix the batch dimension (`fixed_batch`), writing `<stem>.batch<N>.onnx` in `out_dir`;
    2. convert to ORT format and write the reduced-operator config (`to_ort_format`);
    3. check the ORT-format model against the ONNX one on `inputs` (seeded random ones at the model's batch
       when None); a max abs diff above `max_abs_diff` raises GateFailed after `edge.json` is written;
    4. edge readiness per provider (`readiness`), on the graph the ORT file holds.
    The section is also written to `out_dir/edge.json`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = Path(onnx_path)
    if fixed_batch is not None:
        model = fix_batch(model, out_dir / f"{model.stem}.batch{fixed_batch}.onnx", fixed_batch)
    converted = to_ort_format(model, out_dir, optimization=optimization, style=style)
    feed = inputs if inputs is not None else sample_inputs(model, batch=fixed_batch or 1)
    parity = ort_parity(model, Path(converted["ort_path"]), feed)
    section = {
        "onnx_path": str(model),
        "fixed_batch": fixed_batch,
        "ort": {k: v for k, v in converted.items() if k != "log"},
        "parity": parity,
        "parity_ok": parity["max_abs_diff"] <= max_abs_diff,
        "max_abs_diff_allowed": max_abs_diff,
        # the runtime style stores the basic graph and replays the rest at load time
        "readiness": readiness(model, optimization="basic" if style == "runtime" else optimization),
    }
    (out_dir / "edge.json").write_text(json.dumps(section, indent=1) + "\n")
    if not section["parity_ok"]:
        raise GateFailed(
            f"{converted['ort_path']}: ORT-format outputs differ from the ONNX model by {parity['max_abs_diff']:.3g} "
            f"> {max_abs_diff:g}; try optimization='disable' or report the model to onnxruntime"
        )
    return section
