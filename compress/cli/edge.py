"""`compress edge MODEL.onnx`: ORT-format copy, reduced-operator config, parity check, edge readiness table."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: <model stem>_edge next to the model).")
@click.option("--fixed-batch", type=click.IntRange(min=1), default=None,
              help="Fix the batch dimension to N first (NNAPI, CoreML and QNN want fixed shapes).")
@click.option("--optimization", type=click.Choice(["disable", "basic", "extended", "all"]), default="basic",
              show_default=True, help="Graph optimization level baked into the ORT-format file.")
@click.option("--runtime-opt", is_flag=True,
              help="Save runtime optimizations in the ORT file (ORT's advice when NNAPI/CoreML take part).")
@click.option("--inputs", "inputs_npz", type=click.Path(path_type=Path), default=None,
              help=".npz with one array per model input for the parity check (default: seeded random).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the whole section (every node, every provider) here.")
def edge(model: Path, out_dir: Path | None, fixed_batch: int | None, optimization: str, runtime_opt: bool,
         inputs_npz: Path | None, json_path: Path | None) -> None:
    """Prepare MODEL for phones and boards: ORT format, operator config, parity, per-provider readiness.

    Writes <out>/<stem>.<level>.ort, the required_operators config for a minimal ORT build, and edge.json.
    Exit 1 when the ORT-format outputs differ from the ONNX ones by more than 1e-5 + 1e-5 x |output|.
    """
    from compress.cache import write_json
    from compress.edge import prepare, readiness_table

    inputs = None
    if inputs_npz is not None:
        from compress.bench.inputs import load_npz
        from compress.bench.providers import open_session

        session, _ = open_session(model, "cpu", threads=1, strict=True)
        inputs = load_npz(inputs_npz, session)
    out = out_dir if out_dir is not None else model.with_name(model.stem + "_edge")
    section = prepare(model, out, fixed_batch=fixed_batch, inputs=inputs, optimization=optimization,
                      style="runtime" if runtime_opt else "fixed")
    ort = section["ort"]
    parity = section["parity"]
    click.echo(f"ORT format: {ort['ort_path']} ({ort['bytes']} bytes, optimization {ort['optimization']})")
    click.echo(f"operator config for a minimal build: {ort['config_path']}")
    click.echo(f"parity vs ONNX: max abs diff {parity['max_abs_diff']:.3g}, top-1 agreement "
               f"{parity['top1_agreement']:.3f}")
    click.echo(readiness_table(section["readiness"]))
    for note in section["readiness"]["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"wrote {Path(out) / 'edge.json'}")
    if json_path is not None:
        write_json(json_path, section)
