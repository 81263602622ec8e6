"""Static INT8: activation ranges measured on unlabeled calibration text, then fixed in a QDQ graph.

The recipe is the one ONNX Runtime's CPU provider turns into its fast INT8 kernels: u8 activations
and per-channel s8 weights (the VNNI path), only the weight MatMuls quantized and their outputs left
in float, so each becomes a ``MatMulIntegerToFloat`` fed by one ``QuantizeLinear``; the embedding
tables are stored in int8 as dynamic INT8 stores them. Ranges are
collected one text at a time, so memory does not grow with the number of samples (ONNX Runtime's own
calibrators keep every intermediate tensor of the whole data set until the end).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgebert.errors import EdgebertError

log = logging.getLogger("edgebert")

STATIC_METHODS = ("minmax", "percentile", "entropy")


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizers log a pre-processing hint at WARNING on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def bounds(ranges: Any) -> dict[str, list[float]]:
    """``TensorsData`` as plain JSON: {tensor: [low, high]}."""
    return {n: [float(np.asarray(v).reshape(-1)[0]) for v in d.range_value] for n, d in ranges.data.items()}


def weight_matmuls(model_path: Path) -> tuple[list[str], list[str]]:
    """The MatMul nodes with a constant weight (quantized), and those multiplying two activations
    (attention scores and context: left in float)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    weights: list[str] = []
    activations: list[str] = []
    for node in graph.node:
        if node.op_type == "MatMul":
            (weights if any(i in constants for i in node.input) else activations).append(node.name)
    return weights, activations


def collect_ranges(model_path: Path, feeds: Iterable[dict[str, np.ndarray]], method: str) -> Any:
    """The ranges of every MatMul input over ``feeds`` (an ``onnxruntime.quantization.TensorsData``),
    collected one feed at a time."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise EdgebertError(f"unknown calibration method '{method}': choose one of {', '.join(methods)}")

    class One(CalibrationDataReader):
        def __init__(self, feed: dict[str, np.ndarray]) -> None:
            self.feed: dict[str, np.ndarray] | None = feed

        def get_next(self) -> dict[str, np.ndarray] | None:
            feed, self.feed = self.feed, None
            return feed

    # percentile: asymmetric ranges (the symmetric default clips the positive-only GELU outputs' sign)
    options = {"percentile": {"symmetric": False, "percentile": 99.999}}.get(method, {})
    with tempfile.TemporaryDirectory(prefix=".calibrate-", dir=model_path.parent) as tmp:
        calibrator = create_calibrator(
            model_path,
            ["MatMul"],
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=methods[method],
            extra_options=options,
        )
        count = 0
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print as they go
            for feed in feeds:
                calibrator.collect_data(One(feed))
                count += 1
            if not count:
                raise EdgebertError("no calibration text: nothing to measure activation ranges on")
            return calibrator.compute_data()


def quantize_static(source: Path, target: Path, ranges: Any, *, keep_float: list[str]) -> None:
    """Write the QDQ INT8 model of ``source`` with ``ranges`` (no calibration run here)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static, save_tensors_data

    weights, activations = weight_matmuls(source)
    if not weights:
        raise EdgebertError(f"'{source}' has no MatMul with constant weights to quantize")
    with quiet_root_logger(), tempfile.TemporaryDirectory(prefix=".ranges-", dir=target.parent) as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        quantize_static(
            source,
            target,
            None,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=False,
            op_types_to_quantize=["MatMul", "Gather"],  # Gather: the embedding tables, int8
            nodes_to_exclude=[*activations, *keep_float],
            calibrate_method=ranges.calibration_method,
            calibration_cache_path=cache,
            extra_options={
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
            },
        )
    _only_matmuls_see_int8(target)


def _only_matmuls_see_int8(path: Path) -> None:
    """Give every consumer of a quantized activation other than a MatMul the float tensor back.

    The QDQ quantizer routes all consumers through the DequantizeLinear, so the residual Add and
    LayerNorm would carry INT8 rounding from layer to layer, where dynamic INT8 keeps them in float.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    quantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    matmul_inputs = {i for n in graph.node if n.op_type == "MatMul" for i in n.input}
    float_of = {  # the embedding tables' Gather keeps its int8 path, as in dynamic INT8
        n.output[0]: quantized[n.input[0]]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in quantized and n.output[0] in matmul_inputs
    }
    for node in graph.node:
        if node.op_type not in ("MatMul", "QuantizeLinear"):
            for i, name in enumerate(node.input):
                if name in float_of:
                    node.input[i] = float_of[name]
    onnx.save(model, str(path))
