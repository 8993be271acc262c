"""Edge and mobile prep, in order: fixed batch, ORT-format copy, parity with the ONNX model, readiness.

Everything here leans on ONNX Runtime's own tooling (`onnxruntime.tools`): the ORT-format converter writes the
model and the reduced-operator config a minimal build needs; the mobile usability checker decides which nodes
NNAPI and CoreML would take. Where ONNX Runtime ships no rules for a provider (XNNPACK, QNN) we say so instead of
guessing with a hand-written operator list.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from compress.cache import write_json
from compress.edge.ort_format import Optimization, ort_parity, sample_inputs, to_ort_format
from compress.edge.readiness import readiness
from compress.edge.shapes import fix_batch
from compress.errors import CompressError, GateFailed
from compress.onnx.graph import fixed_batch as batch_of_graph, load_model

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("compress")
ORT_FORMAT_OPSET = 13
"""The opset a graph older than ONNX Runtime's kernels (opset 7 on) is converted to, as `compress quantize` does."""


@contextlib.contextmanager
def _kept_only_on_success(out_dir: Path) -> Iterator[None]:
    """`out_dir` made; what the steps before edge.json write there (copies, the .ort and its config) removed again
    when one fails with its one line (an exit 2 left an .ort without an edge.json), and `out_dir` too if made here."""
    made = not out_dir.exists()
    before = set() if made else set(out_dir.rglob("*"))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except CompressError:
        for path in sorted(set(out_dir.rglob("*")) - before, reverse=True):  # a folder after what it holds
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()
        if made:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


def _axes_only(batch_axes: dict[str, int | None] | None) -> Any:
    """compress.bench.inputs.Dims of the batch axes alone, for generated inputs (imported here: edge stays light)."""
    from compress.bench.inputs import Dims

    return Dims(batch_axes=batch_axes)


def _modern_inputs(onnx_path: Path, out_dir: Path, stem: str) -> Path:
    """The model itself, or a copy in `out_dir` that an ORT-format file can be made from: initializers no longer
    listed as inputs (old IR 3 model-zoo graphs: otherwise the ORT-format copy asks for every weight as an input)
    and external data taken inside (the converter and its shape inference look for the data beside the copy they
    make). A model over 2 GB cannot be one ORT-format file (a flatbuffer) at all: refused in one line."""
    import onnx

    from compress.onnx.graph import PROTOBUF_LIMIT, default_opset, upgraded, without_initializer_inputs
    from compress.onnx.skeleton import external_bytes_of

    model = load_model(onnx_path, weights=False)  # a missing or corrupt file is one line here
    outside = external_bytes_of(model, onnx_path.parent)
    if outside and onnx_path.stat().st_size + outside >= PROTOBUF_LIMIT:
        raise CompressError(f"{onnx_path}: {(onnx_path.stat().st_size + outside) / 2**30:.2f} GB with its external "
                            "data; an ORT-format model is one flatbuffer of at most 2 GB, so it cannot be made for "
                            "this model: quantize it first (`compress quantize`, int8 weights are 4x smaller)")
    inputs_moved = without_initializer_inputs(model)
    if outside:  # the copy holds every weight itself
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(onnx_path.parent))
    newer = upgraded(onnx.shape_inference.infer_shapes(model), ORT_FORMAT_OPSET, origin=str(onnx_path),
                     why="ONNX Runtime's kernels (opset 7 on)") if default_opset(model) < 7 else None  # shapes: adapters
    if newer is not None:
        log.warning("warning: %s: opset %d converted to %d for ONNX Runtime, which has no kernels before opset 7",
                    onnx_path, default_opset(model), ORT_FORMAT_OPSET)
        model = newer
    elif not inputs_moved and not outside:
        return onnx_path
    copy = out_dir / f"{stem}.inputs.onnx"
    onnx.save(model, str(copy))
    return copy


def prepare(
    onnx_path: Path,
    out_dir: Path,
    *,
    fixed_batch: int | None = None,
    inputs: dict[str, "np.ndarray"] | None = None,
    optimization: Optimization = "basic",
    style: Literal["fixed", "runtime"] = "fixed",
    atol: float = 1e-5,
    rtol: float | None = None,
    targets: tuple[str, ...] = (),
    qnn: dict | None = None,
    batch_axes: dict[str, int | None] | None = None,
    warnings: list[str] | None = None,
    name: str | None = None,
) -> dict:
    """Everything `compress edge` and `[export] ort_format = true` do, in order; returns the report section.

    1. optionally fix the batch dimension (`fixed_batch`), writing `<stem>.batch<N>.onnx` in `out_dir`;
    2. convert to ORT format and write the reduced-operator config (`to_ort_format`);
    3. check the ORT-format model against the ONNX one on `inputs` (seeded random ones at the model's batch
       when None) by the one parity rule, |ort - onnx| <= atol + rtol * |onnx| (compress.onnx.parity); a
       mismatch raises GateFailed after `edge.json` is written;
    4. edge readiness per provider (`readiness`), on the graph the ORT file holds.
    5. for each of `targets` ("qnn"), the target measured on its backend: `qnn` holds the keyword arguments
       of compress.edge.qnn_flow.prepare_qnn (calibration, val_x, val_y, activation_type, ...); the result
       goes under "qnn" and replaces the provider's readiness row with the measured one.
    The section is also written to `out_dir/edge.json`, also when the QNN target's native code ends its child
    process (ProviderCrashed, exit 1, after edge.json holds what was measured before). `batch_axes`: an input's
    batch axis where it is not 0 (an LSTM state [layers, N, hidden]: 1; None: no batch axis), for the fixed batch and
    the parity chunks. `warnings`: lines said already, kept in the section (data made for another value of a bound
    input). `name`: the stem of copies it writes (a link's name, not its target's; default the model's own).
    """
    out_dir = Path(out_dir)
    with _kept_only_on_success(out_dir):
        model = modern = _modern_inputs(Path(onnx_path), out_dir, name or Path(onnx_path).stem)
        if fixed_batch is not None:
            try:
                model = fix_batch(model, out_dir / f"{model.stem}.batch{fixed_batch}.onnx", fixed_batch, batch_axes)
            except CompressError as exc:  # name the user's file, not edge's copy of it
                raise CompressError(str(exc).replace(str(model), str(onnx_path))) from None
        converted = to_ort_format(model, out_dir, optimization=optimization, style=style)
        feed = inputs if inputs is not None else sample_inputs(  # onnx's test graphs fix axis 0 at 7: that batch
            model, batch=fixed_batch or batch_of_graph(model, batch_axes) or 1, dims=_axes_only(batch_axes))
        parity = ort_parity(model, Path(converted["ort_path"]), feed, atol=atol, rtol=rtol,
                            optimization=optimization, axes=batch_axes)
    section = {
        "onnx_path": str(model),
        "fixed_batch": fixed_batch,
        "ort": {k: v for k, v in converted.items() if k != "log"},
        "parity": parity,
        "parity_ok": parity["ok"],
        "max_abs_diff_allowed": atol,
        # the runtime style stores the basic graph and replays the rest at load time
        "readiness": readiness(model, optimization="basic" if style == "runtime" else optimization),
        **({"warnings": warnings} if warnings else {}),
    }
    if "qnn" in targets:
        from compress.edge.qnn_flow import readiness_entry

        if not qnn or qnn.get("calibration") is None:
            raise CompressError("edge target qnn: no calibration data; pass --calibration DATA.npz "
                                "(the pipeline passes its training data)")
        from compress.edge.isolated import ProviderCrashed

        try:  # in a child process: a native abort inside the QNN plugin must not take compress with it
            section["qnn"] = _qnn_measured(modern, out_dir, fixed_batch or 1, qnn)  # IR 3: weights not inputs
        except ProviderCrashed as exc:
            section["qnn"] = {"provider": "QNNExecutionProvider", "installed": True, "crashed": str(exc)}
            write_json(out_dir / "edge.json", section)
            raise
        section["readiness"]["providers"]["QNN"] = readiness_entry(section["qnn"])
    write_json(out_dir / "edge.json", section)
    if not section["parity_ok"]:
        raise GateFailed(
            f"{converted['ort_path']}: ORT-format outputs differ from the ONNX model by {parity['max_abs_diff']:.3g} "
            f"(relative {parity['max_rel_diff']:.3g}; allowed {atol:g} + {parity['rtol']:g} x |output|); try "
            "optimization='disable' or report the model to onnxruntime"
        )
    return section


def _qnn_measured(onnx_path: Path, out_dir: Path, batch: int, qnn: dict) -> dict:
    """The QNN target's section, measured in a child process. `activation_type = "auto"`: 8-bit activations first;
    when the NPU misses its budget because the 8-bit graph itself loses (ORT CPU's reading of it misses too), mixed
    widths (16 bits for the activations 8 bits damage most, compress.edge.mixed) in `out_dir/qnn-mixed`, and when
    those miss too, 16 bits throughout in `out_dir/qnn-uint16`. The section kept is the first that meets the budget,
    else the one that loses least; `activation_tried` lists each one tried."""
    from compress.edge.isolated import run_isolated

    def measured(activation: str, folder: Path) -> dict:
        return run_isolated("compress.edge.qnn_flow:prepare_qnn",
                            {"onnx_path": onnx_path, "out_dir": folder, "fixed_batch": batch,
                             **{**qnn, "activation_type": activation},
                             **({"compile_unmet": False} if auto and activation == "mixed" else {})},
                            out_dir=folder, name="qnn", provider="QNNExecutionProvider")

    auto = qnn.get("activation_type") == "auto"
    tried = [measured("uint8" if auto else qnn.get("activation_type", "uint8"), out_dir / "qnn-uint8" if auto
                      else out_dir)]
    if not auto or (tried[0].get("budget") or {}).get("lost_in") != "codes":
        return _published(tried[0], out_dir) if auto else tried[0]
    tried.append(measured("mixed", out_dir / "qnn-mixed"))
    if not (tried[-1].get("budget") or {}).get("ok"):  # missed on its codes or on HTP, or HTP could not compile it
        tried.append(measured("uint16", out_dir / "qnn-uint16"))
    judged = [s for s in tried if s.get("budget") and s["budget"].get("drop") is not None]
    chosen = next((s for s in judged if s["budget"]["ok"]), None) or min(
        judged or tried[:1], key=lambda s: (s.get("budget") or {}).get("drop", float("inf")))
    chosen["activation_tried"] = [
        {"activation_type": s["activation_type"], "drop": (s.get("budget") or {}).get("drop"),
         "ok": (s.get("budget") or {}).get("ok"), "qdq_path": s.get("qdq_path"), "skipped": s.get("skipped"),
         "int8_cpu_drop": (s.get("budget") or {}).get("int8_cpu_drop"),
         "sixteen_bit": len((s.get("mixed") or {}).get("sixteen_bit") or []) if s["activation_type"] == "mixed"
         else None, "rounds": [r["sixteen_bit"] for r in (s.get("mixed") or {}).get("tried") or []] or None,
         "latency_ms": (s.get("latency") or {}).get("p50_ms")} for s in tried]
    return _published(chosen, out_dir)


def _published(section: dict, out_dir: Path) -> dict:
    """The kept width's files moved from its own folder to the top of `out_dir`, where the deployable EPContext
    model is looked for (each width tried writes into qnn-<width>/; the top held the rejected 8-bit try before),
    and its qnn.json written there; the section's paths (and its activation_tried entry's) follow."""
    import shutil

    from compress.cache import write_json

    moved: dict[str, str] = {}
    placement = section.get("placement") or {}
    for path in (section.get("onnx_path"), section.get("qdq_path"), placement.get("context_path")):
        if path and Path(path).is_file() and Path(path).parent.resolve() != Path(out_dir).resolve():
            moved[path] = str(shutil.move(path, Path(out_dir) / Path(path).name))
    section = {**section, **{k: moved.get(section[k], section[k]) for k in ("onnx_path", "qdq_path") if k in section}}
    if placement.get("context_path"):
        section["placement"] = {**placement, "context_path": moved.get(placement["context_path"],
                                                                       placement["context_path"])}
    if (section.get("context") or {}).get("path"):
        section["context"] = {**section["context"], "path": moved.get(section["context"]["path"],
                                                                      section["context"]["path"])}
    if section.get("activation_tried"):
        section["activation_tried"] = [{**t, "qdq_path": moved.get(t.get("qdq_path"), t.get("qdq_path"))}
                                       for t in section["activation_tried"]]
    write_json(out_dir / "qnn.json", section)
    return section
