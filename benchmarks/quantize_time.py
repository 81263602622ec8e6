"""How long `edgebert quantize` takes, and its peak memory, for each method, with one or more edgebert
source trees side by side (the code before and after a change): every quantization in its own
process, on its own copy of one fp32 bundle of the reference model, the trees taking turns. The
INT8 models of every tree are compared with the first tree's on SST-2 dev: a change that only makes
quantizing faster must leave them the same. Writes benchmarks/results/quantize-time.md.

    git worktree add /tmp/before COMMIT
    .venv/bin/python benchmarks/quantize_time.py --tree /tmp/before --tree . [--methods dynamic,distill]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
from calibration import QUANTIZE, ROOT, bert_base, publish, subject_parser  # benchmarks/calibration.py

from edgebert.benchmarks.system import system_info
from edgebert.data import read_examples
from edgebert.runtime import Predictor

# the child says which edgebert it imported, so that a tree that is not picked up cannot pass for one
CHILD = "import edgebert, sys; print(edgebert.__file__, file=sys.stderr)\n" + QUANTIZE


def main() -> None:
    parser = subject_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--tree", action="append", help="An edgebert source tree (repeat); default: this one."
    )
    parser.add_argument("--methods", default="dynamic,distill")
    parser.add_argument("--rounds", type=int, default=1, help="Runs of each method and tree.")
    parser.add_argument("--out", default="quantize-time.md", help="Its name in benchmarks/results/.")
    parser.add_argument("--bert-base", action="store_true", help="A bert-base-shaped model instead.")
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.tree or [ROOT]]
    methods = args.methods.split(",")
    runs: dict[tuple[str, Path], list[dict]] = {}
    texts = read_examples(args.dev).texts
    outputs: dict[tuple[str, Path], np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.bert_base:
            args.model = bert_base(args.model, Path(tmp) / "bert-base")
        base = Path(tmp) / "fp32"
        cli = [sys.executable, "-m", "edgebert.cli", "-q"]
        subprocess.run([*cli, "export", "-m", args.model, "-o", str(base)], check=True)
        for round_ in range(args.rounds):
            for method in methods:
                for k, tree in enumerate(trees):
                    bundle = Path(tmp) / f"{method}-{k}-{round_}"
                    shutil.copytree(base, bundle)
                    child = [
                        sys.executable,
                        "-c",
                        CHILD,
                        str(bundle),
                        method,
                        args.calibration,
                        str(args.samples),
                    ]
                    done = subprocess.run(
                        child,
                        cwd=tree,
                        env={**os.environ, "PYTHONPATH": str(tree)},
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    imported = done.stderr.strip().splitlines()[0]
                    if not imported.startswith(str(tree)):
                        raise SystemExit(f"{tree}: the child imported {imported}")
                    runs.setdefault((method, tree), []).append(json.loads(done.stdout))
                    print(method, tree, runs[method, tree][-1], flush=True)
                    if round_ == 0:
                        predictor = Predictor(bundle, precision="int8", threads=args.threads)
                        outputs[method, tree] = predictor.outputs(texts)[0]
                    shutil.rmtree(bundle)
    write(args, trees, methods, runs, outputs, len(texts))


def _commit(tree: Path) -> str:
    """The tree's commit, and whether it has changes on top."""
    git = ["git", "-C", str(tree)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
    return (commit or "?") + (" + uncommitted changes" if dirty else "")


def write(
    args: argparse.Namespace,
    trees: list[Path],
    methods: list[str],
    runs: dict[tuple[str, Path], list[dict]],
    outputs: dict[tuple[str, Path], np.ndarray],
    count: int,
) -> None:
    info = system_info()
    subject = (
        "a bert-base-shaped BERT classifier (12 layers, hidden 768; random weights, seed 0)"
        if args.bert_base
        else f"`{args.model}`"
    )
    flags = " ".join(f"--tree {t}" for t in trees)
    lines = [
        "# Time to quantize",
        "",
        f"Model: {subject}; calibration: {args.samples} texts of `{args.calibration}` (seed 0). "
        f"Machine: {info['cpu']} ({', '.join(info['instruction_sets'])}), {os.cpu_count()} cores. Command: `.venv/bin/python benchmarks/quantize_time.py "
        f"{flags} --methods {args.methods} --rounds {args.rounds} --samples {args.samples} --out {args.out}"
        f"{' --bert-base' if args.bert_base else ''}` "
        f"({time.strftime('%Y-%m-%d')}).",
        "",
        "Each quantization in its own process on its own copy of the fp32 bundle, the trees taking turns; "
        f"seconds: the median of {args.rounds} run(s) (each run in brackets), `quantize` alone (the export is not "
        f"counted); peak: the process's VmHWM. Same model: the INT8 model's outputs on the {count} SST-2 dev "
        "sentences against the first tree's.",
        "",
        "| method | tree | seconds | against the first tree | peak MB | same model as the first tree's |",
        "|---|---|---|---|---|---|",
    ]
    for method in methods:
        first = median(r["seconds"] for r in runs[method, trees[0]])
        for tree in trees:
            seconds = [r["seconds"] for r in runs[method, tree]]
            each = ", ".join(f"{s:.1f}" for s in seconds)
            peak = max(r["peak_rss_mb"] for r in runs[method, tree])
            diff = float(np.abs(outputs[method, tree] - outputs[method, trees[0]]).max())
            same = "yes, to the last bit" if diff == 0 else f"no: largest logit difference {diff:.3g}"
            lines.append(
                f"| {method} | {tree.name} ({_commit(tree)}) | {median(seconds):.1f} ({each}) | "
                f"{median(seconds) / first:.2f}× | {peak:.0f} | {same} |"
            )
    publish(args.out, lines)


if __name__ == "__main__":
    main()
