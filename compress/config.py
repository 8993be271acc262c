"""The pipeline file: typed, validated sections, checked before any work starts.

Errors read `pipelines/x.toml: quantize.mode: expected 'static', 'dynamic' or 'fp16', got 'int4'`; TOML syntax errors
carry the line and column. Unknown keys are errors (with a did-you-mean), never silently ignored.
"""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from compress.bench.config import BenchmarkConfig
from compress.data import DataConfig
from compress.errors import CompressError
from compress.onnx.export import ExportConfig
from compress.prune.schedule import PruneConfig
from compress.quantize.config import QuantizeConfig
from compress.study.config import SearchConfig
from compress.section import Section
from compress.tasks.metric import EvaluateConfig
from compress.train.config import DistillConfig, TrainConfig

log = logging.getLogger("compress")

MAX_CONFIG_BYTES = 1_000_000  # a pipeline file is a few hundred bytes; anything this large is a mistake


class PipelineSection(Section):
    """[pipeline]: the run's identity and where it writes."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$",
                      description="Run name: letters, digits, '.', '_' or '-'; used in report.json and paths.")
    output_dir: str | None = Field(None, description="Run directory, relative to base_dir; default runs/<name>.")
    base_dir: str | None = Field(None, description="Folder that relative paths (data, checkpoint, output_dir) and "
                                 "module:factory code resolve against, relative to this file; default: this file's "
                                 "folder (a search's best.toml points back to the original file's).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for the split, initialisation and batch order.")
    threads: int = Field(0, ge=0, le=1024, description="torch threads for training; 0 = torch's default.")


class ModelSection(Section):
    """A model: `builtin:NAME`, `package.module:factory` (the file's folder is searched first) or `hf:DIR`."""

    model: str = Field(min_length=1, description="builtin:cnn-large|cnn-small|mobilenet|mlp, module:factory, hf:DIR.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the factory. "
                                   "input_shape and num_classes are filled from the data when the factory takes them; "
                                   "a num_classes given here wins when it is at least the data's largest label + 1 "
                                   "(a teacher trained with classes the data never shows; the student then needs the "
                                   "same). "
                                   "For hf: models, settings of the folder's config.json to override (e.g. "
                                   "num_hidden_layers = 2, or hidden_size = 256 with num_attention_heads = 8 for a "
                                   "classifier; an embedding student keeps its teacher's width); the weights then "
                                   "start from scratch.")
    pooling: Literal["mean", "cls"] = Field("mean", description="hf: models, embedding task: the sentence embedding "
                                            "is the mean of the token states over the attention mask "
                                            "(sentence-transformers' default) or the [CLS] token's state.")

    @field_validator("model")
    @classmethod
    def _spec(cls, v: str | None) -> str | None:
        from compress.models import check_spec

        if v is not None:
            check_spec(v)
        return v


class TeacherSection(ModelSection):
    """[teacher]: the trained model to compress, from a checkpoint, or trained here by [teacher.train]."""

    checkpoint: str | None = Field(None, description="safetensors (preferred) or a torch file loadable with "
                                   "weights_only=True, relative to this file. Without it, [teacher.train] trains one.")
    checkpoint_key: str | None = Field(None, description="Entry of a checkpoint dict that holds the state_dict "
                                       "(e.g. 'ema_state'); by default 'state_dict', 'model_state_dict' and 'model' "
                                       "are tried, and a plain state_dict is taken as it is.")
    train: TrainConfig | None = Field(None, description="Training settings used when there is no checkpoint.")

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherSection":
        if self.checkpoint and self.train is not None:  # the checkpoint is loaded and [teacher.train] never read
            raise ValueError("give checkpoint (a trained teacher) or [teacher.train] (train one here), not both")
        return self


class FromTeacher(Section):
    """[student] from_teacher: a transformer student copied from its hf: teacher, keeping some encoder layers."""

    layers: tuple[int, ...] | None = Field(None, min_length=1, description="The teacher's encoder layers to keep, "
                                           "0-based, e.g. [0, 2, 5] (DistilBERT-style initialisation).")
    num_layers: int | None = Field(None, ge=1, description="Keep this many layers, chosen by compress: the first, the "
                                   "last and the rest evenly spaced between (measured better than every other "
                                   "layer on MiniLM).")

    @model_validator(mode="after")
    def _one(self) -> "FromTeacher":
        if (self.layers is None) == (self.num_layers is None):
            raise ValueError("give exactly one of layers = [...] or num_layers = N")
        return self


class StudentSection(ModelSection):
    """[student]: the small architecture to distil into."""

    model: str | None = Field(None, description="builtin:cnn-large|cnn-small|mobilenet|mlp, module:factory, "
                              "hf:DIR; omit it with from_teacher.")
    from_teacher: FromTeacher | None = Field(None, description="Cut the student from an hf: teacher: "
                                             "{ layers = [0, 2, 5] } or { num_layers = 3 }.")

    @model_validator(mode="after")
    def _model_or_cut(self) -> "StudentSection":
        if (self.model is None) == (self.from_teacher is None):
            raise ValueError("give either model = '...' or from_teacher = { ... }")
        return self


class PipelineConfig(Section):
    """The whole file. Optional sections ([prune], [quantize]) switch their stages on by being present."""

    pipeline: PipelineSection
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherSection
    student: StudentSection
    distill: DistillConfig = Field(default_factory=DistillConfig)
    prune: PruneConfig | None = None
    export: ExportConfig = Field(default_factory=ExportConfig)
    quantize: QuantizeConfig | None = None
    evaluate: EvaluateConfig | None = None
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    search: SearchConfig | None = Field(None, description="`compress search FILE` only: the study that starts "
                                        "from this pipeline (`compress run` ignores it).")

    # Set by load_config, not by the file.
    source_path: Path | None = Field(None, exclude=True)
    kind: Literal["pipeline"] = Field("pipeline", exclude=True)

    @property
    def base_dir(self) -> Path:
        # Absolute, so artifact paths stay valid whatever the working directory of a later step is.
        here = (self.source_path.parent if self.source_path else Path.cwd()).resolve()
        return (here / self.pipeline.base_dir).resolve() if self.pipeline.base_dir else here

    @property
    def run_dir(self) -> Path:
        out = Path(self.pipeline.output_dir) if self.pipeline.output_dir else Path("runs") / self.pipeline.name
        return out if out.is_absolute() else self.base_dir / out

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.base_dir / p


def as_config(source: "str | Path | dict | PipelineConfig") -> PipelineConfig:
    """A PipelineConfig from a TOML path, a dict shaped like the file (relative paths resolve against the working
    directory), or a PipelineConfig as it is."""
    if isinstance(source, PipelineConfig):
        return source
    if isinstance(source, dict):  # every message names it so: <dict> in the folder its relative paths resolve in
        return _loaded(source, Path.cwd() / "<dict>")
    return load_config(source)


_held: "contextvars.ContextVar[dict[str, Any] | None]" = contextvars.ContextVar("compress_held", default=None)
"""Inside `held()`: loaded data and tried exports, by what decides them (a ContextVar: threads do not share it)."""


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Inside the block, the data a pipeline names is loaded once, and the models of each architecture are
    trial-exported once: a search study runs every trial's pipeline in this process on the same data (a study whose
    data changed starts again), and reloading it cost each trial two loads (the detection demo's canvases: about 1.9 s
    each). Keys hold the digests of the user's code (an edited data or model module is read again); a python:
    dataset whose item reads differently twice (random state inside it) is loaded afresh each time, so every trial
    starts it from the same state."""
    token = _held.set(_held.get() if _held.get() is not None else {})
    try:
        yield
    finally:
        _held.reset(token)


def _check_edge_targets(cfg: PipelineConfig) -> None:
    """An edge target whose plugin this machine lacks is said before training, not last: one warning line (the run
    reports the target as not installed, exit 0), or under `[benchmark] strict` exit 2, as a missing provider is."""
    if "qnn" not in cfg.export.edge_targets:
        return
    from compress.edge.qnn import qnn_status

    status = qnn_status()
    if status["installed"]:
        return
    line = f"{cfg.source_path}: export.edge_targets: 'qnn' needs the onnxruntime-qnn plugin, {status['reason']}"
    if cfg.benchmark.strict:
        raise CompressError(f"{line} (benchmark.strict = true)")
    if line not in _said:  # once a process: a search checks every trial's pipeline
        _said.add(line)
        log.warning("warning: %s; the edge stage will report the target as not installed", line)


_said: set[str] = set()


def check_before_training(cfg: PipelineConfig, *, exports: bool = False) -> Any:
    """Every check that needs no training: the data loads, teacher and student build on it and their outputs fit
    the task, the teacher's checkpoint loads, the user's metric imports, and under `[benchmark] strict` every
    provider is installed. Returns the loaded data. `compress validate` runs exactly this; `compress run` runs it
    before the first stage.
    """
    from compress.bench.providers import check_available
    from compress.data import load_data
    from compress.families.checks import check_models

    check_available(cfg.benchmark.providers, strict=cfg.benchmark.strict,
                    origin=f"{cfg.source_path}: benchmark.providers")
    _check_edge_targets(cfg)
    memo = _held.get()
    key = None
    if memo is not None:
        from compress.cache import source_digest

        source = cfg.data.source
        code = source_digest(cfg.base_dir, source[len("python:"):]) if source.startswith("python:") else None
        key = f"data {cfg.data.model_dump_json()} {cfg.pipeline.seed} {cfg.base_dir} {cfg.teacher.model} {code}"
    data = None if key is None else memo.get(key)
    if data is None:
        data = load_data(cfg.data, seed=cfg.pipeline.seed, base_dir=cfg.base_dir,
                         origin=f"{cfg.source_path}: data.source", tokenizer=cfg.teacher.model,
                         cache_dir=cfg.run_dir / "tokens")
        if key is not None and data.steady:
            memo[key] = data
    check_models(cfg, data)
    if exports:  # `compress validate`; `compress run` tries them before the first stage that trains (runner)
        check_exports_once(cfg, data)
    return data


def check_exports_once(cfg: PipelineConfig, data: Any) -> None:
    """compress.families.checks.check_exports, skipped inside `held()` for models it has tried already."""
    from compress.families import family_of
    from compress.families.checks import check_exports

    memo = _held.get()
    if memo is None:
        check_exports(cfg, data)
        return
    sections = (cfg.data, cfg.teacher, cfg.student, cfg.export, cfg.quantize)
    specs = (cfg.teacher.model, cfg.student.model or cfg.teacher.model)
    key = f"exports {cfg.base_dir} " + " ".join(s.model_dump_json() if s is not None else "-" for s in sections) + \
        " ".join(str(family_of(spec).digest(spec, cfg.base_dir)) for spec in specs)
    if key not in memo:
        check_exports(cfg, data)
        memo[key] = True


def load_config(path: str | Path) -> PipelineConfig:
    """Read, parse and validate a pipeline file. Raises CompressError with one line on any problem.

    This checks the file alone; `check_before_training` adds what needs the data, the models and this machine.
    """
    import tomllib

    if not isinstance(path, (str, os.PathLike)):
        raise CompressError(f"expected the path of a pipeline .toml file, got {type(path).__name__} {path!r:.60}")
    path = Path(path)
    if path.is_dir():
        raise CompressError(f"{path}: is a folder; give the pipeline's .toml file")
    if not path.is_file():
        raise CompressError(f"{path}: file not found")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CompressError(f"{path}: {size} bytes is too large for a pipeline file (limit {MAX_CONFIG_BYTES})")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CompressError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CompressError(f"{path}: TOML syntax error: {exc}") from exc
    return _loaded(raw, path)


def _loaded(raw: dict, path: Path) -> PipelineConfig:
    """A pipeline file's dict (or one shaped like it) as a config, checked as a file is when it loads: its keys, the
    files it names, and QAT keys nothing reads."""
    cfg = parse_config(raw, path)
    _check_files(cfg)
    _warn_unused_qat(cfg)
    return cfg


def _warn_unused_qat(cfg: PipelineConfig) -> None:
    """One warning line for qat_* keys the file sets under a mode that does not train (they were ignored without a
    word). A warning, not a refusal: a search's trials and its best.toml carry the base file's keys under the mode a
    trial tried, and a file whose [search.space] tries quantize.mode is not warned at all."""
    q = cfg.quantize
    keys = sorted(k for k in q.model_fields_set if k.startswith("qat_")) if q is not None else []
    if not keys or q.mode == "qat" or (cfg.search is not None and "quantize.mode" in cfg.search.space):
        return
    log.warning("warning: %s: quantize.%s: only mode = 'qat' trains, and mode is %r, so %s ignored; set mode = "
                "'qat', or remove %s", cfg.source_path, ", quantize.".join(keys), q.mode,
                "it is" if len(keys) == 1 else "they are", "it" if len(keys) == 1 else "them")


def parse_config(raw: dict, path: Path) -> PipelineConfig:
    """Validate a parsed TOML dict; the first error becomes one line naming the dotted key."""
    from compress.fits import check_fits

    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise CompressError(f"{path}: {_describe(exc.errors()[0], raw)}") from None
    check_fits(cfg, path)
    return cfg.model_copy(update={"source_path": path})


def _describe(err: dict, raw: dict) -> str:
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-after", "function-before"))]
    key = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        tip = f"; did you mean {hint[0]!r}?" if hint else (f"; allowed: {', '.join(allowed)}" if allowed else "")
        return f"{key}: unknown key{tip}"
    if kind == "missing":
        return f"{key}: required key is missing"
    got = err.get("input")
    msg = err["msg"]
    if kind == "value_error":  # our validators' messages name the value themselves
        text = msg.removeprefix("Value error, ")
        field, sep, rest = text.partition(": ")
        if sep and field in _allowed_keys(loc):  # a section-level check that names its key: put it in the path
            return f"{'.'.join([*loc, field])}: {rest}"
        return f"{key}: {text}"
    if kind == "literal_error":
        expected = msg.replace("Input should be ", "")
        return f"{key}: expected {expected}, got {got!r}"
    if isinstance(got, dict):
        return f"{key}: {msg}"
    return f"{key}: {msg[0].lower() + msg[1:]}, got {got!r}"


def _allowed_keys(loc: list[str]) -> list[str]:
    model: Any = PipelineConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _section_type(field.annotation)
        if model is None:
            return []
    return [k for k, f in model.model_fields.items() if not f.exclude]


def _section_type(annotation: Any) -> Any:
    import typing

    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None


def _check_files(cfg: PipelineConfig) -> None:
    path = cfg.source_path
    _check_run_dir(cfg)
    if cfg.teacher.checkpoint is not None:
        ckpt = cfg.resolve(cfg.teacher.checkpoint)
        if not ckpt.is_file():
            raise CompressError(f"{path}: teacher.checkpoint: file not found: {ckpt}")
        from compress.models import MAX_CHECKPOINT_BYTES

        size = ckpt.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise CompressError(f"{path}: teacher.checkpoint: {ckpt} is {size} bytes, over the "
                                f"{MAX_CHECKPOINT_BYTES}-byte limit; is it the right file?")
    cfg.data.check_files(cfg.base_dir, f"{path}: data.source")
    from compress.families import family_of

    if cfg.teacher.checkpoint is None and cfg.teacher.train is None and not family_of(cfg.teacher.model).weights_in_spec:
        # an hf: folder holds its weights; a text classification head is checked with the data
        raise CompressError(f"{path}: teacher: give a checkpoint, or a [teacher.train] section to train one here")


def _check_run_dir(cfg: PipelineConfig) -> None:
    """The run directory is a folder, or can be made one: a file at its path (or at a folder above it) is refused
    now, naming the key, instead of an OSError once the first stage writes."""
    key = "pipeline.output_dir" if cfg.pipeline.output_dir else "pipeline.output_dir (default runs/<name>)"
    for folder in (cfg.run_dir, *cfg.run_dir.parents):
        if folder.is_dir():
            return
        if folder.exists() or folder.is_symlink():
            where = "" if folder == cfg.run_dir else f" (above the run directory {cfg.run_dir})"
            what = "a file" if folder.is_file() else "not a folder"
            raise CompressError(f"{cfg.source_path}: {key}: {folder}{where} is {what}; name a folder for the run "
                                "(it is made when missing), or move the file away")
