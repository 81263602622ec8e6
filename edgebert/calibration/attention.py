"""Each attention of an INT8 graph as one operator, mostly ``QAttention``.

After ``_integer_matmuls`` (static INT8) or ``_dynamic_matmuls`` (dynamic INT8, the input's scale
computed at run time) a BERT self-attention is three ``MatMulIntegerToFloat`` projections of one
quantized input, each reshaped and transposed into heads, then the float attention (MatMul,
scale, mask, Softmax, MatMul) and a transpose and reshape back: about 15 nodes. ONNX Runtime's CPU
provider has one INT8 kernel for all of it, ``QAttention``: the three projections with the
concatenated weights (u8 input at its scale, per-column s8 weights), the attention in
float as before, the heads handled inside. The same outputs (SST-2 MiniLM: a difference of 0.0 on
64 dev sentences in padded batches), fewer nodes, and faster for small calls only. The two graphs
side by side in one process (2 threads), static INT8: MiniLM (hidden 384) 0.85× the time at
1 × 64 tokens, 0.90–0.91× at 1, 2 and 4 × 128, but 1.12× at 8 × 128 and 1.09× at 16 × 128; a
bert-base shape (hidden 768) 0.95× at 1 × 32, 0.99× at 1 × 128, 1.03× at 2 × 128 and 1.07× at
8 × 128. Dynamic INT8 (MiniLM): 0.86–0.88× on real SST-2 sentences, 0.90–0.93× at 1 × 64,
0.87–0.94× at 1 × 128, 0.91–1.00× at 4 × 128. Both turn at the same work per projection,
tokens × hidden² = 512 × 384², so the bundle keeps both graphs and the Predictor runs this one
for calls of up to ``up_to_tokens(hidden)`` tokens (``edgebert.runtime.backends.ByTokens``). The
two graphs read their common weights from one file (``model.int8.onnx.data``): the fused graph
adds only its packed projections (MiniLM: 2.3 MB beside 22 MB). OpenVINO, which has no
``QAttention``, converts the unfused graph.

The last layer of a classifier exported to compute the first token only (``exporter.first_token``)
projects its query from that token alone, another input at another scale, so ``QAttention`` does
not fit it. Its attention (about 20 nodes with the mask's broadcast) becomes one fp32
``MultiHeadAttention`` after the three projections, which stay as they are: 0.98× the time on
real SST-2 sentences (two side-by-side runs against the graph with only the ``QAttention``s), 0.99×
at 1 × 64 tokens, the same outputs. In the other layers ``MultiHeadAttention`` after the three
projections took 1.07–1.12× ``QAttention``'s time on real sentences, at 1 × 128 and at 8 × 128.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

FUSED_WORK = 512 * 384**2  # tokens x hidden^2 of the largest call the fused graph runs (see above)
HEADS = (0, 2, 1, 3)  # (batch, sequence, heads, head size) -> (batch, heads, sequence, head size)
KEYS = (0, 2, 3, 1)  # the keys, transposed for the scores' MatMul
MASK = "attention_mask"
MASK_INT32 = "attention_mask/int32"


def fused_attention(graph: Any, nodes: list[Any]) -> list[Any]:
    """``nodes`` (a lowered INT8 graph's, in order) with each attention whose three projections are
    ``MatMulIntegerToFloat`` replaced by a ``QAttention`` (projections of one input) or a
    ``MultiHeadAttention`` (a query of its own); the nodes replaced are left for the caller to drop
    as dead. A graph without an ``attention_mask`` input is unchanged."""
    from onnx import TensorProto, helper

    from edgebert.calibration import _links

    if MASK not in {i.name for i in graph.input}:
        return nodes
    producer, readers = _links(nodes)
    initializers = {i.name: i for i in graph.initializer}
    constant = _constant(initializers, nodes)
    replaced: dict[int, Any] = {}
    for softmax in (n for n in nodes if n.op_type == "Softmax"):
        found = _attention(softmax, producer, readers, initializers, constant)
        if found is not None:
            projections, head_size, end = found
            replaced[id(end)] = (
                _qattention(graph, initializers, projections, head_size, end)
                if _one_input(projections)
                else _multi_head_attention(initializers, projections, head_size, end)
            )
    if not replaced:
        return nodes
    cast = helper.make_node("Cast", [MASK], [MASK_INT32], name=MASK_INT32, to=TensorProto.INT32)
    return [cast, *(replaced.get(id(n), n) for n in nodes)]


def _one_input(projections: list[Any]) -> bool:
    """Whether the query, key and value are projections of one input at one scale (self-attention
    over every token; not so in the last layer of a model that computes the first token only)."""
    return len({(p.input[0], p.input[2], p.input[4]) for p in projections}) == 1


def _qattention(
    graph: Any, initializers: dict[str, Any], projections: list[Any], head_size: int, end: Any
) -> Any:
    """A ``QAttention`` computing ``end``'s output: the three projections' weights packed side by
    side (added to ``graph``), then the attention."""
    from onnx import helper, numpy_helper

    weight, scale, zero, bias = _packed(projections, initializers)
    prefix = end.output[0]
    names = [f"{prefix}/qkv_{part}" for part in ("weight", "scale", "zero_point", "bias")]
    graph.initializer.extend(
        numpy_helper.from_array(a, n) for n, a in zip(names, (weight, scale, zero, bias), strict=True)
    )
    x, _, x_scale, _, x_zero = projections[0].input[:5]
    return helper.make_node(
        "QAttention",
        [x, names[0], names[3], x_scale, names[1], MASK_INT32, x_zero, names[2]],
        [prefix],
        name=f"{prefix}/QAttention",
        domain="com.microsoft",
        num_heads=weight.shape[1] // 3 // head_size,
    )


def _multi_head_attention(
    initializers: dict[str, Any], projections: list[Any], head_size: int, end: Any
) -> Any:
    """A ``MultiHeadAttention`` computing ``end``'s output from the three projections' float
    outputs, which stay as they are: for a query that is not a projection of the keys' input."""
    from onnx import helper

    return helper.make_node(
        "MultiHeadAttention",
        [*(p.output[0] for p in projections), "", MASK_INT32],  # no bias: the projections add theirs
        [end.output[0]],
        name=f"{end.output[0]}/MultiHeadAttention",
        domain="com.microsoft",
        num_heads=initializers[projections[0].input[1]].dims[1] // head_size,
    )


def _packed(projections: list[Any], initializers: dict[str, Any]) -> list[np.ndarray]:
    """The query, key and value projections' weights, scales, zero points and biases, each side by
    side along the output columns (a per-tensor scale or zero point repeated per column)."""
    from onnx import numpy_helper

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(initializers[name])

    weights = [array(m.input[1]) for m in projections]
    columns = [(w.shape[1],) for w in weights]
    return [np.concatenate(weights, axis=1)] + [
        np.concatenate(
            [np.broadcast_to(array(m.input[i]), n) for m, n in zip(projections, columns, strict=True)]
        )
        for i in (3, 5, 6)
    ]


def _attention(
    softmax: Any,
    producer: dict[str, Any],
    readers: dict[str, list[Any]],
    initializers: dict[str, Any],
    constant: Callable[[str], np.ndarray | None],
) -> tuple[list[Any], int, Any] | None:
    """The self-attention around ``softmax``: its query, key and value projections, its head size and
    the Reshape that ends it; None unless the whole pattern is there."""

    def read_by(name: str, op: str) -> Any:  # the one reader, besides Shapes for the Reshapes' shapes
        found = [r for r in readers.get(name, []) if r.op_type != "Shape"]
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    def projection(name: str, perm: tuple[int, ...]) -> Any:
        transpose = _made_by(producer, name, "Transpose")
        if transpose is None or _perm(transpose) != perm:
            return None
        reshape = _made_by(producer, transpose.input[0], "Reshape")
        return reshape and _made_by(producer, reshape.input[0], "MatMulIntegerToFloat")

    masked = _made_by(producer, softmax.input[0], "Add")
    scaled = masked and _made_by(producer, masked.input[0], "Div")
    scores = scaled and _made_by(producer, scaled.input[0], "MatMul")
    context = read_by(softmax.output[0], "MatMul")
    back = context and read_by(context.output[0], "Transpose")
    end = back and read_by(back.output[0], "Reshape")
    if not (scores and end) or _perm(back) != HEADS or not _reaches(masked.input[1], MASK, producer):
        return None
    found = [
        projection(scores.input[0], HEADS),
        projection(scores.input[1], KEYS),
        projection(context.input[1], HEADS),
    ]
    projections = [p for p in found if p is not None and len(p.input) == 7]
    if len(projections) < 3:
        return None
    if not all(p.input[i] in initializers for p in projections for i in (1, 3, 5, 6)):
        return None
    divisor = constant(scaled.input[1])
    if divisor is None or divisor.size != 1:
        return None
    head_size = round(float(divisor.reshape(())) ** 2)
    width = initializers[projections[0].input[1]].dims[1]
    if head_size < 1 or width % head_size:
        return None
    return projections, head_size, end


def _made_by(producer: dict[str, Any], name: str, op: str) -> Any:
    """The node that makes tensor ``name`` if it is an ``op``, else None."""
    node = producer.get(name)
    return node if node is not None and node.op_type == op else None


def _perm(node: Any) -> tuple[int, ...]:
    return tuple(next((a.ints for a in node.attribute if a.name == "perm"), ()))


def _reaches(name: str, source: str, producer: dict[str, Any]) -> bool:
    """Whether tensor ``name`` is computed from graph input ``source``."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current == source:
            return True
        node = producer.get(current)
        if node is not None and current not in seen:
            seen.add(current)
            todo.extend(node.input)
    return False


def _constant(initializers: dict[str, Any], nodes: list[Any]) -> Callable[[str], np.ndarray | None]:
    """The value of an initializer or a ``Constant`` node's output, by name (None for others)."""
    from onnx import numpy_helper

    constant_nodes = {n.output[0]: n for n in nodes if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray | None:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = constant_nodes.get(name)
        tensor = next((a.t for a in node.attribute if a.name == "value"), None) if node is not None else None
        return None if tensor is None else numpy_helper.to_array(tensor)

    return value


def fuse_attention(source: Path, target: Path, weights: str) -> tuple[dict[str, int], int]:
    """Write ``source`` (an INT8 model, static INT8 lowered) to ``target`` with its attentions fused
    (``fused_attention``), the weights the two graphs share stored once, in file ``weights`` beside
    them (``source`` is rewritten to read its weights there); returns how many attentions became
    each operator (none: nothing written) and the hidden width they read."""
    import onnx

    from edgebert.calibration import _keep_live

    model = onnx.load(str(source))
    unfused = onnx.ModelProto()
    unfused.CopyFrom(model)
    nodes = fused_attention(model.graph, _dynamic_matmuls(model.graph, list(model.graph.node)))
    fused = [n for n in nodes if n.op_type in ("QAttention", "MultiHeadAttention")]
    if not fused:
        return {}, 0
    first = fused[0]  # its weight, or its query projection's, is hidden x (3 x) hidden
    query = first if first.op_type == "QAttention" else next(n for n in nodes if first.input[0] in n.output)
    weight = query.input[1]
    width = next(i.dims[0] for i in model.graph.initializer if i.name == weight)
    _keep_live(model.graph, nodes)
    _share_weights(unfused, source, model, weights)
    onnx.save(model, str(target))
    return dict(Counter(n.op_type for n in fused)), width


def _dynamic_matmuls(graph: Any, nodes: list[Any]) -> list[Any]:
    """``nodes`` with each of dynamic INT8's MatMuls (``MatMulInteger`` of a ``DynamicQuantizeLinear``
    output and an int8 weight, ``Cast``, ``Mul`` by the two scales, the bias ``Add``) as one
    ``MatMulIntegerToFloat``, the form static INT8 is lowered to, whose attention can be fused; the
    run-time scale and zero point are its inputs. (ONNX Runtime makes the same nodes of dynamic INT8's
    MatMuls when it loads the unfused graph.) Nodes left without readers are for the caller to drop."""
    from onnx import helper

    from edgebert.calibration import _copied, _links

    producer, readers = _links(nodes)
    initializers = {i.name for i in graph.initializer}

    def only_reader(name: str, op: str) -> Any:
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    lowered: dict[int, Any] = {}
    gone: set[int] = set()
    for node in (n for n in nodes if n.op_type == "MatMulInteger" and len(n.input) == 4):
        quantize = _made_by(producer, node.input[0], "DynamicQuantizeLinear")
        cast = only_reader(node.output[0], "Cast")
        rescale = cast and only_reader(cast.output[0], "Mul")
        scales = rescale and _made_by(producer, next(i for i in rescale.input if i != cast.output[0]), "Mul")
        if not (quantize and scales):
            continue
        weight_scale = [i for i in scales.input if i != quantize.output[1]]
        if node.input[1] not in initializers or len(weight_scale) != 1 or weight_scale[0] not in initializers:
            continue
        xq, w, xz, wz = node.input
        inputs, output = [xq, w, quantize.output[1], weight_scale[0], xz, wz], rescale.output[0]
        add = only_reader(output, "Add")
        bias = add and _copied(next(i for i in add.input if i != output), producer)
        folded = {id(rescale)}
        if bias in initializers:
            inputs, output = [*inputs, bias], add.output[0]
            folded.add(id(add))
        lowered[id(node)] = helper.make_node(
            "MatMulIntegerToFloat", inputs, [output], name=node.name, domain="com.microsoft"
        )
        gone |= folded
    return [lowered.get(id(n), n) for n in nodes if id(n) not in gone]


def _share_weights(model: Any, path: Path, other: Any, weights: str) -> None:
    """Save ``model`` to ``path`` with its tensors of 1 KB and more in file ``weights`` beside it, and
    point ``other``'s identical tensors (the same name and bytes) at them: two graphs of one model
    with their common weights on disk once."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    from edgebert.calibration import save_external

    own = {t.name: t.SerializeToString() for t in model.graph.initializer}
    common = [t for t in other.graph.initializer if own.get(t.name) == t.SerializeToString()]
    save_external(model, path, weights)
    stored = {t.name: t for t in model.graph.initializer if uses_external_data(t)}
    for tensor in (t for t in common if t.name in stored):
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.extend(stored[tensor.name].external_data)


def up_to_tokens(hidden: int) -> int:
    """The most tokens (batch × sequence) a call may have for the fused graph to run it."""
    return max(1, FUSED_WORK // hidden**2)
