"""Reliability figures: the bad-input battery and kill-and-resume, counted.

Runs tests/test_bad_inputs.py (every user error through the real CLI: exit 2, one line on stderr naming the file
and key, no traceback, no temp file left) and tests/test_resume.py (SIGKILL at 5 points of a tiny pipeline, run
again, compare with an uninterrupted run), and prints:

    bad-input battery: N/N handled
    kill-and-resume: 5/5 resumed identical
    concurrent run: 1/1 refused

Run: python benchmarks/bench_reliability.py [--json out.json]   (about 2 minutes on 2 cores)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Outcomes:
    """pytest plugin: the outcome of every test, keyed by node id (a failed setup counts as a failure)."""

    def __init__(self) -> None:
        self.results: dict[str, str] = {}
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report) -> None:  # noqa: ANN001 - pytest's hook signature
        if report.when == "call" or report.outcome != "passed":
            if self.results.get(report.nodeid) != "failed":
                self.results[report.nodeid] = report.outcome
            self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration


def run_tests(path: str) -> tuple[Outcomes, float]:
    import pytest

    outcomes = Outcomes()
    started = time.perf_counter()
    pytest.main([str(ROOT / path), "-q", "-p", "no:cacheprovider", "--no-header", "-m", "", "-W",
                 "ignore::DeprecationWarning"], plugins=[outcomes])
    return outcomes, time.perf_counter() - started


def count(outcomes: Outcomes, contains: str = "") -> tuple[int, int, list[str]]:
    chosen = {k: v for k, v in outcomes.results.items() if contains in k}
    failed = sorted(k.split("::", 1)[1] for k, v in chosen.items() if v != "passed")
    return len(chosen) - len(failed), len(chosen), failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="Also write the counts here.")
    args = parser.parse_args()

    battery, battery_s = run_tests("tests/test_bad_inputs.py")
    resume, resume_s = run_tests("tests/test_resume.py")

    rows = {
        "bad-input battery": (count(battery), "handled", battery_s),
        "kill-and-resume": (count(resume, "test_killed_run_resumes"), "resumed identical", None),
        "concurrent run": (count(resume, "concurrent"), "refused", resume_s),
    }
    print()
    doc = {}
    for name, ((ok, total, failed), verb, seconds) in rows.items():
        took = f"  ({seconds:.0f} s)" if seconds is not None else ""
        print(f"{name}: {ok}/{total} {verb}{took}")
        for case in failed:
            print(f"    NOT handled: {case}")
        doc[name] = {"ok": ok, "total": total, "failed": failed}
    points = sorted(k.split("[", 1)[1].rstrip("]") for k in resume.results if "test_killed_run_resumes" in k)
    print(f"kill points: {', '.join(points)}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if all(not r[0][2] and r[0][1] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
