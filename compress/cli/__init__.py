"""Command line: `compress run|validate|search|bench|compare|edge|quantize`. Turns CompressError into one line
and an exit code."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from compress.errors import CompressError, Stopped


class _Group(click.Group):
    """Every subcommand's CompressError becomes `error: <one line>` and its exit code; -v shows the traceback.

    An OSError that escaped (disk full, permission denied, a path that vanished) is the user's machine talking, not a
    bug: it is one line and exit 2 as well. Ctrl-C is one line and exit 130, SIGTERM and SIGHUP one line and
    128 + the signal (143, 129), after the same clean-up; the run resumes from its cache.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CompressError as exc:
            _fail(ctx, str(exc), exc.exit_code)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(ctx, f"{where}{exc.strerror or exc}; check the path, free disk space and permissions", 2)
        except KeyboardInterrupt:
            _fail(ctx, f"interrupted; {_again(ctx)}", 130)
        except Stopped as exc:
            released = " and the run directory released" if ctx.invoked_subcommand in RESUMABLE else ""
            _fail(ctx, f"stopped by {exc.name}; scratch files were removed{released}; {_again(ctx)}",
                  128 + exc.signum)


RESUMABLE = ("run", "search")
"""Commands whose finished stages (or trials) a rerun takes from their cache; the others start over."""


def _again(ctx: click.Context) -> str:
    if ctx.invoked_subcommand in RESUMABLE:
        return "run the same command again to resume from the stages that finished"
    return "nothing was kept; run the same command again to start over"


MAX_LINE_CHARS = 500
"""An error line past this is cut (with a count of what was cut); the whole text goes to the debug log (-v)."""


def _fail(ctx: click.Context, message: str, code: int) -> None:
    import logging

    from compress.errors import shorten, unwrap_worker

    message = unwrap_worker(message)
    if ctx.meta.get("compress.verbose"):
        import traceback

        traceback.print_exc()
    line = shorten(message, MAX_LINE_CHARS)
    if line != message:  # -v: what the one line cut (said once, not again when it fits)
        logging.getLogger("compress").debug("error (full text): %s", message)
    click.echo(f"error: {line}", err=True)  # one line, whatever the message held
    ctx.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks, debug logs and ONNX Runtime's warnings.")
@click.version_option(package_name="compress")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Teacher to a small, fast, measured ONNX model, driven by one TOML file."""
    from compress.errors import stop_on_signals
    from compress.heap import limit_heap_growth_for_run

    limit_heap_growth_for_run()  # free heap pages given back when a pass grows: memory flat in the data (heap.py)
    stop_on_signals()  # SIGTERM / SIGHUP unwind like Ctrl-C: scratch folders removed, the run lock released
    ctx.meta["compress.verbose"] = verbose
    _quiet_onnxruntime(verbose)
    if verbose:
        import logging

        # compress's own debug lines; other libraries stay at WARNING (matplotlib's font search alone wrote 2,200)
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        logging.getLogger("compress").setLevel(logging.DEBUG)


def _quiet_onnxruntime(verbose: bool) -> None:
    """ORT's warnings to stderr (e.g. "Removing initializer ... not used by any node", once per session a model with
    an unused initializer opens) only with -v; errors still show. Sessions that read ORT's log set their own level."""
    import os

    import onnxruntime

    from compress.edge.isolated import ORT_SEVERITY_ENV

    level = 2 if verbose else 3
    onnxruntime.set_default_logger_severity(level)
    os.environ[ORT_SEVERITY_ENV] = str(level)  # compress.edge.isolated's spawned children set it too


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Recompute every stage, ignoring the cache.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--nproc", type=int, default=1, show_default=True,
              help="Training processes on this machine (torchrun + DDP; gloo on CPU, nccl on CUDA).")
@click.option("--nnodes", type=int, default=1, show_default=True,
              help="Machines training together; run the same command on each with its --node-rank.")
@click.option("--node-rank", type=int, default=0, show_default=True,
              help="This machine's rank; node 0 writes the report, the others only train.")
@click.option("--rdzv-endpoint", default=None, metavar="HOST:PORT", help="Node 0's address, reachable by every "
              "machine (with --nnodes > 1).")
def run(file: Path, force: bool, quiet: bool, nproc: int, nnodes: int, node_rank: int,
        rdzv_endpoint: str | None) -> None:
    """Run the pipeline in FILE and print the summary table (exit 1 if a gate fails or a training worker dies)."""
    from compress.dist.settings import DistSettings
    from compress.runner import run_pipeline

    from compress.errors import GateFailed
    from compress.report import summary_table

    dist = DistSettings(nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
    try:
        report = run_pipeline(file, force=force, progress=not quiet, dist=dist)
    except GateFailed as failed:  # every stage that could run was measured: the table first, then the error line
        if getattr(failed, "report", None):
            click.echo(summary_table(failed.report))
        raise
    if dist.follower:
        click.echo(f"node {node_rank} of {nnodes}: training stages done; node 0 writes the report")
        return
    click.echo(summary_table(report))


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
def validate(file: Path) -> None:
    """Check FILE without training: keys and types, files, data, both models on the data's shape, the
    checkpoint, and (under [benchmark] strict) that every provider is installed."""
    from compress.config import check_before_training, held, load_config
    from compress.stages import stage_names

    cfg = load_config(file)
    with held():  # the space's checks read the data loaded here
        check_before_training(cfg, exports=True)
        stages = ", ".join(stage_names(cfg))
        if cfg.search is not None:  # the space too: each choice (each end of a range) makes a valid file
            import tomllib

            from compress.study.space import check_search

            check_search(cfg, tomllib.loads(file.read_text(encoding="utf-8")), file)
            keys, trials = len(cfg.search.space), cfg.search.trials
            stages += f"; search: {keys} key{'' if keys == 1 else 's'}, {trials} trial{'' if trials == 1 else 's'}"
    click.echo(f"{file}: ok ({stages})")


def _register() -> None:
    # Subcommands live in their own modules; each keeps heavy imports inside its function bodies.
    from compress.cli import bench, edge, quantize, search

    main.add_command(bench.bench)
    main.add_command(bench.compare)
    main.add_command(edge.edge)
    main.add_command(quantize.quantize)
    main.add_command(search.search)


_register()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
