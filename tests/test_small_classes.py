"""A class too small for the split compress makes (npz: and python: sources) is named in one warning line: its
accuracy is otherwise never measured on validation or test, without a word."""
from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import numpy as np
import pytest

from compress.data import DataConfig, load_data


def _labels(counts: list[int]) -> np.ndarray:
    return np.concatenate([np.full(n, c, np.int64) for c, n in enumerate(counts)])


def _load(tmp_path: Path, source: str, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="compress"):
        return load_data(DataConfig(source=source), seed=0, base_dir=tmp_path)


def test_npz_classes_a_split_lacks_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    y = _labels([10, 10, 1, 2])
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((len(y), 4)).astype(np.float32), y=y)
    _load(tmp_path, "npz:d.npz", caplog)
    lines = [m for m in caplog.messages if "classes a split does not show" in m]
    assert lines == [f"warning: data.source: {tmp_path / 'd.npz'}: classes a split does not show: 2 (1 example: not in val or "
                     "test), 3 (2 examples: not in test); accuracy on them is not measured there: add examples (a "
                     "class of 3 or more gets at least one in every split)"], caplog.messages


def test_npz_with_its_own_validation_split_only_test_is_judged(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    y = _labels([10, 10, 1])
    x = np.zeros((len(y), 4), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_val=x[:4], y_val=np.array([0, 1, 0, 1]))
    _load(tmp_path, "npz:d.npz", caplog)
    assert [m for m in caplog.messages if "classes a split does not show" in m] == [
        f"warning: data.source: {tmp_path / 'd.npz'}: classes a split does not show: 2 (1 example: not in test); accuracy on them "
        "is not measured there: add examples (a class of 2 or more gets at least one in every split)"]


def test_python_source_classes_a_split_lacks_are_named_and_plenty_says_nothing(tmp_path: Path,
                                                                                caplog: pytest.LogCaptureFixture):
    (tmp_path / "mydata.py").write_text(textwrap.dedent("""
        import numpy as np
        import torch

        def make(counts):
            y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
            return torch.utils.data.TensorDataset(torch.zeros(len(y), 3), torch.from_numpy(y).long())

        def small():
            return make([12, 12, 1])

        def plenty():
            return make([12, 12, 12])
    """))
    _load(tmp_path, "python:mydata:small", caplog)
    assert [m for m in caplog.messages if "classes a split does not show" in m] == [
        "warning: data.source: mydata:small(): classes a split does not show: 2 (1 example: not in val or test); "
        "accuracy on them is not measured there: add examples (a class of 3 or more gets at least one in every "
        "split)"]
    caplog.clear()
    _load(tmp_path, "python:mydata:plenty", caplog)
    assert not [m for m in caplog.messages if "classes a split does not show" in m]


def test_many_small_classes_are_counted_past_the_first_ten(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    y = _labels([10] + [1] * 30)
    np.savez(tmp_path / "d.npz", x=np.zeros((len(y), 2), np.float32), y=y)
    _load(tmp_path, "npz:d.npz", caplog)
    line, = [m for m in caplog.messages if "classes a split does not show" in m]
    assert "10 (1 example: not in val or test), and 20 more; accuracy" in line


def test_the_smallest_class_the_hint_names_is_the_splits_own(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # val_fraction 0.5: a class of 3 gives 2 to validation and none to test; 4 is the fewest that fills every split
    from compress.data.arrays import smallest_held_class

    y = _labels([10, 10, 3])
    np.savez(tmp_path / "d.npz", x=np.zeros((len(y), 2), np.float32), y=y)
    with caplog.at_level(logging.WARNING, logger="compress"):
        load_data(DataConfig(source="npz:d.npz", val_fraction=0.5), seed=0, base_dir=tmp_path)
    line, = [m for m in caplog.messages if "classes a split does not show" in m]
    assert "2 (3 examples: not in test)" in line and "(a class of 4 or more gets at least one in every split)" in line
    assert [smallest_held_class(0.2, 0.2), smallest_held_class(0.2, 0.0), smallest_held_class(0.5, 0.2)] == [3, 2, 4]
