"""Edge readiness: which nodes each mobile execution provider would take, from ONNX Runtime's own rules.

The rules and the partitioning logic are onnxruntime.tools.mobile_helpers'; this module calls them and lists the
outcome node by node. Where ONNX Runtime ships no rules for a provider (XNNPACK, QNN) it says so.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.edge.ort_format import Optimization
from compress.errors import CompressError, first_line
from compress.onnx.graph import graph_inputs, load_model

if TYPE_CHECKING:
    import onnx


def dynamic_inputs(model: "onnx.ModelProto") -> list[dict]:
    """Graph inputs whose shape is not fully fixed: [{"name", "shape"}] with symbolic dims as strings."""
    from onnxruntime.tools.onnx_model_utils import is_fixed_size_tensor

    found = []
    for value in graph_inputs(model.graph):
        if is_fixed_size_tensor(value):
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                for d in value.type.tensor_type.shape.dim]
        found.append({"name": value.name, "shape": dims})
    return found


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
        "reason": "onnxruntime.tools ships no QNN operator rules; measure it instead: `compress edge MODEL "
                  "--provider qnn --calibration DATA.npz` or [export] edge_targets = [\"qnn\"] runs the model on "
                  "the QNN EP's HTP backend (needs onnxruntime-qnn: pip install onnxruntime-qnn).",
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
            model = ModelProtoWithShapeInfo(analysed).model_with_shape_info
        except Exception as exc:
            raise CompressError(f"{onnx_path}: ONNX shape inference failed ({first_line(exc)}); "
                                "re-export the model") from None
    if not model.graph.value_info and len(model.graph.node) > 1:
        # every tensor is an input or an output (x -> Relu, x -> Neg): ORT's checker reads an empty value_info as
        # "shapes never inferred" and raises; the outputs' own shapes are the shapes there are
        model.graph.value_info.extend(model.graph.output)
    return model


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
        "fix": _fix_advice(dynamic),
        "providers": providers,
        "notes": notes,
    }


def _fix_advice(dynamic: list[dict]) -> str | None:
    """What fixes the dynamic inputs: the batch (axis 0) by fixed_batch, any other axis by --fix-dim (after
    --fixed-batch 1 the advice was --fixed-batch 1 again for a [1, 'seq'] input)."""
    said = []
    if any(item["shape"] and isinstance(item["shape"][0], str) for item in dynamic):
        said.append("set [export] fixed_batch = 1 (or `compress edge MODEL --fixed-batch 1`) to fix the batch "
                    "dimension")
    others = [f"{d}=N" if d != "?" else f"{item['name']}:{i}=N" for item in dynamic
              for i, d in enumerate(item["shape"]) if i and isinstance(d, str)]
    if others:
        said.append(f"fix the other dynamic dimensions with `compress edge MODEL --fix-dim "
                    f"{' --fix-dim '.join(dict.fromkeys(others))}`")
    return "; ".join(said) or None


def readiness_table(section: dict) -> str:
    """A short text table of a readiness section: one line per provider."""
    lines = [f"{'provider':<22}{'taken':>9}{'partitions':>12}  {'suits':<6} falls back"]
    for key, p in section["providers"].items():
        if not p["available"]:
            why = p["reason"] if "measured" in p else "no rules in onnxruntime.tools (see reason)"
            lines.append(f"{key:<22}{'-':>9}{'-':>12}  {'?':<6} {why}")
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
