"""ONNX Runtime's CPU SkipLayerNormalization fusion on and off, side by side: the SST-2 MiniLM's fp32,
dynamic INT8 and static INT8 (distill) models, each in two sessions that differ only in that fusion,
timed in turns in one process at batch 1 and 8 (128 tokens) and on real text (tokenized beforehand).
edgebert's CPU sessions run with it off (edgebert.runtime.backends.CPU_DISABLED_OPTIMIZERS).
Writes benchmarks/results/ort-fusion.md.

    .venv/bin/python benchmarks/ort_fusion.py [--samples 512] [--threads 2]
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

from edgebert.benchmarks.latency import synthetic_feeds
from edgebert.benchmarks.system import system_info
from edgebert.data import read_examples
from edgebert.exporter import ExportConfig, export
from edgebert.runtime import Predictor
from edgebert.runtime.backends import CPU_DISABLED_OPTIMIZERS

ROUNDS, SECONDS_PER_TURN = 20, 0.25


def session(path: Path, threads: int, disabled: tuple[str, ...]) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled)
    )


def int8_bundles(args: argparse.Namespace, where: Path) -> None:
    """The model exported with dynamic and with distill INT8 into ``where``/dynamic and
    ``where``/distill, each unless already there."""
    for method in ("dynamic", "distill"):
        if not (where / method).is_dir():
            config = ExportConfig(
                model=args.model,
                quantize="int8",
                calibration=method,
                calibration_data=args.calibration,
                calibration_samples=args.samples,
            )
            export(where / method, config)


def main() -> None:
    args = subject_parser(__doc__.splitlines()[0]).parse_args()
    texts = read_examples(args.dev).texts[:300]
    with tempfile.TemporaryDirectory() as tmp:
        int8_bundles(args, Path(tmp))
        models = {
            "fp32": Path(tmp) / "dynamic" / "model.onnx",
            "dynamic INT8": Path(tmp) / "dynamic" / "model.int8.onnx",
            "static INT8 (distill)": Path(tmp) / "distill" / "model.int8.onnx",
        }
        predictor = Predictor(Path(tmp) / "distill", precision="fp32")
        workloads = {
            "b1": [synthetic_feeds(predictor.tokenizer, 1, 128)],
            "b8": [synthetic_feeds(predictor.tokenizer, 8, 128)],
            "real": [predictor.encode([text])[0] for text in texts],
        }
        ways = {"fused": (), "not fused": CPU_DISABLED_OPTIMIZERS}
        sessions = {
            (model, way): session(path, args.threads, disabled)
            for model, path in models.items()
            for way, disabled in ways.items()
        }
        p50: dict[tuple[str, str], dict[str, float]] = {key: {} for key in sessions}
        for name, feeds in workloads.items():
            for key, taken in interleaved(sessions, feeds).items():
                p50[key][name] = float(np.median(taken)) * 1000
    write(args, p50)


def interleaved(sessions: dict[Any, Any], feeds: list[dict[str, np.ndarray]]) -> dict[Any, list[float]]:
    """Per-call seconds of each session on ``feeds`` (cycled), the sessions taking turns."""
    seconds: dict[Any, list[float]] = {key: [] for key in sessions}
    for sess in sessions.values():
        for i in range(10):
            sess.run(None, feeds[i % len(feeds)])
    for _ in range(ROUNDS):
        for key, sess in sessions.items():
            began = time.perf_counter()
            while time.perf_counter() - began < SECONDS_PER_TURN:
                feed = feeds[len(seconds[key]) % len(feeds)]
                start = time.perf_counter()
                sess.run(None, feed)
                seconds[key].append(time.perf_counter() - start)
    return seconds


def write(args: argparse.Namespace, p50: dict[tuple[str, str], dict[str, float]]) -> None:
    system = system_info()
    lines = [
        "# ONNX Runtime's SkipLayerNormalization fusion on the CPU",
        "",
        f"Model: `{args.model}`. INT8: dynamic, and static distill on {args.samples} SST-2 train texts "
        f"(seed 0). Machine: {system['cpu']}, {args.threads} threads, onnxruntime {ort.__version__}. Command: "
        f"`.venv/bin/python benchmarks/ort_fusion.py --samples {args.samples} --threads {args.threads}` "
        f"({time.strftime('%Y-%m-%d')}).",
        "",
        f"p50 ms. Each model in two ONNX Runtime CPU sessions that differ only in `SkipLayerNormFusion` "
        f"(fused: ONNX Runtime's default; not fused: edgebert's), all six in one process taking "
        f"{SECONDS_PER_TURN} s turns, {ROUNDS} rounds per workload after 10 warm-up calls. b1, b8: synthetic "
        "text, 128 tokens; real: 300 SST-2 dev sentences one at a time at their own lengths, tokenized "
        "beforehand (the session alone).",
        "",
        "| model | fused b1 | not fused b1 | ratio | fused b8 | not fused b8 | ratio | fused real | "
        "not fused real | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(model for model, _ in p50):
        cells = []
        for name in ("b1", "b8", "real"):
            fused, not_fused = p50[model, "fused"][name], p50[model, "not fused"][name]
            cells += [f"{fused:.2f}", f"{not_fused:.2f}", f"{not_fused / fused:.2f}×"]
        lines.append(f"| {model} | {' | '.join(cells)} |")
    publish("ort-fusion.md", lines)


if __name__ == "__main__":
    main()
