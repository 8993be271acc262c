"""What a quantized model is judged by: a `Gate` holds the scoring function, the figure that decides, its budget and
one sentence saying what it measures, which every summary prints.

The pipeline's gate is its task's (or the user's) primary figure on the validation split. `compress quantize` picks
its gate from what it is given: accuracy with labelled `--data`; the user's `--metric` with `--data` of any
targets; otherwise agreement with the fp32 model suited to the outputs: top-1 agreement for one (N, K) class-logits
output, per-output cosine and SQNR for anything else.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from compress.errors import CompressError, InputsRejected, first_line
from compress.tasks import Metric


@dataclass(frozen=True)
class Gate:
    """`score(path) -> figures` of a model; `metric` decides, within `budget` (key: the option or config key that
    sets it, for messages); `what` describes it in one sentence."""

    score: Callable[[Path], dict[str, float]]
    metric: Metric
    budget: float
    key: str
    what: str
    shapes: Mapping[str, tuple[int, ...]] | None = None
    """The fp32 model's judged outputs' shapes, when the gate ran it (what a warning about them shows)."""
    samples: int | None = None
    """How many samples a fraction figure (accuracy, top-1 agreement) counts: its drop is then also said in samples,
    and `what` says when the budget is under two samples' worth (one sample of 300 is 0.33 points: such a budget
    cannot tell attempts apart)."""

    def __post_init__(self) -> None:
        clause = resolution(self.budget, self.samples or 0)
        if clause and not self.what.endswith(clause):  # idempotent: dataclasses.replace runs this again
            object.__setattr__(self, "what", self.what + clause)

    def in_samples(self, drop: float) -> str:
        """' (4 of 300 samples)' for a fraction figure's drop, else ''."""
        return f" ({round(drop * self.samples)} of {self.samples} samples)" if self.samples else ""

    def drop(self, reference: float, got: float) -> float:
        return self.metric.drop(reference, got)

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric.to_json(), "budget": self.budget, "key": self.key, "what": self.what}


def outputs_of(path: Path, feeds: Mapping[str, np.ndarray], *, batch: int = 256, provider: str = "cpu",
               axes: Mapping[str, int | None] | None = None) -> dict:
    """{output name: array} of the model at `path` over whole input arrays, `batch` samples at a time along each
    input's batch axis (`axes`: axis 0 by default, None for an input without one, a scalar never has one). A model
    whose batch dimension is fixed runs at that size, the last chunk zero-padded and cut."""
    import os

    from compress.bench.providers import open_session, quiet_run
    from compress.heap import Watch

    session, _ = open_session(path, provider, threads=os.cpu_count() or 1, strict=True)
    axis = {k: (None if not np.ndim(v) else (axes or {}).get(k, 0)) for k, v in feeds.items()}
    first = next(((k, a) for k, a in axis.items() if a is not None), None)
    n = np.shape(feeds[first[0]])[first[1]] if first else 1
    shape = next((i.shape for i in session.get_inputs() if first and i.name == first[0]), None)
    size = shape[first[1]] if shape and len(shape) > first[1] else None  # the batch of the input cut in chunks
    fixed = size if isinstance(size, int) and size > 0 else None
    from compress.quantize.sensitivity import rows_that_fit  # ORT's arena keeps a whole run's activations

    step = fixed or rows_that_fit(path, {k: v if axis[k] is None else np.take(v, [0], axis=axis[k])
                                         for k, v in feeds.items()}, batch)
    names = [o.name for o in session.get_outputs()]
    parts: list[list] = [[] for _ in names]
    quiet = quiet_run()  # a failed run's error is raised below, in one line
    growth = Watch()
    try:
        for start in range(0, n, step):
            chunk = {k: np.asarray(v) if axis[k] is None else _samples(v, start, min(start + step, n), axis[k])
                     for k, v in feeds.items()}
            if fixed and n - start < step:
                chunk = {k: v if axis[k] is None else _pad(v, step, axis[k]) for k, v in chunk.items()}
            for i, value in enumerate(session.run(None, chunk, quiet)):
                parts[i].append(value)
            del chunk
            growth.check()  # freed buffers go back to the system once the pass grows (compress/heap.py)
    except CompressError:
        raise
    except Exception as exc:
        raise InputsRejected(path, "the gate's inputs", first_line(exc)) from None
    # several chunks (or a padded one) join on each output's own batch axis (a recurrent state has it on axis 1, a
    # detector's variable count of boxes on none) and are cut to the samples; one chunk stays as it is
    rows = [min(step, n - start) if not fixed else step for start in range(0, n, step)]
    return {name: _joined(p, rows, n) if np.ndim(p[0]) and (len(p) > 1 or fixed) else p[0]
            for name, p in zip(names, parts)}


def _joined(parts: list[np.ndarray], rows: list[int], n: int) -> np.ndarray:
    """Chunks of one output joined on the first axis whose size is each chunk's row count, cut to `n` samples;
    chunks of one sample each with no such axis (a batch-1 model that squeezes its batch away: (5,) a sample) are
    stacked on a new axis 0; any other output with no such axis (its size is not per sample) is the first chunk's."""
    axis = next((a for a in range(np.ndim(parts[0]))
                 if all(np.ndim(p) > a and np.shape(p)[a] == r for p, r in zip(parts, rows))), None)
    if axis is None and len(parts) > 1 and set(rows) == {1} and len({np.shape(p) for p in parts}) == 1:
        return np.stack(parts)[:n]  # judged on every sample: it was the first one's alone
    if axis is None:
        return parts[0]
    return _samples(np.concatenate(parts, axis=axis), 0, n, axis)


def _samples(v: Any, start: int, stop: int, axis: int) -> np.ndarray:
    """Samples start..stop of `v` along `axis`: a view, not a copy (np.take copied; a detector's 64 maps at 640x640
    are 105 MB a pass)."""
    return np.asarray(v)[(slice(None),) * axis + (slice(start, stop),)]


def _pad(v: np.ndarray, size: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * v.ndim
    pad[axis] = (0, size - v.shape[axis])
    return np.pad(v, pad)


FEATURE_WORDS = ("embed", "feature", "hidden", "pool", "vector", "encod", "latent")
"""An (N, D) output named with one of these is an embedding, whose argmax means nothing, not class logits."""
VALUE_WORDS = ("box", "coord", "landmark", "keypoint", "kpt", "offset", "delta", "regress", "depth", "pose", "xyxy",
               "xywh", "loc")
"""Nor is one named with these: values regressed per sample (a box's four corners), whose argmax is noise (a box
regressor's (N, 4) output was judged by it: 2 argmax flips of 64, at cosine 0.9999 to fp32)."""


def looks_like_logits(outputs: Mapping[str, np.ndarray], task: str | None = None) -> bool:
    """One output of shape (N, K) (trailing 1s allowed, as in [N, 1000, 1, 1]) with K >= 2, not named like an
    embedding (FEATURE_WORDS): class logits. `task`: what the model says it is (declared_task); a model of the
    embedding or tensors task holds no logits, whatever their shape."""
    if len(outputs) != 1 or task in ("embedding", "tensors"):
        return False
    name, value = next(iter(outputs.items()))
    shape = np.shape(value)
    rest = [d for d in shape[1:] if d != 1]
    named_feature = any(w in name.lower() for w in (*FEATURE_WORDS, *VALUE_WORDS))
    return len(shape) >= 2 and len(rest) == 1 and rest[0] >= 2 and not named_feature


def _same(a: Path, b: Path | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()


def accuracy_gate(feeds: Mapping[str, np.ndarray], labels: np.ndarray, budget: float, *, key: str,
                  source: str, axes: Mapping[str, int | None] | None = None, batch: int = 256,
                  known: tuple[Path, Mapping[str, np.ndarray]] | None = None, output: str | None = None) -> Gate:
    """Top-1 accuracy of an output's argmax (`output`, else the first) on labelled inputs, run `batch` samples at a
    time. `known`: a model's outputs on these feeds, already computed (the fp32 model's, when the caller looked at
    them): not run again. Labels other than one class index per sample are a one-line CompressError."""
    from compress.onnx.parity import top1_of

    rows = next((int(np.shape(v)[(axes or {}).get(k, 0)]) for k, v in feeds.items()
                 if np.ndim(v) and (axes or {}).get(k, 0) is not None), None)
    wrong = not_one_label_each(labels, rows)
    if wrong:
        raise CompressError(f"{source}: {key} gates on labels, which must be {wrong}")
    labels = np.asarray(labels).astype(np.int64).reshape(-1)

    def score(path: Path) -> dict[str, float]:
        got = known[1] if known is not None and _same(path, known[0]) else outputs_of(path, feeds, axes=axes,
                                                                                        batch=batch)
        out = got[output] if output else next(iter(got.values()))
        return {"accuracy": float(np.mean(top1_of(out) == labels))}

    return Gate(score, Metric("accuracy"), budget, key, f"accuracy on {len(labels)} labelled samples from {source}",
                samples=len(labels))


def not_one_label_each(labels: Any, samples: int | None) -> str | None:
    """What is wrong with `labels` as one class index per sample (`samples`, when known), as the end of a sentence
    ('one class index per sample (200 samples); got an array of shape (150,)'); None when nothing is."""
    shape = np.shape(labels)
    if shape and all(d == 1 for d in shape[1:]) and (samples is None or shape[0] == samples):
        return None
    hint = " (one-hot labels: np.argmax(y, axis=1) gives the indices)" if len(shape) == 2 else ""
    return f"one class index per sample ({samples} samples); got an array of shape {shape}{hint}"


def resolution(budget: float, samples: int) -> str:
    """A clause for a gate whose budget is under two samples' worth: one sample more or less then decides."""
    if not samples or not 0 < budget * samples < 2:
        return ""
    return (f"; one sample is {100 / samples:.2f} points, so the budget of {100 * budget:.2f} points is "
            f"{budget * samples:.1f} samples: attempts within a sample or two of each other are not told apart "
            "(more samples resolve it)")


def agreement_gate(reference: Path, feeds: Mapping[str, np.ndarray], *, budget_top1: float, budget_cosine: float,
                   outputs: Sequence[str] = (), source: str, axes: Mapping[str, int | None] | None = None,
                   expected: Mapping[str, np.ndarray] | None = None, task: str | None = None) -> Gate:
    """Agreement with the fp32 model at `reference` on `feeds`: top-1 agreement when the judged outputs are class
    logits, else per-output cosine and SQNR (the mean cosine decides). `outputs` chooses which are judged (all).
    `expected`: the reference's outputs on `feeds` when the caller has them (not run again). `task`: what the
    outputs are known to be (the targets given say so), else what the model says (declared_task)."""
    from compress.tasks.tensors import Tensors

    expected = dict(expected) if expected is not None else outputs_of(reference, feeds, axes=axes)
    chosen = list(outputs) or list(expected)
    missing = [o for o in chosen if o not in expected]
    if missing:
        raise CompressError(f"--output: {reference} has no output {missing[0]!r}; its outputs are "
                            f"{', '.join(expected)}")
    expected = {k: expected[k] for k in chosen}
    if all(np.asarray(v).dtype.kind in "biu" for v in expected.values()):  # class indices, labels: cosine took them
        return _agreement_gate(reference, feeds, expected, budget_top1, source, axes)  # as one vector (2 points lost
    from compress.onnx.graph import declared_task

    if looks_like_logits(expected, task or declared_task(reference)):  # at cosine 0.993)
        from compress.onnx.parity import top1_of

        labels = top1_of(next(iter(expected.values())))

        def top1(path: Path) -> dict[str, float]:
            got = expected[chosen[0]] if _same(path, reference) else outputs_of(path, feeds, axes=axes)[chosen[0]]
            return {"top1_agreement": float(np.mean(top1_of(got) == labels))}

        return Gate(top1, Metric("top1_agreement"), budget_top1, "--max-accuracy-drop",
                    f"top-1 agreement with the fp32 model on {source}", samples=len(labels))
    from compress.onnx.skeleton import graph_of

    task, real = Tensors(), real_tokens(feeds, expected, graph_of(reference).graph)
    judged = {k: _at(v, real.get(k)) for k, v in expected.items()}

    def figures(path: Path) -> dict[str, float]:
        got = expected if _same(path, reference) else outputs_of(path, feeds, axes=axes)
        return task.metrics({k: _at(got[k], real.get(k)) for k in chosen}, None, judged)

    padded = f"; padded tokens left out ({MASK_INPUT}): {', '.join(real)}" if real else ""
    return Gate(figures, Metric("cosine"), budget_cosine, "--max-cosine-drop",
                f"mean cosine to the fp32 model's outputs ({', '.join(chosen)}; SQNR per output beside it) on "
                f"{source}{padded}", shapes={k: tuple(np.shape(v)) for k, v in expected.items()})


def _agreement_gate(reference: Path, feeds: Mapping[str, np.ndarray], expected: dict[str, np.ndarray], budget: float,
                    source: str, axes: Mapping[str, int | None] | None) -> Gate:
    """Agreement of integer outputs (class indices, labels, counts) with the fp32 model's: the share of their values
    that are equal, averaged over the outputs."""
    def agreement(path: Path) -> dict[str, float]:
        got = expected if _same(path, reference) else outputs_of(path, feeds, axes=axes)
        return {"top1_agreement": float(np.mean([np.mean(np.asarray(got[k]) == np.asarray(v))
                                                 for k, v in expected.items()]))}

    first = next(iter(expected.values()))
    samples = len(first) if len(expected) == 1 and np.ndim(first) == 1 else None  # one value a sample
    return Gate(agreement, Metric("top1_agreement"), budget, "--max-accuracy-drop",
                f"agreement of the integer outputs ({', '.join(expected)}) with the fp32 model's on {source}",
                samples=samples)


MASK_INPUT = "attention_mask"
"""The input name Hugging Face exports give the padding mask (1 for a real token, 0 for padding)."""


def real_tokens(feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                graph: Any = None) -> dict[str, np.ndarray]:
    """{output: its (N, T) mask} for each output whose axes 0 and 1 are a 2-D `attention_mask` input's: a padded
    token's state is read by nobody (pooling and heads leave it out), and it is the one that moves most under int8,
    so the cosine gate judges the real tokens (all-MiniLM-L6-v2's token states, dynamic int8, seq 64: cosine drop
    0.018 over every position, 0.011 over real tokens; its pooled sentence embeddings 0.007). Axis 1 is the tokens'
    when `graph` names it as the mask's (a symbolic dimension); where either is a number, only an output of 3 or more
    dimensions (N, T, ...) is taken: a pooled (N, D) output whose D happens to equal T is not a token axis."""
    mask = feeds.get(MASK_INPUT)
    if mask is None or np.ndim(mask) != 2:
        return {}
    keep = np.asarray(mask) != 0
    seq = _axis_name(graph, MASK_INPUT)

    def tokens(name: str, value: np.ndarray) -> bool:
        if np.ndim(value) < 2 or np.shape(value)[:2] != keep.shape:
            return False
        named = _axis_name(graph, name)
        return named == seq if seq and named else np.ndim(value) >= 3

    return {k: keep for k, v in outputs.items() if tokens(k, v)}


def _axis_name(graph: Any, name: str) -> str | None:
    """The symbolic name of axis 1 of the graph input or output `name`, or None (a number, or not declared)."""
    if graph is None:
        return None
    for value in (*graph.input, *graph.output):
        if value.name == name and value.type.HasField("tensor_type"):
            dims = value.type.tensor_type.shape.dim
            return dims[1].dim_param or None if len(dims) > 1 else None
    return None


def _at(value: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """`value` with its padded positions (where `keep` is False) zeroed: they drop out of every per-sample cosine's
    dot product and norms alike, and of the SQNR's signal and noise. A NaN or inf there stays: a non-finite output
    fails the gate wherever it is (mean pooling multiplies it by the mask's 0 and gets NaN)."""
    if keep is None:
        return value
    where = keep.reshape(keep.shape + (1,) * (np.ndim(value) - 2)) | ~np.isfinite(value)
    return np.where(where, value, np.zeros((), np.asarray(value).dtype))


def metric_gate(metric: Any, reference: Path, feeds: Mapping[str, np.ndarray], targets: Any, budget: float, *,
                source: str, axes: Mapping[str, int | None] | None = None) -> Gate:
    """The user's `module:function` metric (compress.tasks.metric.UserMetric) on the model's outputs over `feeds`
    and their `targets`. It runs once on the fp32 `reference` here, so a broken metric fails before any work and
    its primary figure (the first it returns, unless named) is known."""
    first = metric(outputs_of(reference, feeds, axes=axes), targets)

    def score(path: Path) -> dict[str, float]:
        return dict(first) if _same(path, reference) else metric(outputs_of(path, feeds, axes=axes), targets)

    return Gate(score, metric.primary, budget, "--max-metric-drop", f"{metric.target} on {source}")
