"""What machine and libraries a benchmark ran on."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def system_info() -> dict[str, Any]:
    import numpy
    import onnxruntime
    import psutil
    import tokenizers

    from edgebert import __version__

    model, flags = _cpu()
    return {
        "cpu": model,
        "instruction_sets": [f for f in _FLAGS if f in flags],
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
        },
    }


def _cpu() -> tuple[str, set[str]]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return platform.processor() or platform.machine(), set()
    model, flags = "", set[str]()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model or platform.machine(), flags
