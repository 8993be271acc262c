"""Pruning's schedule: remove channels for real (smaller tensors, faster on ONNX Runtime) in steps, recovering
after each by the caller's training; or, for size under compression only, zero weights by magnitude.

`prune(model, cfg, ...)` is the plain function; the prune stage supplies the recovery (`finetune`, distillation with
the distill stage's loss), the metric (`evaluate`) and, for latency targets, the ORT measurement (`latency_ms`).
Torch-Pruning builds the dependency graph (BatchNorm, depthwise groups, residual adds, the next layer's inputs);
this module owns the schedule, the targets, the verification and the measurements; `mechanics`
owns the Torch-Pruning calls.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from typing import TYPE_CHECKING, Callable, Iterable, Literal

from pydantic import Field, model_validator

from compress.prune import mechanics as pruning
from compress.prune.heads import find_heads, heads_named
from compress.errors import CompressError
from compress.models import count_params
from compress.section import Section

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

#: What the report says about method = "magnitude"; the runner puts it next to the pruned model.
MAGNITUDE_NOTE = ("magnitude pruning only zeroes weights: the tensors keep their shapes, so ONNX Runtime runs "
                  "no faster and the .onnx file is no smaller; it is smaller only when compressed (zlib_bytes)")

#: How much further a latency target pushes `amount` when the measured model still misses it.
_LATENCY_RETRY_AMOUNT = 0.05
#: Bisection rounds for target_params / target_latency_ms (resolution max_amount / 2**rounds).
_SEARCH_ROUNDS = 7


class PruneConfig(Section):
    """The `[prune]` section: how much to remove, how gradually, and how to rank what goes.

    Set exactly one of `amount`, `target_params` or `target_latency_ms`.
    """

    method: Literal["channel", "magnitude"] = Field(
        "channel", description="'channel' removes output channels / hidden units and everything that depends on "
        "them (smaller tensors, real speed-up); 'magnitude' zeroes the smallest weights (no speed-up on ORT, "
        "smaller only when compressed).")
    amount: float | None = Field(
        None, gt=0, lt=1, description="Fraction of each layer's channels to remove (magnitude: of its weights).")
    target_params: int | None = Field(
        None, gt=0, description="Prune until the model has at most this many parameters (channel only).")
    target_latency_ms: float | None = Field(
        None, gt=0, description="Prune until ORT p50 latency at batch `latency_batch`, 1 thread, is at most "
        "this (channel only).")
    latency_batch: int = Field(32, gt=0, description="Batch size at which latency is measured for the report "
                               "and for `target_latency_ms`.")
    steps: int = Field(3, ge=1, description="Gradual pruning: the amount is reached in this many equal steps, "
                       "each followed by `finetune_epochs` of distillation.")
    finetune_epochs: int = Field(10, ge=0, description="Epochs of distillation from the teacher after each step "
                                 "(the distill loss); 0 skips recovery. 10 x 3 steps let the pruned digits student "
                                 "match or beat a same-size student distilled from scratch for as many epochs.")
    ignore: tuple[str, ...] = Field(
        (), description="Module names (as in model.named_modules()) to leave unpruned: a Conv or Linear layer keeps "
        "its output channels (its inputs may shrink); any other module is left whole, with the channels it reads "
        "and writes. The output layers are always left alone (the classifier head; each head of a model with several "
        "outputs), and so are recurrent layers (RNN, GRU, LSTM), which "
        "Torch-Pruning has no rule for.")
    importance: Literal["l1", "l2", "taylor"] | None = Field(
        None, description="How channels are ranked: 'taylor', the first-order Taylor estimate of the loss change "
        "(|weight x gradient| on labelled training batches: it keeps the channels the loss needs, where the norm "
        "keeps the large ones; the default for the classification task), or 'l1' / 'l2', the norm of their weights "
        "(no data needed; 'l2' is the default for the other tasks, which have no classification loss to take the "
        "gradient of).")
    round_to: int | None = Field(
        None, gt=0, description="Keep channel counts multiples of this (e.g. 8 or 16 for SIMD-friendly "
        "widths); None keeps exact counts.")
    max_amount: float = Field(
        0.9, gt=0, lt=1, description="The largest fraction of channels a target search may remove from a layer.")
    control: bool = Field(
        False, description="Also train the pruned architecture from scratch (re-initialised, distilled from the "
        "teacher with the [distill] settings for the same total epochs and seed) as model 'pruned-control', "
        "so the report shows whether pruning beat simply training a model of that size; when the control is better "
        "on validation it ships instead. With method = 'magnitude' the control keeps the pruned model's zeros (the "
        "same mask on new weights), so it is as sparse.")

    def ranking(self, task: str = "classification") -> Literal["l1", "l2", "taylor"]:
        """The importance that ranks channels: the file's, else the task's default ('taylor' needs the gradient of
        a classification loss, so the other tasks rank by 'l2')."""
        return self.importance or ("taylor" if task == "classification" else "l2")

    @model_validator(mode="after")
    def _one_goal(self) -> "PruneConfig":
        goals = [k for k in ("amount", "target_params", "target_latency_ms") if getattr(self, k) is not None]
        if len(goals) != 1:
            raise ValueError(f"set exactly one of amount, target_params or target_latency_ms, got "
                             f"{', '.join(goals) if goals else 'none'}; e.g. amount = 0.5")
        if self.method == "magnitude" and goals[0] != "amount":
            raise ValueError(f"method = 'magnitude' keeps every tensor's shape, so {goals[0]} cannot be met; "
                             "use amount, or method = 'channel'")
        return self


def _measure(model: "nn.Module", cfg: PruneConfig, *, step: int, amount: float, accuracy_before: float,
             accuracy: float, latency_ms: Callable[["nn.Module"], float] | None, skip: tuple[str, ...] = ()) -> dict:
    """One step's row; `channels`: output channels of the layers pruning may narrow (`skip`: the ignored and the
    heads, whose channels stay)."""
    row = {"step": step, "amount": round(amount, 6), "params": count_params(model),
           "bytes": pruning.weight_bytes(model), "accuracy_before_finetune": accuracy_before, "accuracy": accuracy,
           "channels": pruning.channel_count(model, skip)}
    if cfg.method == "magnitude":
        row["nonzero_params"] = pruning.nonzero_params(model)
        row["zlib_bytes"] = pruning.zlib_bytes(model)
    if latency_ms is not None:
        model.eval()
        row["latency_ms"] = float(latency_ms(model))
    return row


def _recover(model: "nn.Module", cfg: PruneConfig, finetune: Callable[["nn.Module", int], None],
             evaluate: Callable[["nn.Module"], float]) -> tuple[float, float]:
    """Accuracy right after pruning, then after `finetune_epochs` of distillation."""
    model.eval()
    before = float(evaluate(model))
    if cfg.finetune_epochs == 0:
        return before, before
    finetune(model, cfg.finetune_epochs)
    model.eval()
    return before, float(evaluate(model))


def _target(cfg: PruneConfig, model: "nn.Module", latency_ms) -> tuple[str, float, float] | None:
    """(config key, measured value, limit) for the configured target, or None when pruning by amount."""
    if cfg.target_params is not None:
        return "target_params", float(count_params(model)), float(cfg.target_params)
    if cfg.target_latency_ms is not None:
        model.eval()
        return "target_latency_ms", float(latency_ms(model)), cfg.target_latency_ms
    return None


def _search_amount(model: "nn.Module", cfg: PruneConfig, example_input, ignored: tuple[str, ...],
                   latency_ms) -> float:
    """Smallest amount whose pruned copy meets the target (bisection; channel counts are monotone in it)."""
    key, value, limit = _target(cfg, model, latency_ms)
    if value <= limit:
        log.info("prune: the unpruned model already meets %s (%g <= %g)", key, value, limit)
        return 0.0

    def meets(amount: float) -> tuple[bool, float]:
        _, got, _ = _target(cfg, pruning.prune_once(model, example_input, amount=amount, ignored=ignored,
                                                    round_to=cfg.round_to), latency_ms)
        return got <= limit, got

    ok, got = meets(cfg.max_amount)
    if not ok:
        raise CompressError(f"prune.{key}: {limit:g} cannot be reached: removing max_amount = {cfg.max_amount} "
                            f"of the channels still gives {got:g} (unpruned: {value:g}); raise the target (an upper "
                            "limit), raise prune.max_amount, or start from a smaller student")
    lo, hi = 0.0, cfg.max_amount
    for _ in range(_SEARCH_ROUNDS):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if meets(mid)[0] else (mid, hi)
    log.info("prune: %s = %g needs amount = %.3f", key, limit, hi)
    return hi


def _dry_run(model: "nn.Module", example_input, *, amount: float, ignored: tuple[str, ...],
             round_to: int | None, expected_shapes: tuple[tuple[int, ...], ...], key: str) -> None:
    """Prune a copy at the full amount and check it, so an unprunable model (or an amount that removes nothing)
    fails before any training; `key` is the config key that set the amount, for the message."""
    with _naming_unprunable(model, example_input, ignored, expected_shapes):
        probe = pruning.prune_once(model, example_input, amount=amount, ignored=ignored, round_to=round_to)
        pruning.checked_forward(probe, example_input, expected_shapes=expected_shapes)
    if count_params(probe) == count_params(model):
        _check_something_to_prune(model, example_input, ignored)
        floor = f"round_to = {round_to}" if round_to else "one"
        raise CompressError(f"prune.{key}: removing {amount:.3g} of the channels removes nothing from this model: "
                            f"every layer keeps at least {floor} channel(s) and none has more; lower "
                            "prune.round_to or prune a wider student")


def _check_something_to_prune(model: "nn.Module", example_input, ignored: tuple[str, ...]) -> None:
    """Some group is left to prune; `ignored` is prune.ignore, then the heads."""
    from compress.prune.tracing import dependency_graph, prunable_roots, recurrent_layers

    probe = copy.deepcopy(model)
    if prunable_roots(*dependency_graph(probe, example_input, ignored), model=probe):
        return
    heads = find_heads(model, example_input)
    mine, head = [n for n in ignored if n not in heads], heads_named(heads)
    recurrent = [f"'{n}' ({type(m).__name__})" for n, m in recurrent_layers(model) if n not in mine]
    if mine:
        left = ", ".join([repr(n) for n in mine] + recurrent)
        raise CompressError(f"prune.ignore: no layer is left to prune: besides {head}, every Conv or "
                            f"Linear layer is ignored or feeds a module left as it is ({left}), which reads its "
                            "channels as they are; ignore fewer modules, prune a student with more layers, or remove "
                            "[prune]")
    if recurrent:
        raise CompressError(f"prune: no layer is left to prune: besides {head}, every Conv or Linear "
                            f"layer feeds a recurrent layer ({', '.join(recurrent)}), which Torch-Pruning has no rule "
                            "for, so it and the channels it reads stay as they are; prune a student with more layers, "
                            "or remove [prune]")
    raise CompressError(f"prune: no layer can be pruned: every Conv or Linear layer's channels are tied to the "
                        f"outputs of {head}, which stay; remove [prune]")


@contextlib.contextmanager
def _naming_unprunable(model: "nn.Module", example_input, ignored: tuple[str, ...],
                       expected_shapes: tuple[tuple[int, ...], ...]):
    """Turn a failure of pruning a copy (ours or Torch-Pruning's) into the layers to leave alone, when a
    one-group-at-a-time diagnosis finds them."""
    try:
        yield
    except CompressError as exc:
        broken = pruning.find_unprunable(model, example_input, ignored=ignored, expected_shapes=expected_shapes)
        if not broken:
            raise
        layers = ", ".join(f"'{name}'" for name, _ in broken)
        raise CompressError(f"prune: cannot remove channels of layer {layers} safely ({broken[0][1]}); "
                            f"add it to prune.ignore (ignore = [{layers}]) or use method = 'magnitude'") from exc


def check_prunable(model: "nn.Module", cfg: PruneConfig, example_input: "torch.Tensor") -> None:
    """What `prune` would refuse, found on the architecture alone before any training (`compress validate`, and
    `compress run` before its first stage): outputs it cannot check, an unknown name in ignore, a model
    Torch-Pruning cannot trace or a layer it cannot prune safely at the full amount (`max_amount` for a target),
    an amount that removes nothing."""
    model = copy.deepcopy(model)
    expected = pruning.checked_forward(model, example_input, when="before pruning")
    ignored = (*cfg.ignore, *find_heads(model, example_input))
    pruning.resolve_ignored(model, ignored)
    if cfg.method == "magnitude":
        return
    if cfg.amount is not None:
        _dry_run(model, example_input, amount=cfg.amount, ignored=ignored, round_to=cfg.round_to,
                 expected_shapes=expected, key="amount")
        return
    with _naming_unprunable(model, example_input, ignored, expected):  # a target's amount is found after training
        probe = pruning.prune_once(model, example_input, amount=cfg.max_amount, ignored=ignored, round_to=cfg.round_to)
        pruning.checked_forward(probe, example_input, expected_shapes=expected)


def prune(model: "nn.Module", cfg: PruneConfig, *, example_input: "torch.Tensor",
          finetune: Callable[["nn.Module", int], None], evaluate: Callable[["nn.Module"], float],
          latency_ms: Callable[["nn.Module"], float] | None = None,
          taylor_batches: Iterable[tuple["torch.Tensor", "torch.Tensor"]] | None = None,
          progress: bool = True) -> tuple["nn.Module", list[dict]]:
    """Prune a copy of `model` as `cfg` says, recovering after each step; the input model is never changed.

    Args:
        model: the trained student (any nn.Module: CNNs, BatchNorm, depthwise residual blocks, MLPs).
        cfg: the `[prune]` section; without an importance, channels are ranked by 'taylor' (the classification
            default: the caller resolves another task's with `cfg.ranking(task)`).
        example_input: a real input batch (batch >= 2 is best), for graph tracing and the forward checks.
        finetune: `finetune(model, epochs)` trains in place: distillation from the teacher, the distill loss.
        evaluate: `evaluate(model) -> accuracy` on validation data.
        latency_ms: `latency_ms(model) -> ORT p50 in ms` at batch `cfg.latency_batch`, 1 thread; needed for
            `target_latency_ms`, and recorded per step whenever given.
        taylor_batches: labelled batches for `importance = "taylor"` (gradients are taken before each step).
        progress: show a progress bar over the steps.

    Returns:
        The pruned model (smaller tensors for 'channel'; zeros for 'magnitude', masks made permanent) and one
        dict per step, step 0 being the unpruned model: step, amount (cumulative fraction removed), params,
        bytes (weight bytes at fp32), accuracy_before_finetune, accuracy, latency_ms (when `latency_ms` is
        given), and for 'magnitude' nonzero_params and zlib_bytes.

    Raises:
        CompressError: a layer cannot be pruned safely (the message names it), an unknown name in `ignore`,
            an unreachable target, or a missing callback the configuration needs.
    """
    from compress.progress import progress as progress_bar

    if cfg.importance is None:
        cfg = cfg.model_copy(update={"importance": cfg.ranking()})
    batches = _callbacks_needed(cfg, taylor_batches, latency_ms)
    model = copy.deepcopy(model)
    expected = pruning.checked_forward(model, example_input, when="before pruning")
    ignored = (*cfg.ignore, *find_heads(model, example_input))
    pruning.resolve_ignored(model, ignored)  # unknown names fail now, before any work
    model.eval()
    accuracy = float(evaluate(model))
    history = [_measure(model, cfg, step=0, amount=0.0, accuracy_before=accuracy, accuracy=accuracy,
                        latency_ms=latency_ms, skip=ignored)]

    if cfg.method == "magnitude":
        return _prune_magnitude(model, cfg, ignored, finetune, evaluate, latency_ms, history, progress)

    with _naming_unprunable(model, example_input, ignored, expected):
        amount = cfg.amount if cfg.amount is not None else _search_amount(model, cfg, example_input, ignored,
                                                                          latency_ms)
    if amount == 0.0:
        return model, history
    key = next(k for k in ("amount", "target_params", "target_latency_ms") if getattr(cfg, k) is not None)
    _dry_run(model, example_input, amount=amount, ignored=ignored, round_to=cfg.round_to, expected_shapes=expected,
             key=key)

    pruner = pruning.make_pruner(model, example_input, amount=amount, steps=cfg.steps, importance=cfg.importance,
                                 ignored=ignored, round_to=cfg.round_to)
    for step in progress_bar(range(1, cfg.steps + 1), desc="prune", unit="step", enabled=progress):
        # a step may remove nothing on narrow layers (rounding down); the dry run checked the whole amount does
        done = amount * step / cfg.steps
        _channel_step(model, pruner, batches, example_input, expected)
        before, after = _recover(model, cfg, finetune, evaluate)
        history.append(_measure(model, cfg, step=step, amount=done, accuracy_before=before, accuracy=after,
                                latency_ms=latency_ms, skip=ignored))

    if cfg.target_latency_ms is not None:
        _meet_latency(model, cfg, amount, history, example_input=example_input, ignored=ignored, batches=batches,
                      expected=expected, finetune=finetune, evaluate=evaluate, latency_ms=latency_ms)
    return model.eval(), history


def _meet_latency(model, cfg: PruneConfig, amount: float, history: list[dict], *, example_input, ignored, batches,
                  expected, finetune, evaluate, latency_ms) -> None:
    """A latency target was searched on copies; if noise leaves the real model short, push a little further."""
    while history[-1]["latency_ms"] > cfg.target_latency_ms and amount < cfg.max_amount:
        more = min(cfg.max_amount, amount + _LATENCY_RETRY_AMOUNT)
        relative = 1 - (1 - more) / (1 - amount)
        extra = pruning.make_pruner(model, example_input, amount=relative, steps=1, importance=cfg.importance,
                                    ignored=ignored, round_to=cfg.round_to)
        _channel_step(model, extra, batches, example_input, expected)
        amount = more
        before, after = _recover(model, cfg, finetune, evaluate)
        history.append(_measure(model, cfg, step=len(history), amount=amount, accuracy_before=before,
                                accuracy=after, latency_ms=latency_ms, skip=ignored))
    if history[-1]["latency_ms"] > cfg.target_latency_ms:
        log.warning("prune: target_latency_ms = %g not met at max_amount (measured %.3f ms)",
                    cfg.target_latency_ms, history[-1]["latency_ms"])


def _callbacks_needed(cfg: PruneConfig, taylor_batches, latency_ms) -> list:
    """Fail before any work when the configuration needs a callback that was not given; the Taylor batches."""
    batches = list(taylor_batches or []) if cfg.importance == "taylor" and cfg.method == "channel" else []
    if cfg.importance == "taylor" and cfg.method == "channel" and not batches:
        raise CompressError("prune.importance: 'taylor' needs labelled batches (taylor_batches); "
                            "use 'l2' or pass the training data")
    if cfg.target_latency_ms is not None and latency_ms is None:
        raise CompressError("prune.target_latency_ms: needs a latency measurement (latency_ms callback)")
    return batches


def _channel_step(model, pruner, batches, example_input, expected) -> None:
    if batches:
        pruning.taylor_gradients(model, batches)
    pruning.step(pruner)
    model.zero_grad(set_to_none=True)
    pruning.checked_forward(model, example_input, expected_shapes=expected)


def _prune_magnitude(model, cfg: PruneConfig, ignored, finetune, evaluate, latency_ms, history, progress):
    from compress.progress import progress as progress_bar

    layers = pruning.magnitude_targets(model, ignored)
    done = 0.0
    for step in progress_bar(range(1, cfg.steps + 1), desc="prune", unit="step", enabled=progress):
        goal = cfg.amount * step / cfg.steps
        # torch.nn.utils.prune stacks masks: each new amount is a fraction of the weights still unmasked.
        pruning.magnitude_step(layers, 1 - (1 - goal) / (1 - done))
        done = goal
        before, after = _recover(model, cfg, finetune, evaluate)
        history.append(_measure(model, cfg, step=step, amount=done, accuracy_before=before, accuracy=after,
                                latency_ms=latency_ms, skip=ignored))
    pruning.magnitude_finalize(layers)
    return model.eval(), history
