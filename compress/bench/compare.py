"""Compare two saved latency results (bench JSON or pipeline report.json) row by row, with a verdict each.

Rows are matched by (model, provider, batch, threads, seq_length). A bench JSON has one unnamed model; a
report.json names its models (teacher, student, ...), so report vs report matches model by model, and a text
pipeline's report has one row per sequence length (seq_length; None where the row has none).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from compress.bench import stats
from compress.errors import CompressError, shorten

BENCH_SCHEMA = "compress.bench/1"
REPORT_SCHEMA = "compress.report/1"

Key = tuple[str, str, int, int, int | None]  # (model name or "", provider, batch, threads, seq_length)


def bench_document(model_path: str | Path, result: dict[str, Any], environment: dict[str, Any],
                   settings: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON `compress bench --json` writes: latency rows as in report.json, plus where and how.

    `inputs` ({name: {"shape": [...], "type": "..."}}, symbolic dims as names) lets `compare` tell a new version of
    the same model from a different model."""
    return {
        "schema": BENCH_SCHEMA,
        "model": str(model_path),
        "inputs": inputs,
        "environment": environment,
        "settings": settings,
        "latency": result["latency"],
        "unavailable": result["unavailable"],
    }


def load_rows(path: str | Path) -> dict[Key, dict[str, Any]]:
    """Latency rows of a bench JSON or a pipeline report.json, keyed by (model, provider, batch, threads, seq)."""
    return rows_of(load_document(path), path)


def key_of(model: str, row: dict[str, Any]) -> Key:
    """The key a row is matched by: (model, provider, batch, threads, seq_length or None)."""
    return (model, str(row["provider"]), int(row["batch"]), int(row["threads"]), row.get("seq_length"))


def describe(key: Key) -> str:
    """'teacher CPUExecutionProvider batch 1 threads 2 seq 128', the parts a key has."""
    model, provider, batch, threads, seq = key
    return " ".join([*([model] if model else []), provider, f"batch {batch}", f"threads {threads}",
                     *([f"seq {seq}"] if seq is not None else [])])


def load_document(path: str | Path) -> dict[str, Any]:
    """The parsed JSON of a bench --json output or a report.json; CompressError when it is neither."""
    p = Path(path)
    if not p.is_file():
        raise CompressError(f"{p}: no such file; expected a `compress bench --json` output or a report.json")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CompressError(f"{p}: not valid JSON ({exc}); pass a bench --json output or a report.json") from None
    if not isinstance(doc, dict):
        raise CompressError(f"{p}: expected a JSON object with 'latency' or 'models', got {type(doc).__name__}")
    if doc.get("schema") == "compress.paired/1":  # bench --against's own --json: its verdict is already in it
        raise CompressError(f"{p}: a `bench NEW --against OLD` result: it holds paired ratios, judged when it was "
                            "written ('regressed' per row), not latency rows; compare takes `bench --json` results "
                            "of one model each (or rerun bench --against)")
    if not isinstance(doc.get("models"), list) and not isinstance(doc.get("latency"), list):
        raise CompressError(f"{p}: no 'latency' rows or 'models' list; expected a bench --json output or a report.json")
    for key, ok, want in SHAPES:  # read by the comparability checks: a wrong type was a traceback and exit 1
        if doc.get(key) is not None and not ok(doc[key]):
            raise CompressError(f"{p}: {key}: expected {want}, got {type(doc[key]).__name__} "
                                f"{shorten(repr(doc[key]), 60)}; pass the file bench --json wrote")
    return doc


SHAPES = (("inputs", lambda v: isinstance(v, dict) and all(isinstance(s, dict) for s in v.values()),
           "an object of input name -> {shape, type}"),
          ("fixed", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
           "a list of NAME=VALUE strings"),
          ("dims", lambda v: isinstance(v, dict), "an object of dimension name -> size"),
          ("fed", lambda v: isinstance(v, dict) and all(isinstance(s, list) for s in v.values()),
           "an object of input name -> shape"))
"""The top-level keys of a bench --json output besides its rows, and the form each must have."""


def rows_of(doc: dict[str, Any], path: str | Path) -> dict[Key, dict[str, Any]]:
    """The latency rows of a document from load_document, keyed by key_of; CompressError naming the file and the
    row when a row's fields have the wrong type or two rows share a key."""
    p = Path(path)
    if isinstance(doc.get("models"), list):
        groups = [(str(m.get("name", "")), m.get("latency") or []) for m in doc["models"] if isinstance(m, dict)]
    else:
        groups = [("", doc["latency"])]
    rows: dict[Key, dict[str, Any]] = {}
    for model, latency in groups:
        if not isinstance(latency, list):
            raise CompressError(f"{p}: models[{model}].latency: expected a list of rows, got {type(latency).__name__}")
        for i, row in enumerate(latency):
            where = f"models[{model}].latency[{i}]" if model else f"latency[{i}]"
            problem = _row_problem(row)
            if problem:
                raise CompressError(f"{p}: {where}: {problem}")
            key = key_of(model, row)
            if key in rows:
                raise CompressError(f"{p}: {where}: a second row for {describe(key)}; expected one row per model, "
                                    "provider, batch, threads and seq_length")
            rows[key] = row
    if not rows:
        raise CompressError(f"{p}: no latency rows to compare (was every provider unavailable?)")
    return rows


def _row_problem(row: Any) -> str | None:
    """What is wrong with one latency row's fields (None when nothing): the fields compare reads, typed."""
    if not isinstance(row, dict):
        return f"expected an object with provider, batch, threads and p50_ms, got {type(row).__name__}"
    if not isinstance(row.get("provider"), str):
        return "expected provider, batch, threads and p50_ms (provider: a name)"
    for name in ("batch", "threads"):
        if not _is_int(row.get(name)) or row[name] < 1:
            return f"{name}: expected a whole number >= 1, got {row.get(name)!r}"
    if row.get("seq_length") is not None and (not _is_int(row["seq_length"]) or row["seq_length"] < 1):
        return f"seq_length: expected a whole number >= 1 or none, got {row['seq_length']!r}"
    if not _positive(row.get("p50_ms")):
        return f"p50_ms: expected a number > 0, got {row.get('p50_ms')!r}"
    for name in ("score", "p50_score"):
        if row.get(name) is not None and not _positive(row[name]):
            return f"{name}: expected a number > 0 or none, got {row[name]!r}"
    lists = {"samples_ms": None, "ci95_p50_ms": 2, "reference_block_p50_ms": None}
    for name, size in lists.items():
        value = row.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not all(_number(v) and v >= 0 for v in value) or \
                (size is not None and len(value) != size):
            count = f"{size} " if size else ""
            return f"{name}: expected a list of {count}numbers >= 0 or none, got {shorten(json.dumps(value), 40)}"
    blocks = row.get("reference_block_p50_ms")
    if blocks and min(blocks) <= 0:
        return f"reference_block_p50_ms: expected numbers > 0, got {shorten(json.dumps(blocks), 40)}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def compare(base: dict[Key, dict[str, Any]], new: dict[Key, dict[str, Any]], max_regression: float,
            *, alpha: float = 0.01, names: tuple[str, str] = ("the baseline", "the new run")) -> list[dict[str, Any]]:
    """One verdict row per matched key (stats.verdict), plus 'missing'/'added' rows for unmatched keys.

    No matched key at all is a CompressError saying which keys each side has (`names`: how to call the two
    sides): a gate that judged nothing must not pass."""
    if max_regression < 0:
        raise CompressError(f"--max-regression: expected a fraction >= 0 (0.10 = 10% slower), got {max_regression}")
    base, new = _align_models(base, new)
    if not set(base) & set(new):
        raise CompressError(
            "compare: no latency row of the two matches (rows match on model, provider, batch, threads and "
            f"seq_length): {names[0]} has {'; '.join(map(describe, sorted(base, key=_order)))}, "
            f"{names[1]} has {'; '.join(map(describe, sorted(new, key=_order)))}")
    out: list[dict[str, Any]] = []
    for key in sorted(set(base) | set(new), key=_order):
        model, provider, batch, threads, seq = key
        head = {"model": model, "provider": provider, "batch": batch, "threads": threads, "seq_length": seq}
        if key not in new or key not in base:
            side = base if key in base else new
            p50 = float(side[key]["p50_ms"])
            out.append({**head, "base_p50_ms": p50 if key in base else None, "new_p50_ms": p50 if key in new else None,
                        "ratio": None, "p_value": None, "regressed": False, "machine_ratio": None,
                        "verdict": "missing" if key in base else "added"})
            continue
        b, n = base[key], new[key]
        v = stats.verdict(
            b.get("samples_ms"), n.get("samples_ms"), max_regression,
            base_p50_ms=float(b["p50_ms"]), new_p50_ms=float(n["p50_ms"]),
            base_ci95=b.get("ci95_p50_ms"), new_ci95=n.get("ci95_p50_ms"), alpha=alpha,
            **_references(b, n),
        )
        machine = _machine_ratio(b, n)
        if v["regressed"] and v["normalized"] and v["raw_ratio"] <= 1.0 + max_regression:
            # Only the reference-normalised ratio says "slower"; the model's own p50 did not move past the budget.
            # Either the reference measurement moved (seen on ~30 us models: score +17% with raw -1%) or the
            # machine sped up and hides a real slowdown: a build is not failed on that alone. The row says
            # "unsure"; when the machine state differed, machine_warnings() says so too.
            v = {**v, "regressed": False, "verdict": "unsure"}
        out.append({**head, **v, "machine_ratio": machine})
    return out


MACHINE_TOLERANCE = 0.15
"""Reference workloads further apart than this (fastest blocks) mean the two runs saw differently loaded machines."""


def _machine_ratio(b: dict[str, Any], n: dict[str, Any]) -> float | None:
    """New / base fastest reference block: ~1.0 when both runs saw the machine at the same quiet speed."""
    rb, rn = b.get("reference_block_p50_ms"), n.get("reference_block_p50_ms")
    if not rb or not rn or b.get("reference_version") != n.get("reference_version"):
        return None
    return float(min(rn) / min(rb))


def machine_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """One line per row whose two runs saw differently loaded machines: its verdict deserves less trust.

    Under sustained contention the model and the reference do not slow down by the same factor, so a
    baseline recorded on a busy machine shifts every later score by up to ~15% (README, bench_aa_ab --spin).
    """
    out = []
    for r in rows:
        m = r.get("machine_ratio")
        if m is not None and abs(m - 1.0) > MACHINE_TOLERANCE:
            out.append(f"warning: {_label(r)}: the reference workload "
                       f"ran x{m:.2f} as fast as in the baseline (machine loaded differently); re-record the "
                       "baseline on a quiet machine if this verdict surprises you")
    return out


def _references(b: dict[str, Any], n: dict[str, Any]) -> dict[str, float]:
    """Effective reference latencies of both rows when their scores are comparable, else none.

    effective reference = p50 / score, so the verdict's ratio is exactly new score / base score. Both rows
    must come from the same reference workload; 'score' (stats.gate_score) is used when both have it, else
    the older 'p50_score' (files written before it existed), never one of each.
    """
    if b.get("reference_version") != n.get("reference_version"):
        return {}
    for key in ("score", "p50_score"):
        if b.get(key) and n.get(key):
            return {"base_reference_ms": float(b["p50_ms"]) / float(b[key]),
                    "new_reference_ms": float(n["p50_ms"]) / float(n[key])}
    return {}


def _order(key: Key) -> tuple:
    """Sort keys whose seq_length may be None."""
    return (*key[:4], key[4] is not None, key[4] or 0)


def _align_models(base: dict[Key, Any], new: dict[Key, Any]) -> tuple[dict[Key, Any], dict[Key, Any]]:
    """Bench JSON vs report.json: compare the bench rows with the report's model when it has exactly one."""
    base_models = {k[0] for k in base}
    new_models = {k[0] for k in new}
    if (base_models == {""}) != (new_models == {""}):
        named = new_models if base_models == {""} else base_models
        if len(named) != 1:
            raise CompressError(
                f"compare: one file is a bench result, the other a report with models {sorted(named)}; "
                "compare two reports, or bench the one model again"
            )

        def strip(rows: dict[Key, Any]) -> dict[Key, Any]:
            return {("", *k[1:]): v for k, v in rows.items()}

        return strip(base), strip(new)
    return base, new


def regressions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The verdict rows that regressed."""
    return [r for r in rows if r.get("regressed")]


def missing(rows: list[dict[str, Any]]) -> list[str]:
    """The baseline's rows that the new run did not measure (so the gate did not judge them), described."""
    return [_label(r) for r in rows if r.get("verdict") == "missing"]


def _label(row: dict[str, Any]) -> str:
    return describe((row.get("model") or "", row["provider"], row["batch"], row["threads"], row.get("seq_length")))


def table(rows: list[dict[str, Any]], max_regression: float) -> str:
    """Plain-text table: both p50s, the ratio (reference-normalized when possible), the raw ratio, p, the machine
    ratio (new / base fastest reference block), verdict."""
    seq = any(r.get("seq_length") is not None for r in rows)  # a column only for text pipelines' reports
    seq_head = f"{'seq':>5} " if seq else ""
    head = f"{'model':<16} {'provider':<28} {'batch':>5} {'thr':>3} {seq_head}{'base p50':>10} " \
           f"{'new p50':>10} {'ratio':>7} {'raw':>7} {'p':>8} {'mach':>5}  verdict (budget +{max_regression:.0%})"
    lines = [head, "-" * len(head)]
    for r in rows:
        seq_cell = f"{r.get('seq_length') or '-':>5} " if seq else ""
        lines.append(
            f"{r['model'] or '-':<16} {r['provider']:<28} {r['batch']:>5} {r['threads']:>3} {seq_cell}"
            f"{_ms(r['base_p50_ms']):>10} {_ms(r['new_p50_ms']):>10} "
            f"{_fmt(r['ratio'], '.3f'):>7} {_fmt(r.get('raw_ratio'), '.3f'):>7} {_fmt(r['p_value'], '.1e'):>8} "
            f"{_fmt(r.get('machine_ratio'), '.2f'):>5}  {r['verdict']}"
        )
    return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}ms"
