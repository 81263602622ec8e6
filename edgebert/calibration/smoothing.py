"""Activation smoothing of BERT's FFN-output MatMuls (SmoothQuant, Xiao et al. 2023).

The FFN output's input (the GELU output, four times the hidden width) carries BERT's largest
activation outliers in a few channels (Bondarenko et al. 2021), so one per-tensor INT8 range either
clips them or leaves the other channels a handful of levels. Smoothing divides each channel by
``m_c = max|x_c|^alpha / max|W_c|^(1 - alpha)`` (a ``Mul`` before the MatMul) and multiplies the
weight's row c by the same factor: the fp32 function is unchanged, and the range moves from the
activation, quantized per tensor, into the weight, quantized per output channel. The ``Mul`` costs
a pass over the activation (about 40 µs per layer at 1 × 128 tokens for MiniLM). A per-channel
``QuantizeLinear`` would fold it into the quantization, but ONNX Runtime 1.32's per-axis kernel took
5.0 ms on that activation, against 51 µs for the ``Mul`` and a per-tensor ``QuantizeLinear``.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebert.calibration import save_external

FFN_OUTPUT = re.compile(r"layer\.(\d+)/output/dense/MatMul")
SUFFIX = "/smoothed"


@dataclass(frozen=True)
class Smoothing:
    """Per-channel divisors of MatMul inputs: {input tensor: factors}, and the alpha they came from."""

    alpha: float
    factors: dict[str, np.ndarray]

    def tensor(self, name: str) -> str:
        """The name of ``name`` divided by its factors, the tensor the MatMul quantizes."""
        return name + SUFFIX

    def matmuls(self, inputs: dict[str, str]) -> list[str]:
        """The MatMuls of ``inputs`` (``smoothable``'s {node: input}) whose input this divides."""
        return [node for node, tensor in inputs.items() if tensor in self.factors]


def smoothable(model_path: Path) -> dict[str, str]:
    """The FFN-output MatMuls that can be smoothed: {node name: input tensor} for those whose input
    and weight (an initializer) are read by that node alone."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    reads: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            reads[name] = reads.get(name, 0) + 1
    return {
        node.name: node.input[0]
        for node in graph.node
        if node.op_type == "MatMul"
        and FFN_OUTPUT.search(node.name)
        and node.input[1] in initializers
        and reads[node.input[0]] == reads[node.input[1]] == 1
    }


def channel_ranges(
    model_path: Path, feeds: Iterable[dict[str, np.ndarray]], tensors: Iterable[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The smallest and largest value of each channel (last axis) of ``tensors`` over ``feeds``,
    one feed at a time."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    names = list(tensors)
    with tempfile.TemporaryDirectory(prefix=".channels-", dir=model_path.parent) as tmp:
        model = onnx.load(str(model_path))
        model.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
        save_external(model, Path(tmp) / "channels.onnx")
        del model
        session = ort.InferenceSession(str(Path(tmp) / "channels.onnx"), providers=["CPUExecutionProvider"])
        ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for feed in feeds:
            for name, value in zip(names, session.run(names, feed), strict=True):
                rows = value.reshape(-1, value.shape[-1])
                low, high = rows.min(0), rows.max(0)
                if name in ranges:
                    low, high = np.minimum(ranges[name][0], low), np.maximum(ranges[name][1], high)
                ranges[name] = (low, high)
        return ranges


def smoothed_bounds(
    smoothing: Smoothing | None,
    bounds: dict[str, list[float]],
    channels: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, list[float]]:
    """The minmax ranges of the model ``smoothing`` makes, from the unsmoothed model's (``bounds``)
    and the per-channel ranges of the inputs it smooths (``channel_ranges``): it changes no other
    tensor, and divides each channel of those inputs by a positive factor. No pass over the data."""
    smoothed = dict(bounds)
    if smoothing is None:
        return smoothed
    for name, factor in smoothing.factors.items():
        low, high = channels[name]
        del smoothed[name]  # now read by the smoothing's Mul, not by a MatMul
        smoothed[smoothing.tensor(name)] = [float((low / factor).min()), float((high / factor).max())]
    return smoothed


def smoothings(
    model_path: Path, channels: dict[str, tuple[np.ndarray, np.ndarray]], alphas: Iterable[float]
) -> list[Smoothing]:
    """The factors for each of ``alphas`` (0: none of a channel's range moved to the weight; 1: all),
    for the inputs of ``smoothable`` MatMuls in ``channels`` (their ``channel_ranges``)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path)).graph
    weights = {i.name: i for i in graph.initializer}
    rows = {  # the smoothable MatMuls' inputs (``channels``' keys) are each read by that MatMul alone
        node.input[0]: np.maximum(np.abs(numpy_helper.to_array(weights[node.input[1]])).max(1), 1e-5)
        for node in graph.node
        if node.op_type == "MatMul" and node.input[0] in channels
    }
    del graph, weights
    maxima = {name: np.maximum(np.maximum(-low, high), 1e-5) for name, (low, high) in channels.items()}
    return [
        Smoothing(
            alpha,
            {
                name: (top**alpha / rows[name] ** (1 - alpha)).astype(np.float32)
                for name, top in maxima.items()
            },
        )
        for alpha in alphas
    ]


def smooth(source: Path, target: Path, smoothing: Smoothing) -> None:
    """Write ``source`` with ``smoothing`` applied."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        name = node.input[0] if node.op_type == "MatMul" else None
        if name in smoothing.factors:
            factor = smoothing.factors[name]
            weight = weights[node.input[1]]
            scaled = numpy_helper.to_array(weight) * factor[:, None]
            weight.CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), weight.name))
            divisor = f"{name}{SUFFIX}/divisor"
            graph.initializer.append(numpy_helper.from_array((1 / factor).astype(np.float32), divisor))
            node.input[0] = smoothing.tensor(name)
            nodes.append(helper.make_node("Mul", [name, divisor], [node.input[0]], name=f"{name}{SUFFIX}"))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    save_external(model, target)
