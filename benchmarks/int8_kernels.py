"""INT8 on a CPU without VNNI: ONNX Runtime's default u8 x s8 kernels against the exact u8 x u8 ones
edgebert's sessions use there (edgebert.runtime.backends.u8s8_saturates), on the SST-2 MiniLM's
dynamic and distill INT8 models: SST-2 dev accuracy, agreement with fp32 and p50 latency, in one
run. Also what one u8 x s8 MatMul of 255s by 127s gives on each runtime, OpenVINO included. On a
CPU with VNNI both sessions are the same. Writes benchmarks/results/int8-kernels.md.

    .venv/bin/python benchmarks/int8_kernels.py [--samples 512] [--threads 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from calibration import publish, subject_parser  # benchmarks/calibration.py
from ort_fusion import int8_bundles, interleaved, session  # benchmarks/ort_fusion.py

from edgebert.benchmarks.latency import synthetic_feeds
from edgebert.benchmarks.system import system_info
from edgebert.bundle import Bundle
from edgebert.data import encode_labels, read_examples
from edgebert.runtime import Predictor, open_session
from edgebert.runtime.backends import CPU_DISABLED_OPTIMIZERS, u8s8_saturates

KERNELS = ("ONNX Runtime's default", "edgebert's")


def main() -> None:
    parser = subject_parser(__doc__.splitlines()[0])
    parser.add_argument("--work", help="Keep the exported bundles here, and reuse them (default: temporary).")
    args = parser.parse_args()
    dev = read_examples(args.dev)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        int8_bundles(args, work)
        fp32 = Predictor(work / "distill", precision="fp32")
        sentences = [fp32.encode([text])[0] for text in dev.texts]  # each dev sentence alone
        output = fp32.bundle.manifest.output_name
        reference = np.concatenate([fp32.session.run([output], f)[0] for f in sentences]).argmax(-1)
        gold = np.asarray(encode_labels(dev, fp32.labels))
        workloads = {
            "b1": [synthetic_feeds(fp32.tokenizer, 1, 128)],
            "b8": [synthetic_feeds(fp32.tokenizer, 8, 128)],
            "real": sentences[:300],
        }
        sessions = {}
        for method in ("dynamic", "distill"):
            bundle = Bundle.load(work / method)
            # the Predictor's two graphs: fused attention for small calls (batch 1), the other for batch 8
            for graph in ("int8-fused", "int8"):
                path = bundle.file(graph)
                sessions[method, graph, KERNELS[0]] = session(path, args.threads, CPU_DISABLED_OPTIMIZERS)
                sessions[method, graph, KERNELS[1]] = open_session(path, "cpu", threads=args.threads)
        for (method, graph, kernels), sess in sessions.items():
            if graph == "int8-fused":
                outputs = [sess.run([output], feeds)[0] for feeds in sentences]
                predicted = np.concatenate(outputs).argmax(-1)
                rows[f"{method} INT8, {kernels} kernels"] = {
                    "accuracy": float(np.mean(predicted == gold)),
                    "agreement": float(np.mean(predicted == reference)),
                }
        for name, feeds in workloads.items():
            graph = "int8" if name == "b8" else "int8-fused"
            chosen = {key: sess for key, sess in sessions.items() if key[1] == graph}
            for (method, _, kernels), taken in interleaved(chosen, feeds).items():
                rows[f"{method} INT8, {kernels} kernels"][name] = float(np.median(taken)) * 1000
    write(args, rows, products())


def products(inner: int = 64) -> dict[str, int]:
    """What one row of a u8 x s8 MatMul of 255s by 127s (``inner`` long) sums to on each runtime."""
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((inner, 1), 127, np.int8), "w")
    integer = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "products",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, inner])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
        [weights],
    )
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "zero")
    qdq = helper.make_graph(  # OpenVINO reads the QDQ form and runs it as an INT8 MatMul
        [
            helper.make_node("QuantizeLinear", ["x", "one", "zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "one", "zero"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w", "one"], ["wd"]),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ],
        "products",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, inner])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [weights, one, zero],
    )
    opset = [helper.make_opsetid("", 17)]
    as_int = helper.make_model(integer, opset_imports=opset).SerializeToString()
    ones = {"a": np.full((1, inner), 255, np.uint8)}
    found = {
        "exact": 255 * 127 * inner,
        "ONNX Runtime's default kernels": int(ort.InferenceSession(as_int).run(None, ones)[0][0, 0]),
        "edgebert's ONNX Runtime session": int(open_session(as_int, "cpu").run(None, ones)[0][0, 0]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qdq.onnx"
        path.write_bytes(helper.make_model(qdq, opset_imports=opset).SerializeToString())
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        found["OpenVINO"] = int(compiled({"x": np.full((1, inner), 255, np.float32)})[0][0, 0])
    return found


def write(args: argparse.Namespace, rows: dict[str, dict[str, Any]], found: dict[str, int]) -> None:
    system = system_info()
    lines = [
        "# INT8 kernels on a CPU without VNNI",
        "",
        f"Model: `{args.model}`; accuracy on SST-2 dev ({args.dev}). INT8: dynamic, and static distill on "
        f"{args.samples} SST-2 train texts (seed 0), both made by this edgebert. Machine: {system['cpu']} "
        f"({', '.join(system['instruction_sets']) or 'no AVX2'}), {args.threads} threads, onnxruntime "
        f"{ort.__version__}; u8 x s8 products saturate here: {u8s8_saturates()}. Command: "
        f"`.venv/bin/python benchmarks/int8_kernels.py --samples {args.samples} --threads {args.threads}` "
        f"({time.strftime('%Y-%m-%d')}).",
        "",
        "One row of a MatMul of 255s (u8) by 127s (s8), 64 long, sums to: "
        + ", ".join(f"{name} {value:,}" for name, value in found.items())
        + ".",
        "",
        "Each model in two sessions: ONNX Runtime's default kernels, and edgebert's session (ONNX "
        "Runtime's u8 x u8 kernels where u8 x s8 saturates). Accuracy: every dev sentence alone, on the "
        "fused-attention graph the Predictor runs for it. p50 ms, the sessions taking "
        "0.25 s turns in one process: b1, b8 synthetic text of 128 tokens (b8 on the unfused graph, as "
        "the Predictor runs it); real: 300 dev sentences at their own lengths, tokenized beforehand.",
        "",
        "| model | dev accuracy | agreement with fp32 | b1 | b8 | real |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['accuracy']:.4f} | {row['agreement']:.4f} | {row['b1']:.2f} | "
            f"{row['b8']:.2f} | {row['real']:.2f} |"
        )
    publish("int8-kernels.md", lines)


if __name__ == "__main__":
    main()
