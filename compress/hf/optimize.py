"""`[export] optimize = "transformer"`: ONNX Runtime's transformer optimizer (fused attention, LayerNorm, GELU),
kept only where it measures faster than the plain export and passes the same parity check.

By hand on ORT 1.32 CPU it bought nothing for MiniLM (ORT's own graph optimisations at session creation already
fuse most of it), so this is an option, off by default, that reports what it measured instead of assuming.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from compress.errors import first_line


def optimize_if_faster(path: Path, model: Any, data: Any, reference: Any, ecfg: Any, *, seq_length: int) -> dict:
    """Optimise `path` into a sibling file; if parity holds (against `reference`, torch's outputs by name on the
    first validation rows) and paired timing says it is significantly faster at batch 1 and `seq_length`, move it
    over `path`. Returns what was measured and decided."""
    from compress.bench.config import PICK_PROFILE
    from compress.bench.paired import paired_bench
    from compress.onnx.parity import compare
    from compress.onnx.run import outputs_on

    cfg = model.encoder.config
    candidate = path.with_suffix(".optimized.onnx")
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(path), model_type="bert", num_heads=int(cfg.num_attention_heads),
                             hidden_size=int(cfg.hidden_size), opt_level=1)
        opt.save_model_to_file(str(candidate))
    except Exception as exc:  # the optimizer does not know every architecture
        return {"kept": False, "why": f"optimizer failed: {first_line(exc)}"}
    try:
        names = list(reference)
        got = outputs_on(candidate, data, "val", names=names, rows=range(len(next(iter(reference.values())))))
        check = compare([reference[n] for n in names], [got[n] for n in names], atol=ecfg.parity_atol,
                        rtol=ecfg.parity_rtol)
        if not check["ok"]:
            return {"kept": False, "why": f"parity failed after optimisation ({check['max_abs_diff']:.3g})"}
        feed = data.inputs.bench_feed(data, 1, seq_length)
        row = paired_bench(path, candidate, "cpu", 1, 1, PICK_PROFILE, inputs=feed)
        faster = row["ci_ratio"][1] < 1.0
        result = {"kept": faster, "ratio": row["ratio"], "ci_ratio": row["ci_ratio"], "seq_length": seq_length,
                  "why": f"optimized / plain time {row['ratio']:.3f} (99% CI {row['ci_ratio'][0]:.3f}.."
                         f"{row['ci_ratio'][1]:.3f}) at batch 1, 1 thread: "
                         + ("kept" if faster else "not significantly faster, plain export kept")}
        if faster:
            shutil.move(str(candidate), str(path))
        return result
    finally:
        candidate.unlink(missing_ok=True)
