"""Rewrites that keep a model's float function and let an NPU that quantizes every tensor (QNN's HTP) compute what
ORT CPU computes from the same QDQ graph: bound the ranges 8-bit activations must hold, and step around an HTP kernel
that reads its codes wrongly. `for_htp` applies them all, with the finite attention mask (compress.edge.mask), for
both ways to HTP: `compress edge --provider qnn` and the pipeline's QNN PTQ/QAT. The three here come from Google's
Magika (a jax2tf export), whose QNN graph read a constant class before them.

A tanh that saturates (`bounded_tanh`): the tanh form of GELU written out, 0.5 x (1 + tanh(0.798 (x + 0.0447 x^3))),
computes x^3 on the way to the Tanh. Where x reaches 147 the cubic term spans -2,833 to 8,430, one uint8 step is 44,
and every argument the tanh resolves rounds to 0 or a step: on Magika's QNN graph the Tanh's output read cosine 0.19
against fp32. The tanh is within SATURATED of +-1 once its argument passes a bound, so the chain from x to the Tanh
can read Clip(x, -c, c) for the smallest such c found on the chain itself (its ops evaluated here, for |x| up to
LIMIT): the float model moves by less than SATURATED, and the chain's range shrinks to what the tanh can tell apart
(0.98-0.99 cosine there). The final x * (...) still reads x itself.

An infinite guard (`without_infinite_guards`): Max(x, -inf) (jax's softmax guards its row maximum so) is x for every
finite x, but its range reaches -inf (or float32's lowest): its uint8 output was 0 for every input, and so was the
classifier after it. Such a Max (or Min with +inf) is dropped and its readers read x.

Reciprocal on HTP (`reciprocals_as_division`): see there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from compress.onnx.graph import readers, reroute

SATURATED = 1e-6
"""How close to +-1 the tanh must be beyond the clip, on both sides."""
LIMIT = 1e6
"""The largest |x| the chain is checked to stay saturated for."""
_OPS: dict[str, Callable[[Any, Any], Any]] = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract,
                                               "Div": np.divide, "Pow": np.power}


def for_htp(model: Path, out_dir: Path, stem: str, calib: dict[str, Any],
            axes: dict[str, int | None] | None = None) -> tuple[Path, dict[str, list]]:
    """The model to quantize for HTP: `model` with every rewrite that applies (written to out_dir/<stem>.mask.onnx and
    <stem>.ranges.onnx; `model` itself when none does), and what each did: {"finite_mask",
    "constants_as_initializers", "bounded_tanh", "infinite_guards_dropped", "reciprocals_as_division"}."""
    from compress.edge.mask import finite_attention_mask

    done: dict[str, list] = {"finite_mask": finite_attention_mask(model, out_dir / f"{stem}.mask.onnx", calib, axes)}
    source = out_dir / f"{stem}.mask.onnx" if done["finite_mask"] else model
    for key, rewrite in (("constants_as_initializers", constants_as_initializers), ("bounded_tanh", bounded_tanh),
                         ("infinite_guards_dropped", without_infinite_guards),
                         ("reciprocals_as_division", reciprocals_as_division)):
        done[key] = rewrite(source, out_dir / f"{stem}.ranges.onnx")
        source = out_dir / f"{stem}.ranges.onnx" if done[key] else source
    return source, done


def float16_as_float32(src: Path, dst: Path) -> list[str]:
    """Write `src` with every float16 tensor as float32 (initializers, Constant values, graph inputs, outputs and
    value types, Casts to float16 and ops made to output float16) to `dst`; returns the names of the inputs,
    outputs and weights changed, [] (and no file) when none is float16. QNN's quantizer reads a float graph: a float16 model's QDQ graph kept float16 scales
    (an invalid DequantizeLinear below opset 19) or casts HTP did not compile, 0 nodes on HTP either way."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(src))
    half, full = TensorProto.FLOAT16, TensorProto.FLOAT
    changed: list[str] = []

    def tensor(t: Any, owner: str = "") -> None:
        if t.data_type == half:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
            changed.append(t.name or owner)  # a Constant's value is named by the Constant's output

    def graph(g: Any) -> None:
        for t in g.initializer:
            tensor(t)
        for v in [*g.input, *g.output, *g.value_info]:
            if v.type.tensor_type.elem_type == half:
                v.type.tensor_type.elem_type = full
                changed.extend([v.name] if v in g.input or v in g.output else [])
        for node in g.node:
            for a in node.attribute:
                if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i == half:
                    a.i = full  # Cast's target; the type of RandomUniformLike, EyeLike and the like
                if a.HasField("t"):
                    tensor(a.t, node.output[0] if node.output else node.name)
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    graph(sub)

    graph(model.graph)
    if not changed:
        return []
    onnx.save(model, str(dst))
    return list(dict.fromkeys(changed))


def constants_as_initializers(src: Path, dst: Path) -> list[str]:
    """Write `src` with the value of every main-graph Constant node that holds a tensor (`value`; the scalar and list
    forms and subgraphs stay as they are, ORT folds those) as an initializer to `dst`; returns the values' names, []
    (and no file) when there are none. HTP takes no Constant node and reads a weight a node produces as dynamic: Paddle's
    PP-OCRv4 detector (342 Constant nodes, no initializer) failed to compose on HTP, its BatchNormalizations refused
    ("doesn't support dynamic scale"); with its constants as initializers it composes."""
    import onnx

    from compress.quantize.prepare import constants_to_initializers

    model = onnx.load(str(src))
    before = {i.name for i in model.graph.initializer}
    if not constants_to_initializers(model, every=True):
        return []
    onnx.save(model, str(dst))
    return [i.name for i in model.graph.initializer if i.name not in before]


def bounded_tanh(src: Path, dst: Path) -> list[dict[str, Any]]:
    """Write `src` to `dst` with every saturating Tanh's argument chain reading its input clipped; returns one entry
    per Tanh ({"tanh", "input", "clip"}), [] (and no file) when none qualifies."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    reading = readers(graph)
    done, added = [], []
    for tanh in [n for n in graph.node if n.op_type == "Tanh"]:
        chain = _chain(tanh.input[0], producer, consts, reading)
        if chain is None:
            continue
        x, nodes = chain
        inside = [*nodes, tanh]
        if any(r not in inside for n in nodes for r in reading.get(n.output[0], [])) or \
                tanh.input[0] in {o.name for o in graph.output}:
            continue  # a value on the way is read elsewhere too: clipping would change that reader
        clip = _bound(tanh.input[0], x, nodes, consts)
        if clip is None:
            continue
        tag = f"{x}_tanh_bounded{len(done) or ''}"  # one per chain, though two chains read the same x
        clipped, low, high = tag, f"{tag}_low", f"{tag}_high"
        graph.initializer.extend([numpy_helper.from_array(np.array(-clip, np.float32), low),
                                  numpy_helper.from_array(np.array(clip, np.float32), high)])
        added.append((nodes, helper.make_node("Clip", [x, low, high], [clipped], name=f"{tag}_clip")))
        for node in nodes:
            node.input[:] = [clipped if i == x else i for i in node.input]
        done.append({"tanh": tanh.name, "input": x, "clip": clip})
    if not done:
        return []
    for nodes, clip_node in added:  # each Clip before the first node of its chain: the graph stays sorted
        order = list(graph.node)
        graph.node.insert(min(order.index(n) for n in nodes), clip_node)
    onnx.save(model, str(dst))
    return done


def _chain(out: str, producer: dict[str, Any], consts: dict[str, np.ndarray],
           readers: dict[str, list[Any]]) -> tuple[str, list[Any]] | None:
    """(x, the nodes from x to `out`, each after those it reads) when `out` is elementwise arithmetic of one tensor
    x and scalar constants, every value on the way read once (x itself, read by several, is where it starts);
    else None."""
    nodes, leaves, todo = [], set(), [out]
    while todo:
        name = todo.pop()
        if name in consts:
            if np.size(consts[name]) != 1:
                return None
            continue
        node = producer.get(name)
        if node is None or node.op_type not in _OPS or (name != out and len(readers.get(name, [])) > 1):
            leaves.add(name)
            continue
        if node not in nodes:
            nodes.append(node)
            todo.extend(node.input)
    if len(leaves) != 1 or not nodes:
        return None
    return next(iter(leaves)), nodes[::-1]


def _bound(out: str, x: str, nodes: list[Any], consts: dict[str, np.ndarray]) -> float | None:
    """The smallest power of two c at which tanh(chain) is within SATURATED of +-1 for every |x| in [c, LIMIT], with
    opposite signs on the two sides (a GELU-like odd argument); None when there is none."""
    grid = np.concatenate([np.geomspace(0.5, LIMIT, 4000), [LIMIT]])
    values = np.tanh(_evaluate(out, x, nodes, consts, np.concatenate([grid, -grid])))
    up, down = values[:len(grid)], values[len(grid):]
    for c in 2.0 ** np.arange(0, 11):
        beyond = grid >= c
        if np.all(up[beyond] >= 1 - SATURATED) and np.all(down[beyond] <= -1 + SATURATED):
            return float(c)
    return None


def _evaluate(out: str, x: str, nodes: list[Any], consts: dict[str, np.ndarray], at: np.ndarray) -> np.ndarray:
    """The chain's value at each of `at`, in float64 (scalar constants as scalars)."""
    values: dict[str, Any] = {k: np.reshape(v, ()).astype(np.float64) for k, v in consts.items() if np.size(v) == 1}
    values[x] = at.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for node in nodes:
            values[node.output[0]] = _OPS[node.op_type](values[node.input[0]], values[node.input[1]])
    return np.nan_to_num(values[out], nan=0.0)


HUGE = 1e30
"""A constant at or beyond +-HUGE is an infinite guard's bound (inf, float32's largest)."""


def without_infinite_guards(src: Path, dst: Path) -> list[str]:
    """Write `src` without Max(x, c <= -HUGE) and Min(x, c >= HUGE) nodes (scalar c) to `dst`, their readers reading x
    (a guard whose output is a graph output becomes Identity(x)); returns the dropped nodes' names, [] (and no file)
    when there are none."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    dropped, gone = [], []
    for node in graph.node:  # in graph order: a guard after a dropped one already reads that one's x
        bound = [i for i in node.input if i in consts and np.size(consts[i]) == 1]
        others = [i for i in node.input if i not in bound]
        guard = (node.op_type == "Max" and bound and all(float(consts[b].ravel()[0]) <= -HUGE for b in bound)) or \
                (node.op_type == "Min" and bound and all(float(consts[b].ravel()[0]) >= HUGE for b in bound))
        if not guard or len(others) != 1:
            continue
        dropped.append(node.name or node.output[0])
        if node.output[0] in outputs:  # a graph output keeps its name
            node.op_type = "Identity"
            node.input[:] = others
        else:
            reroute(graph, node.output[0], others[0])
            gone.append(node)
    if not dropped:
        return []
    for node in gone:
        graph.node.remove(node)
    onnx.save(model, str(dst))
    return dropped


def reciprocals_as_division(src: Path, dst: Path) -> list[str]:
    """Write `src` with every Reciprocal(x) read as Div(1, x) to `dst` (the same float results); returns the rewritten
    nodes' names, [] (and no file) when there are none.

    QNN's HTP Reciprocal reads a quantized input whose range ends under about 1 wrongly: with uint8 codes of scale
    0.0005 (Magika's 1 / sqrt(variance + eps), range 0 to 0.13) it returned 255 / code where 1 / (0.0005 code) is
    right, as if the scale were 1/255, while ORT CPU and HTP's Div agree with the float result on every code
    (onnxruntime-qnn 2.7.0, simulated HTP; input scales 0.004 and up read right)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    nodes = [n for n in graph.node if n.op_type == "Reciprocal"]
    if not nodes:
        return []
    types = _element_types(model)
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output} | \
        {i.name for i in graph.input}
    ones: dict[int, str] = {}
    for node in nodes:  # a 1 of the input's own type (float16 graphs too), under a name the graph does not use
        kind = types.get(node.input[0], onnx.TensorProto.FLOAT)
        if kind not in ones:
            name = next(f"reciprocal_one{k or ''}" for k in range(len(taken) + 1)
                        if f"reciprocal_one{k or ''}" not in taken)
            taken.add(name)
            graph.initializer.append(numpy_helper.from_array(
                np.array(1.0, onnx.helper.tensor_dtype_to_np_dtype(kind)), name))
            ones[kind] = name
        node.op_type = "Div"
        node.input[:] = [ones[kind], node.input[0]]
    onnx.save(model, str(dst))
    return [n.name or n.output[0] for n in nodes]


def _element_types(model: Any) -> dict[str, int]:
    """{tensor: ONNX element type} from onnx's shape inference (on a copy), the inputs and the initializers."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # inference is a help here, not a requirement: unknown types read as float32
        inferred = model.graph
    values = [*inferred.value_info, *inferred.input, *inferred.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return {k: v for k, v in types.items() if v}
