"""What `compress bench` was told, checked before a single run is timed: provider options, and options that would
be ignored or found wrong only after the timing."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.errors import CompressError


def parse_provider_options(items: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """['cuda:device_id=0', 'cuda:arena_extend_strategy=kSameAsRequested'] -> {'CUDAExecutionProvider': {...}}."""
    from compress.bench.providers import resolve_provider

    out: dict[str, dict[str, str]] = {}
    for item in items:
        provider, colon, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not colon or not eq or not key.strip() or not provider.strip():
            raise CompressError(f"--provider-option: expected PROVIDER:KEY=VALUE (e.g. cuda:device_id=0), got {item!r}")
        out.setdefault(resolve_provider(provider), {})[key.strip()] = value.strip()
    return out


def check_conflicts(names: list[str], options: dict[str, Any], batches: tuple[int, ...], threads: tuple[int, ...],
                    dims: dict[str, int], fix: tuple[str, ...], inputs_npz: Path | None, edge: bool,
                    json_out: Path | None, baseline: Path | None = None, *, batch_given: bool = False) -> list[str]:
    """Options that would be ignored, or found wrong only after the timing: one line, before a run (each was taken
    silently: --inputs timed its own batch of 3 under --batch 8 --batch 16, a --json folder failed after every row
    was timed). Returns the notes to print: --edge sets batch 1 and 1 thread over --batch and --threads.
    `batch_given`: --batch was on the command line (--batch 1, the default's value, is refused beside --inputs too)."""
    from compress.cache import same_file

    given = [o for o, on in (("--batch", batch_given or batches != (1,)), ("--dim", bool(dims))) if on]
    if inputs_npz is not None and given:
        raise CompressError(f"{given[0]}: --inputs {inputs_npz} sets the batch and every shape (its arrays); drop "
                            f"{' and '.join(given)}")
    seen: dict[str, str] = {}
    for item in fix:  # the first was fixed, and the second said beside it: "with N=2, N=1 fixed"
        target = item.partition("=")[0].strip()
        if seen.setdefault(target, item) != item:
            raise CompressError(f"--fix-dim {item}: {target} is fixed twice ({seen[target]} too); give it once")
    fixed = {f.partition("=")[0] for f in fix}
    both = sorted(fixed & set(dims))
    if both:
        raise CompressError(f"--dim {both[0]}: --fix-dim fixes {both[0]} in the model; give it once")
    stray = [p for p in options if p not in names]
    if stray:
        raise CompressError(f"--provider-option: {stray[0]} is not timed (--provider: {', '.join(names)}); add "
                            "--provider for it or drop the option")
    if json_out is not None and json_out.is_dir():
        raise CompressError(f"--json {json_out}: a folder; give a file path (e.g. {json_out / 'bench.json'})")
    if json_out is not None and baseline is not None and same_file(json_out, baseline):
        # the run was written over the baseline before it was judged: a regression replaced what it regressed from
        raise CompressError(f"--json {json_out}: the --baseline file itself; write the new result elsewhere, and "
                            "replace the baseline once the build passes")
    over = " and ".join(o for o, on in (("--batch", batches != (1,)), ("--threads", threads != (1,))) if on)
    return [f"note: --edge times batch 1 on 1 thread (the edge profile), not the {over} given"] if edge and over else []


def check_axis_fixes(graph: Any, fix: tuple[str, ...], dims: dict[str, int]) -> None:
    """--fix-dim INPUT:AXIS=V on an axis whose symbolic name --dim sizes to another value: the fixed copy is what is
    timed, so that --dim value was ignored while the result recorded it (the NAME=V form was refused already). The
    same value is consistent, and needed where another input shares the name (x [N, seq, 64] and m [N, seq])."""
    inputs = {v.name: v for v in graph.input}
    for item in fix:
        target, _, value = item.partition("=")
        name, colon, axis = target.rpartition(":")
        if not colon or name not in inputs or not axis.strip().lstrip("-").isdigit():
            continue
        shape = inputs[name].type.tensor_type.shape.dim
        at = int(axis)
        if -len(shape) <= at < len(shape) and shape[at].dim_param in dims and \
                str(dims[shape[at].dim_param]) != value.strip():
            raise CompressError(f"--dim {shape[at].dim_param}={dims[shape[at].dim_param]}: --fix-dim {item} fixes that "
                                f"axis ({name}'s {shape[at].dim_param}) to {value.strip()} in the model; give one size")
