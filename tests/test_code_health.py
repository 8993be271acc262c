"""scripts/code_health.py: the size limits of compress/ hold (modules <= 400 lines, functions <= 80)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "code_health.py"


def _module():
    spec = importlib.util.spec_from_file_location("code_health_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compress_is_within_the_size_limits():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "0 over the limits and not allowed"


def test_it_finds_a_long_function_and_a_long_module(tmp_path: Path, monkeypatch):
    # setup: a fake package beside a fake repo root, one module of 401 lines holding an 81-line function
    health = _module()
    pkg = tmp_path / "compress"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(79))
    (pkg / "big.py").write_text("class K:\n    def long(self):\n" + "\n".join("    " + ln for ln in body.splitlines())
                                + "\n        return 0\n" + "\n" * (401 - 82))
    (pkg / "small.py").write_text("def short():\n    return 1\n")
    monkeypatch.setattr(health, "ROOT", tmp_path)
    monkeypatch.setattr(health, "PACKAGE", pkg)
    # execute
    modules = health.module_lines(pkg)
    functions = health.long_functions(pkg)
    code = health.main([])
    # assert
    assert modules == [("compress/big.py", 401), ("compress/small.py", 2)]
    assert functions == [("compress/big.py:K.long", 81)]
    assert code == 1
    monkeypatch.setattr(health, "ALLOWED", {"compress/big.py": "test", "compress/big.py:K.long": "test"})
    assert health.main([]) == 0
