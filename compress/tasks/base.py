"""The Task interface, and the one way outputs are named: every model's outputs become a mapping from output name
(the ONNX output names) to a batch-first tensor or array, whatever `forward` returned (a tensor, a tuple, a dict)."""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Sequence

from compress.errors import CompressError
from compress.tasks import Metric

LossFn = Callable[[Mapping[str, Any], "Mapping[str, Any] | None", Any, Any], Any]
"""loss(student outputs, teacher outputs or None, targets or None, batch indices) -> scalar tensor."""


class Task:
    """What the outputs mean. Subclasses set the class attributes and implement `make_loss` and `metrics`."""

    name: ClassVar[str]
    primary: ClassVar[Metric]
    budget_key: ClassVar[str]
    """The [quantize] key holding the allowed drop of the primary metric."""
    labels: ClassVar[str]
    """'required', 'optional' or 'none': whether the data must, may or cannot carry targets."""
    default_output: ClassVar[str] = "output"
    """The name of a single tensor output."""
    reads: ClassVar[frozenset[str]] = frozenset()
    """[distill] keys only this task's loss reads; set in a file for another task, they are refused at load."""
    losses: ClassVar[tuple[str, ...]] = ()
    """Values `[distill] loss` takes for this task (empty: the key does not apply)."""
    user_loss: ClassVar[bool] = False
    """Whether `[distill] loss = "module:function"` (the hard loss against labels) applies."""

    def output_names(self, out: Any) -> tuple[str, ...]:
        """Names of a model's outputs from what its forward returned (the teacher's decide for a run)."""
        return output_names_of(out, self.default_output)

    def check_outputs(self, outputs: Mapping[str, Any], *, num_classes: int, teacher: Mapping[str, Any] | None,
                      origin: str, spec: str) -> None:
        """Raise CompressError (naming `origin`) when a model's outputs on a batch of 2 cannot serve this task."""

    def make_loss(self, settings: Any, *, teacher: bool, labels: bool, train_reference: Any = None,
                  base_dir: Any = None, seed: int = 0) -> LossFn:
        raise NotImplementedError

    def metrics(self, outputs: Mapping[str, Any], targets: Any, reference: Mapping[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def why_not(self, key: str) -> str:
        """Why a [distill] key that another task reads does not apply here (for the load-time error)."""
        return f"the {self.name} task does not use it"


def output_names_of(out: Any, default: str) -> tuple[str, ...]:
    """('logits',) for a tensor, the keys of a dict, ('output0', 'output1', ...) for a tuple."""
    if isinstance(out, Mapping):
        return tuple(str(k) for k in out)
    if isinstance(out, (tuple, list)):
        return tuple(f"output{i}" for i in range(len(out)))
    return (default,)


def as_outputs(out: Any, names: Sequence[str]) -> dict[str, Any]:
    """A model's raw outputs as {name: tensor}, in the order of `names`."""
    if isinstance(out, Mapping):
        return {n: out[n] for n in names}
    if isinstance(out, (tuple, list)):
        return dict(zip(names, out))
    return {names[0]: out}


TAKES = "compress takes a tensor, or a tuple or dict of tensors, from forward"


def not_tensors(out: Any) -> str | None:
    """What in a forward's result is not a tensor and the way out, in words ("'aux' as a list, but compress takes
    ...; give each of its tensors a key of its own"), or None for a tensor, or a tuple, list or dict of tensors: the
    forms every stage takes (training, the teacher's cached outputs, ONNX export)."""
    import dataclasses

    import torch

    if isinstance(out, torch.Tensor):
        return None
    if dataclasses.is_dataclass(out) and not isinstance(out, Mapping):
        fields = [f.name for f in dataclasses.fields(out)] or ["..."]
        example = ", ".join(f"{n!r}: out.{n}" for n in fields[:3])
        return (f"{type(out).__name__}, a dataclass, but {TAKES}; return its tensors as a dict ({{{example}}}) or "
                f"the one tensor (out.{fields[0]})")
    if not isinstance(out, (Mapping, tuple, list)):
        return f"{_kind(out)}, but {TAKES}"
    keyed = isinstance(out, Mapping)
    items = [(repr(str(k)), v) for k, v in out.items()] if keyed else \
        [(f"item {i} of the {type(out).__name__}", v) for i, v in enumerate(out)]
    if not items:
        return f"an empty {type(out).__name__}, but {TAKES}"
    name, value = next(((n, v) for n, v in items if not isinstance(v, torch.Tensor)), (None, None))
    if name is None:
        return None
    if value is None:
        how = "leave it out of the dict when it has no value" if keyed else "return only the tensors"
    elif isinstance(value, (Mapping, tuple, list)):
        how = "give each of its tensors a key of its own" if keyed else "return one flat tuple of tensors"
    else:
        how = "make it a tensor (torch.as_tensor)"
    return f"{name} as {_kind(value)}, but {TAKES}; {how}"


def _kind(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


def rows(a: Any) -> Any:
    """(N, -1) float64 view of a batch-first array."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    return a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)


def check_batch_first(outputs: Mapping[str, Any], origin: str, spec: str, examples: int = 2) -> None:
    """Every output has the batch on axis 0 (compress joins and compares rows there; there is no batch-axis key):
    a CTC model's [T, B, C] log-probs are refused here, at validate, instead of after the teacher trained."""
    for name, value in outputs.items():
        shape = tuple(getattr(value, "shape", ()))
        if not shape or shape[0] != examples:
            raise CompressError(f"{origin}.model: {spec} returns output {name!r} of shape {shape} for {examples} "
                                f"examples; {batch_first_advice(examples)}")


def batch_first_advice(examples: int) -> str:
    """What to do with an output whose batch is not on axis 0 (validate's check above, and prediction's on each
    batch, compress.train.loop)."""
    return (f"compress needs every output batch-first (the {examples} examples on axis 0): move the batch axis first "
            "in forward (e.g. .transpose(0, 1)) and back in your loss if it needs it")


def single(outputs: Mapping[str, Any], task: str, origin: str, spec: str) -> Any:
    """The one output of a single-output task, or one line naming what the model returned instead."""
    if len(outputs) != 1:
        raise CompressError(f"{origin}.model: {spec} returns {len(outputs)} outputs ({', '.join(outputs)}); the "
                            f"{task} task takes one; use [data] task = 'tensors' for several outputs")
    return next(iter(outputs.values()))
