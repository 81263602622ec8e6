"""The training commands of ``edgebert``: train, pretrain, distill (torch, imported when they run)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from edgebert.cli_common import (
    INTERRUPTED,
    JSON,
    PRECISION,
    OutputDir,
    console,
    errors,
    explained,
    print_json,
    schedule_options,
)


def checkpoint_out(**settings: Any) -> Callable[..., Any]:
    """The ``--out`` option of a training command: the checkpoint directory it writes."""
    return click.option("--out", "-o", type=OutputDir(), help="Checkpoint directory to write.", **settings)


def report(summary: dict[str, Any], as_json: bool, line: Callable[[], str]) -> None:
    """The run's summary as JSON, or one line for people; under torchrun, from the first process only."""
    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        print_json(summary)
    else:
        console.print(line())


@contextlib.contextmanager
def resumable(out: Path) -> Iterator[None]:
    """On Ctrl-C, say how to continue the run from the state it saved."""
    from edgebert.training.loop import resume_dir

    try:
        yield
    except KeyboardInterrupt:
        if not resume_dir(out).is_dir():
            raise
        errors.print(f"interrupted: its state is in {resume_dir(out)}/; run the same command with --resume")
        raise click.exceptions.Exit(INTERRUPTED) from None


@click.command()
@schedule_options
@click.option("--model", "-m", help="Base checkpoint directory. Default: all-MiniLM-L6-v2.")
@checkpoint_out(default="model", show_default=True)
@JSON
@explained
def train(out: Path, as_json: bool, **options: Any) -> None:
    """Fine-tune a BERT for text classification (sentences or sentence pairs) on a labeled file."""
    from edgebert.training import TrainConfig
    from edgebert.training import train as run_train

    with resumable(out):
        summary = run_train(out, TrainConfig(**options))
    report(
        summary,
        as_json,
        lambda: (
            f"fine-tuned → {out}: dev accuracy {summary['dev_accuracy']:.4f} "
            f"(epoch {summary['best_epoch']}), "
            f"{summary['steps']} steps in {summary['train_seconds']} s ({summary['samples_per_s']} samples/s)"
        ),
    )


@click.command()
@click.option(
    "--corpus",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Plain text: one sentence or paragraph a line, blank lines between documents "
    "(a one-line document gives NSP its two halves).",
)
@click.option(
    "--config",
    "preset",
    type=click.Choice(["tiny", "mini", "small", "base"]),
    default="tiny",
    show_default=True,
    help="Model size (layers/hidden/heads: 2/128/2, 4/256/4, 4/512/8, 12/768/12).",
)
@click.option("--layers", type=click.IntRange(1), help="Override the number of layers.")
@click.option("--hidden", type=click.IntRange(8), help="Override the hidden size.")
@click.option("--heads", type=click.IntRange(1), help="Override the number of attention heads.")
@click.option(
    "--vocab",
    type=click.Path(exists=True),
    help="vocab.txt or a checkpoint directory; default: learn a WordPiece vocabulary from the corpus.",
)
@click.option("--vocab-size", type=click.IntRange(100), default=8000, show_default=True)
@click.option("--max-steps", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--max-length", type=click.IntRange(16, 512), default=128, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=5e-4, show_default=True)
@PRECISION
@click.option("--seed", type=int, default=0, show_default=True)
@checkpoint_out(required=True)
@click.option("--force", is_flag=True, help="Replace an existing checkpoint at --out.")
@JSON
@explained
def pretrain(out: Path, as_json: bool, **options: Any) -> None:
    """Pretrain a BERT from scratch with masked-language modelling and next-sentence prediction."""
    from edgebert.training import PretrainConfig
    from edgebert.training import pretrain as run_pretrain

    summary = run_pretrain(out, PretrainConfig(**options))
    mlm = summary["mlm_accuracy"]  # None where no held-out token was masked
    report(
        summary,
        as_json,
        lambda: (
            f"pretrained → {out}: held-out MLM accuracy {'n/a' if mlm is None else f'{mlm:.4f}'}, NSP "
            f"accuracy {summary['nsp_accuracy']:.4f}; loss {summary['first_loss']:.3f} → "
            f"{summary['last_loss']:.3f} over {summary['steps']} steps in {summary['train_seconds']} s"
        ),
    )


@click.command()
@click.option("--teacher", required=True, help="Fine-tuned classifier checkpoint directory.")
@schedule_options
@click.option(
    "--student-layers", type=click.IntRange(1), help="Keep this many of the teacher's layers (default: half)."
)
@click.option("--student", help="Start the student from this checkpoint instead (its tokenizer may differ).")
@click.option(
    "--student-ffn",
    type=click.IntRange(1),
    help="Also narrow each layer's FFN to this many neurons: those that add most to the layer's output "
    "on the training texts (default: keep them all).",
)
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=2.0, show_default=True)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the teacher's soft targets; the rest goes to the labels.",
)
@click.option(
    "--hidden-weight",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Add hidden-state transfer (TinyBERT): MSE to the teacher's layer outputs, this weight.",
)
@click.option(
    "--attention-weight",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Add attention transfer: MSE to the teacher's attention probabilities, this weight.",
)
@checkpoint_out(required=True)
@JSON
@explained
def distill(out: Path, as_json: bool, **options: Any) -> None:
    """Distil a fine-tuned teacher into a smaller student (soft targets plus labels)."""
    from edgebert.training import DistillConfig
    from edgebert.training import distill as run_distill

    with resumable(out):
        summary = run_distill(out, DistillConfig(**options))
    report(
        summary,
        as_json,
        lambda: (
            f"distilled → {out}: dev accuracy {summary['dev_accuracy']:.4f} vs the teacher's "
            f"{summary['teacher_dev_accuracy']:.4f} ({summary['kept_of_teacher']:.1%} kept), "
            f"{summary['steps']} steps in {summary['train_seconds']} s"
        ),
    )
