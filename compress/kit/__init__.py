"""On-device bench kit: a folder a user copies to a phone or board, runs with only onnxruntime + numpy there,
and whose JSON `compress compare` reads next to numbers from this machine.

`bench_kit.py` in this package is the script copied into every kit; it never imports compress.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.cache import write_json
from compress.errors import CompressError

if TYPE_CHECKING:
    import numpy as np

SCRIPT = Path(__file__).with_name("bench_kit.py")

_README = """\
compress bench kit: {name}
model: {model} ({bytes} bytes, sha256 {sha256})
inputs: {inputs} (batch {batch}); expected outputs: {expected} (recorded with onnxruntime {ort} on CPU)

On the device (Python >= 3.8):
  python3 -m venv kit-venv
  kit-venv/bin/pip install onnxruntime numpy        # Android/Termux or a board; any build with your provider
  kit-venv/bin/python bench_kit.py --json device.json
  kit-venv/bin/python bench_kit.py --provider xnnpack --provider cpu --threads 1 --threads 4 --json device.json
  kit-venv/bin/python bench_kit.py --provider nnapi --provider-option nnapi:use_fp16=1 --strict --json device.json

Providers default to {providers}. A provider this onnxruntime lacks is listed under "unavailable"
(exit 2 with --strict, or when nothing could be timed); a name onnxruntime does not know is exit 2. Outputs
are checked against {expected}; the max abs diff is in the JSON under "parity".

Back on the workstation:
  compress compare local.json device.json
"""


def make_kit(
    model_path: Path,
    out_dir: Path,
    *,
    batch: int | None = None,
    inputs: dict[str, "np.ndarray"] | None = None,
    providers: list[str] | None = None,
    provider_options: dict[str, dict[str, str]] | None = None,
    threads: list[int] | None = None,
    name: str | None = None,
    atol: float = 1e-4,
    warmup_runs: int = 20,
    min_runs: int = 100,
    min_seconds: float = 0.6,
    max_seconds: float = 30.0,
    repetitions: int = 5,
    against: Path | None = None,
    max_regression: float = 0.10,
    block_seconds: float = 0.05,
    no_spin: bool = False,
) -> Path:
    """Write a self-contained bench kit for `model_path` (.onnx or .ort) into `out_dir`; return `out_dir`.

    The folder holds the model, `inputs.npz` (given `inputs`, else seeded random ones at `batch`),
    `expected.npz` (this machine's CPU outputs, for an on-device parity check), `bench_kit.py`, `kit.json`
    (defaults the script reads: providers, threads, timing settings) and `README.txt` with the exact commands.
    Provider names are kept as given (short or ORT names, any hardware): the script reports the ones the
    device lacks as unavailable. Timing defaults match `compress bench` (BenchSettings).
    With `against` (an older version of the model, taking the same inputs) the kit also holds it as
    `against.onnx` and `paired_kit.py`, and on the device times the two in alternating blocks and judges the
    paired ratio against `max_regression`, as `compress bench NEW --against OLD` does here. `batch` is written
    into kit.json as the rows' batch (default: axis 0 of `inputs`, else 1); `no_spin` (what
    `compress bench --edge` timed) becomes the script's default, so the device does not spin unless told to.
    """
    import numpy as np

    from compress.bench.inputs import batch_of, check_inputs, make_inputs
    from compress.bench.providers import check_model_file, open_session

    model_path = check_model_file(model_path)
    if batch is not None and batch < 1:
        raise CompressError(f"batch: expected an integer >= 1, got {batch}")
    if any(t < 1 for t in threads or [1]):
        raise CompressError(f"threads: expected integers >= 1, got {threads}")
    session, _ = open_session(model_path, "cpu", threads=1, strict=True)
    feed = check_inputs(inputs, session) if inputs is not None else make_inputs(session, batch or 1)
    if batch is None:  # the inputs' first axis, as the kit script read it before kit.json said
        batch = batch_of(feed) if feed else 1
    outputs = session.run(None, feed)

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CompressError(f"{out_dir}: expected a directory for the kit, got a file; pick another --kit path")
    out_dir.mkdir(parents=True, exist_ok=True)
    model_name = "model.ort" if model_path.suffix.lower() == ".ort" else "model.onnx"
    shutil.copyfile(model_path, out_dir / model_name)
    data = model_path.with_name(model_path.name + ".data")
    if data.exists():  # external weights keep the name the graph refers to
        shutil.copyfile(data, out_dir / data.name)
    np.savez(out_dir / "inputs.npz", **feed)
    np.savez(out_dir / "expected.npz", **{f"output_{i}": np.asarray(o) for i, o in enumerate(outputs)})
    shutil.copyfile(SCRIPT, out_dir / "bench_kit.py")
    shutil.copyfile(SCRIPT.with_name("placement_kit.py"), out_dir / "placement_kit.py")
    paired = _add_against(against, feed, out_dir, max_regression, block_seconds) if against is not None else {}
    sha256 = hashlib.sha256((out_dir / model_name).read_bytes()).hexdigest()
    kit = _kit_json(name or model_path.stem, model_name, sha256, _params(model_path), providers, provider_options,
                    threads, atol, timing={"warmup_runs": warmup_runs, "min_runs": min_runs,
                                           "min_seconds": min_seconds, "max_seconds": max_seconds,
                                           "repetitions": repetitions, "no_spin": bool(no_spin)})
    kit["batch"] = batch
    write_json(out_dir / "kit.json", {**kit, **paired})
    _readme(out_dir, kit, model_name, sha256, batch, paired)
    return out_dir


def _readme(out_dir: Path, kit: dict[str, Any], model_name: str, sha256: str, batch: int,
            paired: dict[str, Any]) -> None:
    """README.txt: the exact commands, and how the kit pairs the model with an older one when it has one."""
    import onnxruntime as ort

    (out_dir / "README.txt").write_text(_README.format(
        name=kit["name"], model=model_name, bytes=(out_dir / model_name).stat().st_size, sha256=sha256[:16],
        inputs="inputs.npz", batch=batch, expected="expected.npz",
        ort=ort.__version__, providers=", ".join(kit["providers"]),
    ) + (_PAIRED_README.format(against=paired["against"], percent=round(100 * paired["max_regression"]))
         if paired else ""))


_PAIRED_README = """
Paired with the older model ({against}): every bench_kit.py run above also times model and {against} in
alternating blocks on the device (paired_kit.py, which bench_kit.py runs itself) and exits 1 when the model is
slower than {against} beyond +{percent}% at the paired interval; --no-against skips it.
"""


def _kit_json(name: str, model_name: str, sha256: str, params: int | None, providers: list[str] | None,
              provider_options: dict[str, dict[str, str]] | None, threads: list[int] | None, atol: float,
              timing: dict[str, Any]) -> dict[str, Any]:
    """kit.json: the defaults bench_kit.py reads (providers, threads, timing) and what the kit was made with."""
    import numpy as np
    import onnxruntime as ort

    from compress.bench.providers import resolve_provider

    return {
        "name": name, "model": model_name, "model_sha256": sha256, "params": params,
        "inputs": "inputs.npz", "expected": "expected.npz",
        "providers": [resolve_provider(p) for p in (providers or ["cpu"])],
        "provider_options": {resolve_provider(k): {str(a): str(b) for a, b in v.items()}
                             for k, v in (provider_options or {}).items()},
        "threads": list(threads or [1]), "atol": atol, **timing,
        "made_with": {"onnxruntime": ort.__version__, "numpy": np.__version__},
    }


def _params(model_path: Path) -> int | None:
    """Number of weights in the ONNX initializers (None for ORT format, which onnx cannot read)."""
    if model_path.suffix.lower() == ".ort":
        return None
    import onnx
    import numpy as np

    model = onnx.load(str(model_path), load_external_data=False)
    return int(sum(np.prod(init.dims, dtype=np.int64) for init in model.graph.initializer))


def _add_against(against: Path, feed: dict[str, "np.ndarray"], out_dir: Path, max_regression: float,
                 block_seconds: float) -> dict[str, Any]:
    """Put the old model (and the paired script) in the kit; its kit.json keys. It must take the kit's inputs."""
    from compress.bench.providers import check_model_file, open_session

    against = check_model_file(against)
    session, _ = open_session(against, "cpu", threads=1, strict=True)
    try:
        session.run(None, feed)
    except Exception as exc:  # ORT's own error types: wrong input names, shapes or types
        raise CompressError(f"{against}: does not take the kit's inputs ({str(exc).splitlines()[0][:200]}); "
                            "--against compares two versions of one model, with the same inputs") from None
    name = "against.ort" if against.suffix.lower() == ".ort" else "against.onnx"
    shutil.copyfile(against, out_dir / name)
    shutil.copyfile(SCRIPT.with_name("paired_kit.py"), out_dir / "paired_kit.py")
    sha256 = hashlib.sha256((out_dir / name).read_bytes()).hexdigest()
    return {"against": name, "against_sha256": sha256, "max_regression": max_regression,
            "block_seconds": block_seconds}
