"""Model families, by spec prefix: how a model is built, loaded, digested, and trained by default.

  builtin:NAME        compress.zoo's architectures                       (compress.families.torch)
  module:factory      any function returning a torch.nn.Module            (compress.families.torch)
  hf:DIR              a local Hugging Face folder: a transformer on text  (compress.families.hf)
                      (TextModel: logits or a pooled embedding) or an image classifier

A family owns build, checkpoint loading and the cache digest; optionally a layer cut (`from_teacher`),
intermediate-layer KD terms, a post-export optimizer; and its training defaults (a transformer student gets a
transformer's learning rate, warm-up, weight decay and clipping unless the file says otherwise). `rebuild(record)`
is the one way any stage, torchrun worker or later tool restores a model a stage wrote: the family builds the
architecture, the record's transforms are applied (pruned shapes), the run's weights are loaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from compress.errors import CompressError

if TYPE_CHECKING:
    from compress.records import ModelRecord, ModelSpec

FAMILIES: dict[str, str] = {
    "builtin:": "compress.families.torch:TorchFamily",
    "hf:": "compress.families.hf:HFFamily",
    "": "compress.families.torch:TorchFamily",  # module:factory
}
"""Spec prefix -> the family class; the empty prefix is `module:factory`."""

COMMON_DEFAULTS: dict[str, Any] = {"lr": 1e-2, "weight_decay": 1e-4, "warmup_epochs": 1.0, "grad_clip": None,
                                   "precision": "fp32"}
"""The recipe of the small CNNs and MLPs compress was first tuned on: the defaults of every key a family does
not set."""


class Family:
    """One kind of model. Subclasses override what they support."""

    name: ClassVar[str] = "torch"
    kd_keys: ClassVar[frozenset[str]] = frozenset()
    """[distill] keys of intermediate-layer KD this family implements (hidden_weight, attention_weight, ...)."""
    can_prune: ClassVar[bool] = True
    can_cut: ClassVar[bool] = False
    can_optimize: ClassVar[bool] = False
    weights_in_spec: ClassVar[bool] = False
    """The spec itself holds trained weights (an hf: folder), so a teacher needs no checkpoint or training."""

    def defaults(self, role: str, epochs: int) -> dict[str, Any]:
        """Training settings for `role` ('teacher' training or 'student' distillation) that the file may omit."""
        return dict(COMMON_DEFAULTS, lr=3e-3 if role == "teacher" else 1e-2)

    def check(self, spec: str, *, kwargs: Mapping[str, Any], base_dir: Path, origin: str, data: Any) -> None:
        """Cheap checks at validate time that need no model build (files exist, extras installed)."""

    def check_cut(self, spec: str, kwargs: Mapping[str, Any], cut: Any, base_dir: Path, origin: str) -> None:
        """A `from_teacher` cut fits the teacher (the load-time check refused it for families without cuts)."""

    def build(self, spec: "ModelSpec", *, data: Any, base_dir: Path, origin: str, fresh: bool = False) -> Any:
        raise NotImplementedError

    def load_checkpoint(self, model: Any, path: Path, origin: str, *, key: str | None = None) -> None:
        from compress.models import load_weights

        load_weights(model, path, origin, key=key)

    def digest(self, spec: str, base_dir: Path) -> Any:
        """What the cache key holds for the model's code or files (changing them re-runs the stages using it)."""
        from compress.cache import source_digest

        return source_digest(base_dir, spec)

    def cut(self, teacher: Any, teacher_spec: "ModelSpec", section: Any, origin: str) -> tuple[Any, "ModelSpec", list]:
        raise CompressError(f"{origin}.from_teacher: a layer cut needs an hf: (transformer) teacher")

    def kd_terms(self, settings: Any, student: Any, teacher: Any, kept: list | None, origin: str) -> Any:
        """An object adding intermediate-layer losses to distillation (compress.train.objective), or None."""
        return None

    def embedding_parameters(self, model: Any) -> list:
        """The token-embedding weights `[distill] freeze_embeddings` keeps fixed: every nn.Embedding here."""
        import torch

        return [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]

    def optimize_export(self, path: Path, model: Any, *, data: Any, reference: Any, export_cfg: Any,
                        seq_length: int) -> dict | None:
        return None


def spec_options(cfg: Any, section: Any) -> dict[str, Any]:
    """What a family reads beside kwargs for a [teacher] or [student] section: pooling (hf: text embeddings) and
    the eager attention that attention KD needs (the only implementation that returns attention maps)."""
    options: dict[str, Any] = {"pooling": section.pooling}
    if cfg.distill.attention_weight > 0:
        options["attention"] = "eager"
    return options


_cache: dict[str, Family] = {}


def family_of(spec: str) -> Family:
    """The family of a model spec ('builtin:cnn-small', 'mymodels:mlp', 'hf:folder')."""
    import importlib

    prefix = next(p for p in FAMILIES if spec.startswith(p))
    if prefix not in _cache:
        module, _, cls = FAMILIES[prefix].partition(":")
        _cache[prefix] = getattr(importlib.import_module(module), cls)()
    return _cache[prefix]


def rebuild(record: "ModelRecord", *, data: Any, base_dir: Path, run_dir: Path | None = None,
            weights: Path | None = None) -> Any:
    """The model a stage wrote, restored from its record: the family's architecture, the record's transforms
    (pruned shapes; magnitude-pruning masks when the weights carry them; a QAT record's QDQ graph, run in torch),
    then the weights (`weights`, else the record's file in `run_dir`). Eval mode."""
    from safetensors.torch import load_file

    path = Path(weights) if weights is not None else Path(run_dir) / record.torch
    qat = (record.quantization or {}).get("qat_graph")
    if qat is not None:  # quantization-aware training: the QDQ graph itself, run in torch (compress.qat)
        from compress.qat.graph import load

        model = load(Path(qat), record.origin)
        model.freeze_at = record.quantization.get("freeze_at")
        model.load_state_dict(load_file(str(path)), strict=True)
        return model.eval()
    model = family_of(record.spec.model).build(record.spec, data=data, base_dir=base_dir, origin=record.origin,
                                               fresh=True)
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CompressError(f"{record.origin}: {path} is not a readable safetensors file ({exc}); delete it so its "
                            "stage runs again") from exc
    from compress.prune.mechanics import mask_keys

    masks = {k: state[k] for k in mask_keys(state)}
    if masks:
        from torch.nn.utils import prune as tprune

        for key, mask in masks.items():
            owner, _, name = key.rpartition(".")
            tprune.custom_from_mask(model.get_submodule(owner), name[: -len("_mask")], mask)
    elif record.pruned:
        from compress.prune.mechanics import shrink_to

        shrink_to(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CompressError(f"{record.origin}: {path} does not fit the model it was written for ({exc}); delete it "
                            "so its stage runs again") from exc
    return model.eval()
