"""Fine-tune a BERT for sequence classification (single sentences or sentence pairs) on a labeled
file, with length-bucketed batches, evaluation each epoch, and an atomically written safetensors
checkpoint that keeps the label names."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgebert.atomic import staging, write_json
from edgebert.data import Examples, encode_labels, label_names, read_examples
from edgebert.errors import DataError, ModelError, require
from edgebert.models import resolve

log = logging.getLogger("edgebert")


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """How a supervised run trains: AdamW with linear warm-up and decay, batches of similar lengths,
    evaluation on the dev file each epoch; ``data``/``eval_data`` are labeled files."""

    data: str
    eval_data: str
    epochs: int = 1
    max_steps: int | None = None
    max_length: int = 64
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 0
    force: bool = False


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Schedule):
    """A fine-tuning run of ``model`` (None: the default pretrained BERT)."""

    model: str | None = None


def train(out: str | Path, config: TrainConfig) -> dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.data``; save the best epoch (by dev accuracy) at ``out``."""
    train_examples, dev_examples, names = prepare(out, config)
    checkpoint = resolve(config.model)
    model, tokenizer = load_classifier(checkpoint.path, names)
    train_set = encode_examples(tokenizer, train_examples, names, config.max_length)
    dev_set = encode_examples(tokenizer, dev_examples, names, config.max_length)
    result = fit(model, tokenizer, train_set, dev_set, config, lambda inputs: model(**inputs).loss)
    summary = {**result, "labels": list(names), "base": checkpoint.name, "config": asdict(config)}
    save(out, model, tokenizer, summary, config.force)
    return summary


def load_classifier(path: Path, names: tuple[str, ...]) -> tuple[Any, Any]:
    """A sequence classifier over ``names`` from the checkpoint at ``path`` (a new head if its own
    differs), and the checkpoint's tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        ignore_mismatched_sizes=True,
    )
    return model, AutoTokenizer.from_pretrained(path)


def prepare(out: str | Path, config: Schedule) -> tuple[Examples, Examples, tuple[str, ...]]:
    """Check a training run's files and output, seed it, and read its labeled data."""
    require("torch", "train")
    require("transformers", "train")
    import transformers

    if Path(config.data).resolve() == Path(config.eval_data).resolve():
        raise DataError("--data and --eval are the same file: evaluate on held-out data")
    if Path(out).exists() and not config.force:
        raise ModelError(f"'{out}' already exists: choose another --out or pass --force to replace it")
    train_examples, dev_examples = read_examples(config.data), read_examples(config.eval_data)
    names = label_names(train_examples.labels or [])
    if len(names) < 2:
        raise DataError(f"'{config.data}' has {len(names)} distinct label(s): a classifier needs at least 2")
    _seed(config.seed)
    transformers.logging.set_verbosity_error()
    return train_examples, dev_examples, names


def fit(
    model: Any,
    tokenizer: Any,
    train_set: list[dict[str, Any]],
    dev_set: list[dict[str, Any]],
    config: Schedule,
    loss_of: Callable[[dict[str, Any]], Any],
) -> dict[str, Any]:
    """The training loop: AdamW, linear warm-up and decay, length-bucketed batches, evaluation each
    epoch; leaves the best epoch's weights in ``model`` and returns its figures."""
    import torch
    import transformers
    from tqdm.auto import tqdm

    batches_per_epoch = -(-len(train_set) // config.batch_size)
    total = min(config.max_steps or batches_per_epoch * config.epochs, batches_per_epoch * config.epochs)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, int(total * config.warmup_ratio), total
    )
    steps, best, history, started, seen = 0, {"dev_accuracy": -1.0, "epoch": 0}, [], time.perf_counter(), 0
    best_state: dict[str, Any] = {}
    for epoch in range(1, config.epochs + 1):
        model.train()
        batches = _bucketed(train_set, config.batch_size, random.Random(config.seed + epoch))
        bar = tqdm(batches[: total - steps], desc=f"epoch {epoch}", unit="batch", leave=False, disable=None)
        for batch in bar:
            loss = loss_of(collate(tokenizer, batch))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            steps, seen = steps + 1, seen + len(batch)
            speed = seen / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{speed:.0f}")
            if bar.disable and steps % max(1, total // 10) == 0:  # no terminal: a log line every 10%
                log.info("step %d/%d: loss %.4f, %.0f samples/s", steps, total, loss.item(), speed)
        accuracy = evaluate(model, tokenizer, dev_set)
        history.append({"epoch": epoch, "steps": steps, "dev_accuracy": accuracy})
        log.info("epoch %d: dev accuracy %.4f after %d steps", epoch, accuracy, steps)
        if accuracy > best["dev_accuracy"]:
            best = {"epoch": epoch, "dev_accuracy": accuracy}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if steps >= total:
            break
    seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    return {
        "dev_accuracy": best["dev_accuracy"],
        "best_epoch": best["epoch"],
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "samples_per_s": round(seen / seconds, 1),
        "history": history,
    }


def save(out: str | Path, model: Any, tokenizer: Any, summary: dict[str, Any], force: bool) -> None:
    """A safetensors checkpoint with its tokenizer and ``training_summary.json``, written atomically."""
    with staging(Path(out), replace=force, marker="config.json") as stage:
        model.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
        write_json(stage / "training_summary.json", summary)


def evaluate(model: Any, tokenizer: Any, dataset: list[dict[str, Any]], batch_size: int = 64) -> float:
    import torch

    model.eval()
    correct = 0
    ordered = sorted(dataset, key=lambda row: len(row["input_ids"]))
    with torch.no_grad():
        for start in range(0, len(ordered), batch_size):
            inputs = collate(tokenizer, ordered[start : start + batch_size])
            labels = inputs.pop("labels")
            correct += int((model(**inputs).logits.argmax(-1) == labels).sum())
    return correct / max(len(dataset), 1)


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


def _bucketed(
    dataset: list[dict[str, Any]], batch_size: int, rng: random.Random
) -> list[list[dict[str, Any]]]:
    """Shuffle, sort each window of 50 batches by length, cut into batches, shuffle the batches:
    little padding, still random."""
    order = list(range(len(dataset)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(dataset[i]["input_ids"]))
        batches += [[dataset[i] for i in chunk[j : j + batch_size]] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(tokenizer.pad(rows, return_tensors="pt"))


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[Any] = []
    no_decay: list[Any] = []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
