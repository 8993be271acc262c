"""The same-size control (prune.control): a student of the pruned model's size trained from scratch, so the report
shows whether pruning beat simply training a model that small."""
from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, Callable

from compress.errors import CompressError
from compress.prune import mechanics as pruning

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

#: Model name of the same-size student trained from scratch (prune.control).
CONTROL_NAME = "pruned-control"
#: How the control is made, by prune.method: for the report and the log.
CONTROL_RECIPES = {
    "channel": "the pruned architecture re-initialised",
    "magnitude": "the pruned model's masks (kept in training) on re-initialised weights",
}


def train_control(pruned: "nn.Module", *, epochs: int, seed: int, train_fn: Callable[["nn.Module", int], object],
                  sparse: bool = False) -> "nn.Module":
    """The same-size control: a copy of the pruned model, re-initialised from `seed`, trained by
    `train_fn(model, epochs)` (the caller's recipe, e.g. distillation from the teacher) from scratch.

    Every module with a `reset_parameters()` (Conv, Linear, BatchNorm, LayerNorm, ...) gets its default
    initialisation at the pruned sizes; BatchNorm statistics restart too. A module that owns parameters but
    cannot reset them would keep pruned weights, so it is an error rather than a silently warm-started control.

    With `sparse` (magnitude pruning, whose tensors keep their shapes), the size is the nonzero weights: each
    Conv/Linear weight that holds zeros in `pruned` keeps exactly those zeros, as a mask on the re-initialised
    weights that stays on through training (the "random re-initialisation, same mask" control of the lottery-ticket
    experiments, Frankle & Carbin 2019; training the pruned sparse topology from scratch, Liu et al. 2019). The
    control then has the same nonzero weights per layer as the pruned model, where a dense one would have them all.
    """
    import torch

    model = copy.deepcopy(pruned)
    masks = _zero_masks(model) if sparse else {}
    torch.manual_seed(seed)
    for name, module in model.named_modules():
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        elif any(True for _ in module.parameters(recurse=False)):
            raise CompressError(f"prune.control: module '{name}' ({type(module).__name__}) has parameters but no "
                                "reset_parameters(), so it cannot be re-initialised for the from-scratch control; "
                                "add reset_parameters() to it or set prune.control = false")
    layers = _apply_masks(model, masks)
    log.info("prune: control '%s' is %s", CONTROL_NAME, CONTROL_RECIPES["magnitude" if sparse else "channel"])
    train_fn(model, epochs)
    pruning.magnitude_finalize(layers)
    return model.eval()


def _zero_masks(model: "nn.Module") -> dict[str, "torch.Tensor"]:
    """Per Conv/Linear layer name, where its weight is nonzero; only layers that hold zeros (the pruned ones)."""
    names = {module: name for name, module in model.named_modules()}
    masks = {}
    for layer in pruning.magnitude_targets(model, ()):
        mask = layer.weight.detach() != 0
        if not bool(mask.all()):
            masks[names[layer]] = mask.to(layer.weight.dtype)
    return masks


def _apply_masks(model: "nn.Module", masks: dict[str, "torch.Tensor"]) -> list["nn.Module"]:
    """Attach `masks` to the layers' weights (torch.nn.utils.prune, as magnitude pruning's recovery trains)."""
    from torch.nn.utils import prune as tprune

    layers = []
    for name, mask in masks.items():
        layer = model.get_submodule(name)
        tprune.custom_from_mask(layer, "weight", mask)
        layers.append(layer)
    return layers


def collapse_warning(steps: list[dict], metric: Any) -> str | None:
    """One line when pruning cost the student a point or more of its validation figure (1% of it for a figure
    that is not a share), after recovery: what a smaller amount, more recovery or the control would tell."""
    from compress.report import shown

    before, after = steps[0]["accuracy"], steps[-1]["accuracy"]
    if before is None or after is None or not metric.better(before, after):
        return None
    share = metric.name in ("accuracy", "top1_agreement")
    if abs(before - after) < (0.01 if share else 0.01 * abs(before)):
        return None
    lost = f"{100 * abs(before - after):.2f} points" if share else f"{abs(before - after):.4f}"
    return (f"warning: prune: the pruned student reads {shown(after, metric.name)} on validation against "
            f"{shown(before, metric.name)} unpruned ({lost} lost after recovery); a smaller prune.amount, more "
            "prune.finetune_epochs, or prune.control = true (a same-size student trained from scratch) would tell")
