"""The layers whose channels are a model's outputs (its heads), found on one forward pass, and the outputs of a
forward's result as a list of tensors."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from compress.errors import CompressError
from compress.prune.tracing import root_types

if TYPE_CHECKING:
    import torch
    from torch import nn


def output_tensors(out: Any) -> list["torch.Tensor"]:
    """Every output of a forward's result, in order: a tensor, a tuple or a dict of them (as the tasks name them)."""
    from compress.tasks.base import as_outputs, not_tensors, output_names_of

    wrong = not_tensors(out)
    if wrong is not None:
        raise CompressError(f"prune: the model returns {wrong}")
    return list(as_outputs(out, output_names_of(out, "output")).values())


def find_heads(model: "nn.Module", example_input: "torch.Tensor") -> tuple[str, ...]:
    """Names of the Conv/Linear layers whose outputs reach a model output with no other Conv/Linear between, in the
    order they run: the classifier head, or every head of a model with several outputs (a detector's boxes and
    scores). Never pruned: their channels are the outputs. Found on the autograd graph of one forward pass (frozen
    parameters included); a graph autograd cannot follow falls back to the last Conv/Linear run."""
    import torch

    from compress.data import forward

    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    made: dict[Any, str] = {}  # the autograd node that made a layer's output -> the layer

    def seen(module: Any, _inputs: Any, output: Any) -> None:
        order.append(names[module])
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            made[output.grad_fn] = names[module]

    handles = [m.register_forward_hook(seen) for m in names if isinstance(m, root_types())]
    was_training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]  # the graph is traced through them too
    model.eval()
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            outputs = output_tensors(forward(model, example_input))
    finally:
        for p in frozen:
            p.requires_grad_(False)
        for h in handles:
            h.remove()
        model.train(was_training)
    if not order:
        raise CompressError("prune: the model has no Conv or Linear layer to prune; remove the [prune] section")
    heads: set[str] = set()
    for tensor in outputs:
        stack, visited = [tensor.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is None or node in visited:
                continue
            visited.add(node)
            if node in made:
                heads.add(made[node])
            else:
                stack.extend(parent for parent, _ in node.next_functions)
    return tuple(dict.fromkeys(n for n in order if n in heads)) or (order[-1],)


def heads_named(heads: Sequence[str]) -> str:
    """"the head ('fc')" or "the heads ('boxes', 'scores')", for messages."""
    return f"the head{'s' if len(heads) > 1 else ''} ({', '.join(repr(h) for h in heads)})"
