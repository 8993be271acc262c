"""A search study loads its data once (compress.config.held): the space's checks, the hand-written run and every
trial's pipeline read the same loaded data, where each trial loaded it twice (the detection demo: ~1.9 s a load)."""
from __future__ import annotations

from pathlib import Path

from tests.test_bad_inputs import invoke
from tests.test_search import _folder


def _count_loads(monkeypatch) -> list[str]:
    import compress.data

    calls: list[str] = []
    real = compress.data.load_data

    def counting(cfg, **kw):
        calls.append(cfg.source)
        return real(cfg, **kw)

    monkeypatch.setattr(compress.data, "load_data", counting)
    return calls


def test_trials_in_held_read_the_data_loaded_once_and_a_plain_run_loads_its_own(tmp_path: Path, monkeypatch):
    from compress.config import check_before_training, held, load_config, parse_config

    import tomllib

    calls = _count_loads(monkeypatch)
    cfg = load_config(_folder(tmp_path) / "s.toml")
    raw = {k: v for k, v in tomllib.loads(cfg.source_path.read_text()).items() if k != "search"}
    trial = parse_config({**raw, "pipeline": {**raw["pipeline"], "output_dir": str(tmp_path / "trial")}},
                         cfg.source_path)  # another run folder, as each trial has
    with held():
        first = check_before_training(cfg)
        assert check_before_training(trial) is first
    assert len(calls) == 1
    assert check_before_training(cfg) is not first and len(calls) == 2  # outside the block: loaded afresh
    changed = parse_config({**raw, "data": {**raw["data"], "val_fraction": 0.3}}, cfg.source_path)
    with held():
        check_before_training(cfg)
        assert check_before_training(changed).sizes() != first.sizes()  # other data settings: loaded for them
    assert len(calls) == 4


def test_validate_and_search_hold_the_data(tmp_path: Path, monkeypatch):
    import compress.config
    import compress.study

    calls = _count_loads(monkeypatch)
    folder = _folder(tmp_path)
    result = invoke(folder, "validate", "s.toml")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1  # the space's model checks read the data validate loaded (before: 2 loads)
    seen = []
    monkeypatch.setattr(compress.study, "_search", lambda *a, **k: seen.append(compress.config._held.get() is not None))
    compress.study.search(folder / "s.toml", progress=False)
    assert seen == [True]


def test_in_held_each_architecture_is_trial_exported_once(tmp_path: Path, monkeypatch):
    import tomllib

    import compress.families.checks
    from compress.config import check_exports_once, held, load_config, parse_config

    tried = []
    monkeypatch.setattr(compress.families.checks, "check_exports", lambda cfg, data: tried.append(cfg.student.kwargs))
    cfg = load_config(_folder(tmp_path) / "s.toml")
    raw = {k: v for k, v in tomllib.loads(cfg.source_path.read_text()).items() if k != "search"}

    def trial(width: int, folder: str) -> object:
        return parse_config({**raw, "pipeline": {**raw["pipeline"], "output_dir": str(tmp_path / folder)},
                             "student": {**raw["student"], "kwargs": {"width": width}}}, cfg.source_path)

    with held():
        for width, folder in ((4, "a"), (4, "b"), (8, "c"), (4, "d")):
            check_exports_once(trial(width, folder), None)
    assert tried == [{"width": 4}, {"width": 8}]
    check_exports_once(trial(4, "e"), None)  # outside the block: tried every time
    assert len(tried) == 3


STATEFUL = """
import numpy as np
import torch


class Noisy(torch.utils.data.Dataset):  # random state inside: each read of an item differs
    def __init__(self, n):
        self.rng, self.n = np.random.default_rng(0), n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor(self.rng.normal(size=4), dtype=torch.float32), i % 2


def noisy():
    return Noisy(SIZE)
"""


def _python_cfg(tmp_path: Path, size: int):
    from compress.config import parse_config

    (tmp_path / "ds.py").write_text(STATEFUL.replace("SIZE", str(size)))
    raw = {"pipeline": {"name": "p"}, "data": {"source": "python:ds:noisy"},
           "teacher": {"model": "builtin:mlp", "train": {"epochs": 1}}, "student": {"model": "builtin:mlp"}}
    return parse_config(raw, tmp_path / "p.toml")


def test_a_dataset_with_random_state_inside_is_loaded_afresh_for_each_trial(tmp_path: Path, monkeypatch):
    # a trial must start the dataset's state where an uninterrupted study's trial does: from a fresh load
    from compress.config import check_before_training, held

    calls = _count_loads(monkeypatch)
    cfg = _python_cfg(tmp_path, 40)
    with held():
        first, again = check_before_training(cfg), check_before_training(cfg)
    assert len(calls) == 2 and first is not again and not first.steady


def test_an_edited_data_or_model_module_is_read_again_in_held(tmp_path: Path, monkeypatch):
    import os

    import compress.families.checks
    from compress.config import check_before_training, check_exports_once, held

    calls = _count_loads(monkeypatch)
    tried = []
    monkeypatch.setattr(compress.families.checks, "check_exports", lambda cfg, data: tried.append(1))
    steady = STATEFUL.replace("self.rng.normal(size=4)", "np.full(4, i)")
    cfg = _python_cfg(tmp_path, 40)
    (tmp_path / "ds.py").write_text(steady.replace("SIZE", "40"))
    (tmp_path / "nets.py").write_text("from torch import nn\n\ndef net(input_shape, num_classes):\n"
                                      "    return nn.Linear(input_shape[0], num_classes)\n")
    cfg = cfg.model_copy(update={"student": cfg.student.model_copy(update={"model": "nets:net"})})
    with held():
        first = check_before_training(cfg)
        assert first.steady and check_before_training(cfg) is first and len(calls) == 1  # steady: loaded once
        (tmp_path / "ds.py").write_text(steady.replace("SIZE", "50"))
        os.utime(tmp_path / "ds.py", ns=(1, 1))  # another stamp whatever the clock's resolution
        assert sum(check_before_training(cfg).sizes().values()) == 50 and len(calls) == 2  # edited: read again
        check_exports_once(cfg, first)
        check_exports_once(cfg, first)
        (tmp_path / "nets.py").write_text((tmp_path / "nets.py").read_text() + "# edited\n")
        check_exports_once(cfg, first)
    assert len(tried) == 2  # the edited model file is tried again
