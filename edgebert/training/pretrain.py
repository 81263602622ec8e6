"""Pretrain a BERT from scratch with both of its objectives: masked-language modelling (15% of
WordPiece tokens chosen; of those 80% [MASK], 10% a random token, 10% unchanged — transformers'
DataCollatorForLanguageModeling) and next-sentence prediction ([CLS] A [SEP] B [SEP], B the real
next sentence half of the time; a one-line document is cut in two at a random word). The result is
an ordinary ``BertForPreTraining`` checkpoint that ``edgebert train`` fine-tunes."""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgebert.atomic import check_replaceable, staging, write_json
from edgebert.errors import DataError, EdgebertError, require
from edgebert.training.loop import accelerator, optimizer_step

log = logging.getLogger("edgebert")

# layers, hidden size, attention heads (intermediate size is 4x hidden), as in Turc et al. 2019
PRESETS = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "base": (12, 768, 12)}


@dataclass(frozen=True)
class PretrainConfig:
    """A pretraining run. ``vocab``: a vocab.txt or a checkpoint directory whose tokenizer to use;
    without it a WordPiece vocabulary of ``vocab_size`` is learned from the corpus."""

    corpus: str
    preset: str = "tiny"
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    vocab: str | None = None
    vocab_size: int = 8000
    max_length: int = 128
    batch_size: int = 32
    lr: float = 5e-4
    max_steps: int = 1000
    mlm_probability: float = 0.15
    heldout: float = 0.05
    precision: str = "auto"
    seed: int = 0
    force: bool = False


def read_corpus(path: str | Path) -> list[list[str]]:
    """Documents (separated by blank lines), each a list of lines (sentences or paragraphs)."""
    from edgebert.data import read_text

    documents: list[list[str]] = [[]]
    for line in read_text(Path(path)).split("\n"):
        if line.strip():
            documents[-1].append(line.strip())
        elif documents[-1]:
            documents.append([])
    documents = [d for d in documents if d]
    if sum(len(d) for d in documents) < 2:
        raise DataError(f"'{path}' needs at least two lines of text to pretrain on")
    lines = [line for d in documents for line in d]
    tabs = lines[0].count("\t")
    if tabs and sum(line.count("\t") == tabs for line in lines) >= 0.9 * len(lines):
        log.warning(
            "'%s' looks like a table (its lines hold %d tab(s) each; the first: '%s'): pretraining reads "
            "each whole line as text, every column and a header included; give it plain text, one "
            "sentence or paragraph a line (e.g. `cut -f1 FILE | tail -n +2`)",
            path,
            tabs,
            lines[0][:60],
        )
    return documents


def split_heldout(
    documents: list[list[str]], share: float, rng: random.Random
) -> tuple[list[list[str]], list[list[str]]]:
    """The documents to train on and those held out (about ``share`` of the lines, at least one),
    no line in both: whole documents where there are several, else the last lines of the one. (Pairs
    cut from one set of documents would share lines: each line is the second sentence of one pair and
    the first of the next.)"""
    total = sum(len(d) for d in documents)
    wanted = max(1, round(total * share))
    if len(documents) == 1:
        (lines,) = documents
        return [lines[:-wanted]], [lines[-wanted:]]
    order = list(range(len(documents)))
    rng.shuffle(order)
    held: list[int] = []
    while sum(len(documents[i]) for i in held) < wanted and len(held) < len(documents) - 1:
        held.append(order[len(held)])
    return [d for i, d in enumerate(documents) if i not in held], [documents[i] for i in held]


def sentence_pairs(documents: list[list[str]], rng: random.Random) -> list[tuple[str, str, int]]:
    """(A, B, label) for every consecutive pair of lines, and for a document of one line its two
    halves (cut at a random word): label 0 when B really follows A (half of the pairs), 1 when B is a
    random line from elsewhere (another document when there is one)."""
    lines = [(d, i) for d, document in enumerate(documents) for i in range(len(document))]
    pairs = []
    for d, document in enumerate(documents):
        consecutive = list(itertools.pairwise(document))
        if len(document) == 1 and len(words := document[0].split()) > 1:
            cut = rng.randrange(1, len(words))
            consecutive = [(" ".join(words[:cut]), " ".join(words[cut:]))]
        for i, (a, b) in enumerate(consecutive):
            if rng.random() < 0.5:
                pairs.append((a, b, 0))
                continue
            while True:
                other_d, other_i = rng.choice(lines)
                if (other_d != d or len(documents) == 1) and (other_d, other_i) != (d, i + 1):
                    break
            pairs.append((a, documents[other_d][other_i], 1))
    return pairs


def build_tokenizer(config: PretrainConfig, documents: list[list[str]]) -> Any:
    from tokenizers import BertWordPieceTokenizer
    from tokenizers.processors import BertProcessing
    from transformers import AutoTokenizer, BertTokenizerFast

    if config.vocab is not None:
        vocab = Path(config.vocab)
        if vocab.is_dir():
            try:
                return AutoTokenizer.from_pretrained(vocab)
            except Exception as exc:  # transformers raises ValueError, OSError and its own
                raise DataError(
                    f"--vocab '{vocab}' is a directory without a tokenizer edgebert can read"
                ) from exc
        tokens = {line.strip() for line in vocab.read_text(encoding="utf-8", errors="replace").splitlines()}
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]") if t not in tokens]
        if missing:
            raise DataError(f"--vocab '{vocab}' is not a BERT vocab.txt: it lacks {', '.join(missing)}")
        return BertTokenizerFast(vocab_file=str(vocab), model_max_length=config.max_length)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    lines = [line for document in documents for line in document]
    wordpiece.train_from_iterator(lines, vocab_size=config.vocab_size, show_progress=False)
    wordpiece.post_processor = BertProcessing(
        ("[SEP]", wordpiece.token_to_id("[SEP]")), ("[CLS]", wordpiece.token_to_id("[CLS]"))
    )
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]"}
    return BertTokenizerFast(
        tokenizer_object=wordpiece._tokenizer,
        model_max_length=config.max_length,
        mask_token="[MASK]",
        **special,
    )


def pretrain(out: str | Path, config: PretrainConfig) -> dict[str, Any]:
    """Pretrain a BERT on ``config.corpus`` and save it at ``out``; return held-out MLM and NSP accuracy."""
    require("torch", "train")
    require("transformers", "train")
    import torch
    import transformers
    from transformers import BertConfig, BertForPreTraining

    if config.preset not in PRESETS:
        raise EdgebertError(f"unknown --config '{config.preset}': choose one of {', '.join(PRESETS)}")
    out = Path(out)
    check_replaceable(out, replace=config.force, marker="config.json")
    layers, hidden, heads = (
        override or preset
        for override, preset in zip(
            (config.layers, config.hidden, config.heads), PRESETS[config.preset], strict=True
        )
    )
    if hidden % heads:
        raise EdgebertError(f"--hidden {hidden} is not divisible by --heads {heads}")
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    transformers.logging.set_verbosity_error()
    kept, held = split_heldout(read_corpus(config.corpus), config.heldout, rng)
    tokenizer = build_tokenizer(config, kept)
    training, heldout = sentence_pairs(kept, rng), sentence_pairs(held, rng)[:2048]
    if not training or not heldout:
        raise DataError(
            f"'{config.corpus}' gives too few sentence pairs: pretraining needs one to train on and one "
            "held out, from other lines; a pair is two consecutive lines of a document, or a line of two "
            "words or more"
        )
    rng.shuffle(training)
    model = BertForPreTraining(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=max(512, config.max_length),
        )
    )
    acc = accelerator(config.precision)
    rng = random.Random(config.seed * 1_000_003 + acc.process_index)  # each process its own batches
    collator = masking(tokenizer, config, seed=config.seed + 2 + acc.process_index)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, config.max_steps // 10, config.max_steps
    )
    prepared, optimizer = acc.prepare(_masked_only(model), optimizer)
    from tqdm.auto import tqdm

    losses: list[float] = []
    started = time.perf_counter()
    prepared.train()
    quiet = None if acc.is_main_process else True
    bar = tqdm(range(config.max_steps), desc="pretraining", unit="step", disable=quiet)
    for step in bar:
        batch = [training[rng.randrange(len(training))] for _ in range(config.batch_size)]
        inputs = collator(encode_pairs(tokenizer, batch, config.max_length))
        loss = prepared(**{k: v.to(acc.device) for k, v in inputs.items()})[0]
        optimizer_step(acc, prepared, optimizer, scheduler, loss)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if bar.disable and acc.is_main_process and (step + 1) % max(1, config.max_steps // 10) == 0:
            log.info("step %d/%d: loss %.4f", step + 1, config.max_steps, loss.item())
    metrics = evaluate(_masked_only(model), tokenizer, heldout, config, device=acc.device)
    window = max(1, len(losses) // 10)
    summary = {
        **metrics,
        "first_loss": sum(losses[:window]) / window,
        "last_loss": sum(losses[-window:]) / window,
        "steps": config.max_steps,
        "train_seconds": round(time.perf_counter() - started, 1),
        "processes": acc.num_processes,
        "precision": acc.mixed_precision if acc.mixed_precision != "no" else "fp32",
        "pairs": {"train": len(training), "heldout": len(heldout)},
        "model": {"layers": layers, "hidden": hidden, "heads": heads, "vocab": len(tokenizer)},
        "config": asdict(config),
    }
    if not acc.is_main_process:
        return summary
    with staging(out, replace=config.force, marker="config.json") as stage:
        model.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
        write_json(stage / "pretrain_summary.json", summary)
    return summary


def _masked_only(model: Any) -> Any:
    """``model`` (a ``BertForPreTraining``) as a module that returns (MLM + NSP loss, MLM logits of
    the masked tokens, NSP logits). The vocabulary projection runs on the masked 15% of tokens only,
    not on all of them as ``BertForPreTraining.forward`` does: on a small BERT it is most of the cost."""
    import torch
    import torch.nn.functional as F

    class MaskedOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, labels: Any, next_sentence_label: Any, **inputs: Any) -> tuple[Any, Any, Any]:
            sequence, pooled = self.model.bert(**inputs)[:2]
            chosen = labels != -100
            mlm_logits = self.model.cls.predictions(sequence[chosen])
            nsp_logits = self.model.cls.seq_relationship(pooled)
            loss = F.cross_entropy(mlm_logits, labels[chosen]) + F.cross_entropy(
                nsp_logits, next_sentence_label
            )
            return loss, mlm_logits, nsp_logits

    return MaskedOnly()


def masking(tokenizer: Any, config: PretrainConfig, *, seed: int) -> Any:
    """Pads a batch and masks it for MLM: ``mlm_probability`` of the non-special tokens are chosen,
    of those 80% become [MASK], 10% a random token, 10% stay; ``labels`` hold the originals."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(
        tokenizer,
        mlm_probability=config.mlm_probability,
        mask_replace_prob=0.8,
        random_replace_prob=0.1,
        seed=seed,
    )


def encode_pairs(tokenizer: Any, pairs: list[tuple[str, str, int]], max_length: int) -> list[dict[str, Any]]:
    encoded = tokenizer(
        [a for a, _, _ in pairs], [b for _, b, _ in pairs], truncation="longest_first", max_length=max_length
    )
    return [
        {**{k: encoded[k][i] for k in encoded}, "next_sentence_label": label}
        for i, (_, _, label) in enumerate(pairs)
    ]


def evaluate(
    model: Any, tokenizer: Any, pairs: list[tuple[str, str, int]], config: PretrainConfig, *, device: Any
) -> dict[str, float | None]:
    """MLM accuracy on the masked tokens and NSP accuracy, on held-out pairs with seeded masking."""
    import torch

    collator = masking(tokenizer, config, seed=config.seed + 1)
    model.eval()
    masked = mlm_right = nsp_right = 0
    with torch.no_grad():
        for start in range(0, len(pairs), 64):
            batch = collator(encode_pairs(tokenizer, pairs[start : start + 64], config.max_length))
            batch = {k: v.to(device) for k, v in batch.items()}
            _, mlm_logits, nsp_logits = model(**batch)
            chosen = batch["labels"][batch["labels"] != -100]
            masked += len(chosen)
            mlm_right += int((mlm_logits.argmax(-1) == chosen).sum())
            nsp_right += int((nsp_logits.argmax(-1) == batch["next_sentence_label"]).sum())
    # None where masking chose no held-out token (a tiny corpus): nothing was measured
    return {"mlm_accuracy": mlm_right / masked if masked else None, "nsp_accuracy": nsp_right / len(pairs)}
