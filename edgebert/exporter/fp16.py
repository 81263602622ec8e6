"""An fp16 copy of a bundle's fp32 ONNX model for GPUs (ONNX Runtime CUDA or TensorRT), with fp32
inputs and outputs, validated against its parent. ONNX Runtime CPU runs it too (slowly), so the
validation needs no GPU."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgebert.bundle import Manifest, artifact

FP16_FILE = "model.fp16.onnx"


def fp16_into(stage: Path, manifest: Manifest, config: Any) -> Manifest:
    """Add ``model.fp16.onnx`` to ``stage`` (``config``: a ``QuantizeConfig`` for the tolerances)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from edgebert.quantizer import validated

    started = time.perf_counter()
    model = convert_float_to_float16(
        onnx.load(str(stage / manifest.artifacts["fp32"].file)), keep_io_types=True
    )
    onnx.save(model, str(stage / FP16_FILE))
    made_by = {
        "tool": "onnxruntime.transformers.float16.convert_float_to_float16",
        "io": "fp32 inputs and outputs (casts inside the graph)",
        "seconds": round(time.perf_counter() - started, 1),
    }
    fp16 = artifact(stage, FP16_FILE, precision="fp16", parent="fp32", made_by=made_by)
    return validated(stage, manifest.with_artifact("fp16", fp16), "fp16", config)
