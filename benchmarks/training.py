"""Training benchmarks: fine-tuning the default MiniLM on SST-2; a 3-layer student distilled from the
SST-2 MiniLM teacher, with both INT8 bundles timed side by side; a tiny BERT pretrained here against
the same model from random init (pretrain), both fine-tuned on SST-2 with the same budgets (compare).
Each stage runs the edgebert CLI a user would type and leaves its figures in WORK/<stage>.json; the
Markdown is written from every stage found there. Writes benchmarks/results/training.md.

    .venv/bin/python benchmarks/training.py [--only finetune,distill,pretrain,compare] [--work /tmp/edgebert-training]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
SST2 = {"data": str(DATA / "sst2" / "train.tsv"), "eval": str(DATA / "sst2" / "dev.tsv")}
EDGEBERT = [sys.executable, "-m", "edgebert.cli"]
STAGES = ("finetune", "distill", "pretrain", "compare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(STAGES), help="Stages to run (the rest are read from --work)."
    )
    parser.add_argument("--work", default="/tmp/edgebert-training")
    parser.add_argument(
        "--epochs", type=int, default=3, help="Fine-tuning epochs (early stopping, patience 1)."
    )
    parser.add_argument("--lr", default="5e-5", help="Fine-tuning learning rate.")
    parser.add_argument("--teacher", default=str(SHARED / "models" / "minilm-sst2"))
    parser.add_argument("--pretrain-steps", type=int, default=12000)
    parser.add_argument("--pretrain-lr", default="1e-3")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training.md"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for stage in filter(None, args.only.split(",")):
        began = time.perf_counter()
        figures = {"finetune": finetune, "distill": distill, "pretrain": pretrain, "compare": compare}[stage](
            args, work
        )
        figures.update(wall_s=round(time.perf_counter() - began), date=time.strftime("%Y-%m-%d %H:%M"))
        name = f"finetune-{args.epochs}x{args.lr}" if stage == "finetune" else stage
        (work / f"{name}.json").write_text(json.dumps(figures, indent=2))
    stages = {
        s: json.loads((work / f"{s}.json").read_text()) for s in STAGES if (work / f"{s}.json").is_file()
    }
    stages["finetune"] = [json.loads(p.read_text()) for p in sorted(work.glob("finetune-*.json"))]
    write(args, stages)


def cli(*arguments: str) -> dict:
    """Run an edgebert command with --json; its summary."""
    done = subprocess.run([*EDGEBERT, *arguments, "--json"], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def finetune(args: argparse.Namespace, work: Path) -> dict:
    command = ["train", "--data", SST2["data"], "--eval", SST2["eval"], "--epochs", str(args.epochs)]
    command += ["--lr", args.lr, "--patience", "1", "--out", str(work / "finetuned"), "--force"]
    return {"command": "edgebert " + " ".join(command), "summary": cli(*command), "padding": padding()}


def padding() -> dict:
    """Share of padding in the batch tensors of one SST-2 epoch (batch 32, max length 64): batches
    cut from shuffled examples against edgebert's length-bucketed batches."""
    from transformers import AutoTokenizer

    from edgebert.data import read_examples
    from edgebert.models import resolve
    from edgebert.training.loop import bucketed

    tokenizer = AutoTokenizer.from_pretrained(resolve(None).path)
    texts = read_examples(SST2["data"]).texts
    rows = [{"input_ids": ids} for ids in tokenizer(texts, truncation=True, max_length=64)["input_ids"]]
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    plain = [shuffled[i : i + 32] for i in range(0, len(shuffled), 32)]

    def waste(batches: list[list[dict]]) -> float:
        real = sum(len(r["input_ids"]) for b in batches for r in b)
        return 1 - real / sum(len(b) * max(len(r["input_ids"]) for r in b) for b in batches)

    return {"shuffled": waste(plain), "bucketed": waste(bucketed(rows, 32, random.Random(1)))}


def distill(args: argparse.Namespace, work: Path) -> dict:
    from edgebert.benchmarks import Timing
    from edgebert.benchmarks.latency import Subject, measure_models

    command = ["distill", "--teacher", args.teacher, "--data", SST2["data"], "--eval", SST2["eval"]]
    command += ["--student-layers", "3", "--out", str(work / "student"), "--force"]
    summary = cli(*command)
    bundles = {}
    for name, model in (("teacher", args.teacher), ("student", str(work / "student"))):
        bundles[name] = work / f"{name}-bundle"
        export = ["export", "-m", model, "--quantize", "int8", "--calibration-data", SST2["data"]]
        cli(*export, "-o", str(bundles[name]), "--force")
    subjects = {f"{name} int8": Subject(path, "int8", "cpu") for name, path in bundles.items()}
    timing = Timing(warmup=10, min_runs=100, min_seconds=3.0)
    timed = measure_models(subjects, 2, [(1, 128), (8, 128)], timing)
    latency = {
        label: {str(s["batch_size"]): s["latency_ms"]["p50"] for s in result["shapes"]}
        for label, result in timed.items()
    }
    accuracy = {label: int8_accuracy(subject.bundle) for label, subject in subjects.items()}
    return {
        "command": "edgebert " + " ".join(command),
        "summary": summary,
        "latency_p50_ms": latency,
        "int8_dev": accuracy,
    }


def int8_accuracy(bundle: Path) -> float:
    from edgebert.bundle import Bundle
    from edgebert.data import encode_labels, read_examples
    from edgebert.runtime import Predictor

    examples = read_examples(SST2["eval"])
    labels = encode_labels(examples, Bundle.load(bundle).manifest.labels or ())
    predictions = Predictor(bundle, precision="int8", threads=2).outputs(examples.texts)[0].argmax(-1)
    return float(np.mean(predictions == np.asarray(labels)))


def corpus(path: Path) -> dict:
    """Unlabeled text from the machine's training splits (never dev or holdout): AG News articles,
    one sentence a line, an article a document; each SST-2 train sentence a document of its own
    (they are shuffled phrases: NSP takes the two halves of each)."""
    documents = []
    for line in (DATA / "agnews" / "train.tsv").read_text(encoding="utf-8").splitlines():
        text = line.rsplit("\t", 1)[0].replace(" #39;", "'").replace("#39;", "'")
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
        documents.append(sentences)
    sst2 = [
        line.rsplit("\t", 1)[0] for line in Path(SST2["data"]).read_text(encoding="utf-8").splitlines()[1:]
    ]
    documents += [[sentence] for sentence in sst2]
    path.write_text("\n\n".join("\n".join(d) for d in documents) + "\n", encoding="utf-8")
    return {"documents": len(documents), "lines": sum(len(d) for d in documents)}


def pretrain(args: argparse.Namespace, work: Path) -> dict:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    text = work / "corpus.txt"
    shape = corpus(text)
    command = ["pretrain", "--corpus", str(text), "--config", "tiny", "--max-steps", str(args.pretrain_steps)]
    command += [
        "--lr",
        args.pretrain_lr,
        "--max-length",
        "64",
        "--out",
        str(work / "tiny-pretrained"),
        "--force",
    ]
    pretrained = cli(*command)
    torch.manual_seed(0)  # the same model, tokenizer and vocabulary, from random init
    random_init = BertForPreTraining(BertConfig.from_pretrained(work / "tiny-pretrained"))
    random_init.save_pretrained(work / "tiny-random", safe_serialization=True)
    AutoTokenizer.from_pretrained(work / "tiny-pretrained").save_pretrained(work / "tiny-random")
    return {"command": "edgebert " + " ".join(command), "corpus": shape, "pretrain": pretrained}


def compare(args: argparse.Namespace, work: Path) -> dict:
    """The pretrained tiny BERT and the same model from random init, each fine-tuned on SST-2 with
    the same budgets, at every learning rate of LRS and seed of SEEDS."""
    runs = []
    for budget, (data, epochs) in budgets(work).items():
        for lr in LRS:
            for seed in SEEDS:
                for start in ("pretrained", "random"):
                    command = [
                        "train",
                        "-m",
                        str(work / f"tiny-{start}"),
                        "--data",
                        data,
                        "--eval",
                        SST2["eval"],
                    ]
                    command += ["--epochs", epochs, "--lr", lr, "--seed", str(seed)]
                    summary = cli(*command, "-o", str(work / f"ft-{start}"), "--force")
                    keep = ("dev_accuracy", "steps", "train_seconds")
                    runs.append(
                        {
                            "budget": budget,
                            "start": start,
                            "lr": lr,
                            "seed": seed,
                            **{k: summary[k] for k in keep},
                        }
                    )
    return {
        "command": "edgebert train -m MODEL --data DATA --eval ../shared/data/sst2/dev.tsv --epochs E --lr LR --seed S",
        "runs": runs,
    }


LRS = ("1e-4", "3e-4", "1e-3")
SEEDS = (0, 1, 2)


def budgets(work: Path) -> dict[str, tuple[str, str]]:
    """The fine-tuning budgets, fixed before measuring: SST-2 train in full for one epoch, and 4,000
    of its sentences (drawn with seed 0) for five epochs."""
    lines = Path(SST2["data"]).read_text(encoding="utf-8").splitlines()
    rows = lines[1:]
    random.Random(0).shuffle(rows)
    few = work / "sst2-train-4000.tsv"
    few.write_text("\n".join([lines[0], *rows[:4000]]) + "\n", encoding="utf-8")
    return {
        "all 67,349 sentences, 1 epoch": (SST2["data"], "1"),
        "4,000 sentences, 5 epochs": (str(few), "5"),
    }


def write(args: argparse.Namespace, stages: dict[str, dict]) -> None:
    import platform

    import psutil

    cpu = platform.processor() or platform.machine()
    lines = [
        "# Training: fine-tuning, distillation, pretraining",
        "",
        f"Machine: {cpu}, {psutil.cpu_count(logical=False)} cores, {psutil.virtual_memory().total / 2**30:.0f} GB, no GPU; "
        f"torch {__import__('torch').__version__}, fp32. Data: SST-2 train (67,349) and dev (872) from `../shared/data`.",
        "",
        "Produced by `.venv/bin/python benchmarks/training.py` (each stage below ran on its own; its date is given).",
        "",
    ]
    if stages["finetune"]:
        lines += [
            "## Fine-tuning all-MiniLM-L6-v2 on SST-2",
            "",
            "| command (date) | dev accuracy (best epoch) | per epoch | steps | train time | samples/s |",
            "|---|---|---|---|---|---|",
        ]
        for f in stages["finetune"]:
            s = f["summary"]
            history = ", ".join(f"{h['dev_accuracy']:.4f}" for h in s["history"])
            lines.append(
                f"| `{f['command']}` ({f['date']}) | **{s['dev_accuracy']:.4f}** (epoch {s['best_epoch']}) | {history} | "
                f"{s['steps']} | {s['train_seconds']:.0f} s | {s['samples_per_s']:.1f} |"
            )
        f = stages["finetune"][-1]
        lines += [
            "",
            f"Padding in the batch tensors of one epoch (batch 32, max length 64): {f['padding']['shuffled']:.1%} with batches cut from "
            f"shuffled examples, {f['padding']['bucketed']:.1%} with edgebert's length-bucketed batches (shuffled, then sorted within windows of 50 batches).",
            "",
        ]
    if "distill" in stages:
        d, s = stages["distill"], stages["distill"]["summary"]
        lat = d["latency_p50_ms"]
        lines += [
            "## Distilling the SST-2 teacher into a 3-layer student",
            "",
            f"`{d['command']}` ({d['date']}): student initialised from teacher layers {s['student']['layers']}, "
            f"loss 0.5 × T² × KL(teacher ‖ student) at T = 2 plus 0.5 × cross-entropy, one epoch.",
            "",
            "| model | layers | dev accuracy (PyTorch) | of the teacher | INT8 dev accuracy | INT8 p50 b1 (ms) | INT8 p50 b8 (ms) |",
            "|---|---|---|---|---|---|---|",
            f"| teacher `{args.teacher}` | 6 | {s['teacher_dev_accuracy']:.4f} | – | {d['int8_dev']['teacher int8']:.4f} | {lat['teacher int8']['1']:.2f} | {lat['teacher int8']['8']:.2f} |",
            f"| student | 3 | {s['dev_accuracy']:.4f} | **{s['kept_of_teacher']:.1%}** | {d['int8_dev']['student int8']:.4f} | "
            f"{lat['student int8']['1']:.2f} (**{lat['student int8']['1'] / lat['teacher int8']['1']:.2f}×**) | "
            f"{lat['student int8']['8']:.2f} (**{lat['student int8']['8'] / lat['teacher int8']['8']:.2f}×**) |",
            "",
            f"Training: {s['train_seconds']:.0f} s, {s['samples_per_s']:.1f} samples/s. Both INT8 bundles from `edgebert export --quantize int8 "
            "--calibration-data ../shared/data/sst2/train.tsv`, timed in one run, each in its own process taking 0.25 s turns (2 threads, seq 128, "
            "≥100 runs and ≥3 s per row after 10 warm-up runs).",
            "",
        ]
    if "pretrain" in stages:
        p = stages["pretrain"]
        pre = p["pretrain"]
        lines += [
            "## Pretraining a tiny BERT (MLM + NSP) and what it buys",
            "",
            f"`{p['command']}` ({p['date']}) on {p['corpus']['lines']:,} lines in {p['corpus']['documents']:,} documents of unlabeled "
            "training text (AG News train articles split into sentences; each SST-2 train sentence a document, NSP taking its two halves): "
            f"{pre['model']['layers']} layers, hidden {pre['model']['hidden']}, {pre['model']['heads']} heads, a {pre['model']['vocab']:,}-token "
            f"WordPiece vocabulary learned from the corpus; {pre['steps']} steps in {pre['train_seconds']:.0f} s; loss "
            f"{pre['first_loss']:.2f} → {pre['last_loss']:.2f}; on held-out pairs MLM accuracy {pre['mlm_accuracy']:.3f}, NSP accuracy {pre['nsp_accuracy']:.3f}.",
            "",
        ]
    if "compare" in stages:
        c = stages["compare"]
        lines += [
            f"Both fine-tuned on SST-2 with the same budgets ({c['date']}): `{c['command']}`, at three learning rates and "
            "seeds 0, 1, 2 (the seed sets the classifier head's initial weights, the batch order and dropout). Mean SST-2 "
            "dev accuracy over the seeds (each seed's in brackets):",
            "",
            "| budget | learning rate | pretrained here | random init (same model and tokenizer) | difference |",
            "|---|---|---|---|---|",
        ]
        table: dict[tuple[str, str], dict[str, list[float]]] = {}
        for run in c["runs"]:
            table.setdefault((run["budget"], run["lr"]), {}).setdefault(run["start"], []).append(
                run["dev_accuracy"]
            )
        best: dict[str, dict[str, float]] = {}
        for (budget, lr), starts in table.items():
            mean = {start: float(np.mean(accuracies)) for start, accuracies in starts.items()}
            for start, value in mean.items():
                best.setdefault(budget, {})[start] = max(best.get(budget, {}).get(start, 0.0), value)
            cells = [
                f"{mean[s]:.4f} ({' / '.join(f'{a:.4f}' for a in starts[s])})"
                for s in ("pretrained", "random")
            ]
            lines.append(
                f"| {budget} | {lr} | {cells[0]} | {cells[1]} | {mean['pretrained'] - mean['random']:+.4f} |"
            )
        lines.append("")
        lines += [
            f"Best learning rate of each start, {budget}: pretrained **{b['pretrained']:.4f}**, random init **{b['random']:.4f}**."
            for budget, b in best.items()
        ]
        lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
