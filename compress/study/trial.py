"""One trial: the pipeline file with the trial's values, on a short budget, run through the ordinary runner (the
teacher comes from the study's shared stage store), then read back as the figures the study needs.

A trial's file differs from the user's in what makes it cheap and measured where the objective says: [distill]
epochs = short_epochs, no labels-only control, the final model alone benchmarked on the target with the harness's
pick profile, and the edge stage only when placement on QNN is a constraint (the QNN flow itself measures it).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from compress.study.config import SearchConfig
from compress.study.space import apply


@dataclass
class Outcome:
    """What a trial measured: the final model's validation metric, p50 on the target, bytes, and placement."""

    run_dir: str
    final: str | None = None
    onnx: str | None = None
    """The final model's ONNX file (absolute)."""
    metric: float | None = None
    metric_test: float | None = None
    p50_ms: float | None = None
    bytes: int | None = None
    refused: list[str] = field(default_factory=list)
    """Operators the all_nodes_on provider refused (empty when it took every node, or no such constraint)."""
    placement_checked: bool = False
    teacher: str | None = None
    """The teacher stage's status in this run: done (trained or loaded here), shared, cached."""
    early: bool = False
    """Not trained: the untrained architecture was already over the latency budget (p50_ms is its)."""
    seconds: float = 0.0
    ratio: float | None = None
    """With a relative budget: p50 over the hand-written model's, timed paired (p50_ms is then this ratio times the
    hand-written model's p50 the budget came from); alone_p50_ms is what the trial's own benchmark measured."""
    alone_p50_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def trial_raw(base: dict[str, Any], values: dict[str, Any], scfg: SearchConfig, out_dir: Path, *,
              short: bool) -> dict[str, Any]:
    """The pipeline dict of one trial (short) or one finalist (the file's own budget and benchmark)."""
    raw = apply(base, values)
    raw["pipeline"] = {**raw["pipeline"], "output_dir": str(out_dir)}
    export = dict(raw.get("export", {}))
    if scfg.all_nodes_on == "qnn":  # the QNN flow measures placement on HTP itself, in the edge stage
        export.update(ort_format=True, edge_targets=["qnn"], fixed_batch=export.get("fixed_batch") or 1)
    elif short:
        export.update(ort_format=False, edge_targets=[])
    raw["export"] = export
    if not short:
        return raw
    raw["distill"] = {**raw.get("distill", {}), "epochs": scfg.short_epochs, "control": False}
    if raw.get("prune") is not None:  # the recovery after each step short too: 3 x 10 epochs took 76 of 87 s a trial
        from compress.prune.schedule import PruneConfig

        prune = raw["prune"]
        steps = int(prune.get("steps", PruneConfig.model_fields["steps"].default))
        finetune = int(prune.get("finetune_epochs", PruneConfig.model_fields["finetune_epochs"].default))
        raw["prune"] = {**prune, "finetune_epochs": min(finetune, max(1, scfg.short_epochs // steps)),
                        "control": False}
    target = scfg.target
    bench = dict(raw.get("benchmark", {}))
    options = {k: v for k, v in (bench.get("provider_options") or {}).items() if k == target.provider}
    from compress.bench.config import PICK_PROFILE

    bench.update(providers=[target.provider], batch_sizes=[target.batch], threads=[target.threads], models="final",
                 provider_options=options, warmup_runs=PICK_PROFILE.warmup_runs, min_runs=PICK_PROFILE.min_runs,
                 min_seconds=PICK_PROFILE.min_seconds, repetitions=PICK_PROFILE.repetitions)
    if target.seq is not None or bench.get("seq_lengths"):  # token inputs: one sequence length, the one the
        # finalists' round and the latency-first check time too (a key other inputs refuse: set only when given)
        bench["seq_lengths"] = [target.seq or bench["seq_lengths"][0]]
    raw["benchmark"] = bench
    return raw


def run_dir_for(root: Path, number: int) -> Path:
    """A trial's run directory, named by its number (a retried trial passes the number of the one it repeats, and
    resumes from the stages that one finished); two workers never share one."""
    return root / f"{number:04d}"


def architecture_key(raw: dict[str, Any]) -> str:
    """What sets a trial's untrained latency (compress.study.trial.latency_first): the data (its shapes), the
    student (and the teacher a student cut from it starts from), the export, the quantize settings (they shape the
    int8 graph), a prune step (latency_first then measures nothing) and the eager attention that attention KD
    builds; not the training settings, seed or run folder."""
    import json

    parts = {k: raw.get(k) for k in ("data", "teacher", "student", "export", "quantize", "prune")}
    eager = ((raw.get("distill") or {}).get("attention_weight") or 0) > 0  # compress.families.spec_options
    return json.dumps({**parts, "eager": eager}, sort_keys=True, default=str)


def latency_first(raw: dict[str, Any], source: Path, scfg: SearchConfig, reference: dict[str, Any] | None = None,
                  feeds: dict[str, Any] | None = None) -> float | None:
    """p50 on the target of the trial's student before any training (the faster of float and, when the trial
    quantizes, int8): latency does not depend on the weights, so an architecture over the budget need not be trained
    to be known infeasible. None where the architecture is settled by training (a [prune] step, a layer cut).
    With `reference` (a relative budget's hand-written model, {"onnx", "p50_ms"}), timed paired with it as the
    trials are: its ratio times the reference's p50 (alone, one architecture measured 0.059 and 0.082 ms)."""
    import tempfile

    import torch

    from compress.bench.config import PICK_PROFILE
    from compress.bench.harness import measure
    from compress.config import _check_files, check_before_training, parse_config
    from compress.families import family_of, spec_options
    from compress.onnx.export import export_onnx
    from compress.records import ModelSpec
    from compress.tasks.base import output_names_of

    cfg = parse_config(raw, source)
    _check_files(cfg)
    if cfg.prune is not None or cfg.student.from_teacher is not None:
        return None
    data = check_before_training(cfg)
    spec = ModelSpec(cfg.student.model, dict(cfg.student.kwargs), spec_options(cfg, cfg.student))
    torch.manual_seed(cfg.pipeline.seed)
    model = family_of(spec.model).build(spec, data=data, base_dir=cfg.base_dir, origin=f"{source}: student").eval()
    example = data.example(2)
    args = data.inputs.export_args(example)
    with torch.no_grad():
        out = model(*args[:-1], **args[-1]) if args and isinstance(args[-1], dict) else model(*args)
    t = scfg.target
    seq = target_seq(data, cfg, scfg)
    with tempfile.TemporaryDirectory(prefix="compress-latency-") as tmp:
        path = export_onnx(model, example, Path(tmp) / "student.onnx", opset=cfg.export.opset,
                           exporter=cfg.export.exporter, inputs=data.inputs,
                           output_names=output_names_of(out, "logits"))
        feed = data.inputs.bench_feed(data, t.batch, seq)
        feeds = {} if feeds is None else feeds
        feeds.setdefault("feed", feed)  # the study's timing inputs: paired_ratio need not build them again

        def timed(model: Path) -> float:
            ratio = None if reference is None else paired_ratio(Path(reference["onnx"]), model, raw, source, scfg,
                                                                feeds)
            if ratio is not None:
                return ratio * reference["p50_ms"]
            return measure(model, t.provider, t.batch, t.threads, inputs=feed, settings=PICK_PROFILE)["p50_ms"]

        p50 = timed(path)
        if cfg.quantize is not None and cfg.quantize.mode in ("static", "dynamic", "qat"):
            # the quantize stage ships the faster of float and int8: time the int8 model too (same kernels whatever
            # the weights; ranges from a few real inputs)
            from compress.quantize.attempts import quantize_once

            calib = [data.inputs.as_feed(data.example(8))] if cfg.quantize.mode != "dynamic" else None
            for i, settings in enumerate(_shippable(cfg, path)):
                quantized = Path(tmp) / f"student.int8-{i}.onnx"
                quantize_once(path, quantized, {**settings, "bias_correction": False}, calib)
                p50 = min(p50, timed(quantized))
    return float(p50)


def _shippable(cfg: Any, path: Path) -> list[dict[str, Any]]:
    """The quantize settings whose model the stage may ship, by kernels: the configured ones, and for a static search
    on a graph whose weights are all MatMul or Gemm its dynamic int8 remedy too (all-MiniLM-L6-v2: 0.43x fp32's p50
    against static's 0.49x), unless the remedy is off or the NPU is a target (compress.stages.quantize). QAT ships
    its static QDQ graph's kernels (its post-training attempt's, trained), never dynamic."""
    from compress.quantize.attempts import remedy_plan
    from compress.quantize.dynamic import dynamic_remedy_runs
    from compress.onnx.skeleton import graph_of

    q = cfg.quantize if cfg.quantize.mode != "qat" else cfg.quantize.model_copy(update={"mode": "static"})
    dynamic = dynamic_remedy_runs(cfg.quantize.mode, q, graph_of(path).graph, npu="qnn" in cfg.export.edge_targets)
    plan = remedy_plan(q, matmuls_only=dynamic)
    return [plan[0][0], *(s for s, _ in plan[-1:] if dynamic)]


@contextlib.contextmanager
def epoch_reports(report: Callable[[int, float], None] | None) -> Iterator[None]:
    """While running, hand the distilled student's epoch-by-epoch validation metric to `report` (the pruner)."""
    from compress.train.loop import EPOCH_HOOK

    hook = None if report is None else (lambda desc, epoch, score: report(epoch, score) if desc == "student" else None)
    token = EPOCH_HOOK.set(hook)
    try:
        yield
    finally:
        EPOCH_HOOK.reset(token)


def run_trial(raw: dict[str, Any], source: Path, scfg: SearchConfig, store: Path, *,
              report: Callable[[int, float], None] | None = None, progress: bool = False) -> tuple[Outcome, dict]:
    """Run one pipeline dict; its outcome and report. Errors (CompressError, a gate failing, a pruner's stop)
    propagate: the study records them."""
    from compress.config import _check_files, parse_config
    from compress.runner import run_pipeline

    cfg = parse_config(raw, source)
    _check_files(cfg)
    started = time.perf_counter()
    with epoch_reports(report):
        result = run_pipeline(cfg, progress=progress, store=store)
    outcome = outcome_of(result, cfg.run_dir, scfg)
    outcome.seconds = round(time.perf_counter() - started, 2)
    return outcome, result


def outcome_of(report: dict[str, Any], run_dir: Path, scfg: SearchConfig) -> Outcome:
    """The figures of a run's final model: validation metric (what a choice may see), p50 on the target, bytes."""
    from compress.bench.providers import resolve_provider
    from compress.report import figure

    final = next(m for m in report["models"] if m["name"] == report["final"])
    target = scfg.target
    provider = resolve_provider(target.provider)
    rows = [r for r in final.get("latency") or [] if r["provider"] == provider and r["batch"] == target.batch
            and r["threads"] == target.threads and (target.seq is None or r.get("seq_length") == target.seq)]
    teacher = next((s["status"] for s in report["stages"] if s["name"] == "teacher"), None)
    out = Outcome(run_dir=str(run_dir), final=final["name"],
                  onnx=str(Path(run_dir) / final["path"]) if final.get("path") else None,
                  metric=figure(final, report, "_val"),
                  metric_test=figure(final, report), p50_ms=rows[0]["p50_ms"] if rows else None,
                  bytes=final.get("bytes"), teacher=teacher)
    if scfg.all_nodes_on is not None:
        out.refused, out.placement_checked = refused_on(scfg.all_nodes_on, report, run_dir, final, rows), True
    return out


def refused_on(provider: str, report: dict[str, Any], run_dir: Path, final: dict[str, Any],
               rows: list[dict[str, Any]]) -> list[str]:
    """The operators `provider` did not take, as the provider itself reported them: QNN's edge flow (its refusals,
    or the compile error), else ORT's node placement log (the benchmark row's, or a fresh audit)."""
    from compress.bench.providers import resolve_provider

    if provider == "qnn" or resolve_provider(provider) == "QNNExecutionProvider":
        qnn = (report.get("edge") or {}).get("qnn") or {}
        if not qnn.get("installed", False):
            return [f"(QNN not installed: {qnn.get('reason', 'no edge section')})"]
        placed = qnn.get("placement") or {}
        refused = sorted({r.get("op_type", "?") for r in placed.get("refused") or []})
        if placed.get("compile_error"):
            refused.append(f"(compile error: {placed['compile_error']})")
        if not refused and not qnn.get("runs_without_fallback", True):
            refused.append(f"(no session without CPU fallback: {qnn.get('fallback_error')})")
        return refused
    placed = next((r["placement"] for r in rows if r.get("placement", {}).get("provider") ==
                   resolve_provider(provider)), None)
    if placed is None:
        from compress.bench.placement import placement

        placed = placement(Path(run_dir) / final["path"], resolve_provider(provider))
    return sorted(set(placed.get("cpu_nodes") or [])) if placed.get("nodes_on_cpu") else []


def paired_ratio(reference: Path, candidate: Path, raw: dict[str, Any], source: Path, scfg: SearchConfig,
                 feeds: dict[str, Any]) -> float | None:
    """The candidate's p50 over the reference model's on the target, timed paired (alternating blocks in one
    process, compress.bench.paired), on the inputs the trials are timed on (`feeds` remembers them per study);
    None when the pair cannot be timed (the reason is the trial's own benchmark's to report)."""
    from compress.bench.config import PICK_PROFILE
    from compress.bench.paired import paired_bench

    t = scfg.target
    if "feed" not in feeds:
        from compress.config import check_before_training, parse_config

        cfg = parse_config(raw, source)
        data = check_before_training(cfg)
        feeds["feed"] = data.inputs.bench_feed(data, t.batch, target_seq(data, cfg, scfg))
    try:
        return float(paired_bench(reference, candidate, t.provider, t.batch, t.threads, PICK_PROFILE,
                                  inputs=feeds["feed"])["ratio"])
    except Exception:  # noqa: BLE001 - e.g. a provider that cannot run one of them: the trial keeps its own p50
        return None


def time_on_target(onnx: Path, cfg: Any, scfg: SearchConfig) -> float | None:
    """p50 (ms) of a model alone on the target, with the pick profile and the study's timing inputs (the trials'
    own benchmark settings); None when the target cannot run it."""
    from compress.bench.config import PICK_PROFILE
    from compress.bench.harness import measure
    from compress.config import check_before_training

    t = scfg.target
    data = check_before_training(cfg)
    feed = data.inputs.bench_feed(data, t.batch, target_seq(data, cfg, scfg))
    try:
        return float(measure(onnx, t.provider, t.batch, t.threads, inputs=feed, settings=PICK_PROFILE)["p50_ms"])
    except Exception:  # noqa: BLE001 - e.g. a provider missing here: the caller says what that means for it
        return None


def target_seq(data: Any, cfg: Any, scfg: SearchConfig) -> int:
    """The one sequence length token inputs are timed at in a study (the latency-first check, the trials' pairing,
    the finalists' round): the target's, else the file's first [benchmark] seq_lengths."""
    return data.inputs.seq_lengths((scfg.target.seq or cfg.benchmark.seq_lengths[0],))[0]
