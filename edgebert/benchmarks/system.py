"""What machine and libraries a benchmark ran on."""

from __future__ import annotations

import contextlib
import platform
from typing import Any

from edgebert.runtime.backends import cpu_flags, cpu_info, u8s8_saturates

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def system_info() -> dict[str, Any]:
    import numpy
    import onnxruntime
    import psutil
    import tokenizers

    from edgebert import __version__

    flags = cpu_flags() or frozenset()
    return {
        "cpu": _cpu_model(),
        "instruction_sets": [f for f in _FLAGS if f in flags],
        # no VNNI: ONNX Runtime's u8 x s8 INT8 kernels would saturate, so sessions use its u8 x u8 ones
        "onnxruntime_int8_kernels": "u8 x u8" if u8s8_saturates() else "u8 x s8",
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "edgebert": __version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__,
            "tokenizers": tokenizers.__version__,
            **_installed("openvino"),
        },
    }


def _installed(*packages: str) -> dict[str, str]:
    """The versions of those of ``packages`` that are installed (read without importing them)."""
    from importlib import metadata

    found = {}
    for package in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def _cpu_model() -> str:
    info = cpu_info()
    if info:
        return info.get("model name") or platform.machine()
    return platform.processor() or platform.machine()
