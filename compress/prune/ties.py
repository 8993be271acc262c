"""Tied weights through channel pruning: modules that share one Parameter (a tied embedding and output head, any
`b.weight = a.weight`) must still share one after Torch-Pruning's surgery.

Torch-Pruning replaces each pruned tensor with a new Parameter module by module, so a tied pair comes out as two
tensors: equal ones when both sides lost the same channels (re-tied here), different ones when they did not
(refused: the model would no longer be the tied one it was).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from compress.errors import CompressError

if TYPE_CHECKING:
    from torch import nn

#: One tie: the (module name, parameter name) places holding the same Parameter, in named_modules() order.
Tie = tuple[tuple[str, str], ...]


def find_ties(model: "nn.Module") -> list[Tie]:
    """The Parameters that two or more places in `model` hold (a module used twice is one place, not a tie)."""
    places: dict[int, list[tuple[str, str]]] = {}
    for prefix, module in model.named_modules():
        for name, param in module._parameters.items():
            if param is not None:
                places.setdefault(id(param), []).append((prefix, name))
    return [tuple(group) for group in places.values() if len(group) > 1]


def retie(model: "nn.Module", ties: list[Tie]) -> None:
    """Make each of `ties` (found before pruning) one Parameter again: the first place's tensor, shared.

    Raises:
        CompressError: pruning left a tie's tensors with different shapes or values (each side lost other
            channels), naming the two places.
    """
    import torch

    for tie in ties:
        (first_module, first_name), *rest = tie
        first = getattr(model.get_submodule(first_module), first_name)
        for module_name, name in rest:
            module = model.get_submodule(module_name)
            other = getattr(module, name)
            if other is first:
                continue
            if other.shape != first.shape or not torch.equal(other, first):
                differ = f"shapes {list(first.shape)} vs {list(other.shape)}" if other.shape != first.shape \
                    else "other channels kept"
                raise CompressError(
                    f"prune: '{_dotted(first_module, first_name)}' and '{_dotted(module_name, name)}' are one "
                    f"tied tensor, but removing channels changed them differently ({differ}): tied weights must "
                    "keep the same channels")
            setattr(module, name, first)


def _dotted(module: str, name: str) -> str:
    return f"{module}.{name}" if module else name
