"""Import `pkg.module:attr` with the TOML's folder first on sys.path, so a user's zoo.py beside it just works."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from compress.errors import CompressError


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
            raise CompressError(f"{origin}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CompressError(f"{origin}: {target} is not callable")
    return obj
