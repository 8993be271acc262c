"""Bad values in the data stop the run at load time, naming the file, the array, the first bad index and a fix.

Without these checks a NaN in x reached training and surfaced as "teacher loss became nan ... lower the learning
rate", which sends the user after the wrong knob.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress.errors import CompressError

from .test_bad_inputs import assert_one_line_error, invoke, save_npz, tiny_arrays


def _nan_x(x: np.ndarray, y: np.ndarray) -> dict:
    x = x.copy()
    x[17, 0, 2, 3] = np.nan
    x[17, 0, 5, 5] = np.nan
    x[250, 0, 0, 0] = np.nan
    return {"x": x, "y": y}


def _inf_x(x: np.ndarray, y: np.ndarray) -> dict:
    x = x.copy()
    x[3, 0, 7, 7] = -np.inf
    x[9, 0, 1, 1] = np.inf
    return {"x": x, "y": y}


def _negative_label(x: np.ndarray, y: np.ndarray) -> dict:
    y = y.copy()
    y[[5, 6]] = -1
    return {"x": x, "y": y}


def _nan_x_val(x: np.ndarray, y: np.ndarray) -> dict:
    xv = x[300:].copy()
    xv[42, 0, 4, 4] = np.nan
    return {"x": x[:300], "y": y[:300], "x_val": xv, "y_val": y[300:]}


def _fractional_label(x: np.ndarray, y: np.ndarray) -> dict:
    yf = y.astype(np.float32)
    yf[11] = 2.5
    return {"x": x, "y": yf}


def _values_to_regress(x: np.ndarray, y: np.ndarray) -> dict:
    return {"x": x, "y": np.stack([y, y], axis=1).astype(np.float32) * 0.5}


# case -> (how to break tiny.npz, what the error says after "<toml>: data.source: <npz path>: ")
CASES = {
    "nan-in-x": (_nan_x, "x holds NaN at index 17 (first of 3 bad values); clean the data or drop those rows"),
    "inf-in-x": (_inf_x, "x holds -inf at index 3 (first of 2 bad values); clean the data or drop those rows"),
    "negative-label": (_negative_label, "y holds negative label -1 at index 5 (first of 2 bad labels); "
                                        "labels must be integers 0..K-1"),
    "nan-in-x_val": (_nan_x_val, "x_val holds NaN at index 42 (first of 1 bad values); "
                                 "clean the data or drop those rows"),
    "fractional-label": (_fractional_label, "y holds non-integer label 2.5 at index 11 (first of 1 bad labels); "
                                            "store class labels as integers 0..K-1; values to regress (any shape) "
                                            "take [data] task = 'tensors'"),
    "values-to-regress": (_values_to_regress, "y must be a 1-D label array as long as x (400), got shape (400, 2); "
                                              "values to regress (any shape) take [data] task = 'tensors'"),
}


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_values_are_exit_2_at_load_naming_file_array_and_index(tiny_dir: Path, case: str, command: str):
    # setup
    breaks, message = CASES[case]
    save_npz(tiny_dir, **breaks(*tiny_arrays(tiny_dir)))
    # execute
    result = invoke(tiny_dir, command, "pipeline.toml", *(["--quiet"] if command == "run" else []))
    # assert: the exact line, and nothing was trained (the check runs before the first stage)
    line = assert_one_line_error(result, tiny_dir)
    assert line == f"error: pipeline.toml: data.source: {tiny_dir / 'tiny.npz'}: {message}"
    assert not (tiny_dir / "runs/tiny/teacher").exists()


@pytest.mark.parametrize("label, line", [
    (-1, "where: train example 3 has the negative label -1; labels must be integers 0..K-1"),
    (-2, "where: train example 3 has the negative label -2; labels must be integers 0..K-1"),
])
def test_a_python_dataset_with_a_negative_label_is_refused_while_scanning(label: int, line: str):
    # before: -1 passed validate and then failed in torch's loss with a traceback; -2 (the value an unreadable image
    # gets) made batches drop the row and every later row shift by one
    from compress.data.scan import scan as _scan

    items = [(np.zeros(4, np.float32), label if i == 3 else i % 2) for i in range(6)]
    with pytest.raises(CompressError) as err:
        _scan(items, "train", "where", labels=True)
    assert str(err.value) == line
