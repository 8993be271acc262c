"""The shape of the code: stage modules are glue that never import each other, and no module imports itself back
through others (no import circles), counting imports inside functions too."""
from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "compress"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> set[str]:
    """compress modules that `path` imports anywhere (functions included), except under `if TYPE_CHECKING:`."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "compress")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "compress":
            for alias in node.names:  # `from compress.prune import mechanics` imports the submodule
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def test_a_stage_never_imports_another_stage():
    stages = {name for name in MODULES if name.startswith("compress.stages.")}
    offenders = {name: sorted(GRAPH[name] & stages) for name in stages if GRAPH[name] & stages}
    assert offenders == {}, f"move the shared code into the package it belongs to: {offenders}"


def test_stage_modules_hold_run_and_nothing_public_besides():
    for name in (n for n in MODULES if n.startswith("compress.stages.")):
        tree = ast.parse(MODULES[name].read_text())
        public = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                  and not n.name.startswith("_")]
        assert public == ["run"], f"{name}: a stage module holds run(ctx) only, got {public}"


def test_no_import_circles():
    # A package's own __init__ re-exporting its submodules is how Python packages work; only count edges out of
    # a package's __init__ to modules outside that package.
    def edges(name: str) -> set[str]:
        out = GRAPH[name]
        if MODULES[name].name == "__init__.py":
            out = {m for m in out if not m.startswith(name + ".")}
        return out

    cycles = []
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges(node)):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(MODULES):
        if name not in state:
            walk(name, [name])
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_registry_lists_every_stage_module_and_reads_real_keys():
    from compress.config import PipelineConfig
    from compress.stages import STAGES

    modules = {n for n in MODULES if n.startswith("compress.stages.")}
    assert {s.module for s in STAGES.values()} == modules
    for name, stage in STAGES.items():
        for path in stage.reads:
            section, _, key = path.partition(".")
            key = key.partition("[")[0]  # 'benchmark.seq_lengths[0]': the key's first value
            assert section in PipelineConfig.model_fields, f"{name} reads unknown section {section!r}"
            if key:
                annotation = PipelineConfig.model_fields[section].annotation
                fields = next(a for a in (annotation, *getattr(annotation, "__args__", ())) if hasattr(a, "model_fields"))
                assert key in fields.model_fields, f"{name} reads unknown key {path!r}"


def test_the_quantize_stage_key_follows_the_npu_keys_its_qat_reads(tmp_path):
    # quantize (mode = "qat") trains the NPU's QDQ graph when export.edge_targets has "qnn", at
    # export.qnn_activation_type: it stayed cached when either changed, and the report contradicted the graph
    from compress.config import load_config
    from compress.stages import section_inputs

    from .conftest import write_toml
    from .test_config import BASE

    base = BASE + '[quantize]\nmode = "qat"\n'
    npu = '[export]\nort_format = true\nedge_targets = ["qnn"]\n'
    keys = [section_inputs(load_config(write_toml(tmp_path, base + extra, f"{name}.toml")), "quantize")
            for name, extra in (("a", ""), ("b", npu), ("c", npu + 'qnn_activation_type = "uint16"\n'))]
    assert keys[0] != keys[1] != keys[2]


def test_keys_that_do_not_change_a_stage_leave_it_cached(tmp_path):
    # export and quantize use the first sequence length only; DataLoader workers only move reading elsewhere,
    # unless augmentations draw their random numbers in them
    from compress.config import load_config
    from compress.runner import _data_key
    from compress.stages import section_inputs

    from .conftest import write_toml
    from .test_config import BASE

    def cfg(extra: str, name: str):
        return load_config(write_toml(tmp_path, BASE + '[quantize]\nmode = "dynamic"\n' + extra, f"{name}.toml"))

    base = cfg("", "base")  # [benchmark] seq_lengths applies to text sources: set past the file's checks
    one, two, other = (base.model_copy(update={"benchmark": base.benchmark.model_copy(update={"seq_lengths": s})})
                       for s in ((64,), (64, 128), (32,)))
    for stage in ("export", "quantize"):
        assert section_inputs(one, stage) == section_inputs(two, stage) != section_inputs(other, stage)
    assert section_inputs(one, "benchmark") != section_inputs(two, "benchmark")
    assert _data_key(cfg("[data]\nworkers = 2\n", "w2")) == _data_key(cfg("[data]\nworkers = 0\n", "w0"))
    augmented = SimpleNamespace(data=SimpleNamespace(model_dump=lambda mode: {"workers": 2, "augment": ["flip"]}))
    assert _data_key(augmented) == {"workers": 2, "augment": ["flip"]}
    own = SimpleNamespace(data=SimpleNamespace(model_dump=lambda mode: {"workers": 2, "source": "python:m:f"}))
    assert _data_key(own) == {"workers": 2, "source": "python:m:f"}  # its transforms may draw random numbers
