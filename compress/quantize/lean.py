"""Quantization's memory kept near one copy of the model's weights.

Measured with /usr/bin/time on model-zoo graphs (2026-12-07): `compress quantize` peaked at 2.4 GB on ZFNet-512 (340
MB of weights, dynamic) and 2.1 GB on AlexNet (244 MB, static), 7-9x the weights, from copies of the model alive at
once. What this module gives the steps that made them:

- `compress.onnx.skeleton.graph_of` (moved there for every command): a model's graph without its weights, parsed
  once per file (`onnx.load` without external data still reads every inline weight: twice the weights for a
  moment, and quantize read the graph of the same file four times an attempt);
- `one_model_in_ort_quantizer`: ONNX Runtime's dynamic quantizer deep-copies the model it holds, writes the copy
  out and reads it back to infer shapes while the original is still alive: three models' weights at once. Here the
  shapes are inferred on the graph without its weights and copied into the model it holds, which is what the round
  trip gives (anything else the inference would change falls back to ORT's own round trip);
- `weights_to_file`: a model written for an ORT session with its weights in a file beside it, which the proto then
  no longer holds (a session from `SerializeToString()` bytes held the proto, the bytes and ORT's copies at once);
- `release`: the C heap's free pages given back between steps (compress.heap), so that what one step freed is not
  counted again under the next one's peak;
- `scratch_in`: the scratch copies (ours and ONNX Runtime's quantizer's) written beside the output, not into the
  system's temp folder, which is often a RAM disk (tmpfs: a copy there is memory that no RSS figure shows) and often
  small (a model's copy fails there with ENOSPC).
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from compress.onnx.skeleton import data_bytes, weightless

PLAIN_FLOATS = (1, 10, 11)
"""onnx.TensorProto FLOAT, FLOAT16, DOUBLE: what numpy reads from a file as it is (`weight_from_file`)."""

MODEL_COPIES = 4
"""About how many times over quantizing a model holds its weights at the peak, besides the activations that
--max-memory ([quantize] max_memory_mb) bounds (measured with /usr/bin/time, 2026-12-07: AlexNet static 3.8x its 244
MB, ZFNet-512 dynamic 4.4x its 340 MB, Python and ONNX Runtime included). ONNX Runtime's quantizer holds the model,
the weights it adds (a Gemm's weight transposed) and an array of the weight it is quantizing; its pre-processing
holds the model and its serialized bytes."""


def cap_warning(weights: int, max_memory_mb: float | None, what: str) -> str | None:
    """One line when the cap `max_memory_mb` is below what quantizing `what` (a model with `weights` bytes of
    weights) holds of them anyway (MODEL_COPIES times): the cap sizes activations, not the model's copies."""
    if not max_memory_mb or weights * MODEL_COPIES <= max_memory_mb * 2**20:
        return None
    held = MODEL_COPIES * weights / 2**20
    return (f"warning: {what}: --max-memory / [quantize] max_memory_mb ({max_memory_mb:g} MB) bounds only the "
            f"activations that calibration and the sensitivity ranking hold; quantizing also holds the model's "
            f"{weights / 2**20:.0f} MB of weights about {MODEL_COPIES} times over (~{held:.0f} MB), which no setting "
            "bounds")


SCRATCH = ".scratch"
"""The folder inside a quantize output folder that holds the scratch copies while quantize runs (`scratch_in`)."""


@contextlib.contextmanager
def scratch_in(out_dir: Path) -> Iterator[Path]:
    """For the block, every temporary folder and file that Python's tempfile makes (compress's scratch models and
    ONNX Runtime's quantizer's augmented copies) goes into `out_dir`/.scratch, removed afterwards; a folder left by
    a killed run is removed first (the name is compress's own); the folders this made for it too, while nothing else
    went in. Process-wide: quantize runs on one thread."""
    out_dir = Path(out_dir).resolve()  # absolute: ORT's pre-processing runs in a working folder of its own
    made = next((p for p in reversed((out_dir, *out_dir.parents)) if not p.exists()), None)  # the first one made
    folder = out_dir / SCRATCH
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    before = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = before
        shutil.rmtree(folder, ignore_errors=True)
        for path in (out_dir, *out_dir.parents) if made else ():  # the folders this made, while nothing went in
            if any(path.iterdir()):
                break
            path.rmdir()
            if path == made:
                break


def release() -> None:
    """Give the C heap's free pages back now (compress.heap: where trimming is on, as in the CLI)."""
    from compress.heap import release as trim

    trim()


def weights_to_file(model: Any, path: Path) -> Path:
    """Write `model` to `path` (in a scratch folder) with each weight of 1 KB and more in a data file beside it, for an
    ORT session to open from the path (ORT maps the data file in). The proto is left without those weights: drop it
    once written, and the session holds the only copy."""
    import secrets

    import onnx

    # a name of its own: onnx refuses a data file name that exists in the current folder, wherever it writes
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{Path(path).name}.{secrets.token_hex(6)}.data", size_threshold=1024,
                    convert_attribute=False)
    return Path(path)


def weight_from_file(tensor: Any, folder: Path) -> np.ndarray:
    """numpy_helper.to_array of an initializer that `weights_to_file` wrote (`folder`: where), a float one read
    straight from its file into the array (the proto would hold a second copy of it on the way)."""
    from onnx import helper, numpy_helper

    entry = {e.key: e.value for e in tensor.external_data}
    if tensor.data_location != 1 or tensor.data_type not in PLAIN_FLOATS or "offset" not in entry:
        return numpy_helper.to_array(tensor, str(folder))
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")  # ONNX's byte order
    values = np.fromfile(Path(folder) / entry["location"], dtype=dtype, count=int(entry["length"]) // dtype.itemsize,
                         offset=int(entry["offset"]))
    return values.astype(dtype.newbyteorder("="), copy=False).reshape(tuple(tensor.dims))


@contextlib.contextmanager
def one_model_in_ort_quantizer() -> Iterator[None]:
    """For the block, ONNX Runtime's dynamic quantizer infers shapes on the model it holds in place
    (`_shapes_inferred_in_place`) instead of through a deep copy written out and read back."""
    from onnxruntime.quantization import onnx_quantizer

    own = getattr(onnx_quantizer, "save_and_reload_model_with_shape_infer", None)
    if own is None:  # another ONNX Runtime's quantizer: its own way, whatever memory it takes
        yield
        return

    def in_place(model: Any) -> Any:
        return _shapes_inferred_in_place(model, own)

    onnx_quantizer.save_and_reload_model_with_shape_infer = in_place
    try:
        yield
    finally:
        onnx_quantizer.save_and_reload_model_with_shape_infer = own


def _shapes_inferred_in_place(model: Any, round_trip: Callable[[Any], Any]) -> Any:
    """What ORT's save_and_reload_model_with_shape_infer(model) returns, made from `model` itself. ORT saves a deep
    copy with each raw_data of sys.getsizeof >= 1024 (991 bytes of data) in external data, runs onnx's shape
    inference on that file (which reads no external data) and loads it back, weights and all, marked as inferred.
    Here the inference runs on the graph without those weights, and its value_info, inputs and outputs replace the
    model's. A graph with subgraphs (their initializers go external too), or an inference that changed anything else,
    takes `round_trip` (ORT's own)."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in model.graph.node
           for a in n.attribute):
        return round_trip(model)

    def external(tensor: Any) -> bool:  # what ORT's round trip writes to external data and reads back
        return tensor.HasField("raw_data") and data_bytes(tensor) >= 1024 - 33

    skeleton = weightless(model, external)
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    fields = ("value_info", "input", "output")
    found = onnx.GraphProto()
    for name in fields:
        getattr(found, name).extend(getattr(inferred.graph, name))
        inferred.graph.ClearField(name)
        skeleton.graph.ClearField(name)
    if inferred.SerializeToString(deterministic=True) != skeleton.SerializeToString(deterministic=True):
        return round_trip(model)
    for name in fields:
        model.graph.ClearField(name)
        getattr(model.graph, name).extend(getattr(found, name))
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL and external(tensor):
            tensor.data_location = onnx.TensorProto.DEFAULT  # set, as onnx's loading sets it: the same bytes
    add_infer_metadata(model)
    release()  # what transposing the Gemm weights freed, before the weights are quantized
    return model
