"""Import `pkg.module:attr` with the TOML's folder first on sys.path, so a user's zoo.py beside it just works."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from compress.errors import CompressError, shorten


def import_object(target: str, base_dir: Path, origin: str) -> Any:
    """Return the attribute named by 'module:attr'; errors name the config key in `origin`."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CompressError(f"{origin}: expected 'module:function', got {target!r}")
    path = str(Path(base_dir).resolve())
    added = path not in sys.path
    if added:
        sys.path.insert(0, path)
    try:
        _forget_if_stale(module_name, Path(path))
        module = importlib.import_module(module_name)
        _forget_if_stale(module_name, Path(path))  # nothing is stale now: it stamps what the import brought in
    except Exception as exc:
        hint = ("; drop the 'python:' prefix: it marks a data source, and this key takes 'module:function'"
                if module_name == "python" and isinstance(exc, ModuleNotFoundError) else "")
        raise CompressError(f"{origin}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
                            f"looked in {path} and on sys.path{hint}") from exc
    finally:
        if added:
            sys.path.remove(path)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CompressError(f"{origin}: module {module_name!r} has no attribute {attr!r}"
                                f"{_suggest(module_name, obj, part)}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CompressError(f"{origin}: {target} is not callable")
    return obj


def _local_file(module_name: str, folder: Path) -> Path | None:
    """The file `module_name` names beside the config (a module, or a package's __init__), if there is one."""
    base = folder.joinpath(*module_name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _forget_if_stale(module_name: str, folder: Path) -> None:
    """Drop a user module (and its submodules) from sys.modules when the one cached is another config folder's, or
    its file beside this config changed since: in one Python process (a notebook, compress.run twice) a second
    pipeline's mymodels.py was the first one's, and an edited one the old code, while the cache key hashed the file
    on disk. Each dotted level is checked from the top (a package's path decides where its submodules come from).
    Only modules this function stamped are dropped for another folder's: one imported elsewhere (the stdlib's
    `random`, the user's own `import mymodels` before compress.run) stays, its classes the ones in use. A level
    loaded from the file beside this config and not stamped yet is stamped (its time and size, _stamp)."""
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        module, local = sys.modules.get(name), _local_file(name, folder)
        if module is None or local is None:
            return
        file, stamp = getattr(module, "__file__", None), getattr(module, "__compress_source__", None)
        here = file is not None and Path(file).resolve() == local.resolve()
        if here and stamp is None:  # imported by the user from this very file: keep it, and watch it from now on
            module.__compress_source__ = _stamp(local)
        elif (here and stamp != _stamp(local)) or (not here and stamp is not None):
            for cached in [n for n in sys.modules if n == name or n.startswith(f"{name}.")]:
                del sys.modules[cached]
            importlib.invalidate_caches()
            return


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _suggest(module_name: str, obj: Any, missing: str) -> str:
    """'; did you mean 'mymodels:big_mlp'?' from the public callables of `obj`, else the list of them."""
    import difflib

    names = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
    hint = difflib.get_close_matches(missing, names, n=1, cutoff=0.6)
    if hint:
        return f"; did you mean {module_name + ':' + hint[0]!r}?"
    if names:
        return f"; its public callables are: {shorten(', '.join(names), 200)}"
    return "; it defines no public callables"
