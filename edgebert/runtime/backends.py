"""Inference backends as data: a name, how to open a model on it, which model files it reads, and
a hint for when it is missing. No torch, no transformers; openvino is imported only when used."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from edgebert.errors import EdgebertError


class BackendError(EdgebertError):
    """A backend is not available on this machine."""


@dataclass(frozen=True)
class Backend:
    """``suffixes``: the model files it reads; ``prefers``: the bundle models it runs when none is
    named, best first; ``pad_to_multiple_of``: inputs are padded to a multiple of this many tokens
    (OpenVINO re-plans for every new input shape: padding SST-2 sentences to multiples of 16 took
    its INT8 model from 1.97 to 1.43 ms a sentence; ONNX Runtime pads nothing, since dynamic INT8's
    ranges would then see the padding)."""

    name: str
    description: str
    available: Callable[[], bool]
    open: Callable[[Path | bytes, int | None, str | None], Any]
    suffixes: tuple[str, ...]
    prefers: tuple[str, ...]
    missing_hint: str
    pad_to_multiple_of: int | None = None


def _ort_providers(*names: str) -> Callable[[], bool]:
    def available() -> bool:
        import onnxruntime as ort

        return names[0] in ort.get_available_providers()

    return available


def _openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _open_ort(providers: tuple[str, ...]) -> Callable[[Path | bytes, int | None, str | None], Any]:
    def open_ort(model: Path | bytes, threads: int | None, inference_precision: str | None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        return ort.InferenceSession(
            model if isinstance(model, bytes) else str(model), options, providers=list(providers)
        )

    return open_ort


class OpenVINOSession:
    """An OpenVINO compiled model behind the two calls the Predictor makes of an ONNX Runtime session
    (``get_inputs`` and ``run``). One infer request per thread, so that ``run`` is thread-safe; outputs
    are copied out of the request's buffers, which the next call reuses."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self._inputs = [SimpleNamespace(name=port.get_any_name()) for port in compiled.inputs]
        self._outputs = [port.get_any_name() for port in compiled.outputs]
        self._local = threading.local()

    def get_inputs(self) -> list[Any]:
        return self._inputs

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(feeds)
        return [np.array(result[name], copy=True) for name in names or self._outputs]


def _open_openvino(model: Path | bytes, threads: int | None, inference_precision: str | None) -> Any:
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if inference_precision:
        config["INFERENCE_PRECISION_HINT"] = inference_precision
    if isinstance(model, bytes):
        raise BackendError("the OpenVINO backend opens model files, not serialized models")
    return OpenVINOSession(core.compile_model(core.read_model(str(model)), "CPU", config))


BACKENDS: dict[str, Backend] = {
    "cpu": Backend(
        "cpu",
        "ONNX Runtime CPU",
        _ort_providers("CPUExecutionProvider"),
        _open_ort(("CPUExecutionProvider",)),
        (".onnx",),
        ("int8", "fp32"),
        "install onnxruntime (pip install edgebert)",
    ),
    "gpu": Backend(
        "gpu",
        "ONNX Runtime CUDA",
        _ort_providers("CUDAExecutionProvider"),
        _open_ort(("CUDAExecutionProvider", "CPUExecutionProvider")),
        (".onnx",),
        ("fp16", "fp32"),
        "no CUDA device visible: install edgebert[gpu] on a machine with an NVIDIA GPU",
    ),
    "tensorrt": Backend(
        "tensorrt",
        "ONNX Runtime TensorRT",
        _ort_providers("TensorrtExecutionProvider"),
        _open_ort(("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")),
        (".onnx",),
        ("int8", "fp16", "fp32"),
        "no TensorRT execution provider: install onnxruntime-gpu with TensorRT on a machine with an "
        "NVIDIA GPU",
    ),
    "openvino": Backend(
        "openvino",
        "OpenVINO CPU",
        _openvino_available,
        _open_openvino,
        (".xml", ".onnx"),
        ("openvino-int8", "openvino-fp32", "fp32"),
        "OpenVINO is not installed: pip install edgebert[openvino]",
        pad_to_multiple_of=16,
    ),
}


def require_backend(device: str) -> Backend:
    """The backend for ``device``; a clear error when it is unknown or unavailable here."""
    backend = BACKENDS.get(device)
    if backend is None:
        raise BackendError(f"unknown device '{device}': choose one of {', '.join(BACKENDS)}")
    if not backend.available():
        raise BackendError(backend.missing_hint)
    return backend


def open_session(
    path: Path | bytes,
    device: str = "cpu",
    *,
    threads: int | None = None,
    inference_precision: str | None = None,
) -> Any:
    """A session for the model at ``path`` (or a serialized model) on ``device``: an ONNX Runtime
    ``InferenceSession``, or an ``OpenVINOSession`` with the same ``get_inputs`` and ``run``.
    ``inference_precision`` (OpenVINO only) asks for the precision it computes in, e.g. ``f32``; its
    default is bf16 on CPUs with AVX-512 BF16. ``computed_in`` tells what a session uses."""
    backend = require_backend(device)
    try:
        return backend.open(path, threads, inference_precision)
    except Exception as exc:  # the runtimes raise their own untyped errors for unreadable models
        shown = "the model" if isinstance(path, bytes) else f"'{path}'"
        raise BackendError(f"{backend.description} could not load {shown}: {exc}") from exc


def computed_in(session: Any) -> str | None:
    """The precision OpenVINO says a session computes in (``f32``, ``bf16``); None for ONNX Runtime,
    which computes in the model's own precision."""
    return getattr(session, "inference_precision", None)
