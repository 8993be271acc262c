"""Benchmark inputs: generated from the model's input signature, or read from an .npz and checked against it."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import CompressError, shorten_list

# ORT type strings -> numpy dtypes for the tensor types a benchmark can feed
ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


class Dims(dict):
    """{dim name: size} for symbolic dimensions, plus `batch_axes` ({input: axis or None}, from --batch-axis): what
    every command that makes inputs is told about the model's shapes, passed along as one value."""

    def __init__(self, *args: Any, batch_axes: dict[str, int | None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_axes = dict(batch_axes or {})


def parse_dims(items: Iterable[str], batch_axes: Iterable[str] = ()) -> Dims:
    """Parse ['seq=128', 'height=224'] into {'seq': 128, 'height': 224} (and --batch-axis items); CompressError on a
    bad item."""
    dims = Dims(batch_axes=parse_batch_axes(batch_axes))
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            size = int(value)
        except ValueError:
            size = 0
        if name in ("?", "*"):
            raise CompressError(f"--dim {item}: unnamed dimensions are not set all at once; fix one axis of one "
                                "input with --fix-dim INPUT:AXIS=VALUE")
        if not sep or not name or size < 1:
            raise CompressError(f"--dim: expected NAME=POSITIVE_INT (e.g. seq=128), got {item!r}")
        if dims.get(name, size) != size:  # the last one was taken, without a word
            raise CompressError(f"--dim {item}: {name} is given twice ({name}={dims[name]} too); give it once")
        dims[name] = size
    return dims


def signature(session: Any) -> list[tuple[str, Any, list[int | str | None]]]:
    """[(name, numpy dtype, shape)] of the session's inputs; shape entries are ints, dim names, or None."""
    out = []
    for arg in session.get_inputs():
        if arg.type not in ORT_DTYPES:
            raise CompressError(f"input {arg.name!r}: type {arg.type} cannot be generated; pass --inputs FILE.npz")
        out.append((arg.name, ORT_DTYPES[arg.type], list(arg.shape)))
    return out


def parse_batch_axes(items: Iterable[str]) -> dict[str, int | None]:
    """`--batch-axis NAME:AXIS` (or NAME:none): which axis of an input is the batch; default axis 0."""
    axes: dict[str, int | None] = {}
    for item in items:
        name, sep, axis = item.rpartition(":")
        if not sep or not name or not (axis.isdigit() or axis == "none"):
            raise CompressError(f"--batch-axis: expected INPUT:AXIS or INPUT:none (e.g. state:1), got {item!r}")
        axes[name] = None if axis == "none" else int(axis)
    return axes


def concrete_shape(name: str, shape: list[int | str | None], batch: int, dims: dict[str, int],
                   batch_axis: int | None = 0) -> tuple[int, ...]:
    """Replace symbolic dims: a named dim from `dims`, else the batch axis (`batch_axis`, axis 0 unless said
    otherwise; None: the input has none) becomes `batch`; anything else is an error. A scalar input stays a scalar.

    A fixed batch axis that is not `batch` is an error too: timing batch 1 and calling it batch 64 would report a
    throughput 64 times too high. The message names --batch-axis for inputs whose first axis is not a batch (an RNN
    state [2, batch, 128]).
    """
    out = []
    for axis, dim in enumerate(shape):
        if axis == batch_axis and isinstance(dim, int) and dim > 0 and dim != batch:
            raise CompressError(f"input {name!r}: its axis {axis} is fixed to {dim}, so batch {batch} cannot run; use "
                                f"--batch {dim}, --batch-axis {name}:N (or {name}:none) when that axis is not the "
                                "batch, or re-export the model with a dynamic batch axis")
        if isinstance(dim, int) and dim > 0:
            out.append(dim)
        elif isinstance(dim, str) and dim in dims:
            out.append(dims[dim])
        elif axis == batch_axis:
            out.append(batch)
        else:
            named = isinstance(dim, str) and dim and dim not in ("?", "*")  # ORT shows an unnamed dimension as '?'
            label = f"dimension {dim!r} (axis {axis})" if named else f"axis {axis} (an unnamed dimension)"
            hint = (f"--dim {dim}=N" if named else f"--fix-dim {name}:{axis}=N") + " or --inputs FILE.npz"
            raise CompressError(f"input {name!r}: its {label} is symbolic; pass {hint}")
    return tuple(out)


def make_inputs(session: Any, batch: int, dims: dict[str, int] | None = None, *, seed: int = 0,
                bounds: dict[str, int] | None = None, batch_axes: dict[str, int | None] | None = None
                ) -> dict[str, np.ndarray]:
    """Random inputs that match the session's input signature (fixed seed, so runs are comparable).

    Floats are standard normal. Integer inputs that index a table (`bounds`, from `index_bounds`: token ids into
    the word embeddings, token types into theirs) are drawn inside it; an integer input named like an attention
    mask is all ones (every position a real token); other integers are in [0, 100).
    """
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for name, dtype, shape in signature(session):
        axes = batch_axes if batch_axes is not None else getattr(dims, "batch_axes", {})
        size = concrete_shape(name, shape, batch, dims or {}, axes.get(name, 0))
        if np.issubdtype(dtype, np.floating):
            feed[name] = np.asarray(rng.standard_normal(size), dtype=dtype)
        elif "mask" in name.lower():
            feed[name] = np.ones(size, dtype=dtype)
        elif dtype is np.bool_:
            feed[name] = np.asarray(rng.integers(0, 2, size), dtype=np.bool_)
        else:
            feed[name] = np.asarray(rng.integers(0, (bounds or {}).get(name, 100), size), dtype=dtype)
    return feed


_SAME_VALUES = ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity")
"""Ops whose output holds their first input's values, only shaped or typed anew: ids through them stay ids."""


def index_bounds(model_path: str | Path) -> dict[str, int]:
    """{input name: rows of the table it indexes} for graph inputs that feed a Gather on a constant table (token
    ids -> word embeddings: the vocabulary size), also through ops that keep the values (_SAME_VALUES: a Cast, a
    Reshape, ...) or a DequantizeLinear of the table. {} when the file cannot be read as ONNX (the session that
    follows says why)."""
    try:
        from compress.onnx.skeleton import graph_of

        graph = graph_of(model_path).graph  # a table's shape, not its rows
    except Exception:  # noqa: BLE001 - only a hint for generated inputs
        return {}
    tables = {t.name: int(t.dims[0]) for t in graph.initializer if t.dims}
    produced = {out: node for node in graph.node for out in node.output}
    inputs = {i.name for i in graph.input} - set(tables)

    def rows_of(name: str) -> int | None:
        if name in tables:
            return tables[name]
        node = produced.get(name)
        return rows_of(node.input[0]) if node is not None and node.op_type == "DequantizeLinear" else None

    def source(name: str) -> str | None:
        node = produced.get(name)
        return name if name in inputs else (source(node.input[0]) if node is not None and node.input
                                            and node.op_type in _SAME_VALUES else None)

    bounds: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2:
            src, rows = source(node.input[1]), rows_of(node.input[0])
            if src is not None and rows:
                bounds[src] = min(rows, bounds.get(src, rows))
    return bounds


def load_npz(path: str | Path, session: Any) -> dict[str, np.ndarray]:
    """Read inputs from an .npz (one array per input name) and check names, dtypes and fixed dims."""
    arrays = read_npz(path, expects="--inputs expects an .npz with one array per model input")
    return check_inputs(arrays, session, source=str(Path(path)))


def read_npz(path: str | Path, *, expects: str, only: Any = None) -> dict[str, np.ndarray]:
    """Every array of an .npz (never unpickled), or those whose name `only(name)` accepts (the others are not
    read); a missing file says `expects`, an unreadable one how to save it."""
    p = Path(path)
    if not p.is_file():
        raise CompressError(f"{p}: no such file; {expects}")
    with open(p, "rb") as f:
        if f.read(2) != b"PK":  # a zip archive; numpy took anything else for a pickle ("holds object arrays": untrue)
            raise CompressError(f"{p}: not an .npz (numpy.savez writes a zip archive; this is not one); {expects}")
    try:
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files if only is None or only(k)}
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise CompressError(f"{p}: not a readable .npz (ValueError); save it with numpy.savez") from None
        raise CompressError(f"{p}: holds object arrays (strings, lists), which compress does not unpickle; save "
                            "numeric arrays only (numpy.savez with arrays of numbers)") from None
    except Exception as exc:  # zipfile/format errors all mean "not a usable npz"
        raise CompressError(f"{p}: not a readable .npz ({type(exc).__name__}); save it with numpy.savez") from None


def by_input_name(names: list[str], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The arrays for a model's inputs `names`: by name, or for a one-input model 'x' or the only array (arrays
    named y* are targets, never inputs); None when neither fits."""
    if all(n in arrays for n in names):
        return {n: arrays[n] for n in names}
    given = {k: v for k, v in arrays.items() if not k.startswith("y")}
    if len(names) == 1 and ("x" in given or len(given) == 1):
        return {names[0]: given.get("x", next(iter(given.values())))}
    return None


def check_inputs(arrays: dict[str, np.ndarray], session: Any, *, source: str = "inputs") -> dict[str, np.ndarray]:
    """Check user-given arrays against the session's input signature; CompressError naming the first mismatch."""
    sig = signature(session)
    names = [n for n, _, _ in sig]
    arrays = by_input_name(names, arrays) or arrays  # 'x' or the only array, as --calibration takes them
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CompressError(f"{source}: missing input(s) {shorten_list(missing, 'inputs')}; the model expects "
                            f"{shorten_list(names, 'inputs')}, got {shorten_list(sorted(arrays), 'arrays')}")
    feed = {}
    for name, dtype, shape in sig:
        arr = np.asarray(arrays[name])
        check_dtype(arr, dtype, source=source, name=name)
        if arr.ndim != len(shape) or any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(shape, arr.shape)
        ):
            raise CompressError(f"{source}: input {name!r}: expected shape {shape}, got {list(arr.shape)}"
                                f"{_fixed_batch_hint(shape, arr.shape)}")
        if arr.ndim and arr.shape[0] == 0:
            raise CompressError(f"{source}: input {name!r} is empty (shape {list(arr.shape)}); give at least one "
                                "sample")
        feed[name] = np.require(arr, requirements="C")  # ascontiguousarray makes a scalar 1-d
    return feed


def _fixed_batch_hint(shape: list, got: tuple[int, ...]) -> str:
    """The way out when only a fixed first (batch) dimension differs: the arrays are fed whole, as one batch, so a
    file of many samples (a calibration set) fits a model that fixes its batch only once cut to that many rows."""
    if len(got) != len(shape) or not shape or not isinstance(shape[0], int) or shape[0] < 1 or got[0] <= shape[0]:
        return ""
    named = next((i for i, d in enumerate(shape) if isinstance(d, str) and
                  ("batch" in d.lower() or d.lower() in ("n", "b", "bs"))), None)
    if named is not None:  # a state [layers, batch, hidden]: axis 0 is not the batch at all ('H', 'seq' are not)
        return (f"; axis 0 is fixed at {shape[0]} and the batch ({shape[named]!r}) is axis {named}: put the rows "
                f"there (numpy.moveaxis(a, 0, {named}) for rows saved first)")
    if any(isinstance(d, int) and d > 0 and d != s for d, s in zip(shape[1:], got[1:])):
        return ""
    return (f"; the model fixes its batch at {shape[0]} and the arrays are fed whole, as one batch: save "
            f"{shape[0]} of the {got[0]} rows (x[:{shape[0]}])")


def check_dtype(array: np.ndarray, dtype: Any, *, source: str, name: str) -> None:
    """CompressError naming the file (`source`) and the input when `array` is not of the input's `dtype` (ORT's own
    error names the model: "Unexpected input data type. Actual: (tensor(double))")."""
    if array.dtype != np.dtype(dtype):
        raise CompressError(f"{source}: input {name!r}: expected dtype {np.dtype(dtype)}, got {array.dtype}")


def rows_of(array: np.ndarray, batch: int, axis: int = 0) -> np.ndarray:
    """`batch` samples of `array` along `axis` (repeated when it has fewer), never a copy of the whole array (it may
    be memory-mapped)."""
    head = np.take(array, range(min(batch, array.shape[axis])), axis=axis)
    return np.take(np.concatenate([head] * -(-batch // head.shape[axis]), axis=axis), range(batch), axis=axis)


def batch_of(feed: dict[str, np.ndarray], batch_axes: dict[str, int | None] | None = None) -> int:
    """Batch size of a feed: the declared batch axis (`batch_axes`, from --batch-axis; axis 0 unless said) of its
    first input that has one (1 when none has: scalars, inputs declared without a batch axis)."""
    axes = batch_axes or {}
    for name, array in feed.items():
        axis = axes.get(name, 0)
        if axis is not None and axis < np.ndim(array):
            return int(np.shape(array)[axis])
    return 1


def check_batch_dims(shapes: dict[str, dict[str, Any]] | None, dims: dict[str, int], batches: Iterable[int]) -> None:
    """CompressError when --dim sizes an input's batch axis (axis 0, or its --batch-axis) to other than a batch timed:
    the inputs would have the --dim size while the row says --batch, and its throughput would be off by their
    ratio. `shapes`: {input: {"shape": [...]}} (identity.model_inputs), symbolic dims as names."""
    axes = getattr(dims, "batch_axes", {})
    for name, spec in (shapes or {}).items():
        axis, shape = axes.get(name, 0), spec.get("shape") or []
        dim = shape[axis] if axis is not None and axis < len(shape) else None
        other = next((b for b in batches if isinstance(dim, str) and dim in dims and dims[dim] != b), None)
        if other is not None:
            raise CompressError(f"--dim {dim}={dims[dim]}: {dim} is the batch axis (axis {axis}) of input {name!r}, "
                                f"which --batch sets ({other}); drop --dim {dim}, or time --batch {dims[dim]}")


def check_dims_named(model: Path, dims: dict[str, int], *others: Path) -> None:
    """CompressError when a --dim names no symbolic dimension of the inputs of `model` (or of `others`, the models
    the same --dim sizes too: --against's): it would size nothing, and the run would go on as if it had
    (`compress bench magika.onnx --dim seq=128` timed Magika's own shape)."""
    from compress.onnx.graph import graph_inputs, load_model

    models = [m for m in (model, *others) if Path(m).suffix.lower() != ".ort"]  # ORT says what an .ort model takes
    if not dims or len(models) <= len(others):
        return
    named = sorted({d.dim_param for m in models for v in graph_inputs(load_model(m, weights=False).graph)
                    for d in v.type.tensor_type.shape.dim if d.HasField("dim_param") and d.dim_param})
    for name, size in dims.items():
        if name not in named:
            have = f"symbolic dimensions: {', '.join(named)}" if named else "no named symbolic dimension"
            where = " or ".join(str(m) for m in models)
            raise CompressError(f"--dim {name}={size}: {where} has no input dimension named {name!r} ({have})")
