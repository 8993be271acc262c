"""Pruned weights on disk: safetensors with the pruned shapes, rebuilt onto the unpruned architecture."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.errors import CompressError, first_line
from compress.prune import mechanics as pruning

if TYPE_CHECKING:
    import torch
    from torch import nn

_FORMAT = "compress.pruned/1"


def save_pruned(model: "nn.Module", path: Path) -> None:
    """Write the pruned weights as safetensors (shapes included), atomically; never a pickled module."""
    from safetensors.torch import save_file

    from compress.cache import atomic_path

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if pruning.mask_keys(state):
        raise CompressError("prune: the model still carries pruning masks; finish with prune() before saving")
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": _FORMAT})


def load_pruned(model: "nn.Module", path: Path, *, example_input: "torch.Tensor | None" = None) -> "nn.Module":
    """Rebuild a pruned model: take the unpruned architecture `model`, shrink it to the saved shapes, load.

    `model` is changed in place and returned. With `example_input`, the result is checked by a forward pass.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CompressError(f"{path}: expected a safetensors file written by save_pruned, got an unreadable "
                            f"file ({exc}); delete it so the prune stage runs again") from exc
    pruning.shrink_to(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CompressError(f"{path}: these weights do not fit the configured student architecture "
                            f"({first_line(exc)}); check [student].model or delete the file") from exc
    if example_input is not None:
        pruning.checked_forward(model, example_input, when="after loading")
    return model
