"""ONNX Runtime's QOperator INT8 format against edgebert's static INT8 (issue 3: "QOperator vs QDQ
format"), side by side on the reference SST-2 classifier. The QOperator models are ONNX Runtime's
own recipe on edgebert's fp32 export: its transformer optimizer (LayerNorm, Gelu, SkipLayerNorm and
embedding fusions; its Attention fusion off, since ONNX Runtime's quantizer leaves a fused
Attention in fp32, so that every weight MatMul is quantized), symbolic shape inference, then
``quantize_static`` with ``QuantFormat.QOperator``, per-channel s8 weights, u8 activations and
MinMax ranges on the same calibration texts as edgebert's distill. Every model is timed in one
interleaved run (batch 1 and 8 at 128 tokens, and SST-2 dev sentences one at a time), with SST-2
dev accuracy and agreement with fp32. Writes benchmarks/results/qoperator.md.

    .venv/bin/python benchmarks/qoperator.py [--samples 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from calibration import publish, subject_parser, wrap  # benchmarks/calibration.py
from peers import REAL_TEXTS, TIMING, quality  # benchmarks/peers.py: the same timing rule and quality

from edgebert.benchmarks.latency import Shape, Subject, measure_models
from edgebert.benchmarks.system import system_info
from edgebert.data import read_examples, sample_examples
from edgebert.exporter import ExportConfig, export
from edgebert.quantizer import QuantizeConfig, quantize
from edgebert.runtime import Predictor

# what ONNX Runtime's quantizer may turn into its QOperator form: the weight MatMuls alone, or
# every operator it has a quantized form for (None: its default list)
VARIANTS = {"QOperator, MatMul only": ["MatMul"], "QOperator, every operator it can": None}


def main() -> None:
    args = subject_parser(__doc__.splitlines()[0]).parse_args()
    rows: dict[str, dict[str, Any]] = {"fp32": {}, "edgebert static INT8 (distill)": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = work / "fp32"
        export(base, ExportConfig(model=args.model))
        bundles = {"fp32": base, "edgebert static INT8 (distill)": work / "distill"}
        shutil.copytree(base, bundles["edgebert static INT8 (distill)"])
        quantize(
            bundles["edgebert static INT8 (distill)"],
            QuantizeConfig(
                method="distill", calibration_data=args.calibration, calibration_samples=args.samples
            ),
        )
        optimized = ort_optimized(base / "model.onnx", work)
        fp32 = Predictor(base, precision="fp32")
        texts = sample_examples(args.calibration, args.samples, seed=0).texts
        feeds = [fp32.encode([text])[0] for text in texts]
        for name, op_types in VARIANTS.items():
            model = work / f"{len(bundles)}.onnx"
            began = time.perf_counter()
            qoperator(optimized, model, feeds, op_types)
            rows[name] = {"seconds": time.perf_counter() - began, "operators": operators(model)}
            bundles[name] = wrap(
                base, work / f"bundle{len(bundles)}", {"int8": model}, {"tool": "quantize_static"}
            )
        subjects = {n: Subject(b, "fp32" if n == "fp32" else "int8", "cpu") for n, b in bundles.items()}
        for name, row in quality(subjects, args.dev, skip_accuracy=False).items():
            rows[name].update(accuracy=row["accuracy"], agreement=row["agreement"])
        dev = read_examples(args.dev)
        shapes: list[Shape] = [(1, 128), (8, 128), ("real", tuple(dev.texts[:REAL_TEXTS]))]
        for name, result in measure_models(subjects, args.threads, shapes, TIMING).items():
            rows[name]["p50"] = {
                str(s["batch_size"]) if s["seq_len"] != "real" else "real": s["latency_ms"]["p50"]
                for s in result["shapes"]
            }
    write(args, rows, len(dev.texts))


def ort_optimized(model: Path, work: Path) -> Path:
    """``model`` through ONNX Runtime's transformer optimizer (no Attention fusion) and its symbolic
    shape inference, which the quantizer needs to find the tensors of the fused operators."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_attention = False
    fused = optimize_model(
        str(model), model_type="bert", num_heads=0, hidden_size=0, optimization_options=options
    )
    fused.save_model_to_file(str(work / "fused.onnx"))
    quant_pre_process(
        str(work / "fused.onnx"),
        str(work / "optimized.onnx"),
        skip_optimization=True,
        skip_onnx_shape=True,
        auto_merge=True,
    )
    return work / "optimized.onnx"


def qoperator(
    source: Path, target: Path, feeds: list[dict[str, np.ndarray]], op_types: list[str] | None
) -> None:
    """ONNX Runtime's ``quantize_static`` in QOperator format, calibrated on ``feeds``; MatMuls of two
    activations (the last layer's attention, whose query is the first token alone) stay in float."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    graph = onnx.load(str(source)).graph
    weights = {i.name for i in graph.initializer}
    two_activations = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in weights]
    quantize_static(
        str(source),
        str(target),
        Reader(),
        quant_format=QuantFormat.QOperator,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=two_activations,
        **({"op_types_to_quantize": op_types} if op_types else {}),
    )


def operators(model: Path) -> str:
    """The quantized operators of ``model`` and how many of each, most first."""
    import onnx

    counts = Counter(n.op_type for n in onnx.load(str(model)).graph.node)
    return ", ".join(f"{op} {n}" for op, n in counts.most_common() if op.startswith(("Q", "MatMulInteger")))


def write(args: argparse.Namespace, rows: dict[str, dict[str, Any]], dev_texts: int) -> None:
    import onnxruntime

    ours = rows["edgebert static INT8 (distill)"]["p50"]
    lines = [
        "# ONNX Runtime's QOperator INT8 against edgebert's static INT8",
        "",
        f"Model: `{args.model}`; accuracy: SST-2 dev ({dev_texts}). Calibration: {args.samples} "
        f"texts drawn with seed 0 from `{args.calibration}`, the same for every INT8 model. Machine: "
        f"{system_info()['cpu']}, {args.threads} threads, onnxruntime {onnxruntime.__version__}. Command: "
        f"`.venv/bin/python benchmarks/qoperator.py --samples {args.samples} --threads {args.threads}` "
        f"({time.strftime('%Y-%m-%d')}).",
        "",
        "p50 ms, every model in its own process taking turns in one run (≥100 runs and ≥3 s per row after 10 "
        f"warm-up runs). b1, b8: synthetic text, 128 tokens; real: {REAL_TEXTS} SST-2 dev sentences one at a time at "
        "their own lengths, tokenization included. Ratios: against edgebert's static INT8 (distill) in the same run. "
        "QOperator: ONNX Runtime's transformer optimizer without its Attention fusion, then `quantize_static` with "
        "`QuantFormat.QOperator`, per-channel s8 weights, u8 activations, MinMax ranges; each `QLinearMatMul` "
        "requantizes its output to u8, which a `DequantizeLinear` reads back before the bias Add.",
        "",
        "| model | dev accuracy | agreement with fp32 | b1 | b8 | real | quantize time s | quantized operators |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        times = " | ".join(f"{r['p50'][s]:.2f} ({r['p50'][s] / ours[s]:.2f}×)" for s in ("1", "8", "real"))
        seconds = f"{r['seconds']:.0f}" if "seconds" in r else "–"
        lines.append(
            f"| {name} | {r['accuracy']:.4f} | {r['agreement']:.4f} | {times} | {seconds} | {r.get('operators', '–')} |"
        )
    publish("qoperator.md", lines)


if __name__ == "__main__":
    main()
