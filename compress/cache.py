"""Content-hashed stage cache, atomic writes and the run-directory lock.

A stage's manifest is written last, after its artifacts, and lists each artifact's sha256. A later run trusts a stage
only when the manifest's key matches and every artifact still hashes to what the manifest says, so a run killed at
any moment never leaves something a later run will believe.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from compress.errors import CompressError

MANIFEST = "manifest.json"
TMP_SUFFIX = ".tmp"  # atomic_path's temp names: .<name>.<random>.tmp beside the target


def digest(obj: Any) -> str:
    """Stable sha256 of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_digest(base_dir: Path, spec: str) -> str | None:
    """sha256 of a user's `module:factory` file beside the TOML and of the modules beside it that it imports (their
    own imports too), so editing the model code, or a layer file it imports, re-runs its stage."""
    if spec.startswith(("builtin:", "hf:")):
        return None
    path = _module_file(Path(base_dir), spec.partition(":")[0])
    if path is None:
        return None
    files = sorted(_local_imports(path, Path(base_dir)))
    if files == [path]:
        return file_sha256(path)  # (the key of a one-file model, as before)
    return digest([(str(f.relative_to(base_dir)), file_sha256(f)) for f in files])


def _module_file(base_dir: Path, module: str) -> Path | None:
    """The file of a module name under `base_dir` (a .py file or a package's __init__.py), or None."""
    stem = base_dir / module.replace(".", "/")
    return next((f for f in (stem.with_suffix(".py"), stem / "__init__.py") if f.is_file()), None)


def _absolute(node: Any, file: Path, base_dir: Path) -> str | None:
    """The dotted module a `from ... import` names, a relative one (`from .layers import`, `from . import blocks`)
    resolved against `file`'s package under `base_dir`; None when it leaves `base_dir`."""
    if not node.level:
        return node.module
    try:
        parts = list(file.parents[node.level - 1].relative_to(base_dir).parts)
    except (IndexError, ValueError):
        return None
    return ".".join([*parts, *([node.module] if node.module else [])])


def _local_imports(path: Path, base_dir: Path) -> set[Path]:
    """`path` and every module under `base_dir` it imports, followed through their imports (read, never run)."""
    import ast

    found, todo = set(), [path]
    while todo:
        file = todo.pop()
        if file in found:
            continue
        found.add(file)
        try:
            tree = ast.parse(file.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue  # the import itself says what is wrong, with the line
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(node, file, base_dir)
                names = [] if module is None else [m for m in (module, *(f"{module}.{a.name}".lstrip(".")
                                                                          for a in node.names)) if m]
            else:
                names = []
            todo += [f for f in (_module_file(base_dir, n) for n in names) if f is not None and f not in found]
    return found


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600; artifacts get the mode any new file gets. After the block, not before: some writers
        # (safetensors' save_file) replace the file at the temp path with one of their own, again 0600.
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise CompressError(f"{path}: could not write ({exc.strerror or exc}); check free disk space and "
                            "permissions") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def usual_mode(path: Path) -> None:
    """Give `path` the mode any new file gets under the umask (writers such as onnx's external-data saver make
    0600 files that nobody else can read)."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete temp files that a killed run left in `run_dir`. Only safe while holding the run lock."""
    stale = []
    for folder, dirs, files in os.walk(run_dir):
        # another run's folder (a search's trials and finalists live inside this run folder): not ours to clean
        dirs[:] = [d for d in dirs if not _foreign(Path(folder, d), run_dir)]
        stale += [Path(folder, f) for f in files if f.startswith(".") and f.endswith(TMP_SUFFIX)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _foreign(folder: Path, run_dir: Path) -> bool:
    """A folder inside a run folder that another process may be writing: a run folder of its own (it has a lock) or
    the search's folder."""
    return (folder / ".lock").exists() or (folder.parent == run_dir and folder.name == "search")


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def load_manifest_file(stage_dir: Path) -> dict | None:
    """The stage folder's manifest as written, unchecked; None when it is missing or unreadable."""
    try:
        manifest = json.loads((stage_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def load_manifest(stage_dir: Path, key: str, run_dir: Path) -> dict | None:
    """The stage's manifest if its key matches and all its artifacts are intact; None otherwise."""
    manifest = load_manifest_file(stage_dir)
    if manifest is None or manifest.get("key") != key:
        return None
    for rel, sha in manifest.get("artifacts", {}).items():
        p = run_dir / rel
        if not p.is_file() or file_sha256(p) != sha:
            return None
    return manifest


def save_manifest(stage_dir: Path, key: str, run_dir: Path, artifacts: list[str], result: dict,
                  seconds: float) -> None:
    manifest = {"key": key, "artifacts": {rel: file_sha256(run_dir / rel) for rel in artifacts},
                "result": result, "seconds": seconds}
    write_json(stage_dir / MANIFEST, manifest)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory; a second run of the same pipeline is refused at once.

    The lock is an OS file lock, so a killed run releases it; the temp files such a run left are removed here.
    """
    made = made_folders(run_dir)
    try:
        with exclusive(run_dir / ".lock", f"{run_dir}: another compress run is using this run directory; wait for "
                       "it to finish or use a different [pipeline] output_dir"):
            remove_stale_temps(run_dir)
            yield
    finally:  # a run that stopped before writing anything (its checks failed) leaves no folder holding a lock
        if made and [p.name for p in run_dir.iterdir()] == [".lock"]:
            with contextlib.suppress(OSError):
                (run_dir / ".lock").unlink()
            remove_folders(made)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path, a symlink to it, or a hard link (another name, one file)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def made_folders(folder: Path) -> list[Path]:
    """Make `folder` with its parents; return the ones made here, deepest first (for `remove_folders`)."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return made


def remove_folders(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) where they are empty; one that is not stays, and so do its parents."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def exclusive(lock_path: Path, busy: str) -> Iterator[None]:
    """Hold an OS file lock (a killed holder releases it); CompressError(`busy`) at once when another holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CompressError(busy) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def shared_entry(store: Path, stage: str, key: str) -> Iterator[Path]:
    """Hold the lock of one stage result in a store shared by several run directories (a search's trials); yield
    its folder. A second process asking for the same result waits here, then finds it published: computed once."""
    from filelock import FileLock

    entry = Path(store) / f"{stage}-{key[:24]}"
    (entry.parent / ".locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry.parent / ".locks" / f"{entry.name}.lock")):
        yield entry


def fetch_shared(entry: Path, stage: str, key: str, run_dir: Path) -> dict | None:
    """Copy a published stage result into `run_dir` (hard links where the file system allows); its manifest if the
    key matches and every artifact is intact there, else None."""
    import shutil

    if load_manifest(entry, key, _run_of(entry, stage)) is None:
        return None
    stage_dir = run_dir / stage
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    shutil.copytree(entry, stage_dir, copy_function=_link_or_copy)
    return load_manifest(stage_dir, key, run_dir)


def publish_shared(entry: Path, stage: str, run_dir: Path) -> None:
    """Put a finished stage's folder (manifest last) into the store, if every artifact lies inside that folder."""
    import shutil

    stage_dir = run_dir / stage
    manifest = json.loads((stage_dir / MANIFEST).read_text())
    if not all(rel.startswith(f"{stage}/") for rel in manifest.get("artifacts", {})):
        return
    tmp = entry.with_name(entry.name + TMP_SUFFIX)
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(stage_dir, tmp, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(MANIFEST))
    shutil.copy2(stage_dir / MANIFEST, tmp / MANIFEST)
    if entry.exists():
        shutil.rmtree(entry)
    os.replace(tmp, entry)


def _run_of(entry: Path, stage: str) -> Path:
    """The run directory an entry's manifest paths are relative to: a view in which `<stage>/` is the entry."""
    view = entry.parent / ".views" / entry.name
    view.mkdir(parents=True, exist_ok=True)
    link = view / stage
    if not link.is_symlink():
        link.symlink_to(entry.resolve(), target_is_directory=True)
    return view


def _link_or_copy(src: str, dst: str) -> str:
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
