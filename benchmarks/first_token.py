"""The last layer computed for the first token only, against the whole last layer, side by side: the
same checkpoint exported both ways, each in fp32 and static INT8 (distill, same calibration texts),
timed in one interleaved run at batch 1 and 8 (128 tokens) and on real text, with SST-2 dev accuracy.
Writes benchmarks/results/first-token.md.

    .venv/bin/python benchmarks/first_token.py [--samples 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from calibration import subject_parser  # benchmarks/calibration.py

import edgebert.exporter.first_token as first_token
from edgebert.benchmarks import Timing
from edgebert.benchmarks.latency import Subject, measure_models
from edgebert.benchmarks.system import system_info
from edgebert.data import encode_labels, read_examples
from edgebert.exporter import ExportConfig, export

ROOT = Path(__file__).resolve().parents[1]
TIMING = Timing(warmup=10, min_runs=100, min_seconds=3.0)


@contextlib.contextmanager
def whole_last_layer() -> Iterator[None]:
    """Export as edgebert did before: the last layer computes every token."""

    @contextlib.contextmanager
    def unchanged(*args: Any) -> Iterator[bool]:
        yield False

    original = first_token.first_token_only
    first_token.first_token_only = unchanged  # type: ignore[assignment]
    try:
        yield
    finally:
        first_token.first_token_only = original


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
        bundles = {"first token only": Path(tmp) / "first"}
        export(bundles["first token only"], config)
        with whole_last_layer():
            bundles["whole last layer"] = Path(tmp) / "whole"
            export(bundles["whole last layer"], config)
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
        "# The last layer for the first token only",
        "",
        f"Model: `{args.model}`; accuracy on SST-2 dev (872). INT8: static, distill, {args.samples} SST-2 train "
        f"texts (seed 0). Machine: {system['cpu']}, {args.threads} threads. Command: "
        f"`.venv/bin/python benchmarks/first_token.py --samples {args.samples} --threads {args.threads}` "
        f"({time.strftime('%Y-%m-%d')}).",
        "",
        "p50 ms, ONNX Runtime CPU, every model in its own process, taking 0.25 s turns in one run (≥100 runs and "
        "≥3 s per row after 10 warm-up runs). b1, b8: synthetic text, 128 tokens; real: 300 SST-2 dev sentences "
        "one at a time at their own lengths, tokenization included.",
        "",
        "| export, model | b1 | b8 | real | b1 vs whole | b8 vs whole | real vs whole | dev accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, times in p50.items():
        whole = p50[label.replace("first token only", "whole last layer")]
        ratios = [f"{t / w:.2f}×" for t, w in zip(times, whole, strict=True)]
        cells = [f"{t:.2f}" for t in times] + ratios + [f"{accuracy[label]:.4f}"]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    out = ROOT / "benchmarks" / "results" / "first-token.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
