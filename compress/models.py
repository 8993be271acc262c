"""Building models from specs and moving weights in and out, safely.

Weights load from safetensors or `torch.load(weights_only=True)`: a checkpoint that needs code to unpickle is
refused, never executed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.errors import CompressError, shorten

MAX_CHECKPOINT_BYTES = 4 * 1024**3  # larger than any edge-bound teacher; refuse before reading


def check_spec(spec: str) -> None:
    """Reject a malformed model spec at config-load time (pydantic turns ValueError into a keyed message)."""
    from compress.zoo import BUILTINS

    if spec.startswith("builtin:"):
        name = spec[len("builtin:"):]
        if name not in BUILTINS:
            raise ValueError(f"unknown built-in model {name!r}; choose one of {', '.join(sorted(BUILTINS))}")
    elif spec.startswith("hf:"):
        if not spec[3:]:
            raise ValueError("expected 'hf:DIR' with a local directory")
    elif ":" not in spec or spec.startswith(":") or spec.endswith(":"):
        raise ValueError(f"expected 'builtin:NAME', 'module:factory' or 'hf:DIR', got {spec!r}")


def count_params(model) -> int:
    """Number of parameters (tied parameters counted once: .parameters() deduplicates)."""
    return sum(p.numel() for p in model.parameters())


def load_weights(model, path: Path, origin: str, *, key: str | None = None) -> None:
    """Load a safetensors or weights-only torch checkpoint into `model` (strict). Never unpickles code.

    `key` names the entry of a checkpoint dict that holds the state_dict (`[teacher] checkpoint_key`); without
    it the common layouts are found (STATE_DICT_KEYS).
    """
    import pickle
    import warnings

    import torch

    if not path.is_file():
        raise CompressError(f"{origin}: file not found: {path}")
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CompressError(f"{origin}: {path} is {size} bytes, over the {MAX_CHECKPOINT_BYTES}-byte limit")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:
            raise CompressError(f"{origin}: {path} is not a valid safetensors file: {exc}") from exc
    else:
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says it all
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            with open(path, "rb") as f:
                magic = f.read(2)
            if magic != b"PK" and magic[:1] != b"\x80":  # neither torch's zip nor a pickle: not a checkpoint
                raise CompressError(f"{origin}: cannot read {path} as a torch checkpoint (it is neither a torch.save "
                                    "zip nor a pickle); is it the right file?") from exc
            raise CompressError(f"{origin}: refused {path}: it needs code to load (a pickled object, e.g. a whole "
                                "model saved with torch.save(model)), and loading it would run that code; convert "
                                "it once where it was made: from safetensors.torch import save_file; "
                                "save_file(model.state_dict(), 'teacher.safetensors')") from exc
        except Exception as exc:
            raise CompressError(f"{origin}: cannot read {path} as a torch checkpoint "
                                f"({type(exc).__name__}: {str(exc)[:160]})") from exc
        state = _find_state_dict(state, path, origin, key)
    state = _strip_prefix(state, set(model.state_dict()))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = shorten(str(exc), 300)
        more = _more_outputs(model, state, origin)  # before the detail, which the one-line limit may cut
        raise CompressError(f"{origin}: {path} does not match the model: {more + '; ' if more else ''}"
                            f"{detail}") from exc


def _more_outputs(model: Any, state: dict, origin: str) -> str:
    """When the checkpoint's last layer has more outputs than the model's (a teacher trained with classes the data's
    labels never show, the model built for the labels), the key that says how many there are."""
    mine = model.state_dict()
    last = next((k for k in reversed(list(mine)) if k.endswith("weight")), None)
    ours, theirs = mine.get(last), state.get(last)
    if ours is None or theirs is None or not ours.dim() or theirs.shape[1:] != ours.shape[1:] \
            or theirs.shape[0] == ours.shape[0]:
        return ""
    role = origin.rpartition(": ")[2].partition(".")[0]
    if theirs.shape[0] < ours.shape[0]:  # the model was sized from the data (num_classes), wider than the checkpoint
        return (f"its last layer '{last}' has {theirs.shape[0]} outputs, the model's {ours.shape[0]} (num_classes, "
                f"from the data's labels or target width unless {role}.kwargs sets it): the data holds more classes "
                f"or a wider target than the checkpoint was trained for; check the data, or retrain the {role}")
    return (f"its last layer '{last}' has {theirs.shape[0]} outputs, the model's {ours.shape[0]}: for a classifier "
            f"with more classes than the data's labels show, set num_classes = {theirs.shape[0]} in {role}.kwargs")


STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
"""Where common training scripts put the weights inside a checkpoint dict (Lightning, the PyTorch tutorials, ...)."""


def _find_state_dict(state: Any, path: Path, origin: str, key: str | None = None) -> dict:
    """The name -> tensor mapping: `key`'s entry when given, else the checkpoint itself or the first of
    STATE_DICT_KEYS that holds one."""
    import torch

    def is_state(obj: Any) -> bool:
        return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())

    if key is not None:
        found = state.get(key) if isinstance(state, dict) else None
        if is_state(found):
            return found
        keys = shorten(", ".join(repr(str(k)) for k in state), 120) if isinstance(state, dict) else "none"
        raise CompressError(f"{origin.removesuffix('.checkpoint')}.checkpoint_key: {path} has no state_dict under "
                            f"{key!r} (its keys: {keys}); set checkpoint_key to the entry that holds the weights")

    if is_state(state):
        return state
    if isinstance(state, dict):
        for key in STATE_DICT_KEYS:
            if is_state(state.get(key)):
                return state[key]
        keys = shorten(", ".join(repr(str(k)) for k in state), 120)
        raise CompressError(f"{origin}: {path} holds a dict with keys {keys} but no state_dict under "
                            f"{', '.join(map(repr, STATE_DICT_KEYS))}; name the entry with [teacher] checkpoint_key, "
                            "or save model.state_dict() alone, e.g. save_file(model.state_dict(), "
                            "'teacher.safetensors')")
    raise CompressError(f"{origin}: {path} holds a {type(state).__name__}, not a state_dict (a mapping of names to "
                        "tensors); save model.state_dict(), e.g. save_file(model.state_dict(), 'teacher.safetensors')")


def _strip_prefix(state: dict, wanted: set[str]) -> dict:
    """Drop a prefix every key carries ('model.' from Lightning, 'module.' from DDP) when that makes the names
    match the model's; otherwise return `state` as it is (load_state_dict then names the mismatch)."""
    if set(state) == wanted or not state:
        return state
    first = next(iter(state))
    parts = first.split(".")
    for n in range(1, len(parts)):
        prefix = ".".join(parts[:n]) + "."
        if all(k.startswith(prefix) for k in state) and {k[len(prefix):] for k in state} == wanted:
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def save_weights(model, path: Path) -> None:
    """Write the state_dict as safetensors, atomically."""
    from safetensors.torch import save_file

    from compress.cache import atomic_path

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
