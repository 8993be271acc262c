"""ORT format: the converted model and reduced-operator config a minimal/mobile ONNX Runtime build loads, and
its parity with the ONNX model it came from."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

from compress.errors import CompressError, first_line
from compress.onnx.graph import load_model, model_bytes

if TYPE_CHECKING:
    import numpy as np

Optimization = Literal["disable", "basic", "extended", "all"]


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
            raise CompressError(
                f"{onnx_path}: ONNX Runtime could not convert the model to ORT format ({first_line(exc)}); "
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
    size = ort_path.stat().st_size
    return {
        "ort_path": str(ort_path),
        "config_path": str(config_path),
        "optimization": optimization,
        "style": style,
        "target_platform": target_platform,
        "bytes": size,
        "log": log.getvalue(),
        "note": _grown(size, model_bytes(Path(onnx_path)), optimization),
    }


GROWN = 10
"""An ORT-format file this many times its ONNX model (and over a megabyte) is named in a note."""


def _grown(ort_bytes: int, onnx_bytes: int, optimization: str) -> str | None:
    """A note when the ORT-format file is far larger than its model: constant folding at `optimization` wrote out
    weights the model generates (a 4 KB model-zoo AlexNet made its weights with ConstantOfShape: a 244 MB file)."""
    if optimization == "disable" or ort_bytes < 2**20 or ort_bytes < GROWN * max(onnx_bytes, 1):
        return None
    return (f"the ORT-format file is {ort_bytes / 2**20:.0f} MB against the model's {onnx_bytes / 2**10:.0f} KB: "
            f"constant folding at optimization '{optimization}' wrote out tensors the model computes from small "
            "constants (weights made by ConstantOfShape, Expand, Tile); --optimization disable keeps them computed")


def sample_inputs(model_path: Path, *, batch: int = 1, seed: int = 0,
                  dims: dict[str, int] | None = None) -> dict[str, "np.ndarray"]:
    """Seeded random inputs that fit the model's inputs (symbolic dim 0 -> `batch`, other symbolic dims from `dims`),
    as `compress bench` makes them."""
    return sample_batches(model_path, batch=batch, seeds=(seed,), dims=dims)[0]


def sample_batches(model_path: Path, *, batch: int, seeds: Sequence[int],
                   dims: dict[str, int] | None = None) -> list[dict[str, "np.ndarray"]]:
    """`sample_inputs` for each of `seeds`, from one session of the model (a session a batch took ZFNet-512 at
    batch 1 through 64 sessions that each folded 340 MB of generated weights: 28 s)."""
    from compress.bench.inputs import index_bounds, make_inputs
    from compress.bench.providers import open_session

    session, _ = open_session(model_path, "cpu", threads=1, strict=True)
    bounds = index_bounds(model_path)
    return [make_inputs(session, batch, dims, seed=seed, bounds=bounds) for seed in seeds]


def ort_parity(onnx_path: Path, ort_path: Path, inputs: dict[str, "np.ndarray"], *, atol: float = 1e-5,
               rtol: float | None = None, optimization: str = "all",
               axes: dict[str, int | None] | None = None) -> dict:
    """Run the ONNX and the ORT-format model on the same inputs (CPU EP); compare every output by the one parity
    rule (compress.onnx.parity.compare). The ONNX model runs at the level the ORT file was made with: at another
    level ORT picks other kernels (NCHWc convolutions at `all` on AVX-512), and a 640x640 text detector's outputs
    then differed by 5e-4 although the conversion changed nothing. Batches that fit FOLD_BYTES of activations, cut
    along each input's batch axis (`axes`: 0 unless named; None: fed whole)."""
    import numpy as np

    from compress.edge.qnn_feeds import head, whole_batches
    from compress.errors import CompressError
    from compress.onnx.graph import fixed_batch
    from compress.onnx.parity import RTOL, compare, run_cpu
    from compress.quantize.sensitivity import rows_that_fit

    axes = axes or {}
    rows = {np.shape(v)[axes.get(k, 0)] for k, v in inputs.items() if np.ndim(v) and axes.get(k, 0) is not None}
    fixed = fixed_batch(Path(onnx_path), axes) if len(rows) == 1 else None  # a scalar beside them: fed whole
    if fixed:  # the model takes exactly its batch: whole batches of it (the sample inputs may hold other counts)
        if next(iter(rows)) < fixed:
            raise CompressError(f"{onnx_path}: its batch is fixed to {fixed}, but the sample inputs hold "
                                f"{next(iter(rows))} rows; give at least {fixed} (--inputs)")
        inputs = whole_batches(inputs, fixed, axes)
    chunk = fixed or (rows_that_fit(Path(onnx_path), head(inputs, 1, axes), rows.pop()) if len(rows) == 1 else None)
    reference = run_cpu(Path(onnx_path), inputs, optimization=optimization, batch_size=chunk, axes=axes)
    candidate = run_cpu(Path(ort_path), inputs, ort_format=True, batch_size=chunk, axes=axes)
    return compare(reference, candidate, atol=atol, rtol=RTOL if rtol is None else rtol)

