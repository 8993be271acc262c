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
        _remember_source(module)
    except Exception as exc:
        raise CompressError(f"{origin}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
                            f"looked beside the config ({path}) and on sys.path") from exc
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
    """Drop `module_name` from sys.modules when the one imported is not the file beside this config, or that file
    changed since: in one Python process (a notebook, compress.run twice) a second pipeline's mymodels.py was the
    first one's, and an edited one the old code, while the cache key hashed the file on disk."""
    local = _local_file(module_name, folder)
    module = sys.modules.get(module_name)
    if local is None or module is None:
        return
    file = getattr(module, "__file__", None)
    stat = local.stat()
    if file is None or Path(file).resolve() != local.resolve() or \
            getattr(module, "__compress_source__", None) != (stat.st_mtime_ns, stat.st_size):
        for name in [n for n in sys.modules if n == module_name or n.startswith(f"{module_name}.")]:
            del sys.modules[name]
        importlib.invalidate_caches()


def _remember_source(module: Any) -> None:
    """The module file's time and size, as _forget_if_stale compares them."""
    file = getattr(module, "__file__", None)
    if file and Path(file).is_file() and not hasattr(module, "__compress_source__"):
        stat = Path(file).stat()
        module.__compress_source__ = (stat.st_mtime_ns, stat.st_size)


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
