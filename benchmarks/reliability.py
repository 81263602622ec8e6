"""Reliability figures: bad inputs to the Predictor and to the data reader, tampered bundles, a soak
under 8 threads, and SIGKILL at several moments of an export. Writes benchmarks/results/reliability.md.

    .venv/bin/python benchmarks/reliability.py [--seconds 30]

Uses the reference SST-2 MiniLM from ../shared for the runtime parts and the embedded default
model for the kill points. The kill helpers are the tests' own (tests/test_kill.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_kill import CLI, MOMENTS, kill_when, settled  # noqa: E402

from edgebert.benchmarks.soak import SoakConfig, soak  # noqa: E402
from edgebert.bundle import MANIFEST, Bundle  # noqa: E402
from edgebert.data import read_examples  # noqa: E402
from edgebert.errors import EdgebertError  # noqa: E402
from edgebert.runtime import Predictor  # noqa: E402

SHARED = ROOT.parent / "shared"

BAD_TEXTS: dict[str, Any] = {
    "empty string": [""],
    "whitespace only": [" \t\n "],
    "batch of zero texts": [],
    "1 MB text": ["word " * 200_000],
    "one 500-character word": ["x" * 500],
    "control characters": ["\x00\x01\x07 bell \x1b[31m red"],
    "lone surrogate": ["broken \ud800 text"],
    "invalid UTF-8 bytes decoded with replacement": [b"caf\xe9 \xff".decode("utf-8", "replace")],
    "mixed scripts and emoji": ["Grüße, 世界! Привет 🤖🎉 مرحبا"],
    "only zero-width characters": ["\u200b\u200c\u200d"],
    "None in a batch": ["fine", None],
    "an integer in a batch": ["fine", 42],
    "bytes instead of str": [b"raw bytes"],
    "a bare string (not a list)": "a bare string is one text",
    "a sentence pair": [("the movie was great", "I loved the film")],
    "a pair with an empty side": [("the movie was great", "")],
}

BAD_FILES: dict[str, bytes] = {
    "UTF-8 BOM + CRLF": "\ufeffsentence\tlabel\r\ngood film\t1\r\nbad film\t0\r\n".encode(),
    "latin-1 bytes": "sentence\tlabel\ncaf\xe9 culture\t1\n".encode("latin-1"),
    "missing label": b"sentence\tlabel\ngood film\t1\nbad film\t\n",
    "unknown label (decoded against negative/positive)": b"sentence\tlabel\ngood film\tneutral\n",
    "ragged row": b"sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n",
    "header only": b"sentence\tlabel\n",
    "0 bytes": b"",
    "label column first, no header (read as text?)": b"".join(
        f"{i % 2}\tsentence number {i}\n".encode() for i in range(200)
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reliability.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = root / "sst2"
        model = SHARED / "models" / "minilm-sst2"
        subprocess.run(
            [*CLI, "export", "-m", str(model), "--quantize", "int8", "-o", str(bundle)], check=True
        )
        lines = [
            "# Reliability",
            "",
            f"Command: `.venv/bin/python benchmarks/reliability.py --seconds {args.seconds:g}`",
            "",
        ]
        lines += texts_section(bundle) + files_section(root) + tamper_section(bundle, root)
        lines += soak_section(bundle, args.seconds) + kill_section(root)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def outcome(call: Any) -> str:
    try:
        return f"answered: {call()}"
    except EdgebertError as exc:
        return f"{type(exc).__name__}: {exc}"


def texts_section(bundle: Path) -> list[str]:
    predictor = Predictor(bundle)

    def answer(texts: Any) -> str:
        results = predictor.predict(texts)
        return (
            ", ".join(f"{r.label} {r.score:.2f}{' (truncated)' if r.truncated else ''}" for r in results)
            or "[]"
        )

    rows = [f"| {name} | {outcome(lambda t=texts: answer(t))} |" for name, texts in BAD_TEXTS.items()]
    return [
        f"## Bad inputs to the Predictor ({len(rows)} tried, SST-2 INT8 bundle)",
        "",
        "| input | result |",
        "|---|---|",
        *rows,
        "",
    ]


def files_section(root: Path) -> list[str]:
    from edgebert.data import encode_labels

    rows = []
    for name, content in BAD_FILES.items():
        path = root / "data.tsv"
        path.write_bytes(content)

        def read(p: Path = path) -> str:
            examples = read_examples(p)
            encode_labels(examples, ("negative", "positive"))
            return f"{len(examples)} rows, {examples.encoding}, texts {examples.texts[:2]}"

        rows.append(f"| {name} | {outcome(read)} |")
    return [f"## Bad data files ({len(rows)} tried)", "", "| file | result |", "|---|---|", *rows, ""]


def tamper_section(bundle: Path, root: Path) -> list[str]:
    def flip(b: Path) -> None:
        data = bytearray((b / "model.int8.onnx").read_bytes())
        data[len(data) // 2] ^= 1
        (b / "model.int8.onnx").write_bytes(bytes(data))

    def edit(b: Path, key: str, value: Any, artifact: str | None = None) -> None:
        manifest = json.loads((b / MANIFEST).read_text())
        (manifest["artifacts"][artifact] if artifact else manifest)[key] = value
        (b / MANIFEST).write_text(json.dumps(manifest))

    def link(b: Path) -> None:
        (root / "outside.onnx").write_bytes((b / "model.onnx").read_bytes())
        (b / "model.onnx").unlink()
        os.symlink(root / "outside.onnx", b / "model.onnx")

    cases = {
        "one flipped byte": flip,
        "truncated model file": lambda b: (b / "model.onnx").write_bytes(
            (b / "model.onnx").read_bytes()[:1000]
        ),
        "missing tokenizer": lambda b: (b / "tokenizer.json").unlink(),
        "extra unknown file": lambda b: (b / "payload.bin").write_bytes(b"x"),
        "manifest from a newer format": lambda b: edit(b, "format_version", 99),
        "artifact path ../model.onnx": lambda b: edit(b, "file", "../model.onnx", "fp32"),
        "model replaced by a symlink leaving the bundle": link,
    }
    rows = []
    for name, damage in cases.items():
        copy = Path(shutil.copytree(bundle, root / "tampered"))
        damage(copy)
        rows.append(f"| {name} | {outcome(lambda c=copy: f'loaded {Bundle.load(c).path}')} |")
        shutil.rmtree(copy)
    return [f"## Tampered bundles ({len(rows)} tried)", "", "| damage | result |", "|---|---|", *rows, ""]


def soak_section(bundle: Path, seconds: float) -> list[str]:
    rows = []
    for shared in (True, False):
        r = soak(bundle, SoakConfig(threads=8, seconds=seconds, shared=shared))
        rows.append(
            f"| {'one shared' if shared else 'one per thread'} | {r['requests']} | {r['errors']} | {r['mismatches']} | "
            f"{r['rss_start_mb']:.0f} | {r['rss_after_first_fifth_mb']:.0f} | {r['rss_peak_mb']:.0f} | "
            f"{r['rss_end_mb']:.0f} | {r['rss_growth_mb']:+.1f} | {r['rss_growth_after_first_fifth_mb']:+.1f} |"
        )
    return [
        f"## Soak: 8 threads for {seconds:g} s, mixed-length texts (SST-2 INT8 bundle)",
        "",
        "Every answer is compared with the single-threaded answer for the same text.",
        "",
        "| Predictor | requests | errors | differing answers | RSS start MB | after 1/5 | peak | end | growth | growth after 1/5 |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def kill_section(root: Path) -> list[str]:
    out = root / "kill" / "bundle"
    out.parent.mkdir()
    subprocess.run([*CLI, "export", "--quantize", "int8", "-o", str(out)], check=True)
    before = Bundle.load(out).manifest
    rows = []
    moments: list[str | float] = [*MOMENTS, 1.0, 4.0, 8.0, 60.0]  # named file-system moments, then seconds
    for moment in moments:
        condition = MOMENTS[moment] if isinstance(moment, str) else moment
        command = [*CLI, "export", "--quantize", "int8", "-o", str(out), "--force"]
        killed = kill_when(command, out.parent, condition)
        left = settled(out.parent, {"bundle"})
        try:
            state = (
                "the old bundle, intact"
                if Bundle.load(out).manifest == before
                else "the new bundle, complete"
            )
        except EdgebertError as exc:
            state = f"BROKEN: {exc}"
        label = moment if isinstance(moment, str) else f"{moment:g} s after start"
        rows.append(
            f"| {label} | {'yes' if killed else 'no (finished first)'} | {state} | {sorted(left - {'bundle'}) or 'none'} |"
        )
        before = Bundle.load(out).manifest
    return [
        "## SIGKILL during `edgebert export --quantize int8 --force` over an existing bundle (default model)",
        "",
        "| kill point | killed | found at --out afterwards | stray files beside it |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


if __name__ == "__main__":
    main()
