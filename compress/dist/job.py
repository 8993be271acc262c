"""A training job's folder: the file names the parent, torchrun and the workers share, and how arguments travel.

    job.json            the call: function, pipeline config, how to rebuild the model, encoded arguments
    init.safetensors    the model's weights when the call was made (pruned shapes and pruning masks included)
    tensors.safetensors tensor arguments (the teacher's logits)
    result.safetensors  the trained weights, written by local rank 0 after training
    result.json         the function's return value (fit's history)
    failures.json       torchrun's ChildFailedError (compress.dist.torchrun), when a worker failed
    error-rank<N>.json  a CompressError raised in worker N (shown as in one process)
    torchrun.log        everything torchrun and the workers printed (one progress line per epoch from rank 0)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

JOB = "job.json"
RESULT_WEIGHTS = "result.safetensors"
RESULT_JSON = "result.json"
FAILURES = "failures.json"
LOG = "torchrun.log"
ERROR_PREFIX = "error-rank"


def encode(value: Any, name: str, tensors: dict[str, Any]) -> Any:
    """JSON for one argument: tensors by name (stored in tensors.safetensors), config sections with their class, a
    distillation Teacher as its outputs file, its outputs, or 'the run's teacher model'."""
    import torch
    from pydantic import BaseModel

    from compress.train.loop import Teacher

    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().cpu().contiguous()
        return {"$tensor": name}
    if isinstance(value, BaseModel):
        cls = type(value)
        return {"$section": f"{cls.__module__}:{cls.__qualname__}", "value": value.model_dump(mode="json")}
    if isinstance(value, Teacher):
        if value.model is not None:
            return {"$teacher": "model"}  # rebuilt in the worker from the run's teacher record
        if value.source:  # every worker maps the same outputs file
            return {"$teacher": "outputs_file", "path": value.source}
        return {"$teacher": "outputs", "tensors": {k: encode(torch.as_tensor(v), f"{name}.{k}", tensors)
                                                   for k, v in value.outputs.items()}}
    json.dumps(value)  # anything else must be plain JSON: a TypeError here is a bug in the caller, not user input
    return value


def decode(value: Any, tensors: dict[str, Any], teacher_model: Any = None) -> Any:
    """The inverse of `encode` (in the worker); `teacher_model()` rebuilds the run's teacher when asked for."""
    import importlib

    if isinstance(value, dict) and "$tensor" in value:
        return tensors[value["$tensor"]]
    if isinstance(value, dict) and "$section" in value:
        module, _, name = value["$section"].partition(":")
        return getattr(importlib.import_module(module), name).model_validate(value["value"])
    if isinstance(value, dict) and "$teacher" in value:
        from compress.train.loop import Teacher

        if value["$teacher"] == "model":
            return Teacher(model=teacher_model())
        if value["$teacher"] == "outputs_file":
            from compress.train.outputs import open_outputs

            return Teacher(outputs=open_outputs(value["path"])["train"], source=value["path"])
        return Teacher(outputs={k: decode(v, tensors).numpy() for k, v in value["tensors"].items()})
    return value


def save_tensors(path: Path, tensors: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from compress.cache import atomic_path

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
