"""compress.onnx.parity.compare: the one parity rule, scaled to the outputs (numpy.allclose's atol + rtol)."""
from __future__ import annotations

import numpy as np
import pytest

from compress.errors import CompressError
from compress.onnx.parity import compare, top1_of


def test_fp32_rounding_on_large_logits_is_not_a_mismatch():
    # the false alarm from the digits student's ORT-format copy: logits ~30, a difference of 1.34e-5
    expected = np.full((4, 10), 30.0, dtype=np.float32)
    expected[:, 3] = 31.0
    got = expected + np.float32(1.34e-5)
    check = compare([expected], [got], atol=1e-5)
    assert check["ok"] and check["top1_agreement"] == 1.0
    assert check["max_abs_diff"] == pytest.approx(1.34e-5, rel=0.05)
    assert check["max_rel_diff"] == pytest.approx(1.34e-5 / 30, rel=0.05)


def test_a_real_error_on_large_logits_still_fails():
    expected = np.full((4, 10), 3000.0, dtype=np.float32)
    got = expected * np.float32(1.001)  # 0.1%: far past fp32 rounding
    check = compare([expected], [got], atol=1e-5)
    assert not check["ok"] and check["max_rel_diff"] == pytest.approx(1e-3, rel=0.01)


def test_small_outputs_are_held_to_the_absolute_tolerance():
    expected = np.zeros((2, 3), dtype=np.float32)
    assert compare([expected], [expected + 5e-6], atol=1e-5)["ok"]
    assert not compare([expected], [expected + 5e-5], atol=1e-5)["ok"]


def test_every_output_is_compared_and_shapes_must_match():
    a, b = np.ones((2, 3), np.float32), np.ones((2, 5), np.float32)
    assert not compare([a, b], [a, b + 1], atol=1e-5)["ok"]  # the second output differs
    with pytest.raises(CompressError, match=r"^parity: output shape \(2, 5\) differs from the reference's \(2, 3\)$"):
        compare([a], [b], atol=1e-5)


def test_top1_flattens_trailing_axes_of_a_classifier_head():
    logits = np.zeros((2, 1000, 1, 1), np.float32)
    logits[0, 7], logits[1, 999] = 1.0, 1.0
    assert top1_of(logits).tolist() == [7, 999]


def test_equal_non_finite_values_agree_and_one_sided_ones_are_an_infinite_difference():
    # before: the same NaN or -inf on both sides failed parity while it read "differs by 0" (max() took NaN as 0)
    a = np.array([[1.0, np.nan], [0.0, -np.inf]])
    same = compare([a], [a.copy()], atol=1e-4)
    assert same["ok"] and same["max_abs_diff"] == 0.0 and same["max_rel_diff"] == 0.0
    b = a.copy()
    b[0, 1] = 1.0
    other = compare([a], [b], atol=1e-4)
    assert not other["ok"] and other["max_abs_diff"] == np.inf


def test_top1_agreement_is_none_for_one_value_a_sample():
    # a regressor's (N,) output that passed parity read "top-1 agreement 0.00%"
    r = np.arange(4.0)
    check = compare([r], [r + 1e-7], atol=1e-4)
    assert check["ok"] and check["top1_agreement"] is None
    assert compare([r[:, None]], [r[:, None]], atol=1e-4)["top1_agreement"] is None


def test_a_tie_between_two_classes_is_no_disagreement():
    # int8 logits tie exactly: the QDQ model's argmax took the first of two equal classes, torch's the other, and
    # QAT's parity read 0.9938 "misses >= 0.995" on one such row
    from compress.onnx.parity import top1_agreement

    torch_out = np.array([[0.1, 0.5, 0.4], [0.2, 0.1, 0.7], [0.3, 0.3, 0.1]], np.float32)
    ort_out = np.array([[0.1, 0.5, 0.5], [0.2, 0.1, 0.7], [0.3, 0.2, 0.1]], np.float32)  # rows 0 and 2 tie on a side
    wrong = np.array([[0.9, 0.5, 0.4], [0.2, 0.1, 0.7], [0.3, 0.3, 0.1]], np.float32)
    assert top1_agreement(torch_out, ort_out) == 1.0
    assert top1_agreement(torch_out, wrong) == 2 / 3  # a real disagreement still counts


def test_a_row_collapsed_to_one_value_is_no_agreement():
    # an 8-bit graph whose Relu outputs all read 0: every class "holds the top value", which is no prediction
    from compress.onnx.parity import top1_agreement

    fp32 = np.array([[0.2, 0.0, 0.9, 0.1, 0.3, 0.0]], np.float32)
    assert top1_agreement(fp32, np.zeros_like(fp32)) == 0.0
