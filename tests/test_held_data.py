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
    monkeypatch.setattr(compress.study, "_search", lambda *a, **k: seen.append(compress.config._held is not None))
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
