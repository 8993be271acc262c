"""Option types shared by the commands."""
from __future__ import annotations

import math
from typing import Any

import click


class Number(click.FloatRange):
    """click.FloatRange that refuses nan and infinity: nan compares false with every bound, so FloatRange(min=0) took
    --max-regression nan, and the gate it sets could never fail."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv
