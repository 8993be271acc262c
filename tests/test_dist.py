"""compress run --nproc: training stages in torchrun workers with DDP (gloo on this CPU), a killed worker, a rerun.

The e2e case runs the tiny pipeline for real: once in one process, once on two processes with rank 1 SIGKILLed in
the middle of distillation (exit 1, one line naming the rank and the signal, nothing kept), then again: the teacher
comes from the cache, distillation is redone, and the figures match the one-process run within a few examples.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from .dist_kill import kill_rank_after
from .test_bad_inputs import assert_one_line_error, invoke, leftovers, set_key

TOLERANCE = 0.03  # 2 of the tiny pipeline's 80 test examples: N processes train the same steps as one, up to float sums


def _accuracies(run_dir: Path) -> dict[str, float]:
    report = json.loads((run_dir / "report.json").read_text())
    return {m["name"]: m["accuracy"] for m in report["models"]}


def _statuses(run_dir: Path) -> dict[str, str]:
    report = json.loads((run_dir / "report.json").read_text())
    return {s["name"]: s["status"] for s in report["stages"]}


@pytest.mark.e2e
def test_two_processes_train_the_same_recipe_and_a_killed_rank_resumes(tiny_dir: Path, tmp_path_factory):
    # setup: no control (each training run on 2 processes pays torchrun's start-up, ~3 s here)
    set_key(tiny_dir, "distill", "control", "false")
    one = tmp_path_factory.mktemp("one")
    for name in ("tiny.npz", "zoo.py", "pipeline.toml"):
        (one / name).write_bytes((tiny_dir / name).read_bytes())
    run_dir = tiny_dir / "runs" / "tiny"
    # execute: one process; then two, with rank 1 killed after distillation's first epoch; then two again
    single = invoke(one, "run", "pipeline.toml", "--quiet")
    killer = threading.Thread(target=kill_rank_after, args=(run_dir / "distill", "student", 1), daemon=True)
    killer.start()
    killed = invoke(tiny_dir, "run", "pipeline.toml", "--quiet", "--nproc", "2")
    killer.join(timeout=5)
    after_kill = _statuses(run_dir)
    resumed = invoke(tiny_dir, "run", "pipeline.toml", "--quiet", "--nproc", "2")
    # assert
    assert single.exit_code == 0, single.output
    line = assert_one_line_error(killed, tiny_dir, "pipeline.toml: distill (student): rank 1 of 2",
                                 "was killed by signal 9 (SIGKILL)", "nothing was kept", "run the same command",
                                 code=1)
    assert "torchrun.log" in line
    assert after_kill == {"teacher": "done", "distill": "failed", "export": "skipped", "benchmark": "skipped"}
    assert resumed.exit_code == 0, resumed.output
    assert _statuses(run_dir)["teacher"] == "cached" and _statuses(run_dir)["distill"] == "done"
    expected, got = _accuracies(one / "runs" / "tiny"), _accuracies(run_dir)
    assert got.keys() == expected.keys() == {"teacher", "student"}
    for name in expected:
        assert abs(got[name] - expected[name]) <= TOLERANCE, (name, got, expected)
        assert got[name] > 0.5  # far above chance (10 classes)
    assert leftovers(tiny_dir) == []


def test_bad_process_settings_are_one_line_errors_before_any_work(tiny_dir: Path):
    # batch_size 32 cannot be split over 3 processes; --node-rank must be below --nnodes; 2 machines need node 0
    cases = [(("--nproc", "3"), ["data.batch_size: 32 is not a multiple of the 3 processes", "such as 30"]),
             (("--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"), ["--node-rank must be 0..1"]),
             (("--nnodes", "2"), ["--rdzv-endpoint: expected HOST:PORT of node 0"])]
    for args, fragments in cases:
        result = invoke(tiny_dir, "run", "pipeline.toml", "--quiet", *args)
        assert_one_line_error(result, tiny_dir, *fragments)
        assert not (tiny_dir / "runs").exists()


def test_more_processes_than_cores_is_a_warning(tiny_dir: Path, monkeypatch, caplog):
    from compress.config import load_config
    from compress.dist.settings import DistSettings

    cfg = load_config(tiny_dir / "pipeline.toml")
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="compress"):
        DistSettings(nproc=4).check(cfg)
    assert [r.getMessage() for r in caplog.records] == [
        "warning: --nproc 4 is more than the 2 CPU cores of this machine; the processes share them (slower, "
        "same recipe)"]


def test_the_killed_rank_is_the_root_cause_not_the_rank_that_lost_its_peer(tmp_path: Path):
    # setup: what torchrun recorded when rank 1 was SIGKILLed: rank 0 raised (peer gone) and was then SIGTERMed,
    # with an earlier timestamp than the kill's detection
    from compress.dist.failure import failure_error

    (tmp_path / "failures.json").write_text(json.dumps({"name": "compress.dist.worker", "failures": [
        {"rank": 1, "local_rank": 1, "pid": 11, "exitcode": -9, "signal": "SIGKILL",
         "message": "Signal 9 (SIGKILL) received by PID 11", "timestamp": 1709},
        {"rank": 0, "local_rank": 0, "pid": 10, "exitcode": -15, "signal": "SIGTERM",
         "message": "RuntimeError: [pair.cc:553] Connection closed by peer [127.0.0.1]:931.", "timestamp": 1708}]}))
    # execute
    err = failure_error(tmp_path, 1, desc="p.toml: distill (student)", world_size=2)
    # assert
    assert err.exit_code == 1
    assert str(err).startswith("p.toml: distill (student): rank 1 of 2 (local rank 1, pid 11) was killed by "
                               "signal 9 (SIGKILL); torchrun stopped the other ranks")


def test_a_workers_own_error_reads_as_in_one_process(tmp_path: Path):
    # a CompressError raised inside a worker (e.g. a non-finite loss naming distill.lr) keeps its text and exit code
    from compress.dist.failure import failure_error

    (tmp_path / "error-rank1.json").write_text(json.dumps({"message": "p.toml: distill.lr: loss became nan",
                                                           "exit_code": 2}))
    err = failure_error(tmp_path, 1, desc="p.toml: distill (student)", world_size=2)
    assert (str(err), err.exit_code) == ("p.toml: distill.lr: loss became nan", 2)


@pytest.mark.slow
def test_two_machines_on_localhost_train_together_and_node_0_reports(tiny_dir: Path, tmp_path_factory):
    # setup: two folders stand for two machines (each its own run directory), node 0's endpoint on a free port
    import socket
    import subprocess
    import sys

    set_key(tiny_dir, "distill", "control", "false")
    other = tmp_path_factory.mktemp("node1")
    for name in ("tiny.npz", "zoo.py", "pipeline.toml"):
        (other / name).write_bytes((tiny_dir / name).read_bytes())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # execute: the same command on both, with its --node-rank
    procs = [subprocess.Popen([sys.executable, "-m", "compress", "run", "pipeline.toml", "--quiet", "--nnodes", "2",
                               "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}"], cwd=folder,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank, folder in enumerate((tiny_dir, other))]
    outs = [p.communicate(timeout=600) for p in procs]
    # assert: both exit 0; node 0 reports, node 1 trained the training stages and wrote no report
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "node 1 of 2: training stages done; node 0 writes the report" in outs[1][0]
    assert _statuses(tiny_dir / "runs" / "tiny")["distill"] == "done"
    assert not (other / "runs" / "tiny" / "report.json").exists()
    assert (other / "runs" / "tiny" / "distill" / "manifest.json").exists()
    assert min(_accuracies(tiny_dir / "runs" / "tiny").values()) > 0.5


def test_each_epoch_of_rank_0_moves_the_bar_once_with_its_figures(tmp_path: Path, capsys):
    # the parent polled twice a second and jumped 2/5 -> 5/5, timed from the first line it saw (0.0 s), without
    # the loss and metric one process shows
    from compress.dist.launch import _wait

    log = tmp_path / "torchrun.log"
    lines = [f"student: {i}/3 epoch, loss=0.{i}000, accuracy=0.9{i} ({i}.0 s)" for i in (1, 2, 3)]
    log.write_text("\n".join(["noise from torchrun", *lines]) + "\n")

    class Done:
        def poll(self):
            return 0

    assert _wait(Done(), log, "student", 2, True) == 0
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("student (2 processes)")]
    assert [line.rsplit(" (", 1)[0] for line in printed] == [
        f"student (2 processes): {i}/3 epoch, loss=0.{i}000, accuracy=0.9{i}" for i in (1, 2, 3)]


def test_only_local_rank_0_writes_warnings_into_the_log(caplog):
    # each rank wrote the data's warnings (repeated texts, label gaps) into torchrun.log: twice under --nproc 2
    from compress.dist.worker import said_once_a_machine

    logger = logging.getLogger("compress")
    before = logger.level
    try:
        for rank, shown in ((0, True), (1, False)):
            with caplog.at_level(logging.NOTSET):
                caplog.clear()
                with said_once_a_machine(rank):  # while the data and model load
                    logger.warning("warning: x.toml: data.source: 3 texts repeat")
                    logger.error("error: kept on every rank")
                logger.warning("warning: a file this rank failed to decode")  # training's own: every rank's
            assert [r.levelname for r in caplog.records] == (["WARNING"] if shown else []) + ["ERROR", "WARNING"], rank
    finally:
        logger.setLevel(before)
