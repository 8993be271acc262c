"""The QNN summary's EPContext line says why the context model does not match, not only "no"."""
from __future__ import annotations

from compress.edge.qnn_flow import context_verdict


def test_the_epcontext_line_says_why_it_does_not_match():
    parity = {"ok": True, "max_abs_diff": 0.0, "atol": 1e-6}
    assert context_verdict({"loads": True, "parity": parity}) == "yes"
    assert context_verdict({"loads": True, "parity": {**parity, "ok": False, "max_abs_diff": 0.0123}}) == (
        "no: outputs differ by up to 0.0123 (held to 1e-06: the same compiled graph)")
    assert context_verdict({"loads": False, "error": "QNN EP: context binary was built for another SoC"}) == (
        "no: it does not load (QNN EP: context binary was built for another SoC)")


def test_an_epcontext_model_that_does_not_match_fails_the_command(tmp_path):
    # before: "matches the QDQ model: no" in the summary, and exit 0: the file a phone app loads was never the one
    # that passed
    import pytest

    from compress.cli.edge import _npu_gate
    from compress.errors import GateFailed

    parity = {"ok": True, "max_abs_diff": 0.0, "atol": 1e-6}
    section = {"runs_without_fallback": True, "budget": {"ok": True}, "placement": {},
               "context": {"path": "m.qnn_ctx.onnx", "loads": True, "parity": parity}}
    _npu_gate(tmp_path / "m.onnx", section)  # matches: no exit
    section["context"]["parity"] = {**parity, "ok": False, "max_abs_diff": 0.005}
    with pytest.raises(GateFailed) as failed:
        _npu_gate(tmp_path / "m.onnx", section)
    assert str(failed.value) == (
        f"{tmp_path / 'm.onnx'}: provider qnn: the EPContext model m.qnn_ctx.onnx does not match the QDQ model "
        "measured on HTP (outputs differ by up to 0.005 (held to 1e-06: the same compiled graph)); a phone app loads "
        "the EPContext model: rebuild it, or ship the QDQ model (edge.json has every figure)")
    section["context"] = {"path": "m.qnn_ctx.onnx", "loads": False, "error": "built for another SoC"}
    with pytest.raises(GateFailed, match=r"\(it does not load \(built for another SoC\)\)"):
        _npu_gate(tmp_path / "m.onnx", section)
