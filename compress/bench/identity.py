"""Are two saved results about the same thing? `compress compare` warns (or, with --strict, fails) when not.

A report.json names its pipeline and each model with its parameter count; a bench JSON names the model's inputs
(name, shape, type). Matching rows of two unrelated pipelines by model name ("teacher" vs "teacher") gives a
confident ratio that means nothing; these checks say so before the table does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def model_inputs(model_path: str | Path) -> dict[str, dict[str, Any]] | None:
    """{input name: {"shape": [...], "type": "tensor(float)"}} of an ONNX or ORT-format model; None if unreadable."""
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception:  # the bench itself reports an unreadable model; this is only extra information
        return None
    return {i.name: {"shape": [d if isinstance(d, (int, str)) else None for d in i.shape], "type": i.type}
            for i in session.get_inputs()}


def mismatches(base: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two documents (load_document) in ways that make their rows incomparable."""
    out = []
    base_pipe, new_pipe = base.get("pipeline"), new.get("pipeline")
    if base_pipe and new_pipe and base_pipe != new_pipe:
        out.append(f"different pipelines ({base_pipe!r} vs {new_pipe!r})")
    base_models, new_models = _params(base), _params(new)
    for name in sorted(set(base_models) & set(new_models)):
        b, n = base_models[name], new_models[name]
        if b is not None and n is not None and b != n:
            out.append(f"model {name!r} has {b:,} params in one and {n:,} in the other")
    if base.get("inputs") and new.get("inputs") and base["inputs"] != new["inputs"]:
        out.append(f"different model inputs ({_inputs(base['inputs'])} vs {_inputs(new['inputs'])})")
    base_prov, new_prov = _providers(base), _providers(new)
    if base_prov and new_prov and base_prov != new_prov:
        out.append(f"different providers measured ({', '.join(sorted(base_prov))} vs {', '.join(sorted(new_prov))})")
    if isinstance(base.get("dims"), dict) and isinstance(new.get("dims"), dict) and base["dims"] != new["dims"]:
        shown = [", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "none" for d in (base["dims"], new["dims"])]
        out.append(f"timed at different --dim sizes ({shown[0]} vs {shown[1]})")  # documents before 2026-12-07 say none
    if isinstance(base.get("fed"), dict) and isinstance(new.get("fed"), dict) and base["fed"] != new["fed"]:
        shown = ["; ".join(f"{k} {'x'.join(map(str, v))}" for k, v in sorted(d.items()))
                 for d in (base["fed"], new["fed"])]
        out.append(f"timed on --inputs of different shapes ({shown[0]} vs {shown[1]})")
    fixed = fixed_differ(base.get("fixed"), new.get("fixed"))
    return out + ([fixed] if fixed else [])


def fixed_differ(base: "list[str] | None", new: "list[str] | None") -> str | None:
    """What differs in the dimensions and inputs two bench runs fixed (--fix-dim, --fix-input), or None: Silero VAD
    bound to 8 kHz and to 16 kHz runs other branches, though its inputs read the same."""
    if sorted(base or []) == sorted(new or []):
        return None
    return f"timed with different dimensions or inputs fixed ({', '.join(base or []) or 'none'} vs " \
           f"{', '.join(new or []) or 'none'})"


def cpu_notes(base: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Differences in the machines that change speed (not a reason to refuse: a reason to read with care): the int8
    instruction sets, the CPU model, the core count and the onnxruntime version, each where both documents say."""
    b_env = base.get("environment") if isinstance(base.get("environment"), dict) else {}
    n_env = new.get("environment") if isinstance(new.get("environment"), dict) else {}
    out = []
    b, n = b_env.get("int8_isa"), n_env.get("int8_isa")
    if isinstance(b, list) and isinstance(n, list) and sorted(map(str, b)) != sorted(map(str, n)):
        out.append(f"the two CPUs have different int8 instruction sets ({', '.join(map(str, b)) or 'none'} vs "
                   f"{', '.join(map(str, n)) or 'none'}); int8 models' latency and even accuracy (u8s8 saturation "
                   "without VNNI) can differ for that alone")
    for key, what in (("cpu", "different CPU models"), ("cores", "different core counts"),
                      ("cores_usable", "different numbers of cores this process may use"),
                      ("onnxruntime", "different onnxruntime versions")):
        b, n = b_env.get(key), n_env.get(key)
        if b is not None and n is not None and b != n:
            out.append(f"{what} ({b} vs {n}); latency can differ for that alone")
    return out


def _params(doc: dict[str, Any]) -> dict[str, int | None]:
    models = doc.get("models") if isinstance(doc.get("models"), list) else []
    return {str(m.get("name")): m.get("params") for m in models if isinstance(m, dict) and m.get("name")}


def _providers(doc: dict[str, Any]) -> set[str]:
    if isinstance(doc.get("models"), list):
        rows = [r for m in doc["models"] if isinstance(m, dict) and isinstance(m.get("latency"), list)
                for r in m["latency"]]
    else:
        rows = doc.get("latency") if isinstance(doc.get("latency"), list) else []
    return {str(r.get("provider")) for r in rows if isinstance(r, dict)}


def _inputs(inputs: dict[str, Any]) -> str:
    return "; ".join(f"{name} {spec.get('shape')} {spec.get('type', '')}".strip() for name, spec in inputs.items())
