"""What can go wrong with a pipeline's models, found before any training: `compress validate`, and `compress run`
before its first stage."""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from compress.errors import CompressError, shorten

log = logging.getLogger("compress")


TRIAL_EXPORT_SECONDS = 0.5
"""A model whose forward on two examples takes longer is not trial-exported before training (a 113M-parameter conv
teacher took 11 s to trace); its export stage finds what the exporter refuses."""


def check_exports(cfg, data) -> None:
    """Each torch model of the file (untrained: the architecture is what export traces) exported as the export stage
    will, so an op the exporter cannot take, or with [quantize] mode = 'qat' an op QAT cannot run, is found before
    training (compress.onnx.export.trial_export):
    `compress validate`, and `compress run` before the first training stage it does not find cached (a cached rerun
    pays nothing). hf: folders export through their own tested path and are not tried."""
    import torch

    from compress.data import forward
    from compress.families import family_of
    from compress.onnx.export import trial_export
    from compress.records import ModelSpec
    from compress.tasks import evaluation_for
    from compress.tasks.base import output_names_of

    default = evaluation_for(cfg.data.task, None).task.default_output
    for role, section in (("teacher", cfg.teacher), ("student", cfg.student)):
        spec = section.model or cfg.teacher.model
        family = family_of(spec)
        if family.weights_in_spec:
            continue
        origin = f"{cfg.source_path}: {role}"
        torch.manual_seed(0)
        model = family.build(ModelSpec(spec, dict(section.kwargs)), data=data, base_dir=cfg.base_dir, origin=origin)
        started = time.perf_counter()
        with torch.inference_mode():
            names = output_names_of(forward(model.eval(), data.example(2)), default)
        if time.perf_counter() - started < TRIAL_EXPORT_SECONDS:  # the trace runs the forward several times
            qat = role == "student" and getattr(cfg.quantize, "mode", None) == "qat"
            qnn = qat and "qnn" in cfg.export.edge_targets
            graph = trial_export(model, data, cfg.export, names, f"{origin}.model: {spec}", params=qnn)
            if graph is not None and qat:
                _check_qat_ops(graph, data, f"{cfg.source_path}: quantize.mode")
            if graph is not None and qnn:
                _check_qnn_float(graph, data, cfg, f"{cfg.source_path}: export.edge_targets")


def _check_qat_ops(graph, data, origin: str) -> None:
    """mode = 'qat' runs the student's QDQ graph in torch (compress.qat.graph): an op it has no counterpart for is
    named now, before distillation, not after it."""
    from compress.qat.ops import no_counterpart, without_counterpart

    missing = without_counterpart(graph.graph, data.inputs.names)
    if missing:
        raise CompressError(no_counterpart(origin, missing) + " (found before training)")


def _check_qnn_float(graph, data, cfg, origin: str) -> None:
    """mode = 'qat' with the QNN edge target trains the QNN QDQ graph: the nodes it would leave in float, which HTP
    cannot run as int8 and no training changes, are named now (the untrained student's graph with QNN's settings,
    calibrated on two validation rows: which nodes stay float depends on the graph, not on its weights)."""
    import tempfile
    from pathlib import Path

    import onnx

    from compress.qat.qnn import float_warning, qnn_ptq
    from compress.quantize.prepare import quiet_onnx_runtime

    feed = data.inputs.as_feed(data.example(2))
    with tempfile.TemporaryDirectory(prefix="compress-trial-qnn-") as tmp, quiet_onnx_runtime():
        source = Path(tmp) / "student.onnx"
        onnx.save(graph, str(source))
        _, _, left = qnn_ptq(source, Path(tmp), [feed], cfg)
    if left:
        log.warning(float_warning(origin, left) + " (found before training)")


def check_models(cfg, data) -> None:
    """What can go wrong with the models, found before any training (`compress validate`, and `compress run` before
    its first stage): each family's own checks; plain torch models are built on a real batch of the data and their
    outputs checked against the task (the student's against the teacher's); the teacher's checkpoint loads; labels
    fit the loss; the user's metric imports. hf: folders are checked without importing transformers' model code
    (seconds), which the teacher stage does anyway."""
    import torch

    from compress.data import forward
    from compress.families import family_of
    from compress.records import ModelSpec
    from compress.tasks import evaluation_for
    from compress.tasks.base import as_outputs, not_tensors, output_names_of

    where = str(cfg.source_path)
    evaluation = evaluation_for(cfg.data.task, cfg.evaluate, base_dir=cfg.base_dir, origin=f"{where}: evaluate")
    task = evaluation.task
    outputs = {}
    for role, section in (("teacher", cfg.teacher), ("student", cfg.student)):
        spec = section.model or cfg.teacher.model
        family = family_of(spec)
        origin = f"{where}: {role}"
        family.check(spec, kwargs=section.kwargs, base_dir=cfg.base_dir, origin=origin, data=data)
        if role == "student" and cfg.student.from_teacher is not None:
            family.check_cut(spec, cfg.teacher.kwargs, cfg.student.from_teacher, cfg.base_dir, origin)
        if family.weights_in_spec:
            continue
        model = family.build(ModelSpec(spec, dict(section.kwargs)), data=data, base_dir=cfg.base_dir, origin=origin)
        if role == "teacher" and cfg.teacher.checkpoint:
            family.load_checkpoint(model, cfg.resolve(cfg.teacher.checkpoint), f"{where}: teacher.checkpoint",
                                   key=cfg.teacher.checkpoint_key)
        example = data.example(2)
        try:
            with torch.inference_mode(), _embeddings_fed(model, example, data) as fed:
                raw = forward(model.eval(), example)
        except Exception as exc:
            shapes = getattr(data.inputs, "shapes", None)  # named inputs: each one's, where input_shape is the first's
            batch = (f"a batch of inputs {', '.join(f'{k} {(2, *v)}' for k, v in shapes.items())}" if shapes else
                     f"a batch of shape (2, {', '.join(map(str, data.input_shape))})")
            hint = _rgb_hint(cfg, exc) or _ids_hint(data, exc) or _layout_hint(data)
            raise CompressError(f"{origin}.model: {spec} fails on {batch} from the data: {type(exc).__name__}: "
                                f"{shorten(str(exc), 200)}{hint}") from exc  # torch's words cut, the hint kept
        _check_ids(fed, data, origin, spec)
        wrong = not_tensors(raw)
        if wrong is not None:
            raise CompressError(f"{origin}.model: {spec} returns {wrong}")
        names = output_names_of(raw, task.default_output)
        outputs[role] = as_outputs(raw, names)
        built = model  # the last built (the student, else the teacher): the metric's check runs on it
        train = cfg.distill if role == "student" else cfg.teacher.train
        key = "distill" if role == "student" else "teacher.train"
        if train is not None and train.freeze_embeddings and not family.embedding_parameters(model):
            raise CompressError(f"{where}: {key}.freeze_embeddings: {spec} has no nn.Embedding layers to freeze; "
                                "remove the key, or name parameters in freeze = [...]")
        _check_freeze(model, train, f"{where}: {key}.freeze", spec)
        task.check_outputs(outputs[role], num_classes=_num_classes(section.kwargs, data, task, origin, spec,
                                                                   outputs[role]),
                           teacher=outputs.get("teacher"), origin=origin, spec=spec)
        if role == "student" and cfg.prune is not None:
            _check_prunable(model, cfg, data, where)
    _check_head(cfg, data, task)
    _check_labels(cfg, data, task, outputs.get("student"))
    if evaluation.user is not None and outputs:
        _check_metric(evaluation.user, built, data, task.default_output)
    if str(cfg.teacher.model).startswith("hf:") and getattr(data.inputs, "kind", "") == "tokens":
        _check_text_configs(cfg, task)


@contextlib.contextmanager
def _embeddings_fed(model, example, data) -> Iterator[dict[str, int]]:
    """While the model runs on `example`: which integer named inputs (those the data holds ids in) each nn.Embedding
    reads, as that input's own tensor or a view of it ({input: the fewest rows of an embedding it feeds}). Inputs
    that reach no embedding (pixels, counts) are not ids."""
    import torch
    from torch import nn

    peaks = getattr(data, "id_peaks", None) or {}
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    rows: dict[str, int] = {}
    if not peaks or not embeddings or not isinstance(example, dict):
        yield rows
        return
    storage = {k: v.untyped_storage().data_ptr() for k, v in example.items() if k in peaks}

    def seen(module: Any, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            fed = args[0].untyped_storage().data_ptr()
            for name in (k for k, ptr in storage.items() if ptr == fed):
                rows[name] = min(rows.get(name, module.num_embeddings), module.num_embeddings)

    handles = [m.register_forward_pre_hook(seen) for m in embeddings]
    try:
        yield rows
    finally:
        for h in handles:
            h.remove()


def _check_ids(fed: dict[str, int], data, origin: str, spec: str) -> None:
    """An integer named input holding an id past the rows of an nn.Embedding it feeds (`fed`, _embeddings_fed): one
    line now, where training stopped on torch's IndexError after the teacher stage."""
    for name, limit in sorted(fed.items()):
        value, where = data.id_peaks[name]
        if value >= limit:
            raise CompressError(f"{origin}.model: input {name!r} holds the id {value} ({where} of the data), and the "
                                f"nn.Embedding of {spec} it feeds has {limit} rows; ids must be below the vocabulary "
                                "size (raise it in the model, or map the ids into it)")


METRIC_ROWS = 32
"""Validation rows the user's metric is called on once before training."""


def _check_metric(metric, model, data, default_output: str) -> None:
    """The user's metric called once on an untrained model's outputs for the first validation rows: a figure of the
    wrong form is the error the run would give after the teacher's whole pass (compress.tasks.metric.UserMetric
    .check); an exception inside it is a warning."""
    import torch

    from compress.data import forward
    from compress.tasks.base import as_outputs, output_names_of

    rows = min(METRIC_ROWS, len(data.val))
    inputs, targets = data.arrays("val", limit=rows)
    with torch.inference_mode():
        raw = forward(model.eval(), data.example(rows))
    outputs = {k: (v.float() if v.is_floating_point() else v).cpu().numpy()
               for k, v in as_outputs(raw, output_names_of(raw, default_output)).items()}
    line = metric.check(outputs, targets)
    if line is not None:
        log.warning("%s", line)


def _check_text_configs(cfg, task) -> None:
    """hf: text models, from their configs (no model is built): a width the attention heads divide, an embedding
    student as wide as its teacher (the task compares the two), and [benchmark] seq_lengths inside the position
    table. Each failed only after training, in transformers' or torch's words."""
    from compress.hf.model import folder_config, max_positions

    where = str(cfg.source_path)
    configs = {"teacher": folder_config(cfg.teacher.model, cfg.teacher.kwargs, cfg.base_dir, f"{where}: teacher")}
    if cfg.student.from_teacher is None and str(cfg.student.model).startswith("hf:"):
        configs["student"] = folder_config(cfg.student.model, cfg.student.kwargs, cfg.base_dir, f"{where}: student")
    for role, config in configs.items():
        width, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
        if isinstance(width, int) and isinstance(heads, int) and heads and width % heads:
            raise CompressError(f"{where}: {role}.kwargs: hidden_size {width} is not a multiple of "
                                f"num_attention_heads {heads}; set num_attention_heads too (one that divides {width})")
    widths = {role: getattr(c, "hidden_size", None) for role, c in configs.items()}
    if task.name == "embedding" and "student" in widths and widths["student"] != widths["teacher"]:
        raise CompressError(f"{where}: student.kwargs: hidden_size {widths['student']} makes {widths['student']}-wide "
                            f"embeddings, and the embedding task compares them with the teacher's "
                            f"{widths['teacher']}-wide ones; keep hidden_size = {widths['teacher']} (fewer layers: "
                            "num_hidden_layers, or [student] from_teacher)")
    limit = min((n for n in (max_positions(c) for c in configs.values()) if n is not None), default=None)
    longest = max(cfg.benchmark.seq_lengths) if "seq_lengths" in cfg.benchmark.model_fields_set else 0
    if limit is not None and longest > limit:  # the file's own (a default never trips a check)
        raise CompressError(f"{where}: benchmark.seq_lengths: expected at most {limit} (the models have position "
                            f"embeddings for {limit} tokens), got {longest}")


def _rgb_hint(cfg, exc: Exception) -> str:
    """An images: folder's examples have 3 channels whatever the files hold; a 1-channel model says so in torch's
    words ('expected input[2, 3, 16, 16] to have 1 channels')."""
    if not str(cfg.data.source).startswith("images:") or "channels" not in str(exc):
        return ""
    return ("; images: folders are read as RGB (3 channels, grayscale files too): build the model for 3 input "
            "channels, or give the data as npz: or python: arrays with the channels it takes")


def _ids_hint(data, exc: Exception) -> str:
    """One tensor input is read as float32 (npz x, a python: dataset's x): an nn.Embedding then refuses it. Integer
    inputs keep their type as named inputs."""
    if getattr(data.inputs, "kind", "tensor") != "tensor" or "indices" not in str(exc) or "Float" not in str(exc):
        return ""
    return ("; one x is read as float32, and nn.Embedding takes integer ids: a python: dataset's named input keeps "
            "them so (items ({'ids': LongTensor}, y))")


def _layout_hint(data) -> str:
    """Image arrays saved channels last (N, H, W, C), as numpy and Pillow give them, fail in a model's first conv in
    torch's words ('Given input size: (32x8x1)'): when the examples look so, say how to turn them."""
    from compress.families.torch import looks_channels_last

    shape = tuple(data.input_shape or ())
    if not looks_channels_last(shape):
        return ""
    return (f"; the examples are {shape}, which looks channels last (H, W, C): torch models take (C, H, W), e.g. "
            "x.transpose(0, 3, 1, 2) before saving")


def _check_prunable(model, cfg, data, where: str) -> None:
    """The student's architecture prunes as [prune] says (its outputs, ignore, Torch-Pruning's trace), before the
    distillation the prune stage would follow."""
    from compress.prune.schedule import check_prunable

    try:
        check_prunable(model, cfg.prune, data.example(8))
    except CompressError as exc:
        raise CompressError(f"{where}: {exc}") from exc


def _num_classes(kwargs, data, task, origin: str, spec: str, outputs) -> int:
    """The classes a classifier outputs: the data's (largest label + 1), or the user's num_classes in kwargs when it
    is at least that (a teacher trained with classes the data never shows)."""
    given = kwargs.get("num_classes")
    if task.name != "classification" or given is None:
        return data.num_classes
    if isinstance(given, bool) or not isinstance(given, int) or given < data.num_classes:
        raise CompressError(f"{origin}.kwargs.num_classes: the data's labels run 0..{data.num_classes - 1}, so the "
                            f"model needs at least {data.num_classes} classes, got {given!r}")
    shape = tuple(next(iter(outputs.values())).shape)
    if len(outputs) == 1 and shape != (2, given):
        raise CompressError(f"{origin}.model: {spec} outputs {shape} for 2 examples; kwargs num_classes = {given}, "
                            f"so expected (2, {given}) logits")
    return given


def _check_freeze(model, train, key: str, spec: str) -> None:
    """Each freeze pattern names at least one parameter: a typo would train everything, unsaid."""
    import fnmatch

    names = [name for name, _ in model.named_parameters()]
    unmatched = [p for p in (train.freeze if train is not None else ()) if not fnmatch.filter(names, p)]
    if unmatched:
        raise CompressError(f"{key}: {unmatched[0]!r} matches no parameter of {spec} (its names: "
                            f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''})")


def _check_head(cfg, data, task) -> None:
    """An hf: classification teacher without a checkpoint or [teacher.train] must bring a head for the labels."""
    from compress.families import family_of

    family = family_of(cfg.teacher.model)
    if (task.name == "classification" and family.weights_in_spec and not cfg.teacher.checkpoint
            and cfg.teacher.train is None and getattr(data.inputs, "kind", "") == "tokens"
            and not family.has_head(cfg.teacher.model, cfg.teacher.kwargs, cfg.base_dir, data.class_names)):
        raise CompressError(f"{cfg.source_path}: teacher: {cfg.teacher.model} has no classification head that "
                            f"predicts the data's labels {data.class_names} (its config.json's id2label names other "
                            "labels, or none), so one must be trained: add [teacher.train] (or a checkpoint of the "
                            "whole wrapped model)")


def _check_labels(cfg, data, task, student) -> None:
    """Tensors task: a labels-only control needs labels, and the default hard loss needs a label that matches an
    output's shape."""
    if task.name != "tensors":
        return
    unknown = sorted(set(cfg.distill.output_weights or {}) - set(student or {}))
    if student is not None and unknown:
        raise CompressError(f"{cfg.source_path}: distill.output_weights: the student has no output {unknown[0]!r}; "
                            f"its outputs are {', '.join(student)}")
    if cfg.teacher.train is not None and not data.has_targets:
        raise CompressError(f"{cfg.source_path}: teacher.train: the data has no targets (npz y or y_NAME) to train a "
                            "teacher on; give the teacher's checkpoint instead")
    if cfg.distill.control and not data.has_targets:
        raise CompressError(f"{cfg.source_path}: distill.control: the data has no targets (npz y or y_NAME) to train "
                            "a labels-only control on")
    if cfg.distill.loss not in (None, *task.losses):  # imported now: it failed after the teacher had trained
        from compress.imports import import_object

        import_object(cfg.distill.loss, cfg.base_dir, f"{cfg.source_path}: distill.loss")
    if student is None or not data.has_targets or (cfg.distill.loss or "mse") != "mse":
        return
    from compress.tasks.tensors import matched_labels

    import numpy as np

    batch = data.targets("val")
    batch = {k: np.asarray(v)[:2] for k, v in batch.items()} if isinstance(batch, dict) else np.asarray(batch)[:2]
    outputs = ", ".join(f"{n} {tuple(v.shape[1:])}" for n, v in student.items())
    fits = matched_labels(tuple(student), {n: tuple(v.shape) for n, v in student.items()}, batch)
    if isinstance(batch, dict):  # each y_NAME labels the output NAME: one that fits none was dropped without a word
        for stray in (k for k in batch if k not in fits and fits):  # none fits: the error below
            log.warning(
                "warning: %s: data.source: target %r (npz y_%s, per example %s) labels no output of the student "
                "(%s), so the default loss does not use it; name each target after the output it labels, with that "
                "output's shape, or give [distill] loss = 'module:function' that reads it", cfg.source_path, stray,
                stray, tuple(batch[stray].shape[1:]), outputs)
    if not fits:
        raise CompressError(f"{cfg.source_path}: distill.loss: {_unfit(batch, student, outputs)}; give [distill] "
                            "loss = 'module:function' to compare your outputs with your targets")


def _unfit(batch: Any, student: dict, outputs: str) -> str:
    """Why no target fits an output, as the middle of a sentence: a y_NAME that names no output (a typo), a target
    one axis short of its output ((N,) for (N, 1)), else the shapes."""
    import numpy as np

    if isinstance(batch, dict):
        stray = [k for k in batch if k not in student]
        if stray:
            return (f"target {stray[0]!r} (npz y_{stray[0]}) names no output of the student ({outputs}); name each "
                    "y_NAME after the output it labels")
        shapes = {k: tuple(v.shape[1:]) for k, v in batch.items()}
        return f"no target (per example {shapes}) has the shape of its output ({outputs})"
    shape, only = tuple(np.shape(batch)[1:]), [tuple(v.shape[1:]) for v in student.values()]
    short = len(only) == 1 and only[0] == (*shape, 1)
    return (f"no target (per example {shape}) has the shape of an output ({outputs})"
            + (f"; y of shape (N, {', '.join(map(str, only[0]))}) fits it (y[..., None])" if short else ""))
