"""Peer baseline: the recipe a user would pick with Hugging Face Optimum + ONNX Runtime.

Runs in its own environment (``bash benchmarks/peers_env.sh`` creates ``.peers-venv``), not edgebert's:

    .peers-venv/bin/python benchmarks/peers_optimum.py export MODEL_DIR OUT_DIR
    .peers-venv/bin/python benchmarks/peers_optimum.py pipeline OUT_DIR DATA_TSV --n 300 --threads 2

``export``: ``ORTModelForSequenceClassification.from_pretrained(MODEL_DIR, export=True)`` saved to OUT_DIR
with the tokenizer, then dynamic INT8 with ``ORTQuantizer`` and
``AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)`` (the configuration Optimum's
docs show), written beside it as ``model_quantized.onnx``.

``pipeline``: the quantized model in a ``transformers.pipeline("text-classification")``, called one
sentence at a time; latency percentiles over the first --n sentences (the first 20 calls are warm-up and
not timed; ``--n 0``: none, as ``peers.py`` asks, which times the pipeline with ``serve``) and accuracy
over every row of DATA_TSV.

``serve``: that pipeline timed in turns with the models of edgebert's harness (requests on stdin, see
``cmd_serve``), so that a machine slowing down slows it and them alike.

Each subcommand prints one JSON object on stdout; logs go to stderr. Nothing is fetched from the hub.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FP32_NAME = "model.onnx"
QUANTIZED_NAME = "model_quantized.onnx"
WARMUP_CALLS = 20
PACKAGES = ("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "onnx", "tokenizers")


def log(message: str) -> None:
    print(f"[peers_optimum] {message}", file=sys.stderr, flush=True)


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    """Rows of a ``sentence<TAB>label`` file with a header line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    if header[:2] != ["sentence", "label"]:
        raise SystemExit(f"{path}: expected a 'sentence\\tlabel' header, got {header!r}")
    sentences: list[str] = []
    labels: list[int] = []
    for line in lines[1:]:
        if not line.strip():
            continue
        sentence, label = line.rsplit("\t", 1)
        sentences.append(sentence)
        labels.append(int(label))
    return sentences, labels


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from transformers import AutoTokenizer

    model_dir = Path(args.model_dir)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    log(f"exporting {model_dir} to ONNX")
    model = ORTModelForSequenceClassification.from_pretrained(model_dir, export=True)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    export_seconds = time.perf_counter() - start

    log("dynamic INT8 quantization (avx512_vnni, per_channel=False)")
    start = time.perf_counter()
    quantizer = ORTQuantizer.from_pretrained(out_dir, file_name=FP32_NAME)
    qconfig = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
    quantizer.quantize(save_dir=out_dir, quantization_config=qconfig)
    quantize_seconds = time.perf_counter() - start

    fp32_path = out_dir / FP32_NAME
    quantized_path = out_dir / QUANTIZED_NAME
    if not quantized_path.is_file():
        raise SystemExit(f"quantized model not found at {quantized_path}")
    return {
        "command": "export",
        "model_dir": str(model_dir),
        "fp32_onnx": str(fp32_path.resolve()),
        "quantized_onnx": str(quantized_path.resolve()),
        "fp32_mb": round(fp32_path.stat().st_size / 2**20, 2),
        "quantized_mb": round(quantized_path.stat().st_size / 2**20, 2),
        "export_seconds": round(export_seconds, 2),
        "quantize_seconds": round(quantize_seconds, 2),
        "seconds": round(export_seconds + quantize_seconds, 2),
        "quantization": {
            "config": "AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)",
            "operators_to_quantize": list(qconfig.operators_to_quantize),
        },
        "quantized_ops": op_counts(quantized_path),
        "versions": versions(),
    }


def label_to_id(label: str, label2id: dict[str, int]) -> int:
    if label in label2id:
        return int(label2id[label])
    if label.startswith("LABEL_"):
        return int(label.removeprefix("LABEL_"))
    raise SystemExit(f"pipeline label {label!r} is not in the model's label2id {label2id!r}")


def _classifier(out_dir: Path, threads: int) -> Any:
    """The quantized model in a transformers text-classification pipeline."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = threads
    model = ORTModelForSequenceClassification.from_pretrained(
        out_dir,
        file_name=QUANTIZED_NAME,
        session_options=session_options,
        provider="CPUExecutionProvider",
    )
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    return pipeline("text-classification", model=model, tokenizer=tokenizer)


def cmd_serve(args: argparse.Namespace) -> dict[str, Any]:
    """Time the pipeline in turns with edgebert's timing harness (peers.py's ``PipelineTimer``): one
    JSON request a line on stdin, one JSON reply a line on stdout, as the harness's model processes
    answer its requests (edgebert.benchmarks.latency._child)."""
    start = time.perf_counter()
    classifier = _classifier(Path(args.out_dir), args.threads)
    reply: dict[str, Any] = {"load_ms": (time.perf_counter() - start) * 1000, "inference_precision": None}
    texts: list[str] = []
    at, first_ms = 0, None
    while True:
        print(json.dumps(reply), flush=True)
        request = json.loads(sys.stdin.readline() or '{"stop": true}')
        if "stop" in request:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return {"first_inference_ms": first_ms, "peak_rss_mb": peak}
        if "warmup" in request:
            texts, at = request["texts"], 0
            began = time.perf_counter()
            classifier(texts[0])
            first_ms = first_ms if first_ms is not None else (time.perf_counter() - began) * 1000
            for i in range(request["warmup"]):
                classifier(texts[i % len(texts)])
            reply = {}
        else:  # the next texts, in order, for the turn's seconds
            seconds: list[float] = []
            while not seconds or sum(seconds) < request["time"]:
                began = time.perf_counter()
                classifier(texts[at % len(texts)])
                seconds.append(time.perf_counter() - began)
                at += 1
            reply = {"seconds": seconds}


def cmd_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    out_dir = Path(args.out_dir)
    sentences, labels = read_tsv(Path(args.data_tsv))
    if 0 < args.n <= WARMUP_CALLS:
        raise SystemExit(f"--n must exceed the {WARMUP_CALLS} warm-up calls (or be 0: accuracy only)")
    classifier = _classifier(out_dir, args.threads)
    model = classifier.model
    label2id = {str(k): int(v) for k, v in model.config.label2id.items()}
    log(f"id2label={model.config.id2label} label2id={label2id}")

    latency_texts = sentences[: args.n]
    timings_ms: list[float] = []
    for i, text in enumerate(latency_texts):
        start = time.perf_counter()
        classifier(text)
        elapsed = (time.perf_counter() - start) * 1000.0
        if i >= WARMUP_CALLS:
            timings_ms.append(elapsed)
    timed = np.asarray(timings_ms)
    latency = {  # none with --n 0
        f"{stat}_ms": round(float(np.percentile(timed, q) if q else timed.mean()), 3)
        for stat, q in (("p50", 50), ("p90", 90), ("p99", 99), ("mean", 0))
        if timed.size
    }

    log(f"accuracy over {len(sentences)} rows, one sentence per call")
    correct = 0
    for text, gold in zip(sentences, labels, strict=True):
        (prediction,) = classifier(text)
        correct += int(label_to_id(prediction["label"], label2id) == gold)

    return {
        "command": "pipeline",
        "onnx": str((out_dir / QUANTIZED_NAME).resolve()),
        "data_tsv": str(Path(args.data_tsv).resolve()),
        "threads": args.threads,
        "latency_sentences": len(latency_texts),
        "warmup_calls": WARMUP_CALLS,
        "timed_calls": int(timed.size),
        **latency,
        "accuracy": round(correct / len(labels), 4),
        "correct": correct,
        "rows": len(labels),
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "versions": versions(),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="ONNX export + dynamic INT8 quantization with Optimum")
    export.add_argument("model_dir")
    export.add_argument("out_dir")
    export.set_defaults(func=cmd_export)

    pipe = sub.add_parser("pipeline", help="latency and accuracy of the quantized model in a pipeline")
    pipe.add_argument("out_dir")
    pipe.add_argument("data_tsv")
    pipe.add_argument("--n", type=int, default=300, help="sentences for latency, warm-up included (0: none)")
    pipe.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    pipe.set_defaults(func=cmd_pipeline)

    serve = sub.add_parser("serve", help="time the pipeline in turns with edgebert's harness (stdin/stdout)")
    serve.add_argument("out_dir")
    serve.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = args.func(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
