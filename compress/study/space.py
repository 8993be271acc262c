"""The search space: config key paths, each with choices or a range; checked at load, sampled by Optuna, applied to
the pipeline file's dict.

Two values switch an optional stage off: `quantize.mode = "none"` drops [quantize], and `prune.amount = 0` drops
[prune]. A path into a section the file does not have creates it with its defaults.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.errors import CompressError

OFF = {("quantize", "mode"): "none", ("prune", "amount"): 0}
"""(section, key) -> the value that means "no such stage" in a trial."""
BUILT_SECTIONS = ("student", "distill", "evaluate")
"""Sections the pre-training model checks read (compress.families.checks): a key path into one is built at load."""
CHEAP_SECONDS = 10.0
"""Each built key path's first value is always checked; its other values (every choice, the range's other end) while
the check has taken less than this."""


@dataclass(frozen=True)
class Param:
    """One dimension of the space."""

    path: str
    choices: tuple[Any, ...] | None = None
    low: int | float = 0
    high: int | float = 0
    log: bool = False
    step: int | float | None = None

    @property
    def integer(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high)) and (
            self.step is None or isinstance(self.step, int))

    def suggest(self, trial: Any) -> Any:
        """This dimension's value for an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)

    def extremes(self) -> list[Any]:
        """The values a load-time check tries: every choice, or both ends of the range."""
        if self.choices is not None:
            return list(self.choices)
        middle = (self.low + self.high) / 2 if not self.log else (self.low * self.high) ** 0.5
        if self.integer:
            return [self.low, self.high, int(middle)]
        # a float range samples fractions: one is tried too (1.0 to 3.0 on a whole-number key passed as 1, 2 and 3,
        # then every trial failed)
        return [self.low, self.high, middle, *([] if self.step else [self.low + (self.high - self.low) / 3])]


def params_of(space: dict[str, Any]) -> list[Param]:
    out = []
    for path, spec in space.items():
        if isinstance(spec, list):
            out.append(Param(path, choices=tuple(spec)))
        else:
            out.append(Param(path, low=spec.low, high=spec.high, log=spec.log, step=spec.step))
    return out


def apply(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the pipeline dict with each key path set to its value (and optional stages switched off)."""
    out = copy.deepcopy(raw)
    off: set[str] = set()
    for path, value in values.items():
        parts = path.split(".")
        if OFF.get((parts[0], parts[-1]), object()) == value and len(parts) == 2:
            off.add(parts[0])
            continue
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # kwargs = { hidden = [16] } under "student.kwargs.hidden.x": a TypeError
                raise CompressError(f"{'.'.join(parts[:i + 1])} is a value ({type(node).__name__} "
                                    f"{node!r:.40}), not a table a key can go under")
        node[parts[-1]] = value
    for section in off:
        out.pop(section, None)
    return out


def check_search(cfg: Any, raw: dict[str, Any] | None, path: Path) -> None:
    """What `compress validate` and `compress search` check of [search], which `compress run` ignores: trials no
    longer than the finalists, and the space (check_space; not without the file's `raw` dict)."""
    scfg, epochs = cfg.search, cfg.distill.epochs
    if scfg.short_epochs > epochs:  # a finalist scored under its own trial
        raise CompressError(f"{path}: search.short_epochs: {scfg.short_epochs} is more than distill.epochs ({epochs}), "
                            "which the finalists train: they would train less than the trials that picked them")
    for key, name in (("target.provider", scfg.target.provider), ("all_nodes_on", scfg.all_nodes_on)):
        missing = _not_installed(name) if name else None
        if missing:  # every trial failed on it, after the hand-written pipeline had trained
            raise CompressError(f"{path}: search.{key}: {missing}; the study measures every trial there: install "
                                "it, or search for a provider this machine has")
    if raw is not None:
        check_space(raw, params_of(scfg.space), path)


def _not_installed(provider: str) -> str | None:
    """Why `provider` cannot run here, or None when it can (the QNN plugin registers itself when found)."""
    import onnxruntime as ort

    from compress.bench.providers import resolve_provider

    name = resolve_provider(provider)
    if name == "QNNExecutionProvider":
        from compress.edge.qnn import qnn_status

        status = qnn_status()
        return None if status["installed"] else f"{name}: {status['reason']}"
    if name in ort.get_available_providers():
        return None
    return f"{name} is not available in onnxruntime {ort.__version__} (available: " \
           f"{', '.join(ort.get_available_providers())})"


def check_space(raw: dict[str, Any], params: list[Param], path: Path) -> None:
    """Every key path names a config key, every choice (or both ends of a range) makes a valid pipeline file, and
    the models a path touches build (check_builds); else CompressError naming the search key (exit 2)."""
    from compress.config import PipelineConfig, parse_config

    base = {k: v for k, v in raw.items() if k != "search"}
    for param in params:
        where = f"{path}: search.space.{param.path}"
        _check_path(PipelineConfig, param.path.split("."), where)
        for value in param.extremes():
            if isinstance(value, float) and not math.isfinite(value):
                raise CompressError(f"{where}: {value!r} is not a finite number")
            try:
                parse_config(apply(base, {param.path: value}), path)
            except CompressError as exc:
                detail = str(exc).removeprefix(f"{path}: ")
                whole = ("; write low and high as whole numbers (1, not 1.0) for a whole-number range"
                         if "valid integer" in detail and param.choices is None and not param.integer else "")
                raise CompressError(f"{where}: the value {value!r} makes an invalid pipeline ({detail}){whole}") \
                    from None
    check_builds(base, params, path)


def check_builds(base: dict[str, Any], params: list[Param], path: Path) -> None:
    """Each key path into the models' sections passes, with its first value (and its other values while that stays
    cheap), the checks `compress run` makes before training: the student builds on the data and its outputs fit the
    task (compress.families.checks). A factory keyword is a key path inside [student] kwargs that only a built model
    can refuse: a typo would otherwise fail every trial. CompressError naming the search key (exit 2)."""
    import time

    from compress.config import check_before_training, parse_config
    from compress.families.checks import check_models

    built = [p for p in params if p.path.split(".")[0] in BUILT_SECTIONS]
    if not built:
        return
    started = time.monotonic()
    data = check_before_training(parse_config(base, path))  # the file as written: its own errors name its own keys
    for param in built:
        for i, value in enumerate(param.extremes()):
            if i and time.monotonic() - started > CHEAP_SECONDS:
                break
            try:
                check_models(parse_config(apply(base, {param.path: value}), path), data)
            except CompressError as exc:
                detail = str(exc).removeprefix(f"{path}: ")
                raise CompressError(f"{path}: search.space.{param.path}: with the value {value!r} the pipeline fails "
                                    f"its checks before training ({detail})") from None


def _check_path(model: Any, parts: list[str], where: str) -> None:
    from compress.config import _section_type

    for i, part in enumerate(parts):
        fields = {k: f for k, f in getattr(model, "model_fields", {}).items() if not f.exclude}
        if part not in fields:
            import difflib

            hint = difflib.get_close_matches(part, list(fields), n=1)
            tip = f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {', '.join(fields)}"
            raise CompressError(f"{where}: {'.'.join(parts[: i + 1])} is not a key of the pipeline file{tip}")
        annotation = fields[part].annotation
        section = _section_type(annotation)
        if section is None:
            if "dict" in str(annotation).lower() or "mapping" in str(annotation).lower():
                return  # kwargs and provider options: any key the factory takes (checked when a trial builds it)
            if i != len(parts) - 1:
                raise CompressError(f"{where}: {'.'.join(parts[: i + 1])} is a value, not a section")
            return
        model = section
    raise CompressError(f"{where}: {'.'.join(parts)} is a section; name one of its keys")
