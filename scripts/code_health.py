"""Size limits of compress/: modules under 400 lines, functions under 80 (STYLE.md, issue 10).

Prints the largest modules and every function over the limit; exit 1 if a module or a function is over its limit
and not in ALLOWED below (each entry with its reason). Tests do not count: only compress/.

    python scripts/code_health.py [--top N]
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "compress"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

# "compress/x.py" or "compress/x.py:function" -> why it may stay over the limit. Keep it short, and empty if you can.
ALLOWED: dict[str, str] = {}


def module_lines(root: Path = PACKAGE) -> list[tuple[str, int]]:
    """(path relative to the repo, line count) of every module, largest first."""
    sizes = [(p.relative_to(ROOT).as_posix(), len(p.read_text().splitlines())) for p in sorted(root.rglob("*.py"))]
    return sorted(sizes, key=lambda item: (-item[1], item[0]))


def long_functions(root: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """('compress/x.py:Class.function', lines) for every function longer than `limit` (decorators not counted)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        found += [(f"{rel}:{name}", lines) for name, lines in _functions(ast.parse(path.read_text()))
                  if lines > limit]
    return sorted(found, key=lambda item: (-item[1], item[0]))


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node.end_lineno - node.lineno + 1
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10, help="how many of the largest modules to list")
    args = parser.parse_args(argv)
    modules = module_lines(PACKAGE)
    functions = long_functions(PACKAGE)
    print(f"largest modules in compress/ (limit {MAX_MODULE_LINES} lines):")
    for name, lines in modules[: args.top]:
        print(f"  {lines:5d}  {name}{_mark(name, lines > MAX_MODULE_LINES)}")
    print(f"functions over {MAX_FUNCTION_LINES} lines:" + ("" if functions else " none"))
    for name, lines in functions:
        print(f"  {lines:5d}  {name}{_mark(name, True)}")
    over = [n for n, lines in modules if lines > MAX_MODULE_LINES] + [n for n, _ in functions]
    stale = sorted(set(ALLOWED) - set(over))
    for name in stale:
        print(f"allow-list entry no longer needed: {name} (remove it from ALLOWED)")
    failing = [n for n in over if n not in ALLOWED]
    print(f"{len(failing)} over the limits and not allowed" + (": " + ", ".join(failing) if failing else ""))
    return 1 if failing else 0


def _mark(name: str, over: bool) -> str:
    if not over:
        return ""
    return f"  OVER (allowed: {ALLOWED[name]})" if name in ALLOWED else "  OVER"


if __name__ == "__main__":
    sys.exit(main())
