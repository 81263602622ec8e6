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
        histograms = _Histograms([collectors[m] for m in methods if m in collectors])
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram collectors print as they go
            for feed in feeds:
                values = dict(zip(outputs, session.run(None, feed), strict=True))
                for name in names:
                    values[name] = values[name].ravel()
                    smallest, largest = values[name].min(), values[name].max()
                    low[name] = min(low.get(name, np.float32(np.inf)), smallest)
                    high[name] = max(high.get(name, np.float32(-np.inf)), largest)
                    histograms.add(name, values[name], max(abs(smallest), abs(largest)))
            histograms.flush()
            if not low:
                raise EdgebertError("no calibration text: nothing to measure activation ranges on")
            enums = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
            return {
                method: TensorsData(CalibrationMethod.MinMax, {n: (low[n], high[n]) for n in names})
                if method == "minmax"
                else TensorsData(enums[method], collectors[method].compute_collection_result())
                for method in methods
            }


class _Histograms:
    """ONNX Runtime's ``HistogramCollector``s, given many texts' activations at a time where that makes
    the same histograms as one text at a time, with far fewer numpy calls (about 200,000 for 1,024
    texts one at a time: 43 s of a profiled distill calibration on an AVX2 EPYC).

    A collector histograms a batch on its current bins, which span [-threshold, threshold], unless
    the batch reaches beyond them: then it widens them first. Each text that stays within a tensor's
    bins waits in a buffer; one that reaches beyond them is given alone, after what waited (a
    histogram on fixed bins is the sum of its parts'). Buffers are given when they hold about
    ``limit`` bytes, so that memory stays bounded however many texts there are. A test holds the
    histograms to the collector's own, one text at a time, bit for bit.
    """

    def __init__(self, collectors: list[Any], limit: int = 16 << 20) -> None:
        self.collectors, self.limit, self.held = collectors, limit, 0
        self.waiting: dict[tuple[int, str], list[np.ndarray]] = {}

    def add(self, name: str, values: np.ndarray, threshold: np.floating) -> None:
        """One text's activations of tensor ``name`` (flat), whose largest magnitude is ``threshold``."""
        waits = False
        for k, collector in enumerate(self.collectors):
            known = collector.histogram_dict.get(name)
            if known is not None and threshold <= known[4]:  # within the bins it has
                self.waiting.setdefault((k, name), []).append(values)
                waits = True
            else:
                self._give(k, name)
                collector.collect({name: [values]})
        self.held += values.nbytes if waits else 0  # (an upper bound: _give does not subtract)
        if self.held > self.limit:
            self.flush()

    def flush(self) -> None:
        """Give every collector what waits for it."""
        for k, name in list(self.waiting):
            self._give(k, name)
        self.held = 0

    def _give(self, k: int, name: str) -> None:
        if waiting := self.waiting.pop((k, name), []):
            self.collectors[k].collect({name: [np.concatenate(waiting)]})


class StaticInt8:
    """Static INT8 models of one fp32 model: with any activation ranges, MatMuls in float, or the
    inputs of some MatMuls smoothed.

    ONNX Runtime's ``quantize_static`` runs once, with every weight MatMul quantized: its per-channel
    weight quantization loops over the channels in Python (about 3 s a run for MiniLM on an AVX2
    EPYC), which each of a distill calibration's 19 quantizations used to pay. Each model is then
    that QDQ graph with its ``QuantizeLinear`` scales and zero points set for the ranges (as ONNX
    Runtime computes them), its ``keep_float`` MatMuls computed in float again (``in_float``), and
    for a smoothed model the smoothed MatMuls from ``quantize_static`` run on those MatMuls alone. A
    test holds each model to the outputs of ``quantize_static`` on the whole model, bit for bit.
    """

    def __init__(self, source: Path, qdq: Any) -> None:
        """``qdq``: ONNX Runtime's QDQ model of the fp32 model ``source`` (see ``of``)."""
        import onnx

        self.source, self.qdq = source, qdq
        self.fp32_tensors = _tensors(onnx.load(str(source), load_external_data=False).graph)

    @classmethod
    def of(cls, source: Path, ranges: Any) -> StaticInt8:
        """The static INT8 models of the fp32 model ``source``, from ``quantize_static`` with ``ranges``."""
        import onnx

        with tempfile.TemporaryDirectory(prefix=".qdq-", dir=source.parent) as tmp:
            _quantize_static(source, Path(tmp) / "qdq.onnx", ranges)
            return cls(source, onnx.load(str(Path(tmp) / "qdq.onnx")))

    def write(self, target: Path, ranges: Any, keep_float: Iterable[str] = ()) -> None:
        """Write the INT8 model with ``ranges`` and the ``keep_float`` MatMuls in float to ``target``."""
        import onnx

        onnx.save(self.model(ranges, keep_float), str(target))

    def model(self, ranges: Any, keep_float: Iterable[str] = ()) -> Any:
        """The INT8 model (an ``onnx.ModelProto``) with ``ranges`` and the ``keep_float`` MatMuls in float."""
        model = self._with_ranges(ranges)
        in_float(model, self.source, keep_float)
        _integer_matmuls(model)
        return model

    def smoothed(self, other: Path, ranges: Any, changed: Iterable[str], part: Any = None) -> StaticInt8:
        """The static INT8 models of ``other``, the fp32 model with the inputs of the MatMuls
        ``changed`` smoothed: those MatMuls as ``smoothed_part`` makes them (or ``part``, a
        ``smoothed_part`` of a model with these MatMuls and maybe others smoothed the same way:
        each MatMul's smoothing changes only its own input and weight), and the rest is this
        model's."""
        import onnx

        qdq = onnx.ModelProto()
        qdq.CopyFrom(self.qdq)
        if changed := list(changed):
            part = part if part is not None else self.smoothed_part(other, ranges, changed)
            _graft(qdq.graph, part, _outputs_of(part, changed), self.fp32_tensors)
        return StaticInt8(other, qdq)

    def smoothed_part(self, other: Path, ranges: Any, changed: list[str]) -> Any:
        """The nodes and initializers (a ``GraphProto``) that compute the MatMuls ``changed`` of
        ``other`` (this model with their inputs smoothed) from this model's tensors: ONNX Runtime
        quantizes those MatMuls of ``other`` alone (with ``ranges``), and only what computes them
        is kept, not the rest of that model's weights."""
        import onnx

        with tempfile.TemporaryDirectory(prefix=".qdq-", dir=other.parent) as tmp:
            _quantize_static(other, Path(tmp) / "qdq.onnx", ranges, only=changed)
            donor = onnx.load(str(Path(tmp) / "qdq.onnx")).graph
        outputs = _outputs_of(donor, changed)
        part = onnx.GraphProto()
        # from this model's tensors, but for those outputs, which the fp32 model has too
        for _, nodes, initializers in _making(donor, outputs, self.fp32_tensors - set(outputs)):
            part.node.extend(nodes)
            part.initializer.extend(initializers)
        return part

    @contextlib.contextmanager
    def parked(self, directory: Path) -> Iterator[None]:
        """Keep the QDQ graph in a file in ``directory`` rather than in memory meanwhile (while a
        pass over the calibration texts holds a model and its activations, say)."""
        import onnx

        path = directory / "parked.onnx"
        save_external(self.qdq, path)
        self.qdq = None
        try:
            yield
        finally:
            self.qdq = onnx.load(str(path))

    def _with_ranges(self, ranges: Any) -> Any:
        """A copy of the QDQ model with its activations quantized for ``ranges``."""
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.qdq)
        limits = bounds(ranges)
        for name, quantizer in activation_quantizers(model, set(limits)).items():
            set_range(quantizer, limits[name])
        return model


def in_float(model: Any, source: Path, names: Iterable[str]) -> None:
    """Compute the MatMuls ``names`` of ``model``, an INT8 model of the fp32 model ``source`` (static
    or dynamic), in float again, reading their fp32 input and weight, as ONNX Runtime's quantizers
    leave the nodes they are told to exclude."""
    import onnx

    if names := list(names):
        fp32 = onnx.load(str(source)).graph
        _graft(model.graph, fp32, _outputs_of(fp32, names), _tensors(fp32))


def _graft(graph: Any, donor: Any, outputs: list[str], fp32: set[str]) -> None:
    """Compute the tensors ``outputs`` of ``graph`` as ``donor`` computes them. What makes them in
    ``graph`` goes: their nodes, and the nodes that only those read back to tensors of the fp32 model
    (``fp32``), with the initializers no other node reads; the donor's nodes and initializers that
    make them from tensors ``graph`` keeps come in, before the first node that reads them."""
    producer, readers = _links(graph.node)
    if missing := [o for o in outputs if o not in producer]:
        raise EdgebertError(f"the model computes no tensor {', '.join(missing)}")
    leaving = {id(producer[o]) for o in outputs}
    todo = [i for o in outputs for i in producer[o].input]
    while todo:
        tensor = todo.pop()
        node = producer.get(tensor)
        if node is None or tensor in fp32 or id(node) in leaving:
            continue
        if all(id(r) in leaving for o in node.output for r in readers.get(o, [])):
            leaving.add(id(node))
            todo.extend(node.input)
    nodes = [n for n in graph.node if id(n) not in leaving]
    read = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in read]
    have = {i.name for i in graph.input} | {i.name for i in kept} | {o for n in nodes for o in n.output}
    for output, chain, initializers in _making(donor, outputs, have):
        kept.extend(initializers)
        at = next((k for k, n in enumerate(nodes) if output in n.input), len(nodes))
        nodes[at:at] = chain
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)


def _making(donor: Any, outputs: list[str], have: set[str]) -> list[tuple[str, list[Any], list[Any]]]:
    """For each of ``outputs``, the nodes (in ``donor``'s order) and initializers of ``donor`` that
    make it from the tensors ``have``, which grows by what they make: none comes twice."""
    made = {o: n for n in donor.node for o in n.output}
    order = {o: k for k, n in enumerate(donor.node) for o in n.output}
    initializers = {i.name: i for i in donor.initializer}
    chains = []
    for output in outputs:
        chain, needed, todo = [], [], [output]
        while todo:
            tensor = todo.pop()
            if tensor and tensor not in have:
                have.add(tensor)
                if tensor in initializers:
                    needed.append(initializers[tensor])
                else:
                    chain.append(made[tensor])
                    todo.extend(made[tensor].input)
        chains.append((output, sorted(chain, key=lambda n: order[n.output[0]]), needed))
    return chains


def _outputs_of(graph: Any, names: list[str]) -> list[str]:
    """The output of each of ``graph``'s nodes ``names``."""
    outputs = {n.name: n.output[0] for n in graph.node if n.name in names}
    if missing := [n for n in names if n not in outputs]:
        raise EdgebertError(f"no node named {', '.join(missing)} in the model")
    return [outputs[n] for n in names]


def _tensors(graph: Any) -> set[str]:
    """Every tensor of ``graph``: its inputs, initializers and node outputs."""
    return (
        {i.name for i in graph.input}
        | {i.name for i in graph.initializer}
        | {o for n in graph.node for o in n.output}
    )


def activation_quantizers(model: Any, calibrated: set[str]) -> dict[str, tuple[Any, Any]]:
    """For each of the ``calibrated`` activations that ``model`` quantizes, its QuantizeLinear's scale
    and zero-point tensors (the embedding tables' Gather outputs take their scale from the table
    instead)."""
    initializers = {i.name: i for i in model.graph.initializer}
    return {
        node.input[0]: (initializers[node.input[1]], initializers[node.input[2]])
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input[1] in initializers and node.input[0] in calibrated
    }


def set_range(quantizer: tuple[Any, Any], value_range: list[float]) -> None:
    """Rewrite a u8 QuantizeLinear's scale and zero point for ``value_range`` (as ONNX Runtime
    computes them: the range widened to hold 0)."""
    from onnx import numpy_helper
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    scale_tensor, zero_tensor = quantizer
    low, high = (np.float32(v) for v in value_range)
    zero, scale = compute_scale_zp(low, high, np.uint8(0), np.uint8(255), symmetric=False)
    scale_tensor.CopyFrom(numpy_helper.from_array(np.asarray(scale, dtype=np.float32), scale_tensor.name))
    zero_tensor.CopyFrom(numpy_helper.from_array(np.asarray(zero, dtype=np.uint8), zero_tensor.name))


def _quantize_static(
    source: Path, target: Path, ranges: Any, keep_float: Iterable[str] = (), only: list[str] | None = None
) -> None:
    """ONNX Runtime's QDQ model of ``source``: every weight MatMul but ``keep_float`` and the
    embedding tables, or the nodes ``only``."""
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
            nodes_to_quantize=only,
            calibrate_method=ranges.calibration_method,
            calibration_cache_path=cache,
            extra_options={
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
            },
        )


def _integer_matmuls(model: Any) -> None:
    """Lower ``model``'s QDQ graph to the INT8 kernels ONNX Runtime's CPU provider runs, bias included.

    Each quantized MatMul (DequantizeLinear of a quantized activation times DequantizeLinear of an
    int8 weight) and the bias Add after it become one ``MatMulIntegerToFloat``, as dynamic INT8's
    MatMuls do. ONNX Runtime's own QDQ fusion makes the same node but leaves the bias Add behind, a
    separate pass over every output. Every other reader of a quantized activation (the residual Add,
    LayerNorm) gets the float tensor back: the QDQ quantizer routes it through DequantizeLinear,
    which would carry INT8 rounding from layer to layer where dynamic INT8 keeps them in float.
    """
    from onnx import helper

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
