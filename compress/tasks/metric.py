"""The user's own metric: `[evaluate] metric = "module:function"` (or `compress quantize --metric`).

    def map50(outputs: dict[str, numpy.ndarray], targets) -> dict[str, float]

`outputs` holds a whole split's outputs by ONNX output name, in data order, as concatenated arrays (the same arrays
whether they came from torch during training or from ONNX Runtime after export); `targets` holds the split's
targets as the data source gave them (an array of any shape, or a dict of arrays; None without labels). The
`primary` figure (default: the first one returned) selects the best epoch, gates quantization, picks the final
model and heads the report.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping

from pydantic import Field, field_validator

from compress.errors import CompressError, shorten
from compress.section import Section
from compress.tasks import Metric

log = logging.getLogger("compress")


class UserMetric:
    """A loaded `module:function` metric with its primary figure and direction."""

    def __init__(self, target: str, *, base_dir: Any, origin: str, primary: str | None = None,
                 higher_is_better: bool = True) -> None:
        from compress.imports import import_object

        self.target, self.origin = target, origin
        self.fn = import_object(target, Path(base_dir or "."), origin)
        self.primary_name, self.higher_is_better = primary, higher_is_better

    @property
    def primary(self) -> Metric:
        return Metric(self.primary_name or "(first figure of " + self.target + ")", self.higher_is_better)

    def __call__(self, outputs: Mapping[str, Any], targets: Any) -> dict[str, float]:
        figures = self._figures(self._called(outputs, targets))
        if math.isnan(figures[self.primary_name]):
            raise CompressError(f"{self.origin}: {self.target} returned NaN for {self.primary_name!r}")
        return figures

    def _called(self, outputs: Mapping[str, Any], targets: Any) -> Any:
        try:
            return self.fn(dict(outputs), targets)
        except CompressError:
            raise
        except Exception as exc:
            raise MetricRaised(f"{self.origin}: {self.target} raised {type(exc).__name__}: {shorten(str(exc), 200)}"
                               ) from exc

    def check(self, outputs: Mapping[str, Any], targets: Any) -> str | None:
        """One call before training (`compress validate`), on an untrained model's outputs for a few validation rows:
        what the figures' form breaks (None, a non-number, no primary) is the CompressError the run would raise
        after the teacher's pass; an exception inside the metric, which such rows may cause and real ones not, is
        a warning line (returned)."""
        primary = self.primary_name
        try:
            self._figures(self._called(outputs, targets))
        except MetricRaised as exc:
            return f"warning: {exc} (called once before training, on {rows_of(outputs)} validation rows of an " \
                   "untrained model)"
        finally:
            self.primary_name = primary
        return None

    def say_replaced(self, names: list[str], task: str) -> None:
        """A warning line, once, for figures of the metric's named like the task's own, which they replace."""
        if names and (self.target, tuple(names)) not in _REPLACED:
            _REPLACED.add((self.target, tuple(names)))
            log.warning("warning: %s: %s returns %s, named like the %s task's own figure%s, which %s replace%s in "
                        "the report; rename them to keep both", self.origin, self.target,
                        ", ".join(repr(n) for n in names), task, "s" if len(names) > 1 else "",
                        "they" if len(names) > 1 else "it", "" if len(names) > 1 else "s")

    def _figures(self, got: Any) -> dict[str, float]:
        if not isinstance(got, Mapping) or not got:
            raise CompressError(f"{self.origin}: {self.target} returned {type(got).__name__}; expected a dict of "
                                "figures, e.g. {'map50': 0.71}")
        figures: dict[str, float] = {}
        for key, value in got.items():
            try:
                figures[str(key)] = float(value)
            except (TypeError, ValueError):
                raise CompressError(f"{self.origin}: {self.target} returned {key!r} = {shorten(repr(value), 60)}; "
                                    "every figure must be a number") from None
        if self.primary_name is None:
            self.primary_name = next(iter(figures))
        elif self.primary_name not in figures:
            raise CompressError(f"{self.origin.rsplit('.', 1)[0]}.primary: {self.primary_name!r} is not among the "
                                f"figures {self.target} returned ({', '.join(figures)})")
        return figures


class MetricRaised(CompressError):
    """The user's metric raised (its message names the metric and the exception)."""


_REPLACED: set[tuple[str, tuple[str, ...]]] = set()
"""(metric, names) a replaced-figures warning was said for: once a process."""


def rows_of(outputs: Mapping[str, Any]) -> int:
    return len(next(iter(outputs.values()))) if outputs else 0


class EvaluateConfig(Section):
    """[evaluate]: your own metric, used everywhere the task's primary figure would be (best epoch, gates, the final
    pick, the report's headline)."""

    metric: str = Field(min_length=3, description="'module:function' beside the TOML (found like model factories): "
                        "def f(outputs: dict[str, ndarray], targets) -> dict[str, float], on a whole split.")
    primary: str | None = Field(None, min_length=1, description="Which returned figure selects, gates and picks "
                                "(default: the first one returned).")
    higher_is_better: bool = Field(True, description="The primary figure's direction.")

    @field_validator("metric", mode="before")
    @classmethod
    def _module_function(cls, value: Any) -> Any:
        """One line a user can act on, not the pattern's regex: 'python:' marks a data source, not a metric."""
        if isinstance(value, str) and value.startswith("python:"):
            raise ValueError(f"expected 'module:function', got {value!r}; drop the 'python:' prefix: it marks a "
                             "data source, and this key takes 'module:function'")
        if isinstance(value, str) and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", value):
            raise ValueError(f"expected 'module:function' (a Python module beside the TOML and a function in it), "
                             f"got {value!r}")
        return value
