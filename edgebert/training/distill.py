"""Knowledge distillation: a smaller student learns a fine-tuned teacher's soft predictions
(softmax at a temperature) together with the hard labels, as DistilBERT did. The student starts from
the teacher's own layers (every other one for half the depth) or from any checkpoint, whose
tokenizer may differ from the teacher's: each tokenizes the same text."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgebert.errors import ModelError, SettingsError
from edgebert.models import resolve
from edgebert.training.finetune import encode_examples, head_labels, load_classifier, prepare, save
from edgebert.training.loop import Schedule, fit

log = logging.getLogger("edgebert")


@dataclass(frozen=True, kw_only=True)
class DistillConfig(Schedule):
    """``student_layers``: keep that many of the teacher's layers (evenly spaced, the first included);
    or ``student``: a checkpoint to start from. ``student_ffn``: then keep that many of each layer's
    FFN neurons, those that add most to the layer's output on the training texts. The loss is
    ``alpha`` x T^2 x KL(teacher || student) at ``temperature`` T plus (1 - ``alpha``) x
    cross-entropy with the labels, plus (TinyBERT's transfer, optional) ``hidden_weight`` x MSE of
    the hidden states and ``attention_weight`` x MSE of the attention probabilities, student layer m
    against teacher layer m x depth / student depth."""

    teacher: str
    student_layers: int | None = None
    student: str | None = None
    student_ffn: int | None = None
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0
    attention_weight: float = 0.0


def distill(out: str | Path, config: DistillConfig) -> dict[str, Any]:
    """Distil ``config.teacher`` into a student trained on ``config.data``; save it at ``out``."""
    if config.student is not None and config.student_layers is not None:
        raise SettingsError("--student-layers keeps layers of the teacher: it does not go with --student")
    train_examples, dev_examples, names = prepare(out, config)
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher_checkpoint = resolve(config.teacher)
    names = _teacher_labels(teacher_checkpoint.head, names)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_checkpoint.path).eval()
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_checkpoint.path)
    student, tokenizer, origin = _student(teacher, teacher_tokenizer, config, names)
    if config.student_ffn is not None:
        origin["ffn"] = _narrow_ffn(student, tokenizer, train_examples.texts, config.student_ffn, config)
    train_set = encode_examples(tokenizer, train_examples, names, config.max_length)
    same_tokenizer = tokenizer.get_vocab() == teacher_tokenizer.get_vocab()  # the same token ids
    layer_map = _transfer_map(teacher, student, same_tokenizer, config)  # refused here, before any pass
    teacher_logits = "from its pass over each training batch"
    if not _teacher_per_batch(config, len(train_set), same_tokenizer):
        log.info("computing the teacher's logits for the %d training texts", len(train_examples))
        texts = train_examples.texts
        soft = _logits(teacher, teacher_tokenizer, texts, config.max_length, desc="teacher logits")
        for row, logits in zip(train_set, soft.tolist(), strict=True):
            row["teacher_logits"] = logits
        teacher_logits = "computed before training"
    dev_set = encode_examples(tokenizer, dev_examples, names, config.max_length)
    loss_of = _loss(teacher, config, layer_map)
    with torch.no_grad():
        teacher_accuracy = _accuracy(
            teacher, teacher_tokenizer, dev_examples.texts, dev_set, config.max_length
        )
    result = fit(student, tokenizer, train_set, dev_set, config, loss_of, out=out)
    summary = {
        **result,
        "teacher_dev_accuracy": teacher_accuracy,
        "kept_of_teacher": result["dev_accuracy"] / teacher_accuracy if teacher_accuracy else None,
        "student": origin,
        "teacher_logits": teacher_logits,
        "labels": list(names),
        "config": asdict(config),
    }
    save(out, student, tokenizer, summary, config.force)
    return summary


def _teacher_per_batch(config: DistillConfig, texts: int, same_tokenizer: bool) -> bool:
    """Whether the teacher's logits come from its pass over each training batch rather than from one
    pass over the training texts before training: where it makes that pass anyway (hidden-state or
    attention transfer), or where the run reads fewer texts than there are (``--max-steps``; each
    step reads a batch in every process under ``torchrun``). Either way needs the student's token
    ids to be the teacher's."""
    transfer = bool(config.hidden_weight or config.attention_weight)
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun and accelerate launch
    short = config.max_steps is not None and config.max_steps * config.batch_size * processes < texts
    return same_tokenizer and (transfer or short)


def _transfer_map(teacher: Any, student: Any, same_tokenizer: bool, config: DistillConfig) -> list[int]:
    """For hidden-state and attention transfer: the teacher layer each student layer learns from
    (index 0 is the embeddings). Needs the same tokenizer, hidden size and heads."""
    if not (config.hidden_weight or config.attention_weight):
        return []
    ours, theirs = student.config, teacher.config
    shape = ("hidden_size", "num_attention_heads")
    if any(getattr(ours, k) != getattr(theirs, k) for k in shape) or not same_tokenizer:
        raise ModelError(
            "hidden-state and attention transfer need a student with the teacher's tokenizer, hidden size "
            "and heads (e.g. --student-layers); set --hidden-weight and --attention-weight to 0"
        )
    if config.attention_weight:  # attention probabilities come from the eager implementation only
        for model in (teacher, student):
            model.set_attn_implementation("eager")
    depth, layers = theirs.num_hidden_layers, ours.num_hidden_layers
    return [m * depth // layers for m in range(layers + 1)]


def _loss(teacher: Any, config: DistillConfig, layer_map: list[int]) -> Any:
    """The distillation loss of a batch, as ``DistillConfig`` describes it."""
    import torch
    import torch.nn.functional as F

    t = config.temperature
    hidden, attention = bool(config.hidden_weight), bool(config.attention_weight)

    def loss_of(student: Any, inputs: dict[str, Any]) -> Any:
        teacher_logits = inputs.pop("teacher_logits", None)  # None: from the teacher's pass below
        out = student(**inputs, output_hidden_states=hidden, output_attentions=attention)
        if teacher_logits is None or layer_map:
            features = {k: v for k, v in inputs.items() if k != "labels"}
            with torch.no_grad():
                theirs = teacher.to(inputs["input_ids"].device)(
                    **features, output_hidden_states=hidden, output_attentions=attention
                )
            teacher_logits = theirs.logits.float() if teacher_logits is None else teacher_logits
        soft = F.kl_div(
            F.log_softmax(out.logits.float() / t, -1),
            F.log_softmax(teacher_logits / t, -1),
            reduction="batchmean",
            log_target=True,
        )
        loss = config.alpha * t * t * soft + (1 - config.alpha) * out.loss
        if not layer_map:
            return loss
        if hidden:
            pairs = [(out.hidden_states[m], theirs.hidden_states[n]) for m, n in enumerate(layer_map)]
            loss = loss + config.hidden_weight * _mse(pairs)
        if attention:
            pairs = [(out.attentions[m - 1], theirs.attentions[n - 1]) for m, n in enumerate(layer_map) if m]
            loss = loss + config.attention_weight * _mse(pairs)
        return loss

    return loss_of


def _mse(pairs: list[tuple[Any, Any]]) -> Any:
    """Mean squared error averaged over (student, teacher) tensor pairs, in fp32."""
    import torch.nn.functional as F

    return sum(F.mse_loss(ours.float(), theirs.float()) for ours, theirs in pairs) / len(pairs)


def _teacher_labels(teacher: tuple[str, ...], data: tuple[str, ...]) -> tuple[str, ...]:
    """The student learns the teacher's labels; the data's labels must be among them (by name, or
    by integer index as SST-2's 0/1 are)."""
    if not teacher or head_labels(teacher, data) != teacher:
        raise ModelError(
            f"the teacher must be a classifier over the labels of --data ({', '.join(data)}); "
            f"it has {', '.join(teacher) or 'no classification head'}"
        )
    return teacher


def _student(
    teacher: Any, teacher_tokenizer: Any, config: DistillConfig, names: tuple[str, ...]
) -> tuple[Any, Any, dict]:
    if config.student is not None:
        checkpoint = resolve(config.student)
        student, tokenizer = load_classifier(checkpoint, names)
        return student, tokenizer, {"from": checkpoint.name}
    depth = teacher.config.num_hidden_layers
    layers = config.student_layers or max(1, depth // 2)
    if not 1 <= layers <= depth:
        raise ModelError(f"--student-layers {layers} must be 1..{depth} (the teacher's depth)")
    kept = [i * depth // layers for i in range(layers)]
    student = copy.deepcopy(teacher)
    encoder = student.bert.encoder
    encoder.layer = type(encoder.layer)([encoder.layer[i] for i in kept])
    student.config.num_hidden_layers = layers
    return student, teacher_tokenizer, {"from": "teacher layers", "layers": kept}


def _narrow_ffn(student: Any, tokenizer: Any, texts: list[Any], width: int, config: DistillConfig) -> dict:
    """Keep ``width`` of each layer's FFN neurons: those with the largest mean
    |activation| x norm of their output weights (the size of what each adds to the layer's output)
    over up to 512 training texts, each run alone so that no padding counts."""
    import random

    import torch
    from transformers.pytorch_utils import prune_linear_layer

    size, length = student.config.intermediate_size, config.max_length
    if not 1 <= width <= size:
        raise ModelError(f"--student-ffn {width} must be 1..{size} (the student's FFN width)")
    layers = student.bert.encoder.layer
    sums = [torch.zeros(size) for _ in layers]
    hooks = [
        layer.intermediate.register_forward_hook(lambda _m, _i, out, s=s: s.add_(out.abs().sum((0, 1))))
        for layer, s in zip(layers, sums, strict=True)
    ]
    sample = random.Random(config.seed).sample(list(texts), min(512, len(texts)))
    student.eval()
    try:
        with torch.no_grad():
            for text in sample:
                columns = list(text) if isinstance(text, tuple) else [text]
                student(**tokenizer(*columns, truncation=True, max_length=length, return_tensors="pt"))
    finally:
        for hook in hooks:
            hook.remove()
    for layer, s in zip(layers, sums, strict=True):
        keep = (s * layer.output.dense.weight.norm(dim=0)).topk(width).indices.sort().values
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
    student.config.intermediate_size = width
    return {"kept": width, "of": size, "scored_on": len(sample)}


def _logits(
    model: Any,
    tokenizer: Any,
    texts: list[Any],
    max_length: int,
    batch_size: int = 64,
    desc: str | None = None,
) -> Any:
    """The model's logits for ``texts`` (sentences or pairs), in order; batched by length; with a
    progress bar where ``desc`` names the work."""
    import torch
    from tqdm.auto import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(str(texts[i])))
    outputs = torch.empty(0)
    starts = range(0, len(order), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=None if desc else True):
            batch = [texts[i] for i in order[start : start + batch_size]]
            columns = [list(c) for c in zip(*batch, strict=True)] if isinstance(batch[0], tuple) else [batch]
            inputs = tokenizer(
                *columns, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            logits = model(**inputs).logits
            if not outputs.numel():
                outputs = torch.empty(len(texts), logits.shape[-1])
            outputs[order[start : start + batch_size]] = logits
    return outputs


def _accuracy(model: Any, tokenizer: Any, texts: list[Any], dev_set: list[dict], max_length: int) -> float:
    logits = _logits(model, tokenizer, texts, max_length)
    labels = [row["labels"] for row in dev_set]
    return float(
        sum(int(p == y) for p, y in zip(logits.argmax(-1).tolist(), labels, strict=True))
        / max(len(labels), 1)
    )
