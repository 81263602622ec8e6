"""CPU benchmark of the reference SST-2 classifier: PyTorch fp32 beside edgebert's fp32 and INT8
bundles, in one run, with SST-2 dev accuracy for each. Writes benchmarks/results/cpu.md.

    .venv/bin/python benchmarks/cpu.py [--threads 2] [--model ../shared/models/minilm-sst2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgebert.benchmarks import Timing
from edgebert.benchmarks.latency import latency_stats, synthetic_feeds
from edgebert.bundle import Bundle
from edgebert.data import encode_labels, read_examples
from edgebert.runtime import Predictor

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "minilm-sst2"))
    parser.add_argument("--dev", default=str(SHARED / "data" / "sst2" / "dev.tsv"))
    parser.add_argument("--calibration", default=str(SHARED / "data" / "sst2" / "train.tsv"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu.md"))
    args = parser.parse_args()
    timing = Timing(warmup=10, min_runs=100, min_seconds=3.0)
    edgebert = [sys.executable, "-m", "edgebert.cli", "-q"]
    # Each engine runs in a process of its own: export (torch) and edgebert bench as the CLI a user
    # types, then edgebert's real-text loop here before torch is imported, then PyTorch.
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        started = time.perf_counter()
        export = [*edgebert, "export", "-m", args.model, "--quantize", "int8", "-o", str(bundle)]
        subprocess.run([*export, "--calibration-data", args.calibration], check=True)
        export_s = time.perf_counter() - started
        bench = [
            *edgebert,
            "bench",
            str(bundle),
            "--batch-size",
            "1,8",
            "--seq-len",
            "128",
            "--data",
            args.dev,
        ]
        bench += [
            "--threads",
            str(args.threads),
            "--min-runs",
            "100",
            "--min-seconds",
            "3",
            "--no-save",
            "--json",
        ]
        report = json.loads(subprocess.run(bench, check=True, capture_output=True, text=True).stdout)
        real = {p: real_text_edgebert(bundle, p, args.dev, args.threads) for p in ("fp32", "int8")}
        manifest = Bundle.load(bundle).manifest
    torch_rows, torch_acc, torch_real = pytorch(args.model, args.dev, timing, report, args.threads)
    write(args, report, torch_rows, torch_acc, torch_real, real, manifest, export_s)


def pytorch(model_dir: str, dev: str, timing: Timing, report: dict, threads: int) -> tuple[dict, float, dict]:
    """PyTorch fp32 with the same inputs, timing rule and accuracy data."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fast = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    rows = {}
    with torch.inference_mode():
        for r in report["results"]:
            if r["precision"] != "fp32":
                continue
            feeds = {
                k: torch.from_numpy(v)
                for k, v in synthetic_feeds(fast, r["batch_size"], r["seq_len"]).items()
            }
            for _ in range(timing.warmup):
                model(**feeds)
            seconds: list[float] = []
            began = time.perf_counter()
            while len(seconds) < timing.min_runs or time.perf_counter() - began < timing.min_seconds:
                start = time.perf_counter()
                model(**feeds)
                seconds.append(time.perf_counter() - start)
            rows[(r["batch_size"], r["seq_len"])] = latency_stats(seconds)
        examples = read_examples(dev)
        labels = np.asarray(encode_labels(examples, tuple(model.config.id2label.values())))
        predictions = []
        for start in range(0, len(examples), 32):
            batch = tokenizer(
                examples.texts[start : start + 32],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            predictions += model(**batch).logits.argmax(-1).tolist()
        seconds = []
        for text in examples.texts:
            start = time.perf_counter()
            model(**tokenizer([text], truncation=True, max_length=128, return_tensors="pt")).logits.argmax(-1)
            seconds.append(time.perf_counter() - start)
    return rows, float(np.mean(np.asarray(predictions) == labels)), latency_stats(seconds)


def real_text_edgebert(bundle: Path, precision: str, dev: str, threads: int) -> dict:
    """One SST-2 dev sentence at a time at its own length, tokenization included."""
    predictor = Predictor(bundle, precision=precision, threads=threads)
    texts = read_examples(dev).texts
    for text in texts[:20]:
        predictor.predict([text])
    seconds = []
    for text in texts:
        start = time.perf_counter()
        predictor.predict([text])
        seconds.append(time.perf_counter() - start)
    return latency_stats(seconds)


def write(args, report, torch_rows, torch_acc, torch_real, real, manifest, export_s) -> None:
    import torch

    system = report["system"]
    lines = [
        "# CPU: PyTorch fp32 vs edgebert fp32 vs edgebert INT8",
        "",
        f"Model: `{args.model}` (all-MiniLM-L6-v2 fine-tuned on SST-2). Accuracy: SST-2 dev ({args.dev}, 872 sentences).",
        f"Machine: {system['cpu']} ({', '.join(system['instruction_sets'])}), {system['physical_cores']} cores, "
        f"{system['memory_gb']} GB; {args.threads} threads for every engine; Python {system['python']}, "
        f"onnxruntime {system['versions']['onnxruntime']}, torch {torch.__version__}.",
        "",
        f"Command: `.venv/bin/python benchmarks/cpu.py --threads {args.threads}` "
        f"(run {time.strftime('%Y-%m-%d')}); inside it, `edgebert export -m MODEL --quantize int8 "
        f"--calibration-data {args.calibration}` took {export_s:.0f} s.",
        "",
        "Latency in ms over at least 100 timed runs and 3 s per row after 10 warm-up runs; edgebert fp32 and int8 run in processes of their own and take turns of 0.25 s, PyTorch runs after them "
        "(percentiles: numpy linear); inputs are real English tokens cut to the sequence length, no padding.",
        "",
        "| engine | batch | seq | p50 | p90 | p99 | vs edgebert fp32 | items/s | SST-2 dev acc | agreement with fp32 | size MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fp32 = {
        (r["batch_size"], r["seq_len"]): r["latency_ms"]["p50"]
        for r in report["results"]
        if r["precision"] == "fp32"
    }
    for (batch, seq), stats in torch_rows.items():
        lines.append(
            f"| PyTorch fp32 | {batch} | {seq} | {stats['p50']:.2f} | {stats['p90']:.2f} | {stats['p99']:.2f} | "
            f"{stats['p50'] / fp32[(batch, seq)]:.2f}× | {batch * 1000 / stats['mean']:.1f} | {torch_acc:.4f} | – | – |"
        )
    for r in report["results"]:
        s = r["latency_ms"]
        lines.append(
            f"| edgebert {r['precision']} | {r['batch_size']} | {r['seq_len']} | {s['p50']:.2f} | {s['p90']:.2f} | "
            f"{s['p99']:.2f} | {s['p50'] / fp32[(r['batch_size'], r['seq_len'])]:.2f}× | {r['throughput_per_s']:.1f} | "
            f"{r['accuracy']:.4f} | {r['agreement']:.4f} | {r['size_mb']:.1f} |"
        )
    lines += [
        "",
        "Real text: each of the 872 dev sentences alone, at its own length, tokenization included (ms):",
        "",
        "| engine | p50 | p90 | p99 | mean |",
        "|---|---|---|---|---|",
        f"| PyTorch fp32 | {torch_real['p50']:.2f} | {torch_real['p90']:.2f} | {torch_real['p99']:.2f} | {torch_real['mean']:.2f} |",
    ]
    for precision, s in real.items():
        lines.append(
            f"| edgebert {precision} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} | {s['mean']:.2f} |"
        )
    int8 = manifest.artifacts["int8"]
    lines += [
        "",
        f"INT8 recipe (from the bundle's manifest): {int8.made_by['weights']} weights, {int8.made_by['activations']}; "
        f"kept in float: {', '.join(int8.made_by['kept_float']) or 'nothing'}, chosen on "
        f"{int8.made_by['sensitivity']['measured_on']}. INT8 runs one text per call (batch-invariant answers).",
        f"fp32 export vs torch: max abs diff {manifest.artifacts['fp32'].validation['max_abs_diff']:.2e}.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
