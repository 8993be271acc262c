"""The one ONNX Runtime benchmark harness: the pipeline's benchmark stage and `compress bench` both use it.

Method (why each piece is there, on noisy shared machines):
- warm-up runs first (allocations, caches, lazy kernels are not model time);
- then timed runs until both `min_runs` and `min_seconds` are met (short models get many samples, slow models
  still get a minimum count), timed with perf_counter_ns and the garbage collector off;
- `repetitions` independent repetitions, each on a fresh session; `bench_model` interleaves them across all
  (provider, batch, threads) configurations, so a burst of background load hits all rows a little instead of
  one row a lot;
- on CPU-side providers, model blocks alternate with blocks of a fixed reference workload (reference.py) and
  the row's `score` (stats.gate_score: fastest model block over fastest reference block, combined with the
  median of per-block ratios) is what the gate compares instead of raw p50s;
- a time budget per row (budget.py): a probe of the model's speed cuts a slow model's runs and repetitions;
- raw samples are kept (evenly subsampled) so a later `compare` can run Mann-Whitney U on them, and so are
  the block medians.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.bench import stats
from compress.bench.budget import fit as fit_budget
from compress.bench.config import BenchSettings
from compress.bench.inputs import batch_of, check_inputs, make_inputs
from compress.bench.placement import audit
from compress.bench.providers import (
    DEVICE_OF,
    check_model_file,
    open_session,
    resolve_provider,
    session_options_summary,
)
from compress.bench.reference import REFERENCE_VERSION, reference_input, reference_model_bytes
from compress.bench.timing import timed_loop as _timed_loop
from compress.errors import CompressError, first_line
from compress.progress import progress as progress_bar


class ProviderUnavailable(CompressError):
    """The requested execution provider cannot run this model here (missing, or ORT dropped it)."""

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"provider {provider}: {reason}")
        self.provider = provider
        self.reason = reason


@dataclass
class _Job:
    """One (provider, batch, threads) configuration being measured, one repetition at a time."""

    model_path: Path
    provider: str
    batch: int
    threads: int
    feed: dict[str, np.ndarray]
    settings: BenchSettings
    session: Any = None  # the session opened to check the provider is reused as the first repetition
    samples_ns: list[np.ndarray] = field(default_factory=list)
    reference_ns: list[np.ndarray] = field(default_factory=list)
    block_ends: list[np.ndarray] = field(default_factory=list)  # per repetition: (model, reference) sample counts
    budget: dict[str, Any] | None = None  # budget.plan's record once budget.fit probed the model

    @property
    def uses_reference(self) -> bool:
        # a CPU reference says nothing about a GPU's speed
        return self.settings.reference and self.provider not in DEVICE_OF

    def repetition(self) -> None:
        session = self.session
        self.session = None
        if session is None:
            session, reason = open_session(
                self.model_path, self.provider, self.threads,
                provider_options=self.settings.options_for(self.provider), edge=self.settings.edge,
            )
            if session is None:  # worked a moment ago; report rather than time something else
                raise ProviderUnavailable(self.provider, reason or "session could not be reopened")
        run = self._runner(session)
        ref_run = self._reference_runner() if self.uses_reference else None
        for _ in range(self.settings.warmup_runs):
            run()
            if ref_run is not None:
                ref_run()
        samples, ref_samples, ends = _timed_loop(run, self.settings, ref_run)
        self.samples_ns.append(samples)
        if ref_samples is not None:
            self.reference_ns.append(ref_samples)
            self.block_ends.append(ends)
        del run, ref_run, session

    def _reference_runner(self) -> Callable[[], Any]:
        session, reason = open_session(
            reference_model_bytes(), "cpu", self.threads, edge=self.settings.edge
        )
        if session is None:  # pragma: no cover - the CPU provider is always there
            raise CompressError(f"reference workload: {reason}")
        return functools.partial(session.run, None, reference_input())

    def _runner(self, session: Any) -> Callable[[], Any]:
        if not self.io_binding:
            return functools.partial(session.run, None, self.feed)
        import onnxruntime as ort

        device = DEVICE_OF.get(self.provider, "cpu")
        device_id = int(self.settings.options_for(self.provider).get("device_id", 0))
        binding = session.io_binding()
        for name, arr in self.feed.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, device, device_id))
        for out in session.get_outputs():
            binding.bind_output(out.name, device, device_id)
        return functools.partial(session.run_with_iobinding, binding)

    @property
    def io_binding(self) -> bool:
        if self.settings.io_binding is None:
            return self.provider in DEVICE_OF
        return self.settings.io_binding

    def row(self) -> dict[str, Any]:
        per_rep_ms = [s / 1e6 for s in self.samples_ns]
        pooled = np.concatenate(per_rep_ms)
        pct = stats.percentiles_ms(pooled)
        lo, hi = stats.median_ci(pooled)
        rep_p50 = [float(np.median(r)) for r in per_rep_ms]
        mean_ms = float(pooled.mean())
        reference: dict[str, Any] = {}
        if self.reference_ns:
            ref_ms = np.concatenate(self.reference_ns) / 1e6
            ref_p50 = float(np.median(ref_ms))
            model_blocks = [stats.block_medians(m / 1e6, e[:, 0]) for m, e in zip(self.samples_ns, self.block_ends)]
            ref_blocks = [stats.block_medians(r / 1e6, e[:, 1]) for r, e in zip(self.reference_ns, self.block_ends)]
            model_bp50, ref_bp50 = np.concatenate(model_blocks), np.concatenate(ref_blocks)
            reference = {
                "reference_p50_ms": ref_p50,
                # what the gate compares (stats.gate_score), and the two halves it is made of
                "score": stats.gate_score(model_bp50, ref_bp50),
                "quiet_score": stats.quiet_score(model_bp50, ref_bp50),
                "p50_score": float(np.median(model_bp50 / ref_bp50)),
                "blocks": int(model_bp50.size),
                "cv_score_across_repetitions": stats.cv([stats.gate_score(m, r) for m, r in zip(model_blocks, ref_blocks)]),
                "block_p50_ms": [round(float(x), 5) for x in model_bp50],
                "reference_block_p50_ms": [round(float(x), 5) for x in ref_bp50],
                "reference_version": REFERENCE_VERSION,
            }
        return {
            "provider": self.provider,
            "batch": self.batch,
            "threads": self.threads,
            "runs": int(pooled.size),
            "p50_ms": pct["p50_ms"],
            "p90_ms": pct["p90_ms"],
            "p99_ms": pct["p99_ms"],
            "ci95_p50_ms": [lo, hi],
            "throughput_per_s": self.batch * 1000.0 / mean_ms,
            "mean_ms": mean_ms,
            "cv": stats.cv(pooled),
            "cv_p50_across_repetitions": stats.cv(rep_p50),
            "p50_ms_repetitions": rep_p50,
            **reference,
            "repetitions": len(per_rep_ms),
            "budget": self.budget,
            "warmup_runs": self.settings.warmup_runs,
            "io_binding": self.io_binding,
            "edge": self.settings.edge,
            "provider_options": self.settings.options_for(self.provider),
            "session_options": session_options_summary(self.threads, edge=self.settings.edge),
            "samples_ms": [round(x, 5) for x in stats.subsample(pooled, self.settings.max_samples_kept)],
        }


def _prepare(
    model_path: str | Path,
    provider: str,
    batch: int,
    threads: int,
    inputs: dict[str, np.ndarray] | None,
    dims: dict[str, int] | None,
    settings: BenchSettings,
) -> _Job:
    """Check the model, open the first session (raising ProviderUnavailable), and build the inputs."""
    path = check_model_file(model_path)
    name = resolve_provider(provider)
    if batch < 1:
        raise CompressError(f"batch: expected an integer >= 1, got {batch}")
    session, reason = open_session(
        path, name, threads, provider_options=settings.options_for(name), edge=settings.edge, strict=settings.strict
    )
    if session is None:
        raise ProviderUnavailable(name, reason or "unavailable")
    if inputs is not None:
        feed = check_inputs(inputs, session)
        batch = batch_of(feed, getattr(dims, "batch_axes", None))
    else:
        from compress.bench.inputs import index_bounds

        feed = make_inputs(session, batch, dims, seed=settings.seed, bounds=index_bounds(path))
    _first_run(path, session, feed, given=inputs is not None)
    return _Job(path, name, batch, threads, feed, settings, session=session)


def _first_run(path: Path, session: Any, feed: dict[str, np.ndarray], given: bool) -> None:
    """One untimed run (a warm-up too), so inputs the model rejects (ids past a table, a size it cannot take) are
    one line naming them, not ONNX Runtime's traceback."""
    from compress.bench.providers import quiet_run

    try:
        session.run(None, feed, quiet_run())
    except Exception as exc:  # ORT's own error types (InvalidArgument, Fail, ...) share no useful base
        arrays = "; ".join(f"{n} {list(a.shape)} {a.dtype}" for n, a in feed.items())
        hint = "check those arrays against the model" if given else \
            "pass real inputs with --inputs FILE.npz, or other sizes with --dim NAME=N"
        raise CompressError(f"{path}: its first run failed on the {'given' if given else 'generated'} inputs "
                            f"({arrays}): {first_line(exc)}; {hint}") from None


def measure(
    model_path: str | Path,
    provider: str,
    batch: int,
    threads: int,
    *,
    inputs: dict[str, np.ndarray] | None = None,
    dims: dict[str, int] | None = None,
    settings: BenchSettings = BenchSettings(),
) -> dict[str, Any]:
    """Measure one (provider, batch, threads) configuration; return its latency row (DESIGN.md contract).

    The row has provider, batch, threads, runs, p50_ms, p90_ms, p99_ms, ci95_p50_ms, throughput_per_s, plus
    mean_ms, cv, cv_p50_across_repetitions, p50_ms_repetitions, io_binding, session_options and samples_ms;
    with the reference workload also score, quiet_score, p50_score, reference_p50_ms, block_p50_ms and
    reference_block_p50_ms.
    With `inputs` the batch is the first axis of the given arrays. Raises ProviderUnavailable when the provider
    is missing or ORT dropped it; nothing is ever timed on CPU under another provider's name. The row carries
    `placement` (bench.placement.audit, before timing: under strict a fallback raises at once).
    """
    job = _prepare(model_path, provider, batch, threads, inputs, dims, settings)
    placed = audit(job.model_path, {job.provider: job.threads}, job.settings)[job.provider]
    fit_budget(job)
    for _ in range(job.settings.repetitions):
        job.repetition()
    return {**job.row(), "placement": placed}


def bench_model(
    model_path: str | Path,
    providers: list[str],
    batch_sizes: list[int],
    threads: list[int],
    *,
    settings: BenchSettings = BenchSettings(),
    inputs_for_batch: Callable[[int], dict[str, np.ndarray]] | None = None,
    dims: dict[str, int] | None = None,
    progress: bool = True,
    recheck: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Measure every (provider, batch, threads) combination; repetitions are interleaved across them.

    Returns {"latency": [rows], "unavailable": [{"provider", "reason"}]}; rows carry `placement` (bench.placement).
    With settings.edge, batch sizes and threads are forced to [1]. With settings.strict an unavailable provider
    raises ProviderUnavailable, and nodes falling back to the CPU provider raise CompressError before timing.
    `recheck(row) -> bool` (the regression gate's "looks slower"): each row it flags is measured again with
    as many fresh repetitions and reported from all of them (`rechecked: true`), so a row is judged on a
    second, later look at the machine rather than on one unlucky stretch.
    """
    jobs, unavailable, placements = _jobs_for(model_path, providers, batch_sizes, threads, settings,
                                              inputs_for_batch, dims)
    _interleave(jobs, f"bench {Path(model_path).name}", progress)
    rows = [job.row() for job in jobs]
    again = [i for i, row in enumerate(rows) if recheck is not None and recheck(row)]
    _interleave([jobs[i] for i in again], f"re-measure {Path(model_path).name}", progress)
    for i in again:
        rows[i] = {**jobs[i].row(), "rechecked": True}
    return {"latency": [{**r, "placement": placements[r["provider"]]} for r in rows], "unavailable": unavailable}


def bench_models(
    model_paths: Mapping[str, str | Path],
    providers: list[str],
    batch_sizes: list[int],
    threads: list[int],
    *,
    settings: BenchSettings = BenchSettings(),
    inputs_for_batch: Callable[[int], dict[str, np.ndarray]] | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """bench_model for several models at once: repetitions interleaved across every row of every model, so
    models of the same architecture see the same machine and do not "differ" by a slow phase.

    Returns {name: {"latency": [rows], "unavailable": [...]}} in the order of `model_paths`.
    """
    built = {name: _jobs_for(path, providers, batch_sizes, threads, settings, inputs_for_batch, None)
             for name, path in model_paths.items()}
    _interleave([job for jobs, _, _ in built.values() for job in jobs], f"bench {len(built)} models", progress)
    return {name: {"latency": [{**job.row(), "placement": placements[job.provider]} for job in jobs],
                   "unavailable": unavailable}
            for name, (jobs, unavailable, placements) in built.items()}


def _jobs_for(model_path: str | Path, providers: list[str], batch_sizes: list[int], threads: list[int],
              settings: BenchSettings, inputs_for_batch: Callable[[int], dict[str, np.ndarray]] | None,
              dims: dict[str, int] | None) -> tuple[list[_Job], list[dict[str, str]], dict[str, Any]]:
    """One probed, budget-fitted job per available (provider, batch, threads); unavailable providers listed; where
    each provider's nodes run (compress.bench.placement.audit: under strict, a fallback fails before timing)."""
    if settings.edge:
        batch_sizes, threads = [1], [1]
    jobs: list[_Job] = []
    unavailable: list[dict[str, str]] = []
    for name in dict.fromkeys(resolve_provider(p) for p in providers):
        try:
            for b in dict.fromkeys(batch_sizes):
                for t in dict.fromkeys(threads):
                    feed = inputs_for_batch(b) if inputs_for_batch is not None else None
                    jobs.append(_prepare(model_path, name, b, t, feed, dims, settings))
        except ProviderUnavailable as exc:
            if settings.strict:
                raise
            jobs = [j for j in jobs if j.provider != name]
            unavailable.append({"provider": name, "reason": exc.reason})
    for job in jobs:
        fit_budget(job)
    placements = audit(model_path, {job.provider: job.threads for job in jobs}, settings)  # strict: before timing
    return jobs, unavailable, placements


def _interleave(jobs: list[_Job], desc: str, progress: bool) -> None:
    reps = [job.settings.repetitions for job in jobs]  # a row cut to its time budget has fewer
    bar = progress_bar(total=sum(reps), desc=desc, unit="rep", enabled=progress and sum(reps) > 0)
    try:
        for r in range(max(reps, default=0)):
            for job in (j for j, n in zip(jobs, reps) if r < n):
                job.repetition()
                bar.update(1)
    finally:
        bar.close()
