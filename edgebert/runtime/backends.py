"""Inference backends as data: a name, the ONNX Runtime execution providers it needs, and a hint
for when they are missing. No torch, no transformers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebert.errors import EdgebertError


class BackendError(EdgebertError):
    """A backend is not available on this machine."""


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    providers: tuple[str, ...]
    missing_hint: str


BACKENDS: dict[str, Backend] = {
    "cpu": Backend(
        "cpu",
        "ONNX Runtime CPU",
        ("CPUExecutionProvider",),
        "install onnxruntime (pip install edgebert)",
    ),
    "gpu": Backend(
        "gpu",
        "ONNX Runtime CUDA",
        ("CUDAExecutionProvider", "CPUExecutionProvider"),
        "no CUDA device visible: install edgebert[gpu] on a machine with an NVIDIA GPU",
    ),
}


def require_backend(device: str) -> Backend:
    """The backend for ``device``; a clear error when it is unknown or unavailable here."""
    import onnxruntime as ort

    backend = BACKENDS.get(device)
    if backend is None:
        raise BackendError(f"unknown device '{device}': choose one of {', '.join(BACKENDS)}")
    if backend.providers[0] not in ort.get_available_providers():
        raise BackendError(backend.missing_hint)
    return backend


def open_session(path: Path | bytes, device: str = "cpu", *, threads: int | None = None) -> Any:
    """An ONNX Runtime session for the model at ``path`` (or a serialized model) on ``device``."""
    import onnxruntime as ort

    backend = require_backend(device)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        model = path if isinstance(path, bytes) else str(path)
        return ort.InferenceSession(model, options, providers=list(backend.providers))
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable models
        shown = "the model" if isinstance(path, bytes) else f"'{path}'"
        raise BackendError(f"ONNX Runtime could not load {shown}: {exc}") from exc
