"""The one quantize function: ONNX Runtime int8 (static QDQ with calibration, or dynamic) or fp16 for any model
ORT can quantize that way, with any inputs (feeds by name), gated on whatever the caller's Gate measures (the task's
figure, the user's metric, agreement with fp32), and a final pick by measured latency, so that a slower int8 model
is never shipped just because it is int8. The pipeline's quantize stage and `compress quantize` both call it.

Flow: pre-process (shape inference + ORT optimisation) -> first attempt with the configured settings (static: the
mean of per-sample ranges, biases corrected for each layer's mean shift, graph outputs left in float: what NNCF does
by default) -> if the drop exceeds the budget, cheaper remedies in order (other calibration methods, per-channel
flipped, the weighted ops alone, dynamic int8 on a MatMul/Gemm graph, then the most sensitive nodes kept in float,
1, 2, 4, ... of them, the first few ordered by the gate itself)
-> latency of the float model and of every attempt through the project's harness -> `final` is the fastest model
that meets the budget, int8 only when it is at least MIN_SPEEDUP faster at 99% confidence (paired).
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from compress.bench.config import PICK_PROFILE, BenchSettings
from compress.errors import CompressError, first_line
from compress.onnx.graph import model_bytes
from compress.onnx.skeleton import graph_of
from compress.quantize import attempts as qa
from compress.quantize import prepare as prep
from compress.quantize import timing
from compress.quantize.config import FP16_PROVIDERS, QuantizeConfig
from compress.quantize.gate import Gate
from compress.quantize.lean import release, scratch_in
from compress.quantize.reduced import is_reduced, nothing_to_quantize
from compress.quantize.timing import MIN_SPEEDUP, pick_final

log = logging.getLogger(__name__)


def quantize(
    onnx_path: Path,
    out_dir: Path,
    cfg: QuantizeConfig,
    *,
    gate: Gate,
    calibration: Sequence[dict[str, np.ndarray]] | None,
    feed: Callable[[int], dict[str, np.ndarray]],
    providers: Sequence[str],
    batch_sizes: Sequence[int],
    threads: int = 1,
    progress: bool = True,
    profile: BenchSettings = PICK_PROFILE,
    provider_options: dict[str, dict[str, str]] | None = None,
    qat: Callable[[Path, Path], dict[str, Any]] | None = None,
    dynamic_remedy: bool = True,
) -> dict[str, Any]:
    """Quantize `onnx_path` into `out_dir`, gate every attempt, and pick float or quantized by latency.

    `gate` scores a model (compress.quantize.gate); `calibration` is a list of input feeds (batches, by input name)
    for static mode and the sensitivity ranking; `feed(batch)` gives the inputs latency is timed on.
    Returns {"attempts": [{"name", "settings", "path", "figures", "score", "drop", "bytes", "latency" (None but for
    the accepted attempt), "accepted", "reason"} (with "accuracy" and "accuracy_drop" when the gate is on
    accuracy)], "float": {"path", "figures", "score", "bytes", "latency"}, "gate": what it measured, "chosen": path
    of the quantized model that met the budget or None, "final": "float" | "quantized", "why": one sentence, "pick":
    details}. `latency` is {"rows": harness rows, "unavailable": [{"provider", "reason"}]}. When nothing meets the
    budget, chosen is None and final is "float"; the caller decides whether that fails the run. The float model and
    the accepted attempt are timed once, together (paired: each model's row comes from the same alternating
    blocks, without the reference workload's fields), so `profile` defaults to a lighter one than a benchmark row's;
    with no accepted attempt the float model is timed alone.

    `dynamic_remedy`: a static search on a MatMul/Gemm graph tries dynamic int8 last (attempts.DYNAMIC_WHY); off
    where the model goes on to a target that runs static int8 only (QNN's HTP; QAT never tries it).

    mode = 'qat': the static attempts, then `qat(ptq_path, out_path)` (compress.qat.train_qat), gated as attempt
    "qat"; compress.qat.pick.pick_quantized decides which of the two is the quantized candidate.
    """
    from compress.bench.environment import int8_isa, u8s8_saturates

    mode, cfg, isa = cfg.mode, _post_training(cfg, qat), int8_isa()
    # ORT's quantization tools log through the root logger, into the terminal; their scratch copies go beside the output
    with prep.quiet_onnx_runtime(), scratch_in(Path(out_dir)):
        search = _Search.start(Path(onnx_path), Path(out_dir), cfg, gate, calibration, providers, batch_sizes)
        accepted = search.run(search.plan(mode, dynamic_remedy, u8s8_saturates(isa)), mode, progress)
        accepted, qat_note = search.trained(accepted, qat) if mode == "qat" else (accepted, None)

    settings = profile.with_options(provider_options)

    def measure(path: Path) -> dict[str, Any]:
        return timing.latency(path, search.providers, batch_sizes, threads, feed, settings)

    paired: list[dict[str, Any]] = []
    if accepted is None:
        float_latency = measure(search.onnx_path)
    else:  # the float model and the candidate timed once, together: the pick's ratio and both p50s
        paired, float_latency, accepted["latency"] = timing.timed_together(
            search.onnx_path, Path(accepted["path"]), search.providers, list(batch_sizes), threads, feed, settings,
            threshold=1.0 / MIN_SPEEDUP)
    for rec in search.attempts:  # only a model that met the budget can ship: timing the others is wasted time
        if rec is not accepted and rec.get("side_by_side"):  # (QAT and the PTQ it came from are shown side by side)
            rec["latency"] = measure(Path(rec["path"]))
    if qat_note is not None:
        _time_qat(search.attempts, qat_note, search.providers, batch_sizes, threads, feed, settings)
    result: dict[str, Any] = {
        "mode": mode, "qat": qat_note, "preprocess": search.preprocess_note, "cpu_int8": _cpu_note(isa),
        "warnings": search.warnings, "outliers": [{"tensor": n, "ratio": r} for n, r in search.outliers],
        "gate": gate.to_json(), "attempts": search.attempts,
        "float": _named({"path": str(search.onnx_path), "figures": search.float_figures, "score": search.float_score,
                         "bytes": model_bytes(search.onnx_path), "latency": float_latency}, gate)}
    if accepted is None:
        result.update(chosen=None, final="float", pick=None, why=_none_met(search))
        return result
    chosen = search.out_dir / f"model-{'fp16' if cfg.mode == 'fp16' else 'int8'}.onnx"
    shutil.copyfile(accepted["path"], chosen)
    decision = pick_final(float_latency["rows"], accepted["latency"]["rows"], prefer_quantized=cfg.pick == "quantized",
                          paired=paired, sizes=(result["float"]["bytes"], accepted.get("bytes")))
    why = decision["why"] if qat_note is None else f"{qat_note['why']}; {decision['why']}"
    result.update(chosen=str(chosen), final=decision["final"], why=why, pick=decision,
                  accepted_attempt=accepted["name"], accepted_mode=accepted["settings"]["mode"])
    return result


def quantize_arrays(onnx_path: Path, out_dir: Path, cfg: QuantizeConfig, *, calib_x: np.ndarray | None,
                    val_x: np.ndarray, val_y: np.ndarray, **kwargs: Any) -> dict[str, Any]:
    """`quantize` for a one-input classifier on arrays (scripts, benchmarks): the accuracy gate on (val_x, val_y),
    calibration batches of `calib_x`, latency on rows of val_x."""
    from compress.bench.inputs import rows_of
    from compress.onnx.graph import single_input
    from compress.quantize.gate import accuracy_gate

    name = single_input(Path(onnx_path), what="quantize")[0]

    def feed(batch: int) -> dict[str, np.ndarray]:
        return {name: rows_of(val_x, batch)}

    gate = accuracy_gate({name: val_x}, val_y, cfg.max_accuracy_drop, key="quantize.max_accuracy_drop",
                         source=f"{len(val_y)} validation samples")
    calibration = qa.batched({name: calib_x}, cfg.calibration_batch) if calib_x is not None else None
    return quantize(onnx_path, out_dir, cfg, gate=gate, calibration=calibration, feed=feed, **kwargs)


def _none_met(search: "_Search") -> str:
    """Why the float model stays when no quantized model met the budget."""
    gate, tried = search.gate, len(search.attempts)
    nothing = nothing_to_quantize(search.attempts, search.onnx_path, search.excluded, search.base)
    return (f"nothing could be quantized: {nothing}; keeping the float model" if nothing else
            f"no quantized model met the {gate.metric.name} budget of {qa.shown_drop(gate, gate.budget)} after "
            f"{tried} attempt{'s' if tried != 1 else ''} (best drop {qa.best_drop(search.attempts, gate)}"
            f"{qa.budget_that_takes_it(search.attempts, gate)}); keeping the float model")


def _cap_said(path: Path, source: Path, cfg: QuantizeConfig) -> str | None:
    """Say in one line when cfg.max_memory_mb is below what quantizing the model at `path` (the user's `source`, or
    its pre-processed copy) holds of its weights anyway (compress.quantize.lean.cap_warning); the line, if said."""
    from compress.quantize.lean import cap_warning

    line = cap_warning(model_bytes(path), cfg.max_memory_mb, source.name)
    if line:
        log.warning("%s", line)
    return line


def _post_training(cfg: QuantizeConfig, qat: Any) -> QuantizeConfig:
    """The settings post-training quantization runs with: mode = 'qat' runs 'static' first (its graph is where QAT
    starts), and needs the pipeline's trainer."""
    if cfg.mode != "qat":
        return cfg
    if qat is None:
        raise CompressError("quantize.mode: 'qat' trains against the teacher, which only a pipeline has; use "
                            "'static' here, or mode = 'qat' in a pipeline's [quantize]")
    return cfg.model_copy(update={"mode": "static"})


def _time_qat(attempts: list[dict[str, Any]], note: dict[str, Any], providers: list[str], batch_sizes: Sequence[int],
              threads: int, feed: Callable[[int], dict[str, np.ndarray]], settings: Any) -> None:
    """QAT against the PTQ graph it started from, timed paired into note["paired"]: the same graph with other
    values runs the same kernels, so the same speed (within noise)."""
    rows = [a for a in attempts if a.get("side_by_side")]
    if len(rows) != 2:
        return
    if (rows[-1].get("qat") or {}).get("best_epoch") == 0:
        note["paired"] = []  # no epoch beat the post-training values, which it holds: the same model, not timed
        return
    ptq, qat = (Path(a["path"]) for a in rows)
    note["paired"] = timing.paired_latency(ptq, qat, providers, list(batch_sizes), threads, feed, settings)


def _named(record: dict[str, Any], gate: Gate) -> dict[str, Any]:
    """`accuracy` / `accuracy_drop` beside `score` / `drop` when the gate is on accuracy (the report's names)."""
    if gate.metric.name == "accuracy":
        record["accuracy"] = record.get("score")
        if "drop" in record:
            record["accuracy_drop"] = record["drop"]
    return record


@dataclass
class _Search:
    """The float model's figures and the attempts so far; `run` tries the plan, then the keep-in-float remedy."""

    onnx_path: Path
    out_dir: Path
    cfg: QuantizeConfig
    gate: Gate
    providers: list[str]
    calib: list[dict[str, np.ndarray]] | None
    base: Path
    preprocess_note: str
    float_figures: dict[str, float]
    float_score: float
    excluded: list[str] = field(default_factory=list)
    """Nodes the user keeps in float in every attempt ([quantize] exclude, --exclude)."""
    cap: int | None = None
    """Bytes calibration may hold (compress.quantize.sensitivity.memory_cap)."""
    outliers: list[tuple[str, float]] = field(default_factory=list)
    """(tensor, ratio): activations a few channels' range would crush at 8 bits, float in every static attempt
    (compress.quantize.outliers)."""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Lines said before the attempts (a memory cap below the model's own copies: _cap_said)."""

    @classmethod
    def start(cls, onnx_path: Path, out_dir: Path, cfg: QuantizeConfig, gate: Gate,
              calibration: Sequence[dict[str, np.ndarray]] | None, providers: Sequence[str],
              batch_sizes: Sequence[int]) -> "_Search":
        """Check the inputs, score the float model, pre-process it."""
        from compress.bench.providers import resolve_provider

        if not onnx_path.is_file():
            raise CompressError(f"{onnx_path}: no such model; run the export stage first")
        if not batch_sizes or any(b < 1 for b in batch_sizes):
            raise CompressError(f"benchmark.batch_sizes: expected positive integers, got {list(batch_sizes)!r}")
        ort_providers = [resolve_provider(p) for p in providers] or ["CPUExecutionProvider"]
        if cfg.mode == "fp16" and cfg.pick == "quantized" and not FP16_PROVIDERS.intersection(ort_providers):
            raise CompressError(
                f"quantize.mode: 'fp16' with pick = 'quantized' needs a GPU provider (cuda, tensorrt, dml, coreml), "
                f"got {list(providers)!r}; add one to benchmark.providers (--provider) or use mode = 'static' or "
                "'dynamic' (--mode)")
        calib = list(calibration) if calibration else None
        if cfg.mode == "static" and not calib:
            raise CompressError("quantize.mode: 'static' needs calibration samples from the training data, got none; "
                                "provide training data in [data] or use mode = 'dynamic'")
        if calib:
            qa.check_feeds(onnx_path, calib[0], "calibration")
        prep.check_exclude(onnx_path, cfg.exclude)
        said = _cap_said(onnx_path, onnx_path, cfg)  # the weights in the file, before any work
        out_dir.mkdir(parents=True, exist_ok=True)
        figures = gate.score(onnx_path)
        release()  # the float model's session is gone: its pages go before pre-processing loads the model again
        base = out_dir / "preprocessed.onnx"
        note = prep.preprocess(onnx_path, base, cfg.mode)
        release()
        if not said:  # the weights the attempts read: a model-zoo graph computes its own from a 4 KB file
            said = _cap_said(base, onnx_path, cfg)
        excluded = prep.excluded_nodes(base, cfg.exclude, onnx_path)
        if excluded:
            note += f"; kept in float as asked: {', '.join(excluded)}"
        from compress.quantize.outliers import for_search
        from compress.quantize.sensitivity import memory_cap

        found, kept = for_search(base, calib, cfg)
        return cls(onnx_path, out_dir, cfg, gate, ort_providers, calib, base, note + kept, figures,
                   figures[gate.metric.name], excluded, memory_cap(cfg.max_memory_mb), found,
                   warnings=[said] if said else [])

    def attempt(self, settings: dict[str, Any], why: str) -> dict[str, Any]:
        """Quantize once with `settings`; score it and judge it against the budget."""
        settings = {**settings, "nodes_to_exclude": list(dict.fromkeys([*self.excluded,
                                                                        *settings["nodes_to_exclude"]]))}
        if settings["mode"] == "static" and self.outliers:
            settings["float_activations"] = [name for name, _ in self.outliers]
        name = qa.attempt_name(len(self.attempts) + 1, settings)
        path = self.out_dir / f"{name}.onnx"
        record: dict[str, Any] = {"name": name, "settings": settings, "path": str(path), "why_tried": why}
        started = time.perf_counter()
        try:
            calibrated = qa.quantize_once(self.base, path, settings, self.calib, cap=self.cap)
            if calibrated:
                record["calibration"] = calibrated
        except CompressError:
            raise
        except Exception as exc:  # ORT rejects some op/type combinations; that attempt fails, the next may not
            record.update(figures=None, score=None, drop=None, bytes=None, latency=None, accepted=False,
                          reason=f"failed: {first_line(exc)}", quantized=False,
                          seconds=round(time.perf_counter() - started, 2))
            self.attempts.append(_named(record, self.gate))
            return record
        finally:
            release()  # what the quantizer freed is not counted again under the gate's run
        record = self.judged(record, path)
        record["seconds"] = round(time.perf_counter() - started, 2)  # quantized and scored: where a run's time went
        return record

    def judged(self, record: dict[str, Any], path: Path) -> dict[str, Any]:
        """`record` with the gate's figures of the model at `path` and its verdict; appended to the attempts."""
        settings = record["settings"]
        try:
            figures = self.gate.score(path)
        except Exception as exc:  # the attempt's failure (ORT cannot load or run what its quantizer wrote), not the
            # user's model's: that one the gate ran first; the line names the attempt's file, which is the record's
            record.update(figures=None, score=None, drop=None, bytes=None, latency=None, accepted=False,
                          reason=f"failed: {first_line(exc).removeprefix(f'{path}: ')}", quantized=False)
        else:
            score = figures[self.gate.metric.name]
            drop, reduced = self.gate.drop(self.float_score, score), is_reduced(path, settings["mode"])
            ok, reason = qa.verdict(self.gate, drop) if reduced else (False, "nothing computes in fewer bits")
            if record.get("calibration"):
                reason += f"; {record['calibration']}"
            record.update(figures=figures, score=score, drop=drop, bytes=model_bytes(path), latency=None,
                          accepted=ok, reason=reason, quantized=reduced)
        self.attempts.append(_named(record, self.gate))
        return record

    def trained(self, accepted: dict[str, Any] | None, qat: Callable[[Path, Path], dict[str, Any]]) \
            -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Quantization-aware training from the accepted attempt (else the one with the smallest drop), gated as
        attempt "qat"; returns the quantized candidate (compress.qat.pick) and what QAT did."""
        from compress.qat.pick import pick_quantized

        done = [a for a in self.attempts if a.get("quantized") and a["score"] is not None]
        source = accepted or min(done, key=lambda a: a["drop"], default=None)
        if source is None:
            return None, {"why": "QAT skipped: post-training quantization wrote no quantized model to start from"}
        started = time.perf_counter()
        info = qat(Path(source["path"]), self.out_dir / "qat.onnx")
        record = {"name": "qat", "settings": {**source["settings"], "mode": "qat", "from": source["name"]},
                  "path": info["path"], "qat": {k: v for k, v in info.items() if k != "path"},
                  "why_tried": f"quantization-aware distillation from {source['name']}"}
        record = self.judged(record, Path(info["path"]))
        record["seconds"] = round(time.perf_counter() - started, 2)  # trained and scored: the costliest attempt
        source["side_by_side"] = record["side_by_side"] = True
        if not info["parity"]["ok"]:
            record["reason"] += f"; parity: {info['parity']['what']}"
        return pick_quantized(accepted, record, self.gate)

    def plan(self, mode: str, dynamic_remedy: bool, saturates: bool) -> list[tuple[dict[str, Any], str]]:
        """qa.remedy_plan, with dynamic int8 last for a static search (`mode`, not QAT) on a MatMul/Gemm graph (and
        then with the layers that write the outlier check's activations in float)."""
        graph = graph_of(self.base).graph
        from compress.quantize.dynamic import dynamic_remedy_runs, outlier_layers

        dynamic = dynamic_remedy_runs(mode, self.cfg, graph, npu=not dynamic_remedy)
        layers = outlier_layers(graph, [n for n, _ in self.outliers]) if dynamic or mode == "dynamic" else []
        return qa.remedy_plan(self.cfg, saturates=saturates, matmuls_only=dynamic, outlier_layers=layers)

    def run(self, plan: list[tuple[dict[str, Any], str]], mode: str, progress: bool) -> dict[str, Any] | None:
        """The first attempt that meets the budget, trying remedies in order when `fallback` is on; a progress bar
        counts the attempts (qa.step)."""
        from compress.progress import progress as progress_bar

        cfg = self.cfg
        bar = progress_bar(total=len(plan), desc=f"quantize ({mode})", unit="attempt", enabled=progress)
        try:
            for settings, why in plan:
                if settings.get("calibration_method", "") is None:  # the flip reuses the most accurate method so far
                    settings = {**settings, "calibration_method": qa.best_method(
                        self.attempts, cfg.calibration_method, self.gate)}
                rec = self.attempt(settings, why)
                # the quantizer found nothing it could take: other ranges or weights change nothing
                nothing = rec["score"] is not None and not rec["quantized"] and not settings["nodes_to_exclude"]
                done = rec["accepted"] or not cfg.fallback or nothing
                qa.step(bar, last=done)
                if done:
                    return rec if rec["accepted"] else None
            if cfg.fallback and cfg.max_float_nodes > 0 and self.calib:
                return qa.exclusion_remedy(self.attempts, self.attempt, self.base, self.calib, cfg, bar, self.gate)
            return None
        finally:
            bar.close()


def attempts_table(attempts: list[dict[str, Any]], gate: dict[str, Any] | None = None) -> list[str]:
    """The attempts as a markdown table (report.md's quantize section, `compress quantize`'s summary)."""
    name = ((gate or {}).get("metric") or {}).get("name", "accuracy")
    share = name in qa.FRACTIONS
    unit = "points" if share else "absolute"
    lines = [f"| attempt | why tried | {name} | drop ({unit}) | size | time | accepted | note |",
             "|---|---|---|---|---|---|---|---|"]
    for a in attempts:
        acc = "-" if a["score"] is None else (f"{100 * a['score']:.2f}%" if share else f"{a['score']:.4f}")
        drop = "-" if a.get("drop") is None else (f"{100 * a['drop']:.2f}" if share else f"{a['drop']:.4f}")
        size = "-" if not a.get("bytes") else f"{a['bytes'] / 1024:.1f} KB"
        took = f"{a['seconds']:.1f} s" if a.get("seconds") is not None else "-"
        lines.append(f"| {a['name']} | {a.get('why_tried', '')} | {acc} | {drop} | {size} | {took} | "
                     f"{'yes' if a['accepted'] else 'no'} | {a.get('reason') or ''} |")
    return lines


def _cpu_note(isa: list[str]) -> str:
    """What this CPU means for int8, as ONNX Runtime's quantization docs put it."""
    from compress.bench.environment import u8s8_saturates

    shown = ", ".join(isa) or "none found"
    if u8s8_saturates(isa):
        return (f"int8 instruction sets: {shown}; no VNNI, so u8s8 products can saturate: reduce_range is among "
                "the remedies")
    return f"int8 instruction sets: {shown}; u8s8 without saturation, so full 8-bit weights (reduce_range off)"
