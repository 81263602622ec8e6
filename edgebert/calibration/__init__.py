"""Static INT8: activation ranges measured on unlabeled calibration text, then fixed in a QDQ graph.

The recipe is the one ONNX Runtime's CPU provider turns into its fast INT8 kernels: u8 activations
and per-channel s8 weights (the VNNI path), only the weight MatMuls quantized and their outputs left
in float. The QDQ graph is then lowered to what ONNX Runtime runs: each quantized MatMul and its bias
become one ``MatMulIntegerToFloat`` fed by a ``QuantizeLinear`` with the calibrated scale. The
embedding tables are stored in int8 as dynamic INT8 stores them. Ranges are
collected one text at a time, so memory does not grow with the number of samples (ONNX Runtime's own
calibrators keep every intermediate tensor of the whole data set until the end).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
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


def collect_ranges(
    model_path: Path, feeds: Iterable[dict[str, np.ndarray]], methods: Iterable[str]
) -> dict[str, Any]:
    """The ranges of every MatMul input over ``feeds`` by each of ``methods`` (an
    ``onnxruntime.quantization.TensorsData`` each), from one pass over the feeds, one at a time."""
    from onnxruntime.quantization import CalibrationMethod, TensorsData, create_calibrator
    from onnxruntime.quantization.calibrate import HistogramCollector

    methods = list(methods)
    for method in methods:
        if method not in STATIC_METHODS:
            choices = ", ".join(STATIC_METHODS)
            raise EdgebertError(f"unknown calibration method '{method}': choose one of {choices}")
    collectors = {  # configured as ONNX Runtime's calibrators configure them, but percentile is
        # asymmetric: the symmetric default clips the sign of the positive-only GELU outputs
        "percentile": HistogramCollector("percentile", False, 2048, 128, 99.999, "same"),
        "entropy": HistogramCollector("entropy", False, 128, 128, 99.999, "same"),
    }
    low: dict[str, np.float32] = {}
    high: dict[str, np.float32] = {}
    with tempfile.TemporaryDirectory(prefix=".calibrate-", dir=model_path.parent) as tmp:
        # a histogram calibrator's augmented model returns every MatMul input whole
        calibrator = create_calibrator(
            model_path,
            ["MatMul"],
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
        )
        session, names = calibrator.infer_session, sorted(calibrator.tensors_to_calibrate)
        del calibrator  # and its copy of the model
        outputs = [o.name for o in session.get_outputs()]
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram collectors print as they go
            for feed in feeds:
                values = dict(zip(outputs, session.run(None, feed), strict=True))
                for name in names:
                    low[name] = min(low.get(name, np.float32(np.inf)), values[name].min())
                    high[name] = max(high.get(name, np.float32(-np.inf)), values[name].max())
                for method in methods:
                    if method in collectors:
                        collectors[method].collect({name: [values[name]] for name in names})
            if not low:
                raise EdgebertError("no calibration text: nothing to measure activation ranges on")
            enums = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
            return {
                method: TensorsData(CalibrationMethod.MinMax, {n: (low[n], high[n]) for n in names})
                if method == "minmax"
                else TensorsData(enums[method], collectors[method].compute_collection_result())
                for method in methods
            }


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
    _integer_matmuls(target)


def _integer_matmuls(path: Path) -> None:
    """Lower the QDQ graph to the INT8 kernels ONNX Runtime's CPU provider runs, bias included.

    Each quantized MatMul (DequantizeLinear of a quantized activation times DequantizeLinear of an
    int8 weight) and the bias Add after it become one ``MatMulIntegerToFloat``, as dynamic INT8's
    MatMuls do. ONNX Runtime's own QDQ fusion makes the same node but leaves the bias Add behind, a
    separate pass over every output. Every other reader of a quantized activation (the residual Add,
    LayerNorm) gets the float tensor back: the QDQ quantizer routes it through DequantizeLinear,
    which would carry INT8 rounding from layer to layer where dynamic INT8 keeps them in float.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer, readers = _links(graph.node)
    quantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    lowered: dict[int, Any] = {}
    folded: set[int] = set()
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        a, b = (producer.get(name) for name in node.input)
        if not (a and b) or {a.op_type, b.op_type} != {"DequantizeLinear"}:
            continue
        if a.input[0] not in quantized or b.input[0] not in initializers:
            continue
        inputs = [a.input[0], b.input[0], a.input[1], b.input[1], a.input[2], b.input[2]]
        output = node.output[0]
        after = readers.get(output, [])
        if len(after) == 1 and after[0].op_type == "Add":
            bias = _copied(next(name for name in after[0].input if name != output), producer)
            if bias in initializers and len(initializers[bias].dims) == 1:
                inputs.append(bias)
                output = after[0].output[0]
                folded.add(id(after[0]))
        lowered[id(node)] = helper.make_node(
            "MatMulIntegerToFloat", inputs, [output], name=node.name, domain="com.microsoft"
        )
    float_of = {  # the embedding tables' Gather keeps its int8 path, as in dynamic INT8
        n.output[0]: quantized[n.input[0]]
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in quantized
        and any(r.op_type == "MatMul" for r in readers.get(n.output[0], []))
    }
    nodes = [lowered.get(id(n), n) for n in graph.node if id(n) not in folded]
    for node in nodes:
        if node.op_type != "QuantizeLinear":
            node.input[:] = [float_of.get(name, name) for name in node.input]
    _keep_live(graph, nodes)
    if all(o.domain != "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))


def save_external(model: Any, path: Path, weights: str | None = None) -> None:
    """Save ``model`` with its tensors of 1 KB and more in file ``weights`` beside it (by default
    ``path`` + ``.data``), written tensor by tensor: no serialized copy of the whole model in memory
    (417 MB for a bert-base). Not ``onnx.save_model(..., location=weights)``, which refuses when a
    file named ``weights`` is in the current directory (onnx 1.23 looks there, not beside the model):
    any INT8 bundle, for a user quantizing from inside one."""
    import onnx
    from onnx.external_data_helper import set_external_data

    weights = weights or path.name + ".data"
    (path.parent / weights).unlink(missing_ok=True)  # onnx appends to the file
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data") and sys.getsizeof(tensor.raw_data) >= 1024:
            set_external_data(tensor, weights)
    onnx.save_model(model, str(path))


def _copied(name: str, producer: dict[str, Any]) -> str:
    """The tensor that ``name`` is an ``Identity`` of (the exporter's copies of a shared bias), or
    ``name``."""
    node = producer.get(name)
    return node.input[0] if node is not None and node.op_type == "Identity" else name


def _links(nodes: Iterable[Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The node that makes each tensor, and the nodes that read it."""
    producer: dict[str, Any] = {}
    readers: dict[str, list[Any]] = {}
    for node in nodes:
        producer.update((name, node) for name in node.output)
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return producer, readers


def _keep_live(graph: Any, nodes: list[Any]) -> None:
    """Set ``graph``'s nodes to those of ``nodes`` that feed its outputs, and drop unread initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for node in nodes for name in node.input} | outputs
        live = [node for node in nodes if any(o in read for o in node.output)]
        if len(live) == len(nodes):
            break
        nodes = live
    del graph.node[:]
    graph.node.extend(nodes)
    initializers = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
