"""Plain PyTorch models: `builtin:NAME` (compress.zoo) and `module:factory` (a user's function).

A factory gets `input_shape` (one example's shape, without the batch) and `num_classes` from the data when it takes
parameters with those names; everything else comes from `kwargs` in the TOML.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.families import Family

if TYPE_CHECKING:
    from compress.records import ModelSpec


class TorchFamily(Family):
    name = "torch"

    def build(self, spec: "ModelSpec", *, data: Any, base_dir: Path, origin: str, fresh: bool = False) -> Any:
        import torch

        from compress.imports import import_object
        from compress.zoo import BUILTINS

        model_spec = spec.model
        if model_spec.startswith("builtin:"):
            factory = BUILTINS[model_spec[len("builtin:"):]]
            _check_builtin_shape(model_spec, data.input_shape, origin)
        else:
            factory = import_object(model_spec, base_dir, f"{origin}.model")
        kw = dict(spec.kwargs)
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        if "input_shape" in params:
            kw.setdefault("input_shape", data.input_shape)
        classes = _num_classes(data) if "num_classes" in params and "num_classes" not in kw else None
        if classes:
            kw["num_classes"] = classes
        try:
            model = factory(**kw)
        except TypeError as exc:
            raise CompressError(f"{origin}.kwargs: {model_spec} does not accept these arguments: {exc}") from exc
        except ValueError as exc:
            if model_spec.startswith("builtin:"):  # the built-ins raise ValueError only for a bad keyword value
                raise CompressError(f"{origin}.kwargs: {model_spec}: {exc}") from exc
            raise CompressError(f"{origin}.model: {model_spec} raised {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            raise CompressError(f"{origin}.model: {model_spec} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, torch.nn.Module):
            raise CompressError(f"{origin}.model: {model_spec} returned {type(model).__name__}, expected a "
                                "torch.nn.Module")
        return model.eval()


def _num_classes(data: Any) -> int | None:
    """What a factory's `num_classes` gets from the data: the number of class labels; for the tensors task, the
    width of its one target when each example's is a vector (a regressor's y of shape (N, 1) gives 1). None (the
    factory's own default) otherwise: the 0 a task without class labels counts made zero-width heads."""
    if getattr(data, "num_classes", 0):
        return data.num_classes
    if getattr(data, "task", None) != "tensors" or not getattr(data, "has_targets", False):
        return None
    try:
        _, target = data.arrays("train", limit=1)
    except Exception:  # noqa: BLE001 - a hint only: the model's own default stays, and the task checks shapes
        return None
    shape = getattr(target, "shape", ())
    return int(shape[1]) if len(shape) == 2 and shape[1] > 0 else None


def looks_channels_last(shape: tuple[int, ...]) -> bool:
    """Image examples saved (H, W, C), as numpy and Pillow give them: 3 axes, 1, 3 or 4 channels last, and a first
    axis too long for channels."""
    return len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] > 4


def _check_builtin_shape(spec: str, input_shape: tuple[int, ...], origin: str) -> None:
    from compress.zoo import IMAGE_MODELS

    if spec[len("builtin:"):] in IMAGE_MODELS and len(input_shape) != 3:
        shape = f"({input_shape[0]},)" if len(input_shape) == 1 else f"({', '.join(map(str, input_shape))})"
        raise CompressError(f"{origin}.model: {spec} needs image examples shaped (C, H, W); the data's examples are "
                            f"{shape}; use builtin:mlp for flat features, or your own module:factory")
    # (H, W, C) read as (C, H, W): a width of 1 or 3 pools to nothing in a builtin CNN (RGBA's 4 still runs)
    if spec[len("builtin:"):] in IMAGE_MODELS and looks_channels_last(input_shape) and input_shape[-1] != 4:
        raise CompressError(f"{origin}.model: {spec} needs image examples shaped (C, H, W); the data's examples are "
                            f"{tuple(input_shape)}, which looks channels last (H, W, C): store x.transpose(0, 3, 1, 2)")
