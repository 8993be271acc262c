"""Base class for config sections: frozen, typed, unknown keys rejected when the file loads."""
from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Section(BaseModel):
    """A config section. Subclasses document every field; defaults are the recommended values."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _as_written(cls, value: Any, info: ValidationInfo) -> Any:
        """A number or a flag written as a string ("3", "no") or a flag where a number goes (true for a batch size)
        is refused: lax validation would take "no" as False and true as 1. Integral floats and lists for tuples
        stay accepted."""
        field = cls.model_fields.get(info.field_name or "")
        wrong = _mistyped(value, field.annotation) if field is not None else None
        if wrong:
            raise ValueError(wrong)
        return value


def _kinds(annotation: Any) -> set[Any]:
    """The scalar types a field takes (through Optional and unions); `object` for anything else (not checked)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return set().union(*(_kinds(a) for a in get_args(annotation)))
    if origin is Literal:
        return {type(a) for a in get_args(annotation)}
    if annotation in (int, float, bool, str, type(None)):
        return {annotation}
    return {object}


def _mistyped(value: Any, annotation: Any) -> str | None:
    """Why `value` is not what `annotation` (a number, a flag, or a tuple/list of them) means, else None."""
    origin = get_origin(annotation)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        if len(args) == 1 or (args and all(a == args[0] for a in args)):
            return next((f"entry {i}: {w}" for i, w in enumerate(_mistyped(v, args[0]) for v in value) if w), None)
        return None
    kinds = _kinds(annotation)
    if object in kinds or str in kinds:
        return None
    if isinstance(value, str):
        return f"expected {_named(kinds)}, got the string {value!r} (write it without quotes)"
    if isinstance(value, bool) and bool not in kinds:
        return f"expected {_named(kinds)}, got {str(value).lower()}"
    return None


def _named(kinds: set[Any]) -> str:
    if bool in kinds and not kinds & {int, float}:
        return "true or false"
    return "an integer" if int in kinds and float not in kinds else "a number"
