"""The last encoder layer computed for the first token only, where nothing reads the others.

A classifier's head (BERT's pooler) and CLS pooling read only the first token of the last layer's
output. That layer still needs every token's keys and values, but its queries, attention output,
feed-forward block and LayerNorms are needed for the first token alone: skipping the rest is exact
(the exported model is validated against the unmodified torch model) and took the SST-2 MiniLM to
0.86-0.88x the time at 128 tokens (benchmarks/results/export-variants.md).

The replacement modules hold the original's submodules in the original hierarchy, so the exported
graph's node names (``.../layer.5/output/dense/MatMul``) are those of every other layer, which
the quantizer and NNCF's reports name.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch


def _applies(model: Any, task: str, pooling: dict[str, Any]) -> bool:
    """Whether only the first token of ``model``'s last layer is read (a BERT classifier, or a BERT
    embedding model with CLS pooling, with absolute positions and no cross-attention) and that layer
    is built as this module knows (else the layer is exported whole)."""
    bert = getattr(model, "bert", model)
    config = getattr(bert, "config", None)
    layers = getattr(getattr(bert, "encoder", None), "layer", None)
    layer = layers[-1] if layers else None
    attention = getattr(layer, "attention", None)
    known = ("query", "key", "value", "num_attention_heads", "attention_head_size")
    return (
        getattr(config, "model_type", None) == "bert"
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and not getattr(config, "is_decoder", False)
        and (task == "classify" or pooling.get("mode") == "cls")
        and all(hasattr(layer, name) for name in ("attention", "intermediate", "output"))
        and hasattr(attention, "output")
        and all(hasattr(getattr(attention, "self", None), name) for name in known)
    )


@contextlib.contextmanager
def first_token_only(model: Any, task: str, pooling: dict[str, Any]) -> Iterator[bool]:
    """Within the block, ``model``'s last encoder layer returns its first token only, where that is
    all that ``task`` reads; yields whether it does."""
    if not _applies(model, task, pooling):
        yield False
        return
    layers = getattr(model, "bert", model).encoder.layer
    original = layers[-1]
    layers[-1] = FirstTokenLayer(original)
    try:
        yield True
    finally:
        layers[-1] = original


class FirstTokenLayer(torch.nn.Module):
    """A BERT layer (``BertLayer``) that returns its first token only."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.attention = _Attention(layer.attention)
        self.intermediate = layer.intermediate
        self.output = layer.output

    def forward(self, hidden: Any, attention_mask: Any = None, *args: Any, **kwargs: Any) -> tuple[Any]:
        attended = self.attention(hidden, attention_mask)
        return (self.output(self.intermediate(attended), attended),)


class _Attention(torch.nn.Module):
    """``BertAttention`` for the first token: its self-attention, then its output block."""

    def __init__(self, attention: Any) -> None:
        super().__init__()
        self.self = _SelfAttention(attention.self)
        self.output = attention.output

    def forward(self, hidden: Any, attention_mask: Any) -> Any:
        first = hidden[:, :1]
        return self.output(self.self(first, hidden, attention_mask), first)


class _SelfAttention(torch.nn.Module):
    """``BertSelfAttention`` with the first token's query against every token's keys and values."""

    def __init__(self, attention: Any) -> None:
        super().__init__()
        self.query, self.key, self.value = attention.query, attention.key, attention.value
        self.heads, self.size = attention.num_attention_heads, attention.attention_head_size

    def forward(self, first: Any, hidden: Any, attention_mask: Any) -> Any:
        batch = hidden.shape[0]

        def split(x: Any) -> Any:
            return x.view(batch, -1, self.heads, self.size).transpose(1, 2)

        # as BertSelfAttention's eager implementation, the one edgebert exports
        scores = torch.matmul(split(self.query(first)), split(self.key(hidden)).transpose(-1, -2))
        scores = scores / math.sqrt(self.size)
        if attention_mask is not None:  # additive, [batch, 1, 1 or queries, keys]: the first query's row
            scores = scores + attention_mask[:, :, :1]
        context = torch.matmul(scores.softmax(-1), split(self.value(hidden)))
        return context.transpose(1, 2).reshape(batch, 1, self.heads * self.size)
