"""Local Hugging Face folders (`hf:DIR`, `hf:package:PKG/SUB`): transformers on text (compress.hf.model's TextModel:
logits or a pooled embedding) and image classifiers. Offline: nothing is ever downloaded.

What this family adds to the plain torch one: a transformer's training defaults, the layer cut (`from_teacher`),
hidden-state and attention KD through a layer map, freezing the token embeddings, and ONNX Runtime's transformer
optimizer after export (`[export] optimize = "transformer"`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from compress.errors import CompressError
from compress.families import Family

if TYPE_CHECKING:
    from compress.records import ModelSpec


class HFFamily(Family):
    name = "hf"
    kd_keys = frozenset({"hidden_weight", "attention_weight", "layer_map"})
    can_prune = False
    can_cut = True
    can_optimize = True
    weights_in_spec = True

    def defaults(self, role: str, epochs: int) -> dict[str, Any]:
        # a transformer fine-tuning recipe: small peak rate, 6% linear warm-up, decoupled weight decay 0.01,
        # gradients clipped at norm 1, bf16 autocast where the CPU or GPU has bfloat16 instructions
        return {"lr": 1e-4 if role == "teacher" else 3e-4, "weight_decay": 0.01,
                "warmup_epochs": round(0.06 * epochs, 3), "grad_clip": 1.0, "precision": "auto"}

    def check(self, spec: str, *, kwargs: Mapping[str, Any], base_dir: Path, origin: str, data: Any) -> None:
        import importlib.util

        from compress.hf.model import resolve_dir

        if importlib.util.find_spec("transformers") is None:
            raise CompressError(f"{origin}.model: hf: models need the 'transformers' package: pip install "
                                "transformers tokenizers (the hf extra)")
        folder = resolve_dir(spec, base_dir, f"{origin}.model")
        if not kwargs and not any((folder / n).is_file() for n in ("model.safetensors", "pytorch_model.bin",
                                                                   "model.safetensors.index.json")):
            raise CompressError(f"{origin}: {folder}/model.safetensors not found (no weights in the hf folder)")
        inputs = getattr(data, "inputs", None)
        if getattr(inputs, "kind", "") == "tokens":
            _check_length(spec, kwargs, base_dir, origin, inputs.max_length)

    def check_cut(self, spec: str, kwargs: Mapping[str, Any], cut: Any, base_dir: Path, origin: str) -> None:
        """A layer cut fits the teacher: distinct layer indices inside it (its config as transformers reads it, so
        DistilBERT's n_layers counts)."""
        from compress.hf.model import choose_layers, folder_config

        config = folder_config(spec, kwargs, base_dir, origin.rpartition(": ")[0] + ": teacher")
        total = int(getattr(config, "num_hidden_layers", 0) or 0)
        try:
            layers = list(cut.layers) if cut.layers is not None else choose_layers(total, cut.num_layers)
        except ValueError as exc:
            raise CompressError(f"{origin}.from_teacher: {exc} (the teacher has {total} layers)") from None
        if any(not 0 <= i < total for i in layers) or len(set(layers)) != len(layers):
            raise CompressError(f"{origin}.from_teacher.layers must be distinct indices 0..{total - 1}, got "
                                f"{layers}")

    def build(self, spec: "ModelSpec", *, data: Any, base_dir: Path, origin: str, fresh: bool = False) -> Any:
        if getattr(data.inputs, "kind", "") != "tokens":
            return _image_classifier(spec.model, base_dir, origin)
        from compress.hf.model import build_text_model

        options = dict(spec.options or {})
        return build_text_model(spec.model, task=data.task, num_classes=data.num_classes,
                                pooling=options.get("pooling", "mean"), kwargs=dict(spec.kwargs), base_dir=base_dir,
                                origin=origin, from_scratch=fresh, attention=options.get("attention"),
                                class_names=data.class_names)

    def digest(self, spec: str, base_dir: Path) -> Any:
        from compress.hf.model import folder_digest

        return folder_digest(spec, base_dir)

    def has_head(self, spec: str, kwargs: Mapping[str, Any], base_dir: Path, class_names: Any) -> bool:
        """Whether the folder's own classification head serves the data's labels (nothing to train first)."""
        from compress.hf.model import folder_head_order, resolve_dir

        folder = resolve_dir(spec, base_dir, "hf")
        return folder_head_order(json.loads((folder / "config.json").read_text()), class_names) is not None

    def cut(self, teacher: Any, teacher_spec: "ModelSpec", section: Any, origin: str) -> tuple[Any, "ModelSpec", list]:
        from compress.hf.model import choose_layers, cut_layers, num_layers
        from compress.records import ModelSpec

        total = num_layers(teacher)
        cut = section.from_teacher
        try:
            layers = list(cut.layers) if cut.layers is not None else choose_layers(total, cut.num_layers)
        except ValueError as exc:
            raise CompressError(f"{origin}.from_teacher: {exc} (the teacher has {total} layers)") from None
        student = cut_layers(teacher, layers, f"{origin}.from_teacher")
        student.pooling = section.pooling
        spec = ModelSpec(teacher_spec.model, {**teacher_spec.kwargs, "num_hidden_layers": len(layers)},
                         {**(teacher_spec.options or {}), "pooling": section.pooling})
        return student, spec, layers

    def kd_terms(self, settings: Any, student: Any, teacher: Any, kept: list | None, origin: str) -> Any:
        if not (settings.hidden_weight > 0 or settings.attention_weight > 0):
            return None
        from compress.hf.losses import TransformerKD, default_layer_map
        from compress.hf.model import num_layers

        layer_map = settings.layer_map or default_layer_map(num_layers(student), num_layers(teacher), kept)
        if len(layer_map) != num_layers(student) or not all(0 <= i < num_layers(teacher) for i in layer_map):
            raise CompressError(f"{origin}.layer_map: needs {num_layers(student)} teacher layer indices in "
                                f"0..{num_layers(teacher) - 1}, got {list(layer_map)}")
        return TransformerKD(tuple(layer_map), settings.hidden_weight, settings.attention_weight)

    def embedding_parameters(self, model: Any) -> list:
        encoder = getattr(model, "encoder", None)
        if encoder is None:
            return super().embedding_parameters(model)
        return [encoder.get_input_embeddings().weight]

    def optimize_export(self, path: Path, model: Any, *, data: Any, reference: Any, export_cfg: Any,
                        seq_length: int) -> dict | None:
        from compress.hf.optimize import optimize_if_faster

        return optimize_if_faster(path, model, data, reference, export_cfg, seq_length=seq_length)


def _check_length(spec: str, kwargs: Mapping[str, Any], base_dir: Path, origin: str, max_length: int) -> None:
    """data.max_length fits the model's position table (past it, the first batch fails deep in transformers)."""
    from compress.hf.model import folder_config, max_positions

    limit = max_positions(folder_config(spec, kwargs, base_dir, origin))
    if limit is not None and max_length > limit:
        where, _, role = origin.rpartition(": ")
        raise CompressError(f"{where}: data.max_length: expected at most {limit} (the {role} {spec} has "
                            f"position embeddings for {limit} tokens), got {max_length}")


def _image_classifier(directory: str, base_dir: Path, origin: str) -> Any:
    """A local AutoModelForImageClassification folder whose forward returns the logits tensor."""
    from compress.hf.model import require_transformers, resolve_dir

    path = resolve_dir(directory, base_dir, f"{origin}.model")
    transformers = require_transformers(origin)
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(path, local_files_only=True,
                                                                             use_safetensors=True)
    except Exception as exc:
        raise CompressError(f"{origin}.model: cannot load {path} as a local Hugging Face model: {exc}") from exc
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(pixel_values=x).logits

    return LogitsOnly(model)
