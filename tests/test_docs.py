"""The docs stay true: the config reference is the one the config classes generate; the two fresh-machine commands."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
