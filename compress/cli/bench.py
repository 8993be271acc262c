"""`compress bench` and `compress compare`: the latency harness and its regression gate from the shell.

Plain click commands; compress/cli.py adds them to the `main` group, which turns CompressError into one line
and exit 2 (GateFailed: exit 1). Heavy imports stay inside the command bodies.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from compress.cli.bench_gate import (baseline_gate, baseline_rows, check_comparable, gate, looks_slower,
                                     some_row_matches)
from compress.cli.bench_options import check_axis_fixes, check_conflicts, parse_provider_options
from compress.cli.types import Number
from compress.errors import CompressError, GateFailed


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--provider", "providers", multiple=True, default=("cpu",), show_default=True,
              help="Execution provider: cpu, cuda, tensorrt, openvino, xnnpack, nnapi, coreml, qnn, dml "
                   "(or the full ORT name). Repeat for several.")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1), default=(1,), show_default=True,
              help="Batch size for the symbolic first dimension. Repeat for several.")
@click.option("--threads", "threads", multiple=True, type=click.IntRange(min=1), default=(1,), show_default=True,
              help="Intra-op threads. Repeat for several.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE", help="Size of a named symbolic dimension.")
@click.option("--fix-dim", "fix", multiple=True, metavar="NAME=VALUE|INPUT:AXIS=VALUE",
              help="Fix a dimension in the model itself (a timed copy), by name or by input and axis.")
@click.option("--batch-axis", "batch_axes", multiple=True, metavar="INPUT:AXIS|INPUT:none",
              help="The axis of an input that --batch sets (default 0; none: the input has no batch axis).")
@click.option("--fix-input", "fix_inputs", multiple=True, metavar="NAME=VALUE",
              help="Bind an input to the value you deploy with (Silero VAD's sr=16000): the model no longer takes "
                   "it, and the If nodes it decides are inlined.")
@click.option("--inputs", "inputs_npz", type=click.Path(path_type=Path),
              help="Feed these arrays (.npz, one per input name) instead of generated ones.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write rows, samples and environment here.")
@click.option("--baseline", type=click.Path(path_type=Path), help="Compare with this saved result; exit 1 on regression.")
@click.option("--against", type=click.Path(path_type=Path),
              help="Time OLD.onnx and MODEL interleaved in this process and judge the paired ratios; exit 1 on "
                   "regression.")
@click.option("--max-regression", type=Number(min=0), default=0.10, show_default=True,
              help="Allowed slowdown of p50 as a fraction (0.10 = 10%).")
@click.option("--io-binding/--no-io-binding", default=None,
              help="Bind inputs/outputs on the device so copies are not timed [default: on for CUDA/TensorRT].")
@click.option("--provider-option", "provider_options", multiple=True, metavar="PROVIDER:KEY=VALUE",
              help="Pass an option to a provider, e.g. cuda:device_id=0. Repeatable.")
@click.option("--edge", is_flag=True, help="Edge profile: batch 1, 1 thread, no thread spinning.")
@click.option("--strict", is_flag=True, help="An unavailable provider, any node a non-CPU provider leaves to the "
              "CPU provider, a --baseline of another model or one with rows not measured is an error (exit 2) instead "
              "of a report line.")
@click.option("--warmup", "warmup_runs", type=click.IntRange(min=0), default=None,
              help="Warm-up runs per session (default 20).")
@click.option("--min-runs", type=click.IntRange(min=1), default=None,
              help="Timed runs per repetition, at least (default 100).")
@click.option("--min-seconds", type=Number(min=0), default=None,
              help="Timed seconds per repetition, at least (default 0.6).")
@click.option("--repetitions", type=click.IntRange(min=1), default=None,
              help="Independent repetitions (fresh sessions; default 5).")
@click.option("--time-budget", "time_budget", type=Number(min=0), default=None,
              help="Seconds per row: slower models get fewer runs and repetitions to fit [default: 12; 0 = none].")
@click.option("--kit", "kit_dir", type=click.Path(path_type=Path), help="Also write an on-device benchmark kit here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def bench(model: Path, providers: tuple[str, ...], batches: tuple[int, ...], threads: tuple[int, ...],
          dims: tuple[str, ...], fix: tuple[str, ...], batch_axes: tuple[str, ...], fix_inputs: tuple[str, ...],
          inputs_npz: Path | None, json_out: Path | None, baseline: Path | None,
          against: Path | None, max_regression: float, io_binding: bool | None, provider_options: tuple[str, ...], edge: bool,
          strict: bool, warmup_runs: int | None, min_runs: int | None, min_seconds: float | None,
          repetitions: int | None, time_budget: float | None, kit_dir: Path | None, quiet: bool) -> None:
    """Benchmark MODEL (.onnx) on ONNX Runtime: p50/p90/p99, 95% CI of p50, throughput, CV.

    'score' is the model's latency in units of a fixed reference workload timed in short blocks in between
    (the geometric mean of fastest-block / fastest-block and the median of per-block ratios), so it does not
    move when the whole machine slows down; gates compare scores (the 'raw' column is the plain p50 ratio).

    With --baseline OLD.json, rows matched by (provider, batch, threads) are gated (none matching: exit 2; a
    baseline row not measured: a warning, with --strict exit 2; the checks of `compress compare` first). A row is
    REGRESSED only when all three hold: it is significantly slower (one-sided Mann-Whitney U on the raw samples,
    p < 0.01 after dividing each side by its reference; disjoint 95% CIs of p50 when no samples were kept), its score
    ratio (new / base) exceeds 1 + --max-regression, and its raw p50 ratio exceeds it too. When the score
    says slower but the raw p50 did not move past the budget, the row is 'unsure' and does not fail the
    build (with a warning when the reference ran more than 15% faster or slower than in the baseline).
    Rows without reference data are judged on the raw p50 alone. A row that looks slower than half the
    budget is measured again (fresh sessions, pooled with the first look) before it is judged. Exit 1 on a
    regression.
    """
    from compress.bench.compare import load_document, rows_of
    from compress.bench.inputs import check_dims_named, parse_dims
    from compress.bench.providers import check_model_file, resolve_provider

    # everything the user typed is checked before a single run is timed
    if against is not None and baseline is not None:
        raise CompressError("--against and --baseline: use one; --against OLD.onnx measures both models now, "
                            "--baseline OLD.json compares with a saved result")
    names = [resolve_provider(p) for p in providers]
    dim_sizes = parse_dims(dims, batch_axes)
    options = parse_provider_options(provider_options)
    said = click.get_current_context().get_parameter_source("batches") is not click.core.ParameterSource.DEFAULT
    for note in check_conflicts(names, options, batches, threads, dim_sizes, fix, inputs_npz, edge, json_out,
                                baseline, batch_given=said):
        click.echo(note, err=True)
    base_doc = load_document(baseline) if baseline is not None else None
    if base_doc is not None:
        rows_of(base_doc, baseline)  # a malformed baseline is refused before anything is timed
    shown, against_shown = Path(model), against  # what the terminal and the JSON name: a link stays the link
    given = check_model_file(model)
    if against is not None:
        against = check_model_file(against)
    check_dims_named(given, dim_sizes, *([against] if against is not None else []))
    if given.suffix.lower() != ".ort":  # ORT says what an .ort model takes
        from compress.onnx.graph import batch_axes_for
        from compress.onnx.skeleton import graph_of

        graph = graph_of(given).graph  # not checked: ORT's first run says what fails
        check_axis_fixes(graph, fix, dim_sizes)
        dim_sizes.batch_axes = batch_axes_for(graph, dim_sizes.batch_axes, given.name,
                                              {f.partition("=")[0] for f in fix_inputs})
    if inputs_npz is None and dim_sizes:
        from compress.bench.identity import model_inputs
        from compress.bench.inputs import check_batch_dims

        check_batch_dims(model_inputs(given), dim_sizes, [1] if edge else batches)
    from compress.onnx.control import bound_mismatches

    for line in bound_mismatches(fix_inputs, {"--inputs": inputs_npz}):
        click.echo(f"warning: {line}", err=True)
    with tempfile.TemporaryDirectory(prefix="compress-bench-") as work:
        model = _fixed(given, Path(work) / "new", fix, fix_inputs)
        old = None if against is None else _fixed(against, Path(work) / "old", fix, fix_inputs, say=False)
        # the same dimensions and values for OLD, or the two would not run the same graph
        _bench(shown, model, names, batch_sizes=list(batches), threads=threads, dim_sizes=dim_sizes,
               options=options, base_doc=base_doc, baseline=baseline, against=against_shown, old=old,
               max_regression=max_regression, inputs_npz=inputs_npz, json_out=json_out, kit_dir=kit_dir, quiet=quiet,
               fixed=[*fix, *fix_inputs], settings=_bench_settings(io_binding, options, edge, strict, warmup_runs,
                                                                     min_runs, min_seconds, repetitions, time_budget))


def _bench_settings(io_binding: bool | None, options: dict[str, dict[str, str]], edge: bool, strict: bool,
                    warmup_runs: int | None, min_runs: int | None, min_seconds: float | None,
                    repetitions: int | None, time_budget: float | None) -> Any:
    from compress.bench.config import BenchSettings

    overrides = {k: v for k, v in {"warmup_runs": warmup_runs, "min_runs": min_runs, "min_seconds": min_seconds,
                                   "repetitions": repetitions, "time_budget_seconds": time_budget}.items()
                 if v is not None}
    return BenchSettings(io_binding=io_binding, provider_options=options or {}, edge=edge, strict=strict, **overrides)


def _bench(given: Path, model: Path, names: list[str], *, batch_sizes: list[int], threads: tuple[int, ...],
           dim_sizes: dict[str, int], options: dict[str, dict[str, str]], base_doc: Any, baseline: Path | None,
           against: Path | None, old: Path | None, max_regression: float, inputs_npz: Path | None,
           json_out: Path | None, kit_dir: Path | None, quiet: bool, fixed: list[str], settings: Any) -> None:
    """The body of `compress bench`, timing `model` and `old`: MODEL and --against as given (`given`, `against`: what
    the terminal and the JSON name) or their specialised copies."""
    from compress.bench.compare import bench_document
    from compress.bench.environment import environment
    from compress.bench.harness import bench_model
    from compress.bench.inputs import batch_of, load_npz
    from compress.bench.providers import open_session
    from compress.bench.tables import latency_table

    inputs_for_batch = None
    if inputs_npz is not None:
        session, _ = open_session(model, "cpu", 1, strict=True)
        arrays = load_npz(inputs_npz, session)
        batch_sizes = [batch_of(arrays, dim_sizes.batch_axes)]
        inputs_for_batch = lambda _batch: arrays  # noqa: E731 - the npz fixes the batch

    if against is not None:
        if kit_dir is not None:  # before the gate, which may exit 1: the kit is what checks it on the device
            _make_kit(model, kit_dir, batch_sizes[0], inputs_for_batch, dim_sizes, names, options, list(threads),
                      settings, against=old, max_regression=max_regression)
        _against(model, old, names, batch_sizes, list(threads), settings, max_regression,
                 inputs_for_batch, dim_sizes, json_out, shown=(against, given), fixed=fixed)
        return
    timed_on = {"fixed": fixed, "dims": dict(dim_sizes)}  # what else sizes the work a row times
    if inputs_for_batch is not None:  # --inputs: the model's inputs read the same at seq 16 and 256
        timed_on["fed"] = {k: list(getattr(v, "shape", ())) for k, v in arrays.items()}
    base_rows = None
    if base_doc is not None:
        from compress.bench.providers import check_available

        missing = check_available(names, strict=False, origin="")  # what this machine lacks is not measured
        here = [name for name in names if name not in missing]
        base_rows = baseline_rows(base_doc, baseline, given, model, here, timed_on, settings.strict)
        some_row_matches(base_rows, baseline, here, [1] if settings.edge else batch_sizes,
                         [1] if settings.edge else list(threads))
    recheck = looks_slower(base_rows, max_regression) if base_rows is not None else None
    result = bench_model(model, names, batch_sizes, list(threads), settings=settings,
                         inputs_for_batch=inputs_for_batch, dims=dim_sizes, progress=not quiet, recheck=recheck)
    click.echo(latency_table(result["latency"], result["unavailable"]))
    if not result["latency"]:  # a JSON of no rows was written, exit 0, and refused by the gate it was made for
        why = "; ".join(f"{u['provider']}: {u['reason']}" for u in result["unavailable"]) or "no row ran"
        raise CompressError(f"{given}: nothing was timed ({why}); name a provider this machine has")

    if json_out is not None:
        from compress.bench.identity import model_inputs

        doc = bench_document(given, result, environment(), _settings_dict(settings), model_inputs(model))
        doc.update({k: v for k, v in timed_on.items() if v or k == "dims"})  # --dim, --fix-dim, --inputs shapes
        from compress.cache import write_json

        write_json(json_out, doc)  # temp file + rename: a killed run never leaves half a JSON for a later gate
        click.echo(f"wrote {json_out}")
    if kit_dir is not None:
        _make_kit(model, kit_dir, batch_sizes[0], inputs_for_batch, dim_sizes, names, options, list(threads), settings)
        if len(batch_sizes) > 1:
            click.echo(f"note: the kit times batch {batch_sizes[0]} only (the first --batch); compare its result "
                       "with this run without --strict, or run bench once per batch for a kit each", err=True)
    if base_rows is not None:
        baseline_gate(given, baseline, base_rows, result, max_regression, settings.strict)


@click.command()
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--max-regression", type=Number(min=0), default=0.10, show_default=True,
              help="Allowed slowdown of p50 as a fraction (0.10 = 10%).")
@click.option("--strict", is_flag=True, help="Results of different pipelines, models, inputs or providers are an "
              "error (exit 2) instead of a warning. Use it in CI.")
def compare(base: Path, new: Path, max_regression: float, strict: bool) -> None:
    """Compare two saved results (bench --json outputs or pipeline report.json files); exit 1 on a regression.

    The two must describe the same thing: the same pipeline, models of the same size, the same model inputs and
    the same providers. Otherwise a 'warning:' line says what differs (with --strict: exit 2) before the table.
    Rows match on (model, provider, batch, threads, seq_length): none matching is exit 2, a baseline row the new
    file lacks is a warning (with --strict: exit 2).
    The gate is the one `compress bench --baseline` uses (see `compress bench --help`).
    """
    from compress.bench import compare as cmp

    base_doc, new_doc = cmp.load_document(base), cmp.load_document(new)
    check_comparable(base_doc, new_doc, strict, f"compare: {base} and {new}", f"compare: {base} and {new}")
    verdicts = cmp.compare(cmp.rows_of(base_doc, base), cmp.rows_of(new_doc, new), max_regression,
                           names=(str(base), str(new)))
    click.echo(cmp.table(verdicts, max_regression))
    for line in cmp.machine_warnings(verdicts):
        click.echo(line, err=True)
    gate(verdicts, max_regression, f"{new} vs {base}", strict)


def _against(model: Path, old: Path, providers: list[str], batch_sizes: list[int], threads: list[int],
             settings: Any, max_regression: float, inputs_for_batch: Any, dims: dict[str, int],
             json_out: Path | None, shown: tuple[Path, Path], fixed: list[str] | None = None) -> None:
    """`bench MODEL --against OLD`: one paired row per (provider, batch, threads); exit 1 on a regression. `shown`:
    the (old, new) paths the user gave, named on the terminal and in the JSON for `old` and `model`."""
    from compress.bench.harness import ProviderUnavailable
    from compress.bench.paired import paired_bench, paired_table

    rows, unavailable = [], []
    for provider in providers:
        for b in dict.fromkeys([1] if settings.edge else batch_sizes):  # --edge times batch 1, once
            for t in dict.fromkeys([1] if settings.edge else threads):
                feed = inputs_for_batch(b) if inputs_for_batch is not None else None
                try:
                    rows.append(paired_bench(old, model, provider, b, t, settings,
                                             max_regression=max_regression, inputs=feed, dims=dims))
                except ProviderUnavailable as exc:
                    if settings.strict:
                        raise
                    unavailable.append({"provider": exc.provider, "reason": exc.reason})
    click.echo(paired_table(rows, max_regression, str(shown[0]), str(shown[1])))
    for u in unavailable:
        click.echo(f"{u['provider']:<28} unavailable: {u['reason']}")
    if json_out is not None:
        from compress.bench.environment import environment
        from compress.cache import write_json

        write_json(json_out, {"schema": "compress.paired/1", "old": str(shown[0]), "new": str(shown[1]),
                              "max_regression": max_regression, "environment": environment(),
                              "settings": _settings_dict(settings), "paired": rows, "unavailable": unavailable,
                              **({"fixed": fixed} if fixed else {})})
        click.echo(f"wrote {json_out}")
    if not rows:
        raise CompressError(f"{shown[1]}: no provider could run, nothing to compare with {shown[0]}")
    bad = [r for r in rows if r["regressed"]]
    if bad:
        worst = max(bad, key=lambda r: r["ratio"])
        raise GateFailed(f"{shown[1]} vs {shown[0]}: {len(bad)} of {len(rows)} paired rows regressed beyond "
                         f"+{max_regression:.0%} (worst {worst['provider']} batch {worst['batch']} threads "
                         f"{worst['threads']}: x{worst['ratio']:.3f})")


def _fixed(model: Path, work: Path, fix: tuple[str, ...], fix_inputs: tuple[str, ...] = (), say: bool = True) -> Path:
    """MODEL, or a copy in `work` (the command's temporary folder: nothing is written beside the user's model) with
    the --fix-dim dimensions fixed and the --fix-input values bound (what is then timed, said on the terminal)."""
    if not fix and not fix_inputs:
        return model
    from compress.edge.shapes import specialised

    fixed, _, _ = specialised(model, work / model.name, fix, fix_inputs)
    if say:
        click.echo(f"timing {model} with {', '.join([*fix, *fix_inputs])} fixed")
    return fixed


def _settings_dict(settings: Any) -> dict[str, Any]:
    out = settings.model_dump(mode="json")
    out["provider_options"] = {k: dict(v) for k, v in (settings.provider_options or {}).items()}
    return out


def _make_kit(model: Path, out_dir: Path, batch: int, inputs_for_batch: Any, dims: Any, providers: list[str],
              provider_options: dict[str, dict[str, str]], threads: list[int], settings: Any, *,
              against: Path | None = None, max_regression: float = 0.10) -> None:
    """The on-device kit measures what this bench measured: same providers, options, threads, timing and spinning,
    on inputs at the batch that was timed (--edge: 1; --inputs: theirs), and with --against the same paired
    comparison."""
    from compress.edge.ort_format import sample_inputs
    from compress.kit import make_kit

    if inputs_for_batch is not None:  # --inputs: the file's arrays, at the batch they hold (bench timed those)
        inputs = inputs_for_batch(batch)
    else:
        batch = 1 if settings.edge else batch  # as paired_bench and bench_model time it
        inputs = sample_inputs(model, batch=batch, dims=dims)
    path = make_kit(model, out_dir, batch=batch, inputs=inputs, providers=providers,
                    provider_options=provider_options, threads=[1] if settings.edge else threads,
                    warmup_runs=settings.warmup_runs, min_runs=settings.min_runs, min_seconds=settings.min_seconds,
                    max_seconds=settings.max_seconds, repetitions=settings.repetitions, against=against,
                    max_regression=max_regression, block_seconds=settings.block_seconds, no_spin=settings.edge)
    click.echo(f"wrote the device kit: {path or out_dir}")
