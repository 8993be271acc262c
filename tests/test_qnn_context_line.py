"""The QNN summary's EPContext line says why the context model does not match, not only "no"."""
from __future__ import annotations

from compress.edge.qnn_flow import _context_verdict


def test_the_epcontext_line_says_why_it_does_not_match():
    parity = {"ok": True, "max_abs_diff": 0.0, "atol": 1e-6}
    assert _context_verdict({"loads": True, "parity": parity}) == "yes"
    assert _context_verdict({"loads": True, "parity": {**parity, "ok": False, "max_abs_diff": 0.0123}}) == (
        "no: outputs differ by up to 0.0123 (held to 1e-06: the same compiled graph)")
    assert _context_verdict({"loads": False, "error": "QNN EP: context binary was built for another SoC"}) == (
        "no: it does not load (QNN EP: context binary was built for another SoC)")
