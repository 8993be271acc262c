"""Where the numbers were measured: versions, CPU, cores, providers."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np


def environment() -> dict[str, Any]:
    """Where the numbers were measured: versions, CPU, cores, providers. Never fails on a missing package."""
    import onnxruntime as ort

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "providers_available": ort.get_available_providers(),
        "int8_isa": int8_isa(),
    }
    if hasattr(os, "getloadavg"):
        env["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return env


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# /proc/cpuinfo flags that decide how fast (and whether exactly) int8 matrix products run.
_INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",  # x86
               "asimddp", "i8mm")  # ARM: dot product, int8 matrix multiply


def int8_isa(flags: set[str] | None = None) -> list[str]:
    """The CPU's int8-relevant instruction sets, from /proc/cpuinfo (empty where it cannot be read)."""
    if flags is None:
        flags = set()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.lower().startswith(("flags", "features")):
                    flags.update(line.split(":", 1)[1].split())
        except OSError:
            pass
    return [f for f in _INT8_FLAGS if f in flags]


def u8s8_saturates(isa: list[str], machine: str | None = None) -> bool:
    """True on x86 CPUs with AVX2/AVX-512 but no VNNI: ONNX Runtime's u8s8 kernels use VPMADDUBSW there, whose
    16-bit intermediate sums can saturate; ORT's quantization docs advise reduce_range (7-bit weights) or u8u8
    when the accuracy drop is large. VNNI (and ARM) accumulate in 32 bits and do not saturate."""
    machine = (machine or platform.machine()).lower()
    x86 = machine in ("x86_64", "amd64", "i686", "x86")
    vnni = {"avx512_vnni", "avx_vnni", "amx_int8"} & set(isa)
    return x86 and bool({"avx2", "avx512f"} & set(isa)) and not vnni
