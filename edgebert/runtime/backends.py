"""Inference backends as data: a name, how to open a model on it, which model files it reads, and
a hint for when it is missing. No torch, no transformers; openvino is imported only when used."""

from __future__ import annotations

import contextlib
import functools
import io
import platform
import re
import threading
from collections import OrderedDict
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
class SessionOptions:
    """How to open a model. ``threads``: intra-op threads (None: the runtime's default). OpenVINO
    only: ``inference_precision`` asks for the precision it computes in (e.g. ``f32``; its default is
    bf16 on CPUs with AVX-512 BF16); ``static_shapes`` > 0 compiles a model specialised to each input
    shape met, keeping the last that many (see ``OpenVINOSession``). ONNX Runtime only: with
    ``spinning`` off its idle threads sleep at once after a call instead of spinning for the next
    (slower back-to-back calls, no CPU burnt between calls that come now and then)."""

    threads: int | None = None
    inference_precision: str | None = None
    static_shapes: int = 0
    spinning: bool = True


@dataclass(frozen=True)
class Backend:
    """``suffixes``: the model files it reads; ``prefers``: the bundle models it runs when none is
    named, best first; ``pad_to_multiple_of``: inputs are padded to a multiple of this many tokens
    (OpenVINO re-plans for every new input shape, and a model compiled for each shape brings its own
    copy of the weights to the cache: on SST-2 sentences its INT8 model took 1.97 ms a sentence
    unpadded, 1.43 padded to multiples of 16 tokens; with static shapes, multiples of 32 took 0.90×
    the time of 16, two shapes instead of four; ONNX Runtime pads nothing, since dynamic INT8's
    ranges would then see the padding)."""

    name: str
    description: str
    available: Callable[[], bool]
    open: Callable[[Path | bytes, SessionOptions], Any]
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


# ONNX Runtime's CPU SkipLayerNormalization took 107 us where the Add and LayerNormalization it
# replaces took 53 together (MiniLM, 1 x 128, 2 threads), so the CPU provider runs without that fusion
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first value of each field of /proc/cpuinfo (``model name``, ``flags``...); empty where
    that cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (``avx2``, ``avx512_vnni``...); None where they cannot be read."""
    flags = cpu_info().get("flags")
    return None if flags is None else frozenset(flags.split())


def x86_without_vnni() -> bool | None:
    """Whether this is an x86 CPU without INT8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or
    AMX); None for an x86 CPU whose features cannot be read (not Linux)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i386", "i686"):
        return False
    flags = cpu_flags()
    return None if flags is None else not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def u8s8_saturates() -> bool:
    """Whether ONNX Runtime's default INT8 kernels on this CPU give wrong products. On x86 CPUs
    without VNNI they multiply u8 activations by s8 weights with PMADDUBSW, which adds each pair of
    neighbouring products in 16 bits and clamps (255 × 127 × 2 = 64,770 becomes 32,767), so an
    INT8 model answers differently there than on a CPU with VNNI. Where they do, edgebert's
    sessions ask for ONNX Runtime's u8 × u8 kernels (``session.x64quantprecision``), which are
    exact. An x86 CPU whose features cannot be read is taken to lack VNNI: exact first. Elsewhere
    (ARM) ONNX Runtime's INT8 kernels sum in 32 bits."""
    return x86_without_vnni() is not False


@functools.cache
def load_cuda_libraries() -> str:
    """Have ONNX Runtime load CUDA's and cuDNN's libraries from NVIDIA's pip packages, once, and
    return what it printed (the libraries it could not load), for an error to quote.

    onnxruntime-gpu's CUDA provider names those libraries without a path (no RPATH), so where they
    come from pip (``onnxruntime-gpu[cuda,cudnn]``, what ``edgebert[gpu]`` installs) rather than a
    system CUDA on the loader's path, the provider cannot start unless they are loaded first
    (``onnxruntime.preload_dlls``, ONNX Runtime 1.21 and later; it does nothing in a CPU build).
    It prints; that goes here, not into a ``--json`` output."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return ""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            preload()
        except Exception as exc:  # a RuntimeError of its own for a library folder not there, say
            print(exc)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", printed.getvalue())  # its warnings come coloured
    return "; ".join(line.strip() for line in plain.splitlines() if line.strip())


def _open_ort(
    providers: tuple[str, ...], disabled_optimizers: tuple[str, ...] = ()
) -> Callable[[Path | bytes, SessionOptions], Any]:
    def open_ort(model: Path | bytes, settings: SessionOptions) -> Any:
        import onnxruntime as ort

        said = load_cuda_libraries() if providers[0] != "CPUExecutionProvider" else ""
        options = ort.SessionOptions()
        options.log_severity_level = 4  # fatal only: its errors are raised, and edgebert says them once
        if settings.threads:
            options.intra_op_num_threads = settings.threads
        if not settings.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if u8s8_saturates():
            options.add_session_config_entry("session.x64quantprecision", "1")
        session = ort.InferenceSession(
            model if isinstance(model, bytes) else str(model),
            options,
            providers=list(providers),
            disabled_optimizers=list(disabled_optimizers),
        )
        used = session.get_providers()
        if used[0] != providers[0]:  # ONNX Runtime falls back silently when a provider cannot start
            raise BackendError(
                f"ONNX Runtime could not start {providers[0]} here and fell back to {used[0]}: "
                "check that an NVIDIA GPU is visible (nvidia-smi) and that the CUDA, cuDNN and, for "
                "TensorRT, TensorRT libraries onnxruntime-gpu needs are installed"
                + (f" (loading CUDA's libraries: {said})" if said else "")
            )
        return session

    return open_ort


class ByTokens:
    """Two ONNX Runtime sessions of one model behind the two calls the Predictor makes of one
    (``get_inputs`` and ``run``): calls of at most ``up_to_tokens`` tokens (batch × sequence) run on
    ``small``, larger ones on the session ``open_large`` returns. An INT8 model's
    fused-attention graph is faster for small calls only (``edgebert.calibration.attention``).
    The large session is opened by the first call that needs it, so that a device sending one
    sentence at a time holds one graph in memory, not two."""

    def __init__(self, small: Any, open_large: Callable[[], Any], up_to_tokens: int) -> None:
        self.small, self.up_to_tokens = small, up_to_tokens
        self._open_large, self._large = open_large, None
        self._lock = threading.Lock()

    @property
    def large(self) -> Any:
        with self._lock:  # concurrent first large calls open it once
            if self._large is None:
                self._large = self._open_large()
            return self._large

    def get_inputs(self) -> Any:
        return self.small.get_inputs()

    def choose(self, feeds: dict[str, np.ndarray]) -> Any:
        return self.small if feeds["input_ids"].size <= self.up_to_tokens else self.large

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> Any:
        return self.choose(feeds).run(output_names, feeds)


class OpenVINOSession:
    """An OpenVINO model behind the two calls the Predictor makes of an ONNX Runtime session
    (``get_inputs`` and ``run``). One infer request per thread and compiled model, so that ``run`` is
    thread-safe; outputs are copied out of the request's buffers, which the next call reuses.

    With ``static_shapes`` > 0 each input shape met gets a model compiled for that shape alone,
    the last ``static_shapes`` of them kept. OpenVINO's static-shape kernels are faster than its
    dynamic-shape ones (SST-2 MiniLM INT8, 2 threads: 0.86× the time at batch 1 × 128, 0.92× at
    batch 8, 0.66× on real sentences bucketed to 16 tokens), but each costs a compile (0.33 s) and
    its own copy of the repacked weights (about 80 MB for MiniLM INT8), so it is off by default."""

    def __init__(self, core: Any, model: Any, config: dict[str, Any], static_shapes: int = 0) -> None:
        self._dynamic = _Compiled(core.compile_model(model, "CPU", config))
        compiled = self._dynamic.compiled
        self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self._inputs = [SimpleNamespace(name=port.get_any_name()) for port in compiled.inputs]
        self._outputs = [port.get_any_name() for port in compiled.outputs]
        self._build = (core, model, config)
        self._static_shapes = static_shapes
        self._specialised: OrderedDict[tuple[Any, ...], _Compiled] = OrderedDict()
        self._lock = threading.Lock()

    def get_inputs(self) -> list[Any]:
        return self._inputs

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        compiled = self._for_shape(feeds) if self._static_shapes else self._dynamic
        # no copies into and out of the request's buffers (25 us of a 0.7 ms MiniLM INT8 call); the
        # outputs are copied here instead, before the next call on this thread reuses them
        result = compiled.request().infer(feeds, share_inputs=True, share_outputs=True)
        return [np.array(result[name], copy=True) for name in names or self._outputs]

    def _for_shape(self, feeds: dict[str, np.ndarray]) -> _Compiled:
        key = tuple((name, feeds[name].shape) for name in sorted(feeds))
        with self._lock:
            if key in self._specialised:
                self._specialised.move_to_end(key)
                return self._specialised[key]
            core, model, config = self._build
            model = model.clone()
            model.reshape({name: list(shape) for name, shape in key})
            compiled = self._specialised[key] = _Compiled(core.compile_model(model, "CPU", config))
            if len(self._specialised) > self._static_shapes:
                self._specialised.popitem(last=False)
            return compiled


class _Compiled:
    """An OpenVINO compiled model and one infer request per thread."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._local = threading.local()

    def request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request


@functools.cache
def openvino_default_precision() -> str:
    """What OpenVINO's CPU plugin computes float operations in when not told: ``bf16`` on CPUs with
    AVX-512 BF16 or AMX, else ``f32``."""
    import openvino as ov

    return str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string())


def _open_openvino(model: Path | bytes, settings: SessionOptions) -> Any:
    import openvino as ov

    if isinstance(model, bytes):
        raise BackendError("the OpenVINO backend opens model files, not serialized models")
    core = ov.Core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if settings.threads:
        config["INFERENCE_NUM_THREADS"] = settings.threads
    wanted = settings.inference_precision
    if wanted:
        config["INFERENCE_PRECISION_HINT"] = wanted
    session = OpenVINOSession(core, core.read_model(str(model)), config, settings.static_shapes)
    if wanted and session.inference_precision != wanted:  # the CPU plugin falls back without a word
        raise BackendError(
            f"inference_precision {wanted}: OpenVINO's CPU plugin has no {wanted} path on this CPU and "
            f"would compute in {session.inference_precision}: ask for that, or leave the default"
        )
    return session


BACKENDS: dict[str, Backend] = {
    "cpu": Backend(
        "cpu",
        "ONNX Runtime CPU",
        _ort_providers("CPUExecutionProvider"),
        _open_ort(("CPUExecutionProvider",), CPU_DISABLED_OPTIMIZERS),
        (".onnx",),
        ("int8", "fp32"),
        "install onnxruntime (pip install onnxruntime)",
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
        ("fp16", "fp32"),  # not INT8: edgebert's INT8 graphs use ONNX Runtime operators TensorRT lacks
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
        "OpenVINO is not installed: pip install openvino (to predict; 'edgebert[openvino]' adds nncf, "
        "for export --target openvino)",
        pad_to_multiple_of=32,
    ),
}


def require_backend(device: str) -> Backend:
    """The backend for ``device``; a clear error when it is unknown or unavailable here."""
    backend = BACKENDS.get(device)
    if backend is None:
        raise BackendError(f"unknown backend (device) '{device}': choose one of {', '.join(BACKENDS)}")
    if not backend.available():
        raise BackendError(backend.missing_hint)
    return backend


def open_session(
    path: Path | bytes,
    device: str = "cpu",
    *,
    threads: int | None = None,
    inference_precision: str | None = None,
    static_shapes: int = 0,
    spinning: bool = True,
) -> Any:
    """A session for the model at ``path`` (or a serialized model) on ``device``: an ONNX Runtime
    ``InferenceSession``, or an ``OpenVINOSession`` with the same ``get_inputs`` and ``run``. The
    options are ``SessionOptions``'; ``computed_in`` tells what precision a session computes in."""
    backend = require_backend(device)
    try:
        return backend.open(path, SessionOptions(threads, inference_precision, static_shapes, spinning))
    except BackendError:
        raise
    except Exception as exc:  # the runtimes raise their own untyped errors for unreadable models
        shown = "the model" if isinstance(path, bytes) else f"'{path}'"
        raise BackendError(f"{backend.description} could not load {shown}: {exc}") from exc


def computed_in(session: Any) -> str | None:
    """The precision OpenVINO says a session computes in (``f32``, ``bf16``); None for ONNX Runtime,
    which computes in the model's own precision."""
    return getattr(session, "inference_precision", None)
