"""What Torch-Pruning traces: the layers that root its groups, the modules it must not enter, and the modules it has
no rule for.

An ignored Conv or Linear keeps its output channels while its inputs may shrink with the layer feeding it (the
output heads are). Any other ignored module (a block of the user's own), and every recurrent layer (RNN, GRU,
LSTM: Torch-Pruning cannot follow their gates), is sealed while the dependency graph is traced: it runs without
autograd and hands back fresh tensors, so the trace neither enters it nor passes through it, and what it reads is
traced as an extra output of the model; the layers whose output channels it reads keep them. So a sealed module's
weights, and the channels it reads and writes, stay as they are, and the layers around it still prune.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch
    from torch import nn


def root_types() -> tuple[type, ...]:
    """Layer kinds whose output channels / hidden units can be removed (the roots of Torch-Pruning's groups)."""
    from torch import nn

    return (nn.modules.conv._ConvNd, nn.Linear)


def resolve_ignored(model: "nn.Module", names: Iterable[str]) -> list["nn.Module"]:
    """Modules for the names in prune.ignore (plus the heads); an unknown name is a CompressError."""
    modules = dict(model.named_modules())
    out = []
    for name in names:
        if name not in modules:
            known = ", ".join(repr(n) for n in list(modules)[1:12])
            raise CompressError(f"prune.ignore: no module named '{name}' in the model; "
                                f"use names from model.named_modules(), e.g. {known}")
        out.append(modules[name])
    return out


def recurrent_layers(model: "nn.Module") -> list[tuple[str, "nn.Module"]]:
    """(name, module) of the RNN, GRU and LSTM layers: Torch-Pruning cannot follow their gates (tracing a GRU fails,
    or runs for minutes), so they are always sealed, as if ignored."""
    from torch import nn

    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.RNNBase)]


def sealed_modules(model: "nn.Module", ignored: Sequence["nn.Module"]) -> list["nn.Module"]:
    """The modules the trace must not enter: the ignored ones other than Conv and Linear layers, and every recurrent
    layer."""
    chosen = [m for m in ignored if not isinstance(m, root_types())]
    inside = {id(sub) for m in chosen for sub in m.modules()}
    return chosen + [m for _, m in recurrent_layers(model) if id(m) not in inside]


def foreign_modules(model: "nn.Module", skip: Sequence["nn.Module"] = ()) -> list[tuple[str, "nn.Module"]]:
    """(name, module) of the modules holding parameters Torch-Pruning has no rule for (a GRU, an RNN, a layer with an
    nn.Parameter of its own), outside `skip` and their children: it guesses an axis to cut them along, or fails."""
    import torch_pruning as tp

    inside = {id(m) for top in skip for m in top.modules()}
    return [(name, m) for name, m in model.named_modules()
            if name and id(m) not in inside and next(m.parameters(recurse=False), None) is not None
            and tp.ops.module2type(m) == tp.ops.OPTYPE.ELEMENTWISE]


def way_out(model: "nn.Module", ignored: Sequence["nn.Module"]) -> str:
    """What to do when tracing fails: leave alone the modules Torch-Pruning has no rule for, when there are any."""
    foreign = foreign_modules(model, skip=sealed_modules(model, ignored))
    if not foreign:
        return "use method = 'magnitude' or simplify the forward()"
    names = [name for name, _ in foreign]
    kinds = ", ".join(f"'{name}' ({type(m).__name__})" for name, m in foreign[:4])
    it = "it" if len(names) == 1 else "them"
    return (f"it has no rule for {kinds}: add {it} to prune.ignore (ignore = {names}) so pruning leaves {it} and "
            f"the channels around {it} alone, or use method = 'magnitude'")


@dataclass
class Seal:
    """What a sealed trace needs beside the model: for Torch-Pruning's build, the sealed modules' parameters (as
    `unwrapped_parameters`, never traced, so not warned about) and `output_transform`, which adds the tensors the
    sealed modules read (`inputs`) to the model's outputs."""

    unwrapped: list
    inputs: list = field(default_factory=list)

    def output_transform(self, out: Any) -> list:
        return [out, *self.inputs]


@contextlib.contextmanager
def sealed(modules: Sequence["nn.Module"]) -> Iterator[Seal]:
    """While the block runs, each of `modules` runs without autograd and returns fresh leaf tensors; the tensors it
    is given are kept in the Seal. Torch-Pruning's warning about parameters it has no rule for is left out: a
    failure names those modules itself (with the ignore that seals them), and a wrong guess fails the forward check
    after pruning, which names the layer."""
    import warnings

    import torch

    params = {id(p): p for m in modules for p in m.parameters()}
    seal = Seal(unwrapped=[(p, 0) for p in params.values()])

    def wrap(inner: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            seal.inputs.extend(t for t in (*args, *kwargs.values())
                               if isinstance(t, torch.Tensor) and t.grad_fn is not None)
            with torch.no_grad():
                return _fresh(inner(*args, **kwargs))
        return forward

    missing = object()
    saved = [(m, m.__dict__.get("forward", missing)) for m in modules]
    for m in modules:
        m.forward = wrap(m.forward)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            yield seal
    finally:
        for m, before in saved:
            del m.forward
            if before is not missing:
                m.forward = before


def _fresh(out: Any) -> Any:
    """`out` with every tensor a new leaf (requiring grad when it is floating point, as the traced code expects)."""
    import torch

    if isinstance(out, torch.Tensor):
        leaf = out.detach().clone()
        return leaf.requires_grad_() if leaf.is_floating_point() else leaf
    if isinstance(out, dict):
        return {k: _fresh(v) for k, v in out.items()}
    if isinstance(out, tuple):
        items = [_fresh(v) for v in out]
        return type(out)(*items) if hasattr(out, "_fields") else tuple(items)
    if isinstance(out, list):
        return [_fresh(v) for v in out]
    return out


def _build(model: "nn.Module", example_input: "torch.Tensor", seal_these: Sequence["nn.Module"]) -> tuple[Any, Seal]:
    import torch_pruning as tp

    model.eval()
    with sealed(seal_these) as seal:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input,
                                                      output_transform=seal.output_transform,
                                                      unwrapped_parameters=seal.unwrapped)
    return graph, seal


def leave_alone(model: "nn.Module", example_input: "torch.Tensor", ignored: Sequence["nn.Module"]) -> list:
    """`ignored`, plus the Conv and Linear layers whose output channels a sealed module reads: pruning keeps them."""
    seal_these = sealed_modules(model, ignored)
    if not seal_these:
        return list(ignored)
    return _kept(*_build(model, example_input, seal_these), ignored)


def _kept(graph: Any, seal: Seal, ignored: Sequence["nn.Module"]) -> list:
    """leave_alone's answer from a graph traced with its modules sealed (`seal`: the tensors they read)."""
    if not seal.inputs:
        return list(ignored)
    marks = {t.grad_fn for t in seal.inputs}
    reads = {node for node in graph.module2node.values() if node.grad_fn in marks}
    groups = graph.get_all_groups(ignored_layers=list(ignored), root_module_types=root_types())
    return [*ignored, *(g[0].dep.target.module for g in groups if any(dep.target in reads for dep, _ in g))]


def dependency_graph(model: "nn.Module", example_input: "torch.Tensor", ignored: Sequence[str]) -> tuple[Any, list]:
    """Torch-Pruning's dependency graph of `model` (eval mode) traced as the pruner traces it, and the modules its
    groups must leave alone (`leave_alone`, read from the same trace)."""
    ignored_modules = resolve_ignored(model, ignored)
    graph, seal = _build(model, example_input, sealed_modules(model, ignored_modules))
    return graph, _kept(graph, seal, ignored_modules)


def prunable_roots(graph: Any, leave: Sequence["nn.Module"], *, model: "nn.Module") -> list[str]:
    """Names of the layers that root a group Torch-Pruning would prune, none of it in `leave`."""
    names = {m: n for n, m in model.named_modules()}
    groups = graph.get_all_groups(ignored_layers=list(leave), root_module_types=root_types())
    return [names[g[0].dep.target.module] for g in groups]
