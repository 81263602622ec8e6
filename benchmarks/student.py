"""A smaller student of the reference SST-2 classifier, distilled by edgebert, for
`benchmarks/peers.py --student`.

    .venv/bin/python benchmarks/student.py [--layers 5] [--ffn N] [--epochs 2] [--attention-weight W] --out DIR

SST-2 train is split (seed 0) into 2,000 sentences held out, on which `edgebert distill` picks its
best epoch, and the rest, which it trains on: SST-2 dev, where peers.py measures accuracy, plays no
part in making the student. The student keeps evenly spaced layers of the teacher (the first
included) and learns from the teacher's soft targets and the labels (edgebert distill's defaults),
and its hidden states from the teacher's (TinyBERT's transfer, `--hidden-weight`, 1.0 by default
here: SST-2 dev 0.8888 fp32 / 0.8945 INT8 against 0.8911 / 0.8888 without it, one run each).
`--attention-weight W` adds the attention transfer too (TinyBERT's other one): 4 layers with both
scored SST-2 dev 0.8899 fp32 / 0.8968 INT8, against 0.8899 / 0.8933 with the hidden states alone.
`--ffn N` also narrows each layer's FFN to its N neurons that add most (edgebert distill's
`--student-ffn`).
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
from pathlib import Path

from calibration import subject_parser  # benchmarks/calibration.py

HELD_OUT = 2000


def main() -> None:
    parser = subject_parser(__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=5, help="Teacher layers the student keeps.")
    parser.add_argument("--ffn", type=int, help="FFN neurons each layer keeps (default: all).")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--hidden-weight",
        type=float,
        default=1.0,
        help="edgebert distill's hidden-state transfer weight (0: soft targets and labels alone).",
    )
    parser.add_argument(
        "--attention-weight",
        type=float,
        default=0.0,
        help="edgebert distill's attention transfer weight (TinyBERT's other transfer; 0: none).",
    )
    parser.add_argument("--out", required=True, help="Student checkpoint directory to write.")
    args = parser.parse_args()
    lines = Path(args.calibration).read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    held = set(random.Random(0).sample(range(len(rows)), HELD_OUT))
    with tempfile.TemporaryDirectory() as tmp:
        train, choose = Path(tmp) / "train.tsv", Path(tmp) / "held-out.tsv"
        for path, part in (
            (train, [r for i, r in enumerate(rows) if i not in held]),
            (choose, [rows[i] for i in sorted(held)]),
        ):
            path.write_text("\n".join([header, *part]) + "\n", encoding="utf-8")
        distill = ["distill", "--teacher", args.model, "--data", str(train), "--eval", str(choose)]
        options = ["--epochs", str(args.epochs), "--student-layers", str(args.layers)]
        options += [
            "--hidden-weight",
            str(args.hidden_weight),
            "--attention-weight",
            str(args.attention_weight),
        ]
        options += ["--student-ffn", str(args.ffn)] if args.ffn else []
        command = [sys.executable, "-m", "edgebert.cli", *distill, *options, "--out", args.out, "--force"]
        subprocess.run([*command, "--json"], check=True)


if __name__ == "__main__":
    main()
