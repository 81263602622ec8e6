"""Distillation-aware calibration: the fp32 model is the teacher, the static INT8 model the student.

Activation statistics are collected in one pass for all three range methods (minmax, percentile,
entropy). The INT8 model is built once; then, one quantized activation at a time, each method's
range is tried by rewriting that QuantizeLinear's scale and zero point in place, and the range
whose INT8 outputs diverge least from the teacher's (KL of the logits, or cosine distance of the
embeddings) on the calibration texts is kept. BERT's outlier activations (the FFN input after GELU,
LayerNorm outputs with a few huge channels) get a clipped range when clipping helps and the full
one when it does not. Before the ranges, the FFN-output MatMuls' inputs are smoothed
(``edgebert.calibration.smoothing``) with the strength that brings the INT8 model (minmax ranges)
closest to the teacher, or not at all when none does, and only where it brings it closer.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgebert.calibration import (
    STATIC_METHODS,
    StaticInt8,
    activation_quantizers,
    bounds,
    collect_ranges,
    set_range,
)
from edgebert.calibration.smoothing import (
    Smoothing,
    channel_ranges,
    smooth,
    smoothable,
    smoothed_bounds,
    smoothings,
)
from edgebert.fidelity import divergence
from edgebert.runtime import Predictor

ALPHAS = (0.75, 0.85, 0.95)  # smoothing strengths tried; NNCF smooths transformer MatMuls at 0.95
# a MatMul's smoothing is dropped when the divergence without it stays within this share of the
# divergence with all of them: closer than the spread of the estimate on a few hundred texts
SMOOTHING_TOLERANCE = 0.02
log = logging.getLogger("edgebert")


def distill_ranges(
    fp32: Path,
    teacher: Predictor,
    texts: list[Any],
    reference: np.ndarray,
    *,
    smoothed: Path,
    search_texts: int = 256,
) -> tuple[Any, StaticInt8, dict[str, Any]]:
    """Per-tensor ranges chosen by teacher-student divergence, the INT8 models of the fp32 model they
    are for (``fp32``, or ``smoothed`` written with the smoothing chosen) and a report of the search."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    feeds = [teacher.encode([t])[0] for t in texts]  # tokenized once for every pass
    subset = texts[:search_texts]
    expected = reference[: len(subset)]

    def score(model: Any) -> float:
        student = teacher.with_model(model)
        return divergence(teacher.task, expected, student.outputs(subset)[0])

    with tempfile.TemporaryDirectory(prefix=".search-", dir=fp32.parent) as tmp:
        smoothing, tried_smoothing, int8 = _choose_smoothing(fp32, feeds, Path(tmp), score)
        smoothing_seconds = time.perf_counter() - started
        if smoothing is not None:
            smooth(fp32, smoothed, smoothing)
        log.info("measuring every quantized tensor's range by %s", ", ".join(STATIC_METHODS))
        with int8.parked(Path(tmp)) if int8 else contextlib.nullcontext():  # the pass's memory peak
            candidates = collect_ranges(smoothed if smoothing else fp32, feeds, STATIC_METHODS)
        limits = {method: bounds(ranges) for method, ranges in candidates.items()}
        collected = time.perf_counter() - started
        if int8 is None:  # nothing to smooth
            int8 = StaticInt8.of(fp32, candidates["minmax"])
        elif smoothing is not None:
            int8 = int8.smoothed(smoothed, candidates["minmax"], smoothing.matmuls(smoothable(fp32)))
        model = int8.model(candidates["minmax"])
        quantizers = activation_quantizers(model, set(limits["minmax"]))
        chosen = {name: "minmax" for name in quantizers}
        before = best = score(model.SerializeToString())
        tried = 0
        for name in tqdm(list(quantizers), desc="calibrating (distill)", unit="tensor", disable=None):
            for method in STATIC_METHODS:  # a range the model already has would score the same
                if name not in limits[method] or limits[method][name] == limits[chosen[name]][name]:
                    continue
                set_range(quantizers[name], limits[method][name])
                tried += 1
                value = score(model.SerializeToString())
                if value < best:
                    best, chosen[name] = value, method
            set_range(quantizers[name], limits[chosen[name]][name])
    picked = {name: limits[chosen.get(name, "minmax")][name] for name in limits["minmax"]}
    ranges = _minmax(picked)
    report = {
        "divergence_measure": "cosine distance" if teacher.task == "embed" else "KL of class probabilities",
        "divergence_minmax": tried_smoothing.get("divergence_by_alpha", {}).get("none", before),
        "divergence_chosen": best,
        "smoothing": {
            "matmuls": len(smoothing.factors) if smoothing else 0,
            "alpha": smoothing.alpha if smoothing else None,
            "smoothed": sorted(smoothing.factors) if smoothing else [],
            **tried_smoothing,
        },
        "chosen": chosen,
        "ranges": {n: picked[n] for n in quantizers},
        "candidates_tried": tried,
        "search_texts": len(subset),
        "search_seconds": {
            "smoothing": round(smoothing_seconds, 1),
            "statistics": round(collected - smoothing_seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
    return ranges, int8, report


def _choose_smoothing(
    fp32: Path, feeds: list[dict[str, np.ndarray]], tmp: Path, score: Callable[[Any], float]
) -> tuple[Smoothing | None, dict[str, Any], StaticInt8 | None]:
    """The smoothing of the FFN-output MatMuls whose INT8 model (minmax ranges) is closest to the
    teacher (None: the unsmoothed one is), what was tried, and the unsmoothed model's ``StaticInt8``
    (None: there is nothing to smooth). The strength is chosen first; then, one MatMul at a time, a
    smoothing is dropped where the student stays as close to the teacher without it
    (``SMOOTHING_TOLERANCE``), so that no ``Mul`` is paid for where it does not help. For those
    trials ONNX Runtime quantizes the chosen strength's MatMuls once (``StaticInt8.smoothed_part``),
    not once a trial."""
    inputs = smoothable(fp32)
    if not inputs:
        return None, {}, None
    log.info(
        "choosing the smoothing of %d FFN-output MatMuls' inputs: strength %s or none, then each without",
        len(inputs),
        ", ".join(map(str, ALPHAS)),
    )
    channels = channel_ranges(fp32, feeds, inputs.values())
    minmax = collect_ranges(fp32, feeds, ["minmax"])["minmax"]
    int8 = StaticInt8.of(fp32, minmax)
    unsmoothed = bounds(minmax)
    options = {"none": None, **{str(s.alpha): s for s in smoothings(fp32, channels, ALPHAS)}}
    smoothed = tmp / "smoothed.onnx"

    def divergence_with(smoothing: Smoothing | None, part: Any = None) -> float:
        """The divergence of the INT8 model with ``smoothing`` (``part``: ``StaticInt8.smoothed``'s)."""
        ranges = _minmax(smoothed_bounds(smoothing, unsmoothed, channels))
        if smoothing is None:
            return score(int8.model(ranges).SerializeToString())
        smooth(fp32, smoothed, smoothing)
        model = int8.smoothed(smoothed, ranges, smoothing.matmuls(inputs), part).model(ranges)
        return score(model.SerializeToString())

    by_alpha = {label: divergence_with(smoothing) for label, smoothing in options.items()}
    label = min(by_alpha, key=by_alpha.__getitem__)
    chosen, best = options[label], by_alpha[label]
    tried: dict[str, Any] = {"divergence_by_alpha": by_alpha, "divergence_without": {}}
    if chosen is None:
        return None, {**tried, "divergence": best}, int8
    bound = best * (1 + SMOOTHING_TOLERANCE)
    smooth(fp32, smoothed, chosen)  # each smoothing below is a subset of this one: graft from its part
    ranges = _minmax(smoothed_bounds(chosen, unsmoothed, channels))
    part = int8.smoothed_part(smoothed, ranges, chosen.matmuls(inputs))
    for name in sorted(chosen.factors):
        fewer = Smoothing(chosen.alpha, {k: v for k, v in chosen.factors.items() if k != name})
        tried["divergence_without"][name] = value = divergence_with(fewer, part)
        if value <= bound:
            chosen, best = fewer, value
    return (chosen if chosen.factors else None), {**tried, "divergence": best}, int8


def _minmax(picked: dict[str, list[float]]) -> Any:
    """``picked`` ({tensor: [low, high]}) as the ranges ``quantize_static`` takes."""
    from onnxruntime.quantization import CalibrationMethod, TensorData, TensorsData

    return TensorsData(
        CalibrationMethod.MinMax,
        {
            n: TensorData(lowest=np.float32(low), highest=np.float32(high))
            for n, (low, high) in picked.items()
        },
    )
