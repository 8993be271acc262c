"""Pruning algorithms behind the prune stage: Torch-Pruning for the dependency graph, our checks around it.

`compress.stages.prune` owns the schedule (steps, targets, recovery); this module owns the mechanics:
building a Torch-Pruning pruner from our options, checking a pruned model by a forward pass that names the
failing layer, finding which layer cannot be pruned, unstructured magnitude masks, size counters, and
rebuilding a pruned architecture from saved tensor shapes.
"""
from __future__ import annotations

import copy
import logging
import zlib
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from compress.errors import CompressError, first_line
from compress.prune.ties import find_ties, retie
from compress.prune.heads import output_tensors
from compress.prune.tracing import (dependency_graph, leave_alone, prunable_roots, resolve_ignored, root_types, sealed,
                                    sealed_modules, way_out)

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

#: Groups `find_unprunable` prunes one at a time, at most.
_MAX_DIAGNOSED_GROUPS = 200


# ---------------------------------------------------------------- sizes

def weight_bytes(model: "nn.Module") -> int:
    """Bytes the parameters take in memory at their own dtype (fp32: 4 per parameter)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def mask_keys(keys: Iterable[str]) -> list[str]:
    """The torch.nn.utils.prune masks among state-dict `keys`: `<name>_mask` only where `<name>_orig` is there
    too (a model's own buffer that merely ends in `_mask`, such as a padding mask, is not one)."""
    keys = set(keys)
    return sorted(k for k in keys if k.endswith("_mask") and f"{k[: -len('_mask')]}_orig" in keys)


def _effective_weights(model: "nn.Module") -> Iterable["torch.Tensor"]:
    """Parameters as the forward pass sees them (masked weights while torch.nn.utils.prune is attached)."""
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            masked = name.endswith("_orig") and hasattr(module, f"{name[: -len('_orig')]}_mask")
            yield getattr(module, name[: -len("_orig")]) if masked else p


def nonzero_params(model: "nn.Module") -> int:
    """Parameters that are not exactly zero, as the forward pass sees them."""
    return sum(int((t != 0).sum()) for t in _effective_weights(model))


def zlib_bytes(model: "nn.Module") -> int:
    """Size of all weights as fp32 after zlib compression: what unstructured zeros actually save."""
    import torch

    packer = zlib.compressobj(6)
    total = 0
    for t in _effective_weights(model):
        total += len(packer.compress(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()))
    return total + len(packer.flush())


# ---------------------------------------------------------------- checked forward pass

def checked_forward(model: "nn.Module", example_input: "torch.Tensor", *,
                    expected_shapes: Sequence[Sequence[int]] | None = None,
                    when: str = "after pruning") -> tuple[tuple[int, ...], ...]:
    """Run `model` on `example_input` in eval mode; raise CompressError naming the layer where it breaks.

    Checks: the forward pass runs, every output (a tensor, a tuple or a dict of them) is finite, and (if given)
    their shapes equal `expected_shapes`. Returns the outputs' shapes, in order. Hooks track which layer was running
    and which one last finished, so a hard-coded channel count in some forward() is reported at the place it bites.
    """
    import torch

    from compress.data import forward

    names = {m: n for n, m in model.named_modules()}
    running: list[str] = []
    state: dict[str, str | None] = {"finished": None, "nonfinite": None}

    def enter(module, _inputs):
        running.append(names[module])

    def leave(module, _inputs, output):
        running.pop()
        if names[module]:  # the model itself finishes last: the layer before it is the one to name
            state["finished"] = names[module]
        if state["nonfinite"] is None and isinstance(output, torch.Tensor) and output.is_floating_point() \
                and not bool(torch.isfinite(output).all()):
            state["nonfinite"] = names[module] or type(model).__name__

    handles = [m.register_forward_pre_hook(enter) for m in names] + [m.register_forward_hook(leave) for m in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = forward(model, example_input)
    except Exception as exc:  # any failure inside user code is reported with its place
        inner = next((n for n in reversed(running) if n), None)
        place = f"layer '{inner}' ({type(model.get_submodule(inner)).__name__})" if inner \
            else f"the forward() of {type(model).__name__} itself"
        after = f", right after '{state['finished']}' ran" if state["finished"] else ""
        raise CompressError(f"prune: the model {when} fails in {place}{after}: {type(exc).__name__}: {first_line(exc)}") from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    outs = output_tensors(out)
    if state["nonfinite"] is not None or not all(bool(torch.isfinite(t).all()) for t in outs):
        raise CompressError(f"prune: the model {when} gives non-finite values (first in layer "
                            f"'{state['nonfinite'] or 'output'}'); prune less (lower prune.amount)")
    shapes = tuple(tuple(t.shape) for t in outs)
    if expected_shapes is not None and shapes != tuple(tuple(s) for s in expected_shapes):
        raise CompressError(f"prune: the model {when} outputs {_shapes(shapes)} instead of "
                            f"{_shapes(expected_shapes)} (last layer run: '{state['finished']}'); a forward() "
                            "probably hard-codes a channel count: add the layers feeding it to prune.ignore")
    return shapes


def _shapes(shapes: Sequence[Sequence[int]]) -> str:
    return f"shape {list(shapes[0])}" if len(shapes) == 1 else f"shapes {', '.join(str(list(s)) for s in shapes)}"


# ---------------------------------------------------------------- which layers to prune

def channel_count(model: "nn.Module", skip: tuple[str, ...] = ()) -> int:
    """Output channels of the Conv and Linear layers but those named in `skip` (and inside them): against the
    unpruned model's, the share pruning really removed (a layer keeps at least one channel, and round_to rounds:
    amount = 0.99 of 8 channels removes 7)."""
    from torch import nn

    return sum(m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
               for name, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
               and not any(name == s or name.startswith(f"{s}.") for s in skip))


# ---------------------------------------------------------------- channel pruning (Torch-Pruning)

def make_importance(kind: str) -> Any:
    """Torch-Pruning importance for 'l1', 'l2' or 'taylor'."""
    import torch_pruning as tp

    if kind == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.MagnitudeImportance(p=1 if kind == "l1" else 2)


def make_pruner(model: "nn.Module", example_input: "torch.Tensor", *, amount: float, steps: int,
                importance: str, ignored: Sequence[str], round_to: int | None) -> Any:
    """A Torch-Pruning BasePruner that removes `amount` of each group's channels in `steps` equal steps.

    Local ranking (each coupled group loses the same fraction), so channel counts depend only on `amount`,
    which makes targets searchable on copies. Groups tied together by residual adds, BatchNorm and depthwise
    convolutions are pruned as one by the dependency graph. Ignored modules other than Conv/Linear, and recurrent
    layers, are sealed while it traces (compress.prune.tracing).
    """
    import torch_pruning as tp

    was_training = model.training
    model.eval()  # tracing runs a forward pass; in train mode it would move BatchNorm statistics
    ignored_modules: list = []
    try:
        ignored_modules = resolve_ignored(model, ignored)
        leave = leave_alone(model, example_input, ignored_modules)
        with sealed(sealed_modules(model, ignored_modules)) as seal:
            return tp.pruner.BasePruner(
                model, example_input, importance=make_importance(importance), pruning_ratio=amount,
                iterative_steps=steps, ignored_layers=leave, round_to=round_to, global_pruning=False,
                pruning_ratio_dict=layer_floors(model, amount, leave, round_to),
                output_transform=seal.output_transform, unwrapped_parameters=seal.unwrapped,
            )
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"prune: Torch-Pruning cannot trace this model's dependency graph: "
                            f"{type(exc).__name__}: {first_line(exc)}; {way_out(model, ignored_modules)}") from exc
    finally:
        model.train(was_training)


def layer_floors(model: "nn.Module", amount: float, ignored: Sequence["nn.Module"],
                 round_to: int | None) -> dict["nn.Module", float]:
    """Smaller ratios for the layers `amount` would empty: each keeps `round_to` channels (else one).

    Torch-Pruning skips a layer whose every channel would go, so without these an amount of 0.99 on a 64-unit
    layer removes nothing there while the schedule reports 99%. A layer with no more than the floor keeps all.
    """
    from torch import nn

    floor = round_to or 1
    skip = {id(m) for top in ignored for m in top.modules()}
    ratios = {}
    for module in model.modules():
        if not isinstance(module, root_types()) or id(module) in skip:
            continue
        channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        groups = getattr(module, "groups", 1)
        if 1 < groups < channels:  # a grouped conv loses channels in every group alike
            channels //= groups
        if channels and int(channels * (1 - amount)) < floor:
            ratios[module] = max(0.0, (channels - floor) / channels - 1e-9)  # the margin defeats float rounding
    return ratios


def taylor_gradients(model: "nn.Module", batches: Sequence[tuple["torch.Tensor", "torch.Tensor"]]) -> None:
    """Accumulate cross-entropy gradients over `batches`, as the Taylor importance needs."""
    import torch.nn.functional as F

    from compress.data import forward

    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        out = forward(model, x)
        F.cross_entropy(output_tensors(out)[0], y).backward()
    model.train(was_training)


def prune_once(model: "nn.Module", example_input: "torch.Tensor", *, amount: float, ignored: Sequence[str],
               round_to: int | None) -> "nn.Module":
    """A pruned deep copy at `amount` in one step with L2 importance (channel counts equal any schedule's)."""
    probe = copy.deepcopy(model)
    step(make_pruner(probe, example_input, amount=amount, steps=1, importance="l2", ignored=ignored,
                     round_to=round_to))
    return probe


def step(pruner: Any) -> None:
    """One step of a Torch-Pruning pruner; its failures (e.g. an IndexError on a depthwise convolution with a
    channel multiplier) become a CompressError, which the schedule turns into the layer to leave alone.
    Weights tied before the step are tied after it (`ties.retie`)."""
    ties = find_ties(pruner.model)
    try:
        pruner.step()
    except Exception as exc:
        raise CompressError(f"prune: Torch-Pruning failed to remove channels: {type(exc).__name__}: "
                            f"{first_line(exc)}") from exc
    retie(pruner.model, ties)


def find_unprunable(model: "nn.Module", example_input: "torch.Tensor", *, ignored: Sequence[str],
                    expected_shapes: Sequence[Sequence[int]]) -> list[tuple[str, str]]:
    """Prune each group alone (half its channels) on a copy; return (root layer, failure) for those that break.

    Only run after a failure, to tell the user which layer to leave alone; a model Torch-Pruning cannot trace at all
    names none (the failure it had says why).
    """
    probe = copy.deepcopy(model)
    try:
        roots = prunable_roots(*dependency_graph(probe, example_input, ignored), model=probe)
    except Exception:  # the same failure as the one being diagnosed: nothing to add to it
        return []
    broken = []
    for root in roots[:_MAX_DIAGNOSED_GROUPS]:
        probe = copy.deepcopy(model)
        try:
            graph, _ = dependency_graph(probe, example_input, ignored)
            layer = probe.get_submodule(root)
            pruner = graph.get_pruner_of_module(layer)
            channels = pruner.get_out_channels(layer)
        except Exception:
            continue
        if not channels or channels < 2:
            continue
        ties = find_ties(probe)
        try:
            graph.get_pruning_group(layer, pruner.prune_out_channels, list(range(channels // 2))).prune()
            retie(probe, ties)
            checked_forward(probe, example_input, expected_shapes=expected_shapes)
        except Exception as exc:  # both Torch-Pruning failures and our checks count as "cannot prune"
            broken.append((root, str(exc).removeprefix("prune: ")))
    return broken


# ---------------------------------------------------------------- unstructured magnitude pruning

def magnitude_targets(model: "nn.Module", ignored: Sequence[str]) -> list["nn.Module"]:
    """Conv/Linear layers that magnitude pruning masks: all but the ignored ones (and their children)."""
    skip = {id(m) for top in resolve_ignored(model, ignored) for m in top.modules()}
    return [m for m in model.modules() if isinstance(m, root_types()) and id(m) not in skip]


def magnitude_step(layers: Sequence["nn.Module"], fraction_of_remaining: float) -> None:
    """Mask the smallest-|w| `fraction_of_remaining` of each layer's still-unmasked weights (L1 unstructured)."""
    from torch.nn.utils import prune as tprune

    for layer in layers:
        tprune.l1_unstructured(layer, "weight", amount=fraction_of_remaining)


def magnitude_finalize(layers: Sequence["nn.Module"]) -> None:
    """Make the masks permanent: plain `weight` parameters with zeros, no hooks left (exportable, savable)."""
    from torch.nn.utils import prune as tprune

    for layer in layers:
        if tprune.is_pruned(layer):
            tprune.remove(layer, "weight")


# ---------------------------------------------------------------- rebuild a pruned architecture

def shrink_to(model: "nn.Module", state: dict[str, "torch.Tensor"]) -> "nn.Module":
    """Resize `model`'s tensors (and the layers' size attributes) in place to the shapes in `state`.

    The inverse of channel pruning for loading: the unpruned architecture comes from the user's factory,
    the shapes from the saved file. Knows Conv, Linear, BatchNorm, LayerNorm, GroupNorm, PReLU, Embedding;
    other modules get their tensors resized and must read sizes from their tensors. A tensor that several modules
    share (tied weights) is replaced by one new tensor that they share.
    """
    import torch
    from torch import nn

    resized: dict[int, tuple["torch.Tensor", "torch.Tensor"]] = {}  # id(old) -> (old, new); old kept alive
    for prefix, module in model.named_modules():
        key = f"{prefix}." if prefix else ""
        changed = False
        for table in (module._parameters, module._buffers):
            for name, tensor in list(table.items()):
                saved = state.get(key + name)
                if tensor is None or saved is None or saved.shape == tensor.shape:
                    continue
                new = resized.get(id(tensor), (None, None))[1]
                if new is None or new.shape != saved.shape:
                    empty = torch.empty(saved.shape, dtype=tensor.dtype)
                    new = nn.Parameter(empty, requires_grad=tensor.requires_grad) \
                        if isinstance(tensor, nn.Parameter) else empty
                    resized[id(tensor)] = (tensor, new)
                table[name] = new
                changed = True
        if changed:
            _fix_size_attributes(module)
    return model


def _fix_size_attributes(module: "nn.Module") -> None:
    from torch import nn

    if isinstance(module, nn.modules.conv._ConvNd):
        w = module.weight
        out = w.shape[1] * module.groups if module.transposed else w.shape[0]
        if module.groups > 1 and module.groups == module.in_channels:  # depthwise: groups follow the channels
            module.groups = out * module.groups // module.out_channels
        module.in_channels = w.shape[0] if module.transposed else w.shape[1] * module.groups
        module.out_channels = out
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = (module.weight if module.weight is not None else module.running_mean).shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = module.weight.shape[0]
    elif isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.shape[0]
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape
