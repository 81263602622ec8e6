"""Fine-tune a BERT for sequence classification (single sentences or sentence pairs) on a labeled
file, with length-bucketed batches, evaluation each epoch, early stopping, and an atomically written
safetensors checkpoint that keeps the label names. The loop itself is ``training.loop.fit``."""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgebert.atomic import check_replaceable, staging, write_json
from edgebert.data import Examples, encode_labels, label_index, label_names, read_examples, same_data
from edgebert.errors import DataError, EdgebertError, require
from edgebert.models import Checkpoint, resolve
from edgebert.training.loop import Schedule, check_resume, fit, is_main_process, resume_dir

log = logging.getLogger("edgebert")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Schedule):
    """A fine-tuning run of ``model`` (None: the default pretrained BERT)."""

    model: str | None = None


def train(out: str | Path, config: TrainConfig) -> dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.data``; save the best epoch (by dev accuracy) at ``out``."""
    train_examples, dev_examples, names = prepare(out, config)
    checkpoint = resolve(config.model)
    names = head_labels(checkpoint.head, names)
    model, tokenizer = load_classifier(checkpoint, names)
    train_set = encode_examples(tokenizer, train_examples, names, config.max_length)
    dev_set = encode_examples(tokenizer, dev_examples, names, config.max_length)
    result = fit(
        model, tokenizer, train_set, dev_set, config, lambda run, inputs: run(**inputs).loss, out=out
    )
    summary = {**result, "labels": list(names), "base": checkpoint.name, "config": asdict(config)}
    save(out, model, tokenizer, summary, config.force)
    return summary


def head_labels(base: tuple[str, ...], data: tuple[str, ...]) -> tuple[str, ...]:
    """The labels a model fine-tuned from a classifier over ``base`` classifies into: ``base``, in
    its order, where the data's labels are among them or are their integer indices (SST-2's 0/1);
    else the data's own."""
    if base and set(data) <= set(base):
        return base
    if base and all(label_index(n, base) is not None for n in data):
        log.warning(
            "the data's labels %s are read as the base model's classes %s, by position; if they mean "
            "other classes, give them their names in the data files",
            ", ".join(sorted(data, key=int)),
            ", ".join(base[int(n)] for n in sorted(data, key=int)),
        )
        return base
    return data


def load_classifier(checkpoint: Checkpoint, names: tuple[str, ...]) -> tuple[Any, Any]:
    """A sequence classifier over ``names`` from ``checkpoint``, and its tokenizer. The checkpoint's
    head is kept where it is one over ``names``; a head of another size is made anew, and so is one
    of the same size over other classes, which would otherwise start with its classes under the
    wrong names."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        checkpoint.path,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        ignore_mismatched_sizes=True,
    )
    if checkpoint.head and names != checkpoint.head:
        log.info(
            "a new classification head for %s: the base model classifies into other labels", ", ".join(names)
        )
        model.classifier.weight.data.normal_(0.0, model.config.initializer_range)
        model.classifier.bias.data.zero_()
    return model, AutoTokenizer.from_pretrained(checkpoint.path)


def prepare(out: str | Path, config: Schedule) -> tuple[Examples, Examples, tuple[str, ...]]:
    """Check a training run's files and output, seed it, and read its labeled data."""
    require("torch", "train")
    require("transformers", "train")
    import transformers

    if same_data(config.data, config.eval_data):
        raise DataError("--data and --eval are the same file (or copies of one): evaluate on held-out data")
    check_replaceable(Path(out), replace=config.force, marker="config.json")
    check_resume(out, config)
    train_examples, dev_examples = read_examples(config.data), read_examples(config.eval_data)
    if train_examples.is_pairs != dev_examples.is_pairs:
        kinds = {True: "sentence pairs", False: "single texts"}
        raise DataError(
            f"'{config.data}' holds {kinds[train_examples.is_pairs]} and '{config.eval_data}' "
            f"{kinds[dev_examples.is_pairs]}: evaluate on data of the task trained"
        )
    names = label_names(train_examples.labels or [])
    if len(names) < 2:
        raise DataError(f"'{config.data}' has {len(names)} distinct label(s): a classifier needs at least 2")
    _seed(config.seed)
    transformers.logging.set_verbosity_error()
    return train_examples, dev_examples, names


def save(out: str | Path, model: Any, tokenizer: Any, summary: dict[str, Any], force: bool) -> None:
    """A safetensors checkpoint with its tokenizer and ``training_summary.json``, written atomically
    by the main process; then the run's resumable state goes."""
    if not is_main_process():
        return
    try:
        with staging(Path(out), replace=force, marker="config.json") as stage:
            model.save_pretrained(stage, safe_serialization=True)
            tokenizer.save_pretrained(stage)
            write_json(stage / "training_summary.json", summary)
    except EdgebertError as exc:  # a full disk, say: the run is not lost if its state was saved
        if not (resume_dir(out) / "state.json").is_file():
            raise
        raise EdgebertError(
            f"{exc}; the run's state from its last save is in {resume_dir(out)}/: once the checkpoint "
            "can be written, run the same command with --resume"
        ) from exc
    shutil.rmtree(resume_dir(out), ignore_errors=True)


def encode_examples(
    tokenizer: Any, examples: Examples, names: tuple[str, ...], max_length: int
) -> list[dict[str, Any]]:
    labels = encode_labels(examples, names)
    if examples.is_pairs:
        firsts, seconds = zip(*examples.texts, strict=True)
        encoded = tokenizer(list(firsts), list(seconds), truncation=True, max_length=max_length)
    else:
        encoded = tokenizer(list(examples.texts), truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{**{k: encoded[k][i] for k in keys}, "labels": labels[i]} for i in range(len(labels))]


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
