"""`compress search` at its edges: a resume with a smaller budget, a relative budget the hand-written run did not
time, a finalist that is feasible when no short trial was, space keys a trial overrides, a study whose data
changed, storage URLs, overrides from the command line, and best.toml's TOML."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.errors import CompressError
from tests.test_bad_inputs import assert_one_line_error, invoke
from tests.test_search import _folder

SMALL = {"trials = 4": "trials = 1", "finalists = 2": "finalists = 1", "short_epochs = 2": "short_epochs = 1"}


def test_a_resume_with_the_budget_already_met_does_not_spin(tmp_path, monkeypatch):
    # setup: a finished 1-trial study, then a trial left RUNNING (a search killed mid-trial with a larger budget)
    import optuna

    import compress
    from compress.study.loop import Loop

    folder = _folder(tmp_path, **SMALL)
    first = compress.search(folder / "s.toml", progress=False)["search"]
    study = optuna.load_study(study_name=first["study"], storage=first["storage"])
    left = study.ask()
    left.suggest_categorical("student.kwargs.width", [4, 8, 16])
    runs = []
    real_run = Loop.run

    def counted(self, bar=None):
        runs.append(1)
        if len(runs) > 5:
            raise RuntimeError("the trial loop spins: Loop.run called again and again")
        return real_run(self, bar)

    monkeypatch.setattr(Loop, "run", counted)
    # execute: resumed with the budget of 1 it already met
    again = compress.search(folder / "s.toml", trials=1, progress=False)["search"]
    # assert: it finishes; the queued retry is past the budget, so it is neither run nor reported
    assert len(runs) <= 2
    assert [r["state"] for r in again["trials"] if r["number"] == left.number] == ["interrupted"]
    assert all(r["state"] != "waiting" for r in again["trials"])
    assert again["counts"]["trials"] == 1
    waiting = optuna.load_study(study_name=first["study"], storage=first["storage"]).get_trials(
        states=(optuna.trial.TrialState.WAITING,))
    assert waiting == []


def test_a_relative_budget_is_applied_when_the_hand_written_run_did_not_time_the_target(tmp_path):
    # setup: the target's threads = 2, which the file's own [benchmark] (threads = [1]) does not time
    import compress

    folder = _folder(tmp_path, **SMALL, **{"latency_budget_ms = 1000.0": "latency_budget = 1000.0\n"
                                           "target = { provider = \"cpu\", batch = 1, threads = 2 }"})
    # execute
    section = compress.search(folder / "s.toml", progress=False)["search"]
    # assert: the hand-written model was timed on the target, so the trials had a budget (and were paired with it)
    assert section["latency_budget_ms"] is not None and section["latency_budget_ms"] > 0
    timed = [r for r in section["trials"] if r["state"] == "complete"]
    assert timed and all(r["ratio"] is not None and r["constraints"][0] < 0 for r in timed)
    assert not section["best_effort"] and (folder / "runs/tiny/search/best.toml").is_file()
    assert "budget: 1000 x the hand-written model's p50" in (folder / "runs/tiny/search/report.md").read_text()


def test_the_markdown_report_takes_a_relative_budget_that_was_not_applied():
    from compress.study.outputs import markdown

    section = {"study": "s", "objective": "max-metric", "target": {"provider": "cpu", "batch": 1, "threads": 2},
               "counts": {}, "metric": "accuracy", "winner": None, "trials": [], "latency_budget": 0.5,
               "latency_budget_ms": None, "final_budget_ms": 0.25}
    text = markdown(section)
    assert "not applied" in text and "0.2500 ms for the finalists" in text


def test_a_feasible_finalist_wins_though_no_short_trial_was_feasible(tmp_path, monkeypatch):
    # setup: every short trial judged over its latency budget (the trials' constraints only; the finalists are
    # judged by finish.choose with the real ones)
    import compress
    import compress.study.finish as finish
    import compress.study.loop as loop

    folder = _folder(tmp_path, **SMALL)
    monkeypatch.setattr(finish, "constraints", loop.constraints)
    monkeypatch.setattr(loop, "constraints", lambda outcome, scfg, higher: [1.0, -1.0, -1.0, -1.0])
    # execute
    section = compress.search(folder / "s.toml", progress=False)["search"]
    # assert: the trial was infeasible, its full-budget finalist is not: a winner, best.toml, exit 0
    assert [r["state"] for r in section["trials"]] == ["infeasible"]
    assert section["finalists"][0]["feasible"] and not section["best_effort"]
    root = folder / "runs/tiny/search"
    assert (root / "best.toml").is_file() and not (root / "best-effort.toml").exists()
    assert section["winner"]["toml"] == str(root / "best.toml")


@pytest.mark.parametrize("space, why", [
    ('"distill.epochs" = [2, 4]', "short_epochs"),
    ('"distill.control" = [true, false]', "control"),
    ('"benchmark.threads" = [[1], [2]]', "target"),
    ('"export.ort_format" = [true, false]', "trials set it"),
    ('"export.edge_targets" = [["qnn"], []]', "trials set it"),
])
def test_keys_a_trial_sets_itself_are_refused_at_load(tmp_path, space, why):
    folder = _folder(tmp_path)
    text = (folder / "s.toml").read_text()
    (folder / "s.toml").write_text(text[: text.index("[search.space]")] + "[search.space]\n" + space + "\n")
    result = invoke(folder, "search", "s.toml", "--quiet")
    key = space.split('"')[1]
    assert_one_line_error(result, folder, "search.space", key, "not searchable", why)
    assert not (folder / "runs").exists()
    assert invoke(folder, "validate", "s.toml").exit_code == 2  # `compress validate` says it too


@pytest.mark.slow  # slow: two whole studies, 20-25 s; make test stays under its 10 minutes
def test_a_study_whose_data_changed_starts_again(tmp_path):
    # setup: a finished study, then other rows in the same data file
    import numpy as np

    import compress

    folder = _folder(tmp_path, **SMALL)
    first = compress.search(folder / "s.toml", progress=False)["search"]
    src = Path(__file__).resolve().parents[1] / "compress" / "data" / "digits.npz"
    with np.load(src) as z:
        np.savez(folder / "tiny.npz", x=z["x"][400:800].astype(np.float32)[:, None] / 16.0, y=z["y"][400:800])
    # execute
    again = compress.search(folder / "s.toml", progress=False)["search"]
    # assert: a new study (its trial trained on the new data), said in one warning line
    assert again["study"] != first["study"] and again["study"].rsplit("-", 1)[0] == first["study"].rsplit("-", 1)[0]
    assert [r["number"] for r in again["trials"]] == [0]
    log = (folder / "runs/tiny/search/search.log").read_text()
    assert f"the data or the model code changed since study {first['study']}" in log
    assert compress.search(folder / "s.toml", progress=False)["search"]["study"] == again["study"]  # resumes it


@pytest.mark.parametrize("url, fragments", [
    ("notaurl", ["--storage notaurl", "could not open it", "sqlite:///"]),
    ("postgresql://user:secret@127.0.0.1:1/studies", ["--storage postgresql://user:***@127.0.0.1:1/studies"]),
])
def test_a_storage_that_cannot_be_opened_is_one_line_before_anything_trains(tmp_path, url, fragments):
    folder = _folder(tmp_path, **SMALL)
    result = invoke(folder, "search", "s.toml", "--storage", url, "--quiet")
    line = assert_one_line_error(result, folder, *fragments)
    assert "secret" not in result.output and "secret" not in line
    assert not (folder / "runs/tiny/report.json").exists() and not (folder / "runs/tiny/teacher").exists()
    log = folder / "runs/tiny/search/search.log"
    assert not log.exists() or "secret" not in log.read_text()


def test_a_storage_url_is_printed_without_its_password():
    from compress.study.storage import redacted

    assert redacted("postgresql://user:se:cr@et@host:5432/db") == "postgresql://user:***@host:5432/db"
    assert redacted("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"
    # SQLAlchemy takes an empty user and a '/' in the password: both were printed whole
    assert redacted("postgresql://user:pa/ss@host/db") == "postgresql://user:***@host/db"
    assert redacted("postgresql://:secret@host/db") == "postgresql://:***@host/db"
    assert redacted("postgresql://host:5432/db") == "postgresql://host:5432/db"
    assert redacted("error: --storage mysql://u:p@h/db: no") == "error: --storage mysql://u:***@h/db: no"


def test_a_study_another_optuna_schema_made_is_one_line(tmp_path):
    # resuming after an Optuna upgrade (or joining an older shared study): RDBStorage raises a RuntimeError that asks
    # for `optuna storage upgrade`; it was a 40-line traceback and exit 1
    import sqlite3

    from compress.study.storage import storage_for

    db = tmp_path / "old.db"
    storage_for(None, db)  # a current study database
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'v2.6.0.a'")
    folder = _folder(tmp_path, **SMALL)
    result = invoke(folder, "search", "s.toml", "--storage", f"sqlite:///{db}", "--quiet")
    assert_one_line_error(result, folder, "Optuna could not open it", "optuna storage upgrade")


def test_trials_longer_than_the_finalists_are_refused_at_load(tmp_path):
    # short_epochs 5 over distill.epochs 3: each finalist trained less than the trial that picked it (a review's
    # pruned study read 0.87 in the trial and 0.67 as the finalist)
    folder = _folder(tmp_path, **{"short_epochs = 2": "short_epochs = 5"})
    result = invoke(folder, "search", "s.toml", "--quiet")
    assert_one_line_error(result, folder, "search.short_epochs: 5 is more than distill.epochs (3), which the "
                          "finalists train")
    assert not (folder / "runs").exists()


def test_run_ignores_search_settings_and_validate_checks_them_from_the_python_api_too(tmp_path):
    # compress run refused the file for [search] short_epochs (the docs: run ignores [search]); compress.validate()
    # did not check the space that `compress validate` checks
    import compress
    from compress.config import load_config

    folder = _folder(tmp_path, **{"short_epochs = 2": "short_epochs = 5"})
    assert load_config(folder / "s.toml").search.short_epochs == 5  # what run loads: no refusal
    with pytest.raises(CompressError, match=r"search.short_epochs: 5 is more than distill.epochs \(3\)"):
        compress.validate(folder / "s.toml")
    (tmp_path / "typo").mkdir()
    folder = _folder(tmp_path / "typo")
    toml = folder / "s.toml"
    toml.write_text(toml.read_text().replace("[search.space]", '[search.space]\n"distill.temprature" = [1.0, 4.0]'))
    with pytest.raises(CompressError, match=r"search.space.distill.temprature: distill.temprature is not a key"):
        compress.validate(toml)


def test_a_sequence_length_on_image_data_is_refused_at_load(tmp_path):
    folder = _folder(tmp_path, **{"latency_budget_ms = 1000.0": "latency_budget_ms = 1000.0\ntarget = { seq = 128 }"})
    result = invoke(folder, "search", "s.toml", "--quiet")
    assert_one_line_error(result, folder, "search.target.seq", "token inputs")
    assert not (folder / "runs/tiny/report.json").exists()
    assert_one_line_error(invoke(folder, "validate", "s.toml"), folder, "search.target.seq", "token inputs")


@pytest.mark.parametrize("option, value", [("--max-minutes", "-1"), ("--max-minutes", "0"), ("--max-minutes", "nan"),
                                           ("--trials", "0"), ("--trials", "-3")])
def test_command_line_overrides_are_checked(tmp_path, option, value):
    folder = _folder(tmp_path)
    result = invoke(folder, "search", "s.toml", option, value, "--quiet")
    assert_one_line_error(result, folder, option, "expected", value)
    assert not (folder / "runs/tiny/report.json").exists()


def test_overrides_in_python_are_checked(tmp_path):
    import compress
    from compress.errors import CompressError

    folder = _folder(tmp_path)  # named as the arguments given, not as the command line's flags
    with pytest.raises(CompressError) as trials:
        compress.search(folder / "s.toml", trials=0, progress=False)
    assert str(trials.value) == (f"{folder / 's.toml'}: search(trials=...): expected a whole number from 1 to "
                                 "10000, got 0")
    with pytest.raises(CompressError) as minutes:
        compress.search(folder / "s.toml", max_minutes=-1.0, progress=False)
    assert str(minutes.value) == (f"{folder / 's.toml'}: search(max_minutes=...): expected a number of minutes above "
                                  "0, got -1.0")
    with pytest.raises(CompressError) as storage:
        compress.search(folder / "s.toml", storage="notaurl", progress=False)
    assert str(storage.value).startswith("search(storage=...) notaurl: Optuna could not open it")


def test_the_last_lines_say_when_the_clock_stopped_the_trials(tmp_path, monkeypatch):
    # setup: 2 trials in the budget; the clock says "no time for another" after the first
    from compress.study.loop import Loop

    folder = _folder(tmp_path, **{**SMALL, "trials = 1": "trials = 2"})
    monkeypatch.setattr(Loop, "_out_of_time", lambda self: len(self.seconds) >= 1)
    # execute
    result = invoke(folder, "search", "s.toml", "--quiet")
    # assert
    assert result.exit_code == 0, result.output
    assert "max_minutes stopped the trials at 1 of 2" in result.stdout
    assert "max_minutes" in (folder / "runs/tiny/search/search.log").read_text()


def test_a_study_that_measured_no_trial_leaves_no_earlier_winner_beside_its_report(tmp_path, monkeypatch):
    # before: an earlier study's best.toml and winner.onnx stayed beside a report.json whose winner is null
    from compress.study.loop import Loop

    folder = _folder(tmp_path, **SMALL)
    root = folder / "runs/tiny/search"
    root.mkdir(parents=True)
    for name in ("best.toml", "winner.onnx"):
        (root / name).write_text("from an earlier study")
    monkeypatch.setattr(Loop, "_out_of_time", lambda self: True)
    result = invoke(folder, "search", "s.toml", "--quiet")
    assert result.exit_code == 1 and "no trial was measured" in result.output, result.output
    assert json.loads((root / "report.json").read_text())["search"]["winner"] is None
    assert not (root / "best.toml").exists() and not (root / "winner.onnx").exists()


def test_list_choices_are_searched_without_optunas_warnings(tmp_path, recwarn):
    # before: four UserWarning lines a trial ("should be a tuple of None, bool, int, float and str for persistent
    # storage"), also under --quiet, for hidden = [[16, 16], [32]] as builtin:mlp takes it
    import compress

    folder = _folder(tmp_path, **{**SMALL, '[student]\nmodel = "builtin:cnn-small"\nkwargs = { width = 8 }':
                                  '[student]\nmodel = "builtin:mlp"\nkwargs = { hidden = [8] }',
                                  '"student.kwargs.width" = [4, 8, 16]': '"student.kwargs.hidden" = [[8], [8, 8]]'})
    section = compress.search(folder / "s.toml", progress=False)["search"]
    assert section["winner"]["params"]["student.kwargs.hidden"] in ([8], [8, 8])
    assert not [w for w in recwarn if "categorical distribution" in str(w.message)]


def test_two_studies_in_one_run_folder_keep_their_own_trial_folders(tmp_path):
    # before: both wrote trials/0000, so the first study's records pointed at the second's models
    import compress

    folder = _folder(tmp_path, **SMALL)
    first = compress.search(folder / "s.toml", progress=False)["search"]
    text = (folder / "s.toml").read_text()
    (folder / "s.toml").write_text(text.replace("pruner = \"none\"", "pruner = \"none\"\nseed = 7"))  # a new study
    second = compress.search(folder / "s.toml", progress=False)["search"]
    assert first["study"] != second["study"]
    dirs = [Path(s["trials"][0]["run_dir"]) for s in (first, second)]
    assert dirs[0] != dirs[1] and all(d.parent.name == s["study"] for d, s in zip(dirs, (first, second)))
    assert (dirs[0] / "report.json").is_file()  # the first study's trial is still its own


def test_best_toml_is_valid_toml_whatever_the_characters():
    import tomllib

    from compress.errors import CompressError
    from compress.study.outputs import toml_text

    doc = {"pipeline": {"name": "t\U0001F600 \u00e9\"\\\x7f\x01\n"},
           "student": {"kwargs": {"tags": ["\U00010348", "a"]}, "k y": [{"x": "\U0001F680"}]}}
    text = toml_text(doc, "header \U0001F600")
    assert tomllib.loads(text) == doc
    with pytest.raises(CompressError, match=r"student\.kwargs\.tags\[1\]: None has no TOML form"):
        toml_text({"student": {"kwargs": {"tags": ["a", None]}}})
    with pytest.raises(CompressError, match=r"distill\.alpha: None"):
        toml_text({"distill": {"alpha": None}})


def test_the_study_identity_reads_the_inputs_not_the_trained_bits(tmp_path):
    # later stages' cache keys chain the trained models' sha256: two machines sharing a study (or a GPU rerun)
    # named it differently and each ran a whole budget
    import json

    from compress.config import load_config
    from compress.study import _stage_keys

    folder = _folder(tmp_path)
    cfg = load_config(folder / "s.toml")
    run = tmp_path / "run"
    for name in ("teacher", "distill"):
        (run / name).mkdir(parents=True)
        (run / name / "manifest.json").write_text(json.dumps({"key": f"{name}-bits-a"}))
    report = {"stages": [{"name": "teacher"}, {"name": "distill"}]}
    before = _stage_keys(cfg, run, report)
    (run / "distill" / "manifest.json").write_text(json.dumps({"key": "distill-bits-b"}))
    assert _stage_keys(cfg, run, report) == before and before[0] == "teacher-bits-a"


def test_the_markdown_report_shows_the_finalists_the_hand_written_model_and_the_paired_result():
    # report.json had them; report.md showed the trials' short-budget figures only, and no reason on an untrained row
    from compress.study.outputs import markdown

    section = {"study": "s", "objective": "max-metric", "target": {"provider": "cpu", "batch": 1, "threads": 1},
               "counts": {}, "metric": "map50", "short_epochs": 2, "winner": None,
               "finalists": [{"trial": 7, "feasible": True, "metric": 0.0804, "metric_test": 0.0737, "p50_ms": 0.0588,
                              "bytes": 31645}],
               "baseline": {"metric": 0.6267, "metric_test": 0.5855, "p50_ms": 0.1356, "bytes": 285033},
               "paired_vs_hand_written": {"ratio": 0.4349, "ci_ratio": [0.4342, 0.4361], "verdict": "faster"},
               "trials": [{"number": 3, "state": "infeasible", "metric": None, "p50_ms": 0.104, "bytes": None,
                           "params": {"w": 12}, "reason": None, "refused": []}]}
    text = markdown(section)
    assert "| trial 7 | yes | 0.0804 | 0.0737 | 0.0588 | 31,645 |" in text
    assert "| hand-written | - | 0.6267 | 0.5855 | 0.1356 | 285,033 |" in text
    assert "paired: 0.435x its p50 [0.434, 0.436] (faster)" in text
    assert "map50 on validation after the short budget, 2 epochs" in text
    assert "| 3 | infeasible (over the budget untrained: not trained) | - |" in text


def test_a_pruning_trial_recovers_on_the_short_budget_and_a_finalist_on_the_files():
    # a trial kept [prune]'s 3 x 10 recovery epochs: 76 of its 87 s, against short_epochs = 2
    from compress.study.config import SearchConfig
    from compress.study.trial import trial_raw

    scfg = SearchConfig(latency_budget_ms=1.0, short_epochs=6, space={"prune.amount": [0.0, 0.5]})
    base = {"pipeline": {"name": "p"}, "distill": {"epochs": 30}, "prune": {"amount": 0.5, "control": True}}
    trial = trial_raw(base, {}, scfg, Path("out"), short=True)
    assert trial["prune"] == {"amount": 0.5, "control": False, "finetune_epochs": 2}  # 6 epochs over 3 steps
    many = trial_raw({**base, "prune": {"steps": 8}}, {}, scfg, Path("out"), short=True)
    assert many["prune"]["finetune_epochs"] == 1
    assert trial_raw(base, {}, scfg, Path("out"), short=False)["prune"] == base["prune"]
    assert "prune" not in trial_raw({k: v for k, v in base.items() if k != "prune"}, {}, scfg, Path("out"), short=True)
