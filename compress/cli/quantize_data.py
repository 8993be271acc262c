"""What `compress quantize` reads from the files it is given: model inputs from .npz files (checked), the gate
those and the options make, calibration batches and the inputs latency is timed on."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.errors import CompressError, InputsRejected

SAMPLES = 64
"""Seeded random inputs the agreement gate runs on when no data is given."""


def read_inputs(model: Path, path: Path, option: str, axes: dict[str, int | None] | None = None) -> dict[str, Any]:
    """{input name: array} from an .npz: arrays named like the model's inputs, or 'x' (or the only array) for a
    one-input model; each array's rank and fixed sizes checked against the model's input (its batch axis, `axes`:
    0 by default, may hold any number of samples)."""
    from compress.bench.inputs import by_input_name, read_npz
    from compress.onnx.graph import graph_inputs
    from compress.onnx.skeleton import graph_of

    arrays = read_npz(path, expects=f"{option} expects an .npz")
    inputs = graph_inputs(graph_of(model).graph)  # the graph parsed once a file
    names = [i.name for i in inputs]
    got = by_input_name(names, arrays)
    if got is None:
        raise CompressError(f"{path}: {option} expects one array per model input ({', '.join(names)}), or 'x' for "
                            f"a model with one input; got {', '.join(sorted(arrays))}")
    empty = next((k for k, v in got.items() if getattr(v, "size", 1) == 0), None)
    if empty is not None:
        raise CompressError(f"{path}: {option} expects at least one sample; the array for input {empty!r} is empty "
                            f"(shape {tuple(got[empty].shape)})")
    check_shapes(inputs, got, f"{path}: {option}", axes or {})
    _check_values(inputs, arrays, got, f"{path}", option, axes or {})
    return got


def _check_values(inputs: list[Any], arrays: dict[str, Any], got: dict[str, Any], where: str, option: str,
                  axes: dict[str, int | None]) -> None:
    """One line naming the file and the first array not of its input's dtype (compress bench's line; ORT's named the
    model) or holding NaN or inf (a NaN in --calibration read as "no quantized model met the budget" after every
    remedy), before any of them runs."""
    import numpy as np
    from onnx import helper

    from compress.bench.inputs import check_dtype

    for info in inputs:
        elem = info.type.tensor_type.elem_type
        want = np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else None
        if want is not None and want != np.dtype(object):  # strings go as numpy gives them
            check_dtype(np.asarray(got[info.name]), want, source=where, name=info.name)
    for name, array in got.items():  # --inputs too: the agreement gate judges on them
        key = next((k for k, v in arrays.items() if v is array), name)  # 'x' for a one-input model
        check_finite(array, where, f"array {key!r}", option, axes.get(name, 0))


def check_finite(array: Any, where: str, name: str, option: str, axis: int | None = 0) -> None:
    """The pipeline's line for NaN in an array of a file (compress.data.arrays.check_bad), indexed along the array's
    batch `axis` (None: the array is one sample). An infinity is taken: an additive attention mask holds -inf where a
    position is not allowed, and the quantizer keeps a tensor with an infinite range in float."""
    import numpy as np

    from compress.data.arrays import check_bad

    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return
    rows = np.moveaxis(array, axis, 0) if axis is not None and axis < array.ndim else array[None]
    check_bad(rows, np.isnan(rows), where, name, None, "values",
              f"{option} expects numbers, not NaN: clean the data or drop those rows")


def check_shapes(inputs: list[Any], got: dict[str, Any], where: str, axes: dict[str, int | None]) -> None:
    """One line naming the first array whose rank or fixed sizes are not its input's (`inputs`: the graph's; ORT's
    own message was cut before the sizes: 'Got invalid dimensions for input: input for the following indices')."""
    from compress.onnx.graph import shape_mismatch

    wrong = shape_mismatch(inputs, got, axes)
    if wrong is not None:
        name, shape, want = wrong
        raise CompressError(f"{where}: input {name!r} has shape {'x'.join(map(str, shape)) or 'scalar'}, "
                            f"the model takes {want or 'a scalar'} ('?': any size)")


def read_targets(path: Path) -> Any:
    """The targets of a --data file: 'y', or {NAME: array} for 'y_NAME' arrays; None when there are none."""
    from compress.bench.inputs import read_npz

    arrays = read_npz(path, expects="--data expects an .npz", only=lambda k: k == "y" or k.startswith("y_"))
    for key, array in arrays.items():
        check_finite(array, f"{path}", f"array {key!r}", "--data")
    if "y" in arrays:
        return arrays["y"]
    several = {k[2:]: v for k, v in arrays.items() if k.startswith("y_")}
    return several or None


def _same_rows(targets: Any, rows: int, path: Path) -> None:
    """A target per input row, or one line naming the arrays (a metric was handed both and failed in numpy)."""
    import numpy as np

    named = targets.items() if isinstance(targets, dict) else [("", targets)] if targets is not None else []
    for name, array in named:
        if np.ndim(array) and len(array) != rows:
            raise CompressError(f"{path}: {'y_' + name if name else 'y'} has {len(array)} rows and the inputs "
                                f"{rows}; --data needs a target for every input row")


def gate_from(*args: Any, origin: Path | None = None, **kwargs: Any):
    """(the Gate, a warning line or None) from what the command was given (_gate_from; `named`: the model as the
    warning names it, the user's file where MODEL is a scratch copy). When the fp32 model does not run on the gate's
    inputs, the line names their file (`origin`), where the fault is (ids past the vocabulary, two inputs of
    different lengths, rows that differ in number): it named the model."""
    try:
        return _gate_from(*args, **kwargs)
    except InputsRejected as exc:
        if origin is None or exc.model != str(args[0]):
            raise
        raise CompressError(f"{origin}: {Path(exc.model).name} did not run on these inputs (check them against its "
                            f"inputs) in ONNX Runtime ({exc.why})") from None


def _gate_from(model: Path, calib: Any, data_npz: Path | None, metric: str | None, primary: str | None,
               higher: bool, outputs: tuple[str, ...], dims: dict[str, int], *, budgets: tuple[float, float, float],
               given: str | None = None, named: str | None = None):
    from compress.bench.inputs import batch_of
    from compress.onnx.graph import declared_task
    from compress.quantize.gate import accuracy_gate, agreement_gate, looks_like_logits, metric_gate, outputs_of

    accuracy_budget, cosine_budget, metric_budget = budgets
    fp32 = None  # the fp32 model's outputs on the gate's inputs, once looked at
    warning = None  # labels given with outputs that are not class logits: said, not used
    values = False  # targets that are values (a regressor's), not class indices
    declared = declared_task(model)  # what the model says its outputs are (a model compress exported)
    if data_npz is not None:
        feeds, targets = read_inputs(model, data_npz, "--data", dims.batch_axes), read_targets(data_npz)
        n = batch_of(feeds, dims.batch_axes)
        _same_rows(targets, n, data_npz)
        if metric is not None:
            from compress.tasks.metric import UserMetric

            if targets is None:  # the metric would be handed None for them
                raise CompressError(f"{data_npz}: --metric compares outputs with targets, and this file holds none "
                                    f"(arrays: {', '.join(_names(data_npz))}); save them in it as 'y', or 'y_NAME' "
                                    "for several")

            user = UserMetric(metric, base_dir=Path.cwd(), origin="--metric", primary=primary,
                              higher_is_better=higher)
            return metric_gate(user, model, feeds, targets, metric_budget, source=f"{n} samples from "
                               f"{data_npz.name}", axes=dims.batch_axes), None
        fp32 = outputs_of(model, feeds, axes=dims.batch_axes) if targets is not None else None
        judged = _judged(model, fp32, outputs) if fp32 is not None else None
        labels = targets.get(next(iter(judged)) if len(judged) == 1 else None) if isinstance(targets, dict) else \
            targets  # 'y_NAME': the labels of output NAME, when it is the one judged (they were never used)
        values = labels is not None and _values_not_classes(labels, judged)  # a regressor's targets
        if labels is not None and not values and looks_like_logits(judged, declared):
            check_label_range(labels, judged, data_npz.name)  # the fp32 outputs are the gate's first score too
            return accuracy_gate(feeds, labels, accuracy_budget, key="--max-accuracy-drop", source=data_npz.name,
                                 axes=dims.batch_axes, known=(model, fp32), output=next(iter(judged))), None
        source = f"{n} samples from {data_npz.name}"
        if judged is not None:
            several = isinstance(targets, dict)
            names = ", ".join(f"'y_{k}'" for k in targets) if several else "'y'"
            why = ("hold values (fractional, or shaped like the output), not class indices" if values else
                   f"are not used: the judged outputs ({', '.join(judged)}) are not one set of class logits"
                   f"{' with its own y_NAME' if several else ''}")
            noun = "targets" if values else "labels"
            warning = (f"warning: {data_npz.name}: its {noun} ({names}) {why}, so the gate compares with the fp32 "
                       f"model; pass {'--output NAME for the logits y_NAME labels, or ' if several else ''}--metric "
                       f"module:function to gate on the {noun}")
    elif calib is not None:
        rows = batch_of(calib, dims.batch_axes)
        feeds, source = calib, (f"{rows} inputs from {given}" if given else f"{rows} calibration inputs")
    else:  # as many as were made: a fixed batch of 3 makes 63, --dim N=4 (the batch's name) 4
        feeds = _random(model, dims)
        source = f"{batch_of(feeds, dims.batch_axes)} seeded random inputs (pass --data for a real gate)"
    gate = agreement_gate(model, feeds, budget_top1=accuracy_budget, budget_cosine=cosine_budget, outputs=outputs,
                          source=source, axes=dims.batch_axes, expected=fp32,  # (the fp32 pass is not run twice)
                          task="tensors" if values else declared)
    if gate.metric.name == "cosine" and warning is None:
        shown = ", ".join(f"{k} {s}" for k, s in (gate.shapes or {}).items())  # the gate ran fp32 once already
        said = f"are the {declared} task's (its metadata says so)" if declared in ("tensors", "embedding") else \
            "do not look like class logits"
        warning = (f"warning: {named or model.name}: the outputs ({shown}) {said}, so the "
                   "gate is per-output cosine and SQNR to the fp32 model; pass --data with --metric module:function "
                   "to gate on your own figure")
    return gate, warning


def _values_not_classes(labels: Any, judged: dict[str, Any]) -> bool:
    """Targets a regressor is trained on, not class indices: fractional numbers shaped like the one judged output
    (trailing 1s aside). Whole numbers in that shape are one-hot labels, said so by the accuracy gate."""
    import numpy as np

    values = np.asarray(labels)
    if values.dtype.kind != "f" or len(judged) != 1:
        return False
    out = np.shape(next(iter(judged.values())))
    inner = [d for d in values.shape[1:] if d != 1], [d for d in out[1:] if d != 1]
    finite = values[np.isfinite(values)]
    return values.shape[:1] == out[:1] and inner[0] == inner[1] and not bool(np.all(finite == np.round(finite)))


def check_label_range(labels: Any, judged: dict[str, Any], source: str) -> None:
    """A one-line CompressError when class indices lie outside the logits' classes (a label of -1 or 1000 for 1000
    classes: no prediction can match it, so fp32 and int8 would both score 0% and any attempt would pass)."""
    import numpy as np

    from compress.quantize.gate import not_one_label_each

    name, logits = next(iter(judged.items()))
    values = np.asarray(labels)
    whole = values.dtype.kind in "biu" or (values.dtype.kind == "f" and bool(np.all(values == np.round(values))))
    if not whole:  # strings failed in numpy with a traceback; 0.5 was cut to 0
        shown = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in values.ravel()[:3])
        raise CompressError(f"{source}: --max-accuracy-drop gates on labels, which must be class indices (whole "
                            f"numbers); got {'text' if values.dtype.kind in 'USO' else values.dtype.name} values "
                            f"({shown}, ...)")
    if not_one_label_each(labels, None) or not np.size(labels):
        return  # a wrong shape is the accuracy gate's own one-line error
    classes = int(np.prod(np.shape(logits)[1:]))
    low, high = np.min(labels), np.max(labels)
    if low < 0 or high >= classes:
        raise CompressError(f"{source}: --max-accuracy-drop gates on labels, which must be class indices 0 to "
                            f"{classes - 1} (output '{name}' has {classes} classes); got labels from "
                            f"{low:g} to {high:g}")


def _names(path: Path) -> list[str]:
    """The names of an .npz's arrays (read before: a readable file)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return sorted(data.files)


def _judged(model: Path, fp32: dict[str, Any], outputs: tuple[str, ...]) -> dict[str, Any]:
    """The fp32 outputs the gate judges: those --output names (each checked), else all."""
    missing = [o for o in outputs if o not in fp32]
    if missing:
        raise CompressError(f"--output: {model} has no output {missing[0]!r}; its outputs are {', '.join(fp32)}")
    return {k: fp32[k] for k in outputs} if outputs else fp32


def _random(model: Path, dims: dict[str, int]) -> dict[str, Any]:
    """SAMPLES seeded random inputs that fit the model (token ids inside the vocabulary, masks of ones): at a fixed
    batch, one chunk a seed (compress.edge.ort_format.sample_batches: one session for them all)."""
    import numpy as np

    from compress.edge.ort_format import sample_batches
    from compress.onnx.graph import fixed_batch
    from compress.quantize.lean import release

    step = fixed_batch(model, getattr(dims, "batch_axes", None)) or SAMPLES
    chunks = sample_batches(model, batch=step, seeds=range(max(1, SAMPLES // step)), dims=dims)
    release()  # the session's pages
    if len(chunks) == 1:
        return chunks[0]
    axes = getattr(dims, "batch_axes", {})
    return {k: np.concatenate([c[k] for c in chunks], axis=axes.get(k, 0))  # an input without a batch axis whole
            if np.ndim(v) and axes.get(k, 0) is not None else v for k, v in chunks[0].items()}


def remedy_rows(model: Path, calib: Any, given: Any, data_npz: Path | None, dims: Any, *, dynamic: bool) -> Any:
    """The input rows the search's remedies read: the calibration rows; for a dynamic search (its remedies on)
    without them, the gate's (--inputs, else --data's inputs), since dynamic int8 calibrates nothing and its outlier
    check (compress.quantize.outliers) needs a few real rows."""
    if calib is not None or not dynamic:
        return calib
    if given is not None or data_npz is None:
        return given
    return read_inputs(model, data_npz, "--data", dims.batch_axes)


def calibration_batches(model: Path, calib: Any, dims: Any) -> Any:
    """Calibration inputs as feed batches along each input's batch axis: the model's fixed batch, else 32 rows. At a
    fixed batch the last one is filled up with the first rows again (the model takes no other size)."""
    if calib is None:
        return None
    import numpy as np

    from compress.bench.inputs import batch_of
    from compress.quantize.attempts import batched
    from compress.onnx.graph import fixed_batch

    fixed, axes = fixed_batch(model, dims.batch_axes), dims.batch_axes
    n = batch_of(calib, axes)
    if fixed and n % fixed:
        rows = np.arange(-(-n // fixed) * fixed) % n
        calib = {k: v if not np.ndim(v) or (axes or {}).get(k, 0) is None else np.take(v, rows, axis=axes.get(k, 0))
                 for k, v in calib.items()}
    return batched(calib, fixed or 32, axes)


def latency_feed(model: Path, calib: Any, dims: dict[str, int]) -> Any:
    """The inputs latency is timed on at a batch size: rows of the calibration inputs, else generated ones (made
    once a batch size: each is a session of the model, and the same seed gives the same inputs)."""
    import numpy as np

    from compress.bench.inputs import rows_of
    from compress.edge import sample_inputs

    made: dict[int, dict[str, Any]] = {}

    def feed(batch: int) -> dict[str, Any]:
        if calib is not None:
            axes = getattr(dims, "batch_axes", {})
            return {k: v if not np.ndim(v) or axes.get(k, 0) is None else rows_of(v, batch, axes.get(k, 0))
                    for k, v in calib.items()}
        if batch not in made:
            made[batch] = sample_inputs(model, batch=batch, dims=dims)
        return dict(made[batch])

    from compress.quantize.timing import Feed

    return Feed(feed, dict(getattr(dims, "batch_axes", {}) or {}))


def input_names(model: Path) -> list[str]:
    from compress.onnx.graph import graph_inputs
    from compress.onnx.skeleton import graph_of

    return [i.name for i in graph_inputs(graph_of(model).graph)]
