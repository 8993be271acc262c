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
        module = importlib.import_module(module_name)
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
