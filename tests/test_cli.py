"""The CLI surface: fast start, help on every command, one-line errors."""
from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from compress.cli import main


def test_import_and_help_pull_in_no_heavy_module():
    code = ("import sys, compress, compress.cli; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'scipy', 'torch_pruning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_command_has_help():
    runner = CliRunner()
    assert set(main.commands) == {"run", "validate", "search", "bench", "compare", "edge", "quantize"}
    for name in main.commands:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


def test_bench_help_gives_the_timing_defaults_it_runs_with():
    # the options default to None (BenchSettings fills them in), so click showed no default at all
    from compress.bench.config import BenchSettings

    text = " ".join(CliRunner().invoke(main, ["bench", "--help"]).output.split())
    defaults = BenchSettings()
    for option, figure in (("--warmup", defaults.warmup_runs), ("--min-runs", defaults.min_runs),
                           ("--min-seconds", defaults.min_seconds), ("--repetitions", defaults.repetitions)):
        assert f"default {figure})" in text.split(option, 1)[1].split("--", 1)[0], option


def test_validate_ok_names_the_stages(tmp_path):
    from tests.conftest import write_toml
    from tests.test_config import BASE

    path = write_toml(tmp_path, BASE + '[quantize]\nmode = "dynamic"\n')
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{path}: ok (teacher, distill, export, quantize, benchmark)"
    assert not (tmp_path / "runs").exists()  # validate runs nothing


def test_a_very_long_error_is_cut_to_one_readable_line_and_logged_whole(monkeypatch, caplog):
    import logging

    import compress.cli as cli
    from compress.errors import CompressError, shorten_list

    names = [f"gpu_0/res{i}_branch2a_w_0__SHAPE" for i in range(412)]
    assert shorten_list(names[:3], "inputs") == ", ".join(names[:3])
    assert shorten_list(names, "inputs").endswith("gpu_0/res4_branch2a_w_0__SHAPE and 407 more inputs")

    def fails(*args, **kwargs):
        raise CompressError("m.onnx: did not run (Required inputs (" + repr(names) + ") are missing)")

    monkeypatch.setattr("compress.runner.run_pipeline", fails)
    with caplog.at_level(logging.DEBUG, logger="compress"):
        result = CliRunner().invoke(cli.main, ["run", "x.toml"])
    line = result.output.strip()
    assert result.exit_code == 2 and "\n" not in line
    assert len(line) <= len("error: ") + cli.MAX_LINE_CHARS + 40 and line.endswith(" more characters)")
    assert any(names[-1] in r.getMessage() for r in caplog.records), "the whole message goes to the debug log"
