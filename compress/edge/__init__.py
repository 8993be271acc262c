"""Edge and mobile prep: ORT-format copy (`ort_format`), per-provider readiness (`readiness`), fixed batch and the
whole flow (`prepare`); the on-device bench kit is compress.kit."""
from __future__ import annotations

from compress.edge.ort_format import ort_parity, sample_inputs, to_ort_format
from compress.edge.prepare import prepare
from compress.edge.shapes import fix_batch
from compress.edge.readiness import dynamic_inputs, readiness, readiness_table
from compress.kit import make_kit

__all__ = ["dynamic_inputs", "fix_batch", "make_kit", "ort_parity", "prepare", "readiness", "readiness_table",
           "sample_inputs", "to_ort_format"]
