"""`compress search`: the space checked at load, a study that runs, resumes and shares one teacher, a best.toml that
reproduces its figures, a budget nothing meets (exit 1, best effort), and two workers on one storage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import copy_folder
from tests.test_bad_inputs import assert_one_line_error, invoke

STUDY = '''
[pipeline]
name = "tiny"
seed = 0

[data]
source = "npz:tiny.npz"
val_fraction = 0.25
batch_size = 32

[teacher]
model = "builtin:cnn-small"
kwargs = { width = 16 }

[teacher.train]
epochs = 3
lr = 2e-2

[student]
model = "builtin:cnn-small"
kwargs = { width = 8 }

[distill]
epochs = 3
lr = 2e-2

[benchmark]
providers = ["cpu"]
batch_sizes = [1]
threads = [1]
min_seconds = 0.1
repetitions = 1

[search]
latency_budget_ms = 1000.0
trials = 4
short_epochs = 2
finalists = 2
pruner = "none"

[search.space]
"student.kwargs.width" = [4, 8, 16]
"distill.temperature" = { low = 1.0, high = 8.0, log = true }
"quantize.mode" = ["none", "static"]
'''


def _folder(tmp_path: Path, text: str = STUDY, **replace: str) -> Path:
    import numpy as np

    src = Path(__file__).resolve().parents[1] / "compress" / "data" / "digits.npz"
    with np.load(src) as z:
        np.savez(tmp_path / "tiny.npz", x=z["x"][:400].astype(np.float32)[:, None] / 16.0, y=z["y"][:400])
    text = textwrap.dedent(text)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "s.toml").write_text(text)
    return tmp_path


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict]:
    """One finished 4-trial study (shared by the tests that only read it; one that runs again copies the folder)."""
    import compress

    folder = _folder(tmp_path_factory.mktemp("search"))
    return folder, compress.search(folder / "s.toml", progress=False)


@pytest.mark.parametrize("space, fragments", [
    ('"student.kwargs.width" = [4, 8]', None),  # kwargs: any key the factory takes
    ('"student.kwargs.widht" = [4]', ["search.space.student.kwargs.widht", "with the value 4", "checks before training",
                                      "unexpected keyword argument 'widht'"]),  # the student is built to find out
    ('"distill.temprature" = [1.0, 2.0]', ["search.space.distill.temprature", "did you mean 'temperature'"]),
    ('"quantize.mode" = ["int4"]', ["search.space.quantize.mode", "'int4'", "invalid pipeline"]),
    ('"distill.alpha" = { low = 0.5, high = 2.0 }', ["search.space.distill.alpha", "2.0"]),
    ('"distill.alpha" = { low = 0.8, high = 0.2 }', ["search.space: distill.alpha: high (0.2) is below low (0.8)"]),
    ('"distill" = [1]', ["search.space.distill", "is a section"]),
    ('"pipeline.seed" = [1, 2]', ["search.space", "pipeline.seed", "the study's"]),
    ('"student.kwargs.width" = 8', ["search.space: student.kwargs.width: expected a list of choices ([8] for one) or "
                                    "a range { low = ..., high = ... }, got 8"]),
    # a key under a kwargs value: a TypeError traceback, exit 1
    ('"student.kwargs.width.x" = [1]', ["search.space.student.kwargs.width.x", "student.kwargs.width is a value (int "
                                        "8), not a table a key can go under"]),
    # a float range on a whole-number key: its ends and middle read as whole numbers, every trial failed
    ('"distill.patience" = { low = 1.0, high = 3.0 }', ["search.space.distill.patience", "valid integer",
                                                        "write low and high as whole numbers (1, not 1.0)"]),
])
def test_space_is_checked_at_load(tmp_path, space, fragments):
    folder = _folder(tmp_path)
    text = (folder / "s.toml").read_text()
    start = text.index("[search.space]")
    (folder / "s.toml").write_text(text[:start] + "[search.space]\n" + space + "\n")
    if fragments is None:
        from compress.config import load_config
        from compress.study.space import check_space, params_of
        import tomllib

        cfg = load_config(folder / "s.toml")
        check_space(tomllib.loads((folder / "s.toml").read_text()), params_of(cfg.search.space), folder / "s.toml")
        return
    result = invoke(folder, "search", "s.toml", "--quiet")
    assert_one_line_error(result, folder, "s.toml", *fragments)
    assert not (folder / "runs").exists()  # nothing trained before the check


def test_a_target_this_machine_cannot_run_is_refused_at_load(tmp_path):
    # before: validate said ok; search trained the hand-written pipeline, then every trial failed on it (exit 1)
    from tests.conftest import absent_provider

    absent, name = absent_provider()
    folder = _folder(tmp_path, **{"pruner = \"none\"": f"pruner = \"none\"\ntarget = {{ provider = \"{absent}\" }}"})
    for command in ("validate", "search"):
        result = invoke(folder, command, "s.toml")
        assert_one_line_error(result, folder, "s.toml", f"search.target.provider: {name} is not available",
                              "the study measures every trial there")
    assert not (folder / "runs").exists()


def test_objective_needs_its_budget(tmp_path):
    folder = _folder(tmp_path, **{"latency_budget_ms = 1000.0": ""})
    result = invoke(folder, "search", "s.toml")
    assert_one_line_error(result, folder, "search.latency_budget_ms", "max-metric")


def test_budget_in_ms_or_relative_not_both(tmp_path):
    folder = _folder(tmp_path, **{"latency_budget_ms = 1000.0": "latency_budget_ms = 1.0\nlatency_budget = 0.5"})
    result = invoke(folder, "search", "s.toml")
    assert_one_line_error(result, folder, "search.latency_budget", "not both")


def test_a_relative_budget_follows_the_hand_written_models_p50(tmp_path, monkeypatch):
    # setup: a budget of 1000 x the hand-written model's p50 (every trial feasible), 2 trials, 1 finalist; the
    # finalists' round records what it timed
    import compress
    import compress.study.report as study_report

    folder = _folder(tmp_path, **{"latency_budget_ms = 1000.0": "latency_budget = 1000.0", "trials = 4": "trials = 2",
                                  "finalists = 2": "finalists = 1"})
    timed_together: list[str] = []

    def recorded(paths, *args, **kwargs):
        timed_together.extend(paths)
        got = study_report_time_together(paths, *args, **kwargs)
        timed_together.append(got.get("hand-written"))
        return got

    study_report_time_together = study_report.time_together
    monkeypatch.setattr(study_report, "time_together", recorded)
    # execute
    section = compress.search(folder / "s.toml", progress=False)["search"]
    # assert: the trials' budget is 1000 x the hand-written run's own p50, the finalists' 1000 x the hand-written
    # model's p50 in their round (the one the report gives); both said in report.md
    own = json.loads((folder / "runs/tiny/report.json").read_text())
    p50 = next(m for m in own["models"] if m["name"] == own["final"])["latency"][0]["p50_ms"]
    assert section["latency_budget"] == 1000.0
    assert section["latency_budget_ms"] == pytest.approx(1000.0 * p50, rel=1e-9)
    assert section["final_budget_ms"] == pytest.approx(1000.0 * section["baseline"]["p50_ms"], rel=1e-9)
    # timed again, in the finalists' round, beside them (the two p50s may round alike: not compared)
    assert "hand-written" in timed_together and section["baseline"]["p50_ms"] == timed_together[-1]
    md = (folder / "runs/tiny/search/report.md").read_text()
    assert "budget: 1000 x the hand-written model's p50" in md and section["winner"]["trial"] is not None
    # each trial timed paired with the hand-written model: its p50 is that ratio times the hand-written run's p50
    timed = [r for r in section["trials"] if r["state"] == "complete"]
    assert timed and all(r["ratio"] > 0 and r["alone_p50_ms"] > 0 for r in timed)
    assert all(r["p50_ms"] == pytest.approx(r["ratio"] * p50, rel=1e-9) for r in timed)


def test_search_needs_its_section_and_validate_takes_it(tmp_path):
    folder = _folder(tmp_path)
    assert invoke(folder, "validate", "s.toml").exit_code == 0  # `compress run` reads the file, [search] and all
    text = (folder / "s.toml").read_text()
    (folder / "s.toml").write_text(text[: text.index("[search]")])
    result = invoke(folder, "search", "s.toml")
    assert_one_line_error(result, folder, "s.toml: search: no [search] section", "compress run")


def test_study_runs_every_trial_once_with_one_teacher(study):
    folder, report = study
    s = report["search"]
    rows = [json.loads(line) for line in (folder / "runs/tiny/search/trials.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and [r["number"] for r in rows] == [0, 1, 2, 3]
    assert {r["state"] for r in rows} <= {"complete", "infeasible", "pruned", "failed"}
    assert len({json.dumps(r["params"], sort_keys=True) for r in rows}) >= 3  # the sampler explored
    measured = [r for r in rows if r["state"] == "complete"]
    assert measured and all(r["p50_ms"] > 0 and r["bytes"] > 0 and 0.1 < r["metric"] <= 1 for r in measured)
    assert s["teacher_trained"] == 1  # the hand-written run trained it; every trial and finalist shared it
    assert all(r["teacher"] == "shared" for r in rows if r["state"] == "complete")
    assert s["counts"]["trials"] == 4 and not s["best_effort"]
    w = s["winner"]
    best = max(f["metric"] for f in s["finalists"])
    assert w["metric"] == best  # max-metric: the most accurate feasible finalist
    assert (folder / "runs/tiny/search/pareto.png").stat().st_size > 10_000
    assert (folder / "runs/tiny/search/winner.onnx").is_file()
    assert s["paired_vs_hand_written"]["pairs"] >= 1


def test_best_toml_reproduces_the_winner(study, tmp_path):
    import compress
    from compress.report import figure

    folder, report = study
    w = report["search"]["winner"]
    copy = copy_folder(folder, tmp_path)  # the run writes in the finalist's folder: in a copy of the study's
    best = copy / Path(w["toml"]).relative_to(folder)  # best.toml's paths are relative to it
    again = compress.run(best, force=True, progress=False)  # trained again from scratch, same seed
    final = next(m for m in again["models"] if m["name"] == again["final"])
    assert figure(final, again, "_val") == pytest.approx(w["metric"], abs=1e-9)
    assert final["bytes"] == w["bytes"]


def test_rerun_resumes_without_new_trials(study, tmp_path):
    import compress

    folder, report = study
    copy = copy_folder(folder, tmp_path)  # the rerun writes the study's outputs again: in a copy of its folder
    again = compress.search(copy / "s.toml", progress=False)
    assert again["search"]["counts"] == report["search"]["counts"]
    assert again["search"]["winner"]["params"] == report["search"]["winner"]["params"]


def test_a_killed_trial_runs_again_with_its_values(tmp_path):
    """A trial left RUNNING by a killed search is failed and queued again; nothing finished is repeated."""
    import optuna

    import compress

    folder = _folder(tmp_path, **{"trials = 4": "trials = 2", "finalists = 2": "finalists = 1"})
    first = compress.search(folder / "s.toml", progress=False)
    study_name, url = first["search"]["study"], first["search"]["storage"]
    study = optuna.load_study(study_name=study_name, storage=url)
    left = study.ask()  # what a search killed mid-trial leaves: a RUNNING trial with its values drawn
    values = {"student.kwargs.width": left.suggest_categorical("student.kwargs.width", [4, 8, 16]),
              "distill.temperature": left.suggest_float("distill.temperature", 1.0, 8.0, log=True),
              "quantize.mode": left.suggest_categorical("quantize.mode", ["none", "static"])}
    again = compress.search(folder / "s.toml", trials=3, progress=False)
    rows = again["search"]["trials"]
    assert [r["state"] for r in rows if r["number"] == left.number] == ["interrupted"]
    retry = [r for r in rows if r["retry_of"] == left.number]
    assert len(retry) == 1 and retry[0]["params"] == values and retry[0]["state"] != "failed"
    assert again["search"]["counts"]["trials"] == 3  # 2 finished before, the interrupted one once more
    assert [r["params"] for r in rows[:2]] == [r["params"] for r in first["search"]["trials"]]


def test_nothing_meets_the_budget_exit_1_best_effort(tmp_path, monkeypatch):
    import compress.study.space

    folder = _folder(tmp_path, **{"latency_budget_ms = 1000.0": "latency_budget_ms = 0.000001",
                                  "trials = 4": "trials = 3", '[4, 8, 16]': '[-1, 4]', "finalists = 2":
                                  "finalists = 1"})
    # width -1 stands for a value only a trial finds wrong: the load-time build check would refuse it
    monkeypatch.setattr(compress.study.space, "check_builds", lambda *args: None)
    result = invoke(folder, "search", "s.toml", "--quiet")
    assert_one_line_error(result, folder, "no model met the constraints", "best-effort.toml", code=1)
    root = folder / "runs/tiny/search"
    assert (root / "best-effort.toml").is_file() and not (root / "best.toml").exists()
    assert (root / "best-effort.onnx").is_file() and not (root / "winner.onnx").exists()  # no winner to ship
    report = json.loads((root / "report.json").read_text())["search"]
    assert report["best_effort"] and report["winner"]["trial"] is not None
    assert report["winner"]["onnx"] == str(root / "best-effort.onnx")
    failed = [r for r in report["trials"] if r["params"]["student.kwargs.width"] == -1]
    assert failed and all(r["state"] == "failed" and r["reason"] for r in failed)  # that trial's; the study goes on
    assert len(report["trials"]) == 3


@pytest.mark.e2e
def test_two_workers_share_one_study(tmp_path):
    folder = _folder(tmp_path, **{"finalists = 2": "finalists = 1",  # quantize and a finalist more: time, not sharing
                                  '"quantize.mode" = ["none", "static"]': '"quantize.mode" = ["none"]'})
    url = f"sqlite:///{folder / 'shared.db'}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "compress", "search", "s.toml", "--storage", url, "--quiet"]
    procs = [subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    report = json.loads((folder / "runs/tiny/search/report.json").read_text())["search"]
    rows = report["trials"]
    assert len(rows) == 4 and sorted(r["number"] for r in rows) == list(range(4))
    assert report["teacher_trained"] == 1
    # one winner: each worker names the one best.toml holds (the second took the first's finalists' round)
    winners = [next(ln for ln in out.splitlines() if ln.startswith("winner: trial ")).split()[2] for out, _ in outs]
    assert winners == [str(report["winner"]["trial"])] * 2
    assert f"trial {report['winner']['trial']}:" in (folder / "runs/tiny/search/best.toml").read_text()
    log = (folder / "runs/tiny/search/search.log").read_text()
    assert log.count(": complete") + log.count(": pruned") + log.count(": infeasible") + log.count(": failed") == 4


def test_pruner_judges_a_trial_against_feasible_trials_only():
    """A model that fits the budget is not stopped for being less accurate after one epoch than models too slow to
    ship; Optuna's own successive halving, which sees every trial, stops it."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from compress.study.loop import FeasibleOnly

    def study_with_slow_accurate_trials():
        study = optuna.create_study(direction="maximize")
        for value in (0.95, 0.96, 0.97):  # wide models: accurate, over the budget
            study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params={"x": value},
                                         distributions={"x": FloatDistribution(0, 1)},
                                         intermediate_values={1: value}, system_attrs={"completed_rung_0": value},
                                         user_attrs={"constraints": [0.5, -1, -1, -1]}))
        trial = study.ask({"x": FloatDistribution(0, 1)})
        trial.report(0.80, step=1)  # a small model after one epoch
        return study, trial

    def halving():
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)

    study, trial = study_with_slow_accurate_trials()
    assert halving().prune(study, study._storage.get_trial(trial._trial_id))
    study, trial = study_with_slow_accurate_trials()
    assert not FeasibleOnly(halving()).prune(study, study._storage.get_trial(trial._trial_id))


def test_the_untrained_check_is_timed_paired_with_a_relative_budgets_reference(tmp_path):
    # setup: the study's file, an untrained trial's pipeline, and a stand-in hand-written model said to run at
    # 1000 ms (its real p50 is far under 1 ms): only a paired timing scales the candidate by it
    import tomllib

    import torch

    from compress.config import load_config
    from compress.study.trial import latency_first, trial_raw

    folder = _folder(tmp_path)
    path = folder / "s.toml"
    scfg = load_config(path).search
    base = {k: v for k, v in tomllib.loads(path.read_text()).items() if k != "search"}
    raw = trial_raw(base, {"student.kwargs.width": 8}, scfg, folder / "trial", short=True)
    reference = folder / "reference.onnx"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    torch.onnx.export(model, torch.zeros(1, 1, 8, 8), str(reference), input_names=["input"], dynamo=False,
                      dynamic_axes={"input": {0: "batch"}})
    # execute
    alone = latency_first(raw, path, scfg)
    paired = latency_first(raw, path, scfg, {"onnx": str(reference), "p50_ms": 1000.0}, {})
    # assert: alone, a real sub-millisecond p50; paired, the ratio to the reference times its 1000 ms
    assert 0 < alone < 10.0
    assert paired > 100.0


def test_the_untrained_check_of_a_matmul_student_times_the_dynamic_int8_the_stage_may_ship(tmp_path, monkeypatch):
    # a static search on a MatMul/Gemm graph ends with dynamic int8 (all-MiniLM-L6-v2 shipped it, 0.43x fp32's p50
    # against static's 0.49x): the check timed static int8 alone, so it could rule out an architecture that fits
    import tomllib

    from compress.config import load_config
    from compress.quantize import attempts
    from compress.study.trial import latency_first, trial_raw

    folder = _folder(tmp_path, **{'model = "builtin:cnn-small"\nkwargs = { width = 8 }':
                                  'model = "builtin:mlp"\nkwargs = { hidden = 16 }'})
    path = folder / "s.toml"
    scfg = load_config(path).search
    base = {k: v for k, v in tomllib.loads(path.read_text()).items() if k != "search"}
    modes: list[str] = []
    real = attempts.quantize_once
    monkeypatch.setattr(attempts, "quantize_once", lambda *a, **k: modes.append(a[2]["mode"]) or real(*a, **k))

    def timed(extra: dict, student: dict | None = None) -> list[str]:
        modes.clear()
        raw = trial_raw({**base, "quantize": extra, "student": student or base["student"]}, {}, scfg,
                        folder / "trial", short=True)
        assert latency_first(raw, path, scfg) > 0
        return list(modes)

    assert timed({"mode": "static"}) == ["static", "dynamic"]
    assert timed({"mode": "static", "dynamic_remedy": False}) == ["static"]
    assert timed({"mode": "static", "fallback": False}) == ["static"]
    assert timed({"mode": "dynamic"}) == ["dynamic"]
    assert timed({"mode": "qat"}) == ["static"]  # QAT ships its static QDQ graph: it was timed float alone
    cnn = {"model": "builtin:cnn-small", "kwargs": {"width": 8}}
    assert timed({"mode": "static"}, cnn) == ["static"]  # convolutions: no dynamic remedy


def test_pareto_finalists_spread_over_the_front_with_its_most_accurate_point_in():
    # the even steps int(i * n / k) never reached the front's last (most accurate) point, and the Pareto winner is
    # the most accurate finalist: a better trial on the front was left out
    from types import SimpleNamespace

    from compress.study.finish import pick_finalists

    rows = [{"state": "complete", "metric": 0.8 + 0.03 * i, "p50_ms": float(i), "constraints": None, "trial": i,
             "params": {"i": i}} for i in range(5)]

    def picked(k: int) -> list[int]:
        return [r["trial"] for r in pick_finalists(rows, SimpleNamespace(objective="pareto", finalists=k), True)[0]]

    assert picked(1) == [4] and picked(2) == [0, 4] and picked(3) == [0, 2, 4] and picked(7) == [0, 1, 2, 3, 4]


def test_the_report_says_when_the_hand_written_pipeline_is_ahead_of_the_winner(tmp_path):
    from compress.config import load_config
    from compress.study.outputs import markdown
    from compress.study.report import hand_written_ahead

    scfg = load_config(_folder(tmp_path) / "s.toml").search  # max-metric, latency_budget_ms = 1000
    hand = {"metric": 0.95, "p50_ms": 2.0, "bytes": 1000}
    winner = {"trial": 3, "metric": 0.94, "p50_ms": 1.0, "bytes": 500, "toml": "best.toml"}
    assert hand_written_ahead(hand, winner, scfg, True, False)
    assert not hand_written_ahead(hand, {**winner, "metric": 0.96}, scfg, True, False)  # the winner is better
    assert not hand_written_ahead({**hand, "p50_ms": 2000.0}, winner, scfg, True, False)  # over the budget
    assert not hand_written_ahead(hand, winner, scfg, True, True)  # a best effort met nothing: nothing to compare
    assert not hand_written_ahead(hand, winner, scfg.model_copy(update={"max_bytes": 800}), True, False)
    assert hand_written_ahead({**hand, "metric": 0.93}, winner, scfg, False, False)  # lower is better
    section = {"study": "s", "objective": "max-metric", "target": {"provider": "cpu", "batch": 1, "threads": 1},
               "counts": {}, "metric": "accuracy", "winner": winner, "trials": [], "hand_written_ahead": True}
    assert "the search found nothing better than the file as written" in markdown(section)
    assert "nothing better" not in markdown({**section, "hand_written_ahead": False})


def test_an_architecture_drawn_again_is_not_timed_again(tmp_path, monkeypatch):
    """TPE draws the same architecture many times (14 of 36 complete trials in one demo study): its untrained p50
    does not depend on the training settings, so it is measured once a study."""
    from types import SimpleNamespace

    import compress.study.loop as loop
    from compress.study.trial import architecture_key

    calls = []
    monkeypatch.setattr(loop, "latency_first", lambda raw, *args: calls.append(raw) or 5.0)
    worker = SimpleNamespace(scfg=SimpleNamespace(latency_budget_ms=1.0, objective="max-metric"), untrained={},
                             source=tmp_path / "s.toml", reference=None, feeds={})
    raw = {"data": {"source": "npz:tiny.npz"}, "student": {"model": "builtin:cnn-small", "kwargs": {"width": 8}},
           "distill": {"temperature": 2.0}, "quantize": {"mode": "static"}, "pipeline": {"output_dir": "a"}}
    again = {**raw, "distill": {"temperature": 7.0}, "pipeline": {"output_dir": "b"}}
    wider = {**raw, "student": {"model": "builtin:cnn-small", "kwargs": {"width": 16}}}
    outcomes = [loop.Loop._too_slow(worker, r, tmp_path / str(i)) for i, r in enumerate((raw, again, wider))]
    assert [o.p50_ms for o in outcomes] == [5.0, 5.0, 5.0] and all(o.early for o in outcomes)
    assert calls == [raw, wider]  # the second draw of width 8 was not timed again
    assert architecture_key(raw) == architecture_key(again) != architecture_key({**raw, "quantize": {"mode": "none"}})
    # what changes the graph latency_first times (or whether it times one): each its own key
    for change in ({"prune": {"amount": 0.5}}, {"quantize": {"mode": "static", "quant_format": "qoperator"}},
                   {"distill": {"temperature": 2.0, "attention_weight": 1.0}}):
        assert architecture_key({**raw, **change}) != architecture_key(raw), change


def test_an_untrained_reading_just_over_the_line_is_timed_again_and_the_fastest_counts(tmp_path, monkeypatch):
    """A reading a little over budget x EARLY_MARGIN may be noise: the next draw times the architecture again (up to
    UNTRAINED_TRIES readings) and the fastest decides; a reading far over is final."""
    from types import SimpleNamespace

    import compress.study.loop as loop

    readings = {8: iter([1.2, 1.15, 1.3, 1.0]), 16: iter([5.0, 0.5])}  # budget 1.0: the line is 1.1
    calls = []

    def timed(raw, *args):
        width = raw["student"]["kwargs"]["width"]
        calls.append(width)
        return next(readings[width])

    monkeypatch.setattr(loop, "latency_first", timed)
    worker = SimpleNamespace(scfg=SimpleNamespace(latency_budget_ms=1.0, objective="max-metric"), untrained={},
                             source=tmp_path / "s.toml", reference=None, feeds={})

    def draw(width):
        raw = {"data": {"source": "npz:tiny.npz"}, "student": {"model": "builtin:cnn-small", "kwargs": {"width": width}}}
        return loop.Loop._too_slow(worker, raw, tmp_path / "run")

    near = [draw(8) for _ in range(4)]
    assert [o.p50_ms for o in near] == [1.2, 1.15, 1.15, 1.15] and calls == [8, 8, 8]  # three readings, then final
    far = [draw(16) for _ in range(2)]
    assert [o.p50_ms for o in far] == [5.0, 5.0] and calls == [8, 8, 8, 16]  # 5x over: timed once
