"""Print the config reference (every section, key, type, default, meaning) as Markdown, from the config classes.

docs/config.md is this script's output; tests/test_docs.py checks they agree.
"""
from __future__ import annotations

import typing


def _type_name(annotation) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    return (text.replace("typing.", "").replace("Literal", "one of ").replace("NoneType", "None")
            .replace("compress.train.config.", "").replace("<class '", "").replace("'>", "").replace(" | ", " or "))


def _paragraph(doc: str | None) -> str:
    """A docstring's first paragraph on one line (its first line alone cut sentences in two)."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return f"`{field.default_factory()!r}`"
    return f"`{field.default!r}`"


def reference() -> str:
    from compress.config import PipelineConfig, _section_type

    out = []
    for name, field in PipelineConfig.model_fields.items():
        if field.exclude:
            continue
        section = _section_type(field.annotation)
        optional = "optional section: its stage runs only when present" if not field.is_required() and \
            type(None) in typing.get_args(field.annotation) else ""
        if name == "search":
            optional = "optional section: read by `compress search` only; `compress run` ignores it"
        elif name == "evaluate":  # no stage of its own: every stage that scores a model reads it
            optional = "optional section: the metric every stage scores models by"
        out.append(f"### [{name}]" + (f" ({optional})" if optional else ""))
        out.append("")
        out.append(_paragraph(section.__doc__))
        out.append("")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for key, f in section.model_fields.items():
            if f.exclude:
                continue
            sub = _section_type(f.annotation)
            if sub is not None and sub.__name__ != "TrainConfig":
                kind = f"table {{ {', '.join(sub.model_fields)} }} ({_paragraph(sub.__doc__)})"
            else:
                kind = f"[{name}.{key}] table (keys as [teacher.train] / TrainConfig)" if sub else _type_name(f.annotation)
            desc = (f.description or "").replace("|", "\\|").replace("\n", " ")
            out.append(f"| `{key}` | {kind} | {_default(f)} | {desc} |")
        out.append("")
    from compress.train import TrainConfig

    out.append("### [teacher.train]")
    out.append("")
    out.append(_paragraph(TrainConfig.__doc__))
    out.append("")
    out.append("| key | type | default | meaning |")
    out.append("|---|---|---|---|")
    for key, f in TrainConfig.model_fields.items():
        out.append(f"| `{key}` | {_type_name(f.annotation)} | {_default(f)} | {(f.description or '')} |")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
