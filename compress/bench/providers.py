"""Execution providers: short names, and sessions that either run on the provider asked for or say why not.

ORT silently falls back to the CPU when a provider fails to initialise; a benchmark row under the wrong name is
worse than no row, so `open_session` checks `session.get_providers()` and reports the drop as a reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from compress.errors import CompressError, first_line

PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "dml": "DmlExecutionProvider",
}
"""Short name -> ONNX Runtime provider name. Full ORT names are accepted wherever a short one is."""

CPU = "CPUExecutionProvider"

# Providers whose tensors live in device memory: IO binding keeps host<->device copies out of the timing.
DEVICE_OF: dict[str, str] = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


def resolve_provider(name: str) -> str:
    """Return the ORT provider name for a short name ('cuda') or a full one ('CUDAExecutionProvider').

    Raises CompressError for anything else, listing the allowed names.
    """
    key = name.strip()
    if key.lower() in PROVIDERS:
        return PROVIDERS[key.lower()]
    by_full = {v.lower(): v for v in PROVIDERS.values()}
    if key.lower() in by_full:
        return by_full[key.lower()]
    import difflib

    hint = difflib.get_close_matches(key.lower(), list(PROVIDERS), n=1)
    tip = f"; did you mean {hint[0]!r}?" if hint else f"; expected one of {', '.join(PROVIDERS)} (or the full ORT name)"
    raise CompressError(f"provider: unknown provider {name!r}{tip}")


def check_available(providers: Sequence[str], *, strict: bool, origin: str) -> list[str]:
    """The requested providers that this onnxruntime lacks; under `strict` the first one is an error naming
    `origin` (the config key) and the installed ones."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in providers if resolve_provider(p) not in available]
    if strict and missing:
        raise CompressError(f"{origin}: {missing[0]!r} ({resolve_provider(missing[0])}) is not available in "
                            f"onnxruntime {ort.__version__} here (available: {', '.join(available)}); install the "
                            "onnxruntime build that has it, drop it from providers, or set strict = false")
    return missing


MAX_MODEL_BYTES = 2 * 1024**3
"""protobuf cannot hold a single message over 2 GiB; refusing bigger files up front avoids reading them into memory."""


def check_model_file(model_path: str | Path, *, onnx_reads_weights: bool = False) -> Path:
    """Check that `model_path` is a readable, complete ONNX (or ORT-format) model; CompressError otherwise. Returns
    the path to read it from (compress.onnx.graph.model_home: a symlink's target where its weights lie beside that;
    `onnx_reads_weights`: weights onnx cannot read there are an error)."""
    from compress.onnx.graph import model_home

    path = Path(model_path)
    if not path.exists():
        raise CompressError(f"{path}: no such file; pass the path of an .onnx model")
    if not path.is_file():
        raise CompressError(f"{path}: expected an .onnx file, got a directory")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise CompressError(f"{path}: {size} bytes is over the {MAX_MODEL_BYTES}-byte protobuf limit of a single "
                            "ONNX file; a model this large keeps its weights as external data beside it")
    if path.suffix.lower() == ".ort":
        return path  # ORT format is not protobuf; ORT itself checks it when the session opens
    stat = path.stat()
    seen = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if seen in _CHECKED:  # a command checks one file several times (quantize: three, 0.2 s each on a ResNet-50)
        return model_home(path, onnx_reads_weights=onnx_reads_weights)
    from compress.onnx.skeleton import graph_of

    try:
        # load_external_data=False: only the graph is checked here, ORT reads the weights itself
        model = graph_of(path)
    except Exception as exc:  # protobuf raises DecodeError and friends, all meaning "not an ONNX file"
        raise CompressError(
            f"{path}: not a valid ONNX model (truncated or not protobuf: {first_line(exc)}); re-export it"
        ) from None
    if len(model.graph.node) == 0 or len(model.graph.output) == 0:
        raise CompressError(f"{path}: ONNX graph has no nodes or no outputs; {_what_else(path)}")
    _CHECKED.add(seen)
    return model_home(path, onnx_reads_weights=onnx_reads_weights)


_CHECKED: set[tuple[str, int, int]] = set()


def _what_else(path: Path) -> str:
    """The way out for a file that is not a model: a tensor .pb (the model zoo's test_data_set_*/input_0.pb, an
    output_0.pb) is named as one; anything else is told to re-export."""
    import onnx

    try:
        tensor = onnx.load_tensor(str(path))
    except Exception:  # noqa: BLE001 - not a tensor either
        return "re-export the model"
    if not tensor.dims:
        return "re-export the model"
    return (f"the file reads as a tensor (shape {list(tensor.dims)}), such as a model's test input or output, not a "
            "model: pass the model's .onnx file")
"""Files check_model_file passed, by path, modification time and size: a rewritten file is checked again."""


def session_options_summary(threads: int, *, edge: bool = False) -> dict[str, Any]:
    """The session settings `open_session` applies, as recorded in benchmark rows and environment."""
    return {
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "execution_mode": "sequential",
        "graph_optimization_level": "all",
        "allow_spinning": not edge,
    }


EXACT_MATMULS = {"session.qdq_matmulnbits_accuracy_level": "0"}
"""ORT CPU fuses DequantizeLinear(weight) -> MatMul whose activation is float (or dequantized from 16 bits) into
MatMulNBits, which at its default accuracy level (4) quantizes that activation to 8 bits per block: a QNN graph's
W8A16 MatMuls then read lower on the CPU than HTP computes them (torch vs ORT cosine 0.9945 on the MiniLM student's
QNN graph; 0.99998 at level 0). Level 0 computes them in float."""


def quiet_run() -> Any:
    """onnxruntime.RunOptions under which a failed run logs nothing: the caller raises the failure as its one line,
    and ORT's own coloured log line of it would come first."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = 4
    return options


def open_session(
    model_path: str | Path | bytes,
    provider: str,
    threads: int,
    *,
    provider_options: dict[str, Any] | None = None,
    edge: bool = False,
    strict: bool = False,
    config: dict[str, str] | None = None,
) -> tuple[Any, str | None]:
    """Open an ORT session on exactly `provider` (`config`: session config entries, e.g. EXACT_MATMULS).

    Returns (session, None) when the provider really runs the model, or (None, reason) when it is not built
    into this onnxruntime or ORT dropped it while creating the session. With strict=True the reason is raised
    as CompressError instead. A model that even the CPU provider cannot load is always a CompressError.
    `edge` turns off thread spinning (what battery-powered boards run with).
    """
    import onnxruntime as ort

    name = resolve_provider(provider)
    if threads < 1:
        raise CompressError(f"threads: expected an integer >= 1, got {threads}")

    def unavailable(reason: str) -> tuple[None, str]:
        if strict:
            raise CompressError(f"provider {name}: {reason}; drop it or run where it is installed")
        return None, reason

    available = ort.get_available_providers()
    if name not in available:
        return unavailable(f"not available in onnxruntime {ort.__version__} (available: {', '.join(available)})")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # fallback warnings are turned into `unavailable` below, not printed
    if edge:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)

    options = {str(k): str(v) for k, v in (provider_options or {}).items()}
    providers: list[Any] = [(name, options)]
    if name != CPU:
        providers.append(CPU)  # nodes the provider cannot take run on CPU; that is normal ORT partitioning
    try:
        model = model_path if isinstance(model_path, bytes) else str(model_path)
        session = ort.InferenceSession(model, sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types, all user-facing here
        if name == CPU:
            raise CompressError(
                f"{model_path}: onnxruntime could not load the model: {first_line(exc)}; {_what_to_do(model_path)}"
            ) from None
        return unavailable(f"session creation failed: {first_line(exc)}")
    if session.get_providers()[0] != name:
        return unavailable(f"onnxruntime dropped it while creating the session (fell back to {session.get_providers()})")
    return session, None


ORT_OLDEST_OPSET = 7
"""The oldest default-domain opset ONNX Runtime has kernels for."""


def too_old_opset(model_path: str | Path) -> int | None:
    """The default-domain opset an ONNX file declares, when it is older than ONNX Runtime runs; None when it is not,
    when the file declares none (only other domains' ops, com.microsoft or ai.onnx.ml, which ORT runs) or cannot be
    read as ONNX here."""
    from compress.onnx.skeleton import graph_of

    try:
        graph = graph_of(model_path)
    except Exception:  # noqa: BLE001 - a finding of ORT's or the loader's own, said where the file is read
        return None
    declared = [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")]
    return max(declared) if declared and max(declared) < ORT_OLDEST_OPSET else None


def _what_to_do(model_path: Any) -> str:
    """The advice after ORT refused a model: a graph older than ORT's kernels is upgraded, not re-exported."""
    onnx_file = isinstance(model_path, (str, Path)) and Path(model_path).suffix.lower() == ".onnx"
    have = too_old_opset(model_path) if onnx_file else None  # bytes or an ORT-format file: no opset to read
    if have is not None:
        return (f"its opset {have} is older than ONNX Runtime runs ({ORT_OLDEST_OPSET} and up): upgrade it with "
                "onnx.version_converter.convert_version(model, 13) (compress quantize does so itself)")
    return "check the export"
