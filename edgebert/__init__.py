"""edgebert: make a BERT small and fast enough for the edge, and prove it is still right.

The public verbs and their configs are imported lazily, so ``import edgebert`` stays light and
the runtime never pulls in torch::

    import edgebert
    edgebert.export("bundle", edgebert.ExportConfig(quantize="int8"))  # torch -> validated ONNX + INT8
    report = edgebert.bench("bundle", edgebert.BenchConfig())         # latency, accuracy, memory, size
    predictor = edgebert.load("bundle")                                # torch-free Predictor
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "export": ("edgebert.exporter", "export"),
    "ExportConfig": ("edgebert.exporter", "ExportConfig"),
    "quantize": ("edgebert.quantizer", "quantize"),
    "QuantizeConfig": ("edgebert.quantizer", "QuantizeConfig"),
    "bench": ("edgebert.benchmarks", "bench"),
    "BenchConfig": ("edgebert.benchmarks", "BenchConfig"),
    "train": ("edgebert.training", "train"),
    "TrainConfig": ("edgebert.training", "TrainConfig"),
    "pretrain": ("edgebert.training", "pretrain"),
    "PretrainConfig": ("edgebert.training", "PretrainConfig"),
    "distill": ("edgebert.training", "distill"),
    "DistillConfig": ("edgebert.training", "DistillConfig"),
    "load": ("edgebert.runtime", "Predictor"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgebert' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names, the lazy ones included (for ``dir(edgebert)`` and tab completion)."""
    return sorted(__all__)
