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
    assert set(main.commands) == {"run", "validate", "bench", "compare", "edge", "quantize"}
    for name in main.commands:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


def test_validate_ok_names_the_stages(tmp_path):
    from tests.conftest import write_toml
    from tests.test_config import BASE

    path = write_toml(tmp_path, BASE + '[quantize]\nmode = "dynamic"\n')
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{path}: ok (teacher, distill, export, quantize, benchmark)"
    assert not (tmp_path / "runs").exists()  # validate runs nothing
