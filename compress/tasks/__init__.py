"""Tasks: what a model's outputs mean, how a student learns them from the teacher, and how they are judged.

A task owns the loss against the teacher (and against labels), the metrics, the primary metric with its direction,
the quantize gate's budget key and the [distill] keys it reads. Three are built in, chosen by `[data] task`:

  classification  one (N, K) logits output; Hinton KD; accuracy
  embedding       one (N, D) embedding; cosine (or MSE) to the teacher's; cosine and neighbour_overlap@10
  tensors         any outputs of any shape; per-output MSE normalised by the teacher's mean square; per-output
                  cosine and SQNR (dB) to the teacher; labels of any shape optional

A user's `[evaluate] metric = "module:function"` adds its own figures and, by default, becomes the primary metric
everywhere (best epoch, gates, the final pick, `compress quantize --metric`). The stages never ask which task
they hold: they call `Evaluation` and the task's loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from compress.tasks.base import Task
    from compress.tasks.metric import UserMetric

TASKS: dict[str, str] = {
    "classification": "compress.tasks.classification:Classification",
    "embedding": "compress.tasks.embedding:Embedding",
    "tensors": "compress.tasks.tensors:Tensors",
}
"""Every task, by the name `[data] task` takes, and the class that implements it."""


@dataclass(frozen=True)
class Metric:
    """A figure by name and its direction."""

    name: str
    higher_is_better: bool = True

    def better(self, a: float, b: float) -> bool:
        """Whether `a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b

    def drop(self, reference: float, got: float) -> float:
        """How much worse `got` is than `reference` (negative when better)."""
        return reference - got if self.higher_is_better else got - reference

    def worst(self) -> float:
        return float("-inf") if self.higher_is_better else float("inf")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "higher_is_better": self.higher_is_better}


def task_named(name: str) -> "Task":
    """The task object for `[data] task`."""
    import importlib

    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


@dataclass(frozen=True)
class Evaluation:
    """How every model of a run is judged: the task's figures, plus the user's own metric when given.

    `evaluate(outputs, targets, reference)`: `outputs` holds a whole split's outputs by output name (numpy, in data
    order), `targets` the split's targets as the data gave them (None without labels), `reference` the teacher's
    outputs on the same split (None for the teacher itself, which is then its own reference).
    """

    task: "Task"
    user: "UserMetric | None" = None

    @property
    def primary(self) -> Metric:
        return self.user.primary if self.user is not None else self.task.primary

    @property
    def budget_key(self) -> str:
        """The [quantize] key holding the allowed drop of the primary metric."""
        return "max_metric_drop" if self.user is not None else self.task.budget_key

    def __call__(self, outputs: Mapping[str, Any], targets: Any, reference: Mapping[str, Any] | None) -> dict:
        figures = self.task.metrics(outputs, targets, reference if reference is not None else outputs)
        if self.user is not None:
            mine = self.user(outputs, targets)
            self.user.say_replaced(sorted(set(mine) & set(figures)), self.task.name)
            figures.update(mine)
        return figures


def evaluation_for(task: str, evaluate: Any = None, *, base_dir: Any = None, origin: str = "evaluate") -> Evaluation:
    """The Evaluation of a pipeline or a CLI call: task by name, and the [evaluate] section (or None)."""
    user = None
    if evaluate is not None and evaluate.metric:
        from compress.tasks.metric import UserMetric

        user = UserMetric(evaluate.metric, base_dir=base_dir, origin=f"{origin}.metric", primary=evaluate.primary,
                          higher_is_better=evaluate.higher_is_better)
    return Evaluation(task=task_named(task), user=user)
