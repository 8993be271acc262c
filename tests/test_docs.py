"""The docs stay true: the config reference is the one the config classes generate; the two fresh-machine commands."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    doc = (ROOT / "docs" / "config.md").read_text()
    block = re.search(r"<!-- config-reference:.*?-->\n(.*?)<!-- /config-reference -->", doc, re.S)
    assert block, "docs/config.md lost its generated config reference block"
    generated = subprocess.run([sys.executable, str(ROOT / "scripts/config_reference.py")], capture_output=True,
                               text=True, check=True).stdout
    assert block.group(1).strip() == generated.strip(), "run: python scripts/config_reference.py, paste into docs/config.md"


def test_readme_first_section_gives_the_two_commands():
    first = (ROOT / "README.md").read_text().split("\n## ")[1]
    assert "make demo" in first and "make test" in first


def test_shipped_pipelines_validate():
    from compress.config import load_config

    shipped = sorted((ROOT / "pipelines").glob("*.toml"))
    assert {"digits.toml", "digits-prune.toml"} <= {p.name for p in shipped}, shipped
    for toml in shipped:
        load_config(toml)  # raises CompressError, naming the file and key, on anything invalid


def readme_examples() -> dict[str, str]:
    """The fenced blocks of README.md marked `<!-- example: NAME -->`, by NAME."""
    text = (ROOT / "README.md").read_text()
    return dict(re.findall(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```", text, re.S))


@pytest.mark.e2e
def test_readme_your_own_model_example_runs_as_written(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from compress.cli import main

    # setup: the README's files, verbatim, in an empty folder; its commands, in order
    examples = readme_examples()
    assert sorted(examples) == ["commands", "make_data.py", "mymodels.py", "pipeline.toml"]
    for name in ("mymodels.py", "make_data.py", "pipeline.toml"):
        (tmp_path / name).write_text(examples[name])
    commands = [c.split("#")[0].split() for c in examples["commands"].strip().splitlines()]
    assert commands == [["python", "make_data.py"], ["compress", "validate", "pipeline.toml"],
                        ["compress", "run", "pipeline.toml"]]
    monkeypatch.chdir(tmp_path)
    subprocess.run([sys.executable, "make_data.py"], check=True, cwd=tmp_path, timeout=120)
    # execute
    for command in commands[1:]:
        result = CliRunner().invoke(main, [*command[1:], *(["--quiet"] if command[1] == "run" else [])])
        assert result.exit_code == 0, result.output
    # assert
    report = json.loads((tmp_path / "runs" / "table" / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["teacher", "control", "student"]
    assert report["models"][0]["accuracy"] >= 0.9
