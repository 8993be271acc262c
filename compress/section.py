"""Base class for config sections: frozen, typed, unknown keys rejected when the file loads."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. Subclasses document every field; defaults are the recommended values."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True)
