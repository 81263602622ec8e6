"""edgebert's export against the same checkpoint exported as edgebert did before two of its choices,
side by side: with the last layer computing every token (not the first token only) and with
transformers' SDPA attention (not eager). Each export in fp32 and static INT8 (distill, same
calibration texts), timed in one interleaved run at batch 1 and 8 (128 tokens) and on real text,
with SST-2 dev accuracy. Writes benchmarks/results/export-variants.md.

    .venv/bin/python benchmarks/export_variants.py [--samples 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from calibration import publish, subject_parser  # benchmarks/calibration.py

import edgebert.exporter.first_token as first_token
import edgebert.exporter.onnx_export as onnx_export
from edgebert.benchmarks import Timing
from edgebert.benchmarks.latency import Subject, measure_models
from edgebert.benchmarks.system import system_info
from edgebert.data import encode_labels, read_examples
from edgebert.exporter import ExportConfig, export

TIMING = Timing(warmup=10, min_runs=100, min_seconds=3.0)
EDGEBERT = "edgebert"


@contextlib.contextmanager
def whole_last_layer() -> Iterator[None]:
    """The last layer computes every token."""

    @contextlib.contextmanager
    def unchanged(model: Any, task: str, pooling: dict[str, Any]) -> Iterator[bool]:
        yield False

    original = first_token.first_token_only
    first_token.first_token_only = unchanged
    try:
        yield
    finally:
        first_token.first_token_only = original


@contextlib.contextmanager
def sdpa_attention() -> Iterator[None]:
    """transformers' default attention implementation."""
    original = onnx_export.ATTENTION
    onnx_export.ATTENTION = "sdpa"
    try:
        yield
    finally:
        onnx_export.ATTENTION = original


VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    EDGEBERT: contextlib.nullcontext,
    "whole last layer": whole_last_layer,
    "SDPA attention": sdpa_attention,
}


def main() -> None:
    args = subject_parser(__doc__.splitlines()[0]).parse_args()
    config = ExportConfig(
        model=args.model,
        quantize="int8",
        calibration="distill",
        calibration_data=args.calibration,
        calibration_samples=args.samples,
    )
    examples = read_examples(args.dev)
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {}
        for i, (variant, applied) in enumerate(VARIANTS.items()):
            bundles[variant] = Path(tmp) / str(i)
            with applied():
                export(bundles[variant], config)
        subjects = {
            f"{way}, {model}": Subject(path, model, "cpu")
            for way, path in bundles.items()
            for model in ("fp32", "int8")
        }
        accuracy = {}
        for label, subject in subjects.items():
            predictor = subject.predictor()
            labels = np.asarray(encode_labels(examples, predictor.labels))
            accuracy[label] = float(np.mean(predictor.outputs(examples.texts)[0].argmax(-1) == labels))
        texts = tuple(examples.texts[:300])
        timed = measure_models(subjects, args.threads, [(1, 128), (8, 128), ("real", texts)], TIMING)
    write(args, accuracy, timed)


def write(args: argparse.Namespace, accuracy: dict[str, float], timed: dict[str, Any]) -> None:
    system = system_info()
    p50 = {label: [s["latency_ms"]["p50"] for s in result["shapes"]] for label, result in timed.items()}
    lines = [
        "# edgebert's export against two of its earlier forms",
        "",
        f"Model: `{args.model}`; accuracy on SST-2 dev (872). INT8: static, distill, {args.samples} SST-2 train "
        f"texts (seed 0). Machine: {system['cpu']}, {args.threads} threads. Command: "
        f"`.venv/bin/python benchmarks/export_variants.py --samples {args.samples} --threads {args.threads}` "
        f"({time.strftime('%Y-%m-%d')}).",
        "",
        "Exports: edgebert's (the last layer computes the first token only, the only one the classifier reads; "
        "transformers' eager attention); the same with the last layer computing every token; the same with "
        "transformers' default SDPA attention.",
        "",
        "p50 ms, ONNX Runtime CPU, every model in its own process, taking 0.25 s turns in one run (≥100 runs and "
        "≥3 s per row after 10 warm-up runs). b1, b8: synthetic text, 128 tokens; real: 300 SST-2 dev sentences "
        "one at a time at their own lengths, tokenization included. The ratios are edgebert's export's time "
        "over this row's, same model.",
        "",
        "| export, model | b1 | b8 | real | edgebert's b1 vs this | b8 | real | dev accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, times in p50.items():
        ours = p50[EDGEBERT + label[label.index(",") :]]
        ratios = [
            f"{o / t:.2f}×" if not label.startswith(EDGEBERT) else "–"
            for o, t in zip(ours, times, strict=True)
        ]
        cells = [f"{t:.2f}" for t in times] + ratios + [f"{accuracy[label]:.4f}"]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    publish("export-variants.md", lines)


if __name__ == "__main__":
    main()
