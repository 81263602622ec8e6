"""Distillation-aware calibration: the fp32 model is the teacher, the static INT8 model the student.

Activation statistics are collected in one pass for all three range methods (minmax, percentile,
entropy). The INT8 model is built once; then, one quantized activation at a time, each method's
range is tried by rewriting that QuantizeLinear's scale and zero point in place, and the range
whose INT8 outputs diverge least from the teacher's (KL of the logits, or cosine distance of the
embeddings) on the calibration texts is kept. BERT's outlier activations (the FFN input after GELU,
LayerNorm outputs with a few huge channels) get a clipped range when clipping helps and the full
one when it does not.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgebert.calibration import STATIC_METHODS, bounds, collect_ranges, quantize_static
from edgebert.fidelity import divergence
from edgebert.runtime import Predictor

log = logging.getLogger("edgebert")


def distill_ranges(
    fp32: Path, teacher: Predictor, texts: list[Any], reference: np.ndarray, *, search_texts: int = 256
) -> tuple[Any, dict[str, Any]]:
    """Per-tensor ranges chosen by teacher-student divergence, and a report of the search."""
    from onnxruntime.quantization import CalibrationMethod, TensorData, TensorsData
    from tqdm.auto import tqdm

    started = time.perf_counter()
    feeds = [teacher.encode([t])[0] for t in texts]  # tokenized once for the three methods
    candidates = collect_ranges(fp32, feeds, STATIC_METHODS)
    limits = {method: bounds(ranges) for method, ranges in candidates.items()}
    collected = time.perf_counter() - started
    subset = texts[:search_texts]
    expected = reference[: len(subset)]
    with tempfile.TemporaryDirectory(prefix=".search-", dir=fp32.parent) as tmp:
        probe = Path(tmp) / "probe.onnx"
        quantize_static(fp32, probe, candidates["minmax"], keep_float=[])
        model, quantizers = _quantizers(probe, set(limits["minmax"]))
        chosen = {name: "minmax" for name in quantizers}

        def score() -> float:
            student = teacher.with_model(model.SerializeToString())
            return divergence(teacher.task, expected, student.outputs(subset)[0])

        before = best = score()
        tried = 0
        for name in tqdm(list(quantizers), desc="calibrating (distill)", unit="tensor", disable=None):
            for method in STATIC_METHODS:
                if method == chosen[name] or name not in limits[method]:
                    continue
                _set_range(quantizers[name], limits[method][name])
                tried += 1
                value = score()
                if value < best:
                    best, chosen[name] = value, method
            _set_range(quantizers[name], limits[chosen[name]][name])
    picked = {name: limits[chosen.get(name, "minmax")][name] for name in limits["minmax"]}
    ranges = TensorsData(
        CalibrationMethod.MinMax,
        {
            n: TensorData(lowest=np.float32(low), highest=np.float32(high))
            for n, (low, high) in picked.items()
        },
    )
    report = {
        "divergence_minmax": before,
        "divergence_chosen": best,
        "chosen": chosen,
        "ranges": {n: picked[n] for n in quantizers},
        "candidates_tried": tried,
        "search_texts": len(subset),
        "search_seconds": {
            "statistics": round(collected, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
    return ranges, report


def _quantizers(path: Path, calibrated: set[str]) -> tuple[Any, dict[str, tuple[Any, Any]]]:
    """The model, and for each calibrated activation its QuantizeLinear's scale and zero-point
    tensors (the embedding tables' Gather outputs take their scale from the table instead)."""
    import onnx

    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    quantizers = {
        node.input[0]: (initializers[node.input[1]], initializers[node.input[2]])
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input[1] in initializers and node.input[0] in calibrated
    }
    return model, quantizers


def _set_range(quantizer: tuple[Any, Any], value_range: list[float]) -> None:
    """Rewrite a u8 QuantizeLinear's scale and zero point for ``value_range`` (as ONNX Runtime
    computes them: the range widened to hold 0)."""
    from onnx import numpy_helper
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    scale_tensor, zero_tensor = quantizer
    low, high = (np.float32(v) for v in value_range)
    zero, scale = compute_scale_zp(low, high, np.uint8(0), np.uint8(255), symmetric=False)
    scale_tensor.CopyFrom(numpy_helper.from_array(np.asarray(scale, dtype=np.float32), scale_tensor.name))
    zero_tensor.CopyFrom(numpy_helper.from_array(np.asarray(zero, dtype=np.uint8), zero_tensor.name))
