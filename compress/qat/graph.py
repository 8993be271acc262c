"""The QDQ graph ONNX Runtime runs, run in torch with fake quantization: the fake-quant model of quantization-aware
training, for every family and task, because it is the quantized graph itself, not a second description of it.

`QDQModule(model)` gives each node of a QDQ ONNX graph its torch op (compress.qat.ops), and:
- a weight's DequantizeLinear (an 8- or 16-bit integer initializer) becomes a float Parameter, fake-quantized on every
  forward with the rule ONNX Runtime quantized it by (per channel along the node's axis or per tensor; symmetric when
  its zero point is the middle of the type's range, ORT's compute_scale_zp), so the trained weights quantize to
  exactly what the forward saw;
- a bias's DequantizeLinear (int32) a float Parameter, fake-quantized at input scale x weight scale, as ORT does;
- an activation's QuantizeLinear a fake quantizer whose scale is learned (LSQ: the gradient of round(x/s) - x/s), as a
  log factor on the calibrated scale; its zero point stays the calibrated one;
- every other float initializer (LayerNorm's gamma, a constant operand) a Parameter; integer ones are buffers.
Rounding is half to even, as QuantizeLinear (torch's fused fake-quant kernels for weights and activations,
torch.round for biases); gradients pass straight through it.

`export(path)` writes the trained values back into a copy of the same graph (integer weights and their scales,
int32 biases, learned activation scales, float parameters): the exported model is the graph the module ran.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.errors import CompressError
from compress.onnx.graph import readers
from compress.qat.ops import HANDLED, OPS, attrs_of, broadcast_to_axis, constant_value, no_counterpart, split
from compress.qat.ort_kernels import (fused_ops, qlinear_add, qlinear_average_pool, qlinear_matmul, qparams,
                                      weight_qparams, weight_scale64)

_MIDDLE = {np.dtype(np.int8): 0, np.dtype(np.uint8): 128, np.dtype(np.int16): 0, np.dtype(np.uint16): 32768}


@dataclass(frozen=True)
class Weight:
    """An integer weight initializer behind a DequantizeLinear: its Parameter, how ORT derives its scale."""

    param: str
    q: str
    scale: str
    zero: str | None
    axis: int | None
    dtype: Any
    qmin: int
    qmax: int
    symmetric: bool
    tied: str | None = None
    """The activation quantizer (its scale initializer) whose scale and zero point the weight's DequantizeLinear
    reads too: an embedding table that ORT quantizes as the Gather's activation (DQ -> Gather -> Q with one scale, so
    ORT gathers the uint8 rows as they are). Its range is then the activation's, learned, never its own min-max."""
    ratio: Any = None
    """The graph's scale over the one min-max gives on the dequantized weight (per channel), where they differ: a
    symmetric uint8 weight's codes reach 128 below the zero point but ORT's range is 127.5 steps, so the scale
    would grow by 256/255 on an untrained export. None where they agree."""


@dataclass(frozen=True)
class Bias:
    """An int32 bias initializer: quantized at scale = the consumer's input scale x its weight scale."""

    param: str
    q: str
    scale: str
    act: str | None
    """The activation quantizer (its QuantizeLinear scale initializer) of the consumer's input."""
    weight: Weight | None
    """The consumer's weight."""


@dataclass(frozen=True)
class Act:
    """An activation quantizer: one learned log-scale per QuantizeLinear scale initializer."""

    param: str
    zero: str
    qmin: int
    qmax: int
    fixed: bool = False
    """A Softmax output's: its range is [0, 1] by construction, and its scale is one ORT CPU's fused kernel reads as
    written (compress.quantize.qdq.pinned_softmax_scales); a learned one drifted to where it reads 1/254."""


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Dequantize(Quantize(x)): saturate(round(x / scale) + zero), back to float; the gradient passes through the
    rounding (to x inside the range, to scale as LSQ's round(x/s) - x/s)."""
    v = torch.clamp(x / scale, -2.0 ** 30, 2.0 ** 30)  # -inf (an attention mask's fill) saturates as in ORT
    v = v + (torch.round(v) - v).detach()
    return (torch.clamp(v + zero, qmin, qmax) - zero) * scale


def _range(dtype: Any, symmetric: bool) -> tuple[int, int]:
    info = np.iinfo(dtype)
    if symmetric and info.min < 0:
        return int(-info.max), int(info.max)
    return int(info.min), int(info.max)


class QDQModule(torch.nn.Module):
    """A QDQ ONNX graph as a trainable torch module with fake quantization (see the module docstring)."""

    ddp_find_unused_parameters = True
    """A float constant may feed only shape arithmetic (no gradient): DDP must not wait for it."""

    def __init__(self, model: Any, origin: str = "quantize") -> None:
        from onnx import numpy_helper

        super().__init__()
        self.proto = model
        graph = model.graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in inits]
        self.outputs = [o.name for o in graph.output]
        producer = {o: n for n in graph.node for o in n.output}
        consumers = readers(graph)
        unknown = [(n.name, n.op_type) for n in graph.node if n.op_type not in HANDLED]
        if unknown:
            raise CompressError(no_counterpart(origin, unknown))
        self.weights: dict[str, Weight] = {}
        self.biases: dict[str, Bias] = {}
        self.acts: dict[str, Act] = {}
        self.dq_act: dict[str, str] = {}  # DequantizeLinear output -> its QuantizeLinear's scale initializer
        self.dq_scales: dict[str, list[str]] = {}  # activation scale initializer -> DQ scale initializers to write
        self.params = torch.nn.ParameterDict()
        self.freeze_at: int | None = None
        """After this many epochs the activation ranges stop learning (`epoch_end`); None: never."""
        self.register_buffer("frozen", torch.tensor(0))
        self._tensors: dict[str, str] = {}  # initializer or Constant output -> parameter or buffer name
        self._taken: set[str] = set()  # initializers that a quantizer, weight or bias owns
        self._inits = inits
        self._quantizers(graph, producer)
        self._dequantizers(graph, producer, consumers)
        self._constants(graph)
        self._steps = [(n.op_type, list(n.input), list(n.output), attrs_of(n), n.name)
                       for n in graph.node if n.op_type != "Constant"]
        self._fused = fused_ops(graph, producer, consumers)  # computed as ORT's kernels do (ort_kernels.py)
        self._pools = {outs[0]: attrs for op, _, outs, attrs, _ in self._steps if op == "AveragePool"}
        last = {}  # each value is dropped after its last reader: a MiniLM graph's values at once took 19 GB
        for i, (op, ins, outs, _, _) in enumerate(self._steps):
            extra = [side[0] for side in self._fused.get(ins[0], ())[1:]] if op == "QuantizeLinear" else []
            last.update({name: i for name in [*ins, *extra] if name})
        self._free = [[n for n, at in last.items() if at == i and n not in self.outputs]
                      for i in range(len(self._steps))]

    def _param(self, name: str, value: np.ndarray) -> str:
        key = f"p{len(self.params)}"
        self.params[key] = torch.nn.Parameter(torch.from_numpy(np.array(value, dtype=np.float32)))
        self._taken.add(name)
        return key

    def _quantizers(self, graph: Any, producer: dict[str, Any]) -> None:
        """One learned scale (a log factor on the calibrated one) per QuantizeLinear scale initializer; a Softmax
        output's stays as calibrated (Act.fixed)."""
        inits = self._inits
        for n in graph.node:
            if n.op_type == "QuantizeLinear" and n.input[1] not in self.acts:
                fixed = getattr(producer.get(n.input[0]), "op_type", None) == "Softmax"
                zero = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else np.array(0, np.uint8)
                lo, hi = _range(zero.dtype, False)
                key = self._param(n.input[1], np.zeros_like(inits[n.input[1]]))
                calibrated = torch.from_numpy(np.array(inits[n.input[1]], np.float32))
                self.register_buffer(f"s{key}", calibrated, persistent=False)
                self.register_buffer(f"z{key}", torch.tensor([float(zero)]), persistent=False)  # fixed
                self.register_buffer(f"f{key}", calibrated.clone())  # the range once frozen
                self.acts[n.input[1]] = Act(key, n.input[2] if len(n.input) > 2 else "", lo, hi, fixed)

    def _dequantizers(self, graph: Any, producer: dict[str, Any], consumers: dict[str, list[Any]]) -> None:
        """Each DequantizeLinear: of an activation (its QuantizeLinear's scale), of a weight or of a bias."""
        inits = self._inits
        dqs = [n for n in graph.node if n.op_type == "DequantizeLinear"]
        for n in dqs:  # activations first: a bias's scale follows its layer's input scale
            q_node = producer.get(n.input[0])
            if q_node is not None and q_node.op_type == "QuantizeLinear":
                self.dq_act[n.output[0]] = q_node.input[1]
                self.dq_scales.setdefault(q_node.input[1], []).append(n.input[1])
                self._taken.update(n.input[1:3])
        for n in sorted(dqs, key=lambda n: n.input[0] in inits and inits[n.input[0]].dtype == np.int32):
            src, scale = n.input[0], n.input[1]  # weights before biases, whose scale follows the weight's
            zero = n.input[2] if len(n.input) > 2 and n.input[2] else None
            if n.output[0] in self.dq_act or src not in inits:
                continue
            if inits[src].dtype == np.int32:
                consumer = next((c for c in consumers.get(n.output[0], []) if c.op_type in ("Conv", "Gemm") and
                                 len(c.input) > 2 and c.input[2] == n.output[0]), None)
                act = weight = None
                if consumer is not None:
                    a, w = producer.get(consumer.input[0]), producer.get(consumer.input[1])
                    act = self.dq_act.get(a.output[0]) if a is not None else None
                    weight = self.weights.get(w.output[0]) if w is not None else None
                value = inits[src].astype(np.float64) * inits[scale].astype(np.float64)
                self.biases[n.output[0]] = Bias(self._param(src, value), src, scale, act, weight)
            elif inits[src].dtype in _MIDDLE:
                z = inits[zero] if zero else np.zeros((), inits[src].dtype)
                symmetric = bool(np.all(z.astype(np.int64) == _MIDDLE[z.dtype]))
                lo, hi = _range(z.dtype, symmetric)
                if symmetric and z.dtype == np.int8 and np.abs(inits[src].astype(np.int64)).max() <= 64:
                    lo, hi = -64, 64  # ORT's reduce_range (a CPU whose u8s8 products saturate): 7-bit weights
                s, rank = inits[scale], inits[src].ndim
                axis = attrs_of(n).get("axis", 1) % rank if s.size > 1 else None
                zb, sb = (broadcast_to_axis(v, axis, rank) for v in (z, s))
                value = (inits[src].astype(np.float64) - zb) * sb
                tied = scale if scale in self.acts and axis is None else None
                spec = Weight(self._param(src, value), src, scale, zero, axis, z.dtype, lo, hi, symmetric, tied)
                derived = weight_scale64(torch.as_tensor(np.asarray(value)), spec).numpy()
                ratio = np.asarray(s, np.float64).reshape(derived.shape) / np.where(derived > 0, derived, 1.0)
                if not tied and not np.allclose(ratio, 1.0, rtol=1e-6, atol=0.0):
                    spec = replace(spec, ratio=torch.as_tensor(np.asarray(ratio, np.float64)))
                self.weights[n.output[0]] = spec
            else:
                continue
            self._taken.update({scale} | ({zero} if zero else set()))

    def _constants(self, graph: Any) -> None:
        """Every other float initializer a Parameter; integer ones and Constant nodes buffers."""
        zeros = {a.zero for a in self.acts.values()}
        read = {i for n in graph.node for i in n.input}
        for name, value in self._inits.items():
            if name in self._taken or name in self.acts or name not in read:
                continue  # (an initializer no node reads: ORT leaves the freed output's scale behind)
            if value.dtype == np.float32 and name not in zeros:
                self._tensors[name] = self._param(name, value)
            else:
                key = f"b{len(self._tensors)}"
                self.register_buffer(key, torch.from_numpy(np.array(value)), persistent=False)
                self._tensors[name] = key
        for n in graph.node:
            if n.op_type == "Constant":
                key = f"b{len(self._tensors)}"
                self.register_buffer(key, torch.from_numpy(np.array(constant_value(n))), persistent=False)
                self._tensors[n.output[0]] = key

    def tensor(self, name: str) -> torch.Tensor:
        key = self._tensors[name]
        return self.params[key] if key.startswith("p") else getattr(self, key)

    def act_scale(self, name: str) -> torch.Tensor:
        key = self.acts[name].param
        if self.acts[name].fixed:
            return getattr(self, f"s{key}") + 0.0 * self.params[key]
        if self.frozen:  # the parameter stays in the graph (with no gradient), as DDP wants every one used
            return getattr(self, f"f{key}") + 0.0 * self.params[key]
        return getattr(self, f"s{key}") * torch.exp(self.params[key])

    def act_qparams(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) of the activation quantizer whose scale initializer is `name`."""
        return self.act_scale(name), getattr(self, f"z{self.acts[name].param}")

    def epoch_end(self, epoch: int) -> None:
        """Called by the training loop after each epoch (and with 0 before the first): from `freeze_at` on, the
        activation ranges are the ones learned so far (freezing the observers, as QAT recipes do for the last
        epochs). The state dict holds them, so the best epoch's weights come back with their own ranges."""
        if self.freeze_at is None or epoch < self.freeze_at or self.frozen:
            return
        with torch.no_grad():
            for act in self.acts.values():
                getattr(self, f"f{act.param}").copy_(getattr(self, f"s{act.param}") * torch.exp(self.params[act.param]))
            self.frozen.fill_(1)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        env: dict[str, Any] = dict(zip(self.inputs, args))
        env.update({k: v for k, v in kwargs.items() if k in self.inputs})
        missing = [n for n in self.inputs if n not in env]
        if missing:
            raise CompressError(f"the quantized graph needs inputs {', '.join(missing)}; it was given "
                                f"{', '.join(kwargs) or f'{len(args)} positional'}")
        for (op, ins, outs, attrs, _), free in zip(self._steps, self._free):
            if op == "QuantizeLinear":
                act, (scale, zero) = self.acts[ins[1]], self.act_qparams(ins[1])
                x = env[ins[0]] if ins[0] in env else self.tensor(ins[0])
                # torch's fused kernel: round half to even of x / scale, saturate, dequantize; LSQ's gradient to
                # the scale, none to the zero point (it does not require one)
                env[outs[0]] = torch._fake_quantize_learnable_per_tensor_affine(
                    x.float(), scale.reshape(1), zero, act.qmin, act.qmax, 1.0)
                kind, *sides = self._fused.get(ins[0], (None,))
                given = [qparams(self, side) for side in sides]
                if kind == "AveragePool" and all(given):
                    env[outs[0]] = qlinear_average_pool(env[sides[0][0]], given[0], (scale, zero),
                                                        self._pools[ins[0]], act.qmin, act.qmax, env[outs[0]])
                elif kind and all(given):
                    env[outs[0]] = (qlinear_add if kind == "Add" else qlinear_matmul)(
                        env[sides[0][0]], given[0], env[sides[1][0]], given[1], (scale, zero), act.qmin, act.qmax,
                        env[outs[0]])
            elif op == "DequantizeLinear":
                env[outs[0]] = self._dequantize(outs[0], ins, env)
            else:
                values = [None if not i else env[i] if i in env else self.tensor(i) for i in ins]
                out = split(values, attrs, len(outs)) if op == "Split" else OPS[op](values, attrs)
                for name, value in zip(outs, out if isinstance(out, tuple) else (out,)):
                    env[name] = value
            for name in free:
                env.pop(name, None)
        return {name: env[name] for name in self.outputs}

    def _dequantize(self, out: str, ins: list[str], env: dict[str, Any]) -> torch.Tensor:
        if out in self.dq_act:  # the QuantizeLinear already gave the fake-quantized value
            return env[ins[0]]
        if out in self.weights:
            spec = self.weights[out]
            w = self.params[spec.param]
            if spec.tied:  # the activation's own quantizer, learned scale and all
                act, (scale, zero) = self.acts[spec.tied], self.act_qparams(spec.tied)
                return torch._fake_quantize_learnable_per_tensor_affine(w, scale.reshape(1), zero, act.qmin, act.qmax,
                                                                        1.0)
            scale, zero = weight_qparams(w, spec)
            if spec.axis is None:
                return torch.fake_quantize_per_tensor_affine(w, scale.reshape(()), zero.reshape(()).int(), spec.qmin,
                                                             spec.qmax)
            return torch.fake_quantize_per_channel_affine(w, scale.reshape(-1), zero.reshape(-1).int(), spec.axis,
                                                          spec.qmin, spec.qmax)
        if out in self.biases:
            b = self.params[self.biases[out].param]
            scale = self._bias_scale(self.biases[out])
            return fake_quant(b, scale, torch.zeros(()), -2 ** 31, 2 ** 31 - 1)
        x = env[ins[0]] if ins[0] in env else self.tensor(ins[0])  # a DequantizeLinear of anything else: as is
        scale = self.tensor(ins[1])
        zero = self.tensor(ins[2]) if len(ins) > 2 and ins[2] else torch.zeros(())
        return (x.float() - zero.float()) * scale

    def _bias_scale(self, bias: Bias) -> torch.Tensor:
        if bias.act is None or bias.weight is None:
            return torch.from_numpy(np.array(self._inits[bias.scale], dtype=np.float32))
        w_scale, _ = weight_qparams(self.params[bias.weight.param], bias.weight)
        return (self.act_scale(bias.act).detach() * w_scale.reshape(-1)).detach()

    def export(self, path: Path) -> Path:
        """The trained values written into a copy of the graph, saved at `path`."""
        import onnx
        from onnx import numpy_helper

        model = copy.deepcopy(self.proto)
        by_name = {i.name: i for i in model.graph.initializer}

        def put(name: str, value: np.ndarray) -> None:  # in the initializer's own type and shape
            like = self._inits[name]
            by_name[name].CopyFrom(numpy_helper.from_array(np.asarray(value).astype(like.dtype).reshape(like.shape),
                                                           name))

        with torch.no_grad():
            for spec in self.weights.values():
                w = self.params[spec.param].detach()
                if spec.tied:  # the scale and zero point are the activation's, written with it below
                    act, (scale, zero) = self.acts[spec.tied], self.act_qparams(spec.tied)
                    put(spec.q, torch.clamp(torch.round(w / scale) + zero, act.qmin, act.qmax).numpy())
                    continue
                scale, zero = weight_qparams(w, spec)
                q = torch.clamp(torch.round(w / scale) + zero, spec.qmin, spec.qmax)
                put(spec.q, q.numpy())
                put(spec.scale, scale.numpy())
                if spec.zero:
                    put(spec.zero, zero.numpy())
            for name, act in self.acts.items():
                s = self.act_scale(name).detach().numpy()
                for target in {name, *self.dq_scales.get(name, [])}:
                    put(target, s)
            for bias in self.biases.values():
                scale = self._bias_scale(bias).numpy().astype(np.float32)
                b = self.params[bias.param].detach().double().numpy()
                put(bias.q, np.round(b / scale.astype(np.float64)).astype(np.int64))
                put(bias.scale, scale)
            for name, key in self._tensors.items():
                if key.startswith("p"):
                    put(name, self.params[key].detach().numpy())
        path = Path(path)
        onnx.save(model, str(path))
        return path


def load(path: Path, origin: str = "quantize") -> QDQModule:
    import onnx

    return QDQModule(onnx.load(str(path)), origin)


__all__ = ["QDQModule", "fake_quant", "load", "weight_qparams"]
